"""Tests of napari_vitseg.features.vit: input conversion, tiling and blending, PCA.

Most tiling tests use a tiny fake backbone whose features are a position-independent
function of each patch, so tiled and untiled features must agree to float precision; a
random-weight DINOv2 (no download) checks the real wiring at two image sizes.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_vitseg._validation import VitsegError
from napari_vitseg.features.upsample import upsample_bilinear
from napari_vitseg.features.vit import (
    PCAReducer,
    _tile_layout,
    robust_intensity_range,
    to_rgb01,
    vit_feature_names,
    vit_features,
    vit_patch_features,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FakeBackbone(torch.nn.Module):
    """Duck-types ViTBackbone; each token is a fixed function of its own 14 x 14 patch only."""

    patch_size = 14

    def __init__(self, dim: int = 8, seed: int = 0):
        super().__init__()
        self.embed_dim = dim
        self.cfg = SimpleNamespace(name="fake", mean=MEAN, std=STD)
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(12, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 12, generator=g))
            self.proj.bias.copy_(torch.randn(dim, generator=g))
        self.calls: list[tuple[int, ...]] = []

    def forward_features(self, x):
        b, c, h, w = x.shape
        assert c == 3 and h % 14 == 0 and w % 14 == 0
        self.calls.append(tuple(x.shape))
        z = F.pixel_unshuffle(F.avg_pool2d(x, 7), 2)          # (B, 12, h/14, w/14): 2x2 sub-means
        return torch.tanh(self.proj(z.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


@pytest.fixture
def fake():
    return FakeBackbone()


@pytest.fixture(scope="module")
def dinov2():
    from napari_vitseg.backbones import create_backbone

    torch.manual_seed(0)
    return create_backbone("dinov2_vits14_reg", pretrained=False)


def _image(shape, seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = 1000 + 500 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + rng.normal(0, 50, shape)
    return img.astype(dtype)


def _normalised_padded(img, p=14):
    """What a single tile sees: RGB [0, 1], ImageNet-normalised, reflect-padded."""
    rgb = to_rgb01(img)
    y, x = rgb.shape[:2]
    gh, gw = -(-y // p), -(-x // p)
    norm = (rgb - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    norm = np.pad(norm, ((0, gh * p - y), (0, gw * p - x), (0, 0)), mode="reflect")
    return torch.from_numpy(np.ascontiguousarray(norm.transpose(2, 0, 1)))[None]


# -- input conversion ---------------------------------------------------------------------
def _rgb01_pct(*args, **kw):
    return to_rgb01(*args, intensity="percentile", **kw)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_to_rgb01_percentile_dtypes(dtype):
    img = _image((20, 30), dtype=dtype)
    rgb = _rgb01_pct(img)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.float32
    assert rgb.min() == 0.0 and rgb.max() == 1.0
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])  # grey repeated


def test_to_rgb01_bool_and_constant():
    b = np.zeros((10, 10), bool)
    b[2:4, 2:4] = True  # 4% on: the 99.5 percentile is 1
    np.testing.assert_array_equal(_rgb01_pct(b)[..., 0], b.astype(np.float32))
    b2 = np.zeros((100, 100), bool)
    b2[0, 0] = True     # 0.01% on: percentiles coincide, falls back to min/max
    assert _rgb01_pct(b2)[0, 0, 0] == 1.0 and _rgb01_pct(b2)[5, 5, 0] == 0.0
    np.testing.assert_array_equal(_rgb01_pct(np.full((5, 6), 7, np.uint16)), 0.0)


def test_to_rgb01_is_robust_to_a_hot_pixel():
    img = _image((50, 60)).astype(np.float32)
    hot = img.copy()
    hot[3, 3] = 1e9
    np.testing.assert_allclose(_rgb01_pct(hot)[10:, 10:], _rgb01_pct(img)[10:, 10:], atol=0.02)
    assert _rgb01_pct(hot)[3, 3, 0] == 1.0


def test_to_rgb01_channel_layouts():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (12, 15, 3), dtype=np.uint8)
    a = _rgb01_pct(rgb)
    np.testing.assert_array_equal(_rgb01_pct(np.moveaxis(rgb, -1, 0), channel_axis=0), a)
    assert not np.array_equal(a[..., 0], a[..., 1])  # colours kept
    lo, hi = robust_intensity_range(rgb)
    np.testing.assert_allclose(a, np.clip((rgb - lo) / (hi - lo), 0, 1), atol=1e-6)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(_rgb01_pct(grey[..., None]), _rgb01_pct(grey))
    np.testing.assert_array_equal(_rgb01_pct(grey[None], channel_axis=0), _rgb01_pct(grey))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, bool, np.float32])
def test_to_rgb01_reference_divides_by_the_dtype_range(dtype):
    """'reference': uint8 / 255 exactly (torchvision's ToTensor), integers by their dtype's
    maximum (negative values clip to 0), bool as 0 / 1, floats as given."""
    rng = np.random.default_rng(1)
    if dtype is bool:
        img = rng.random((6, 7)) > 0.5
        want = img.astype(np.float32)
    elif dtype is np.float32:
        img = rng.normal(0, 3, (6, 7)).astype(np.float32)
        want = img
    else:
        info = np.iinfo(dtype)
        img = rng.integers(info.min, info.max, (6, 7), endpoint=True).astype(dtype)
        want = np.clip(torch.from_numpy(img.astype(np.float32)).div(float(info.max)).numpy(), 0, 1)
    rgb = to_rgb01(img)
    assert rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb[..., 0], want)
    # the source dtype decides, not the dtype of an already converted copy
    if dtype is np.uint8:
        np.testing.assert_array_equal(to_rgb01(img.astype(np.float32), dtype=np.uint8), rgb)


def test_to_rgb01_reference_uint8_matches_totensor():
    from torchvision.transforms.functional import to_tensor

    img = np.random.default_rng(2).integers(40, 181, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb01(img), to_tensor(img).numpy().transpose(1, 2, 0))


def test_to_rgb01_intensity_range():
    img = np.array([[0, 50], [100, 200]], np.uint16)
    np.testing.assert_allclose(to_rgb01(img, intensity_range=(0, 100))[..., 0], [[0, 0.5], [1, 1]])
    for bad in [(5, 5), (10, 0), (0, np.inf), "ab"]:
        with pytest.raises(VitsegError, match="intensity_range"):
            to_rgb01(img, intensity_range=bad)


@pytest.mark.parametrize("shape, axis, match", [
    ((10, 10, 4), -1, "4 channels"),
    ((2, 10, 10), 0, "2 channels"),
    ((10, 10, 4), None, "channel_axis"),
    ((5, 10, 10), None, "plane by plane"),
    ((2, 3, 10, 10), None, "one 2D plane"),
    ((10,), None, "one 2D plane"),
])
def test_to_rgb01_refuses_bad_layouts(shape, axis, match):
    with pytest.raises(VitsegError, match=match):
        to_rgb01(np.zeros(shape, np.uint8), channel_axis=axis)


def test_to_rgb01_channel_error_says_what_to_do():
    with pytest.raises(VitsegError, match=r"1 \(grey\) or 3 \(RGB\).*image\[\.\.\., \[0, 1, 2\]\]"):
        to_rgb01(np.zeros((10, 10, 5)), channel_axis=-1)


def test_to_rgb01_refuses_nan_and_complex():
    img = np.zeros((5, 5), np.float32)
    img[1, 1] = np.nan
    with pytest.raises(VitsegError, match="NaN"):
        to_rgb01(img)
    with pytest.raises(VitsegError, match="dtype"):
        to_rgb01(np.zeros((5, 5), complex))


# -- tiling and blending ---------------------------------------------------------------------
@pytest.mark.parametrize("gh, gw, t, o", [(43, 47, 37, 8), (50, 10, 37, 8), (9, 9, 4, 2), (20, 21, 5, 0),
                                          (30, 30, 6, 5), (3, 2, 37, 8)])
def test_tile_layout_covers_and_blends(gh, gw, t, o):
    tiles = _tile_layout(gh, gw, t, o)
    wsum = np.zeros((gh, gw))
    count = np.zeros((gh, gw), int)
    for y0, x0, th, tw, w in tiles:
        assert th == min(t, gh) and tw == min(t, gw) and w.shape == (th, tw)
        assert 0 <= y0 and y0 + th <= gh and 0 <= x0 and x0 + tw <= gw
        wsum[y0:y0 + th, x0:x0 + tw] += w
        count[y0:y0 + th, x0:x0 + tw] += 1
        # ramps fall towards edges shared with a neighbour, stay 1 at image borders
        if y0 == 0:
            np.testing.assert_array_equal(w[0], w.max(axis=0))
        if y0 > 0 and o > 0:
            assert w[0].max() <= 1 / 2 + 1e-6
        if x0 + tw < gw and o > 0:
            assert w[:, -1].max() <= 1 / 2 + 1e-6
    assert count.min() >= 1 and wsum.min() > 0
    # a partition of unity wherever exactly two windows overlap along one axis only
    ys = sorted({y0 for y0, *_ in tiles})
    xs = sorted({x0 for _, x0, *_ in tiles})
    if len(ys) == 1 and len(xs) == 2:
        np.testing.assert_allclose(wsum, 1.0, atol=1e-6)
    if len(ys) == 2 and len(xs) == 2:
        np.testing.assert_allclose(wsum, 1.0, atol=1e-6)


@pytest.mark.parametrize("shape, tile_size, overlap", [
    ((200, 300), 56, 0), ((200, 300), 56, 14), ((200, 300), 98, 42), ((200, 300), 112, 84),
    ((150, 97), 70, 28), ((150, 97), 28, 20), ((150, 97), 518, 112),
    ((29, 400), 56, 14), ((29, 400), 42, 28), ((14, 14), 28, 20), ((700, 560), 518, 112),
])
def test_tiled_equals_untiled_for_position_independent_backbone(fake, shape, tile_size, overlap):
    img = _image(shape)
    ref = vit_patch_features(img, fake, tile_size=10_000, tile_overlap=0)
    got = vit_patch_features(img, fake, tile_size=tile_size, tile_overlap=overlap, batch_size=3, tiling="always")
    gh, gw = -(-shape[0] // 14), -(-shape[1] // 14)
    assert got.shape == (gh, gw, 8) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_single_tile_is_exactly_forward_features(fake):
    img = _image((100, 130))
    got = vit_patch_features(img, fake)
    with torch.inference_mode():
        want = fake.forward_features(_normalised_padded(img))[0].numpy().transpose(1, 2, 0)  # channels last
    np.testing.assert_array_equal(got, want)
    assert fake.calls[0] == (1, 3, 112, 140) and len(fake.calls) == 2  # ours, then the reference


def test_batches_and_progress(fake):
    img = _image((300, 330))
    seen = []
    vit_patch_features(img, fake, tile_size=112, tile_overlap=28, batch_size=4, tiling="always",
                       progress=lambda d, t: seen.append((d, t)))
    # 22 x 24 tokens, windows of 8 with stride 6: starts (0, 6, 12, 14) x (0, 6, 12, 16)
    assert [c[0] for c in fake.calls] == [4, 4, 4, 4]
    assert all(c[1:] == (3, 112, 112) for c in fake.calls)
    assert seen == [(0, 16), (4, 16), (8, 16), (12, 16), (16, 16)]


def test_progress_can_cancel(fake):
    class Stop(Exception):
        pass

    def cb(done, total):
        if done:
            raise Stop

    with pytest.raises(Stop):
        vit_patch_features(_image((300, 300)), fake, tile_size=112, tile_overlap=28, batch_size=1, progress=cb,
                           tiling="always")
    assert len(fake.calls) == 1


def test_blending_weights_favour_window_interiors():
    """A backbone that outputs its window's index shows the ramps in the blended tokens."""

    class Counter(FakeBackbone):
        def forward_features(self, x):
            n = len(self.calls)
            self.calls.append(tuple(x.shape))
            return torch.full((x.shape[0], self.embed_dim, x.shape[2] // 14, x.shape[3] // 14), float(n))

    bb = Counter(dim=1)
    tok = vit_patch_features(_image((14, 14 * 20)), bb, tile_size=14 * 12, tile_overlap=14 * 4, batch_size=1,
                             tiling="always")[0, :, 0]
    # windows start at tokens 0 and 8 (12 wide): overlap tokens 8..11 ramp 0 -> 1 linearly
    np.testing.assert_allclose(tok[:8], 0.0)
    np.testing.assert_allclose(tok[8:12], [0.2, 0.4, 0.6, 0.8], atol=1e-6)
    np.testing.assert_allclose(tok[12:], 1.0)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (1, 200), (13, 15)])
def test_tiny_and_thin_images(fake, shape):
    img = _image(shape)
    tok = vit_patch_features(img, fake)
    assert tok.shape == (-(-shape[0] // 14), -(-shape[1] // 14), 8)
    for up in ("bilinear", "guided"):
        f = vit_features(img, fake, upsample=up)
        assert f.shape == shape + (8,) and np.isfinite(f).all()


@pytest.mark.parametrize("kw, match", [
    ({"tile_size": 10}, "tile_size"),
    ({"tile_size": 56, "tile_overlap": 56}, "tile_overlap"),
    ({"tile_overlap": -1}, "tile_overlap"),
    ({"batch_size": 0}, "batch_size"),
    ({"device": "meta"}, "device"),
    ({"tiling": "never"}, "tiling"),
    ({"budget_mib": 0}, "budget_mib"),
    ({"budget_mib": "2GB"}, "budget_mib"),
])
def test_bad_parameters(fake, kw, match):
    with pytest.raises(VitsegError, match=match):
        vit_patch_features(_image((30, 30)), fake, **kw)
    with pytest.raises(VitsegError, match="upsample"):
        vit_features(_image((30, 30)), fake, upsample="nearest")


def test_autocast_on_cpu_is_close(fake):
    img = _image((60, 70))
    a = vit_patch_features(img, fake, autocast=False)
    b = vit_patch_features(img, fake, autocast=True)
    assert b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=0.05)


def test_vit_features_pixel_grid(fake):
    img = _image((60, 75))
    tok = vit_patch_features(img, fake)
    bil = vit_features(img, fake, upsample="bilinear")
    assert bil.shape == (60, 75, 8) and bil.dtype == np.float32
    # tokens live on the padded (70, 84) grid, token (i, j) centred at (14 i + 6.5, 14 j + 6.5)
    np.testing.assert_array_equal(bil, upsample_bilinear(tok, (60, 75), patch_size=14))
    np.testing.assert_allclose(bil[0, 0], tok[0, 0], atol=1e-6)           # corner: edge value kept
    # pixel (34, 35) sits 0.5 px from token (2, 2)'s centre (34.5, 34.5): weights 13.5/14 and 0.5/14
    wy = np.array([0.5, 13.5]) / 14                                        # tokens 1, 2 along rows
    wx = np.array([13.5, 0.5]) / 14                                        # tokens 2, 3 along columns
    want = np.einsum("i,j,ijd->d", wy, wx, tok[1:3, 2:4])
    np.testing.assert_allclose(bil[34, 35], want, atol=1e-5)
    gui = vit_features(img, fake, upsample="guided", guided_radius=4)
    assert gui.shape == bil.shape and np.isfinite(gui).all()
    assert np.abs(gui - bil).max() > 1e-3


@pytest.mark.parametrize("upsample", ["bilinear", "guided"])
def test_pca_on_tokens_equals_pca_on_pixels(fake, upsample):
    img = _image((70, 84))
    pca = PCAReducer(3).fit(vit_patch_features(img, fake).reshape(-1, 8))
    full = vit_features(img, fake, upsample=upsample)
    reduced = vit_features(img, fake, upsample=upsample, pca=pca)
    assert reduced.shape == (70, 84, 3)
    np.testing.assert_allclose(reduced, pca.transform(full), atol=1e-4)


def test_rgb_image_uses_mean_guide(fake):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 50, 3)).astype(np.uint8)
    f = vit_features(rgb, fake)
    assert f.shape == (40, 50, 8)
    np.testing.assert_array_equal(f, vit_features(np.moveaxis(rgb, -1, 0), fake, channel_axis=0))


