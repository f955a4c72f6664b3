"""Bring ViT patch features (1/14 of the image resolution) to the pixel grid.

Two weight-free upsamplers (methods.md, section 6):

* :func:`upsample_bilinear` - bilinear interpolation between token centres;
* :func:`upsample_guided` - the guided filter of He, Sun and Tang (2013) applied to the
  bilinearly upsampled features, with the image as guide, so that feature transitions
  snap to intensity edges.

Joint bilateral upsampling (Kopf et al., 2007) is the other classical edge-aware option;
it is not implemented here because its cost grows with the window area, whereas the guided
filter costs a fixed number of box filters per channel whatever the radius.

Pixel-centre convention
-----------------------
With ``patch_size=p``, token ``(i, j)`` covers the pixels ``[p*i, p*i + p)`` of the
(padded) image, so its centre lies at pixel coordinate ``p*i + (p - 1)/2`` (6.5 for
``p = 14``) along each axis, pixel ``k`` being centred at ``k``. Interpolation runs
between token centres; beyond the outermost centres the edge token's value is kept.
This is OpenCV's ``INTER_LINEAR`` and torch's ``align_corners=False`` convention for an
exact scale of ``p``. The features of an image padded to a multiple of ``p`` are
interpolated on the padded grid and then cropped to the image, so a pixel's features do
not depend on how much padding was added.

References
----------
.. [1] K. He, J. Sun, X. Tang, "Guided Image Filtering", IEEE TPAMI 35(6):1397-1409, 2013.
       https://doi.org/10.1109/TPAMI.2012.213
.. [2] J. Kopf, M. F. Cohen, D. Lischinski, M. Uyttendaele, "Joint Bilateral Upsampling",
       ACM Transactions on Graphics (SIGGRAPH) 26(3):96, 2007.
       https://doi.org/10.1145/1276377.1276497
"""

from __future__ import annotations

import cv2
import numpy as np

from .._validation import VitsegError

__all__ = ["upsample_bilinear", "upsample_guided"]

#: Channels per cv2 call in the guided filter: cv2's box filter is about twice as fast per
#: channel on 4-channel images as on 16-channel ones (measured on 1024^2 float32).
_GUIDED_GROUP = 4
#: Channels per cv2.resize call in bilinear upsampling (wider groups make fewer, larger
#: writes into the channels-last output; cv2 accepts up to 128 here).
_BILINEAR_GROUP = 16
_BORDER = cv2.BORDER_REFLECT


def _check_features(features) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 3:
        raise VitsegError(
            f"features must be an (h, w, D) array (channels last, token grid); got shape {features.shape}."
        )
    if features.dtype.kind != "f":
        raise VitsegError(f"features must be floating point; got dtype {features.dtype}.")
    if min(features.shape) < 1:
        raise VitsegError(f"features must not be empty; got shape {features.shape}.")
    return features


def _grid_shape(token_shape: tuple[int, int], out_shape, patch_size: int | None) -> tuple[int, int]:
    """The pixel grid the tokens span exactly: ``p * (h, w)`` or ``out_shape``."""
    out_shape = tuple(int(s) for s in out_shape)
    if len(out_shape) != 2 or min(out_shape) < 1:
        raise VitsegError(f"out_shape must be two positive sizes (Y, X); got {out_shape}.")
    if patch_size is None:
        return out_shape
    p = int(patch_size)
    if p < 1:
        raise VitsegError(f"patch_size must be a positive integer or None; got {patch_size}.")
    h, w = token_shape
    if not (p * (h - 1) < out_shape[0] <= p * h and p * (w - 1) < out_shape[1] <= p * w):
        raise VitsegError(
            f"A {h} x {w} token grid with patch_size={p} covers images of "
            f"{p * (h - 1) + 1}..{p * h} x {p * (w - 1) + 1}..{p * w} pixels; got out_shape {out_shape}. "
            "Pass the shape of the image the tokens were computed from."
        )
    return p * h, p * w


def _bilinear_group(tokens_hwc: np.ndarray, grid: tuple[int, int], out_shape: tuple[int, int],
                    buf: np.ndarray | None = None) -> np.ndarray:
    """(h, w, c) float32 -> (Y, X, c) float32 view (cropped from the ``grid``-sized result).

    ``buf``, if given, is a C-contiguous (grid_y, grid_x, c) float32 array that receives the
    full-grid result (no allocation).
    """
    src = np.ascontiguousarray(tokens_hwc, dtype=np.float32)
    if buf is None:
        up = cv2.resize(src, (grid[1], grid[0]), interpolation=cv2.INTER_LINEAR)
        if up.ndim == 2:
            up = up[..., None]
    else:
        up = cv2.resize(src, (grid[1], grid[0]), dst=buf, interpolation=cv2.INTER_LINEAR)
        up = buf
    return up[: out_shape[0], : out_shape[1]]


