"""Issue 14 items 5 and 6: which files the reader claims, and label outputs reopening as Labels
layers with their class names and colours (batch apply, the CLI, the npe2 writer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_vitseg import _reader, _writer
from napari_vitseg._progress import run
from napari_vitseg._validation import VitsegError
from napari_vitseg.io import tiff_series
from napari_vitseg.io._tiff import VITSEG_KEY, class_table_metadata, parse_class_table

CLASSES = [{"id": 1, "name": "nucleus", "color": "#d62728"}, {"id": 2, "name": "cytoplasm", "color": "#2ca02c"},
           {"id": 3, "name": "background", "color": "#9467bd"}]


def _rgb(hexcolor: str) -> list[float]:
    return [int(hexcolor[i:i + 2], 16) / 255 for i in (1, 3, 5)]


def _readers(path) -> set[str]:
    """The plugins napari would offer for ``path`` (npe2 matches names only)."""
    import npe2
    from napari.plugins import _npe2

    pm = npe2.PluginManager.instance()
    if "napari-vitseg" not in {m.name for m in pm.iter_manifests()}:
        pm.discover()  # napari discovers plugins when the first viewer is made
    return set(_npe2.get_readers(str(path)))


def _labels_with_classes(shape=(3, 20, 24)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[..., :8] = 1
    lab[..., 8:16] = 2
    lab[..., 16:] = 3
    return lab


# -- item 5: claims -----------------------------------------------------------------------------
def test_plain_tiffs_are_left_to_napari_without_a_choose_reader_dialog(make_napari_viewer, tmp_path):
    """A plain .tif opens with napari's builtin reader (before: MultipleReaderError / "Choose reader")."""
    pytest.importorskip("napari")
    plain = tmp_path / "cells.tif"
    tifffile.imwrite(plain, np.arange(20 * 24, dtype=np.uint16).reshape(20, 24))
    assert _readers(plain) == {"napari"}
    assert _readers(tmp_path / "CELLS.TIFF") == {"napari"}
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(plain))  # no plugin named, no dialog: one reader is offered
    assert layer.data.shape == (20, 24) and type(layer).__name__ == "Image"


@pytest.mark.parametrize("name", ["cells_seg.tif", "cell.day1_seg.tiff", "segmentation.tif", "my_scribbles.tif",
                                  "cells_seg_probabilities.tif", "big.ome.tif", "big.ome.tiff", "big.btf",
                                  "slices/*.tif", "slices/z??.tiff", "cells.ome.zarr", "raw.zarr"])
def test_the_reader_is_offered_where_it_adds_something(name, tmp_path):
    assert "napari-vitseg" in _readers(tmp_path / name)


def test_a_chosen_reader_never_refuses_a_readable_tiff(tmp_path):
    """Chosen in the dialog (or with plugin=), the reader reads any TIFF: a refusal is an error in napari."""
    p = tmp_path / "anything.tif"
    tifffile.imwrite(p, np.zeros((4, 5), np.uint8))
    assert _reader.napari_get_reader(str(p)) is _reader.read_tiff
    (data, meta, kind), = _reader.read_tiff(str(p))
    assert kind == "image" and data.shape == (4, 5)