# -- real (random-weight) DINOv2 ----------------------------------------------------------------
def test_dinov2_single_tile_exact_and_multi_tile(dinov2):
    small = _image((100, 130))
    tok = vit_patch_features(small, dinov2)
    with torch.inference_mode():
        want = dinov2.forward_features(_normalised_padded(small))[0].numpy().transpose(1, 2, 0)
    assert tok.shape == (8, 10, 384) and tok.flags.c_contiguous
    np.testing.assert_array_equal(tok, want)

    # several windows (smaller than the default 518 px to keep the test quick on a CPU)
    big = _image((300, 330), seed=1)
    calls = []
    tok = vit_patch_features(big, dinov2, tile_size=224, tile_overlap=56, batch_size=2, tiling="always",
                             progress=lambda d, t: calls.append((d, t)))
    assert tok.shape == (22, 24, 384) and tok.dtype == np.float32 and np.isfinite(tok).all()
    assert calls[-1] == (4, 4)      # starts (0, 6) x (0, 8) in windows of 16 tokens
    untiled = vit_patch_features(big, dinov2, tile_size=10_000)
    # DINOv2's position embedding makes windows differ from the whole image, a little
    cos = (tok * untiled).sum(-1) / np.linalg.norm(tok, axis=-1) / np.linalg.norm(untiled, axis=-1)
    assert cos.mean() > 0.9, cos.mean()
    feats = vit_features(small, dinov2, upsample="guided")
    assert feats.shape == (100, 130, 384) and feats.dtype == np.float32 and np.isfinite(feats).all()


