"""Auto-context: a cascade of pixel classifiers, each seeing the previous one's smoothed output.

Auto-context (Tu & Bai 2010; ilastik's "Autocontext" workflow) trains stage 1 on the image
features, then stage ``s > 1`` on the image features plus *context features* of stage
``s - 1``'s class probabilities: every probability map smoothed with Gaussians at :data:`CONTEXT_SIGMAS` (4, 8, 16 px; the classical filters of
:func:`napari_vitseg.features.classical.classical_features`). A stage thus
learns from what its neighbourhood was predicted to be (shapes, sizes, what lies next to what),
which pixel-local features cannot see.

Out-of-fold training. Probabilities predicted for the training pixels by a model trained on
those very pixels are overconfident (a random forest nearly reproduces its training labels);
a stage trained on them learns to trust stage 1 blindly and gains nothing. So the training
pixels' context features come *out of fold*: the scribbled pixels are split into
:data:`N_FOLDS` folds by connected stroke (:func:`stroke_folds`; a class drawn as fewer strokes
than folds has its strokes cut into pieces along their longer extent), and for each fold ``f``
a chain of models trained without fold ``f`` predicts the training planes; fold ``f``'s
pixels take their stage-``s`` context from that chain's stage-``s - 1`` probability maps.
The chain used for prediction is trained on all pixels (stage ``s`` on the out-of-fold
context). Training fits ``S + (S - 1) * N_FOLDS`` classifiers for ``S`` stages.

Prediction is exact in bands: context features of rows ``[y0, y1)`` need the previous stage's
probabilities over :func:`context_halo` more rows on each side (:func:`context_features` with
``rows``), so a band of a stage-``S`` result needs ``(S - 1) * context_halo()`` rows of
stage-1 margin (what :meth:`~napari_vitseg.pipeline.Segmenter.predict_rows` computes).

References
----------
.. [1] Tu, Z. & Bai, X. (2010). Auto-context and its application to high-level vision tasks and
   3D brain image segmentation. IEEE TPAMI 32(10), 1744-1757. :DOI:`10.1109/TPAMI.2009.186`
.. [2] Berg, S. et al. (2019). ilastik: interactive machine learning for (bio)image analysis.
   Nature Methods 16, 1226-1232. :DOI:`10.1038/s41592-019-0582-9`
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .._validation import VitsegError

__all__ = [
    "CONTEXT_FAMILIES",
    "CONTEXT_SIGMAS",
    "MAX_STAGES",
    "N_FOLDS",
    "context_feature_names",
    "context_features",
    "context_halo",
    "context_maps",
    "expand_proba",
    "stroke_folds",
]

#: Gaussian scales (px) at which the previous stage's probabilities are smoothed. Measured
#: (docs/autocontext.md): region-scale context only; adding the raw map, sigmas 1-2 and gradient
#: magnitudes (11 channels per map) lowered the mean mIoU further (stage 2 then mostly copies
#: stage 1, smoothed).
CONTEXT_SIGMAS = (4.0, 8.0, 16.0)
#: Filter families applied to each probability map.
CONTEXT_FAMILIES = ("gaussian",)
#: Whether the raw probability map is a context channel too.
CONTEXT_RAW = False
#: Folds of the out-of-fold stage predictions.
N_FOLDS = 3
#: Most stages a segmenter may have.
MAX_STAGES = 4


def context_maps(n_classes: int) -> list[int]:
    """Indices of the probability maps that get context features (the first map is dropped
    for two classes: it is one minus the other)."""
    return [1] if n_classes == 2 else list(range(n_classes))


def context_feature_names(classes: Sequence[int]) -> list[str]:
    """Names of the context channels, in channel order (``'context_c2_gaussian_s4'``).

    Parameters
    ----------
    classes : sequence of int
        The class ids of the probability maps (``classes_`` of the previous stage).
    """
    from ..features.classical import classical_feature_names

    names = classical_feature_names(CONTEXT_SIGMAS, CONTEXT_FAMILIES, include_intensity=CONTEXT_RAW)
    names = ["proba" if n == "intensity" else n for n in names]
    return [f"context_c{int(classes[i])}_{n}" for i in context_maps(len(classes)) for n in names]


def context_halo() -> int:
    """Rows of probability context a band needs on each side so its context features equal the
    whole plane's (64 px with :data:`CONTEXT_SIGMAS` up to 16)."""
    from ..features.classical import classical_halo

    return classical_halo(CONTEXT_SIGMAS, CONTEXT_FAMILIES)


