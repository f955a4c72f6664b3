"""PCA-RGB views of patch features: the first three principal components as colours.

With a shared basis (fitted on the tokens of all images together) the same colour means the same
feature direction in every image, so images, and a backbone's positional gradients across them,
can be compared (dino-saw's "shared PCA" figures).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._validation import VitsegError, as_float32
from ..features.vit import PCAReducer

__all__ = ["pca_rgb"]


def _tokens(f) -> np.ndarray:
    a = f.detach().cpu().numpy() if hasattr(f, "detach") else np.asarray(f)
    if a.ndim != 3:
        raise VitsegError(f"features must be (gh, gw, D) arrays; got shape {a.shape}.")
    return as_float32(a.reshape(-1, a.shape[-1]), "features")


def _fit(tokens: Sequence[np.ndarray], n_components: int) -> PCAReducer:
    """:class:`~napari_vitseg.features.vit.PCAReducer` fitted on all rows (no subsampling).

    At most ``min(n_components, N, D)`` components for N tokens of D channels.
    """
    x = np.concatenate(tokens, axis=0)
    n, d = x.shape
    if n < 1 or d < 1:
        raise VitsegError(f"features must hold at least one token and one channel; got {n} x {d}.")
    return PCAReducer(min(n_components, n, d), max_samples=max(2, n)).fit(x)


def pca_rgb(features: Sequence, shared: bool = True, percentiles: tuple[float, float] = (1.0, 99.0)) -> list:
    """First three principal components of patch features as RGB images in [0, 1].

    Parameters
    ----------
    features : sequence of (gh, gw, D) array_like
        Channels-last patch features of one or more images.
    shared : bool
        Fit one basis (and one colour scaling) on all images together (default), or one per image.
    percentiles : (float, float)
        Each component is scaled so that these percentiles map to 0 and 1, then clipped.

    Returns
    -------
    list of (gh, gw, 3) ndarray of float32
        In [0, 1]; with fewer than 3 channels or tokens the missing components are 0.5.

    Raises
    ------
    VitsegError
        No feature map, a map that is not 3-D, no tokens or channels, or non-finite values.

    Notes
    -----
    The basis is :class:`~napari_vitseg.features.vit.PCAReducer`'s (eigendecomposition of the
    float64 covariance of all tokens, no subsampling; each axis signed so that its
    largest-magnitude loading is positive, which makes the colours deterministic); the
    tokens are projected in float64.

    References
    ----------
    Pawlowsky et al., "What DINO saw", arXiv 2603.16840 (2026) (shared-basis PCA views).

    Examples
    --------
    >>> import numpy as np
    >>> rgb = pca_rgb([np.random.default_rng(0).normal(size=(4, 5, 16))])
    >>> rgb[0].shape, float(rgb[0].min()) >= 0.0, float(rgb[0].max()) <= 1.0
    ((4, 5, 3), True, True)
    """
    if isinstance(features, np.ndarray) and features.ndim == 3:
        features = [features]
    features = list(features)
    if not features:
        raise VitsegError("pca_rgb needs at least one feature map.")
    groups = [features] if shared else [[f] for f in features]
    out = []
    for group in groups:
        tokens = [_tokens(f) for f in group]
        pca = _fit(tokens, 3)
        proj = [(t.astype(np.float64) - pca.mean_) @ pca.components_.T for t in tokens]
        allp = np.concatenate(proj, axis=0)
        lo, hi = np.percentile(allp, percentiles, axis=0)
        span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
        for f, p in zip(group, proj, strict=True):
            gh, gw = np.shape(f)[:2]
            rgb = np.full((gh * gw, 3), 0.5)
            rgb[:, : p.shape[1]] = np.clip((p - lo) / span, 0.0, 1.0)
            out.append(rgb.reshape(gh, gw, 3).astype(np.float32))
    return out
