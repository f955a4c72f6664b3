"""The feature-importance panel (issue 14): opened from the segmentation dock, follows Train / Live."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("napari_matplotlib")

from _widget_helpers import dock, paint_labels, wait_idle  # noqa: E402

from napari_vitseg._widgets._importance import NO_MODEL, ImportancePanel  # noqa: E402
from napari_vitseg.features.config import DEFAULT_FAMILIES, DEFAULT_SIGMAS  # noqa: E402


def _overlaps(boxes) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_panel_says_train_first_then_shows_family_by_scale_after_training(qtbot, make_napari_viewer, nanoparticles,
                                                                          errors):
    image, scribbles, _ = nanoparticles
    viewer = make_napari_viewer()
    viewer.add_image(image, name="tem")
    widget = dock(viewer)
    assert widget.importance_btn.text() == "Feature importance…"
    widget.importance_btn.click()  # as the user does: Advanced -> Feature importance…
    panel = widget.importance_panel
    assert isinstance(panel, ImportancePanel)
    assert any(d.widget() is panel for d in viewer.window._qt_window.findChildren(type(panel.parent()))), \
        "the panel is docked in the viewer window"
    assert panel.summary.text() == NO_MODEL and panel.importances is None
    assert [t.get_text() for t in panel.figure.texts] == ["Train a classifier first"]
    assert not panel.figure.axes

    layer = widget.new_scribbles_layer()
    layer.data = scribbles.copy()
    widget.trees_spin.setValue(20)
    widget.train()
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: panel.importances is not None, timeout=5000)  # refreshed after Train by itself
    imp = panel.importances
    assert imp.feature_names == tuple(widget.current_segmenter().featurizer.feature_names(1))
    # one row per family of the default features (+ raw intensity), one column per scale (+ no scale)
    assert panel.families == ["intensity", *DEFAULT_FAMILIES]
    assert panel.scales == [*DEFAULT_SIGMAS, None]
    finite = np.isfinite(panel.shares)
    # every family x scale that has a channel is a cell, and only those: intensity only in the
    # no-scale column, the four filter families at every scale, bilateral at its own sigmas 2, 4, 8
    assert finite.sum() == 1 + 4 * len(DEFAULT_SIGMAS) + 3
    assert np.isclose(np.nansum(panel.shares), 1.0)
    ax = panel.figure.axes[0]
    assert len(ax.images) == 1
    cell_texts = [t for t in ax.texts if t.get_text()]
    assert len(cell_texts) == finite.sum()
    assert panel.summary.text() == imp.summary() and panel.summary.text().startswith("Mostly")
    assert "%" in panel.summary.text()
    assert not panel.stage_combo.isVisible()  # one stage: no stage choice

    # readable in a dock of laptop width: tick labels inside the figure and not overlapping
    panel.resize(320, 500)
    panel.canvas.draw()
    renderer = panel.canvas.get_renderer()
    for labels in (ax.get_yticklabels(), ax.get_xticklabels()):
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
        assert len(boxes) > 1 and not _overlaps(boxes)
        assert all(b.x0 >= -1 and b.x1 <= panel.figure.bbox.width + 1 for b in boxes)
    assert errors == []


def test_panel_follows_retraining_and_comes_back_after_closing(qtbot, make_napari_viewer, two_region_image, errors):
    image, scribbles = two_region_image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    widget = dock(viewer)
    panel = widget.show_feature_importance()
    assert panel.importances is None
    layer = widget.new_scribbles_layer()
    layer.data = scribbles.copy()
    widget.trees_spin.setValue(10)
    widget.train()
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: panel.importances is not None, timeout=5000)
    first = panel.importances
    widget.live_check.setChecked(True)
    mask = np.zeros(image.shape, bool)
    mask[55:60, 20:40] = True
    paint_labels(layer, mask, 1)  # a stroke in Live mode: retrained, and the panel follows
    qtbot.waitUntil(lambda: panel.importances is not first, timeout=60_000)
    wait_idle(qtbot, widget)
    assert panel.importances.feature_importance.shape == first.feature_importance.shape
    assert not np.array_equal(panel.importances.feature_importance, first.feature_importance)
    # the cells show the new numbers (updated in place: same rows and columns)
    ax = panel.figure.axes[0]
    for t in ax.texts:
        j, i = (round(c) for c in t.get_position())
        pct = 100 * panel.shares[i, j]
        assert t.get_text() == ("" if not np.isfinite(pct) else f"{pct:.0f}" if pct >= 0.5 else "·")
    widget.live_check.setChecked(False)

    # closing the dock and asking again brings the same panel back, docked
    viewer.window.remove_dock_widget(panel.parent())
    assert panel.parent() is None
    assert widget.show_feature_importance() is panel and panel.parent() is not None
    assert errors == []


def test_panel_offers_the_stages_of_an_autocontext_model(qtbot, make_napari_viewer, two_region_image):
    from napari_vitseg.features import FeatureConfig
    from napari_vitseg.pipeline import Segmenter

    image, scribbles = two_region_image
    seg = Segmenter(FeatureConfig(sigmas=(1, 2, 4)), classifier_params={"n_estimators": 10}, autocontext_stages=2)
    seg.fit(image, scribbles)
    viewer = make_napari_viewer()
    panel = ImportancePanel(viewer, source=lambda: seg)
    qtbot.addWidget(panel)
    assert panel.stage_combo.isVisibleTo(panel) and panel.stage_combo.count() == 2
    assert panel.importances.stage == 1 and panel.summary.text().startswith("Stage 1 of 2:")
    assert "autocontext" not in panel.families
    panel.stage_combo.setCurrentIndex(1)
    assert panel.importances.stage == 2 and panel.families[-1] == "autocontext"
    assert panel.summary.text().startswith("Stage 2 of 2:")
    labels = [t.get_text() for t in panel.figure.axes[0].get_yticklabels()]
    assert labels[-1] == "stage 1 output"
