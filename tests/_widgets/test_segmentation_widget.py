"""The segmentation dock widget in a real napari viewer (headless under Xvfb via pytest-xvfb).

Scribbles are painted programmatically the way napari records a brush stroke: edits inside
``layer.block_history()`` become one undo item and fire one ``paint`` event on exit, as the
mouse release does.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_vitseg.backbones import NO_WEIGHTS_NOTICE
from napari_vitseg.features.classical import classical_feature_names
from napari_vitseg.metrics import mean_iou

pytest.importorskip("napari")

from _widget_helpers import (  # noqa: E402
    TIMEOUT,
    brush_stroke,
    dock,
    docked_with_scribbles,
    paint_and_train,
    paint_labels,
    wait_idle,
)

from napari_vitseg._widgets._sections import MISSING_ROW, NO_BACKBONE, NO_WEIGHTS_GUI, RANDOM_SUFFIX  # noqa: E402
from napari_vitseg._widgets._segmentation import SegmentationWidget  # noqa: E402

SHARED = Path(os.environ.get("VITSEG_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def shared_data(name: str) -> Path:
    """A data set of ../shared/data (CI has it beside the checkout)."""
    p = SHARED / name
    if not p.exists():
        pytest.fail(f"shared data {p} is missing: CI must run with ../shared beside the repository")
    return p


@pytest.fixture
def nano_viewer(make_napari_viewer, nanoparticles):
    image, scribbles, truth = nanoparticles
    viewer = make_napari_viewer()
    viewer.add_image(image, name="tem_nanoparticles")
    return viewer, image, scribbles, truth


def test_train_paint_real_scribbles_miou(qtbot, nano_viewer, errors):
    """Dock, create scribbles, paint the real scribbles as strokes, Train: mIoU >= 0.88 (classical)."""
    viewer, image, scribbles, truth = nano_viewer
    widget = dock(viewer)
    assert widget.backbone_combo.currentText() == NO_BACKBONE
    layer = widget.new_scribbles_layer()
    assert widget.scribbles_layer is layer and layer.data.shape == image.shape
    paints = []
    layer.events.paint.connect(lambda e: paints.append(1))
    for c in (1, 2):
        paint_labels(layer, scribbles == c, c)
    assert len(paints) == 2
    np.testing.assert_array_equal(layer.data, scribbles)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == []
    seg = viewer.layers["segmentation"]
    miou = mean_iou(seg.data, truth)
    print(f"widget mIoU (classical features, RF 100 trees): {miou:.4f}")
    assert miou >= 0.88, miou
    unc = viewer.layers["uncertainty"]
    # uint8 uncertainty: 0..255 stands for 0..1 (two classes: at most 0.5)
    assert unc.data.shape == image.shape and unc.data.dtype == np.uint8 and unc.data.max() <= 128
    assert unc.colormap.name == "inferno" and tuple(unc.contrast_limits) == (0, 255)
    assert unc.blending == "translucent" and not unc.visible
    assert isinstance(seg.data, np.ndarray)  # a small image keeps numpy output layers
    # outputs sit below the scribbles, which stay active for painting
    names = [lay.name for lay in viewer.layers]
    assert names.index("segmentation") < names.index(layer.name)
    assert viewer.layers.selection.active is layer
    # the segmentation uses the scribbles' class colours
    np.testing.assert_allclose(seg.get_color(2), layer.get_color(2))
    assert widget.controller.model.live is False


def test_live_mode_retrains_after_paint_and_undo(qtbot, nano_viewer, errors):
    viewer, image, scribbles, truth = nano_viewer
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    paint_labels(layer, scribbles == 1, 1)
    widget.live_check.setChecked(True)
    # one class only: live mode waits quietly (status message, no error notification)
    wait_idle(qtbot, widget)
    assert widget.controller.n_trainings == 0 and "two classes" in widget.status.text()
    assert errors == []
    paint_labels(layer, scribbles == 2, 2)
    qtbot.waitUntil(lambda: widget.controller.n_trainings == 1 and not widget.busy, timeout=TIMEOUT)
    seg = viewer.layers["segmentation"]
    assert mean_iou(seg.data, truth) >= 0.88
    assert widget.controller.model.live is True
    n_lat = len(widget.latencies)
    assert n_lat >= 1

    # a real brush stroke: the paint event (fired once, on "release") triggers one retraining
    before = layer.data.copy()
    pts = [(300, x) for x in range(100, 160, 2)]
    brush_stroke(layer, pts, 2)
    assert not np.array_equal(before, layer.data)
    after = layer.data.copy()
    qtbot.waitUntil(lambda: widget.controller.n_trainings == 2 and not widget.busy, timeout=TIMEOUT)
    assert len(widget.latencies) == n_lat + 1
    rec = widget.latencies[-1]
    assert rec["t_paint"] <= rec["t_start"] <= rec["t_first"] <= rec["t_final"]
    assert rec["t_start"] - rec["t_paint"] >= 0.9 * widget.live_debounce_ms / 1000  # the debounce

    # undo through napari's Labels history restores the scribbles and retrains; redo re-applies
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)
    qtbot.waitUntil(lambda: widget.controller.n_trainings == 3 and not widget.busy, timeout=TIMEOUT)
    layer.redo()
    np.testing.assert_array_equal(layer.data, after)
    qtbot.waitUntil(lambda: widget.controller.n_trainings == 4 and not widget.busy, timeout=TIMEOUT)

    # several strokes in quick succession are debounced into one retraining
    for y in (320, 330, 340):
        brush_stroke(layer, [(y, x) for x in range(100, 130, 3)], 2)
    qtbot.wait(50)
    wait_idle(qtbot, widget)
    assert widget.controller.n_trainings == 5
    assert errors == []

    widget.live_check.setChecked(False)
    brush_stroke(layer, [(360, x) for x in range(100, 130, 3)], 2)
    qtbot.wait(LIVE_WAIT := 500)
    assert LIVE_WAIT > 300 and widget.controller.n_trainings == 5 and not widget.busy


@pytest.mark.slow
def test_stack_current_plane_first_then_cancel_apply(qtbot, make_napari_viewer, cells_stack, samples, errors,
                                                      monkeypatch):
    """A lazily read stack: Live predicts the plane in view only; Apply to stack can be cancelled."""
    import dask.array as da

    from napari_vitseg import _reader

    stack, sscrib = cells_stack
    viewer = make_napari_viewer()
    monkeypatch.setattr(_reader, "LAZY_BYTES", 0)  # open it as a dask array, as a multi-GB file would be
    # our reader, as the Choose reader dialog or an .ome.tif name would pick it (a plain .tif of
    # this size opens with napari's builtin reader, which has no lazy mode)
    path = str(samples / "tem_cells_stack" / "image.tif")
    for data, kwargs, _ in _reader.napari_get_reader(path)(path):
        viewer.add_image(data, **kwargs)
    assert isinstance(viewer.layers[0].data, da.Array)
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    assert layer.data.shape == stack.shape
    z = 2
    viewer.dims.set_current_step(0, z)
    for c in (1, 2, 3):
        m = np.zeros_like(sscrib, dtype=bool)
        m[z] = sscrib[z] == c
        paint_labels(layer, m, c)
    widget.trees_spin.setValue(10)
    widget.live_check.setChecked(True)
    qtbot.waitUntil(lambda: widget.controller.n_trainings == 1 and not widget.busy, timeout=TIMEOUT)
    seg = viewer.layers["segmentation"]
    assert seg.data.shape == stack.shape
    done = [k for k in range(stack.shape[0]) if seg.data[k].any()]
    assert done == [z]
    lab = sscrib[z] != 0
    assert (seg.data[z][lab] == sscrib[z][lab]).mean() > 0.9
    # moving to another plane in Live mode segments it on demand
    viewer.dims.set_current_step(0, 4)
    qtbot.waitUntil(lambda: seg.data[4].any() and not widget.busy, timeout=TIMEOUT)
    assert widget.controller.n_trainings == 1
    widget.live_check.setChecked(False)

    # Apply to stack: cancel after the first plane arrives; the job stops early without a result
    shown = []
    show = widget.outputs.show

    def spy(upd):
        if widget.current_job is not None and widget.current_job.kind == "apply":
            shown.append(upd.z)
        show(upd)

    monkeypatch.setattr(widget.outputs, "show", spy)
    job = widget.apply_to_stack()
    assert job is not None and job.kind == "apply"
    qtbot.waitUntil(lambda: len(shown) >= 1, timeout=TIMEOUT)
    widget.cancel()
    wait_idle(qtbot, widget)
    # the live model was a preview: Apply trained the full model first
    assert not widget.controller.model.live
    assert job.cancelled and job.result is None
    assert 1 <= len(shown) < stack.shape[0], shown
    assert shown[0] == 4  # the plane in view comes first
    assert "Cancelled" in widget.status.text()
    assert errors == []


def test_3d_filters_on_a_stack_train_apply_and_round_trip(qtbot, make_napari_viewer, cells_stack, tmp_path, errors,
                                                           monkeypatch):
    """The Features box's 3D switch: Train on a stack computes the fine scales across planes (the
    model's features differ from per-plane ones), and a saved classifier brings the switch and the
    z step back."""
    from napari_vitseg import Segmenter

    stack, sscrib = cells_stack
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="cells", scale=(5.0, 2.0, 2.0))  # sections 2.5x thicker than a pixel
    widget = dock(viewer)
    assert widget.spatial_combo.currentData() == "auto" and not widget.z_spin.isEnabled()
    widget.spatial_combo.setCurrentIndex(widget.spatial_combo.findData("3d"))
    assert widget.z_spin.value() == 2.5  # taken from the layer's scale
    widget.z_spin.setValue(2.0)
    cfg = widget.controller.feature_config
    assert cfg.spatial == "3d" and cfg.z_anisotropy == 2.0 and widget.z_spin.isEnabled()
    scr = np.zeros_like(sscrib)
    scr[2] = sscrib[2]
    paint_and_train(qtbot, widget, scr, trees=10)
    seg = widget.controller.model.segmenter
    assert seg.feature_config.spatial == "3d" and errors == []
    ref = Segmenter(cfg, classifier_params={"n_estimators": 10})
    from napari_vitseg.pipeline.segmenter import plane_of

    f3 = seg.plane_features(plane_of(stack, 3, 2))
    f2 = Segmenter(cfg.replace(spatial="2d")).plane_features(stack[2])
    assert f3.shape == f2.shape and not np.allclose(f3, f2) and ref.feature_config == cfg
    path = tmp_path / "cells3d.vitseg"
    monkeypatch.setattr(widget, "ask_save_path", lambda: str(path))
    widget.save_classifier()
    wait_idle(qtbot, widget)
    widget.spatial_combo.setCurrentIndex(widget.spatial_combo.findData("2d"))
    assert widget.controller.feature_config.spatial == "2d"
    monkeypatch.setattr(widget, "ask_open_path", lambda: str(path))
    widget.load_classifier()
    wait_idle(qtbot, widget)
    assert widget.spatial_combo.currentData() == "3d" and widget.z_spin.value() == 2.0
    assert widget.controller.feature_config.spatial == "3d" and errors == []


def _smooth_volume():
    """A (16, 96, 96) uint8 volume of isotropic smooth structure and scribbles of two classes on plane 7."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    vol = (ndi.gaussian_filter(rng.normal(size=(16, 96, 96)), 3) * 400 + 128).clip(0, 255).astype(np.uint8)
    scr = np.zeros(vol.shape, np.uint8)
    scr[7, 10:20, 10:60] = 1
    scr[7, 70:80, 10:60] = 2
    return vol, scr


