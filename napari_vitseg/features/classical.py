"""Classical multiscale filter features (the Trainable Weka Segmentation / ilastik family).

One specification, two backends:

- ``backend="cpu"``: OpenCV separable filters and element-wise operations (``cv2.sepFilter2D``,
  ``cv2.addWeighted``, ...), float32, with a standard-library
  :class:`~concurrent.futures.ThreadPoolExecutor` over scales (OpenCV releases the GIL);
- ``backend="torch"``: the same kernels with :func:`torch.nn.functional.conv2d` (cuDNN forced
  to full float32, no TF32), meant for CUDA.

Specification (both backends)
-----------------------------
For every scale ``s`` (in pixels, sorted ascending):

``G_s``
    Gaussian smoothing of the image with a sampled, normalised Gaussian of standard deviation
    ``s`` truncated at ``4 s`` (radius ``int(4 s + 0.5)``, as :func:`scipy.ndimage.gaussian_filter`
    with ``truncate=4``), applied separably.
Derivatives
    Taken from ``G_s`` with central differences of step ``h = max(1, floor(s / 4))`` pixels
    (x = columns, y = rows): ``d/dx = (G[x+h] - G[x-h]) / 2h``,
    ``d2/dx2 = (G[x+h] - 2 G[x] + G[x-h]) / h**2`` and ``d2/dxdy`` the product of the two
    first-difference stencils. ``G_s`` holds no detail finer than ``s``, so the wider step loses
    nothing measurable (it adds a variance of about ``h**2 / 6`` to the smoothing, 0.1% of
    ``s**2``) and reduces the float32 cancellation error of the second differences by up to
    ``h**2`` (16x at ``s = 16``). The differences are exact for linear and quadratic images.
    They are scale-normalised (Lindeberg): first derivatives times ``s``, second derivatives
    times ``s**2``, so an edge or blob gives a comparable response at every scale.
``gradient``
    ``s * |grad G_s|``.
``laplacian``
    Laplacian of Gaussian, ``s**2 * (G_xx + G_yy)``.
``hessian``
    Eigenvalues of the scale-normalised Hessian ``s**2 [[G_xx, G_xy], [G_xy, G_yy]]``, largest
    then smallest (closed form for symmetric 2x2 matrices).
``structure``
    Eigenvalues (largest, smallest) of the structure tensor
    ``J = G_{s/2} * (s**2 grad G_s grad G_s^T)``: derivatives at the inner scale ``s`` and
    integration (Gaussian-weighted averaging of the outer products) at the outer scale
    ``rho = s / 2``, as ilastik does (``innerScale = s``, ``outerScale = s / 2``). The small
    outer scale keeps the feature local and cheap.
``dog``
    Difference of Gaussians between consecutive scales, ``G_{s_i} - G_{s_{i-1}}``; the first
    scale has no DoG channel (the raw intensity is its own channel). Not normalised (intensity
    units).
``intensity``
    The raw image (``include_intensity=True``).

Opt-in families (:data:`~napari_vitseg.features.config.EXTRA_FAMILIES`, not in the default;
their measured effect is in ``docs/features.md``):

``variance``
    Per scale, the Gaussian-weighted local standard deviation
    ``stddev = sqrt(max(G_s(I**2) - G_s(I)**2, 0))`` (intensity units).
``membrane``
    Membrane projections of Trainable Weka Segmentation (Arganda-Carreras et al.,
    Bioinformatics 2017, :DOI:`10.1093/bioinformatics/btx180`): the mean of the image along a
    digital line of ``2 * MEMBRANE_RADIUS + 1`` = 19 px (one tap per column, or per row for
    lines closer to vertical) at ``MEMBRANE_ORIENTATIONS`` = 12 orientations ``pi k / 12``;
    channels ``membrane_max``, ``membrane_min``, ``membrane_mean``, ``membrane_std``: the
    maximum, minimum, mean and population standard deviation over the orientations. Once per
    image, independent of ``sigmas``; halo 9 px. (Weka uses 30 orientations and also sum and
    median projections; sum is the mean times 30, and 12 orientations keep the family at
    about 1/5 of the cost of the default features.)
``context``
    Large-scale context at :data:`CONTEXT_SIGMAS` (32, 64 px), computed on a downsampled
    copy of the whole image: see :func:`context_features`. A whole-image family:
    :func:`classical_halo` does not cover it.
``bilateral``
    Edge-preserving smoothing (Tomasi & Manduchi, ICCV 1998), ``cv2.bilateralFilter`` with
    reflect-101 borders, at the (spatial sigma, range sigma) pairs of
    :data:`BILATERAL_SIGMAS` ((2, 0.1), (4, 0.1), (8, 0.2); window radius ``1.5 *`` the
    spatial sigma, OpenCV's default); the range sigma is a fraction of the image's 0.5-99.5
    percentile range, the image being clipped to that range before filtering and the result
    mapped back to intensity units. Spatial sigmas from :data:`BILATERAL_DOWNSAMPLE_FROM`
    (8 px) are filtered on the image block-averaged by 2 (at half the sigma) and interpolated
    back bilinearly, which makes the family 3x cheaper. Channels ``bilateral_s2``, ``_s4``, ``_s8``. A
    whole-image family (the percentiles), CPU for both backends.

Border handling: every filter mirrors the image about its edge pixels without repeating them
(``d c b | a b c d | c b a``): OpenCV ``BORDER_REFLECT_101``, scipy ``mode='mirror'``, torch
``'reflect'`` padding (generalised here to kernels wider than the image). Features within
:func:`classical_halo` pixels of an edge therefore depend on the mirrored border; tiles cut
from a larger plane need that much context on every side that is not an image edge.

Numerics: float32 throughout. The image mean is subtracted before filtering (and added back to
the ``gaussian`` channels), so rounding errors scale with the image's contrast, not its offset.
Results are reproducible run to run and independent of ``workers``.

Channel order (= :func:`classical_feature_names`): ``intensity`` first (if included), then one
block per scale in ascending order; inside a block the families follow
:data:`~napari_vitseg.features.config.ALL_FAMILIES`:
``gaussian, gradient, laplacian, hessian_max, hessian_min, structure_max, structure_min, dog,
stddev``; then the per-image families: the four ``membrane_*`` channels, then
``context_{mean,diff,std}_s32`` and ``_s64``, then ``bilateral_s2``, ``_s4``, ``_s8``. With the defaults (5 scales, the six
:data:`~napari_vitseg.features.config.CLASSICAL_FAMILIES`, intensity) that is
``1 + 5 * 7 + 4 = 40`` channels; the opt-in families only append channels.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext

import cv2
import numpy as np

from .._validation import VitsegError, as_float32, check_dtype, check_option
from .config import ALL_FAMILIES, CLASSICAL_FAMILIES

__all__ = [
    "classical_features",
    "pyramid_factor",
    "context_features",
    "whole_plane_features",
    "classical_feature_names",
    "classical_halo",
    "gaussian_kernel",
    "BACKENDS",
]

#: Accepted values of the ``backend`` argument.
BACKENDS = ("auto", "cpu", "torch")

_TRUNCATE = 4.0
_BORDER = cv2.BORDER_REFLECT_101
# Channel kinds produced by each family, in output order.
_FAMILY_KINDS = {
    "gaussian": ("gaussian",),
    "gradient": ("gradient",),
    "laplacian": ("laplacian",),
    "hessian": ("hessian_max", "hessian_min"),
    "structure": ("structure_max", "structure_min"),
    "dog": ("dog",),
    "variance": ("stddev",),
}
#: Families computed once per image, not per scale; their channels follow the scale blocks.
_TAIL_FAMILIES = ("membrane", "context", "bilateral")
#: Families computed from the whole plane (no halo; see :func:`whole_plane_features`).
WHOLE_PLANE_FAMILIES = ("context", "bilateral")
#: Membrane projections: half-length (px) of the line kernels and number of orientations.
MEMBRANE_RADIUS = 9
MEMBRANE_ORIENTATIONS = 12
_MEMBRANE_KINDS = ("membrane_max", "membrane_min", "membrane_mean", "membrane_std")
#: Scales (px) of the ``'context'`` family and its channel kinds per scale.
CONTEXT_SIGMAS = (32.0, 64.0)
_CONTEXT_KINDS = ("context_mean", "context_diff", "context_std")
#: Bilateral filters of the ``'bilateral'`` family: (spatial sigma in px, range sigma as a
#: fraction of the plane's 0.5-99.5 percentile intensity range).
BILATERAL_SIGMAS = ((2.0, 0.1), (4.0, 0.1), (8.0, 0.2))
#: Spatial sigmas (px) from which the bilateral filter runs on the plane block-averaged by 2
#: (and is interpolated back): the window has 4x fewer taps on 4x fewer pixels.
BILATERAL_DOWNSAMPLE_FROM = 8.0
#: Scale-space pyramid (``pyramid=True``): a scale ``s`` is computed on the image reduced by
#: the largest power of two ``f`` that leaves it at least this many reduced pixels
#: (``s / f >= PYRAMID_MIN_SIGMA``; 8 px on half the rows and columns, 16 px on a quarter).
PYRAMID_MIN_SIGMA = 4.0
#: Smoothing (own pixels) of a pyramid level before it is block-averaged by 2 into the next:
#: its response at the next level's Nyquist frequency is ``exp(-2 pi^2 4^2 / 16)`` ~ 3e-9.
_OCTAVE_SIGMA = 4.0


# -- specification helpers ------------------------------------------------------------------
def gaussian_kernel(sigma: float, truncate: float = _TRUNCATE) -> np.ndarray:
    """Sampled, normalised 1D Gaussian kernel shared by both backends.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels (> 0).
    truncate : float
        Radius in standard deviations; the radius is ``int(truncate * sigma + 0.5)`` pixels
        (as :func:`scipy.ndimage.gaussian_filter`).

    Returns
    -------
    numpy.ndarray of float32, shape (2 * radius + 1,)
        Weights summing to 1.

    Examples
    --------
    >>> gaussian_kernel(1.0).shape
    (9,)
    """
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _step(sigma: float) -> int:
    """Step (pixels) of the central differences taken on the Gaussian at scale ``sigma``."""
    return max(1, int(sigma // 4))


def pyramid_factor(sigma: float) -> int:
    """Reduction factor of the scale ``sigma`` in the scale-space pyramid (``pyramid=True``).

    Parameters
    ----------
    sigma : float
        Gaussian scale in pixels (> 0).

    Returns
    -------
    int
        The largest power of two ``f`` with ``sigma / f >= PYRAMID_MIN_SIGMA`` (1 below
        ``2 * PYRAMID_MIN_SIGMA``): 1 up to 7.9 px, 2 for 8-15.9 px, 4 for 16-31.9 px.

    Examples
    --------
    >>> [pyramid_factor(s) for s in (0.5, 4, 8, 16, 32)]
    [1, 1, 2, 4, 8]
    """
    return 1 << max(0, int(math.floor(math.log2(float(sigma) / PYRAMID_MIN_SIGMA))))


def _octave_variance(level: int) -> float:
    """Variance (own pixels squared) of the smoothing already in pyramid level ``level``:
    0 for the image; :data:`_OCTAVE_SIGMA` squared plus the 2 x 2 block mean's variance
    (``(2**2 - 1) / 12``), over 2**2, for every reduced level."""
    return 0.0 if level == 0 else (_OCTAVE_SIGMA**2 + 0.25) / 4.0


def _octave_chain(level: int) -> list[float]:
    """Pre-smoothing sigma (own pixels) of each level ``0 .. level - 1`` before its 2 x 2 block
    mean: it brings the level's smoothing to :data:`_OCTAVE_SIGMA`."""
    return [math.sqrt(_OCTAVE_SIGMA**2 - _octave_variance(j)) for j in range(level)]