def test_a_folder_of_tiff_slices_opens_as_one_lazy_stack(tmp_path):
    import dask.array as da

    folder = tmp_path / "slices"
    folder.mkdir()
    for i in (1, 2, 10):
        tifffile.imwrite(folder / f"z{i}.tif", np.full((5, 6), i, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    assert _reader.napari_get_reader(str(folder)) is _reader.read_tiff
    (data, meta, kind), = _reader.read_tiff(str(folder))
    assert kind == "image" and isinstance(data, da.Array) and data.shape == (3, 5, 6)
    assert [int(data[i, 0, 0]) for i in range(3)] == [1, 2, 10]  # natural order
    (tmp_path / "empty").mkdir()
    assert _reader.napari_get_reader(str(tmp_path / "empty")) is None
    with pytest.raises(VitsegError, match="no TIFF files"):
        _reader.read_tiff(str(tmp_path / "empty"))


# -- item 6: the class table in the TIFF ----------------------------------------------------------------
def test_class_table_metadata_round_trip_and_malformed_tables(tmp_path):
    entry = class_table_metadata(CLASSES[::-1], axes="ZYX")
    assert entry["role"] == "labels" and entry["classes"] == CLASSES  # sorted by id
    p = tmp_path / "a_seg.tif"
    tifffile.imwrite(p, _labels_with_classes(), metadata={"axes": "ZYX", VITSEG_KEY: entry}, photometric="minisblack")
    s = tiff_series(p)
    assert s.role == "labels" and s.class_table == CLASSES and s.axes == "ZYX"
    for bad in (None, {}, {"classes": "x"}, {"classes": [{"id": 0, "name": "a", "color": "#000000"}]},
                {"classes": [{"id": 1, "name": "a", "color": "red"}]},
                {"classes": [{"id": 1, "name": "a", "color": "#000000"}, {"id": 1, "name": "b", "color": "#ffffff"}]},
                {"classes": [{"id": True, "name": "a", "color": "#000000"}]}):
        assert parse_class_table(bad) is None, bad
    with pytest.raises(VitsegError, match="class table"):
        class_table_metadata([{"id": 1, "name": "a", "color": "red"}])
    with pytest.raises(VitsegError, match="role"):
        class_table_metadata(CLASSES, role="image")


def test_batch_apply_output_stores_the_class_table_and_reopens_as_labels(tmp_path, two_region_image):
    from napari_vitseg.features import FeatureConfig
    from napari_vitseg.pipeline import Segmenter

    image, scribbles = two_region_image
    tifffile.imwrite(tmp_path / "cells.tif", image)
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3}, class_names=["pore", "solid"],
                    class_colors=["#112233", "#ddeeff"]).fit(image, scribbles)
    (out,) = run(seg.iter_apply_files([tmp_path / "cells.tif"], tmp_path / "out", probabilities=True))
    assert out.name == "cells_seg.tif"
    with tifffile.TiffFile(out) as tf:  # tiled, compressed, and the table in the JSON description
        assert tf.pages[0].is_tiled
        entry = json.loads(tf.pages[0].description)[VITSEG_KEY]
    assert entry["role"] == "labels" and [c["name"] for c in entry["classes"]] == ["pore", "solid"]
    assert "napari-vitseg" in _readers(out)
    (data, meta, kind), = _reader.read_tiff(out)
    assert kind == "labels" and data.dtype == np.uint8 and set(np.unique(data)) == {1, 2}
    assert meta["colormap"][1] == "#112233" and meta["colormap"][2] == "#ddeeff"
    assert meta["colormap"][0] == "transparent"
    assert meta["features"] == {"index": [0, 1, 2], "class": ["unlabelled", "pore", "solid"]}
    assert meta["metadata"]["class_names"] == ["pore", "solid"] and meta["name"] == "cells_seg"
    # the probabilities: one layer per class, named and coloured
    probs = tmp_path / "out" / "cells_seg_probabilities.tif"
    assert tiff_series(probs).role == "probabilities"
    layers = _reader.read_tiff(probs)
    assert [m["name"] for _, m, _ in layers] == ["cells_seg_probabilities · pore", "cells_seg_probabilities · solid"]
    assert all(k == "image" and d.shape == image.shape for d, _, k in layers)
    np.testing.assert_allclose(sum(np.asarray(d, np.float32) for d, _, _ in layers), 1.0, atol=2e-3)


def test_cli_apply_output_reopens_with_class_names(tmp_path, two_region_image):
    from napari_vitseg.cli import main

    image, scribbles = two_region_image
    tifffile.imwrite(tmp_path / "im.tif", image)
    tifffile.imwrite(tmp_path / "scr.tif", scribbles)
    model = tmp_path / "m.vitseg"
    assert main(["train", str(tmp_path / "im.tif"), "--scribbles", str(tmp_path / "scr.tif"), "-o", str(model),
                 "--backbone", "none", "--class-names", "dark,bright", "--quiet"]) == 0
    out = tmp_path / "im_seg.tif"
    assert main(["apply", str(model), str(tmp_path / "im.tif"), "-o", str(out), "--quiet"]) == 0
    (_, meta, kind), = _reader.read_tiff(out)
    assert kind == "labels" and meta["metadata"]["class_names"] == ["dark", "bright"]