def test_auto_picks_3d_filters_for_a_volume_and_2d_for_unrelated_planes(qtbot, make_napari_viewer, cells_stack,
                                                                         errors):
    """The default "Across planes: auto": Train on a smooth volume (isotropic structure) uses 3D
    filters with the estimated z step, on the TEM cells stack (unrelated images) 2D ones; the
    status line says which, and the box stays on auto."""
    from napari_vitseg.features.volume import estimate_z_anisotropy

    vol, scr = _smooth_volume()
    viewer = make_napari_viewer()
    widget = dock(viewer)
    assert widget.spatial_combo.currentData() == "auto" and widget.controller.feature_config.spatial == "auto"
    viewer.add_image(vol, name="volume")
    paint_and_train(qtbot, widget, scr, trees=5)
    cfg = widget.controller.model.segmenter.feature_config
    a = estimate_z_anisotropy(vol, [7])
    assert a <= 2.0 and cfg.spatial == "3d" and cfg.z_anisotropy == round(max(1.0, a), 2)
    a = cfg.z_anisotropy
    assert f"3D filters across planes (z step {a:g} px, chosen from the stack)" in widget.status.text()
    assert widget.spatial_combo.currentData() == "auto" and errors == []

    stack, sscrib = cells_stack
    viewer.layers.clear()
    viewer.add_image(stack, name="cells")
    only = np.zeros_like(sscrib)
    only[2] = sscrib[2]
    paint_and_train(qtbot, widget, only, trees=5)
    assert widget.controller.model.segmenter.feature_config.spatial == "2d"
    assert "2D filters per plane (chosen from the stack)" in widget.status.text() and errors == []