def _level_sigma(sigma: float, f: int) -> float:
    """Gaussian (pixels of the level reduced by ``f``) that brings that level to scale ``sigma``."""
    k = f.bit_length() - 1
    return math.sqrt((sigma / f) ** 2 - _octave_variance(k)) if k else float(sigma)


def _pyramid_halo(sigma: float, families) -> int:
    """Full-resolution support (px) of a pyramid scale's channels (see :func:`classical_halo`)."""
    f = pyramid_factor(sigma)
    k = f.bit_length() - 1
    r = 0
    for j, pre in enumerate(_octave_chain(k)):  # smoothing + block mean of every level below
        r += ((1 << j) * (int(_TRUNCATE * pre + 0.5) + 1))
    s = sigma / f
    own = int(_TRUNCATE * _level_sigma(sigma, f) + 0.5)
    if set(families) & {"gradient", "laplacian", "hessian", "structure"}:
        own += _step(s)
    if "structure" in families:
        own += int(_TRUNCATE * 0.5 * s + 0.5)
    return r + f * (own + 2)  # + the bilinear interpolation's neighbour and a partial block


def _fmt(sigma: float) -> str:
    return f"s{sigma:g}"


def _normalise_spec(sigmas, families, include_intensity):
    """Validate and canonicalise (sorted sigmas, families in ALL_FAMILIES order)."""
    if isinstance(families, str):
        families = (families,)
    try:
        sig = [float(s) for s in (sigmas if isinstance(sigmas, Iterable) else (sigmas,))]
    except (TypeError, ValueError):
        raise VitsegError(
            f"sigmas must be a sequence of positive numbers (pixels); got {sigmas!r}."
        ) from None
    if any(not math.isfinite(s) or s <= 0 for s in sig):
        raise VitsegError(f"sigmas must be positive, finite numbers of pixels; got {tuple(sig)}.")
    if len(set(sig)) != len(sig):
        raise VitsegError(f"sigmas must not repeat a value; got {tuple(sig)}.")
    fams = list(families)
    for fam in fams:
        check_option(fam, ALL_FAMILIES, "families")
    fams = tuple(f for f in ALL_FAMILIES if f in fams)
    include_intensity = bool(include_intensity)
    sig = tuple(sorted(sig))
    if _layout(sig, fams, include_intensity)[1] == 0:
        raise VitsegError(
            "Classical features are empty: pass at least one sigma and one family, "
            "or include_intensity=True."
        )
    return sig, fams, include_intensity


def _tail_names(families):
    """Channel names of the per-image (not per-scale) families, in output order."""
    names = []
    if "membrane" in families:
        names += list(_MEMBRANE_KINDS)
    if "context" in families:
        names += [f"{kind}_{_fmt(s)}" for s in CONTEXT_SIGMAS for kind in _CONTEXT_KINDS]
    if "bilateral" in families:
        names += [f"bilateral_{_fmt(s)}" for s, _ in BILATERAL_SIGMAS]
    return names


def _layout(sigmas, families, include_intensity):
    """Per-scale channel kinds: list of (scale index, kinds) and the total channel count
    (intensity + scale blocks + the per-image families of :func:`_tail_names`)."""
    blocks = []
    for i in range(len(sigmas)):
        kinds = []
        for fam in families:
            if fam in _TAIL_FAMILIES or (fam == "dog" and i == 0):
                continue
            kinds.extend(_FAMILY_KINDS[fam])
        blocks.append((i, tuple(kinds)))
    n = int(include_intensity) + sum(len(k) for _, k in blocks) + len(_tail_names(families))
    return blocks, n


def _names(sigmas, families, include_intensity):
    blocks, _ = _layout(sigmas, families, include_intensity)
    names = ["intensity"] if include_intensity else []
    for i, kinds in blocks:
        for kind in kinds:
            if kind == "dog":
                names.append(f"dog_{_fmt(sigmas[i - 1])}-{_fmt(sigmas[i])}")
            else:
                names.append(f"{kind}_{_fmt(sigmas[i])}")
    return names + _tail_names(families)


