"""3D filters for (Z, Y, X) stacks: the fine scales of the classical families across planes.

With ``FeatureConfig(spatial='3d')`` the channels of the Gaussian-derivative families
(``gaussian``, ``gradient``, ``laplacian``, ``hessian``, ``structure``, ``dog``, ``variance``)
at scales up to :data:`Z_MAX_SIGMA` px are computed from the plane and its neighbours, as
ilastik computes its filters on volumes: Gaussians in z of ``sigma / z_anisotropy`` planes
(``z_anisotropy`` = z step / pixel size), the gradient, Hessian and structure tensor of the
volume (3 x 3; their largest and smallest eigenvalues keep the 2D channel names
``hessian_max`` / ``hessian_min``). Larger scales, the intensity and the per-plane families
(bilateral, membrane, context) stay per plane. Measured on the FIB-SEM stack
``flyem_medulla_fibsem`` (isotropic voxels): 3D fine scales raise the default's mIoU from 0.593
to 0.611; 3D at every scale only to 0.601, as the 8-16 px z-smoothing of a 16-plane stack blurs
what one plane shows (``docs/features.md``, "3D features for stacks").

Each plane's channels are computed on its own from the planes within :func:`z_radius` of it
(the stack's ends mirror, OpenCV's ``BORDER_REFLECT_101`` as in-plane): a z-pass sums the planes
with the sampled Gaussian (and its first and second derivative) of each scale, then
``cv2.sepFilter2D`` filters the sums in-plane; the structure tensor's integration Gaussian sums
the outer products of the gradients of the planes within its own z-radius.

References
----------
.. [1] Sommer, C., Straehle, C., Koethe, U. & Hamprecht, F. A. (2011). ilastik: Interactive
   learning and segmentation toolkit. ISBI, 230-233 (3D filters on volumes).
.. [2] Lindeberg, T. (1998). Feature detection with automatic scale selection. IJCV 30(2),
   79-116 (scale-normalised derivatives).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import cv2
import numpy as np

__all__ = ["AUTO_MAX_Z_ANISOTROPY", "FAMILIES_3D", "Z_MAX_SIGMA", "StackPlane", "columns_3d",
           "describe_spatial", "estimate_z_anisotropy", "resolve_spatial", "row_halo", "stack_of", "volume_channels", "z_radius"]

#: Channels of scales up to this (px) are computed in 3D; larger ones per plane.
Z_MAX_SIGMA = 2.0
#: Families whose fine-scale channels are computed in 3D.
FAMILIES_3D = ("gaussian", "gradient", "laplacian", "hessian", "structure", "dog", "variance")
_KIND_FAMILY = {"gaussian": "gaussian", "gradient": "gradient", "laplacian": "laplacian", "hessian": "hessian",
                "structure": "structure", "dog": "dog", "stddev": "variance"}
#: ``spatial='auto'`` takes a stack as a volume (3D filters) when its estimated z step is at most
#: this many pixels (:func:`estimate_z_anisotropy`). FIB-SEM stack ``flyem_medulla_fibsem``
#: (isotropic 10 nm voxels): estimated 1.24-1.26, 3D raises mIoU 0.593 -> 0.608; every second plane
#: (z step 2 px): estimated 2.45, 3D gains nothing (0.5654 2D, 0.5650 3D with the right step).
AUTO_MAX_Z_ANISOTROPY = 2.0
_TRUNCATE = 4.0
_BORDER = cv2.BORDER_REFLECT_101
_NAME = re.compile(r"^(gaussian|gradient|laplacian|hessian_max|hessian_min|structure_max|structure_min|stddev)"
                   r"_s(\d+(?:\.\d+)?)$|^dog_s(\d+(?:\.\d+)?)-s(\d+(?:\.\d+)?)$")


def _radius(sigma: float) -> int:
    return int(_TRUNCATE * float(sigma) + 0.5)


def _kernels(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampled Gaussian, first and second derivative (float32, correlation order): the first
    sums ``x k(x)`` to 1, the second is zero-mean and sums ``x**2 / 2 k(x)`` to 1, so a ramp
    and a parabola get their exact derivatives; radius 0 gives ``[1], [0], [0]``."""
    r = _radius(sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    if r == 0:
        return g.astype(np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32)
    d1 = x * g
    d1 /= (x * d1).sum()
    d2 = (x**2 / sigma**4 - 1.0 / sigma**2) * g
    d2 -= d2.mean()
    d2 /= (0.5 * x**2 * d2).sum()
    return g.astype(np.float32), d1.astype(np.float32), d2.astype(np.float32)


def _mirror(k: int, n: int) -> int:
    """Plane index ``k`` mirrored into ``[0, n)`` without repeating the edge (reflect-101)."""
    if n == 1:
        return 0
    period = 2 * n - 2
    k %= period
    return k if k < n else period - k


def z_radius(sigmas: Sequence[float], families: Sequence[str], z_anisotropy: float) -> int:
    """Planes on each side of a plane that its 3D channels read (0 when none is 3D).

    Parameters
    ----------
    sigmas : sequence of float
        The config's scales (px); those up to :data:`Z_MAX_SIGMA` are 3D.
    families : sequence of str
    z_anisotropy : float
        z step / pixel size (> 0).
    """
    fine = [s for s in sigmas if s <= Z_MAX_SIGMA]
    if not fine or not set(families) & set(FAMILIES_3D):
        return 0
    r = 0
    for s in fine:
        sz = s / z_anisotropy
        r = max(r, _radius(sz) + (_radius(0.5 * sz) if "structure" in families else 0))
    return r


def row_halo(sigmas: Sequence[float], families: Sequence[str]) -> int:
    """Rows on each side of a row band that its 3D channels need in-plane (the support of the
    largest 3D scale's derivative filters, plus the structure tensor's integration Gaussian)."""
    fine = [s for s in sigmas if s <= Z_MAX_SIGMA]
    if not fine:
        return 0
    return max(_radius(s) + (_radius(0.5 * s) if "structure" in families else 0) for s in fine)


def columns_3d(names: Sequence[str]) -> dict[int, str]:
    """The channels computed in 3D among a featurizer's channel names: ``{column: name}``
    (the name without a ``'ch{c}:'`` prefix) for the 3D families at scales <= :data:`Z_MAX_SIGMA`."""
    out = {}
    for i, name in enumerate(names):
        base = name.split(":")[-1]
        m = _NAME.match(base)
        if m is None:
            continue
        sigma = float(m.group(2) if m.group(2) is not None else m.group(4))
        if sigma <= Z_MAX_SIGMA:
            out[i] = base
    return out


def _eig_extremes(c: dict) -> tuple[np.ndarray, np.ndarray]:
    """Largest and smallest eigenvalue of the symmetric 3 x 3 field with components ``c``
    (``'xx'``, ``'yy'``, ``'zz'``, ``'xy'``, ``'xz'``, ``'yz'``), in closed form: the
    trigonometric solution of the characteristic cubic (Smith, CACM 4(4), 1961), in float64;
    25x faster than ``numpy.linalg.eigvalsh`` on a 1024 x 1024 field."""
    a, d, f = (np.asarray(c[k], np.float64) for k in ("xx", "yy", "zz"))
    b, cc, e = (np.asarray(c[k], np.float64) for k in ("xy", "xz", "yz"))
    q = (a + d + f) / 3.0
    a, d, f = a - q, d - q, f - q
    p2 = (a * a + d * d + f * f + 2.0 * (b * b + cc * cc + e * e)) / 6.0
    p = np.sqrt(p2)
    det = a * (d * f - e * e) - b * (b * f - e * cc) + cc * (b * e - d * cc)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(p > 0, det / (2.0 * p2 * p), 0.0)
    phi = np.arccos(np.clip(r, -1.0, 1.0)) / 3.0
    hi = q + 2.0 * p * np.cos(phi)
    lo = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    return hi.astype(np.float32), lo.astype(np.float32)


def volume_channels(plane_rows: Callable[[int], np.ndarray], n_planes: int, z: int, wanted: Sequence[str],
                    z_anisotropy: float = 1.0) -> dict[str, np.ndarray]:
    """3D channels of plane ``z`` of a stack (the rows that ``plane_rows`` gives).

    Parameters
    ----------
    plane_rows : callable
        ``plane_rows(k)`` -> (R, X) float32, the same rows of plane ``k`` (``0 <= k <
        n_planes``); in-plane filters mirror at the rows' ends, so give the caller's rows a
        halo of ``4 * sigma + 2 * sigma`` px.
    n_planes : int
        Planes in the stack (>= 1); the stack's ends mirror.
    z : int
        The plane.
    wanted : sequence of str
        Channel names (``'gaussian_s1'``, ``'hessian_max_s2'``, ``'dog_s1-s2'``,
        ``'stddev_s0.5'``) at scales <= :data:`Z_MAX_SIGMA` (:func:`columns_3d`).
    z_anisotropy : float
        z step / pixel size: the Gaussian in z has ``sigma / z_anisotropy`` planes.

    Returns
    -------
    dict of str to ndarray, (R, X) float32
        Scale-normalised as the 2D channels (first derivatives times sigma, second times
        sigma squared, in pixel units also along z).

    Raises
    ------
    ValueError
        A name that is not a 3D channel, or ``z`` outside the stack.
    """
    if not 0 <= z < n_planes:
        raise ValueError(f"plane {z} is outside a stack of {n_planes}")
    parsed = {}
    for name in wanted:
        m = _NAME.match(name)
        if m is None:
            raise ValueError(f"{name!r} is not a 3D channel")
        sig = (float(m.group(2)),) if m.group(2) is not None else (float(m.group(3)), float(m.group(4)))
        if max(sig) > Z_MAX_SIGMA:
            raise ValueError(f"{name!r} is above the 3D scales (<= {Z_MAX_SIGMA:g} px)")
        parsed[name] = (m.group(1) or "dog", sig)
    planes: dict[int, np.ndarray] = {}
    centre = np.asarray(plane_rows(z), dtype=np.float32)
    offset = float(np.mean(centre, dtype=np.float64))

    def plane(k):
        k = _mirror(k, n_planes)
        if k not in planes:
            planes[k] = np.subtract(np.asarray(plane_rows(k), dtype=np.float32), np.float32(offset))
        return planes[k]

    squares: dict[int, np.ndarray] = {}

    def square(k):
        k = _mirror(k, n_planes)
        if k not in squares:
            squares[k] = plane(k) * plane(k)
        return squares[k]

    # every intermediate is computed once per call, whichever channels need it (the Gaussian of a
    # scale for 'gaussian', 'dog' and 'stddev'; its z-sums for those and the Hessian; the gradient
    # of plane z for 'gradient' and the structure tensor)
    memo: dict[tuple, object] = {}

    def once(key, make):
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def zsum(source, zc, sz, order):
        """Planes around ``zc`` summed with the z kernel of ``order`` (0: Gaussian) at ``sz`` planes."""
        def make():
            kern = _kernels(sz)[order]
            r = len(kern) // 2
            acc = np.zeros_like(centre)
            for j in range(-r, r + 1):
                w = float(kern[j + r])
                if w != 0.0:
                    cv2.scaleAdd(source(zc + j), w, acc, dst=acc)  # acc += w * plane, without a temporary
            return acc
        return once(("zsum", source.__name__, zc, sz, order), make)

    def sep(src, kx, ky):
        return cv2.sepFilter2D(src, cv2.CV_32F, kx, ky, borderType=_BORDER)

    def gaussian3(s):
        g0 = _kernels(s)[0]
        return once(("gaussian", s), lambda: sep(zsum(plane, z, s / z_anisotropy, 0), g0, g0))

    def gradient_at(s, zc):
        sz = s / z_anisotropy
        g0, d1, _ = _kernels(s)

        def make():
            s0, s1 = zsum(plane, zc, sz, 0), zsum(plane, zc, sz, 1)
            return s * sep(s0, d1, g0), s * sep(s0, g0, d1), sz * sep(s1, g0, g0)
        return once(("gradient", s, zc), make)

    def hessian(s):
        sz = s / z_anisotropy
        g0, d1, d2 = _kernels(s)

        def make():
            s0, s1, s2 = (zsum(plane, z, sz, order) for order in (0, 1, 2))
            return {"xx": s * s * sep(s0, d2, g0), "yy": s * s * sep(s0, g0, d2), "xy": s * s * sep(s0, d1, d1),
                    "zz": sz * sz * sep(s2, g0, g0), "xz": s * sz * sep(s1, d1, g0), "yz": s * sz * sep(s1, g0, d1)}
        return once(("hessian", s), make)

    def structure(s):
        """Extremes of G_{s/2} (3D) * (grad grad^T), gradients at scale s."""
        sz = s / z_anisotropy

        def make():
            g0zo, g0o = _kernels(0.5 * sz)[0], _kernels(0.5 * s)[0]
            ro = len(g0zo) // 2
            acc = {k: np.zeros_like(centre) for k in ("xx", "yy", "zz", "xy", "xz", "yz")}
            for j in range(-ro, ro + 1):
                w = np.float32(g0zo[j + ro])
                gx, gy, gz = gradient_at(s, z + j)
                for k, (a, b) in {"xx": (gx, gx), "yy": (gy, gy), "zz": (gz, gz), "xy": (gx, gy),
                                  "xz": (gx, gz), "yz": (gy, gz)}.items():
                    acc[k] += w * (a * b)
            return _eig_extremes({k: sep(v, g0o, g0o) for k, v in acc.items()})
        return once(("structure", s), make)

    out: dict[str, np.ndarray] = {}
    for name, (kind, sig) in parsed.items():
        s = sig[-1]
        if kind == "gaussian":
            out[name] = gaussian3(s) + np.float32(offset)
        elif kind == "dog":
            out[name] = gaussian3(sig[1]) - gaussian3(sig[0])
        elif kind == "gradient":
            gx, gy, gz = gradient_at(s, z)
            out[name] = np.sqrt(gx * gx + gy * gy + gz * gz)
        elif kind == "stddev":
            g0 = _kernels(s)[0]
            mean2 = sep(zsum(square, z, s / z_anisotropy, 0), g0, g0)
            g = gaussian3(s)
            out[name] = np.sqrt(np.maximum(mean2 - g * g, 0.0))
        elif kind == "laplacian":
            h = hessian(s)
            out[name] = h["xx"] + h["yy"] + h["zz"]
        elif kind in ("hessian_max", "hessian_min"):
            hi, lo = once(("hessian_eig", s), lambda s=s: _eig_extremes(hessian(s)))
            out[name] = hi if kind == "hessian_max" else lo
        else:
            hi, lo = structure(s)
            out[name] = hi if kind == "structure_max" else lo
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


class StackPlane(np.ndarray):
    """Plane ``z`` of a stack that knows its stack: the plane's pixels (a numpy array like any
    other), plus :attr:`stack` and :attr:`z`, so that a featurizer with ``spatial='3d'`` can
    read the neighbouring planes. ``napari_vitseg.pipeline.segmenter.plane_of`` makes them.

    Slices, arithmetic and type conversions give plain arrays' behaviour: a result of another
    shape drops the stack; one of the same shape keeps it, and the featurizer checks that the
    plane's pixels still equal the stack's plane before it uses the neighbours.

    Parameters
    ----------
    stack : array-like, (Z, Y, X) or (Z, Y, X, C), channels last
        Anything indexable by plane (numpy, dask, zarr, the widget's plane cache).
    z : int
    """

    def __new__(cls, stack, z: int):
        obj = np.asarray(stack[z]).view(cls)
        obj.stack = stack
        obj.z = int(z)
        return obj

    def __array_finalize__(self, obj):
        same = obj is not None and getattr(obj, "shape", None) == self.shape
        self.stack = getattr(obj, "stack", None) if same else None
        self.z = getattr(obj, "z", None) if same else None

    def __reduce__(self):  # pickled (dask, processes) as the plain plane: the stack stays here
        return np.asarray(self).__reduce__()


def stack_of(plane) -> tuple[object, int, int] | None:
    """``(stack, z, n_planes)`` of a :class:`StackPlane` whose stack has several planes, else None."""
    stack = getattr(plane, "stack", None)
    if stack is None:
        return None
    n = int(stack.shape[0])
    return (stack, int(plane.z), n) if n > 1 else None


def estimate_z_anisotropy(stack, planes: Sequence[int] | None = None, *, max_pairs: int = 8, max_side: int = 512,
                          max_lag: int = 8) -> float:
    """Estimate a stack's z step in pixels from its pixels alone (no metadata).

    The mean squared difference of neighbouring planes is compared with the in-plane
    variogram (the mean squared difference of pixels ``d`` px apart along y and x, averaged,
    d = 1 .. ``max_lag``): in a volume whose planes are ``a`` pixels apart the two agree at
    ``d = a`` (for statistically isotropic structure), so ``a`` is read off the variogram by
    linear interpolation. Each plane's mean is removed first (slice-to-slice brightness drift);
    white noise adds the same amount to both sides. A time series with motion, a stack of
    unrelated images or unaligned sections differ more between planes than pixels
    ``max_lag`` px apart and give ``inf``.

    Measured on the shared data: FIB-SEM ``flyem_medulla_fibsem`` (isotropic) 1.24 (1.26 from
    its scribbled planes); every 2nd / 3rd / 4th plane 2.45 / 3.60 / 5.21; with added noise
    (sd 30 grey levels) 1.23; ``tem_cells_stack`` (unrelated TEM images) ``inf``; an image
    drifting 4 px per frame 4.23.

    Parameters
    ----------
    stack : array-like, (Z, Y, X) or (Z, Y, X, C), channels last
        numpy, dask, zarr or anything indexable by plane; at most ``2 * max_pairs`` planes
        are read, each cropped to its central ``max_side`` x ``max_side`` pixels.
    planes : sequence of int, optional
        Compare these planes (at most ``max_pairs`` of them, evenly chosen) with the next one
        (the previous one for the last plane): training passes the planes with scribbles, so
        that only they and one neighbour each are read. Default: pairs evenly spaced through
        the stack.
    max_pairs : int
        Pairs of neighbouring planes compared.
    max_side : int
        Side (px) of the central crop of each plane.
    max_lag : int
        Largest in-plane distance (px) of the variogram.

    Returns
    -------
    float
        The estimated z step / pixel size (>= 0; below 1 when neighbouring planes are more
        alike than neighbouring pixels), or ``inf`` when the planes are not neighbours of one
        volume (or there is nothing to compare: fewer than two planes, flat or non-finite planes,
        planes smaller than ``max_lag + 1`` px).
    """
    nz = int(stack.shape[0])
    ny, nx = int(stack.shape[1]), int(stack.shape[2])
    if nz < 2 or min(ny, nx) <= max_lag:
        return float("inf")
    y0, x0 = max(0, (ny - max_side) // 2), max(0, (nx - max_side) // 2)
    y1, x1 = min(ny, y0 + max_side), min(nx, x0 + max_side)
    if planes is None or not len(planes):
        pairs = [(z, z + 1) for z in np.unique(np.linspace(0, nz - 2, min(max_pairs, nz - 1)).round().astype(int))]
    else:
        zs = sorted({int(z) for z in planes if 0 <= int(z) < nz})
        zs = [zs[i] for i in np.unique(np.linspace(0, len(zs) - 1, min(max_pairs, len(zs))).round().astype(int))]
        pairs = [(z, z + 1) if z + 1 < nz else (z - 1, z) for z in zs]
    memo: dict[int, np.ndarray] = {}

    def plane(z: int) -> np.ndarray:
        if z not in memo:
            p = np.asarray(stack[z][y0:y1, x0:x1], dtype=np.float64)
            p = p.reshape(p.shape[0], p.shape[1], -1)
            memo[z] = p - p.mean(axis=(0, 1))
        return memo[z]

    dz = 0.0
    dxy = np.zeros(max_lag)
    for z0, z1 in pairs:
        a, b = plane(int(z0)), plane(int(z1))
        dz += np.mean((b - a) ** 2)
        for p in (a, b):
            for d in range(1, max_lag + 1):
                dxy[d - 1] += 0.25 * (np.mean((p[d:] - p[:-d]) ** 2) + np.mean((p[:, d:] - p[:, :-d]) ** 2))
    if not (np.isfinite(dz) and np.all(np.isfinite(dxy))) or dxy[0] <= 0:
        return float("inf")
    if dz <= dxy[0]:
        return float(np.sqrt(dz / dxy[0]))  # variogram ~ d**2 below one pixel (smooth structure)
    if dz > dxy.max():
        return float("inf")
    # the first lag whose variogram reaches dz, interpolated from the one before
    d = int(np.argmax(dxy >= dz))
    return float(d + (dz - dxy[d - 1]) / (dxy[d] - dxy[d - 1]))


def resolve_spatial(config, image=None, n_spatial: int = 2, *, planes: Sequence[int] | None = None, estimate=None,
                    z_step=None):
    """The feature configuration a model is trained with: ``spatial='auto'`` made concrete.

    ``'auto'`` becomes ``'3d'`` with ``z_anisotropy`` = the estimated z step (at least 1) when
    ``image`` is a stack whose neighbouring planes look like neighbouring pixels
    (:func:`estimate_z_anisotropy` <= :data:`AUTO_MAX_Z_ANISOTROPY`), else ``'2d'`` (single
    images, time series with motion, unrelated planes, sections much thicker than a pixel).
    A z step the data declares (``z_step``: its voxel size) is taken instead of the estimate, as
    it is: ``'3d'`` at that step (at least
    :data:`~napari_vitseg.features.config.MIN_Z_ANISOTROPY`) when it is <=
    :data:`AUTO_MAX_Z_ANISOTROPY`, else ``'2d'``.
    ``'2d'`` / ``'3d'`` are returned unchanged.

    Parameters
    ----------
    config : FeatureConfig
    image : array-like, (Y, X[, C]) or (Z, Y, X[, C]), channels last, optional
    n_spatial : int
        2 or 3: the spatial dimensions of ``image``.
    planes : sequence of int, optional
        The planes to estimate from (:func:`estimate_z_anisotropy`; training: those with scribbles).
    estimate : float, optional
        An estimate already made for ``image`` (skips reading it).
    z_step : float, optional
        The declared z step in pixels (z spacing / pixel size in x, e.g. napari's layer scale
        ``scale[-3] / scale[-1]``); nothing is read from ``image`` then.

    Returns
    -------
    FeatureConfig
    """
    if config.spatial != "auto":
        return config
    if image is None or n_spatial != 3 or not config.classical:
        return config.replace(spatial="2d")
    if z_step is not None:
        from .config import MIN_Z_ANISOTROPY

        step = float(z_step)
        if step <= AUTO_MAX_Z_ANISOTROPY:
            return config.replace(spatial="3d", z_anisotropy=round(max(step, MIN_Z_ANISOTROPY), 4))
        return config.replace(spatial="2d")
    a = estimate_z_anisotropy(image, planes) if estimate is None else float(estimate)
    if a <= AUTO_MAX_Z_ANISOTROPY:
        return config.replace(spatial="3d", z_anisotropy=round(max(1.0, a), 2))
    return config.replace(spatial="2d")


def describe_spatial(config, chosen: bool, source: str = "the stack") -> str:
    """How a trained model's filters treat the planes of a stack, for status lines and the CLI:
    ``'3D filters across planes (z step 1.24 px, chosen from the stack)'`` or ``'2D filters per
    plane (as set)'``.

    Parameters
    ----------
    config : FeatureConfig
        The trained model's (resolved) feature config.
    chosen : bool
        ``spatial='auto'`` chose it (else the user set it).
    source : str
        What it was chosen from: ``'the stack'`` (its pixels) or, e.g., ``"the layer's voxel size"``.
    """
    how = f"chosen from {source}" if chosen else "as set"
    if config.spatial == "3d":
        return f"3D filters across planes (z step {config.z_anisotropy:g} px, {how})"
    return f"2D filters per plane ({how})"