def context_features(proba: np.ndarray, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Context features of class probability maps.

    Parameters
    ----------
    proba : ndarray, (K, Y, X) float
        Class probabilities of one plane (or of a band of rows of it).
    rows : (int, int), optional
        Only rows ``[rows[0], rows[1])`` of ``proba``; the filters take up to
        :func:`context_halo` rows around them from ``proba``, so the result equals that of the
        whole ``proba`` (up to float32 rounding). Default: all rows.

    Returns
    -------
    ndarray, (rows, X, F) float32
        ``F = len(context_feature_names(classes))``: per map of :func:`context_maps`, the map
        itself then the Gaussian and gradient channels of
        :func:`~napari_vitseg.features.classical.classical_features` at :data:`CONTEXT_SIGMAS`.
    """
    from ..features.classical import classical_features

    k, ny, nx = proba.shape
    y0, y1 = (0, ny) if rows is None else (max(0, int(rows[0])), min(ny, int(rows[1])))
    h = context_halo()
    a0, a1 = max(0, y0 - h), min(ny, y1 + h)
    maps = context_maps(k)
    blocks = []
    for i in maps:
        f = classical_features(np.ascontiguousarray(proba[i, a0:a1], dtype=np.float32), sigmas=CONTEXT_SIGMAS,
                               families=CONTEXT_FAMILIES, include_intensity=CONTEXT_RAW, backend="cpu")
        blocks.append(f[y0 - a0: y1 - a0])
    return np.ascontiguousarray(np.concatenate(blocks, axis=-1))


def expand_proba(p: np.ndarray, have: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Probabilities (n, len(have)) of a model that saw only classes ``have`` as (n, K) over
    ``classes`` (zeros for the classes it never saw)."""
    if len(have) == len(classes) and np.array_equal(have, classes):
        return p
    out = np.zeros((p.shape[0], len(classes)), np.float32)
    out[:, np.searchsorted(classes, have)] = p
    return out


def _split_along(rr: np.ndarray, cc: np.ndarray, n: int) -> list[np.ndarray]:
    """Split the pixels of one stroke into ``n`` contiguous pieces along its longer extent."""
    key = rr if np.ptp(rr) >= np.ptp(cc) else cc
    order = np.argsort(key, kind="stable")
    return [p for p in np.array_split(order, n) if p.size]


def stroke_folds(planes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]],
                 n_folds: int = N_FOLDS) -> list[np.ndarray]:
    """Assign scribbled pixels to folds, keeping connected strokes together.

    Per class, the connected components (8-connected, per plane) of its scribbles are dealt
    largest first to the fold that holds the fewest pixels of that class so far, so the folds
    are balanced per class and neighbouring pixels of one stroke never straddle two folds. A
    class with fewer strokes than folds has each stroke cut into ``n_folds`` pieces along its
    longer extent instead (pieces of one stroke then touch across the cuts).

    Parameters
    ----------
    planes : sequence of (rows, cols, labels, (Y, X))
        The labelled pixels of each training plane (as :meth:`ScribbleIndex.plane` gives them)
        and the plane's shape.
    n_folds : int

    Returns
    -------
    list of ndarray of int8
        Per plane, the fold (0..n_folds-1) of each labelled pixel, aligned with its ``rows``.

    Raises
    ------
    VitsegError
        ``n_folds < 2``.
    """
    if n_folds < 2:
        raise VitsegError(f"Auto-context needs at least 2 folds; got {n_folds}.")
    folds = [np.zeros(len(lab), np.int8) for _, _, lab, _ in planes]
    classes = np.unique(np.concatenate([lab for _, _, lab, _ in planes])) if planes else []
    eight = np.ones((3, 3), bool)
    for c in classes:
        strokes = []  # (plane index, pixel indices into that plane's arrays)
        for p, (rr, cc, lab, _) in enumerate(planes):
            idx = np.flatnonzero(lab == c)
            if idx.size == 0:
                continue
            r0, c0 = rr[idx].min(), cc[idx].min()
            mask = np.zeros((rr[idx].max() - r0 + 1, cc[idx].max() - c0 + 1), bool)
            mask[rr[idx] - r0, cc[idx] - c0] = True
            comp, n = ndimage.label(mask, structure=eight)
            ids = comp[rr[idx] - r0, cc[idx] - c0]
            order = np.argsort(ids, kind="stable")
            bounds = np.searchsorted(ids[order], np.arange(1, n + 2))
            strokes += [(p, idx[order[bounds[j]:bounds[j + 1]]]) for j in range(n)]
        if len(strokes) < n_folds:
            for s, (p, idx) in enumerate(strokes):
                rr, cc = planes[p][0], planes[p][1]
                for j, piece in enumerate(_split_along(rr[idx], cc[idx], n_folds)):
                    folds[p][idx[piece]] = (j + s) % n_folds
            continue
        strokes.sort(key=lambda t: (-t[1].size, t[0], int(t[1][0])))
        load = np.zeros(n_folds, np.int64)
        for p, idx in strokes:
            f = int(np.argmin(load))
            folds[p][idx] = f
            load[f] += idx.size
    return folds
