"""Tests of napari_vitseg.features.upsample: pixel-centre convention, guided filter."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from napari_vitseg._validation import VitsegError
from napari_vitseg.features.upsample import upsample_bilinear, upsample_guided

P = 14


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _box(a, r):
    k = 2 * r + 1
    return cv2.boxFilter(np.ascontiguousarray(a), -1, (k, k), borderType=cv2.BORDER_REFLECT)


def _reference_guided(features, guide, r, eps, patch_size=P):
    """Textbook guided filter (He et al. 2013, Algorithm 1), one channel at a time."""
    up = upsample_bilinear(features, guide.shape[:2], patch_size=patch_size).astype(np.float64)
    g = guide.astype(np.float64)
    out = np.empty_like(up)
    if g.ndim == 2:
        m_i = _box(g, r)
        var_i = _box(g * g, r) - m_i * m_i
        for c in range(up.shape[2]):
            p = up[..., c]
            m_p = _box(p, r)
            a = (_box(g * p, r) - m_i * m_p) / (var_i + eps)
            b = m_p - a * m_i
            out[..., c] = _box(a, r) * g + _box(b, r)
        return out
    n = g.shape[2]
    m_i = np.stack([_box(g[..., u], r) for u in range(n)], -1)
    sig = np.empty(g.shape[:2] + (n, n))
    for u in range(n):
        for v in range(n):
            sig[..., u, v] = _box(g[..., u] * g[..., v], r) - m_i[..., u] * m_i[..., v] + eps * (u == v)
    inv = np.linalg.inv(sig)
    for c in range(up.shape[2]):
        p = up[..., c]
        m_p = _box(p, r)
        cov = np.stack([_box(g[..., u] * p, r) - m_i[..., u] * m_p for u in range(n)], -1)
        a = np.einsum("yxuv,yxv->yxu", inv, cov)
        b = m_p - (a * m_i).sum(-1)
        out[..., c] = sum(_box(a[..., u], r) * g[..., u] for u in range(n)) + _box(b, r)
    return out


# -- bilinear: convention ---------------------------------------------------------------
@pytest.mark.parametrize("shape", [(28, 42), (20, 33), (1, 1), (15, 29)])
def test_constant_tokens_give_constant_pixels(shape):
    h, w = -(-shape[0] // P), -(-shape[1] // P)
    tokens = np.full((h, w, 3), 2.5, np.float32)
    tokens[..., 1] = -1.0
    for up in (upsample_bilinear(tokens, shape, patch_size=P),
               upsample_guided(tokens, np.random.default_rng(1).random(shape, np.float32), patch_size=P)):
        assert up.shape == shape + (3,) and up.dtype == np.float32
        np.testing.assert_allclose(up[..., 0], 2.5, atol=1e-5)
        np.testing.assert_allclose(up[..., 1], -1.0, atol=1e-5)


@pytest.mark.parametrize("out_x", [70, 65, 57])
def test_token_ramp_maps_to_pixel_ramp_with_centres_at_14i_plus_6_5(out_x):
    """Token j is centred at pixel 14 j + 6.5; linear in between, edge value kept outside."""
    w = 5
    tokens = np.broadcast_to(np.arange(w, dtype=np.float32)[:, None], (3, w, 2)).copy()
    tokens[..., 1] *= -2
    up = upsample_bilinear(tokens, (40, out_x), patch_size=P)
    x = np.arange(out_x)
    expected = np.clip((x - 6.5) / 14, 0, w - 1)
    for row in (0, 17, 39):
        np.testing.assert_allclose(up[row, :, 0], expected, atol=1e-5)
        np.testing.assert_allclose(up[row, :, 1], -2 * expected, atol=1e-5)
    # the same along rows
    up_t = upsample_bilinear(tokens.transpose(1, 0, 2), (out_x, 40), patch_size=P)
    np.testing.assert_allclose(up_t[:, 5, 0], expected, atol=1e-5)
    # cropping a padded grid equals upsampling the full grid and cropping
    full = upsample_bilinear(tokens, (3 * P, w * P), patch_size=P)
    np.testing.assert_array_equal(up, full[:40, :out_x])


def test_exact_span_convention_without_patch_size():
    """patch_size=None: the tokens span out_shape; centre of token i at (i + 0.5) X / w - 0.5."""
    tokens = np.arange(4, dtype=np.float32).reshape(1, 4, 1)
    up = upsample_bilinear(tokens, (3, 10))
    x = np.arange(10)
    np.testing.assert_allclose(up[1, :, 0], np.clip((x + 0.5) * 4 / 10 - 0.5, 0, 3), atol=1e-5)
    # an exact multiple gives the same as patch_size
    np.testing.assert_array_equal(upsample_bilinear(tokens, (14, 56)), upsample_bilinear(tokens, (14, 56), patch_size=P))


@pytest.mark.parametrize("bad", [(14, 57), (14, 42), (0, 10), (15, 56)])
def test_out_shape_not_covered_by_tokens(bad):
    tokens = np.zeros((1, 4, 2), np.float32)
    with pytest.raises(VitsegError):
        upsample_bilinear(tokens, bad, patch_size=P)


def test_bad_features():
    with pytest.raises(VitsegError, match=r"\(h, w, D\)"):
        upsample_bilinear(np.zeros((4, 4), np.float32), (14, 14))
    with pytest.raises(VitsegError, match="floating"):
        upsample_bilinear(np.zeros((4, 4, 1), np.int32), (14, 14))
    with pytest.raises(VitsegError, match="empty"):
        upsample_bilinear(np.zeros((1, 1, 0), np.float32), (14, 14))


# -- guided filter -------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(60, 80), (56, 70), (3, 5), (1, 1), (1, 30)])
@pytest.mark.parametrize("colour", [False, True])
def test_guided_matches_textbook_reference(rng, shape, colour):
    h, w = -(-shape[0] // P), -(-shape[1] // P)
    feats = rng.standard_normal((h, w, 7)).astype(np.float32)  # 7: not a multiple of the group
    guide = rng.random(shape + ((3,) if colour else ()), dtype=np.float32)
    got = upsample_guided(feats, guide, radius=5, eps=1e-2, patch_size=P)
    want = _reference_guided(feats, guide, 5, 1e-2)
    assert got.shape == shape + (7,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_constant_guide_gives_double_box_smoothing(rng):
    feats = rng.standard_normal((4, 6, 5)).astype(np.float32)
    guide = np.full((50, 84), 0.3, np.float32)
    got = upsample_guided(feats, guide, radius=4, patch_size=P)
    up = upsample_bilinear(feats, guide.shape, patch_size=P)
    want = np.stack([_box(_box(up[..., c], 4), 4) for c in range(5)], -1)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _transition_width(profile, lo=0.25, hi=0.75):
    """Pixels strictly between 25% and 75% of a rising 0 -> 1 profile."""
    return int(np.count_nonzero((profile > lo) & (profile < hi)))


def test_guide_edge_sharpens_a_feature_step():
    """A token step (bilinear: a 14-px ramp) snaps to the guide's edge.

    Measured (r = 8, eps = 1e-3): the 25-75% transition shrinks from 6 px to 0 px (one jump
    of 0.53 between the two pixels at the edge, against 0.07 per pixel for bilinear); the
    remaining 47% of the rise is spread smoothly over about 2 r on either side.
    """
    tokens = np.zeros((4, 6, 1), np.float32)
    tokens[:, 3:] = 1.0                    # step between token centres 34.5 and 48.5
    guide = np.zeros((56, 84), np.float32)
    guide[:, 42:] = 1.0                    # the image edge, at the ramp's middle
    bil = upsample_bilinear(tokens, guide.shape, patch_size=P)[28, :, 0]
    gui = upsample_guided(tokens, guide, radius=8, eps=1e-3, patch_size=P)[28, :, 0]
    assert _transition_width(bil) == 6     # 0.25 < (x - 34.5) / 14 < 0.75: x = 39..44
    assert _transition_width(gui) == 0
    jump_bil, jump_gui = bil[42] - bil[41], gui[42] - gui[41]
    np.testing.assert_allclose(jump_bil, 1 / 14, atol=1e-6)
    assert jump_gui > 0.5, jump_gui
    # monotone and within the input range (no ringing), same end values
    assert np.all(np.diff(gui) >= -1e-6) and gui.min() >= -1e-6 and gui.max() <= 1 + 1e-6
    # a weaker guide edge (contrast 0.1 with eps = 1e-1: below sqrt(eps)) barely sharpens
    flat = upsample_guided(tokens, guide * 0.1, radius=8, eps=1e-1, patch_size=P)[28, :, 0]
    assert flat[42] - flat[41] < 0.1


def test_guided_commutes_with_affine_channel_maps(rng):
    """Linear in p and constants pass: PCA before upsampling == PCA after."""
    feats = rng.standard_normal((3, 4, 6)).astype(np.float32)
    guide = rng.random((40, 50), np.float32)
    w = rng.standard_normal((2, 6)).astype(np.float32)
    c = np.array([0.5, -3.0], np.float32)
    mixed = feats @ w.T + c
    for up in (lambda f: upsample_bilinear(f, guide.shape, patch_size=P),
               lambda f: upsample_guided(f, guide, patch_size=P)):
        np.testing.assert_allclose(up(mixed), up(feats) @ w.T + c, atol=1e-4)


def test_already_upsampled_and_radius_zero(rng):
    feats = rng.standard_normal((3, 4, 5)).astype(np.float32)
    guide = rng.random((42, 56), np.float32)
    up = upsample_bilinear(feats, guide.shape, patch_size=P)
    want = upsample_guided(feats, guide, patch_size=P)
    got = upsample_guided(up, guide, already_upsampled=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(up, upsample_bilinear(feats, guide.shape, patch_size=P))  # input untouched
    # a strided crop of a bigger grid (as Featurizer passes row bands)
    big = upsample_bilinear(feats, (3 * P, 4 * P), patch_size=P)
    crop = upsample_guided(big[:42, :56], guide, already_upsampled=True)
    np.testing.assert_array_equal(crop, got)
    np.testing.assert_array_equal(upsample_guided(feats, guide, radius=0, patch_size=P), up)
    np.testing.assert_array_equal(upsample_guided(up, guide, radius=0, already_upsampled=True), up)
    with pytest.raises(VitsegError, match="spatial shape"):
        upsample_guided(up, guide[:-1], already_upsampled=True)


def test_channels_first_views_give_the_same_result(rng):
    """Any strides: a channels-last view of channels-first data is as good as a copy."""
    cf = rng.standard_normal((6, 3, 4)).astype(np.float32)      # (D, h, w), e.g. one window of forward_features
    view, copy = cf.transpose(1, 2, 0), np.ascontiguousarray(cf.transpose(1, 2, 0))
    guide = rng.random((40, 50), np.float32)
    np.testing.assert_array_equal(upsample_bilinear(view, guide.shape, patch_size=P),
                                  upsample_bilinear(copy, guide.shape, patch_size=P))
    np.testing.assert_array_equal(upsample_guided(view, guide, patch_size=P),
                                  upsample_guided(copy, guide, patch_size=P))
    np.testing.assert_array_equal(cf, np.ascontiguousarray(view.transpose(2, 0, 1)))  # not modified


@pytest.mark.parametrize("kw", [{"radius": -1}, {"radius": 1.5}, {"eps": 0.0}, {"eps": -1e-3}])
def test_guided_bad_parameters(kw):
    with pytest.raises(VitsegError):
        upsample_guided(np.zeros((1, 1, 1), np.float32), np.zeros((14, 14), np.float32), patch_size=P, **kw)


def test_guided_bad_guide():
    with pytest.raises(VitsegError, match="guide"):
        upsample_guided(np.zeros((1, 1, 1), np.float32), np.zeros((2, 14, 14, 1), np.float32))
