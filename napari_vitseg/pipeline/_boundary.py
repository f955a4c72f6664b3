"""Boundary refinement: the large scales decide *what* a region is, the fine scales *where* it ends.

A pixel classifier on multiscale features learns from scribbles drawn well inside each class.
There, every scale agrees, so the forest splits on large-scale channels (Gaussian, Hessian,
structure tensor at 8-16 px) as readily as on fine ones; next to a boundary the large scales
see both classes and the trees that split on them put the boundary where the blur puts it, a
few pixels off (``docs/quality.md``, Run 9: 57-84 % of the wrong pixels lie within 1 px of a
true boundary). Without the large scales, regions are decided worse (noisy TEM particles:
0.949 -> 0.903 mIoU).

So a second classifier of the same kind is trained on the same scribbles with only the *fine*
channels (unsmoothed intensity, scales <= :data:`FINE_MAX_SIGMA` px, and the edge-preserving
bilateral channels), and it re-decides only the pixels within :data:`DEFAULT_ROWS` px
(chessboard distance) of a change of the first classifier's labels; everywhere else the first
classifier's probabilities stand. This is edge focusing in scale space (Bergholm 1987): detect
at a coarse scale, localise at a fine one. Measured on the six shared sets
(``benchmarks/quality_screens.py``, ``docs/quality.md`` Run 10): better on every set.

The first labels go through a :data:`LABEL_MAJORITY` px majority filter before their boundaries
are found: in textured regions the first classifier leaves specks of a few pixels, and around
them the fine channels (which cannot tell textures apart) would re-decide region interiors
rather than boundaries (hand-painted cells stack: 3.4 % of the scribbled pixels contradicted with
the plain band, 2.4 % with the filtered one, 0.8 % without refinement; the same mean mIoU on the
six sets with ground truth; ``docs/quality.md`` Run 11).

The band of a pixel depends only on the labels within ``rows`` px of it, so a row band of a
plane is refined exactly as the whole plane when its labels are known ``rows`` rows beyond it
(:meth:`~napari_vitseg.pipeline.Segmenter._predict_band` predicts them).

References
----------
.. [1] Bergholm, F. (1987). Edge focusing. IEEE TPAMI 9(6), 726-741. :DOI:`10.1109/TPAMI.1987.4767980`
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["DEFAULT_ROWS", "FINE_MAX_SIGMA", "LABEL_MAJORITY", "MAX_MAJORITY", "MAX_ROWS", "boundary_band",
           "context_rows", "fine_columns", "majority_labels"]

#: Half-width (px) of the band around the first classifier's label boundaries that is re-decided.
#: Measured 1, 2 and 3 px: the same mean mIoU within 0.0003 (docs/quality.md, Run 10).
DEFAULT_ROWS = 2
#: Largest half-width a classifier file may declare.
MAX_ROWS = 16
#: Side (px) of the square window of the majority filter that the first classifier's labels go
#: through before their boundaries are found (1: none). Specks of a few pixels in the first
#: labels (textured regions) then get no band around them and keep the first classifier's
#: decision, while the boundaries of regions are refined as before: measured on the six shared
#: sets, the same mean mIoU (0.8316 both) with a third fewer contradicted scribbled pixels on the
#: hand-painted cells stack (docs/quality.md, Run 11). Files of format 3 have none (1).
LABEL_MAJORITY = 5
#: Largest majority window a classifier file may declare.
MAX_MAJORITY = 2 * MAX_ROWS + 1
#: Largest Gaussian scale (px) of a *fine* channel.
FINE_MAX_SIGMA = 2.0
#: Families whose channels are fine whatever their scale (edge-preserving smoothing).
FINE_FAMILIES = ("bilateral",)

#: Trees of the boundary random forest, as a fraction of the first one's (its band is a thin
#: part of the image, where fewer trees are enough; XGBoost keeps its rounds).
FOREST_TREES_FRACTION = 0.5


def boundary_params(kind: str, params: dict) -> dict:
    """Parameters of the boundary classifier over the first classifier's ``params``."""
    if kind != "rf" or FOREST_TREES_FRACTION >= 1:
        return {}
    from ..classifiers import make_classifier

    n = int(params.get("n_estimators", make_classifier("rf").n_estimators))
    return {"n_estimators": max(1, round(n * FOREST_TREES_FRACTION))}


