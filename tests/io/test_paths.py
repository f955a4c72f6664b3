"""The rules for names and inputs with zarr folders and glob patterns of slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_vitseg._validation import VitsegError
from napari_vitseg.io import expand_inputs, image_stem, is_pattern, is_zarr, pattern_files


def test_image_stem_of_zarr_and_patterns(tmp_path, monkeypatch):
    assert image_stem("d/cells.ome.zarr") == "cells" and image_stem("d/Cells.OME.ZARR/") == "Cells"
    assert image_stem("d/raw.v2.zarr") == "raw.v2" and image_stem("d/cell.day1.ome.tif") == "cell.day1"
    assert image_stem("data/slices/*.tif") == "slices"
    assert image_stem("data/slices/z_??.tif") == "slices"
    assert image_stem(Path("data/run[12]/*.tif")) == "data"  # named after the last folder without magic
    monkeypatch.chdir(tmp_path)
    assert image_stem("*.tif") == tmp_path.name  # a pattern in the current folder
    (tmp_path / "odd[1].tif").write_bytes(b"")
    assert not is_pattern("odd[1].tif") and image_stem("odd[1].tif") == "odd[1]"  # an existing file wins


def test_is_zarr_by_name_or_metadata(tmp_path):
    assert is_zarr("x.zarr") and is_zarr("x.OME.ZARR") and not is_zarr(".zarr") and not is_zarr("x.tif")
    zarr.create_array(tmp_path / "noname", shape=(2, 2), dtype=np.uint8)
    zarr.open_group(tmp_path / "v2group", mode="w", zarr_format=2)
    (tmp_path / "plain").mkdir()
    assert is_zarr(tmp_path / "noname") and is_zarr(tmp_path / "v2group") and not is_zarr(tmp_path / "plain")


def test_expand_inputs_keeps_zarr_folders_and_patterns_as_one_input(tmp_path):
    for i in (10, 2, 1):
        tifffile.imwrite(tmp_path / f"z{i}.tif", np.zeros((4, 4), np.uint8))
    zarr.create_array(tmp_path / "b.zarr", shape=(2, 4, 4), dtype=np.uint8)
    zarr.create_array(tmp_path / "named", shape=(2, 4, 4), dtype=np.uint8)  # zarr by its metadata
    (tmp_path / "notes.zarr").write_text("a file, not a zarr folder")
    (tmp_path / "sub").mkdir()
    zarr.open_group(tmp_path / ".c_seg.part.zarr", mode="w")  # a hidden staging store is no input
    (tmp_path / "._z1.tif").write_bytes(b"macOS resource fork")
    pattern = tmp_path / "z*.tif"
    assert expand_inputs([pattern]) == [pattern]
    assert expand_inputs([tmp_path / "b.zarr", tmp_path / "named"]) == [tmp_path / "b.zarr", tmp_path / "named"]
    # a plain folder: its TIFF files and its .zarr folders, by name
    assert [p.name for p in expand_inputs([tmp_path])] == ["b.zarr", "z1.tif", "z10.tif", "z2.tif"]
    # TIFF only when asked
    assert [p.name for p in expand_inputs([tmp_path], suffixes=(".tif",))] == ["z1.tif", "z10.tif", "z2.tif"]
    assert expand_inputs([pattern, str(pattern), tmp_path / "b.zarr"]) == [pattern, tmp_path / "b.zarr"]
    assert [Path(f).name for f in pattern_files(pattern)] == ["z1.tif", "z2.tif", "z10.tif"]  # natural order
    with pytest.raises(VitsegError, match=r"No files match the pattern .*nope\*\.tif"):
        expand_inputs([tmp_path / "nope*.tif"])
    with pytest.raises(VitsegError, match="contains no TIFF files or zarr folders .*give a pattern"):
        expand_inputs([tmp_path / "sub"])
    with pytest.raises(VitsegError, match=r"contains no TIFF files \(\.tif\)"):
        expand_inputs([tmp_path / "sub"], suffixes=(".tif",))