def _groups(n: int, size: int):
    for c0 in range(0, n, size):
        yield c0, min(c0 + size, n)


def upsample_bilinear(features, out_shape, *, patch_size: int | None = None) -> np.ndarray:
    """Bilinearly upsample a token grid of features to the pixel grid.

    Parameters
    ----------
    features : (h, w, D) array of float
        Channels-last features on the token grid (any strides; not modified).
    out_shape : tuple of int
        (Y, X), the output's spatial shape.
    patch_size : int, optional
        If given, token ``(i, j)`` covers pixels ``[p*i, p*i + p)`` (centre ``p*i + (p-1)/2``):
        the tokens are interpolated on the ``(p*h, p*w)`` grid and the result is cropped to
        ``out_shape``, which must satisfy ``p*(h-1) < Y <= p*h`` (same for X). This is the
        right call for features of an image padded to a multiple of ``p``. If ``None``, the
        tokens span ``out_shape`` exactly (centre of token ``i`` at ``(i + 0.5) * Y/h - 0.5``).

    Returns
    -------
    (Y, X, D) ndarray of float32
        Channels last. Beyond the outermost token centres the edge value is kept.

    Raises
    ------
    VitsegError
        For a wrongly shaped ``features`` or an ``out_shape`` the tokens cannot cover.

    Examples
    --------
    >>> import numpy as np
    >>> tokens = np.arange(2, dtype=np.float32).reshape(1, 2, 1)  # one row of two tokens
    >>> row = upsample_bilinear(tokens, (14, 28), patch_size=14)[0, :, 0]
    >>> np.round(row[[0, 6, 7, 13, 14, 20, 21, 27]].astype(float), 4).tolist()
    [0.0, 0.0, 0.0357, 0.4643, 0.5357, 0.9643, 1.0, 1.0]
    """
    features = _check_features(features)
    h, w, d = features.shape
    out_shape = tuple(int(s) for s in out_shape)
    grid = _grid_shape((h, w), out_shape, patch_size)
    tokens = np.ascontiguousarray(features, dtype=np.float32)  # (h, w, D), small
    out = np.empty(out_shape + (d,), dtype=np.float32)
    for c0, c1 in _groups(d, _BILINEAR_GROUP):
        out[..., c0:c1] = _bilinear_group(tokens[..., c0:c1], grid, out_shape)
    return out


def _box(src: np.ndarray, ksize: int) -> np.ndarray:
    """Normalised (2r+1)^2 box mean with reflected borders; keeps a trailing channel axis."""
    res = cv2.boxFilter(src, -1, (ksize, ksize), normalize=True, borderType=_BORDER)
    if src.ndim == 3 and res.ndim == 2:  # cv2 drops a trailing axis of length 1
        res = res[..., None]
    return res