def test_featurizer_tokens_are_channels_last(dinov2):
    """Featurizer.vit_tokens and fit_pca use the (gh, gw, D) layout of vit_patch_features."""
    from napari_vitseg.features.config import FeatureConfig
    from napari_vitseg.features.stack import Featurizer

    img = _image((60, 75))
    cfg = FeatureConfig(backbone="dinov2_vits14_reg", classical=False, vit_pca=4, upsample="bilinear")
    fz = Featurizer(cfg, backbone=dinov2, device="cpu")
    raw = vit_patch_features(img, dinov2, tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap)
    tok = fz.vit_tokens(img)
    assert tok.shape == (5, 6, 4) and tok.dtype == np.float32 and tok.flags.c_contiguous
    # BLAS may round the projection of differently stored rows differently: close, not equal
    np.testing.assert_allclose(tok, fz.pca_.transform(raw), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fz.compute(img), vit_features(img, dinov2, upsample="bilinear", pca=fz.pca_))
    basis = fz.pca_.to_arrays()
    fz.fit_pca(raw.reshape(-1, 384))  # (N, D) rows: the same basis
    for k, v in fz.pca_.to_arrays().items():
        np.testing.assert_array_equal(v, basis[k])
    for bad in (np.ascontiguousarray(raw.transpose(2, 0, 1)), raw[..., :5], raw[None]):
        with pytest.raises(VitsegError, match="channels last"):
            fz.fit_pca(bad)