def classical_feature_names(
    sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 16.0),
    families: Sequence[str] = CLASSICAL_FAMILIES,
    include_intensity: bool = True,
) -> list[str]:
    """Names of the channels :func:`classical_features` returns, in channel order.

    Parameters
    ----------
    sigmas : sequence of float
        Gaussian scales in pixels (positive, distinct; sorted ascending here).
    families : sequence of str
        Subset of ``ALL_FAMILIES`` = ``('gaussian', 'gradient', 'laplacian', 'hessian',
        'structure', 'dog', 'variance', 'membrane', 'context', 'bilateral')``; the output
        follows that canonical order whatever order is given.
    include_intensity : bool
        Whether the raw intensity is the first channel.

    Returns
    -------
    list of str
        E.g. ``'intensity'``, ``'gaussian_s4'``, ``'hessian_max_s2'``, ``'structure_min_s8'``,
        ``'dog_s2-s4'``, ``'stddev_s4'``; then ``'membrane_max'``, ``'membrane_min'``,
        ``'membrane_mean'``, ``'membrane_std'`` and ``'context_mean_s32'``,
        ``'context_diff_s32'``, ``'context_std_s32'`` (and ``_s64``) and ``'bilateral_s2'``,
        ``'bilateral_s4'``, ``'bilateral_s8'``, which do not depend on ``sigmas``. Scales are written with ``'{:g}'`` (``1.5`` -> ``'s1.5'``).

    Raises
    ------
    VitsegError
        Non-positive or repeated sigmas, unknown families, or an empty feature set.

    Examples
    --------
    >>> classical_feature_names((1, 2), ("gaussian", "dog"))
    ['intensity', 'gaussian_s1', 'gaussian_s2', 'dog_s1-s2']
    >>> len(classical_feature_names((1, 2, 4, 8, 16), CLASSICAL_FAMILIES))
    40
    >>> classical_feature_names((1,), ("variance", "membrane"), include_intensity=False)
    ['stddev_s1', 'membrane_max', 'membrane_min', 'membrane_mean', 'membrane_std']
    """
    return _names(*_normalise_spec(sigmas, families, include_intensity))


def classical_halo(
    sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 16.0),
    families: Sequence[str] = CLASSICAL_FAMILIES,
    pyramid: bool = False,
) -> int:
    """Context (pixels) a tile needs so its features equal those of the whole plane.

    The support of the widest filter chain: the Gaussian radius ``int(4 s + 0.5)``, plus the
    central-difference step ``max(1, floor(s / 4))`` for the derivative families, plus the
    integration radius ``int(4 (s / 2) + 0.5)`` for ``'structure'``, maximised over ``sigmas``;
    at least :data:`MEMBRANE_RADIUS` (9) with ``'membrane'``. Pixels at least this far from a
    tile edge (that is not an image edge) are unaffected by the tile's mirrored border, up to
    float32 rounding (the image mean, subtracted before filtering, differs between tiles).

    ``'context'`` and ``'bilateral'`` are not covered: they are whole-plane families
    (``'context'`` at sigma 64 px would need a halo of 256 px; ``'bilateral'`` scales its
    range sigma by the plane's intensity percentiles); :func:`classical_features` computes
    them from the image it is given, and tiled callers take them from
    :func:`whole_plane_features` of the whole plane, as
    :class:`~napari_vitseg.features.stack.Featurizer` does for its row bands.

    With ``pyramid``, a reduced scale needs the support of its whole chain (the smoothing and
    2 x 2 block means of the levels below it, its own filters in reduced pixels, one reduced
    pixel for the interpolation and one for a partial block), and a tile must start on a row
    and column that are multiples of the largest :func:`pyramid_factor` of ``sigmas`` so that
    its blocks are the whole plane's.

    Parameters
    ----------
    sigmas, families, pyramid
        As for :func:`classical_features`.

    Returns
    -------
    int
        Halo in pixels (0 without sigmas or families).

    Examples
    --------
    >>> classical_halo((1, 2, 4, 8, 16))
    100
    >>> classical_halo((1, 2), ("gaussian", "dog"))
    8
    >>> classical_halo((1, 2), ("membrane", "context"))
    9
    """
    sig, fams, _ = _normalise_spec(sigmas, families, True)
    halo = MEMBRANE_RADIUS if "membrane" in fams else 0
    fams = tuple(f for f in fams if f not in _TAIL_FAMILIES)
    if not fams:
        return halo
    for s in sig:
        if pyramid and pyramid_factor(s) > 1:
            # reduced channels; dog / stddev stay at full resolution (the Gaussian's radius)
            r = _pyramid_halo(s, fams)
            if set(fams) & {"dog", "variance"}:
                r = max(r, int(_TRUNCATE * s + 0.5))
            halo = max(halo, r)
            continue
        r = int(_TRUNCATE * s + 0.5)
        if set(fams) & {"gradient", "laplacian", "hessian", "structure"}:
            r += _step(s)
        if "structure" in fams:
            r += int(_TRUNCATE * 0.5 * s + 0.5)
        halo = max(halo, r)
    return halo


# -- validation -------------------------------------------------------------------------------
def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    check_dtype(image, "image")
    if image.ndim != 2:
        hint = ""
        if image.ndim == 3:
            hint = (
                " For a multichannel image call this per channel (the pipeline does); for a "
                "stack call it per plane."
            )
        raise VitsegError(
            f"classical_features expects a single-channel 2D image (Y, X); got shape "
            f"{tuple(image.shape)}.{hint}"
        )
    if image.size == 0:
        raise VitsegError(f"image is empty (shape {tuple(image.shape)}); pass at least one pixel.")
    return np.ascontiguousarray(as_float32(image, "image"))


def _pixel_major(out) -> bool:
    """Whether ``out`` (Y, X, n) is C-contiguous or a channel slice ``big[..., c0:c1]`` of a
    C-contiguous (Y, X, N) array: channels adjacent, pixels at a fixed step (rows of pixels)."""
    if out.flags.c_contiguous:
        return True
    sy, sx, sc = out.strides
    return sc == out.itemsize and sx >= out.shape[2] * sc and sy == sx * out.shape[1]


def _check_out(out, shape):
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.float32
        or tuple(out.shape) != tuple(shape)
        or not _pixel_major(out)
        or not out.flags.writeable
    ):
        got = f"{type(out).__name__} {getattr(out, 'dtype', '')} {tuple(getattr(out, 'shape', ()))}"
        raise VitsegError(
            f"out must be a writeable float32 numpy array of shape {tuple(shape)}, C-contiguous or a channel "
            f"slice of one; got {got}. Allocate it with numpy.empty({tuple(shape)}, numpy.float32) or pass None."
        )
    return out


def _pixel_rows(out) -> np.ndarray:
    """(Y * X, n) view of a pixel-major (Y, X, n) ``out`` (see :func:`_pixel_major`); never a copy."""
    Y, X, n = out.shape
    return np.lib.stride_tricks.as_strided(out, (Y * X, n), (out.strides[1], out.strides[2]), writeable=True)


def _default_workers(workers, n_tasks):
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            workers = os.cpu_count() or 1
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise VitsegError(f"workers must be a positive int or None (all cores); got {workers!r}.")
    return max(1, min(int(workers), n_tasks))


# -- CPU backend ------------------------------------------------------------------------------
def _hypot(x, y, dst, scratch):
    """dst = sqrt(x**2 + y**2) (float32 planes; ``scratch`` is overwritten, may be ``y``).

    Not ``cv2.magnitude``: its result depends on the buffers' memory alignment (last-bit
    differences between runs), while these element-wise IEEE operations are reproducible.
    """
    cv2.multiply(x, x, dst)
    cv2.multiply(y, y, scratch)
    cv2.add(dst, scratch, dst)
    cv2.sqrt(dst, dst)


def _eig2x2(a, b, c, dst_max, dst_min, tmp):
    """Eigenvalues of [[a, b], [b, c]] (float32 planes), largest into dst_max, smallest dst_min.

    ``a``, ``b`` and ``c`` are overwritten.
    """
    # mean = (a + c) / 2, radius = sqrt(((a - c) / 2)^2 + b^2)
    cv2.addWeighted(a, 0.5, c, -0.5, 0.0, tmp)  # (a - c) / 2
    cv2.addWeighted(a, 0.5, c, 0.5, 0.0, a)  # mean, in place
    _hypot(tmp, b, c, b)  # radius, in place of c
    cv2.add(a, c, dst_max)
    cv2.subtract(a, c, dst_min)


#: Pixels per row stripe of the element-wise stage (256 KiB per float32 plane), so that a
#: stripe's working set (about 15 planes) stays in the CPU caches.
_STRIPE_PIXELS = 1 << 16


