"""The segmentation dock as a microscopist meets it (issue 14): one test per numbered item.

Each test drives the real widget in a napari viewer (pytest-qt, Xvfb) the way a user would:
strokes through the Labels layer's own paint API, napari's own controls (``selected_label``,
the dims slider), the dock's buttons; dialogs are replaced by their answers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")

from _widget_helpers import TIMEOUT, dock, docked_with_scribbles, paint_labels, wait_idle  # noqa: E402
from _widget_helpers import brush_stroke as stroke  # noqa: E402

from napari_vitseg._validation import VitsegError  # noqa: E402
from napari_vitseg._widgets._layers import hex_color  # noqa: E402
from napari_vitseg.pipeline import DEFAULT_COLORS  # noqa: E402

SHARED = Path(os.environ.get("VITSEG_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


# ------------------------------------------------------------------ item 1: training progress, cancel
def test_training_shows_tree_progress_and_cancels_within_a_second(qtbot, make_napari_viewer, cells_stack, errors):
    """Apply to stack trains the full model first: the bar moves with the trees, the status says
    'training rf: k/N trees', the description names the training-set cap, and Cancel acts < 1 s."""
    stack, scrib = cells_stack
    viewer = make_napari_viewer()
    widget = docked_with_scribbles(viewer, stack, scrib, trees=400)  # long enough to cancel in the middle
    seen = []
    set_status = widget.status.setText

    def spy(msg):
        seen.append((msg, widget.progress.value(), widget.progress.maximum()))
        set_status(msg)

    widget.status.setText = spy
    job = widget.apply_to_stack()
    assert job is not None
    qtbot.waitUntil(lambda: any("trees" in m for m, _, _ in seen), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=TIMEOUT)
    tree_msgs = [m for m, _, _ in seen if "trees" in m]
    assert any("training rf" in m and "/400 trees" in m for m in tree_msgs), tree_msgs
    n_before = len(seen)
    t0 = time.perf_counter()
    widget.cancel()
    wait_idle(qtbot, widget, timeout=60_000)
    # timing is for benchmarks (a busy machine); here: it stopped at the next chunk of trees
    print(f"cancel during training took {time.perf_counter() - t0:.2f} s")
    assert job.cancelled and job.result is None and "Cancelled" in widget.status.text()
    assert not any("trees" in m for m, _, _ in seen[n_before:]), seen[n_before:]
    assert widget.controller.model is None  # the forest was never finished
    assert errors == []
    # the full model's description says how many pixels per class it trains on at most
    assert "at most 20,000 labelled pixels per class" in widget.controller.describe(live=False)


def test_closing_the_dock_during_a_job_cancels_it_and_touches_no_widget(qtbot, make_napari_viewer, cells_stack):
    """Closing the dock while Apply to stack trains: the job is cancelled, nothing it still yields
    or returns reaches the deleted widget (no "wrapped C/C++ object has been deleted" in the Qt
    event loop, which pytest-qt turns into a failure), no result layer appears, and the worker
    stops."""
    from qtpy.QtWidgets import QApplication

    stack, scrib = cells_stack
    viewer = make_napari_viewer()
    widget = docked_with_scribbles(viewer, stack, scrib, trees=400)
    runner = widget.jobs
    job = widget.apply_to_stack()
    assert job is not None
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=TIMEOUT)
    names = [lay.name for lay in viewer.layers]
    viewer.window.remove_dock_widget("all")
    widget.deleteLater()
    QApplication.processEvents()
    qtbot.waitUntil(lambda: job.cancelled and not job.worker.is_running, timeout=60_000)
    qtbot.wait(200)  # let the worker's last signals arrive
    assert runner.current is None and runner.request("predict", lambda: iter(())) is None
    assert [lay.name for lay in viewer.layers] == names and job.result is None


# ------------------------------------------------------------------ item 2: labels outside the table
def test_label_painted_outside_the_table_gets_a_row(qtbot, make_napari_viewer, nanoparticles, errors):
    image, scribbles, _ = nanoparticles
    viewer = make_napari_viewer()
    viewer.add_image(image, name="tem")
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    assert widget.class_names() == ["class 1", "class 2"]
    grey = np.asarray(layer.get_color(3))
    # a stroke of label 3 written by a script / another tool: a new named, coloured row
    paint_labels(layer, scribbles == 1, 3)
    qtbot.waitUntil(lambda: len(widget.class_names()) == 3, timeout=5_000)
    assert widget.class_names()[2] == "class 3"
    assert "class 3" in widget.status.text()
    assert not np.allclose(layer.get_color(3), grey)
    assert hex_color(layer.get_color(3)) == widget.classes.colors()[2]
    assert layer.metadata["class_names"] == ["class 1", "class 2", "class 3"]
    # napari's own '=' key (selected_label + 1) beyond the table: the row is there before painting
    layer.selected_label = 4
    assert widget.class_names() == ["class 1", "class 2", "class 3", "class 4"]
    assert hex_color(layer.get_color(4)) == widget.classes.colors()[3]
    # a layer made elsewhere with labels 1..3: three rows when it is picked
    other = np.zeros_like(scribbles)
    other[scribbles == 1] = 1
    other[scribbles == 2] = 3
    other[:5, :5] = 2
    viewer.add_labels(other, name="made elsewhere")
    widget.scribbles_combo.setCurrentIndex(widget.scribbles_combo.findText("made elsewhere"))
    assert len(widget.class_names()) == 3
    assert errors == []


# ------------------------------------------------------------------ item 3: channels from any reader
def test_channel_axis_guessed_for_any_reader_and_scribbles_kept(qtbot, make_napari_viewer, nanoparticles, errors):
    image, scribbles, truth = nanoparticles
    two = np.stack([image, 255 - image]).astype(np.uint8)  # CYX, as napari's builtin reader gives it
    viewer = make_napari_viewer()
    viewer.add_image(two, name="cyx")
    widget = dock(viewer)
    assert widget.channel_axis() == 0
    assert widget.channel_hint.isVisibleTo(widget) and "2 channels" in widget.channel_hint.text()
    assert widget.input.spatial_shape() == image.shape
    # a (Y, X, 2) TIFF: the last axis
    viewer.add_image(np.moveaxis(two, 0, -1), name="yxc")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("yxc"))
    assert widget.channel_axis() == 2 and widget.input.spatial_shape() == image.shape
    # our reader's axes say it is a stack of planes: no guess
    viewer.add_image(np.stack([image] * 6), name="zyx", metadata={"axes": "ZYX", "channel_axis": None})
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("zyx"))
    assert widget.channel_axis() is None

    # painted with the wrong axis (none: a 2-plane "stack"), then corrected: the strokes are kept
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("cyx"))
    widget.channel_spin.setValue(-1)
    assert widget.input.spatial_shape() == two.shape
    layer = widget.new_scribbles_layer()
    for c in (1, 2):
        m = np.zeros(two.shape, bool)
        m[0] = scribbles == c
        paint_labels(layer, m, c)
    widget.channel_spin.setValue(0)
    new = widget.scribbles_layer
    assert new is not layer and not layer.visible
    assert new.data.shape == image.shape
    np.testing.assert_array_equal(new.data, scribbles)
    widget.trees_spin.setValue(10)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == []
    assert widget.controller.model.segmenter.n_channels_ == 2
    seg = viewer.layers["segmentation"].data
    assert seg.shape == image.shape and (seg == truth).mean() > 0.85


# ------------------------------------------------------------------ item 4: fits a laptop screen
def test_dock_scrolls_and_status_stays_visible_on_a_laptop_screen(qtbot, make_napari_viewer):
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    widget = dock(viewer)
    win = viewer.window._qt_window
    win.resize(1366, 768)
    qtbot.wait(200)
    assert isinstance(widget.scroll, QScrollArea)
    # Features and Classifier are under a collapsed "Advanced" section
    assert not widget.advanced.isExpanded()
    assert widget.features.isAncestorOf(widget.backbone_combo)
    assert widget.advanced.isAncestorOf(widget.features) and widget.advanced.isAncestorOf(widget.classifier)
    assert widget.scroll.isAncestorOf(widget.input) and widget.scroll.isAncestorOf(widget.actions)
    # the status line and the progress bar are outside the scroll area, inside the window
    for w in (widget.status, widget.progress):
        assert not widget.scroll.isAncestorOf(w)
        bottom = w.mapTo(win, QPoint(0, w.height())).y()
        assert w.isVisible() and bottom <= win.height(), (bottom, win.height())
    assert win.height() <= 768
    # expanded, the dock scrolls instead of growing out of the screen
    widget.advanced.expand(animate=False)
    qtbot.wait(200)
    assert win.height() <= 768
    bottom = widget.status.mapTo(win, QPoint(0, widget.status.height())).y()
    assert bottom <= win.height()


# ------------------------------------------------------------------ item 7: other planes after Train
def test_train_in_a_stack_then_scroll_predicts_the_plane(qtbot, make_napari_viewer, cells_stack, errors):
    stack, scrib = cells_stack
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="cells")
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    viewer.dims.set_current_step(0, 2)
    m = np.zeros_like(scrib)
    m[2] = scrib[2]
    layer.data = m
    widget.trees_spin.setValue(10)
    assert not widget.live_check.isChecked()
    widget.train()
    wait_idle(qtbot, widget)
    seg = viewer.layers["segmentation"]
    assert seg.data[2].any() and not seg.data[4].any()
    assert "Scroll" in widget.status.text()
    viewer.dims.set_current_step(0, 4)
    qtbot.waitUntil(lambda: seg.data[4].any() and not widget.busy, timeout=TIMEOUT)
    assert widget.controller.n_trainings == 1
    assert errors == []


# ------------------------------------------------------------------ item 8: outputs readable
def test_uncertainty_toggle_probability_classes_and_rgb_colours(qtbot, make_napari_viewer, errors):
    from napari_vitseg._widgets._controller import RGB_CLASS_COLORS

    d = SHARED / "alloy_optical_rgb"
    rgb = tifffile.imread(d / "image.tif")
    scr = tifffile.imread(d / "scribbles.tif")
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="alloy", rgb=True)
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    # colour micrograph: class colours from the saturated palette, not tab10
    assert widget.classes.colors()[:2] == list(RGB_CLASS_COLORS[:2])
    assert hex_color(layer.get_color(1)) == RGB_CLASS_COLORS[0]
    for c in (1, 2, 3):
        paint_labels(layer, scr == c, c)
    qtbot.waitUntil(lambda: len(widget.class_names()) == 3, timeout=5_000)  # label 3 got its row
    assert widget.classes.colors()[2] == RGB_CLASS_COLORS[2]
    widget.class_table.item(0, 1).setText("ferrite")
    widget.proba_check.setChecked(True)
    widget.uncertainty_check.setChecked(True)
    widget.trees_spin.setValue(10)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == []
    unc = viewer.layers["uncertainty"]
    assert unc.visible and unc.colormap.name == "inferno" and unc.blending == "translucent"
    widget.uncertainty_check.setChecked(False)
    assert not unc.visible
    prob = viewer.layers["probabilities"]
    assert prob.metadata["class_names"] == ["ferrite", "class 2", "class 3"]
    assert prob.blending == "translucent"
    label = viewer.dims.axis_labels[0]
    assert "0=ferrite" in label and "2=class 3" in label, label
    widget.class_table.item(1, 1).setText("pearlite")
    assert "1=pearlite" in viewer.dims.axis_labels[0]
    # a grey image keeps the default colours
    viewer2 = make_napari_viewer()
    viewer2.add_image(rgb[..., 0], name="grey")
    w2 = dock(viewer2)
    assert w2.classes.colors()[:2] == list(DEFAULT_COLORS[:2])


# ------------------------------------------------------------------ item 9: no command line, import weights
def test_no_command_line_in_the_gui_and_import_weights(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLabel

    from napari_vitseg import backbones
    from napari_vitseg._widgets import _sections

    monkeypatch.delenv("VITSEG_ALLOW_RANDOM_WEIGHTS", raising=False)
    viewer = make_napari_viewer()
    widget = dock(viewer)
    texts = []
    for w in widget.findChildren(QLabel) + widget.findChildren(QAbstractButton):
        texts += [w.text(), w.toolTip()]
    for combo in widget.findChildren(QComboBox):
        texts += [combo.itemText(i) for i in range(combo.count())] + [combo.toolTip()]
    for t in texts:
        assert "vitseg weights" not in t and "CLI" not in t and "command line" not in t, t
    n_rows = widget.backbone_combo.count()
    assert n_rows <= 3  # none, a separator, one row for every backbone without weights

    # Import weights…: file dialog -> backbone -> the library's import -> now in the list
    ckpt = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    ckpt.write_bytes(b"x")
    calls = []
    have: list[str] = []

    def fake_import(path, name, overwrite=False):
        calls.append((str(path), name))
        have.append(name)
        return tmp_path / "weights" / ckpt.name, "0" * 64

    monkeypatch.setattr(backbones, "import_weights", fake_import)
    monkeypatch.setattr(_sections, "available_backbones", lambda: list(have))
    monkeypatch.setattr(widget.features, "ask_weights_file", lambda: str(ckpt))
    asked = []

    def ask_name(path, names):
        asked.append(names)
        return "dinov2_vits14_reg"

    monkeypatch.setattr(widget.features, "ask_backbone_name", ask_name)
    assert widget.import_weights_btn.text() == "Import weights…"
    widget.import_weights_btn.click()
    assert calls == [(str(ckpt), "dinov2_vits14_reg")]
    assert "dinov2_vits14_reg" in asked[0]
    assert widget.backbone_combo.currentText() == "dinov2_vits14_reg"
    assert widget.controller.feature_config.backbone == "dinov2_vits14_reg"
    assert "Imported" in widget.status.text()
    assert not widget.weights_notice.isVisibleTo(widget)

    # a refused file: the library's reason in red, nothing changes
    def refuse(path, name, overwrite=False):
        raise VitsegError("the checkpoint's layout does not match dinov2_vitb14")

    monkeypatch.setattr(backbones, "import_weights", refuse)
    monkeypatch.setattr(widget.features, "ask_backbone_name", lambda path, names: "dinov2_vitb14")
    widget.import_weights_btn.click()
    assert "does not match" in widget.status.text() and widget.status.styleSheet()


# ------------------------------------------------------------------ item 11: the small things
def test_small_fixes(qtbot, make_napari_viewer, nanoparticles, tmp_path, errors, monkeypatch):
    image, scribbles, _ = nanoparticles
    path = tmp_path / "images" / "tem.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, image)
    viewer = make_napari_viewer()
    viewer.open(str(path))  # whichever reader napari picks: the layer knows its file
    widget = dock(viewer)

    # Save defaults beside the image, not in the working folder
    assert widget.default_save_path() == str(path.parent / "tem.vitseg")

    # a stale red error goes when 'New' makes a layer
    widget.train()
    assert widget.status.styleSheet() and errors
    errors.clear()
    layer = widget.new_scribbles_layer()
    assert not widget.status.styleSheet()

    # the same error at every live stroke pops up once (the status line keeps saying it)
    flat = np.full_like(image, 7)
    flat_layer = viewer.add_image(flat.astype(np.float32), name="flat")
    flat_layer.data[0, 0] = np.nan
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("flat"))
    widget.scribbles_combo.setCurrentIndex(widget.scribbles_combo.findData(layer))
    widget.live_debounce_ms = 0
    widget.live_check.setChecked(True)
    for k in range(3):
        stroke(layer, [(100 + 20 * k, x) for x in range(100, 160, 3)], 1 + k % 2)
        qtbot.wait(50)
        wait_idle(qtbot, widget)
    nan_errors = [e for e in errors if "NaN" in e]
    assert len(nan_errors) == 1, errors
    assert widget.status.styleSheet()
    widget.live_check.setChecked(False)
    wait_idle(qtbot, widget)

    # Apply to files: a rerun that skipped everything says so, and the results open in napari
    widget.image_combo.setCurrentIndex(0)
    layer.data = scribbles.copy()
    widget.trees_spin.setValue(10)
    out = tmp_path / "out"
    monkeypatch.setattr(widget, "ask_input_paths", lambda kind: [str(path)])
    monkeypatch.setattr(widget, "ask_output_dir", lambda: str(out))
    widget.open_results_check.setChecked(False)
    widget.apply_to_files()
    wait_idle(qtbot, widget)
    assert widget.status.text().startswith("Wrote 1 segmentation(s)"), widget.status.text()
    n_layers = len(viewer.layers)
    widget.open_results_check.setChecked(True)
    widget.apply_to_files()
    wait_idle(qtbot, widget)
    msg = widget.status.text()
    assert "Wrote nothing new" in msg and "1 already done" in msg, msg
    assert len(viewer.layers) == n_layers + 1
    assert "tem_seg" in viewer.layers[-1].name
    assert errors == nan_errors


def test_stack_messages_count_planes_as_napari_does(qtbot, make_napari_viewer, cells_stack, errors):
    """napari's slider counts planes from 0: so do the status messages."""
    stack, scrib = cells_stack
    viewer = make_napari_viewer()
    widget = docked_with_scribbles(viewer, stack, scrib, trees=5)
    viewer.dims.set_current_step(0, 3)
    seen = []
    set_status = widget.status.setText
    widget.status.setText = lambda msg: (seen.append(msg), set_status(msg))
    widget.apply_to_stack()
    wait_idle(qtbot, widget)
    plane_msgs = [m for m in seen if "plane " in m and "/6)" in m]
    assert any("plane 3 (1/6)" in m for m in plane_msgs), plane_msgs
    assert any("plane 0 (" in m for m in plane_msgs), plane_msgs
    assert errors == []


# ------------------------------------------------------------------ beyond: where to paint next
def test_where_to_paint_next_jumps_to_the_most_uncertain_region(qtbot, make_napari_viewer, nanoparticles, errors):
    from napari_vitseg._widgets._controller import suggest_region

    image, scribbles, _ = nanoparticles
    viewer = make_napari_viewer()
    viewer.add_image(image, name="tem")
    widget = dock(viewer)
    assert widget.suggest_where_to_paint() is None and "Train" in widget.status.text()
    layer = widget.new_scribbles_layer()
    layer.data = scribbles.copy()
    widget.trees_spin.setValue(10)
    widget.train()
    wait_idle(qtbot, widget)
    unc = viewer.layers["uncertainty"].data
    y, x = widget.suggest_where_to_paint()
    assert (y, x) == suggest_region(unc, labelled=scribbles != 0)[:2]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    assert np.allclose(camera.center[-2:], (y, x))
    assert viewer.layers["uncertainty"].visible and widget.uncertainty_check.isChecked()
    # it is a region the classifier is much less sure of than the plane on average
    assert unc[max(0, y - 32):y + 32, max(0, x - 32):x + 32].mean() > 2 * unc.mean()
    assert "row" in widget.status.text() and errors == []