# -- PCA -------------------------------------------------------------------------------------
def test_pca_matches_sklearn_and_round_trips():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2000, 10)) @ rng.normal(size=(10, 10))).astype(np.float32) + 3
    ours = PCAReducer(4).fit(x)
    ref = PCA(4).fit(x)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(np.abs(ours.components_), np.abs(ref.components_), atol=1e-4)
    np.testing.assert_allclose(ours.components_ @ ours.components_.T, np.eye(4), atol=1e-10)
    # deterministic sign: each axis's largest-magnitude loading is positive
    assert np.all(ours.components_[np.arange(4), np.abs(ours.components_).argmax(1)] > 0)
    y = ours.transform(x)
    assert y.dtype == np.float32 and y.shape == (2000, 4)
    np.testing.assert_allclose(np.abs(y), np.abs(ref.transform(x)), atol=1e-3)
    back = PCAReducer.from_dict(json.loads(json.dumps(ours.to_dict())))
    np.testing.assert_array_equal(back.transform(x), y)
    arrs = PCAReducer.from_arrays({**ours.to_arrays(), "other": np.zeros(1)})
    np.testing.assert_array_equal(arrs.transform(x), y)
    tokens = x[:30].reshape(5, 6, 10)  # a (h, w, D) token grid, as vit_patch_features returns
    np.testing.assert_allclose(ours.transform(tokens), y[:30].reshape(5, 6, 4), atol=1e-5)


