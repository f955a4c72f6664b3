"""npe2 contributions: the manifest, the TIFF / zarr reader, the labels writer and the sample data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_vitseg import _reader, _sample_data, _writer
from napari_vitseg._validation import VitsegError

MANIFEST = Path(_reader.__file__).parent / "napari.yaml"


def test_manifest_is_valid_and_points_at_these_functions():
    import importlib

    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_file(MANIFEST)
    assert pm.name == "napari-vitseg"
    ids = {c.id: c.python_name for c in pm.contributions.commands}
    for cid in ("napari-vitseg.get_reader", "napari-vitseg.write_labels", "napari-vitseg.segmentation_widget",
                "napari-vitseg.sample_tem_nanoparticles", "napari-vitseg.sample_tem_cells_stack"):
        module, attr = ids[cid].split(":")
        assert callable(getattr(importlib.import_module(module), attr)), ids[cid]
    r = subprocess.run([sys.executable, "-m", "npe2", "validate", str(MANIFEST)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    (reader,) = pm.contributions.readers
    assert reader.accepts_directories and {"*_seg.tif", "*.ome.tif", "*.zarr"} <= set(reader.filename_patterns)
    assert "*.tif" not in reader.filename_patterns  # plain TIFFs are left to napari's builtin reader


def test_npe2_contributions_import_no_qt():
    code = ("import sys, napari_vitseg._reader, napari_vitseg._writer, napari_vitseg._sample_data;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
            "'magicgui', 'superqt') or m.startswith('napari.qt') or m.startswith('napari_vitseg._widgets')];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_reader_takes_a_cut_tiff_and_says_it_is_damaged(tmp_path):
    """A TIFF cut short is ours to read, so that napari shows our error instead of another
    reader opening its first plane as if it were the image."""
    from napari_vitseg._validation import VitsegError

    whole = tmp_path / "whole.ome.tif"
    tifffile.imwrite(whole, np.zeros((6, 64, 64), np.uint8), ome=True)
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert _reader.napari_get_reader(str(cut)) is _reader.read_tiff
    with pytest.raises(VitsegError, match="cut.ome.tif' is damaged or truncated"):
        _reader.read_tiff(str(cut))


def test_reader_declines_what_it_cannot_read(tmp_path):
    assert _reader.napari_get_reader(str(tmp_path / "missing.tif")) is None
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert _reader.napari_get_reader(str(png)) is None
    fake = tmp_path / "fake.tif"
    fake.write_text("not a tiff")
    assert _reader.napari_get_reader(str(fake)) is None
    (tmp_path / "dir.tif").mkdir()
    assert _reader.napari_get_reader(str(tmp_path / "dir.tif")) is None
    good = tmp_path / "g.tif"
    tifffile.imwrite(good, np.zeros((4, 4), np.uint8))
    assert _reader.napari_get_reader([str(good), str(good)]) is None
    assert _reader.napari_get_reader(123) is None
    assert _reader.napari_get_reader(str(good)) is _reader.read_tiff
    assert _reader.napari_get_reader(good) is _reader.read_tiff
    upper = tmp_path / "G.TIFF"
    tifffile.imwrite(upper, np.zeros((4, 4), np.uint8))
    assert _reader.napari_get_reader(str(upper)) is _reader.read_tiff
    # folders: only zarr stores holding one image we can place
    (tmp_path / "plain").mkdir()
    assert _reader.napari_get_reader(str(tmp_path / "plain")) is None
    assert _reader.napari_get_reader(str(tmp_path / "missing.zarr")) is None
    (tmp_path / "empty.zarr").mkdir()
    assert _reader.napari_get_reader(str(tmp_path / "empty.zarr")) is None
    zarr = pytest.importorskip("zarr")
    zarr.open_group(tmp_path / "group.zarr", mode="w").create_array("a", shape=(4, 4), dtype=np.uint8)
    assert _reader.napari_get_reader(str(tmp_path / "group.zarr")) is None  # left to other readers
    _write_ome_zarr(tmp_path / "t3.ome.zarr", np.zeros((3, 8, 8), np.uint8), "tyx", levels=1)
    assert _reader.napari_get_reader(str(tmp_path / "t3.ome.zarr")) is None  # a time series
    assert _reader.napari_get_reader(str(tmp_path / "nothing*.tif")) is None
    zarr.create_array(tmp_path / "raw.zarr", shape=(2, 4, 4), dtype=np.uint8)
    assert _reader.napari_get_reader(str(tmp_path / "raw.zarr")) is _reader.read_zarr
    assert _reader.napari_get_reader(tmp_path / "raw.zarr") is _reader.read_zarr


def _write_ome_zarr(path, data, axes, *, levels=3):
    from ome_zarr.writer import write_image

    write_image(data, str(path), axes=axes, scale_factors=tuple(2 ** i for i in range(1, levels)), method="nearest")


def _write_pyramidal_tiff(path, data, n_levels=3):
    with tifffile.TiffWriter(path) as tw:
        tw.write(data, subifds=n_levels - 1, metadata={"axes": "ZYX"}, tile=(16, 16))
        for i in range(1, n_levels):
            tw.write(data[:, :: 2 ** i, :: 2 ** i], subfiletype=1, tile=(16, 16))


def _pyramid_inputs(tmp_path):
    a = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    _write_ome_zarr(tmp_path / "pyr.ome.zarr", a, "zyx")
    _write_pyramidal_tiff(tmp_path / "pyr.ome.tif", a)
    return a, [(3, 64, 64), (3, 32, 32), (3, 16, 16)]


def test_reader_gives_multiscale_layers_for_pyramids(tmp_path):
    import dask.array as da

    a, shapes = _pyramid_inputs(tmp_path)
    for name, reader in (("pyr.ome.zarr", _reader.read_zarr), ("pyr.ome.tif", _reader.read_tiff)):
        path = str(tmp_path / name)
        assert _reader.napari_get_reader(path) is reader
        (data, meta, kind), = reader(path)
        assert kind == "image" and meta["multiscale"] is True and meta["rgb"] is False and meta["name"] == "pyr"
        assert meta["metadata"] == {"axes": "ZYX", "channel_axis": None, "path": path, "lazy": True}
        assert isinstance(data, list) and all(isinstance(d, da.Array) for d in data)
        assert [d.shape for d in data] == shapes and data[0].chunksize == (1, 64, 64)
        np.testing.assert_array_equal(np.asarray(data[0][1]), a[1])


def test_reader_zarr_without_levels_and_tiff_slices(tmp_path):
    import dask.array as da

    zarr = pytest.importorskip("zarr")
    c = np.arange(2 * 3 * 8 * 8, dtype=np.uint16).reshape(2, 3, 8, 8)
    zarr.create_array(tmp_path / "c.zarr", data=c, dimension_names=["c", "z", "y", "x"])
    (data, meta, _), = _reader.read_zarr(tmp_path / "c.zarr")
    assert isinstance(data, da.Array) and data.shape == c.shape and meta["multiscale"] is False
    assert meta["metadata"]["axes"] == "CZYX" and meta["metadata"]["channel_axis"] == 0
    (tmp_path / "slices").mkdir()
    for i in range(4):
        tifffile.imwrite(tmp_path / "slices" / f"s{i}.tif", np.full((5, 6), i, np.uint8))
    pattern = str(tmp_path / "slices" / "*.tif")
    assert _reader.napari_get_reader(pattern) is _reader.read_tiff
    (data, meta, _), = _reader.read_tiff(pattern)
    assert isinstance(data, da.Array) and data.shape == (4, 5, 6) and data.chunks[0] == (1,) * 4
    assert meta["name"] == "slices" and meta["metadata"]["lazy"] is True and meta["metadata"]["axes"] == "ZYX"


def test_pyramids_open_as_multiscale_layers_in_napari(make_napari_viewer, tmp_path):
    a, shapes = _pyramid_inputs(tmp_path)
    viewer = make_napari_viewer()
    for name in ("pyr.ome.zarr", "pyr.ome.tif"):
        layers = viewer.open(str(tmp_path / name), plugin="napari-vitseg")
        (layer,) = layers
        assert layer.multiscale and [tuple(d.shape) for d in layer.data] == shapes
        assert layer.metadata["axes"] == "ZYX" and layer.metadata["lazy"] is True
        viewer.dims.set_point(0, 2)
        np.testing.assert_array_equal(np.asarray(layer.data[0][2]), a[2])
    assert [lay.name for lay in viewer.layers] == ["pyr", "pyr [1]"]


def test_reader_real_images(samples, shared_data):
    (data, meta, kind), = _reader.read_tiff(samples / "tem_nanoparticles" / "image.tif")
    assert kind == "image" and isinstance(data, np.ndarray) and data.shape == (518, 518)
    assert meta["name"] == "image" and meta["rgb"] is False and meta["multiscale"] is False
    (rgb, meta, _), = _reader.read_tiff(shared_data("cast_iron_optical") / "image.tif")
    assert rgb.shape == (422, 800, 3) and meta["rgb"] is True and meta["metadata"]["axes"] == "YXS"
    (stack, meta, _), = _reader.read_tiff(str(samples / "tem_cells_stack" / "image.tif"))
    assert stack.shape == (6, 518, 518) and meta["rgb"] is False


def test_reader_is_lazy_for_large_files(samples, monkeypatch):
    import dask.array as da

    monkeypatch.setattr(_reader, "LAZY_BYTES", 1000)
    path = samples / "tem_cells_stack" / "image.tif"
    (data, meta, _), = _reader.read_tiff(path)
    assert isinstance(data, da.Array) and meta["metadata"]["lazy"] is True
    assert data.chunks[0] == (1,) * 6  # one plane per chunk
    np.testing.assert_array_equal(np.asarray(data[3]), tifffile.imread(path)[3])


def test_reader_multichannel_axis(tmp_path):
    p = tmp_path / "mc.tif"
    tifffile.imwrite(p, np.zeros((2, 16, 16), np.uint16), metadata={"axes": "CYX"})
    (data, meta, _), = _reader.read_tiff(p)
    assert meta["metadata"]["channel_axis"] == 0 and meta["rgb"] is False


def test_writer_round_trip_and_dtypes(tmp_path):
    lab = np.zeros((5, 6), np.int32)
    lab[1, 2] = 3
    out = _writer.write_labels(str(tmp_path / "seg.tif"), lab, {"name": "segmentation"})
    assert out == [str(tmp_path / "seg.tif")]
    back = tifffile.imread(out[0])
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, lab)
    big = np.zeros((2, 3, 3), np.int64)
    big[0, 0, 0] = 300
    out = _writer.write_labels(str(tmp_path / "stack"), big, {})
    assert out[0].endswith("stack.tif")
    back = tifffile.imread(out[0])
    assert back.dtype == np.uint16 and back.shape == (2, 3, 3) and back[0, 0, 0] == 300
    assert not list(tmp_path.glob("*.part"))
    # a label stack whose last axis has 3 entries stays a grey (Z, Y, X) stack, never RGB
    small = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) % 4
    out = _writer.write_labels(str(tmp_path / "zyx3.tif"), small, {})
    with tifffile.TiffFile(out[0]) as tf:
        assert tf.series[0].axes == "ZYX" and tf.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    np.testing.assert_array_equal(tifffile.imread(out[0]), small)
    with pytest.raises(VitsegError, match=">= 0"):
        _writer.write_labels(str(tmp_path / "neg.tif"), -np.ones((2, 2), np.int8), {})
    with pytest.raises(VitsegError, match="integers"):
        _writer.write_labels(str(tmp_path / "f.tif"), np.ones((2, 2), np.float32), {})


def test_sample_data_layer_tuples(nanoparticles, cells_stack):
    layers = _sample_data.tem_nanoparticles()
    assert [k for _, _, k in layers] == ["image", "labels"]
    (img, imeta, _), (scr, smeta, _) = layers
    np.testing.assert_array_equal(img, nanoparticles[0])
    np.testing.assert_array_equal(scr, nanoparticles[1])
    assert imeta["name"] == "tem_nanoparticles" and smeta["name"] == "scribbles"
    assert smeta["metadata"]["class_names"] == ["particle", "background"]
    # label 1 marks the dark particles (the minority class of the ground truth)
    truth = nanoparticles[2]
    assert img[truth == 1].mean() < img[truth == 2].mean() and (truth == 1).mean() < 0.5
    assert smeta["colormap"][0] == "transparent" and len([k for k in smeta["colormap"] if k]) == 2
    (stack, _, _), (sscr, smeta, _) = _sample_data.tem_cells_stack()
    assert stack.shape == (6, 518, 518) and sscr.shape == stack.shape
    assert smeta["metadata"]["class_names"] == ["nucleus", "cytoplasm", "background"]
    # label 3 (background) is the brightest, as in the image
    assert stack[sscr == 3].mean() > stack[sscr == 1].mean()


def test_sample_data_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vitseg", "tem_nanoparticles")
    assert [lay.name for lay in viewer.layers] == ["tem_nanoparticles", "scribbles"]
    scr = viewer.layers["scribbles"]
    np.testing.assert_allclose(scr.get_color(1)[:3], [0x1f / 255, 0x77 / 255, 0xb4 / 255], atol=1e-6)


def test_writer_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_labels(np.eye(8, dtype=np.uint8) * 2, name="seg")
    out = viewer.layers["seg"].save(str(tmp_path / "a_seg.tif"), plugin="napari-vitseg")
    assert out and tifffile.imread(out[0]).max() == 2
    viewer.open(str(tmp_path / "a_seg.tif"), plugin="napari-vitseg")
    assert viewer.layers[-1].data.shape == (8, 8) and type(viewer.layers[-1]).__name__ == "Labels"