def test_auto_takes_the_z_step_the_layers_scale_declares(qtbot, make_napari_viewer, errors):
    """A stack whose layer scale declares its voxel size (e.g. a reader that read the file's
    physical sizes): "auto" takes that z step as it is instead of estimating one from the pixels,
    3D filters at 1.5 px, 2D for sections 5 px thick, even when the pixels look like a volume."""
    vol, scr = _smooth_volume()
    viewer = make_napari_viewer()
    widget = dock(viewer)
    # an RGB stack: napari gives its colour axis no scale; choosing 3D fills in its z step
    viewer.add_image(np.repeat(vol[..., None], 3, axis=-1), name="rgb", rgb=True, scale=(3.0, 1.0, 1.0))
    assert widget.input.declared_z_step() == 3.0
    widget.spatial_combo.setCurrentIndex(widget.spatial_combo.findData("3d"))
    assert widget.z_spin.value() == 3.0
    widget.spatial_combo.setCurrentIndex(widget.spatial_combo.findData("auto"))
    viewer.layers.clear()
    viewer.add_image(vol, name="volume", scale=(0.015, 0.01, 0.01))  # µm: z step 1.5 px
    assert widget.input.declared_z_step() == pytest.approx(1.5)
    paint_and_train(qtbot, widget, scr, trees=5)
    cfg = widget.controller.model.segmenter.feature_config
    assert cfg.spatial == "3d" and cfg.z_anisotropy == pytest.approx(1.5)
    assert "3D filters across planes (z step 1.5 px, chosen from the layer's voxel size)" in widget.status.text()

    viewer.layers.clear()
    viewer.add_image(vol, name="sections", scale=(5.0, 1.0, 1.0))
    paint_and_train(qtbot, widget, scr, trees=5)
    assert widget.controller.model.segmenter.feature_config.spatial == "2d"
    assert "2D filters per plane (chosen from the layer's voxel size)" in widget.status.text()
    assert widget.spatial_combo.currentData() == "auto" and errors == []


