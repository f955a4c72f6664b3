"""Helpers shared by the segmentation-widget tests: dock it, wait for its jobs, paint."""

from __future__ import annotations

import numpy as np

from napari_vitseg._widgets._segmentation import SegmentationWidget

#: Milliseconds a test waits for a widget job.
TIMEOUT = 180_000


def dock(viewer) -> SegmentationWidget:
    """Dock the widget through its npe2 contribution, as the Plugins menu does."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-vitseg", "Trainable segmentation")
    assert isinstance(widget, SegmentationWidget)
    return widget


def docked_with_scribbles(viewer, image, scribbles, trees: int, name: str = "cells") -> SegmentationWidget:
    """Add ``image`` to ``viewer``, dock the widget, give it a scribbles layer holding a copy of
    ``scribbles`` and set its forest to ``trees`` trees."""
    viewer.add_image(image, name=name)
    widget = dock(viewer)
    widget.new_scribbles_layer().data = scribbles.copy()
    widget.trees_spin.setValue(trees)
    return widget


def wait_idle(qtbot, widget, timeout=TIMEOUT):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def paint_labels(layer, mask, label):
    """Write ``label`` where ``mask`` is set as one undoable stroke (fires one ``paint`` event)."""
    with layer.block_history():
        layer.data_setitem(np.nonzero(mask), label)


def paint_and_train(qtbot, widget, scribbles, trees: int):
    """Paint every class of ``scribbles`` into a new scribbles layer (one stroke per class), then
    Train a forest of ``trees`` trees and wait for it; returns the scribbles layer."""
    layer = widget.new_scribbles_layer()
    for c in np.unique(scribbles[scribbles > 0]):
        paint_labels(layer, scribbles == c, int(c))
    widget.trees_spin.setValue(trees)
    widget.train()
    wait_idle(qtbot, widget)
    return layer


def brush_stroke(layer, points, label, size=5):
    """A brush stroke through ``points`` with ``Labels.paint`` (one undo item, one ``paint`` event)."""
    layer.brush_size = size
    with layer.block_history():
        for p in points:
            layer.paint(p, label, refresh=False)
    layer.refresh()
