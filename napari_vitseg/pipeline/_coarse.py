"""Coarse-to-fine prediction: classify a stride-2 grid, then only the pixels near a class
boundary or where the coarse prediction is uncertain.

Per-pixel classification of a smooth label field spends most of its time on pixels whose
label any neighbour already tells. Here the classifier first runs on every ``stride``-th pixel
along rows and columns (1/4 of the pixels for stride 2); a coarse cell is *settled* when its
label equals all its 8 neighbours' and its two largest class probabilities differ by at least
``margin``; every full-resolution pixel next to an unsettled cell is classified exactly, the
others take the probabilities of their nearest coarse cell. This is the adaptive refinement
used for dense CRF / segmentation upsampling (e.g. Kirillov et al., "PointRend: image
segmentation as rendering", CVPR 2020: refine only the uncertain points of a coarse
prediction), here with exact per-pixel features, so it is an approximation only where a
settled coarse neighbourhood hides a structure thinner than ``stride`` pixels.

:class:`~napari_vitseg.pipeline.Segmenter` uses it (``prediction='coarse-to-fine'``, the
default) through :func:`coarse_to_fine_rows`, which gives rows of a plane from a band of its
features, equal to the same rows of the whole-plane result (the coarse grid is the plane's and
the band is widened by :func:`coarse_rows_needed`), so row bands and viewer bands agree with
whole planes. Measured in ``docs/apply_speed.md`` (agreement with the exact prediction on the
shared sets with ground truth, including FIB-SEM membranes two pixels wide).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .._validation import VitsegError

__all__ = ["coarse_rows_needed", "coarse_to_fine_proba", "coarse_to_fine_rows"]


def coarse_to_fine_proba(predict_proba, features: np.ndarray, *, stride: int = 2, margin: float = 0.2,
                         halo: int = 0, return_fraction: bool = False):
    """Class probabilities of a plane from a coarse grid refined near boundaries.

    Parameters
    ----------
    predict_proba : callable
        ``(n, F) float32 -> (n, K)`` probabilities (e.g. a fitted classifier's ``predict_proba``).
    features : ndarray, (Y, X, F) float32
        Full-resolution features of the plane.
    stride : int
        Grid step of the coarse pass (>= 2).
    margin : float
        A coarse cell whose two largest probabilities differ by less than this is refined
        (0 .. 1; 0 refines only label boundaries, 1 refines everything).
    halo : int
        Also refine the pixels whose nearest coarse cell is within ``halo`` cells of an
        unsettled one (0: only pixels whose nearest cell is unsettled).
    return_fraction : bool
        Also return the fraction of pixels that were classified (coarse + refined).

    Returns
    -------
    ndarray, (K, Y, X) float32
        Exact probabilities at the coarse grid and at refined pixels, the nearest coarse
        cell's elsewhere.
    float
        Only with ``return_fraction``.

    Raises
    ------
    VitsegError
        Bad ``features`` shape, ``stride`` < 2, ``halo`` < 0 or ``margin`` outside [0, 1].
    """
    if not isinstance(features, np.ndarray) or features.ndim != 3:
        raise VitsegError(f"features must be a (Y, X, F) array; got shape {getattr(features, 'shape', None)}.")
    ny = features.shape[0]
    return coarse_to_fine_rows(predict_proba, features, offset=0, n_rows=ny, rows=(0, ny), stride=stride,
                               margin=margin, halo=halo, return_fraction=return_fraction)


def _check(stride, margin, halo):
    if not isinstance(stride, (int, np.integer)) or stride < 2:
        raise VitsegError(f"stride must be an integer >= 2; got {stride!r}.")
    if not isinstance(halo, (int, np.integer)) or halo < 0:
        raise VitsegError(f"halo must be an integer >= 0; got {halo!r}.")
    if not 0.0 <= float(margin) <= 1.0:
        raise VitsegError(f"margin must be between 0 and 1; got {margin!r}.")


def _cells(rows: tuple[int, int], n_rows: int, stride: int) -> tuple[int, int]:
    """First and last coarse cell (grid row index) nearest to the pixel rows ``[a, b)``."""
    cy = -(-n_rows // stride)
    a, b = rows
    return min((a + stride // 2) // stride, cy - 1), min((b - 1 + stride // 2) // stride, cy - 1)


def coarse_rows_needed(rows: tuple[int, int], n_rows: int, *, stride: int = 2, halo: int = 0) -> tuple[int, int]:
    """Feature rows :func:`coarse_to_fine_rows` needs for the pixel rows ``rows`` of a plane.

    Parameters
    ----------
    rows : (int, int)
        First and one-past-last row wanted, ``0 <= a < b <= n_rows``.
    n_rows : int
        Rows of the whole plane.
    stride, halo : int
        As in :func:`coarse_to_fine_proba`.

    Returns
    -------
    (int, int)
        ``[f0, f1)``: ``rows`` widened to the grid rows of the coarse cells whose settledness
        decides them (their 3x3 neighbours, ``halo`` cells more), clipped to the plane.
    """
    c0, c1 = _cells(rows, n_rows, stride)
    cy = -(-n_rows // stride)
    g0, g1 = max(0, c0 - 1 - halo), min(cy - 1, c1 + 1 + halo)
    return min(rows[0], g0 * stride), max(rows[1], min(n_rows, g1 * stride + 1))


def coarse_to_fine_rows(predict_proba, features: np.ndarray, *, offset: int, n_rows: int,
                        rows: tuple[int, int], stride: int = 2, margin: float = 0.2, halo: int = 0,
                        return_fraction: bool = False):
    """Rows ``[a, b)`` of :func:`coarse_to_fine_proba` of a whole plane, from a band of its features.

    Parameters
    ----------
    predict_proba : callable
        ``(n, F) float32 -> (n, K)`` probabilities.
    features : ndarray, (Yb, X, F) float32
        Features of the plane's rows ``[offset, offset + Yb)``; they must cover
        :func:`coarse_rows_needed` of ``rows``.
    offset : int
        Plane row of ``features[0]``.
    n_rows : int
        Rows of the whole plane (the coarse grid is the plane's: rows ``0, stride, ...``).
    rows : (int, int)
        Plane rows wanted.
    stride, margin, halo, return_fraction
        As in :func:`coarse_to_fine_proba` (the fraction is of the ``rows`` pixels).

    Returns
    -------
    ndarray, (K, b - a, X) float32
        Equal to ``coarse_to_fine_proba(predict_proba, whole_plane_features)[:, a:b]``.
    float
        Only with ``return_fraction``: pixels classified / pixels returned.

    Raises
    ------
    VitsegError
        Bad shapes, rows outside the plane or not covered by ``features``, bad parameters.
    """
    if not isinstance(features, np.ndarray) or features.ndim != 3:
        raise VitsegError(f"features must be a (Y, X, F) array; got shape {getattr(features, 'shape', None)}.")
    _check(stride, margin, halo)
    a, b = (int(r) for r in rows)
    yb, nx, nf = features.shape
    if not 0 <= a < b <= n_rows:
        raise VitsegError(f"rows must satisfy 0 <= first < last <= {n_rows}; got {rows!r}.")
    f0, f1 = coarse_rows_needed((a, b), n_rows, stride=stride, halo=halo)
    if offset > f0 or offset + yb < f1:
        raise VitsegError(f"features of rows [{offset}, {offset + yb}) do not cover rows [{f0}, {f1}) that "
                          f"rows {rows!r} need; widen them with coarse_rows_needed.")
    # coarse grid rows of the plane inside [f0, f1), all columns
    g0 = -(-f0 // stride)
    gr = np.arange(g0 * stride, f1, stride)
    coarse_feats = features[gr - offset, ::stride]
    cy, cx = coarse_feats.shape[:2]
    pc = np.asarray(predict_proba(np.ascontiguousarray(coarse_feats).reshape(-1, nf)), dtype=np.float32)
    k = pc.shape[1]
    pc = pc.reshape(cy, cx, k)
    lab = np.argmax(pc, axis=-1)
    if k > 1:
        top2 = np.partition(pc, k - 2, axis=-1)[..., -2:]
        unsure = (top2[..., 1] - top2[..., 0]) < margin
    else:
        unsure = np.zeros((cy, cx), bool)
    # at the plane's edges "nearest" equals the whole plane's; cells at a band's inner edge
    # are wrong here but decide none of the rows [a, b) (coarse_rows_needed)
    boundary = ndi.maximum_filter(lab, size=3, mode="nearest") != ndi.minimum_filter(lab, size=3, mode="nearest")
    # a full-resolution pixel takes its nearest coarse cell; it is refined when that cell or
    # a neighbour of it is unsettled (the dilation covers pixels halfway to the next cell)
    unsettled = boundary | unsure
    if halo > 0:
        unsettled = ndi.binary_dilation(unsettled, structure=np.ones((2 * halo + 1,) * 2, bool))
    cy_plane = -(-n_rows // stride)
    iy = np.minimum((np.arange(a, b) + stride // 2) // stride, cy_plane - 1) - g0
    ix = np.minimum((np.arange(nx) + stride // 2) // stride, cx - 1)
    out = pc[iy[:, None], ix[None, :]]  # (b - a, X, K) nearest coarse cell
    refine = unsettled[iy[:, None], ix[None, :]]
    on_grid = np.zeros((b - a, nx), bool)
    on_grid[(-a) % stride::stride, ::stride] = True
    todo = refine & ~on_grid
    rows_i, cols = np.nonzero(todo)
    if rows_i.size:
        out[rows_i, cols] = np.asarray(predict_proba(features[rows_i + a - offset, cols]), dtype=np.float32)
    result = np.ascontiguousarray(np.moveaxis(out, -1, 0))
    if return_fraction:
        n_grid = int(np.count_nonzero(on_grid))
        return result, float((n_grid + rows_i.size) / ((b - a) * nx))
    return result