def upsample_guided(features, guide, *, radius: int = 8, eps: float = 1e-3,
                    patch_size: int | None = None, already_upsampled: bool = False) -> np.ndarray:
    """Edge-aware upsampling: the guided filter [1]_ of the bilinearly upsampled features.

    Each channel ``p`` of the bilinear upsampling (:func:`upsample_bilinear`) is replaced
    by ``q = mean(a) * I + mean(b)``, where in every ``(2r+1)^2`` window ``a, b`` are the
    least-squares fit of ``p ~ a * I + b`` with ridge penalty ``eps * a**2``, and ``mean``
    averages the fits of all windows that contain the pixel. Where the guide ``I`` is flat
    (variance << ``eps``) this is a plain double box smoothing of ``p``; across a guide
    edge (variance >> ``eps``) ``q`` follows ``I``, so feature transitions snap to edges.
    For a multichannel guide the colour form of [1]_ (section 3.5) is used, with a per-pixel
    ``C x C`` covariance plus ``eps * Id``.

    The filter is linear in ``p`` and keeps constants, so it commutes with any per-pixel
    affine map of the channels (such as a PCA projection): projecting tokens first and
    filtering fewer channels gives the same result, cheaper.

    Parameters
    ----------
    features : (h, w, D) array of float
        Channels-last features on the token grid; or (Y, X, D) features already on the
        pixel grid with ``already_upsampled=True`` (any strides, e.g. a crop of
        :func:`upsample_bilinear`'s output). Not modified.
    guide : (Y, X) or (Y, X, C) array of float
        The image, scaled to [0, 1] (``eps`` is relative to that range); its spatial shape
        is the output's.
    radius : int
        Window radius ``r`` in pixels (window side ``2r + 1``). 0 returns the bilinear result.
    eps : float
        Regularisation (> 0), in squared guide units: edges with a contrast well above
        ``sqrt(eps)`` are preserved.
    patch_size : int, optional
        As in :func:`upsample_bilinear` (use it for features of a padded image).
    already_upsampled : bool
        ``features`` are already (Y, X, D) on the guide's grid: only filter them.

    Returns
    -------
    (Y, X, D) ndarray of float32
        Channels last. With ``already_upsampled=True`` and ``radius=0`` this is ``features``
        itself when it is already C-contiguous float32 (otherwise a copy).

    Raises
    ------
    VitsegError
        For wrongly shaped inputs, ``radius < 0`` or ``eps <= 0``.

    Notes
    -----
    Cost: 4 box filters per channel for a grey guide, ``2 C + 2`` for a C-channel guide,
    each O(1) per pixel whatever the radius (cv2's running-sum box filter); channels are
    processed 4 at a time, so the temporaries are a few (Y, X, 4) float32 arrays on top
    of the (Y, X, D) output. Borders are reflected (``cv2.BORDER_REFLECT``), where the
    reference implementation shrinks the window; the difference is confined to ``r``
    pixels from the border.

    References
    ----------
    .. [1] K. He, J. Sun, X. Tang, "Guided Image Filtering", IEEE TPAMI 35(6):1397-1409,
           2013. https://doi.org/10.1109/TPAMI.2012.213
    .. [2] J. Kopf, M. F. Cohen, D. Lischinski, M. Uyttendaele, "Joint Bilateral
           Upsampling", ACM TOG (SIGGRAPH) 26(3):96, 2007 (an alternative, not implemented).

    Examples
    --------
    >>> import numpy as np
    >>> tokens = np.array([[[0.0], [1.0]]], dtype=np.float32)     # (1, 2, 1): a step
    >>> guide = np.zeros((14, 28), np.float32); guide[:, 14:] = 1  # an edge at column 14
    >>> q = upsample_guided(tokens, guide, radius=8, patch_size=14)
    >>> b = upsample_bilinear(tokens, (14, 28), patch_size=14)
    >>> step = lambda f: round(float(f[7, 14, 0] - f[7, 13, 0]), 2)  # jump across the edge
    >>> step(b), step(q)
    (0.07, 0.53)
    """
    features = _check_features(features)
    guide = np.asarray(guide)
    if guide.ndim not in (2, 3) or guide.dtype.kind not in "fiub" or min(guide.shape) < 1:
        raise VitsegError(
            f"guide must be a real (Y, X) or (Y, X, C) image scaled to [0, 1]; got shape {guide.shape}, dtype {guide.dtype}."
        )
    if isinstance(radius, bool) or int(radius) != radius or radius < 0:
        raise VitsegError(f"radius must be a non-negative integer (pixels); got {radius!r}.")
    if not eps > 0:
        raise VitsegError(f"eps must be > 0; got {eps!r}.")
    radius = int(radius)
    out_shape = guide.shape[:2]
    d = features.shape[2]
    if already_upsampled:
        if features.shape[:2] != out_shape:
            raise VitsegError(
                f"already_upsampled features must have the guide's spatial shape {out_shape}; "
                f"got {features.shape[:2]}."
            )
        if radius == 0:
            return np.ascontiguousarray(features, dtype=np.float32)
    else:
        grid = _grid_shape(features.shape[:2], out_shape, patch_size)
        if radius == 0:
            return upsample_bilinear(features, out_shape, patch_size=patch_size)
        tokens = np.ascontiguousarray(features, dtype=np.float32)  # (h, w, D), small
    guide = np.ascontiguousarray(guide, dtype=np.float32)
    if guide.ndim == 3 and guide.shape[2] == 1:
        guide = guide[..., 0]
    out = np.empty(out_shape + (d,), dtype=np.float32)
    filt = _GreyGuidedFilter if guide.ndim == 2 else _ColourGuidedFilter
    f = filt(guide, 2 * radius + 1, float(eps))
    for c0, c1 in _groups(d, _GUIDED_GROUP):
        if already_upsampled:
            p = f.buffer("up", c1 - c0)
            np.copyto(p, features[..., c0:c1], casting="same_kind")
        else:
            p = _bilinear_group(tokens[..., c0:c1], grid, out_shape, buf=f.buffer("up", c1 - c0, grid))
        out[..., c0:c1] = f(p)
    return out