def test_old_outputs_without_a_table_still_open(tmp_path):
    """A ``_seg.tif`` written before the table was stored opens as Labels with the default class
    colours; an image that only looks like one by name stays an image."""
    from napari_vitseg.pipeline.segmenter import default_class_color

    old = tmp_path / "cells_seg.tif"
    tifffile.imwrite(old, _labels_with_classes(), metadata={"axes": "ZYX"}, photometric="minisblack")
    (data, meta, kind), = _reader.read_tiff(old)
    assert kind == "labels" and data.shape == (3, 20, 24)
    assert meta["colormap"][3] == default_class_color(3) and "features" not in meta
    rgb = tmp_path / "rgb_seg.tif"
    tifffile.imwrite(rgb, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    assert _reader.read_tiff(rgb)[0][2] == "image"
    flt = tmp_path / "float_seg.tif"
    tifffile.imwrite(flt, np.zeros((8, 8), np.float32))
    assert _reader.read_tiff(flt)[0][2] == "image"
    # a damaged table: still Labels, without names
    bad = tmp_path / "bad_seg.tif"
    tifffile.imwrite(bad, _labels_with_classes()[0], metadata={VITSEG_KEY: {"role": "labels", "classes": "?"}})
    (_, meta, kind), = _reader.read_tiff(bad)
    assert kind == "labels" and "features" not in meta


def test_writer_stores_the_layer_classes(tmp_path):
    lab = _labels_with_classes()[0]
    cmap = {0: "transparent", None: "#808080", 1: "#d62728", 2: "#2ca02c", 3: "#9467bd"}
    (out,) = _writer.write_labels(str(tmp_path / "mine.tif"), lab,
                                  {"metadata": {"class_names": ["nucleus", "cytoplasm", "background"]},
                                   "colormap": cmap})
    assert tiff_series(out).class_table == CLASSES
    np.testing.assert_array_equal(tifffile.imread(out), lab)
    # napari's DirectLabelColormap (RGBA floats in color_dict) and names from a features table
    class Direct:
        color_dict = {0: np.zeros(4), None: np.array([.5, .5, .5, 1.]), 1: np.array([*_rgb("#d62728"), 1.]),
                      2: np.array([*_rgb("#2ca02c"), 1.])}
    (out,) = _writer.write_labels(str(tmp_path / "f.tif"), lab.clip(0, 2),
                                  {"colormap": Direct(), "features": {"index": [0, 1, 2],
                                                                      "class": ["unlabelled", "a", "b"]}})
    assert [(c["name"], c["color"]) for c in tiff_series(out).class_table] == [("a", "#d62728"), ("b", "#2ca02c")]
    # instance labels with napari's cyclic colours: no table
    (out,) = _writer.write_labels(str(tmp_path / "inst.tif"), lab, {"colormap": object()})
    assert tiff_series(out).vitseg is None


def test_widget_layers_round_trip_through_napari_as_labels_with_names(make_napari_viewer, tmp_path):
    """Save a named, coloured Labels layer with the plugin's writer; reopening it gives a Labels layer
    with the same colours, names in the features table and in the status bar (before: a grey image)."""
    viewer = make_napari_viewer()
    lab = _labels_with_classes()
    cmap = {0: "transparent", None: "#808080", **{c["id"]: c["color"] for c in CLASSES}}
    viewer.add_labels(lab, name="segmentation", colormap=cmap,
                      metadata={"class_names": [c["name"] for c in CLASSES]})
    (out,) = viewer.layers["segmentation"].save(str(tmp_path / "cells_seg.tif"), plugin="napari-vitseg")
    viewer.layers.clear()
    (layer,) = viewer.open(out, plugin="napari-vitseg")
    assert type(layer).__name__ == "Labels" and layer.name == "cells_seg"
    np.testing.assert_array_equal(np.asarray(layer.data), lab)
    for c in CLASSES:
        np.testing.assert_allclose(layer.get_color(c["id"])[:3], _rgb(c["color"]), atol=1 / 255)
    assert list(layer.features["class"]) == ["unlabelled", "nucleus", "cytoplasm", "background"]
    assert layer.metadata["class_names"] == ["nucleus", "cytoplasm", "background"]
    status = layer.get_status((1, 5, 20), world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert "background" in text, text
