"""Issue 14 (build list): class-number shortcuts, a legend, and Export… of the segmentation,
probabilities and uncertainty from the segmentation dock.

Driven the way a user would: key presses on napari's canvas, renames in the class table,
the Export… menu's action with the file dialog replaced by its answer; the files written are
reopened through the plugin's reader.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")

from _widget_helpers import dock, wait_idle  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from napari_vitseg import _reader  # noqa: E402
from napari_vitseg._widgets._layers import hex_color  # noqa: E402
from napari_vitseg.io import tiff_series  # noqa: E402


def _press(viewer, qtbot, key, modifier=Qt.NoModifier):
    """A real key press on napari's canvas (what a user's keyboard sends)."""
    qt_viewer = viewer.window._qt_viewer
    qtbot.keyClick(qt_viewer, key, modifier)


def _image_on_disk(tmp_path, image, name="cells.tif"):
    path = tmp_path / name
    tifffile.imwrite(path, image)
    return path


def _stack(two_region_image, n=10):
    """A small stack (more planes than a channel axis would have: not guessed as channels)."""
    image, scribbles = two_region_image
    stack = np.stack([image + 0.1 * z for z in range(n)])
    scr = np.zeros(stack.shape, np.uint8)
    scr[0] = scribbles
    return stack, scr


def _trained(qtbot, viewer, image, scribbles, *, probabilities=False, name="cells"):
    if not any(layer.name == name for layer in viewer.layers):
        viewer.add_image(image, name=name)
    widget = dock(viewer)
    widget.trees_spin.setValue(20)
    layer = widget.new_scribbles_layer()
    layer.data = scribbles.copy()
    widget.proba_check.setChecked(probabilities)
    assert widget.train() is not None, (errors_of(widget), widget.status.text())
    wait_idle(qtbot, widget)
    return widget, layer


def errors_of(widget):
    return widget.status.text() if widget.status.styleSheet() else ""


def _export(qtbot, widget, what, path):
    widget.ask_export_path = lambda w: str(path)
    job = widget.export_outputs(what)
    wait_idle(qtbot, widget)
    return job


# ------------------------------------------------------------------ class-number shortcuts
def test_alt_number_paints_with_that_class_and_napari_keys_still_work(qtbot, make_napari_viewer, two_region_image,
                                                                     errors):
    image, _ = two_region_image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    widget.add_class()  # three classes
    viewer.layers.selection.active = viewer.layers["cells"]  # the user looked at the image layer
    layer.selected_label = 1
    layer.mode = "pan_zoom"
    _press(viewer, qtbot, Qt.Key_3, Qt.AltModifier)
    assert layer.selected_label == 3
    assert viewer.layers.selection.active is layer and layer.mode == "paint"
    assert widget.class_table.currentRow() == 2
    assert "class 3" in widget.status.text()
    # napari's own Labels keys are untouched: bare 1 is still the eraser, 2 the brush
    _press(viewer, qtbot, Qt.Key_1)
    assert layer.mode == "erase" and layer.selected_label == 3
    _press(viewer, qtbot, Qt.Key_2)
    assert layer.mode == "paint"
    # a class the table does not have: said, nothing changes
    _press(viewer, qtbot, Qt.Key_7, Qt.AltModifier)
    assert layer.selected_label == 3 and "no class 7" in widget.status.text()
    # discoverable: the table says which key paints with a class
    assert "Alt+number" in widget.class_table.horizontalHeaderItem(1).text()
    assert "Alt+2" in widget.class_table.item(1, 1).toolTip()
    assert errors == []
    # closing the widget removes its keys (and only its keys)
    widget.close()
    from napari.utils.key_bindings import coerce_keybinding

    assert coerce_keybinding("Alt-3") not in viewer.keymap
    layer.selected_label = 1
    _press(viewer, qtbot, Qt.Key_3, Qt.AltModifier)
    assert layer.selected_label == 1


def test_a_key_the_user_bound_is_left_alone(qtbot, make_napari_viewer, two_region_image, errors):
    image, _ = two_region_image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    pressed = []
    viewer.bind_key("Alt-2", lambda v: pressed.append(2))
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    _press(viewer, qtbot, Qt.Key_2, Qt.AltModifier)
    assert pressed == [2] and layer.selected_label != 2
    assert "Alt-2" in widget.shortcuts.skipped and "Alt+2" not in widget.class_table.item(1, 1).toolTip()
    widget.close()
    _press(viewer, qtbot, Qt.Key_2, Qt.AltModifier)
    assert pressed == [2, 2]  # the user's binding survived the widget


# ------------------------------------------------------------------ legend
def test_legend_and_hover_name_the_classes_and_follow_renames(qtbot, make_napari_viewer, two_region_image, errors):
    image, scribbles = two_region_image
    viewer = make_napari_viewer()
    widget, layer = _trained(qtbot, viewer, image, scribbles)
    assert widget.legend.lines == ["■ 1  class 1", "■ 2  class 2"]
    colors = [hex_color(viewer.canvas.overlays[f"vitseg_class_{k}"].color) for k in (1, 2)]
    assert colors == [c.lower() for c in widget.classes.colors()]
    widget.class_table.item(1, 1).setText("particle")
    widget.add_class()
    assert widget.legend.lines == ["■ 1  class 1", "■ 2  particle", "■ 3  class 3"]
    # napari's status bar on hover: value and class name, on the scribbles and the segmentation
    assert "class: particle" in layer.get_status((20, 52))["coordinates"]
    seg = widget.outputs.layers["labels"]
    assert "class: particle" in seg.get_status((20, 50))["coordinates"]
    widget.set_class_color(2, "#ff00ff")
    assert hex_color(viewer.canvas.overlays["vitseg_class_2"].color) == "#ff00ff"
    widget.classes.legend_check.setChecked(False)
    assert widget.legend.lines == []
    widget.classes.legend_check.setChecked(True)
    assert len(widget.legend.lines) == 3
    widget.close()
    assert not any(k.startswith("vitseg_class_") for k in viewer.canvas.overlays)
    assert errors == []


# ------------------------------------------------------------------ export
def test_export_writes_three_tiffs_that_reopen_with_their_classes(qtbot, make_napari_viewer, two_region_image,
                                                                  tmp_path, errors):
    image, scribbles = two_region_image
    src = _image_on_disk(tmp_path, image)
    viewer = make_napari_viewer()
    viewer.open(str(src))
    widget, _ = _trained(qtbot, viewer, image, scribbles, probabilities=True, name="cells")
    widget.class_table.item(0, 1).setText("matrix")
    widget.class_table.item(1, 1).setText("particle")
    expected = {"segmentation": tmp_path / "cells_seg.tif", "probabilities": tmp_path / "cells_seg_probabilities.tif",
                "uncertainty": tmp_path / "cells_seg_uncertainty.tif"}
    for what, path in expected.items():
        assert widget.default_export_path(what) == str(path)  # beside the image, as Save proposes
        assert _export(qtbot, widget, what, widget.default_export_path(what)) is not None
        assert path.is_file(), (what, widget.status.text())
    assert "Exported the uncertainty" in widget.status.text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cells.tif", *(p.name for p in expected.values())])
    out = widget.outputs.layers

    (data, meta, kind), = _reader.read_tiff(str(expected["segmentation"]))
    assert kind == "labels" and data.dtype == np.uint8 and data.shape == image.shape
    np.testing.assert_array_equal(data, np.asarray(out["labels"].data))
    assert meta["metadata"]["class_names"] == ["matrix", "particle"]
    assert meta["colormap"][2] == widget.classes.colors()[1]

    layers = _reader.read_tiff(str(expected["probabilities"]))
    assert [m["name"] for _, m, _ in layers] == ["cells_seg_probabilities · matrix", "cells_seg_probabilities · particle"]
    probs = np.stack([d for d, _, _ in layers])
    assert probs.dtype == np.float32 and probs.shape == (2, *image.shape)
    np.testing.assert_allclose(probs, np.asarray(out["probabilities"].data), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-4)
    assert tiff_series(expected["probabilities"]).axes == "CYX"

    (unc, meta, kind), = _reader.read_tiff(str(expected["uncertainty"]))
    assert kind == "image" and unc.dtype == np.float32 and unc.shape == image.shape
    np.testing.assert_allclose(unc, np.asarray(out["uncertainty"].data) / 255, atol=1e-6)
    assert 0 <= unc.min() and unc.max() <= 1
    assert tiff_series(expected["uncertainty"]).vitseg["role"] == "uncertainty"
    assert errors == []


@pytest.mark.parametrize("which", ["image", "scribbles"])
def test_export_refuses_the_layers_own_files_and_writes_nothing(qtbot, make_napari_viewer, two_region_image,
                                                                tmp_path, errors, which):
    image, scribbles = two_region_image
    src = _image_on_disk(tmp_path, image)
    scr_path = _image_on_disk(tmp_path, scribbles, "cells_scribbles.tif")
    viewer = make_napari_viewer()
    viewer.open(str(src))
    widget = dock(viewer)
    widget.trees_spin.setValue(20)
    (layer,) = viewer.open(str(scr_path), plugin="napari-vitseg")
    assert widget.scribbles_layer is layer
    assert widget.train() is not None
    wait_idle(qtbot, widget)
    target = src if which == "image" else scr_path
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for what in ("segmentation", "uncertainty"):
        assert _export(qtbot, widget, what, target) is None
        assert errors and "would overwrite it" in errors[-1] and repr(layer.name if which == "scribbles" else "cells") \
            in errors[-1], errors
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, no temporary left


def test_export_of_a_stack_names_the_missing_planes_and_can_apply_to_stack_first(qtbot, make_napari_viewer,
                                                                                 two_region_image, tmp_path, errors,
                                                                                 monkeypatch):
    stack, scr = _stack(two_region_image)
    viewer = make_napari_viewer()
    widget, _ = _trained(qtbot, viewer, stack, scr)
    z = widget.input.current_z()
    assert widget.outputs.predicted == {z} == {4}  # Train segments the plane in view (napari starts mid-stack)
    others = [k for k in range(10) if k != z]
    asked = []

    def answer(choice):
        def ask(plan):
            asked.append(list(plan.missing))
            return choice
        return ask

    # the question a user sees (the dialog's buttons; 'Export what exists' clicked)
    from qtpy.QtWidgets import QMessageBox

    shown = []

    def click_export(box):
        shown.append((box.text(), [b.text() for b in box.buttons()]))
        next(b for b in box.buttons() if b.text() == "Export what exists").click()

    monkeypatch.setattr(QMessageBox, "exec_", click_export)
    plan = widget.outputs.export_plan("uncertainty", tmp_path / "u.tif", sources={}, names=["a", "b"],
                                      colors=["#ff0000", "#00ff00"])
    assert widget.ask_missing_planes(plan) == "export"
    assert shown[0][0].startswith("Planes 0, 1, 2, 3, 5") and "Apply to stack first" in shown[0][1]
    # export what exists: the missing planes are said, stored, and written empty
    widget.ask_missing_planes = answer("export")
    path = tmp_path / "part_seg.tif"
    assert _export(qtbot, widget, "segmentation", path) is not None
    assert asked == [others]
    assert "planes 0, 1, 2, 3, 5, 6, 7, 8 and 9 of 10 are not segmented" in widget.status.text()
    (data, meta, kind), = _reader.read_tiff(str(path))
    assert kind == "labels" and data.shape == stack.shape and data.dtype == np.uint8
    assert data[z].any() and not data[others].any()
    np.testing.assert_array_equal(data[z], widget.outputs.layers["labels"].data[z])
    assert tiff_series(path).vitseg["missing_planes"] == others
    # cancelled: nothing written
    widget.ask_missing_planes = answer(None)
    assert _export(qtbot, widget, "uncertainty", tmp_path / "none.tif") is None
    assert not (tmp_path / "none.tif").exists()
    # probabilities were never drawn: 'Apply to stack first' ticks the box, segments every plane, then exports
    widget.ask_missing_planes = answer("apply")
    path = tmp_path / "all_probabilities.tif"
    job = _export(qtbot, widget, "probabilities", path)
    assert job is not None and job.kind == "apply"
    qtbot.waitUntil(path.is_file, timeout=60_000)
    wait_idle(qtbot, widget)
    assert asked[-1] == list(range(10)) and widget.proba_check.isChecked()
    assert widget.outputs.predicted == set(range(10))
    series = tiff_series(path)
    assert series.axes == "ZCYX" and series.shape == (10, 2, *stack.shape[1:]) and "missing_planes" not in series.vitseg
    layers = _reader.read_tiff(str(path))
    assert len(layers) == 2 and layers[0][0].shape == stack.shape
    np.testing.assert_allclose(layers[0][0] + layers[1][0], 1, atol=1e-4)
    assert "Exported the probabilities" in widget.status.text()
    assert errors == []


def test_export_from_on_disk_output_stores(qtbot, make_napari_viewer, two_region_image, tmp_path, errors):
    """Big images draw into uint8 zarr stores (probabilities 0..255): the export still writes 0..1 floats."""
    image, scribbles = two_region_image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    widget = dock(viewer)
    widget.outputs.memory_limit = 1  # every output is an on-disk store
    widget.trees_spin.setValue(20)
    widget.new_scribbles_layer().data = scribbles.copy()
    widget.proba_check.setChecked(True)
    assert widget.train() is not None
    wait_idle(qtbot, widget)
    store = widget.outputs.layers["probabilities"].data
    assert widget.outputs.stores.owns(store) and store.dtype == np.uint8
    path = tmp_path / "p.tif"
    assert _export(qtbot, widget, "probabilities", path) is not None
    probs = tifffile.imread(path)
    assert probs.dtype == np.float32 and probs.shape == (2, *image.shape)
    np.testing.assert_allclose(probs, np.asarray(store) / 255, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=2 / 255)
    seg_path = tmp_path / "s.tif"
    assert _export(qtbot, widget, "segmentation", seg_path) is not None
    np.testing.assert_array_equal(tifffile.imread(seg_path), np.asarray(widget.outputs.layers["labels"].data))
    assert errors == []