def test_editing_a_feature_field_keeps_the_loaded_configs_other_settings(make_napari_viewer, errors):
    """A classifier trained elsewhere (CLI / API) with settings the Features box has no field for
    (families, intensity): editing the scales keeps them."""
    from napari_vitseg.features import FeatureConfig

    viewer = make_napari_viewer()
    widget = dock(viewer)
    loaded = FeatureConfig(families=("gaussian", "laplacian", "bilateral"), intensity="percentile", sigmas=(1, 2))
    widget.controller.feature_config = loaded
    widget.features.show_config(loaded, False)
    widget.sigmas_edit.setText("1, 2, 4")
    widget.sigmas_edit.editingFinished.emit()
    cfg = widget.controller.feature_config
    assert cfg.sigmas == (1.0, 2.0, 4.0)
    assert cfg.families == loaded.families and cfg.intensity == "percentile" and errors == []


def test_save_load_roundtrip_identical(qtbot, make_napari_viewer, nanoparticles, tmp_path, errors, monkeypatch):
    image, scribbles, truth = nanoparticles
    viewer = make_napari_viewer()
    from napari_vitseg._sample_data import tem_nanoparticles

    for data, meta, kind in tem_nanoparticles():
        getattr(viewer, f"add_{kind}")(data, **meta)
    widget = dock(viewer)
    assert widget.class_names() == ["particle", "background"]
    widget.class_table.item(1, 1).setText("matrix")
    assert viewer.layers["scribbles"].metadata["class_names"] == ["particle", "matrix"]
    widget.trees_spin.setValue(20)
    assert widget.boundary_spin.value() == 2 and widget.boundary_spin.text() == "2 px"
    widget.boundary_spin.setValue(3)  # a non-default band width: the file keeps it
    assert widget.controller.boundary_refinement == 3
    widget.proba_check.setChecked(True)
    widget.train()
    wait_idle(qtbot, widget)
    seg = viewer.layers["segmentation"].data.copy()
    proba = viewer.layers["probabilities"].data.copy()
    assert proba.shape == (2, *image.shape)
    np.testing.assert_allclose(proba.sum(0), 1, atol=1e-5)

    path = tmp_path / "nano.vitseg"
    monkeypatch.setattr(widget, "ask_save_path", lambda: str(path))
    widget.save_classifier()
    wait_idle(qtbot, widget)
    assert path.exists() and errors == []

    # change the fields, forget the model, clear the outputs, then load
    widget.trees_spin.setValue(7)
    widget.boundary_spin.setValue(0)
    assert widget.boundary_spin.text() == "off" and widget.controller.boundary_refinement == 0
    widget.sigmas_edit.setText("1, 2")
    widget.sigmas_edit.editingFinished.emit()
    widget.pyramid_check.setChecked(False)
    assert widget.controller.feature_config.pyramid is False
    widget.class_table.item(0, 1).setText("renamed")
    widget.controller.model = None
    viewer.layers["segmentation"].data[:] = 0
    viewer.layers["probabilities"].data[:] = 0
    monkeypatch.setattr(widget, "ask_open_path", lambda: str(path))
    widget.load_classifier()
    wait_idle(qtbot, widget)
    assert errors == []
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, seg)
    np.testing.assert_array_equal(viewer.layers["probabilities"].data, proba)
    assert widget.trees_spin.value() == 20
    assert widget.boundary_spin.value() == 3 and widget.controller.boundary_refinement == 3
    widget.depth_spin.setValue(12)  # another field: the loaded band width stays
    assert widget.controller.boundary_refinement == 3
    widget.depth_spin.setValue(0)
    assert widget.sigmas_edit.text() == "0.5, 1, 2, 4, 8, 16"  # FeatureConfig's default scales
    assert widget.pyramid_check.isChecked() and widget.controller.feature_config.pyramid  # the file's
    assert widget.class_names() == ["particle", "matrix"]
    assert widget.controller.model.loaded_from == str(path)

    # Apply to files with the loaded model: same labels as in the viewer
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", image)
    monkeypatch.setattr(widget, "ask_input_paths", lambda kind: [str(src)])
    monkeypatch.setattr(widget, "ask_output_dir", lambda: str(tmp_path / "out"))
    widget.apply_to_files(kind="folder")
    wait_idle(qtbot, widget)
    assert errors == []
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a_seg.tif"), seg)