def test_pca_subsample_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 50, 6)).astype(np.float32)
    a = PCAReducer(2, max_samples=500, random_state=3).fit(x)
    b = PCAReducer(2, max_samples=500, random_state=3).fit(x)
    c = PCAReducer(2, max_samples=500, random_state=4).fit(x)
    assert a.n_samples_seen_ == 500
    np.testing.assert_array_equal(a.components_, b.components_)
    assert not np.array_equal(a.components_, c.components_)


def test_pca_errors():
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(VitsegError, match="not fitted"):
        PCAReducer(2).transform(x)
    with pytest.raises(VitsegError, match="n_components"):
        PCAReducer(5).fit(x)
    with pytest.raises(VitsegError, match="n_components"):
        PCAReducer(0).fit(x)
    pca = PCAReducer(2).fit(np.random.default_rng(0).normal(size=(10, 4)))
    with pytest.raises(VitsegError, match="fitted on 4"):
        pca.transform(np.zeros((3, 5), np.float32))
    with pytest.raises(VitsegError, match="PCA"):
        PCAReducer.from_arrays({})
    with pytest.raises(VitsegError, match="Inconsistent"):
        PCAReducer.from_dict({**pca.to_dict(), "n_components": 3})


def test_feature_names():
    names = vit_feature_names("dinov2_vits14_reg", 384)
    assert names[0] == "dinov2_vits14_reg_000" and names[-1] == "dinov2_vits14_reg_383" and len(names) == 384
    assert vit_feature_names("dinov2_vitg14", 1536)[-1] == "dinov2_vitg14_1535"
    assert vit_feature_names("b", 3, pca=True) == ["b_pc000", "b_pc001", "b_pc002"]


