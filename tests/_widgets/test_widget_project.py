"""Save project… / Open project… in the segmentation dock widget (issue 14, the project file):
the session comes back (image, channel axis or the image layers used as channels, scribbles,
classes, classifier) and bad projects end in one line in the status line with nothing written or
opened."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")

from _widget_helpers import dock, paint_and_train, wait_idle  # noqa: E402


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def one_line_error(widget, errors, n_before: int, *must: str) -> str:
    assert len(errors) == n_before + 1, errors[n_before:]
    msg = errors[-1]
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    for m in must:
        assert m in msg, (m, msg)
    assert widget.status.text().strip() == msg.strip() and widget.status.styleSheet()
    return msg


@pytest.fixture
def nano_session(qtbot, make_napari_viewer, nanoparticles, tmp_path, errors, monkeypatch):
    """The TEM nanoparticle sample opened from a TIFF, its scribbles painted, classes renamed and
    recoloured, a classifier trained, and the project saved beside the image."""
    image, scribbles, _ = nanoparticles
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "nano.tif", image)
    viewer = make_napari_viewer()
    viewer.open(str(d / "nano.tif"))
    viewer.add_labels(scribbles.copy(), name="strokes", metadata={"class_names": ["particle", "background"]})
    widget = dock(viewer)
    assert widget.scribbles_combo.currentText() == "strokes"
    widget.class_table.item(1, 1).setText("matrix")
    widget.set_class_color(2, "#aa00ff")
    widget.trees_spin.setValue(20)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == [] and widget.controller.model is not None
    seg = viewer.layers["segmentation"].data.copy()
    path = d / "nano.vitseg-project"
    asked = []
    monkeypatch.setattr(widget, "ask_project_save_path", lambda: asked.append(1) or str(path))
    widget.save_project()
    wait_idle(qtbot, widget)
    assert errors == [] and asked == [1] and path.is_file(), widget.status.text()
    assert widget.status.text() == f"Saved project {path}."
    return viewer, widget, image, scribbles, seg, path


def test_open_project_restores_the_session_and_its_segmentation(qtbot, nano_session, errors, monkeypatch):
    viewer, widget, image, scribbles, seg, path = nano_session
    colors = widget.classes.colors()
    assert colors[1] == "#aa00ff"
    viewer.layers.clear()
    widget.class_table.item(0, 1).setText("renamed")
    widget.trees_spin.setValue(7)
    assert widget.image_layer is None and widget.scribbles_layer is None

    monkeypatch.setattr(widget, "ask_project_open_path", lambda: str(path))
    widget.open_project()
    wait_idle(qtbot, widget)
    assert errors == [], errors
    img = widget.image_layer
    assert img is not None and img.source.path == str(path.parent / "nano.tif")
    np.testing.assert_array_equal(np.asarray(img.data), image)
    scr = widget.scribbles_layer
    assert scr is not None and scr.name == "strokes"
    np.testing.assert_array_equal(np.asarray(scr.data), scribbles)
    assert widget.class_names() == ["particle", "matrix"] and widget.classes.colors() == colors
    assert scr.metadata["class_names"] == ["particle", "matrix"]
    assert widget.trees_spin.value() == 20  # the classifier's settings
    model = widget.controller.model
    assert model is not None and model.loaded_from == str(path) and not model.live
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, seg)
    assert widget.status.text().startswith(f"Done (opened project {path.name}")

    # ready to go on: a stroke in Live mode retrains on the restored scribbles
    n = widget.controller.n_trainings
    widget.live_check.setChecked(True)
    wait_idle(qtbot, widget)
    assert widget.controller.n_trainings == n + 1 and errors == []


def test_project_follows_a_moved_folder_and_reuses_an_open_image(qtbot, nano_session, errors, tmp_path, monkeypatch):
    viewer, widget, image, scribbles, seg, path = nano_session
    viewer.layers.clear()
    moved = tmp_path / "sent" / "to a colleague"
    moved.parent.mkdir()
    shutil.move(str(path.parent), moved)
    viewer.open(str(moved / "nano.tif"))  # already open: reused, not opened twice
    widget.open_project(str(moved / path.name))
    wait_idle(qtbot, widget)
    assert errors == []
    assert [lay.source.path for lay in viewer.layers if lay.source.path] == [str(moved / "nano.tif")]
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, seg)


def test_open_project_with_its_image_missing(qtbot, nano_session, errors, tmp_path):
    viewer, widget, image, scribbles, seg, path = nano_session
    viewer.layers.clear()
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(path, lone / path.name)
    (path.parent / "nano.tif").rename(path.parent / "renamed.tif")
    before = snapshot(tmp_path)
    widget.open_project(str(lone / path.name))
    wait_idle(qtbot, widget)
    one_line_error(widget, errors, 0, str(path.parent / "nano.tif"), "beside the image")
    assert len(viewer.layers) == 0 and snapshot(tmp_path) == before


def test_open_a_damaged_project_changes_nothing(qtbot, nano_session, errors, tmp_path):
    viewer, widget, image, scribbles, seg, path = nano_session
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    b = bytearray(members["scribbles.npy"])
    b[-1] ^= 3
    members["scribbles.npy"] = bytes(b)
    bad = tmp_path / "bad.vitseg-project"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    layers = list(viewer.layers)
    model = widget.controller.model
    widget.open_project(str(bad))
    wait_idle(qtbot, widget)
    one_line_error(widget, errors, 0, "bad.vitseg-project", "SHA-256")
    assert list(viewer.layers) == layers and widget.controller.model is model


def test_save_project_needs_the_image_on_disk(qtbot, make_napari_viewer, errors, tmp_path, monkeypatch):
    from napari_vitseg._sample_data import tem_nanoparticles

    viewer = make_napari_viewer()
    for data, meta, kind in tem_nanoparticles():  # in memory, not from a file
        getattr(viewer, f"add_{kind}")(data, **meta)
    widget = dock(viewer)
    monkeypatch.setattr(widget, "ask_project_save_path", lambda: pytest.fail("no dialog without an image file"))
    before = snapshot(tmp_path)
    assert widget.save_project() is None
    assert "not opened from a file" in widget.status.text() and widget.status.styleSheet()
    assert "\n" not in widget.status.text() and snapshot(tmp_path) == before


def test_stack_project_without_classifier_keeps_its_channel_axis(qtbot, make_napari_viewer, errors, tmp_path):
    """A (2, Y, X) stack that the widget would take for 2 channels, used as 2 planes (channel axis
    'none'), with 3D scribbles and 3 classes; no classifier yet."""
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (2, 48, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", stack, photometric="minisblack")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "two.tif"))
    widget = dock(viewer)
    assert widget.channel_axis() == 0  # guessed: channels first
    widget.channel_spin.setValue(-1)
    layer = widget.new_scribbles_layer()
    widget.add_class()
    data = np.zeros((2, 48, 40), np.uint8)
    data[0, 5:9, 5:30] = 1
    data[1, 20:30, 10:12] = 3
    layer.data = data
    path = tmp_path / "two.vitseg-project"
    widget.save_project(str(path))
    wait_idle(qtbot, widget)
    assert errors == [] and path.is_file()
    names = widget.class_names()
    assert len(names) == 3

    viewer.layers.clear()
    widget.open_project(str(path))
    wait_idle(qtbot, widget)
    assert errors == []
    assert widget.channel_axis() is None and widget.input.spatial_shape() == (2, 48, 40)
    np.testing.assert_array_equal(widget.scribbles_layer.data, data)
    assert widget.class_names() == names and widget.controller.model is None
    assert "no classifier" in widget.status.text()


def test_open_project_whose_image_changed_shape(qtbot, nano_session, errors):
    viewer, widget, image, scribbles, seg, path = nano_session
    viewer.layers.clear()
    tifffile.imwrite(path.parent / "nano.tif", image[:100, :120])
    widget.open_project(str(path))
    wait_idle(qtbot, widget)
    one_line_error(widget, errors, 0, "(518, 518)", "(100, 120)", "the image changed")
    assert [lay.name for lay in viewer.layers] == ["nano"]  # the image opened, no scribbles added
    assert widget.controller.model is not None and widget.controller.model.loaded_from is None


def test_save_project_from_a_live_preview_stores_the_full_model(qtbot, make_napari_viewer, nanoparticles, errors,
                                                                  tmp_path):
    from napari_vitseg.pipeline import load_project

    image, scribbles, _ = nanoparticles
    tifffile.imwrite(tmp_path / "crop.tif", image[:160, :192])
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "crop.tif"))
    widget = dock(viewer)
    widget.new_scribbles_layer().data = scribbles[:160, :192].copy()
    widget.trees_spin.setValue(9)
    widget.live_check.setChecked(True)
    wait_idle(qtbot, widget)
    assert widget.controller.model is not None and widget.controller.model.live
    widget.live_check.setChecked(False)
    widget.save_project(str(tmp_path / "crop"))  # a name without suffix is kept as given (no dialog)
    wait_idle(qtbot, widget)
    assert errors == []
    project = load_project(tmp_path / "crop")
    assert project.segmenter.classifier_params["n_estimators"] == 9
    assert project.image_path == str(tmp_path / "crop.tif") and project.image_reader == "napari"


# -- several image layers as channels (format 2) ------------------------------------------------
@pytest.fixture
def cyx_session(qtbot, make_napari_viewer, shared_data, tmp_path, errors, monkeypatch):
    """The real alloy micrograph's first two colour channels as a CYX TIFF, opened as napari shows a
    multichannel file (``viewer.open(path, channel_axis=0)``: one layer per channel), the layers
    renamed and combined in the reverse order (channel 0 = the file's channel 1), its 3-class
    scribbles painted, a classifier trained and the project saved beside the file."""
    d = shared_data("alloy_optical_rgb")
    rgb = tifffile.imread(d / "image.tif")
    scribbles = tifffile.imread(d / "scribbles.tif")
    cyx = np.ascontiguousarray(np.moveaxis(rgb, -1, 0)[:2])
    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "cyx.tif", cyx)
    viewer = make_napari_viewer()
    red, green = viewer.open(str(data / "cyx.tif"), channel_axis=0, plugin="napari")
    red.name, green.name = "red", "green"
    widget = dock(viewer)
    widget.input.set_channel_layers([green, red])
    assert widget.input.channel_layers() == [green, red] and widget.channel_axis() == 2
    paint_and_train(qtbot, widget, scribbles, 20)
    assert errors == [] and widget.controller.model.segmenter.n_channels_ == 2
    seg = viewer.layers["segmentation"].data.copy()
    assert len(np.unique(seg)) == 3
    path = data / "cyx.vitseg-project"
    widget.save_project(str(path))
    wait_idle(qtbot, widget)
    assert errors == [] and path.is_file(), widget.status.text()
    return viewer, widget, cyx, scribbles, seg, path


def test_project_of_channel_layers_restores_them_and_the_segmentation(qtbot, cyx_session, errors):
    import json

    from napari_vitseg.pipeline.project import image_fingerprint

    viewer, widget, cyx, scribbles, seg, path = cyx_session
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("project.json"))
    assert meta["format_version"] == 2  # a reader of format 1 refuses it (it would restore one channel)
    assert [(c["relative"], c["layer_name"], c["shape"], c["reader"]) for c in meta["channels"]] == [
        ("cyx.tif", "green", list(cyx.shape[1:]), "napari"), ("cyx.tif", "red", list(cyx.shape[1:]), "napari")]
    assert [c["fingerprint"] for c in meta["channels"]] == [image_fingerprint(cyx[1]), image_fingerprint(cyx[0])]
    assert meta["image"]["channel_axis"] is None

    viewer.layers.clear()
    widget.trees_spin.setValue(7)
    widget.open_project(str(path))
    wait_idle(qtbot, widget)
    assert errors == [], errors
    chans = widget.input.channel_layers()
    assert [lay.name for lay in chans] == ["green", "red"]  # the saved order and names, not napari's
    np.testing.assert_array_equal(np.asarray(chans[0].data), cyx[1])
    np.testing.assert_array_equal(np.asarray(chans[1].data), cyx[0])
    assert widget.channel_axis() == 2 and widget.input.spatial_shape() == cyx.shape[1:]
    np.testing.assert_array_equal(widget.scribbles_layer.data, scribbles)
    model = widget.controller.model
    assert model.loaded_from == str(path) and model.segmenter.n_channels_ == 2
    assert widget.trees_spin.value() == 20
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, seg)

    # Train again on the restored session: the same labels as before the project was saved
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == []
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, seg)


def test_project_of_channel_layers_reuses_open_layers(qtbot, cyx_session, errors):
    viewer, widget, cyx, scribbles, seg, path = cyx_session
    viewer.layers.clear()
    opened = viewer.open(str(path.parent / "cyx.tif"), channel_axis=0, plugin="napari")  # napari's names
    widget.open_project(str(path))
    wait_idle(qtbot, widget)
    assert errors == [], errors
    images = [lay for lay in viewer.layers if lay.__class__.__name__ == "Image" and not widget.outputs.owns(lay)]
    assert images == list(opened)  # nothing opened twice
    assert widget.input.channel_layers() == [opened[1], opened[0]]  # matched by their pixels
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, seg)


def test_project_of_channel_layers_whose_file_changed(qtbot, cyx_session, errors):
    viewer, widget, cyx, scribbles, seg, path = cyx_session
    viewer.layers.clear()
    tifffile.imwrite(path.parent / "cyx.tif", cyx[::-1] // 2)
    widget.open_project(str(path))
    wait_idle(qtbot, widget)
    one_line_error(widget, errors, 0, "Channel 0", "'green'", "the image changed")
    assert len(viewer.layers) == 0  # the layers opened to look for the channels are removed


def test_single_image_projects_stay_format_1(nano_session):
    import json

    path = nano_session[-1]
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("project.json"))
    assert meta["format_version"] == 1 and "channels" not in meta