def test_bad_inputs_show_notifications(qtbot, make_napari_viewer, nanoparticles, tmp_path, errors, monkeypatch):
    image, scribbles, truth = nanoparticles
    viewer = make_napari_viewer()
    widget = dock(viewer)
    # no image layer
    widget.train()
    assert errors and "no image layer" in errors[-1]
    widget.new_scribbles_layer()
    assert "Open an image" in errors[-1]

    viewer.add_image(image, name="img")
    layer = widget.new_scribbles_layer()
    # a single class painted: the library's message as a notification, the widget survives
    paint_labels(layer, scribbles == 1, 1)
    n = len(errors)
    widget.train()
    wait_idle(qtbot, widget)
    assert len(errors) == n + 1 and "at least two classes" in errors[-1]
    assert widget.status.styleSheet()  # shown in red

    # a pickle handed to Load is refused with a notification
    bad = tmp_path / "evil.vitseg"
    bad.write_bytes(pickle.dumps({"a": 1}))
    monkeypatch.setattr(widget, "ask_open_path", lambda: str(bad))
    widget.load_classifier()
    wait_idle(qtbot, widget)
    assert len(errors) == n + 2
    assert widget.controller.model is None

    # a scribbles layer of the wrong shape
    viewer.add_labels(np.zeros((10, 10), np.uint8), name="small")
    widget.scribbles_combo.setCurrentIndex(widget.scribbles_combo.findText("small"))
    widget.train()
    assert "shape" in errors[-1]
    widget.scribbles_combo.setCurrentIndex(widget.scribbles_combo.findText(layer.name))

    # bad scales in the feature fields
    widget.sigmas_edit.setText("1, two")
    widget.sigmas_edit.editingFinished.emit()
    widget.train()
    assert "scales" in errors[-1].lower()
    widget.sigmas_edit.setText("1, 4")
    widget.sigmas_edit.editingFinished.emit()

    # an unexpected RuntimeError inside a job (superqt would swallow it) is reported, not hung on
    def boom(*args, **kwargs):
        raise RuntimeError("boom")
        yield

    widget.controller.iter_train = boom
    widget.train()
    wait_idle(qtbot, widget, timeout=20_000)
    assert "RuntimeError: boom" in errors[-1]
    del widget.controller.iter_train

    # still works after all that
    paint_labels(layer, scribbles == 2, 2)
    widget.trees_spin.setValue(10)
    n = len(errors)
    widget.train()
    wait_idle(qtbot, widget)
    assert len(errors) == n
    assert mean_iou(viewer.layers["segmentation"].data, truth) > 0.8


def test_cancel_apply_to_files_leaves_no_partial_output(qtbot, make_napari_viewer, nanoparticles, tmp_path,
                                                         errors, monkeypatch):
    image, scribbles, truth = nanoparticles
    viewer = make_napari_viewer()
    widget = docked_with_scribbles(viewer, image, scribbles, trees=10, name="img")
    widget.train()
    wait_idle(qtbot, widget)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        tifffile.imwrite(src / f"f{i}.tif", np.stack([image] * 3), photometric="minisblack")  # 3-plane stacks
    out = tmp_path / "out"
    monkeypatch.setattr(widget, "ask_input_paths", lambda kind: [str(src / f"f{i}.tif") for i in range(4)])
    monkeypatch.setattr(widget, "ask_output_dir", lambda: str(out))
    job = widget.apply_to_files()
    assert job is not None
    qtbot.waitUntil(lambda: widget.progress.maximum() == 1000 and widget.progress.value() > 0, timeout=TIMEOUT)
    widget.cancel()
    wait_idle(qtbot, widget)
    assert job.cancelled and job.result is None
    written = sorted(p.name for p in out.iterdir())
    assert not any(n.endswith(".part") for n in written), written
    assert len(written) < 4
    assert errors == []
    # resume: the rest is written, finished files are skipped
    widget.apply_to_files()
    wait_idle(qtbot, widget)
    assert sorted(p.name for p in out.iterdir()) == [f"f{i}_seg.tif" for i in range(4)]


def test_backbone_choices_offline(make_napari_viewer, monkeypatch):
    from napari_vitseg.backbones import list_backbones

    monkeypatch.delenv("VITSEG_ALLOW_RANDOM_WEIGHTS", raising=False)
    viewer = make_napari_viewer()
    widget = SegmentationWidget(viewer)
    combo = widget.backbone_combo
    texts = [combo.itemText(i) for i in range(combo.count())]
    assert texts[0] == NO_BACKBONE
    # the backbones without weights are one disabled row (names in its tooltip), not 13 greyed rows
    n = len(list_backbones())
    missing = [i for i, t in enumerate(texts) if t == MISSING_ROW.format(n=n)]
    assert len(missing) == 1 and not combo.model().item(missing[0]).isEnabled()
    assert all(name in combo.model().item(missing[0]).toolTip() for name in list_backbones())
    assert [t for t in texts if t] == [NO_BACKBONE, MISSING_ROW.format(n=n)]
    # no command line in the GUI
    assert widget.weights_notice.text() == NO_WEIGHTS_GUI
    assert "vitseg " not in widget.weights_notice.text() and "Import weights" in widget.weights_notice.text()
    assert NO_WEIGHTS_NOTICE not in widget.weights_notice.text()
    assert not widget.upsample_combo.isEnabled()

    monkeypatch.setenv("VITSEG_ALLOW_RANDOM_WEIGHTS", "1")
    widget2 = SegmentationWidget(viewer)
    combo = widget2.backbone_combo
    rnd = [i for i in range(combo.count()) if combo.itemText(i).endswith(RANDOM_SUFFIX)]
    assert len(rnd) == len(list_backbones())
    assert all(combo.model().item(i).isEnabled() for i in rnd)
    assert "testing only" in widget2.weights_notice.text()
    combo.setCurrentIndex(rnd[0])
    assert widget2.controller.random_weights and widget2.controller.feature_config.backbone is not None
    assert widget2.upsample_combo.isEnabled()