class _Work:
    """Reusable (Y, X, c) float32 work buffers, keyed by name and channel count.

    Fresh large allocations are costly (page faults on first touch), so every group of
    channels reuses the same arrays.
    """

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self._bufs: dict[tuple, np.ndarray] = {}

    def buffer(self, name: str, c: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        shape = self.shape if shape is None else tuple(shape)
        key = (name, c, shape)
        buf = self._bufs.get(key)
        if buf is None:
            buf = self._bufs[key] = np.empty(shape + (c,), np.float32)
        return buf

    def repeat(self, name: str, image: np.ndarray, c: int) -> np.ndarray:
        """``image`` (Y, X) repeated to a contiguous (Y, X, c), cached by name."""
        key = ("rep", name, c)
        buf = self._bufs.get(key)
        if buf is None:
            buf = self._bufs[key] = np.repeat(image[..., None], c, axis=2)
        return buf

    def box(self, src: np.ndarray, k: int, name: str) -> np.ndarray:
        dst = self.buffer(name, src.shape[2])
        cv2.boxFilter(src, -1, (k, k), dst=dst, normalize=True, borderType=_BORDER)
        return dst


class _GreyGuidedFilter(_Work):
    """Guided filter with a (Y, X) guide; ``f(p)`` filters a (Y, X, c) array, c <= 4."""

    def __init__(self, guide: np.ndarray, k: int, eps: float):
        super().__init__(guide.shape)
        self.k = k
        self.guide = guide
        self.mean_i = _box(guide, k)
        var_i = _box(guide * guide, k)
        var_i -= self.mean_i * self.mean_i
        var_i += eps
        self.inv = np.reciprocal(var_i, out=var_i)  # 1 / (var(I) + eps)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        k, c = self.k, p.shape[2]
        g_i, m_i, iv = (self.repeat(n, a, c) for n, a in
                        (("I", self.guide), ("mI", self.mean_i), ("inv", self.inv)))
        tmp = self.buffer("tmp", c)
        mean_p = self.box(p, k, "mean_p")
        np.multiply(p, g_i, out=tmp)
        a = self.box(tmp, k, "a")            # mean(I p)
        np.multiply(m_i, mean_p, out=tmp)
        a -= tmp                             # cov(I, p)
        a *= iv                              # a = cov / (var + eps)
        np.multiply(a, m_i, out=tmp)
        mean_p -= tmp                        # b = mean(p) - a mean(I)
        q = self.box(a, k, "mean_a")
        q *= g_i
        q += self.box(mean_p, k, "mean_b")   # q = mean(a) I + mean(b)
        return q


class _ColourGuidedFilter(_Work):
    """Guided filter with a (Y, X, C) guide (He et al. 2013, section 3.5)."""

    def __init__(self, guide: np.ndarray, k: int, eps: float):
        super().__init__(guide.shape[:2])
        self.k = k
        n = self.n = guide.shape[2]
        self.guides = [np.ascontiguousarray(guide[..., u]) for u in range(n)]
        self.means = [_box(g, k) for g in self.guides]
        sigma = np.empty(self.shape + (n, n), np.float32)
        for u in range(n):
            for v in range(u, n):
                s = _box(self.guides[u] * self.guides[v], k)
                s -= self.means[u] * self.means[v]
                if u == v:
                    s += eps
                sigma[..., u, v] = s
                sigma[..., v, u] = s
        inv = np.linalg.inv(sigma)  # (Y, X, C, C), symmetric positive definite
        self.inv = [[np.ascontiguousarray(inv[..., u, v]) for v in range(n)] for u in range(n)]

    def __call__(self, p: np.ndarray) -> np.ndarray:
        k, c, n = self.k, p.shape[2], self.n
        g = [self.repeat(f"I{u}", self.guides[u], c) for u in range(n)]
        m = [self.repeat(f"m{u}", self.means[u], c) for u in range(n)]
        tmp = self.buffer("tmp", c)
        mean_p = self.box(p, k, "mean_p")
        cov = []
        for u in range(n):
            np.multiply(p, g[u], out=tmp)
            cu = self.box(tmp, k, f"cov{u}")    # mean(I_u p)
            np.multiply(m[u], mean_p, out=tmp)
            cu -= tmp                            # cov(I_u, p)
            cov.append(cu)
        q = self.buffer("q", c)
        q.fill(0)
        b = mean_p                               # b = mean(p) - sum_u a_u mean(I_u)
        a = self.buffer("a", c)
        for u in range(n):
            np.multiply(self.repeat(f"inv{u}0", self.inv[u][0], c), cov[0], out=a)
            for v in range(1, n):
                np.multiply(self.repeat(f"inv{u}{v}", self.inv[u][v], c), cov[v], out=tmp)
                a += tmp
            np.multiply(a, m[u], out=tmp)
            b -= tmp
            mean_a = self.box(a, k, "mean_a")
            np.multiply(mean_a, g[u], out=tmp)
            q += tmp                             # sum_u mean(a_u) I_u
        q += self.box(b, k, "mean_b")
        return q