_SCALE = re.compile(r"_s(\d+(?:\.\d+)?)$")


def fine_columns(names: Sequence[str], max_sigma: float = FINE_MAX_SIGMA) -> np.ndarray:
    """Indices of the fine channels among a featurizer's channel names.

    Fine: the unsmoothed ``intensity``, channels of a Gaussian scale ``<= max_sigma`` px
    (``'gaussian_s1'``, ``'ch0:hessian_max_s2'``) and the bilateral channels. ViT channels and
    channels of larger scales are not.

    Parameters
    ----------
    names : sequence of str
        :meth:`~napari_vitseg.features.Featurizer.feature_names` (``'ch{c}:'`` prefixes for
        several channels).
    max_sigma : float

    Returns
    -------
    ndarray of int64, sorted
    """
    out = []
    for i, name in enumerate(names):
        base = name.split(":")[-1]
        family = base.split("_")[0]
        m = _SCALE.search(base)
        if base == "intensity" or family in FINE_FAMILIES or (
                m is not None and not base.startswith("vit") and float(m.group(1)) <= max_sigma):
            out.append(i)
    return np.asarray(out, dtype=np.int64)


def majority_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Majority (mode) filter of a label image in a ``size`` x ``size`` window.

    Counts are exact integers (a box sum of each label's indicator), ties go to the smallest
    label value; at the borders of the array the window is cut (the counts of the pixels
    inside it), so the rows of a slab equal the whole plane's when ``size // 2`` more rows of
    labels are given on each side.

    Parameters
    ----------
    labels : ndarray of int, (Y, X)
    size : int
        Odd window side in px; 1 returns ``labels``.

    Returns
    -------
    ndarray, (Y, X), ``labels.dtype``

    Raises
    ------
    ValueError
        ``size`` even or < 1.
    """
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"The majority window must be an odd number of pixels >= 1; got {size}.")
    if size == 1:
        return labels
    values = np.unique(labels)
    if values.size < 2:
        return labels
    best, out = None, np.full(labels.shape, values[0], dtype=labels.dtype)
    for v in values:
        # box sum with zero padding (OpenCV, 16-bit counts) = counts over the cut window
        count = cv2.boxFilter(np.ascontiguousarray(labels == v).view(np.uint8), cv2.CV_16U, (size, size),
                              normalize=False, borderType=cv2.BORDER_CONSTANT)
        if best is None:
            best = count
            continue
        more = count > best
        out[more] = v
        np.maximum(best, count, out=best)
    return out


def context_rows(rows: int, majority: int = 1) -> int:
    """Rows of labels beyond a row band that its boundary band needs: the band's half-width
    and the majority window's half-width."""
    return int(rows) + int(majority) // 2 if rows else 0


def boundary_band(labels: np.ndarray, rows: int, majority: int = 1) -> np.ndarray:
    """Pixels within ``rows`` px (chessboard) of a pixel of another label, the labels first
    through a ``majority`` x ``majority`` majority filter (:func:`majority_labels`).

    Parameters
    ----------
    labels : ndarray of int, (Y, X)
        At the borders of the array the windows are cut (scipy's ``'nearest'`` mode gives the
        same maximum and minimum), so a band of rows equals the whole plane's rows when the
        labels of :func:`context_rows` more rows on each side are given.
    rows : int
    majority : int
        Odd side (px) of the majority window; 1 (format-3 classifier files): none.

    Returns
    -------
    ndarray of bool, (Y, X)
    """
    labels = majority_labels(labels, majority)
    size = 2 * int(rows) + 1
    return ndimage.maximum_filter(labels, size=size, mode="nearest") != ndimage.minimum_filter(
        labels, size=size, mode="nearest")