def test_classes_table_and_rgb(qtbot, make_napari_viewer, errors):
    rgb = tifffile.imread(shared_data("alloy_optical_rgb") / "image.tif")
    scr = tifffile.imread(shared_data("alloy_optical_rgb") / "scribbles.tif")
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="alloy", rgb=True)
    widget = dock(viewer)
    assert widget.channel_axis() == 2 and not widget.channel_spin.isEnabled()
    layer = widget.new_scribbles_layer()
    assert layer.data.shape == rgb.shape[:2]
    widget.add_class()
    assert widget.class_names() == ["class 1", "class 2", "class 3"]
    assert layer.selected_label == 3
    widget.set_class_color(3, "#00ff00")
    np.testing.assert_allclose(layer.get_color(3)[:3], [0, 1, 0])
    widget.class_table.item(2, 1).setText("pearlite")
    assert layer.metadata["class_names"][2] == "pearlite"
    for c in (1, 2, 3):
        paint_labels(layer, scr == c, c)
    widget.trees_spin.setValue(10)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == []
    seg = viewer.layers["segmentation"].data
    lab = scr != 0
    assert (seg[lab] == scr[lab]).mean() > 0.9
    assert widget.controller.model.segmenter.n_channels_ == 3


def test_live_job_superseded_by_new_stroke(qtbot, nano_viewer, errors):
    """A stroke during a running live job cancels it; only the newest job's result is kept."""
    viewer, image, scribbles, truth = nano_viewer
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    layer.data = scribbles.copy()
    widget.live_debounce_ms = 0
    widget.live_check.setChecked(True)
    qtbot.waitUntil(lambda: widget.current_job is not None, timeout=10_000)
    first = widget.current_job
    brush_stroke(layer, [(200, x) for x in range(50, 80, 3)], 1)
    qtbot.waitUntil(lambda: widget.current_job is not first and widget.current_job is not None, timeout=TIMEOUT)
    assert first.cancelled
    wait_idle(qtbot, widget)
    assert errors == []
    assert widget.controller.model.digest is not None
    from napari_vitseg.pipeline.scribbles import ScribbleIndex

    assert widget.controller.model.digest == ScribbleIndex.from_array(layer.data).digest()


@pytest.mark.slow
def test_random_weights_backbone_train_save_load(qtbot, make_napari_viewer, nanoparticles, tmp_path, errors,
                                                 monkeypatch):
    """The ViT path end to end with random weights (VITSEG_ALLOW_RANDOM_WEIGHTS=1, testing only)."""
    image, scribbles, truth = nanoparticles
    monkeypatch.setenv("VITSEG_ALLOW_RANDOM_WEIGHTS", "1")
    viewer = make_napari_viewer()
    crop = (slice(0, 224), slice(0, 224))
    viewer.add_image(image[crop], name="crop")
    widget = dock(viewer)
    combo = widget.backbone_combo
    name = "dinov2_vits14_reg"
    combo.setCurrentIndex(combo.findText(name + RANDOM_SUFFIX))
    assert widget.controller.feature_config.backbone == name and widget.controller.random_weights
    layer = widget.new_scribbles_layer()
    layer.data = scribbles[crop].copy()
    widget.trees_spin.setValue(10)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == []
    seg = viewer.layers["segmentation"].data.copy()
    n_feat = widget.controller.model.segmenter.featurizer.n_features(1)
    cfg = widget.controller.feature_config
    assert n_feat == len(classical_feature_names(cfg.sigmas, cfg.families, cfg.include_intensity)) + cfg.vit_pca
    path = tmp_path / "vit.vitseg"
    monkeypatch.setattr(widget, "ask_save_path", lambda: str(path))
    widget.save_classifier()
    wait_idle(qtbot, widget)
    widget.controller.model = None
    combo.setCurrentIndex(0)
    viewer.layers["segmentation"].data[:] = 0
    monkeypatch.setattr(widget, "ask_open_path", lambda: str(path))
    widget.load_classifier()
    wait_idle(qtbot, widget)
    assert errors == []
    assert combo.currentText() == name + RANDOM_SUFFIX
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, seg)


# -- big stacks: the scribbles index, lazy reads, on-disk outputs, the memory guard -------------------


def index_in_sync(widget, layer) -> bool:
    from napari_vitseg.pipeline.scribbles import ScribbleIndex

    index = widget.controller.scribbles
    return index is not None and index.digest() == ScribbleIndex.from_array(layer.data).digest()


def assert_index_in_sync(qtbot, widget, layer):
    """The edited regions are read at the next event-loop turn (napari fires ``paint`` before it
    writes an edit made outside a stroke)."""
    qtbot.waitUntil(lambda: index_in_sync(widget, layer), timeout=2000)


