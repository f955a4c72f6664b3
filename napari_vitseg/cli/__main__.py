"""``python -m napari_vitseg.cli``: the ``vitseg`` command."""

import sys

from . import main

sys.exit(main())