class _Workspace:
    """Scratch memory of one worker thread, reused from scale to scale.

    Five full planes (first derivatives, structure-tensor entries), the padded Gaussian, and
    row-stripe buffers. Reusing them avoids fresh full-size temporaries at every scale, which
    the kernel would zero-fill on first touch (page faults were a fifth of the CPU time).
    """

    def __init__(self, shape, n_block):
        Y, X = shape
        self.shape = shape
        self.rows = max(1, min(Y, _STRIPE_PIXELS // max(X, 1)))
        self.full = np.empty((5, Y, X), np.float32)  # gx, gy, Jxx, Jxy, Jyy
        self.block = np.empty((n_block, self.rows, X), np.float32)  # one stripe of channels
        self.t = np.empty((4, self.rows, X), np.float32)  # stripe temporaries
        self._pad = np.empty(0, np.float32)

    def padded(self, G, h):
        """G with a mirrored border of h pixels, in a reused buffer."""
        Y, X = self.shape
        if h >= min(Y, X):  # image smaller than the step: repeated reflection
            return np.ascontiguousarray(G[np.ix_(_reflect101_index(Y, h), _reflect101_index(X, h))])
        size = (Y + 2 * h) * (X + 2 * h)
        if self._pad.size < size:
            self._pad = np.empty(size, np.float32)
        P = self._pad[:size].reshape(Y + 2 * h, X + 2 * h)
        cv2.copyMakeBorder(G, h, h, h, h, _BORDER, P)
        return P


def _cpu_block(G, G_prev, sigma, kinds, dst, offset, ws, intensity=None, G2=None):
    """All channels of one scale from its Gaussian ``G``; writes them interleaved into ``dst``.

    dst : (Y * X, k) float32 view of the output (rows = pixels), k = len(kinds) (+ 1 with
    ``intensity``, which then goes first).

    First derivatives and the structure tensor (whose integration blur needs whole planes) are
    computed on full planes; everything else runs in row stripes that stay in cache, each
    stripe's channels interleaved into ``dst`` with one transpose. ``G2`` is the Gaussian of
    the squared (centred) image, for ``stddev``.
    """
    Y, X = G.shape
    first = 0 if intensity is None else 1
    nb = first + len(kinds)
    j = {k: first + n for n, k in enumerate(kinds)}
    structure = "structure_max" in j
    need_grad = "gradient" in j or structure
    need_hess = "laplacian" in j or "hessian_max" in j
    h = _step(sigma)
    # G padded by h (mirror); shifted views of it give the difference stencils.
    P = ws.padded(G, h) if need_grad or need_hess else None
    lo_c, mid_c, hi_c = slice(0, X), slice(h, h + X), slice(2 * h, 2 * h + X)
    gx, gy, Jxx, Jxy, Jyy = ws.full
    if need_grad:
        a1 = sigma / (2.0 * h)
        cv2.addWeighted(P[h : h + Y, hi_c], a1, P[h : h + Y, lo_c], -a1, 0.0, gx)
        cv2.addWeighted(P[2 * h : 2 * h + Y, mid_c], a1, P[0:Y, mid_c], -a1, 0.0, gy)
    if structure:
        # J = G_{s/2} * (grad grad^T), derivatives already scale-normalised (times s).
        k = gaussian_kernel(0.5 * sigma)
        cv2.multiply(gx, gx, Jxx)
        cv2.multiply(gx, gy, Jxy)
        cv2.multiply(gy, gy, Jyy)
        for J in (Jxx, Jxy, Jyy):
            cv2.sepFilter2D(J, -1, k, k, J, borderType=_BORDER)
    a2 = (sigma / h) ** 2
    a3 = 0.25 * a2
    for a in range(0, Y, ws.rows):
        b = min(Y, a + ws.rows)
        n = b - a
        B = ws.block[:nb, :n]
        t1, t2, t3, t4 = (t[:n] for t in ws.t)
        if intensity is not None:
            np.copyto(B[0], intensity[a:b])
        if "gaussian" in j:
            np.add(G[a:b], np.float32(offset), out=B[j["gaussian"]])  # cv2 >= 5 reads a 1x1 array + scalar as two scalars
        if "gradient" in j:
            _hypot(gx[a:b], gy[a:b], B[j["gradient"]], t1)
        if need_hess:
            mid_r, lo_r, hi_r = slice(a + h, b + h), slice(a, b), slice(a + 2 * h, b + 2 * h)
            cv2.addWeighted(P[mid_r, hi_c], a2, P[mid_r, lo_c], a2, 0.0, t1)
            cv2.scaleAdd(G[a:b], -2.0 * a2, t1, t1)  # hxx
            cv2.addWeighted(P[hi_r, mid_c], a2, P[lo_r, mid_c], a2, 0.0, t2)
            cv2.scaleAdd(G[a:b], -2.0 * a2, t2, t2)  # hyy
            if "laplacian" in j:
                cv2.add(t1, t2, B[j["laplacian"]])
            if "hessian_max" in j:
                cv2.addWeighted(P[hi_r, hi_c], a3, P[hi_r, lo_c], -a3, 0.0, t3)
                cv2.addWeighted(P[lo_r, lo_c], a3, P[lo_r, hi_c], -a3, 0.0, t4)
                cv2.add(t3, t4, t3)  # hxy
                _eig2x2(t1, t3, t2, B[j["hessian_max"]], B[j["hessian_min"]], t4)
        if structure:
            _eig2x2(Jxx[a:b], Jxy[a:b], Jyy[a:b], B[j["structure_max"]], B[j["structure_min"]], t1)
        if "dog" in j:
            cv2.subtract(G[a:b], G_prev[a:b], B[j["dog"]])
        if "stddev" in j:  # sqrt(G(c^2) - G(c)^2), clipped at 0 against rounding
            cv2.multiply(G[a:b], G[a:b], t1)
            cv2.subtract(G2[a:b], t1, t1)
            np.maximum(t1, np.float32(0), out=t1)
            cv2.sqrt(t1, B[j["stddev"]])
        cv2.transpose(B.reshape(nb, n * X), dst[a * X : b * X])


def _centre(img):
    """Mean (float) and the image minus its mean.

    All features except ``gaussian`` are invariant to an intensity offset; filtering the
    centred image keeps the float32 rounding error of the Gaussians proportional to the
    image's contrast rather than its mean, which matters for the scale-normalised second
    derivatives at large scales (differences of nearly equal numbers times ``s**2``).
    """
    offset = float(np.mean(img, dtype=np.float64))
    return offset, np.subtract(img, np.float32(offset))  # not cv2: OpenCV 5 takes a 1x1 image for a scalar


def _gaussian(img, sigma):
    k = gaussian_kernel(sigma)
    return cv2.sepFilter2D(img, -1, k, k, borderType=_BORDER)


# -- per-image families: membrane projections and context ----------------------------------
def _membrane_taps(radius: int = MEMBRANE_RADIUS, n: int = MEMBRANE_ORIENTATIONS) -> np.ndarray:
    """Pixel offsets (dy, dx) of the digital line kernels, shape (n, 2 radius + 1, 2).

    Orientation ``k`` is at ``pi k / n``; a line closer to horizontal has one tap per column
    (``dx = t``, ``dy = round(t tan)``), otherwise one per row, for ``t = -radius..radius``.
    """
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    out = np.empty((n, t.size, 2), np.int64)
    for k in range(n):
        th = math.pi * k / n
        c, s = math.cos(th), math.sin(th)
        if abs(c) >= abs(s):
            dx, dy = t, t * (s / c)
        else:
            dy, dx = t, t * (c / s)
        out[k, :, 0] = np.sign(dy) * np.floor(np.abs(dy) + 0.5)  # round half away from 0
        out[k, :, 1] = np.sign(dx) * np.floor(np.abs(dx) + 0.5)
    return out


def _padded(a, r):
    """``a`` (Y, X) with a reflect-101 border of ``r`` pixels on every side (any r)."""
    Y, X = a.shape
    if r < min(Y, X):
        return cv2.copyMakeBorder(a, r, r, r, r, _BORDER)
    return np.ascontiguousarray(a[np.ix_(_reflect101_index(Y, r), _reflect101_index(X, r))])


def _cpu_membrane(centred, offset, dst):
    """Membrane projections of ``centred`` into ``dst`` ((Y * X, 4) float32 view), in row
    stripes: for every orientation the mean along the line, then its max, min, mean and
    (population) standard deviation over the orientations."""
    Y, X = centred.shape
    r = MEMBRANE_RADIUS
    taps = _membrane_taps()
    n_or, L = taps.shape[:2]
    P = _padded(centred, r)
    rows = max(1, min(Y, _STRIPE_PIXELS // max(X, 1)))
    buf = np.empty((10, rows, X), np.float32)
    inv_l, inv_nl = np.float32(1.0 / L), np.float32(1.0 / (n_or * L))
    off = np.float32(offset)
    for a in range(0, Y, rows):
        b = min(Y, a + rows)
        mx, mn, s1, s2, acc, tmp = buf[:6, : b - a]
        B = buf[6:10, : b - a]
        for o in range(n_or):
            dy, dx = taps[o, 0]
            np.copyto(acc, P[a + r + dy : b + r + dy, r + dx : r + dx + X])
            for dy, dx in taps[o, 1:]:
                cv2.add(acc, P[a + r + dy : b + r + dy, r + dx : r + dx + X], acc)
            if o == 0:
                np.copyto(mx, acc)
                np.copyto(mn, acc)
                np.copyto(s1, acc)
                cv2.multiply(acc, acc, s2)
            else:
                cv2.max(mx, acc, mx)
                cv2.min(mn, acc, mn)
                cv2.add(s1, acc, s1)
                cv2.multiply(acc, acc, tmp)
                cv2.add(s2, tmp, s2)
        np.multiply(mx, inv_l, out=B[0])
        np.add(B[0], off, out=B[0])
        np.multiply(mn, inv_l, out=B[1])
        np.add(B[1], off, out=B[1])
        np.multiply(s1, inv_nl, out=tmp)  # mean over orientations (centred)
        np.add(tmp, off, out=B[2])
        cv2.multiply(tmp, tmp, tmp)
        np.multiply(s2, np.float32(inv_nl * inv_l), out=B[3])  # E[line mean ** 2]
        cv2.subtract(B[3], tmp, B[3])
        np.maximum(B[3], np.float32(0), out=B[3])
        cv2.sqrt(B[3], B[3])
        cv2.transpose(B.reshape(4, (b - a) * X), dst[a * X : b * X])


def _context_factor(sigma: float) -> int:
    """Downsampling factor of the context scale ``sigma``: 4 at 32 px, 8 at 64 px."""
    return max(1, int(sigma // 8))


def _block_down(a, f):
    """Means of ``f`` x ``f`` blocks of ``a`` (Y, X), the plane mirrored (reflect-101) at its
    bottom and right edges to a multiple of ``f``; shape (ceil(Y / f), ceil(X / f))."""
    if f == 1:
        return np.ascontiguousarray(a)
    Y, X = a.shape
    ys, xs = -(-Y // f), -(-X // f)
    if ys * f > Y or xs * f > X:
        iy = _reflect101_index(Y, ys * f - Y)[ys * f - Y :]
        ix = _reflect101_index(X, xs * f - X)[xs * f - X :]
        a = a[np.ix_(iy, ix)]
    return cv2.resize(np.ascontiguousarray(a), (xs, ys), interpolation=cv2.INTER_AREA)  # exact block means


def _block_up(a, f, shape):
    """Inverse grid of :func:`_block_down`: bilinear interpolation at the full-resolution pixel
    centres (OpenCV's half-pixel convention puts block centres at ``f * i + (f - 1) / 2``)."""
    if f == 1:
        return a
    ys, xs = a.shape[:2]
    up = cv2.resize(a, (xs * f, ys * f), interpolation=cv2.INTER_LINEAR)[: shape[0], : shape[1]]
    return up.reshape(up.shape[:2] + a.shape[2:])  # OpenCV drops a last axis of length 1


def _context_into(img, dst):
    """The ``'context'`` channels of ``img`` (float32 (Y, X)) into ``dst`` ((Y, X, 6) view)."""
    offset, centred = _centre(img)
    sq = None
    for k, s in enumerate(CONTEXT_SIGMAS):
        f = _context_factor(s)

        def down(a, f=f):
            return _block_down(a, f)

        def up(a, f=f):
            return _block_up(a, f, img.shape)

        if sq is None:
            sq = np.multiply(centred, centred)
        # block averaging adds a variance of (f^2 - 1) / 12 px^2: the small-plane Gaussian
        # makes up the rest, so the total smoothing is sigma (in full-resolution pixels)
        ss = math.sqrt(max(s * s - (f * f - 1) / 12.0, 0.25)) / f
        gm = _gaussian(down(centred), ss)
        g2 = _gaussian(down(sq), ss)
        var = np.subtract(g2, np.multiply(gm, gm))
        np.maximum(var, np.float32(0), out=var)
        mean = up(gm)
        c = 3 * k
        np.add(mean, np.float32(offset), out=dst[:, :, c])
        np.subtract(centred, mean, out=dst[:, :, c + 1])
        dst[:, :, c + 2] = up(np.sqrt(var))


def _bilateral_into(img, dst):
    """The ``'bilateral'`` channels of ``img`` (float32 (Y, X)) into ``dst`` ((Y, X, k) view).

    (Not reduced by the pyramid: filtering the 4-px one on the half plane cost sandstone_xrm
    0.015 mIoU in ``benchmarks/bench_quality.py``.)"""
    lo, hi = (float(v) for v in np.percentile(img, (0.5, 99.5)))
    span = hi - lo if hi > lo else 1.0
    # to [0, 1] by the plane's robust range (so that the range sigma is relative to it), back after
    scaled = np.clip((img - np.float32(lo)) * np.float32(1.0 / span), 0.0, 1.0).astype(np.float32)
    half = None
    planes = []
    for ss, sr in BILATERAL_SIGMAS:
        if ss >= BILATERAL_DOWNSAMPLE_FROM:
            half = _block_down(scaled, 2) if half is None else half
            planes.append(_block_up(cv2.bilateralFilter(half, -1, sr, ss / 2, borderType=_BORDER), 2, img.shape))
        else:
            planes.append(cv2.bilateralFilter(scaled, -1, sr, ss, borderType=_BORDER))
    # back to intensity units on one contiguous (Y, X, k) array, then one strided copy into dst
    res = np.stack(planes, axis=-1)
    np.multiply(res, np.float32(span), out=res)
    np.add(res, np.float32(lo), out=res)
    dst[...] = res


def whole_plane_features(image, families) -> np.ndarray:
    """The channels of the whole-plane families (``'context'``, ``'bilateral'``) of ``families``.

    These families depend on the whole plane (``'context'``: up to ~256 px away, on a block
    grid anchored at the plane's corner; ``'bilateral'``: its range sigma is a fraction of the
    plane's 0.5-99.5 percentile range), so they have no halo: callers that work in row bands
    or tiles compute them once on the whole plane and slice them
    (:class:`~napari_vitseg.features.stack.Featurizer` does). They run on the CPU for both
    backends.

    Parameters
    ----------
    image : (Y, X) array_like of bool, int or float
        One channel of one whole plane.
    families : sequence of str
        Any families; those other than ``'context'`` and ``'bilateral'`` are ignored.

    Returns
    -------
    (Y, X, k) ndarray of float32
        The last ``k`` channels of :func:`classical_features` with these families, in that
        order (``k = 0`` without whole-plane families).

    Raises
    ------
    VitsegError
        As :func:`classical_features` for a bad image or an unknown family.
    """
    _, fams, _ = _normalise_spec((), families, True)
    img = _check_image(image)
    fams = tuple(f for f in fams if f in WHOLE_PLANE_FAMILIES)
    out = np.empty(img.shape + (len(_tail_names(fams)),), np.float32)
    c = 0
    if "context" in fams:
        _context_into(img, out[:, :, : 3 * len(CONTEXT_SIGMAS)])
        c = 3 * len(CONTEXT_SIGMAS)
    if "bilateral" in fams:
        _bilateral_into(img, out[:, :, c:])
    return out


def context_features(image) -> np.ndarray:
    """The ``'context'`` family of a whole plane: large-scale neighbourhood statistics.

    For every scale ``s`` in :data:`CONTEXT_SIGMAS` (32 and 64 px): the image is
    block-averaged by ``f = s // 8`` (4, 8; the plane is mirrored to a multiple of ``f``),
    smoothed there by a Gaussian of ``sqrt(s**2 - (f**2 - 1) / 12) / f`` small-plane pixels
    (so the total smoothing is ``s`` full-resolution pixels), and brought back with bilinear
    interpolation (pixel centres aligned). Channels per scale: ``context_mean`` (the local
    mean ``G_s``), ``context_diff`` (intensity minus ``G_s``: brightness relative to the
    neighbourhood) and ``context_std`` (``sqrt(G_s(I**2) - G_s(I)**2)``, local contrast).
    The downsampled Gaussians cost about 1/f**2 of full-resolution ones, so the family is
    cheap; it runs on the CPU for both backends (the small planes are too small for a GPU
    to help).

    Parameters
    ----------
    image : (Y, X) array_like of bool, int or float
        One channel of one whole plane.

    Returns
    -------
    (Y, X, 6) ndarray of float32
        Channels named ``context_{mean,diff,std}_s32`` then ``_s64``, as the last channels
        of :func:`classical_features` with ``'context'``.

    Raises
    ------
    VitsegError
        As :func:`classical_features` for a bad image.

    Notes
    -----
    Values near a pixel depend on the whole plane (up to ~256 px away, and on the block grid,
    anchored at the plane's top-left pixel), so the family has no halo: callers that work in
    tiles or row bands compute it once on the whole plane and slice it
    (:class:`~napari_vitseg.features.stack.Featurizer` does, so its row bands equal the
    whole-plane features exactly).

    Examples
    --------
    >>> import numpy as np
    >>> context_features(np.ones((40, 50), np.uint8)).shape
    (40, 50, 6)
    """
    img = _check_image(image)
    out = np.empty(img.shape + (3 * len(CONTEXT_SIGMAS),), np.float32)
    _context_into(img, out)
    return out


#: Kinds of a scale block that a pyramid never reduces (their channels end each block).
_FULL_RESOLUTION_KINDS = ("dog", "stddev")


def _split_pyramid(blocks, sigmas, pyramid):
    """Per scale: (reduction factor, reduced kinds, full-resolution kinds) (see ``pyramid``)."""
    split = {}
    for i, kinds in blocks:
        f = pyramid_factor(sigmas[i]) if pyramid else 1
        low = tuple(k for k in kinds if k not in _FULL_RESOLUTION_KINDS) if f > 1 else ()
        split[i] = (f, low, kinds[len(low):])
    return split


def _octaves(centred, levels):
    """Pyramid levels ``0 .. levels`` of the centred image: each smoothed to
    :data:`_OCTAVE_SIGMA` own pixels and block-averaged by 2 into the next (a Gaussian
    pyramid, Burt & Adelson 1983, with SIFT's octave rule of Lowe 2004)."""
    out = [centred]
    for pre in _octave_chain(levels):
        out.append(_block_down(_gaussian(out[-1], pre), 2))
    return out


def _cpu_reduced_block(octaves, sigma, f, kinds, offset, shape, dst):
    """The ``kinds`` of scale ``sigma`` computed on pyramid level ``log2 f`` (in its own pixels,
    ``sigma / f``) and interpolated back to ``shape``; written into ``dst`` ((Y, X, k) view)."""
    G = _gaussian(octaves[f.bit_length() - 1], _level_sigma(sigma, f))
    y, x = G.shape
    low = np.empty((y * x, len(kinds)), np.float32)
    _cpu_block(G, None, sigma / f, kinds, low, offset, _Workspace((y, x), len(kinds)))
    dst[...] = _block_up(low.reshape(y, x, len(kinds)), f, shape)


def _cpu_features(img, sigmas, families, include_intensity, out, workers, pyramid=False):
    Y, X = img.shape
    blocks, n = _layout(sigmas, families, include_intensity)
    out2d = _pixel_rows(out)
    split = _split_pyramid(blocks, sigmas, pyramid)
    offsets, reduced, c = {}, {}, int(include_intensity)
    for i, kinds in blocks:
        f, low, full = split[i]
        if low:
            reduced[i] = (f, low, c)
        offsets[i] = c + len(low)
        c += len(kinds)
    blocks = [(i, split[i][2]) for i, _ in blocks]  # the full-resolution part of every block
    tails = []  # (task, first channel)
    if "membrane" in families:
        tails.append(("membrane", c))
        c += len(_MEMBRANE_KINDS)
    if "context" in families:
        tails.append(("context", c))
        c += 3 * len(CONTEXT_SIGMAS)
    if "bilateral" in families:
        tails.append(("bilateral", c))
    needs_prev = {i: "dog" in kinds for i, kinds in blocks}
    # Scales whose Gaussian is needed: their own channels, or the next scale's DoG.
    need_gauss = {i for i, kinds in blocks if kinds} | {i - 1 for i in needs_prev if needs_prev[i]}
    blocks = [(i, kinds) for i, kinds in blocks if kinds]
    # block 0 carries the intensity channel, which precedes it, when it is all at full resolution
    first_block = 0 if blocks and blocks[0][0] == 0 and not split[0][1] else None
    if include_intensity and first_block is None:
        np.copyto(out2d[:, 0], img.reshape(-1))
    if not blocks and not tails and not reduced:  # intensity only
        return out
    offset, centred = _centre(img)
    kinds_of = dict(blocks)
    workers = _default_workers(workers, len(blocks) + len(tails) + len(reduced))
    n_block = max((len(k) for _, k in blocks), default=0) + int(include_intensity)
    spaces = queue.SimpleQueue()
    for _ in range(workers):
        spaces.put(None)  # allocated lazily by the first task that needs one
    gauss = {}
    squared = np.multiply(centred, centred) if any("stddev" in k for _, k in blocks) else None

    def block(i):
        ws = spaces.get()
        try:
            if ws is None:
                ws = _Workspace((Y, X), n_block)
            kinds = kinds_of[i]
            c0, c1 = offsets[i], offsets[i] + len(kinds)
            intensity = None
            if include_intensity and i == first_block:
                intensity, c0 = img, 0
            prev = gauss[i - 1] if needs_prev[i] else None
            G2 = _gaussian(squared, sigmas[i]) if "stddev" in kinds else None
            _cpu_block(gauss[i], prev, sigmas[i], kinds, out2d[:, c0:c1], offset, ws, intensity, G2)
        finally:
            spaces.put(ws)

    def tail(what, c0):
        if what == "membrane":
            _cpu_membrane(centred, offset, out2d[:, c0 : c0 + len(_MEMBRANE_KINDS)])
        elif what == "context":
            _context_into(img, out[:, :, c0 : c0 + 3 * len(CONTEXT_SIGMAS)])
        else:
            _bilateral_into(img, out[:, :, c0 : c0 + len(BILATERAL_SIGMAS)])

    octaves = {}

    def build_octaves():
        levels = max(f for f, _, _ in reduced.values()).bit_length() - 1
        octaves.update(enumerate(_octaves(centred, levels)))

    def reduced_block(i):
        f, kinds, c0 = reduced[i]
        _cpu_reduced_block(octaves, sigmas[i], f, kinds, offset, (Y, X), out[:, :, c0 : c0 + len(kinds)])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = {}
        if reduced:
            pending[pool.submit(build_octaves)] = ("pyramid", None)
        for what, c0 in tails:
            pending[pool.submit(tail, what, c0)] = ("tail", what)
        # The largest (slowest) scales first, so that the threads stay balanced.
        for i in sorted(need_gauss, key=lambda i: -sigmas[i]):
            pending[pool.submit(_gaussian, centred, sigmas[i])] = ("gauss", i)
        submitted = set()
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    what, i = pending.pop(fut)
                    res = fut.result()
                    if what == "pyramid":  # the reduced blocks, largest scale first
                        for r in sorted(reduced, key=lambda r: -sigmas[r]):
                            pending[pool.submit(reduced_block, r)] = ("reduced", r)
                    if what != "gauss":
                        continue
                    gauss[i] = res
                    # Submit every block whose Gaussians are now all available.
                    for b in (i, i + 1):
                        if b in kinds_of and b not in submitted and b in gauss:
                            if needs_prev[b] and b - 1 not in gauss:
                                continue
                            submitted.add(b)
                            pending[pool.submit(block, b)] = ("block", b)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return out


# -- torch backend ----------------------------------------------------------------------------
def _reflect101_index(n: int, radius: int) -> np.ndarray:
    """Indices of a length-``n`` axis padded by ``radius`` with mirror (reflect-101) borders.

    Works for any radius (repeated reflection, like OpenCV's ``borderInterpolate``).
    """
    i = np.arange(-radius, n + radius)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


class _TorchOps:
    """Separable filters on (C, Y, X) tensors with reflect-101 borders (one device)."""

    def __init__(self, torch, device, shape):
        self.torch = torch
        self.F = torch.nn.functional
        self.device = device
        self.shape = shape
        self._idx = {}

    def index(self, axis, radius):
        key = (axis, radius)
        if key not in self._idx:
            idx = _reflect101_index(self.shape[axis], radius)
            self._idx[key] = self.torch.as_tensor(idx, device=self.device)
        return self._idx[key]

    def pad(self, t, axis, radius):
        # t: (C, Y, X); axis 0 = rows (Y), 1 = columns (X)
        return t.index_select(axis + 1, self.index(axis, radius))

    def blur(self, t, sigma):
        """Separable Gaussian blur of every channel of t (C, Y, X): columns (x) then rows (y)."""
        k = self.torch.as_tensor(gaussian_kernel(sigma), device=self.device)
        r = (k.numel() - 1) // 2
        C = t.shape[0]
        t = self.pad(t, 1, r)[None]
        t = self.F.conv2d(t, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)[0]
        t = self.pad(t, 0, r)[None]
        t = self.F.conv2d(t, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)[0]
        return t

    def derivatives(self, G, sigma):
        """Scale-normalised (gx, gy, hxx, hyy, hxy) of G (C, Y, X) by central differences."""
        h = _step(sigma)
        Y, X = self.shape
        P = self.pad(self.pad(G, 0, h), 1, h)
        rows, cols = slice(h, h + Y), slice(h, h + X)
        lo_r, hi_r, lo_c, hi_c = (
            slice(0, Y),
            slice(2 * h, 2 * h + Y),
            slice(0, X),
            slice(2 * h, 2 * h + X),
        )
        a1, a2 = sigma / (2.0 * h), (sigma / h) ** 2
        gx = (P[:, rows, hi_c] - P[:, rows, lo_c]) * a1
        gy = (P[:, hi_r, cols] - P[:, lo_r, cols]) * a1
        hxx = (P[:, rows, hi_c] + P[:, rows, lo_c] - 2.0 * G) * a2
        hyy = (P[:, hi_r, cols] + P[:, lo_r, cols] - 2.0 * G) * a2
        hxy = (P[:, hi_r, hi_c] - P[:, hi_r, lo_c] + P[:, lo_r, lo_c] - P[:, lo_r, hi_c]) * (
            0.25 * a2
        )
        return gx, gy, hxx, hyy, hxy

    def eig2x2(self, a, b, c):
        half = 0.5 * (a - c)
        mean = 0.5 * (a + c)
        rad = self.torch.sqrt(half * half + b * b)
        return mean + rad, mean - rad


_TORCH_LOCK = threading.Lock()


@contextmanager
def _ieee_fp32_convolutions(torch):
    """Make cuDNN convolutions use full float32, not TF32 (on by default for convolutions).

    TF32 keeps 10 mantissa bits: ~1e-3 relative error in the Gaussians, which the
    ``s**2``-scaled second differences would amplify far beyond the CPU backend's precision.
    The flag is global; the caller holds ``_TORCH_LOCK`` so concurrent calls cannot restore
    it under each other.
    """
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9 API
        old = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = old
    else:  # pragma: no cover - older torch
        old = cudnn.allow_tf32
        cudnn.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32 = old


def _resolve_torch_device(torch, device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise VitsegError(
            f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:0'; got {device!r}."
        ) from err


def _torch_scale(ops, G, s, kinds, offset, G_prev=None, x=None):
    """Channels ``kinds`` of scale ``s`` (in ``ops``' pixels) from its Gaussian ``G`` (1, Y, X):
    {kind: (Y, X) tensor}. ``G_prev`` (previous scale) for ``'dog'``, ``x`` (the centred image)
    for ``'stddev'``."""
    torch = ops.torch
    feats = {}
    if "gaussian" in kinds:
        feats["gaussian"] = G[0] + offset
    if set(kinds) & {"gradient", "laplacian", "hessian_max", "structure_max"}:
        gx, gy, hxx, hyy, hxy = ops.derivatives(G, s)
    if "gradient" in kinds:
        feats["gradient"] = torch.sqrt(gx * gx + gy * gy)[0]
    if "laplacian" in kinds:
        feats["laplacian"] = (hxx + hyy)[0]
    if "hessian_max" in kinds:
        lmax, lmin = ops.eig2x2(hxx, hxy, hyy)
        feats["hessian_max"], feats["hessian_min"] = lmax[0], lmin[0]
    if "structure_max" in kinds:
        J = torch.cat([gx * gx, gx * gy, gy * gy])
        J = ops.blur(J, 0.5 * s)
        lmax, lmin = ops.eig2x2(J[0], J[1], J[2])
        feats["structure_max"], feats["structure_min"] = lmax, lmin
    if "dog" in kinds:
        feats["dog"] = (G - G_prev)[0]
    if "stddev" in kinds:
        feats["stddev"] = torch.sqrt(torch.clamp(ops.blur(x * x, s) - G * G, min=0.0))[0]
    return feats


def _torch_octaves(ops, x, levels):
    """:func:`_octaves` on the torch backend: [(ops of the level, its image (1, y, x))]."""
    torch = ops.torch
    out = [(ops, x)]
    for pre in _octave_chain(levels):
        lops, t = out[-1]
        b = lops.blur(t, pre)
        y, xs = lops.shape
        if y % 2 or xs % 2:  # reflect-101 at the bottom / right to an even size, as _block_down
            b = b.index_select(1, torch.as_tensor(_reflect101_index(y, y % 2)[y % 2 :], device=lops.device))
            b = b.index_select(2, torch.as_tensor(_reflect101_index(xs, xs % 2)[xs % 2 :], device=lops.device))
        b = ops.F.avg_pool2d(b[None], 2)[0]
        out.append((_TorchOps(torch, lops.device, tuple(b.shape[1:])), b))
    return out


def _torch_features(img, sigmas, families, include_intensity, out, device, pyramid=False):
    import torch

    dev = _resolve_torch_device(torch, device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VitsegError(
            f"device={device!r} asks for CUDA but torch reports no CUDA device; "
            "pass device='cpu' or backend='cpu'."
        )
    Y, X = img.shape
    blocks, n = _layout(sigmas, families, include_intensity)
    if not families:
        blocks = []
    precision = _ieee_fp32_convolutions(torch) if dev.type == "cuda" else nullcontext()
    with _TORCH_LOCK, precision, torch.inference_mode():
        ops = _TorchOps(torch, dev, (Y, X))
        x = torch.from_numpy(img).to(dev)[None]  # (1, Y, X)
        res = torch.empty((Y, X, n), dtype=torch.float32, device=dev)  # the context channels stay unused
        c = 0
        if include_intensity:
            res[..., 0] = x[0]
            c = 1
        offset = float(np.mean(img, dtype=np.float64))
        x = x - offset  # see _centre
        split = _split_pyramid(blocks, sigmas, pyramid)
        levels = max((f for f, low, _ in split.values() if low), default=1).bit_length() - 1
        octaves = _torch_octaves(ops, x, levels) if levels else None
        G_prev = None
        for i, kinds in blocks:
            next_dog = i + 1 < len(blocks) and "dog" in blocks[i + 1][1]
            if not kinds and not next_dog:  # only per-image families
                continue
            s = sigmas[i]
            f, low, full = split[i]
            feats = {}
            if low:  # on the reduced level, interpolated back (see _cpu_reduced_block)
                lops, base = octaves[f.bit_length() - 1]
                lf = _torch_scale(lops, lops.blur(base, _level_sigma(s, f)), s / f, low, offset)
                stack = torch.stack([lf[k] for k in low])[None]
                up = ops.F.interpolate(stack, size=(lops.shape[0] * f, lops.shape[1] * f), mode="bilinear",
                                       align_corners=False)[0, :, :Y, :X]
                feats.update(zip(low, up, strict=True))
            G = ops.blur(x, s) if full or next_dog else None
            if full:
                feats.update(_torch_scale(ops, G, s, full, offset, G_prev, x))
            for kind in kinds:
                res[..., c] = feats[kind]
                c += 1
            G_prev = G
        if "membrane" in families:
            taps = _membrane_taps()
            n_or, L = taps.shape[:2]
            r = MEMBRANE_RADIUS
            k = np.zeros((n_or, 1, 2 * r + 1, 2 * r + 1), np.float32)
            for o in range(n_or):
                k[o, 0, taps[o, :, 0] + r, taps[o, :, 1] + r] = 1.0 / L
            P = ops.pad(ops.pad(x, 0, r), 1, r)[None]
            lines = ops.F.conv2d(P, torch.as_tensor(k, device=dev))[0]  # (n_or, Y, X) line means
            mean = lines.mean(dim=0)
            res[..., c] = lines.amax(dim=0) + offset
            res[..., c + 1] = lines.amin(dim=0) + offset
            res[..., c + 2] = mean + offset
            res[..., c + 3] = torch.sqrt(torch.clamp((lines * lines).mean(dim=0) - mean * mean, min=0.0))
            c += len(_MEMBRANE_KINDS)
        torch.from_numpy(out[..., :c]).copy_(res[..., :c])
    if set(families) & set(WHOLE_PLANE_FAMILIES):  # CPU for both backends (see whole_plane_features)
        out[:, :, c:] = whole_plane_features(img, families)
    return out


# -- public entry point -----------------------------------------------------------------------
def _resolve_backend(backend, device):
    check_option(backend, BACKENDS, "backend")
    if backend != "auto":
        return backend
    if device is not None:
        dev = str(device)
        return "torch" if dev.startswith("cuda") else "cpu"
    import torch

    return "torch" if torch.cuda.is_available() else "cpu"


def classical_features(
    image,
    *,
    sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 16.0),
    families: Sequence[str] = CLASSICAL_FAMILIES,
    include_intensity: bool = True,
    backend: str = "cpu",
    device=None,
    out: np.ndarray | None = None,
    workers: int | None = None,
    pyramid: bool = False,
) -> np.ndarray:
    """Classical multiscale filter features of a single-channel 2D image.

    Gaussian smoothing, scale-normalised gradient magnitude, Laplacian of Gaussian, Hessian
    and structure-tensor eigenvalues, and differences of Gaussians at every scale, as in
    Trainable Weka Segmentation and ilastik; the exact definitions, normalisation and channel
    order are in the module docstring (:mod:`napari_vitseg.features.classical`).

    Parameters
    ----------
    image : (Y, X) array_like of bool, int or float
        One channel, one plane. Converted to float32; intensities are not rescaled (features
        are in the image's units). Multichannel images: call once per channel.
    sigmas : sequence of float
        Gaussian scales in pixels (positive, distinct); used in ascending order.
    families : sequence of str
        Subset of ``('gaussian', 'gradient', 'laplacian', 'hessian', 'structure', 'dog')``
        (the default) and the opt-in ``('variance', 'membrane', 'context', 'bilateral')``.
        ``'context'`` and ``'bilateral'`` are computed from ``image`` as a whole: pass the
        whole plane, or see :func:`whole_plane_features` for tiles.
    include_intensity : bool
        Add the raw intensity as the first channel.
    backend : {'cpu', 'torch', 'auto'}
        ``'cpu'``: OpenCV, multithreaded. ``'torch'``: PyTorch on ``device`` (meant for CUDA;
        it also runs, slowly, on the CPU). ``'auto'``: ``'torch'`` when ``device`` is a CUDA
        device, or ``device`` is None and CUDA is available; ``'cpu'`` otherwise.
    device : str or torch.device, optional
        Torch device for ``backend='torch'`` / ``'auto'`` (default: CUDA if available, else
        CPU). Ignored by ``backend='cpu'``.
    out : (Y, X, F) ndarray of float32, optional
        Array to write the features into (returned): C-contiguous, or a channel slice
        ``big[:, :, c0:c0 + F]`` of a C-contiguous (Y, X, N) array (a caller assembling more
        channels writes these in place, without a copy).
    workers : int, optional
        Threads for ``backend='cpu'`` (default: all cores available to the process). OpenCV may
        additionally use its own thread pool inside each call.
    pyramid : bool
        Compute the large scales on a scale-space pyramid (the default of
        :class:`~napari_vitseg.features.config.FeatureConfig` version 5): a scale ``s`` of 8 px
        or more is computed on the image reduced by ``f = pyramid_factor(s)`` (2 at 8 px, 4 at
        16 px) and its channels are interpolated back bilinearly. The reduced levels are a
        Gaussian pyramid (Burt & Adelson, IEEE Trans. Commun. 1983): each level smoothed to 4
        of its pixels, then block-averaged by 2 (aliasing below 1e-8), as SIFT's octaves (Lowe,
        IJCV 2004); on level ``f`` the same kernels run at scale ``s / f``, so the channels are
        the same quantities (scale-normalised derivatives are unchanged by the reduction), up
        to the interpolation (about 0.1 % of a channel's range on average, a few % at most on
        real images, most at the sharpest structures of the scale). The Gaussians of 8 and 16
        px cost about 1/4 and 1/16, and their blocks as much less; ``'dog'`` and ``'variance'``
        stay at full resolution. ``False``: every scale at full resolution (versions 1-4).

    Returns
    -------
    features : (Y, X, F) ndarray of float32
        C-contiguous, channels last; ``F == len(classical_feature_names(sigmas, families,
        include_intensity))`` and channel ``i`` is named by that list's ``i``-th entry
        (40 channels with the defaults).

    Raises
    ------
    VitsegError
        If ``image`` is not 2D, is empty, complex or non-numeric, or holds NaN/inf; for bad
        ``sigmas``, ``families``, ``backend``, ``device``, ``workers`` or ``out``.

    Notes
    -----
    Both backends use the same kernels (sampled Gaussian truncated at 4 sigma, central
    differences) and the same mirror (reflect-101) border, and agree to float32 rounding:
    about 1e-6 of each channel's range for first-order channels, up to ~1e-4 for the
    scale-normalised second derivatives at the largest scales. Borders are mirrored, so
    results within :func:`classical_halo` pixels (100 for the defaults) of the edge differ
    from those of a larger image containing the same region; tiled callers need that halo.

    The CPU backend runs the Gaussians and then the per-scale blocks as tasks on ``workers``
    threads (largest scale first). Peak memory is the output plus about
    ``len(sigmas) + 1 + 6 * workers`` float32 planes (Y, X) of scratch; pass a reused ``out``
    to avoid the kernel zero-filling a fresh output at every call.

    References
    ----------
    .. [1] Arganda-Carreras, I. et al. (2017). Trainable Weka Segmentation: a machine learning
       tool for microscopy pixel classification. Bioinformatics 33(15), 2424-2426.
       :DOI:`10.1093/bioinformatics/btx180`
    .. [2] Berg, S. et al. (2019). ilastik: interactive machine learning for (bio)image
       analysis. Nature Methods 16, 1226-1232. :DOI:`10.1038/s41592-019-0582-9`
    .. [3] Lindeberg, T. (1998). Feature detection with automatic scale selection.
       International Journal of Computer Vision 30(2), 79-116.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((32, 32), np.uint8)
    >>> img[8:24, 8:24] = 255
    >>> feats = classical_features(img, sigmas=(1, 2))
    >>> feats.shape, feats.dtype
    ((32, 32, 16), dtype('float32'))
    >>> classical_feature_names((1, 2))[:4]
    ['intensity', 'gaussian_s1', 'gradient_s1', 'laplacian_s1']
    """
    sig, fams, include_intensity = _normalise_spec(sigmas, families, include_intensity)
    _default_workers(workers, 1)  # validates
    img = _check_image(image)
    backend = _resolve_backend(backend, device)
    _, n = _layout(sig, fams, include_intensity)
    out = _check_out(out, img.shape + (n,))
    if not isinstance(pyramid, (bool, np.bool_)):
        raise VitsegError(f"pyramid must be True or False; got {pyramid!r}.")
    if backend == "cpu":
        return _cpu_features(img, sig, fams, include_intensity, out, workers, bool(pyramid))
    return _torch_features(img, sig, fams, include_intensity, out, device, bool(pyramid))
