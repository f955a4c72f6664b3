"""The Diagnostics dock widget in a real napari viewer (headless under Xvfb via pytest-xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_vitseg._widgets._diagnostics import RANDOM_LABEL, DiagnosticsWidget  # noqa: E402

TIMEOUT = 180_000


@pytest.fixture
def notes(monkeypatch):
    """Record error / warning notifications instead of showing them."""
    from napari_vitseg._widgets import _notify

    seen: dict[str, list[str]] = {"error": [], "warning": []}
    monkeypatch.setattr(_notify, "show_error", lambda msg: seen["error"].append(str(msg)))
    monkeypatch.setattr(_notify, "show_warning", lambda msg: seen["warning"].append(str(msg)))
    monkeypatch.setattr(_notify, "show_info", lambda msg: None)
    return seen


@pytest.fixture
def allow_random(monkeypatch):
    monkeypatch.setenv("VITSEG_ALLOW_RANDOM_WEIGHTS", "1")


def dock(viewer) -> DiagnosticsWidget:
    """Dock the widget through its npe2 contribution, as the Plugins menu does."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-vitseg", "Backbone diagnostics")
    assert isinstance(widget, DiagnosticsWidget)
    return widget


def test_widget_runs_and_adds_aligned_layers(make_napari_viewer, qtbot, notes, allow_random):
    viewer = make_napari_viewer()
    img = np.random.default_rng(0).random((120, 126)).astype(np.float32)  # crops to 112 x 126: 8 x 9 tokens
    viewer.add_image(img, name="noise", scale=(2.0, 2.0), translate=(10.0, 0.0))
    w = dock(viewer)
    assert w.random_check.isVisible() or w.random_check.text() == RANDOM_LABEL
    assert w.selected_images() == ["noise"]
    w.set_selection(backbones=["dinov2_vits14_reg"], random_weights=True)
    assert w.selected_backbones() == ["dinov2_vits14_reg"]
    w.repeats_spin.setValue(1)
    w.angles_check.setChecked(False)
    job = w.run()
    assert job is not None and w.busy
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert not notes["error"], notes["error"]
    assert w.result is not None and w.result.random_weights
    assert "RANDOM WEIGHTS" in w.status.text()

    names = {layer.name for layer in viewer.layers}
    for kind in ("norm", "high-norm", "PCA"):
        assert f"dv2-S-reg · noise · {kind}" in names, kind
    norm = viewer.layers["dv2-S-reg · noise · norm"]
    flagged = viewer.layers["dv2-S-reg · noise · high-norm"]
    pca = viewer.layers["dv2-S-reg · noise · PCA"]
    assert norm.data.shape == (8, 9) and flagged.data.shape == (8, 9) and pca.data.shape == (8, 9, 3)
    assert pca.rgb and flagged.data.dtype == np.uint8
    # token (i, j) centre = image pixel 14 i + 6.5, then the image layer's own scale 2 / translate
    np.testing.assert_allclose(norm.scale, (28.0, 28.0))
    np.testing.assert_allclose(norm.translate, (10.0 + 13.0, 13.0))
    np.testing.assert_allclose(pca.scale, norm.scale)
    np.testing.assert_allclose(norm.data, w.result.results[0].norms.per_image[0]["norms"][-1])
    # the plots were drawn
    for canvas in (w.bars_canvas, w.depth_canvas, w.fingerprint_canvas, w.norms_canvas):
        assert canvas.figure.axes, canvas
    # another block and another threshold update the layers in place
    w.block_spin.setValue(0)
    np.testing.assert_allclose(norm.data, w.result.results[0].norms.per_image[0]["norms"][0])
    w.threshold_spin.setValue(1.05)
    assert flagged.data.sum() > 0
    # the diagnostics layers are not offered as inputs
    assert w.selected_images() == ["noise"] and w.image_list.count() == 1


def test_widget_errors_do_not_crash(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    w = DiagnosticsWidget(viewer)
    assert w.run() is None and notes["error"]  # no backbone
    notes["error"].clear()
    viewer.add_image(np.zeros((20, 20), np.float32), name="tiny")
    w.set_selection(images=["tiny"])
    # no weights on this machine: the backbones are listed but cannot be checked
    w.set_selection(backbones=["dinov2_vits14_reg"])
    assert w.selected_backbones() == []
    assert "no weights" in w.backbone_list.item(0).text()
    assert w.run() is None and "backbone" in notes["error"][0]


def test_widget_reports_bad_image_in_worker(make_napari_viewer, qtbot, notes, allow_random):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((20, 20), np.float32), name="tiny")  # smaller than 2 x 2 patches
    w = DiagnosticsWidget(viewer)
    w.set_selection(backbones=["dinov2_vits14"], images=["tiny"], random_weights=True)
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert notes["error"] and "at least 28 x 28" in notes["error"][0]
    assert w.run_btn.isEnabled() and w.result is None


def test_widget_cancel(make_napari_viewer, qtbot, notes, allow_random):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).random((84, 84)).astype(np.float32), name="img")
    w = DiagnosticsWidget(viewer)
    w.set_selection(backbones=["dinov2_vits14", "dinov2_vits14_reg"], random_weights=True)
    w.angles_check.setChecked(False)
    w.run()
    w.cancel()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.run_btn.isEnabled() and not notes["error"]


def test_widget_takes_the_current_plane_of_a_stack(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    stack = np.arange(3 * 40 * 40, dtype=np.float32).reshape(3, 40, 40)
    layer = viewer.add_image(stack, name="stack")
    rgb = viewer.add_image(np.zeros((40, 40, 3), np.uint8), name="rgb", rgb=True)
    w = DiagnosticsWidget(viewer)
    assert w.image_list.count() == 2
    viewer.dims.set_current_step(0, 2)
    plane, ca = w.plane_of(layer)
    np.testing.assert_array_equal(plane, stack[2])
    assert ca is None
    plane, ca = w.plane_of(rgb)
    assert plane.shape == (40, 40, 3) and ca == -1