def test_scribble_index_follows_strokes_erase_fill_undo_redo(qtbot, make_napari_viewer, nanoparticles, errors,
                                                             monkeypatch):
    """The controller's index equals indexing layer.data again after every kind of edit made
    through the real Labels layer, without the widget ever scanning the layer."""
    from napari_vitseg._widgets._controller import SegmentationController

    image, scribbles, truth = nanoparticles
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([image] * 4), name="stack")
    widget = dock(viewer)
    scans = []  # whole-layer indexing (a new, empty layer is not read)
    real = SegmentationController.index_scribbles

    def index_scribbles(self, data, *, empty=False, name="scribbles"):
        if not empty:
            scans.append(name)
        return real(self, data, empty=empty, name=name)

    monkeypatch.setattr(SegmentationController, "index_scribbles", index_scribbles)
    layer = widget.new_scribbles_layer()
    assert widget.controller.scribbles.planes == []
    brush_stroke(layer, [(1, 100, x) for x in range(50, 120, 3)], 1)
    brush_stroke(layer, [(2, 300, x) for x in range(200, 260, 3)], 2, size=9)
    assert_index_in_sync(qtbot, widget, layer)
    assert widget.controller.scribbles.planes == [1, 2]
    brush_stroke(layer, [(1, 100, x) for x in range(60, 80, 3)], 0)  # erase part of the first stroke
    assert_index_in_sync(qtbot, widget, layer)
    layer.fill((3, 10, 10), 2)  # the whole background of plane 3 (fires paint before it writes)
    assert (layer.data[3] == 2).all()
    assert_index_in_sync(qtbot, widget, layer)
    paint_labels(layer, (np.arange(4)[:, None, None] == 0) & (scribbles == 1)[None], 1)  # data_setitem atoms
    assert_index_in_sync(qtbot, widget, layer)
    layer.undo()  # the data_setitem edit
    assert_index_in_sync(qtbot, widget, layer)
    layer.undo()  # the fill
    assert not (layer.data[3] == 2).any()
    assert_index_in_sync(qtbot, widget, layer)
    layer.redo()
    assert (layer.data[3] == 2).all()
    assert_index_in_sync(qtbot, widget, layer)
    # undo of a hidden layer fires no event: the widget catches up before a job captures its inputs
    layer.visible = False
    layer.undo()
    layer.undo()
    qtbot.wait(50)
    assert not index_in_sync(widget, layer)
    widget.sync_scribbles()  # what every job does first
    assert index_in_sync(widget, layer)
    layer.visible = True
    assert scans == []  # every edit so far was read from its region only
    # replacing the data re-indexes the layer (once)
    layer.data = np.where(np.arange(4)[:, None, None] == 2, scribbles[None], 0).astype(np.uint8)
    assert_index_in_sync(qtbot, widget, layer)
    assert len(scans) == 1
    assert errors == []


