"""Driving the real napari widget from a benchmark script: brush strokes and waiting for jobs."""

from __future__ import annotations

import time

import numpy as np


def paint_stroke(layer, points, label, z=None):
    """One brush stroke through the Labels layer's own paint API (one undo item; napari fires
    ``paint`` once when the block ends, as on mouse release)."""
    with layer.block_history():
        for p in points:
            layer.paint(p if z is None else (z, *p), label, refresh=False)
    layer.refresh()


def wait(app, cond, timeout=600.0):
    """Process Qt events until ``cond()`` holds; TimeoutError after ``timeout`` seconds."""
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")


def stroke_points(mask: np.ndarray, rng, length: int = 30) -> list[tuple[int, int]]:
    """A horizontal stroke of ``length`` px starting at a random point where it stays in ``mask``."""
    ys, xs = np.nonzero(mask)
    for _ in range(1000):
        i = rng.integers(len(ys))
        y, x = int(ys[i]), int(xs[i])
        if x + length < mask.shape[1] and mask[y, x:x + length].all():
            return [(y, x + d) for d in range(0, length, 2)]
    return [(int(ys[0]), int(xs[0]))]