# -- whole-image inference under a memory budget (issue 12) -----------------------------------
def test_attention_bytes_and_the_budget_rule():
    from napari_vitseg.backbones import get_backbone_cfg
    from napari_vitseg.features.vit import attention_bytes, whole_image_fits

    assert attention_bytes(10, 3) == 4 * 3 * 100 * 2
    assert attention_bytes(10, 3, bias=True) == 4 * 3 * 100 * 3
    vits, alibi, vitg = (get_backbone_cfg(n) for n in ("dinov2_vits14_reg", "alibi_dv2_vits14_reg", "dinov2_vitg14"))
    # 1134 px: 81 x 81 + 5 tokens = 6566 -> 987 MiB x 2 for ViT-S; 82 x 82 does not fit
    assert whole_image_fits((1134, 1134), vits) and not whole_image_fits((1135, 1135), vits)
    n = 81 * 81 + 5
    assert attention_bytes(n, 6) <= 2048 * 2**20 < attention_bytes(82 * 82 + 5, 6)
    assert whole_image_fits((1022, 1022), alibi) and not whole_image_fits((1036, 1036), alibi)  # bias counted
    assert whole_image_fits((798, 798), vitg) and not whole_image_fits((812, 812), vitg)
    assert not whole_image_fits((518, 518), vits, budget_mib=50) and whole_image_fits((518, 518), vits, budget_mib=90)


class _Recorder(FakeBackbone):
    """A fake with a registered name and ViT-S's attention shape (6 heads, 5 prefix tokens)."""

    name = "dinov2_vits14_reg"

    def __init__(self):
        super().__init__()
        self.cfg = SimpleNamespace(name=self.name, mean=MEAN, std=STD, num_heads=6, num_prefix_tokens=5,
                                   position="learned", patch_size=14)

    def forward_features(self, x, pos_embed_interp=None):
        return super().forward_features(x)


