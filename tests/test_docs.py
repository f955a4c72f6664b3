"""The README and docs show the public API only, and the package's front door is lazy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_examples_import_no_private_module(doc):
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    for block in blocks:
        private = re.findall(r"^\s*(?:from|import) (napari_vitseg(?:\.\w+)*\._\w+)", block, flags=re.M)
        assert not private, f"{doc.name} imports private modules {private}"


def test_front_door_is_lazy_and_complete():
    code = (
        "import sys, napari_vitseg as n\n"
        "assert 'torch' not in sys.modules and 'napari_vitseg.pipeline' not in sys.modules\n"
        "names = ['Segmenter', 'SegmenterConfig', 'FeatureConfig', 'create_backbone', 'list_backbones', 'run']\n"
        "assert all(k in n.__all__ for k in names)\n"
        "from napari_vitseg.pipeline import Segmenter\n"
        "assert n.Segmenter is Segmenter and callable(n.run)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