def counting_stack(nz: int, size: int, reads: list):
    """A lazy (Z, size, size) stack, one dask chunk per plane, recording the planes read."""
    import dask.array as da

    def load(block_id=None):
        reads.append(block_id[0])
        rng = np.random.default_rng(block_id[0])
        plane = rng.normal(size=(size, size)).astype(np.float32)
        plane[:, size // 2:] += 4
        return plane[None]

    return da.map_blocks(load, dtype=np.float32, chunks=((1,) * nz, (size,), (size,)),
                         meta=np.empty((0, 0, 0), np.float32))


def test_live_on_lazy_stack_reads_scribbled_and_viewed_planes_into_disk_outputs(qtbot, make_napari_viewer, errors):
    """Issue 9 in napari: Live on a lazy 200-plane stack reads only the planes with scribbles and
    the planes shown (2D filters; with 3D ones also the planes within their z-radius, see
    tests/test_controller.py); the outputs of a big stack are on-disk uint8 stores removed on close."""
    import zarr

    reads: list = []
    nz, size = 200, 96
    viewer = make_napari_viewer()
    viewer.add_image(counting_stack(nz, size, reads), name="lazy", contrast_limits=(-3, 7))
    reads.clear()  # napari's own first slicing (plane 0, then the middle one)
    widget = dock(viewer)
    widget.outputs.memory_limit = 0  # treat this stack as one whose outputs do not fit in memory
    widget.sigmas_edit.setText("1, 2")
    widget.sigmas_edit.editingFinished.emit()
    widget.spatial_combo.setCurrentIndex(widget.spatial_combo.findData("2d"))
    widget.trees_spin.setValue(10)
    viewed = {int(viewer.dims.current_step[0])}
    viewer.dims.events.current_step.connect(lambda e: viewed.add(int(viewer.dims.current_step[0])))
    layer = widget.new_scribbles_layer()
    viewer.dims.set_current_step(0, 10)
    brush_stroke(layer, [(10, y, 20) for y in range(10, 80, 3)], 1)
    brush_stroke(layer, [(150, y, 70) for y in range(10, 80, 3)], 2)
    widget.live_check.setChecked(True)
    qtbot.waitUntil(lambda: widget.controller.n_trainings == 1 and not widget.busy, timeout=TIMEOUT)
    assert errors == []
    assert set(reads) <= viewed | {10, 150}, sorted(set(reads) - viewed)
    seg, unc = viewer.layers["segmentation"], viewer.layers["uncertainty"]
    for out in (seg, unc):
        assert isinstance(out.data, zarr.Array) and not isinstance(out.data, np.ndarray)
        assert out.data.shape == (nz, size, size) and out.data.dtype == np.uint8
    assert tuple(unc.contrast_limits) == (0, 255)
    assert (seg.data[10][:, : size // 2 - 8] == 1).mean() > 0.9 and (seg.data[10][:, size // 2 + 8:] == 2).mean() > 0.9
    assert not seg.data[150].any()  # not shown yet: not predicted
    # another stroke retrains on the two scribbled planes again; moving segments the plane shown
    brush_stroke(layer, [(10, y, 85) for y in range(10, 80, 3)], 2)
    qtbot.waitUntil(lambda: widget.controller.n_trainings == 2 and not widget.busy, timeout=TIMEOUT)
    viewer.dims.set_current_step(0, 150)
    qtbot.waitUntil(lambda: bool(seg.data[150].any()) and not widget.busy, timeout=TIMEOUT)
    assert set(reads) <= viewed | {10, 150}, sorted(set(reads) - viewed)
    assert len(set(reads)) <= 4
    # Apply to stack with probabilities writes planes into the stores (uint8 probabilities too)
    widget.live_check.setChecked(False)
    widget.proba_check.setChecked(True)
    job = widget.apply_to_stack()
    assert job is not None
    qtbot.waitUntil(lambda: "probabilities" in viewer.layers and len(widget.outputs.predicted) >= 3, timeout=TIMEOUT)
    widget.cancel()
    wait_idle(qtbot, widget)
    prob = viewer.layers["probabilities"]
    assert isinstance(prob.data, zarr.Array) and prob.data.dtype == np.uint8 and prob.data.shape == (2, nz, size, size)
    assert tuple(prob.contrast_limits) == (0, 255)
    z = 150  # the plane in view comes first
    p = prob.data[:, z]
    differ = p[0] != p[1]  # labels are the most probable class
    np.testing.assert_array_equal(seg.data[z][differ], np.where(p[1] > p[0], 2, 1)[differ])
    assert np.abs(p.astype(int).sum(0) - 255).max() <= 1
    assert errors == []
    folder = widget.outputs.stores.path
    assert folder is not None and folder.is_dir()
    widget.close()
    assert not folder.exists() and "segmentation" not in viewer.layers
    assert errors == []


def test_memory_guard_refuses_and_names_apply_to_files(qtbot, nano_viewer, errors, monkeypatch):
    from napari_vitseg._widgets import _controller

    viewer, image, scribbles, truth = nano_viewer
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    layer.data = scribbles.copy()
    monkeypatch.setattr(_controller, "available_memory", lambda: 4 * 2**20)
    assert widget.apply_to_stack() is None
    assert "Apply to files" in errors[-1] and "available" in errors[-1]
    assert widget.train() is None
    assert "Apply to files" in errors[-1]
    assert widget.controller.n_trainings == 0 and not widget.busy
    monkeypatch.setattr(_controller, "available_memory", lambda: None)  # unknown: no guard
    widget.trees_spin.setValue(10)
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.controller.n_trainings == 1


def test_big_plane_predicts_the_rows_in_view_first(qtbot, make_napari_viewer, errors, monkeypatch):
    """Planes above the tile budget are predicted in row bands, the band on the canvas first."""
    from napari_vitseg._widgets import _controller

    monkeypatch.setattr(_controller, "TILE_PIXELS", 10_000)
    monkeypatch.setattr(_controller, "BAND_PIXELS", 64 * 256)  # 8 bands of 64 rows
    rng = np.random.default_rng(0)
    image = rng.normal(size=(512, 256)).astype(np.float32)
    image[:, 128:] += 4
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="tall")
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    scr = np.zeros(image.shape, np.uint8)
    scr[20:500, 20:30] = 1
    scr[20:500, 200:210] = 2
    layer.data = scr
    viewer.scene.camera.center = (420, 128)
    viewer.scene.camera.zoom = 8
    qtbot.waitUntil(lambda: widget.input.view_rows() is not None, timeout=5000)
    v0, v1 = widget.input.view_rows()
    assert 300 < v0 < 420 < v1 <= 512
    shown = []
    show = widget.outputs.show
    monkeypatch.setattr(widget.outputs, "show", lambda upd: shown.append(upd.rows) or show(upd))
    widget.trees_spin.setValue(10)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == []
    assert shown[0][0] < v1 and shown[0][1] > v0  # the first band drawn is on the canvas
    assert sorted(shown) == [(y, y + 64) for y in range(0, 512, 64)]
    seg = viewer.layers["segmentation"].data
    assert (seg[:, :100] == 1).mean() > 0.95 and (seg[:, 160:] == 2).mean() > 0.95
    assert None in widget.outputs.predicted


def test_large_frees_go_back_to_the_system():
    """The widget fixes glibc's mmap threshold (bounded RSS on big stacks), unless the user tuned glibc."""
    import subprocess
    import sys

    code = ("from napari_vitseg._widgets._compat import return_large_frees as f; "
            "print(f(), f())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    expected = "True True" if sys.platform.startswith("linux") else "False False"
    assert out.stdout.strip() == expected
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "MALLOC_ARENA_MAX": "2"})
    assert out.stdout.strip() == "False False"