def test_auto_runs_whole_below_the_budget_and_tiles_above(fake):
    img = _image((700, 560))  # 50 x 40 tokens
    whole = vit_patch_features(img, fake, tiling="auto")
    assert fake.calls == [(1, 3, 700, 560)]
    with torch.inference_mode():
        want = fake.forward_features(_normalised_padded(img))[0].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(whole, want)

    rec = _Recorder()
    need = 4 * 6 * (50 * 40 + 5) ** 2 * 2 / 2**20  # 184 MiB
    got = vit_patch_features(img, rec, tiling="auto", budget_mib=need - 1)  # just above the budget: tiles
    assert rec.calls == [(4, 3, 518, 518)]  # 2 x 2 windows of 518 px in one batch of 4
    np.testing.assert_array_equal(got, vit_patch_features(img, rec, tiling="always"))
    rec.calls.clear()
    vit_patch_features(img, rec, tiling="auto", budget_mib=need)  # exactly the budget: whole
    assert rec.calls == [(1, 3, 700, 560)]


@pytest.mark.parametrize("name", ["dinov2_vits14", "alibi_dv2_vits14_reg"])
def test_whole_image_equals_one_forward_and_differs_from_tiles(name):
    """Random-weight backbones: 'auto' gives exactly one forward pass of the padded image; tiling
    (here 224-px windows, to keep the test small) changes the features."""
    from napari_vitseg.backbones import create_backbone

    bb = create_backbone(name, pretrained=False, seed=3, init_values=1.0)
    img = _image((290, 320), seed=2).astype(np.uint8)  # not a multiple of 14: padded to 294 x 322
    whole = vit_patch_features(img, bb, tile_size=224, tile_overlap=56)
    with torch.inference_mode():  # uint8 / 255, ImageNet mean / std, reflection-padded
        want = bb.forward_features(_normalised_padded(img))[0].numpy().transpose(1, 2, 0)
    assert whole.shape == (21, 23, 384)
    np.testing.assert_array_equal(whole, want)
    tiled = vit_patch_features(img, bb, tile_size=224, tile_overlap=56, tiling="always")
    rel = np.linalg.norm(tiled - whole) / np.linalg.norm(whole)
    assert rel > 1e-3, rel


def _old_cfg(version):
    d = {"backbone": "dinov2_vits14_reg", "classical": False, "vit_pca": None, "upsample": "bilinear"}
    if version == 2:
        d.update(version=2, intensity="reference", pos_embed_interp="reference", vit_autocast=False)
    return d


@pytest.mark.parametrize("version", [1, 2])
def test_old_configs_keep_518_px_tiles(version):
    from napari_vitseg.features.config import FEATURE_CONFIG_VERSION, V2_DEFAULTS, FeatureConfig
    from napari_vitseg.features.stack import Featurizer

    assert FEATURE_CONFIG_VERSION == 6 and V2_DEFAULTS == {"vit_tiling": "always", "vit_budget_mib": 2048}
    cfg = FeatureConfig.from_dict(_old_cfg(version))
    assert (cfg.vit_tiling, cfg.tile_size, cfg.tile_overlap) == ("always", 518, 112)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["version"] == FEATURE_CONFIG_VERSION
    with pytest.raises(VitsegError, match="Unknown feature config keys.*vit_tiling"):
        FeatureConfig.from_dict({**_old_cfg(version), "vit_tiling": "auto"})
    rec = _Recorder()
    img = _image((700, 560))
    Featurizer(cfg, backbone=rec).vit_tokens(img)
    assert rec.calls == [(4, 3, 518, 518)]  # the old 518-px windows
    rec.calls.clear()
    new = FeatureConfig(backbone="dinov2_vits14_reg", classical=False, vit_pca=None, upsample="bilinear")
    assert (new.vit_tiling, new.vit_budget_mib) == ("auto", 2048)
    Featurizer(new, backbone=rec).vit_tokens(img)
    assert rec.calls == [(1, 3, 700, 560)]  # a new config: the whole image
    rec.calls.clear()
    Featurizer(new.replace(vit_budget_mib=100), backbone=rec).vit_tokens(img)
    assert rec.calls == [(4, 3, 518, 518)]


@pytest.mark.parametrize("field, bad", [("vit_tiling", "never"), ("vit_budget_mib", 0), ("vit_budget_mib", 1.5)])
def test_bad_tiling_config(field, bad):
    from napari_vitseg.features.config import FeatureConfig

    with pytest.raises(VitsegError, match=field):
        FeatureConfig(**{field: bad})
