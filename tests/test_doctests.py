"""Every docstring example of the package runs and gives what it shows (the Examples sections).

The same as ``pytest --doctest-modules napari_vitseg`` (which trips over this suite's several
``conftest.py`` files), one test per module. The widgets are left out: they import Qt and have
no examples.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import napari_vitseg

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(napari_vitseg.__path__, "napari_vitseg.")
    if not m.name.startswith("napari_vitseg._widgets") and not m.name.endswith("__main__")
)


def test_modules_found():
    assert {"napari_vitseg.pipeline.segmenter", "napari_vitseg.io._paths", "napari_vitseg.metrics"} <= set(MODULES)


@pytest.mark.parametrize("name", ["napari_vitseg", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):  # globals: a copy of the module's, as pytest does
        if test.examples:
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see output)"
