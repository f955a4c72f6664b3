"""Coarse-to-fine prediction: classify a coarse grid, then, level by level, only the points near
a class boundary or where the coarser prediction is uncertain.

Per-pixel classification of a smooth label field spends most of its time on pixels whose
label any neighbour already tells. Here the classifier first runs on every ``stride**levels``-th
pixel along rows and columns (every 4th for the default ``stride=2, levels=2``: 1/16 of the
pixels). Each finer grid (step ``stride**(levels - 1)``, ..., 1: full resolution) takes the
probabilities of its nearest coarser cell, except the points that are classified exactly:

- coarser steps (stride 4 -> 2 by default): the points whose nearest coarser cell is
  *unsettled*: its label differs from one of its 3x3 neighbours' or its two largest class
  probabilities differ by less than ``margin``. The 3x3 neighbourhood catches a structure the
  coarse grid saw at one cell only (a thin membrane crossing a grid line);
- the last step (stride 2 -> full resolution): the pixels between coarser cells that disagree
  (the 1, 2 or 4 cells enclosing the pixel have different labels, or one of them is within
  ``margin``). Every structure at least ``stride`` pixels wide is sampled by the stride-2 grid,
  so the cells enclosing a pixel tell whether a boundary can pass through it;
- after each step, ``grow`` more rounds (by default 2 at every step but the last): a point
  whose exact label differs from the label it would have inherited (a surprise) has its
  same-grid 3x3 neighbours classified too, which follows a thin structure along its length
  from where the coarser grid first touched it.

``halo`` widens every test by that many coarser cells. This is the adaptive refinement of
coarse-to-fine segmentation (Kirillov et al., "PointRend: image segmentation as rendering",
CVPR 2020: refine only the uncertain points of a coarse prediction; applied hierarchically,
as in quadtree / multigrid refinement), here with exact per-pixel features, so it is an
approximation only where a settled coarse neighbourhood hides a structure thinner than the
grid step: a sharp straight line one or two pixels wide that runs parallel to the grid between
two stride-4 grid lines, with confidently classified ground on both sides, is lost by the
default (``levels=1`` keeps every structure two pixels wide; curved and slanted thin lines and
the 2-pixel FIB-SEM membranes of the shared data survive, see ``tests/pipeline/test_coarse.py``).
``levels=1, grow=0, margin=0.2, rule='3x3'`` is the single-level scheme of napari-vitseg before
:data:`SCHEME_VERSION` 2.

:class:`~napari_vitseg.pipeline.Segmenter` uses it (``prediction='coarse-to-fine'``, the
default) through :func:`coarse_to_fine_rows`, which gives rows of a plane from a band of its
features, equal to the same rows of the whole-plane result (the grids are the plane's and the
band is widened by :func:`coarse_rows_needed`), so row bands and viewer bands agree with whole
planes. Measured in ``docs/apply_speed.md`` (agreement with the exact prediction on the shared
sets with ground truth, including FIB-SEM membranes two pixels wide).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .._validation import VitsegError

__all__ = ["DEFAULT_LEVELS", "SCHEME_VERSION", "coarse_rows_needed", "coarse_to_fine_proba",
           "coarse_to_fine_rows"]

#: Levels of the default scheme: 2 = a stride-4 grid, refined to stride 2, then to full resolution.
DEFAULT_LEVELS = 2
#: Surprise-growing rounds of the default scheme at each step but the last (to full resolution).
DEFAULT_GROW = 2
#: Default top-2 probability margin below which a coarse cell counts as uncertain.
DEFAULT_MARGIN = 0.3
#: Version of the default scheme (its labels): 1 = one stride-2 level, 3x3 test, margin 0.2
#: (napari-vitseg up to issue 13's multi-level change); 2 = this module's defaults. Part of a
#: batch output's stamp, so a resumed output never mixes labels of two schemes.
SCHEME_VERSION = 2

_RULES = ("auto", "3x3")


def coarse_to_fine_proba(predict_proba, features: np.ndarray, *, stride: int = 2, margin: float = DEFAULT_MARGIN,
                         halo: int = 0, levels: int | None = None, grow: int | tuple[int, ...] | None = None,
                         rule: str = "auto", return_fraction: bool = False):
    """Class probabilities of a plane from a coarse grid refined near boundaries, level by level.

    Parameters
    ----------
    predict_proba : callable
        ``(n, F) float32 -> (n, K)`` probabilities (e.g. a fitted classifier's ``predict_proba``).
    features : ndarray, (Y, X, F) float32
        Full-resolution features of the plane.
    stride : int
        Grid step between levels (>= 2); the coarsest grid's step is ``stride**levels``.
    margin : float
        A coarser cell whose two largest probabilities differ by less than this is refined
        around (0 .. 1; 0 refines only label boundaries, 1 refines everything).
    halo : int
        Widen every test by this many coarser cells (>= 0; more pixels classified, safer).
    levels : int, optional
        Grid levels above full resolution (>= 1); None: :data:`DEFAULT_LEVELS` (2).
    grow : int or sequence of int, optional
        Surprise-growing rounds after each step (>= 0): one number for every step, or one per
        step, coarsest first. None: :data:`DEFAULT_GROW` (2) at every step but the last, 0 there.
    rule : {'auto', '3x3'}
        Test of the last step (to full resolution): 'auto' the enclosing cells, '3x3' the
        nearest cell's 3x3 neighbourhood like the coarser steps (with ``levels=1, grow=0,
        margin=0.2``: the scheme of :data:`SCHEME_VERSION` 1, bit for bit).
    return_fraction : bool
        Also return the fraction of pixels that were classified.

    Returns
    -------
    ndarray, (K, Y, X) float32
        Exact probabilities at the coarsest grid and at refined points, elsewhere the nearest
        coarser cell's (recursively).
    float
        Only with ``return_fraction``: pixels with exact probabilities / pixels.

    Raises
    ------
    VitsegError
        Bad ``features`` shape, ``stride`` < 2, ``levels`` < 1, ``halo`` or ``grow`` < 0,
        ``margin`` outside [0, 1], unknown ``rule``.
    """
    if not isinstance(features, np.ndarray) or features.ndim != 3:
        raise VitsegError(f"features must be a (Y, X, F) array; got shape {getattr(features, 'shape', None)}.")
    ny = features.shape[0]
    return coarse_to_fine_rows(predict_proba, features, offset=0, n_rows=ny, rows=(0, ny), stride=stride,
                               margin=margin, halo=halo, levels=levels, grow=grow, rule=rule,
                               return_fraction=return_fraction)


def _int_param(name: str, value, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise VitsegError(f"{name} must be an integer >= {low}; got {value!r}.")
    return int(value)


def _params(stride, margin, halo, levels, grow, rule) -> tuple[int, float, int, int, tuple[int, ...], str]:
    """Checked parameters, defaults filled in; ``grow`` as one count per step, coarsest first."""
    stride = _int_param("stride", stride, 2)
    halo = _int_param("halo", halo, 0)
    levels = _int_param("levels", DEFAULT_LEVELS if levels is None else levels, 1)
    grow = _grow_param(grow, levels)
    try:
        value = float(margin)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise VitsegError(f"margin must be a number between 0 and 1; got {margin!r}.")
    margin = value
    if rule not in _RULES:
        raise VitsegError(f"rule must be one of {_RULES}; got {rule!r}.")
    return stride, margin, halo, levels, grow, rule


def _grow_param(grow, levels: int) -> tuple[int, ...]:
    if grow is None:  # growing follows thin structures the coarser grids missed; at the last step the
        # stride-2 grid has sampled them, and growing there mostly widens boundaries (docs/apply_speed.md)
        return (DEFAULT_GROW,) * (levels - 1) + (0,)
    if isinstance(grow, (int, np.integer)) and not isinstance(grow, bool):
        return (_int_param("grow", grow, 0),) * levels
    if not isinstance(grow, (tuple, list)) or len(grow) != levels:
        raise VitsegError(f"grow must be an integer >= 0 or a sequence of one per level ({levels}), "
                          f"coarsest first; got {grow!r}.")
    return tuple(_int_param("grow", g, 0) for g in grow)


def _near(y, step: int, n_cells: int):
    """Index of the ``step`` grid cell nearest to pixel position(s) ``y`` (ties go to the later cell)."""
    return np.minimum((np.asarray(y) + step // 2) // step, n_cells - 1)


def _plan(rows: tuple[int, int], n_rows: int, stride: int, levels: int, halo: int,
          grow: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Per level ``l = 0 .. levels`` (grid step ``stride**l``): ``(lo, hi, clo, chi)``, the cells
    (inclusive grid-row indices) whose values are wanted and the cells that are computed.

    A level-``l - 1`` cell's value depends on the level-``l - 1`` cells within ``grow`` of it
    (surprise growing), so ``grow`` more cells are computed; each computed cell depends on
    level-``l`` cells within ``1 + halo`` of its nearest one (3x3 test, or the enclosing cells,
    widened by ``halo``), whose values are wanted there."""
    lo, hi = int(rows[0]), int(rows[1]) - 1
    plan = []
    for lev in range(levels + 1):
        n = -(-n_rows // stride ** lev)
        g = grow[levels - 1 - lev] if lev < levels else 0
        clo, chi = max(0, lo - g), min(n - 1, hi + g)
        plan.append((lo, hi, clo, chi))
        if lev < levels:
            s, n_up = stride ** (lev + 1), -(-n_rows // stride ** (lev + 1))
            lo = max(0, int(_near(clo * stride ** lev, s, n_up)) - 1 - halo)
            hi = min(n_up - 1, int(_near(chi * stride ** lev, s, n_up)) + 1 + halo)
    return plan


def coarse_rows_needed(rows: tuple[int, int], n_rows: int, *, stride: int = 2, halo: int = 0,
                       levels: int | None = None, grow: int | tuple[int, ...] | None = None) -> tuple[int, int]:
    """Feature rows :func:`coarse_to_fine_rows` needs for the pixel rows ``rows`` of a plane.

    Parameters
    ----------
    rows : (int, int)
        First and one-past-last row wanted, ``0 <= a < b <= n_rows``.
    n_rows : int
        Rows of the whole plane.
    stride, halo, levels, grow
        As in :func:`coarse_to_fine_proba` (None: the defaults).

    Returns
    -------
    (int, int)
        ``[f0, f1)``: ``rows`` widened to the grid rows of the cells, at every level, that
        decide them, clipped to the plane.

    Raises
    ------
    VitsegError
        Bad parameters.
    """
    stride, _, halo, levels, grow, _ = _params(stride, 0.0, halo, levels, grow, "auto")
    plan = _plan(rows, n_rows, stride, levels, halo, grow)
    f0 = min(clo * stride ** lev for lev, (_, _, clo, _) in enumerate(plan))
    f1 = max(chi * stride ** lev + 1 for lev, (_, _, _, chi) in enumerate(plan))
    return min(int(rows[0]), f0), max(int(rows[1]), min(n_rows, f1))


def _unsure(p: np.ndarray, margin: float) -> np.ndarray:
    """Cells (cy, cx) of probabilities (cy, cx, K) whose two largest are within ``margin``."""
    k = p.shape[-1]
    if k < 2 or margin <= 0:
        return np.zeros(p.shape[:2], bool)
    top2 = np.partition(p, k - 2, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) < margin


def _refine_3x3(p: np.ndarray, margin: float, halo: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Finer points (iy, ix: their nearest coarser cells) whose nearest cell is unsettled: its 3x3
    neighbours' labels differ or it is unsure, dilated by ``halo`` cells."""
    lab = np.argmax(p, axis=-1)
    # at the plane's edges "nearest" equals the whole plane's; cells at a band's inner edge
    # are wrong here but decide none of the wanted rows (_plan widens by 1 + halo cells)
    out = ndi.maximum_filter(lab, size=3, mode="nearest") != ndi.minimum_filter(lab, size=3, mode="nearest")
    out |= _unsure(p, margin)
    if halo > 0:
        out = ndi.binary_dilation(out, structure=np.ones((2 * halo + 1,) * 2, bool))
    return out.take(iy, axis=0).take(ix, axis=1)


def _refine_enclosing(p: np.ndarray, margin: float, halo: int, ys: np.ndarray, xs: np.ndarray,
                      s_up: int, row0: int) -> np.ndarray:
    """Finer points at plane rows ``ys`` and columns ``xs`` whose enclosing coarser cells (1, 2
    or 4: the grid rows and columns on either side, ``halo`` cells wider) disagree in label or
    one is unsure. ``p``: coarser cells (cy, cx, K) from grid row ``row0``."""
    lab = np.argmax(p, axis=-1)
    un = _unsure(p, margin)
    top, bottom = lab, lab
    if halo > 0:  # band-edge cells are wrong here but within halo of no enclosing cell (_plan)
        size = 2 * halo + 1
        top = ndi.maximum_filter(lab, size=size, mode="nearest")
        bottom = ndi.minimum_filter(lab, size=size, mode="nearest")
        un = ndi.binary_dilation(un, structure=np.ones((size, size), bool))
    # one row and column more (the edge's copy: a point past the last grid row or column is
    # enclosed by that row or column alone; at a band's inner edge the copy is never read)
    top, bottom, un = (np.pad(a, ((0, 1), (0, 1)), mode="edge") for a in (top, bottom, un))
    # per coarser cell (q, c): the pair below it, the pair right of it, the 2x2 block it starts
    below = (np.maximum(top[:-1], top[1:]) != np.minimum(bottom[:-1], bottom[1:])) | un[:-1] | un[1:]
    right = (np.maximum(top[:, :-1], top[:, 1:]) != np.minimum(bottom[:, :-1], bottom[:, 1:])) | un[:, :-1] | un[:, 1:]
    block = below[:, :-1] | below[:, 1:] | right[:-1] | right[1:]
    q, c = ys // s_up - row0, xs // s_up
    ry, rx = ys % s_up > 0, xs % s_up > 0
    out = np.zeros((len(ys), len(xs)), bool)
    for sel_y, sel_x, table in ((ry, ~rx, below[:, :-1]), (~ry, rx, right[:-1]), (ry, rx, block)):
        if sel_y.any() and sel_x.any():
            out[np.ix_(sel_y, sel_x)] = table[np.ix_(q[sel_y], c[sel_x])]
    return out


def _neighbours(ty: np.ndarray, tx: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 3x3 neighbourhoods (inside ``shape``) of the points ``(ty, tx)``, each point once."""
    dy, dx = np.divmod(np.arange(9), 3)
    yy = (ty[:, None] + dy - 1).ravel()
    xx = (tx[:, None] + dx - 1).ravel()
    ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    flat = np.unique(yy[ok] * shape[1] + xx[ok])
    return np.divmod(flat, shape[1])


def coarse_to_fine_rows(predict_proba, features: np.ndarray, *, offset: int, n_rows: int,
                        rows: tuple[int, int], stride: int = 2, margin: float = DEFAULT_MARGIN, halo: int = 0,
                        levels: int | None = None, grow: int | tuple[int, ...] | None = None, rule: str = "auto",
                        return_fraction: bool = False):
    """Rows ``[a, b)`` of :func:`coarse_to_fine_proba` of a whole plane, from a band of its features.

    Parameters
    ----------
    predict_proba : callable
        ``(n, F) float32 -> (n, K)`` probabilities.
    features : ndarray, (Yb, X, F) float32
        Features of the plane's rows ``[offset, offset + Yb)``; they must cover
        :func:`coarse_rows_needed` of ``rows`` (same ``stride``, ``halo``, ``levels``, ``grow``).
    offset : int
        Plane row of ``features[0]``.
    n_rows : int
        Rows of the whole plane (the grids are the plane's: rows ``0, stride**l, ...``).
    rows : (int, int)
        Plane rows wanted.
    stride, margin, halo, levels, grow, rule, return_fraction
        As in :func:`coarse_to_fine_proba` (the fraction is of the ``rows`` pixels).

    Returns
    -------
    ndarray, (K, b - a, X) float32
        Equal to ``coarse_to_fine_proba(predict_proba, whole_plane_features)[:, a:b]``.
    float
        Only with ``return_fraction``: pixels of ``rows`` with exact probabilities / pixels of ``rows``.

    Raises
    ------
    VitsegError
        Bad shapes, rows outside the plane or not covered by ``features``, bad parameters.
    """
    if not isinstance(features, np.ndarray) or features.ndim != 3:
        raise VitsegError(f"features must be a (Y, X, F) array; got shape {getattr(features, 'shape', None)}.")
    stride, margin, halo, levels, grow, rule = _params(stride, margin, halo, levels, grow, rule)
    a, b = (int(r) for r in rows)
    yb, nx, nf = features.shape
    if not 0 <= a < b <= n_rows:
        raise VitsegError(f"rows must satisfy 0 <= first < last <= {n_rows}; got {rows!r}.")
    f0, f1 = coarse_rows_needed((a, b), n_rows, stride=stride, halo=halo, levels=levels, grow=grow)
    if offset > f0 or offset + yb < f1:
        raise VitsegError(f"features of rows [{offset}, {offset + yb}) do not cover rows [{f0}, {f1}) that "
                          f"rows {rows!r} need; widen them with coarse_rows_needed.")
    plan = _plan((a, b), n_rows, stride, levels, halo, grow)

    def classify(ys, xs):
        return np.asarray(predict_proba(features[ys - offset, xs]), dtype=np.float32)

    # coarsest level: every cell of its grid in the rows it needs
    s = stride ** levels
    lo, hi, _, _ = plan[levels]
    gy = np.arange(lo, hi + 1) * s
    p = np.asarray(predict_proba(np.ascontiguousarray(features[gy - offset, ::s]).reshape(-1, nf)), np.float32)
    p = p.reshape(len(gy), -1, p.shape[-1])  # (cy, cx, K)
    exact = np.ones(p.shape[:2], bool)
    row0 = lo  # grid row of p[0]
    for lev in range(levels - 1, -1, -1):  # each finer grid from the coarser one
        s_up, s = s, stride ** lev
        n_up = -(-n_rows // s_up)
        lo, hi, clo, chi = plan[lev]
        ys, xs = np.arange(clo, chi + 1) * s, np.arange(0, nx, s)
        iy = _near(ys, s_up, n_up) - row0
        ix = _near(xs, s_up, p.shape[1])
        if lev == 0 and rule == "auto":
            todo = _refine_enclosing(p, margin, halo, ys, xs, s_up, row0)
        else:
            todo = _refine_3x3(p, margin, halo, iy, ix)
        p = p.take(iy, axis=0).take(ix, axis=1)  # nearest coarser cell's probabilities
        # exact: the coarser grid's own points that were exact there
        on_y, on_x = (ys % s_up) == 0, (xs % s_up) == 0
        was_exact = exact[np.ix_(iy[on_y], ix[on_x])]
        exact = np.zeros(p.shape[:2], bool)
        exact[np.ix_(on_y, on_x)] = was_exact
        todo &= ~exact
        ty, tx = np.nonzero(todo)
        rounds = grow[levels - 1 - lev]
        for round_ in range(rounds + 1):
            if not ty.size:
                break
            before = np.argmax(p[ty, tx], axis=-1)
            p[ty, tx] = classify(ys[ty], xs[tx])
            exact[ty, tx] = True
            if round_ < rounds:  # surprises: their inherited 3x3 neighbours are classified next
                moved = np.argmax(p[ty, tx], axis=-1) != before
                ty, tx = _neighbours(ty[moved], tx[moved], exact.shape)
                keep = ~exact[ty, tx]
                ty, tx = ty[keep], tx[keep]
        # keep the wanted cells: the computed ones beyond them may be wrong (band edges)
        p, exact = p[lo - clo:hi - clo + 1], exact[lo - clo:hi - clo + 1]
        row0 = lo
    result = np.ascontiguousarray(np.moveaxis(p, -1, 0))
    if return_fraction:
        return result, float(np.count_nonzero(exact) / exact.size)
    return result
