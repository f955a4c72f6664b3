"""PCA-RGB of patch features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from napari_vitseg._validation import VitsegError
from napari_vitseg.diagnostics import pca_rgb


def _feats(seed, shape=(6, 7, 24)):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=shape)
    f[..., 0] *= 6
    f[..., 1] *= 3
    return f.astype(np.float32)


def test_pca_rgb_matches_sklearn():
    """The colours are the first three principal components (signed so that each axis's
    largest loading is positive), each scaled from its 1st / 99th percentile to [0, 1]."""
    f = _feats(0)
    x = f.reshape(-1, 24).astype(np.float64)
    ref = PCA(3).fit(x)
    comps = ref.components_ * np.sign(ref.components_[np.arange(3), np.abs(ref.components_).argmax(1)])[:, None]
    p = (x - ref.mean_) @ comps.T
    lo, hi = np.percentile(p, (1.0, 99.0), axis=0)
    want = np.clip((p - lo) / (hi - lo), 0, 1).reshape(6, 7, 3)
    got = pca_rgb([f])[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # deterministic sign: flipped data gives the complementary colours, never a random flip
    np.testing.assert_allclose(pca_rgb([-f])[0], 1 - got, atol=1e-5)


def test_pca_rgb_shared_and_per_image():
    a, b = _feats(1), _feats(2, (4, 5, 24)) + 5.0
    shared = pca_rgb([a, b], shared=True)
    per = pca_rgb([a, b], shared=False)
    assert [s.shape for s in shared] == [(6, 7, 3), (4, 5, 3)]
    for s in shared + per:
        assert s.dtype == np.float32 and s.min() >= 0 and s.max() <= 1
    # with a shared basis the offset image b lands in a different colour range than a
    assert not np.allclose(shared[1].mean((0, 1)), per[1].mean((0, 1)), atol=0.05)
    single = pca_rgb(a)
    np.testing.assert_allclose(single[0], per[0])


def test_pca_rgb_few_channels_and_errors():
    f = np.random.default_rng(3).normal(size=(3, 3, 2))
    out = pca_rgb([f])[0]
    assert out.shape == (3, 3, 3) and np.all(out[..., 2] == 0.5)
    with pytest.raises(VitsegError):
        pca_rgb([])
    with pytest.raises(VitsegError, match="gh, gw, D"):
        pca_rgb([np.zeros((4, 4))])
    with pytest.raises(VitsegError, match="at least one token"):
        pca_rgb([np.zeros((0, 4, 8))])
    with pytest.raises(VitsegError, match="non-finite|NaN|finite"):
        pca_rgb([np.full((2, 2, 4), np.nan)])
