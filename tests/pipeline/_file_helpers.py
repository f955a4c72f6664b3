"""Helpers of the classifier-file tests: a copy of a file with its metadata edited."""

from __future__ import annotations

import json
import zipfile


def rewrite_metadata(src, dst, edit):
    """Copy the classifier file ``src`` to ``dst`` with ``edit(meta)`` applied to its ``metadata.json``;
    returns ``dst``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "metadata.json":
                meta = json.loads(data)
                edit(meta)
                data = json.dumps(meta).encode()
            zout.writestr(name, data)
    return dst
