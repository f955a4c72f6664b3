"""The scale-space pyramid of the classical features (``pyramid=True``, feature config version 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_vitseg._validation import VitsegError
from napari_vitseg.features.classical import (
    classical_feature_names,
    classical_features,
    classical_halo,
    pyramid_factor,
)
from napari_vitseg.features.config import (
    ALL_FAMILIES,
    DEFAULT_FAMILIES,
    DEFAULT_SIGMAS,
    FeatureConfig,
)
from napari_vitseg.features.stack import Featurizer

TEM = Path(__file__).resolve().parents[3] / "shared" / "data" / "tem_nanoparticles" / "image.tif"
LOCAL = ("gaussian", "gradient", "hessian", "structure")  # the default's per-scale families


@pytest.fixture(scope="module")
def tem():
    tifffile = pytest.importorskip("tifffile")
    if not TEM.exists():
        pytest.skip(f"shared data missing: {TEM}")
    return tifffile.imread(TEM)[:301, :257].astype(np.float32)  # odd sizes: partial 2 x 2 blocks


def test_pyramid_factor():
    assert [pyramid_factor(s) for s in (0.5, 1, 2, 4, 7.9, 8, 12, 16, 31, 32, 64)] == [1, 1, 1, 1, 1, 2, 2, 4, 4, 8, 16]


def test_small_scales_unchanged_large_scales_close(tem):
    """Scales below 8 px and the bilateral filters are computed exactly as without the pyramid;
    reduced scales are the same quantities up to the interpolation: mean error < 0.5 % of each
    channel's range."""
    names = classical_feature_names(DEFAULT_SIGMAS, DEFAULT_FAMILIES)
    exact = classical_features(tem, sigmas=DEFAULT_SIGMAS, families=DEFAULT_FAMILIES)
    pyr = classical_features(tem, sigmas=DEFAULT_SIGMAS, families=DEFAULT_FAMILIES, pyramid=True)
    reduced = [i for i, n in enumerate(names) if n.endswith(("_s8", "_s16")) and not n.startswith("bilateral")]
    same = [i for i in range(len(names)) if i not in reduced]
    assert len(reduced) == 12
    np.testing.assert_array_equal(pyr[..., same], exact[..., same])
    span = exact.max(axis=(0, 1)) - exact.min(axis=(0, 1))
    err = np.abs(pyr - exact).mean(axis=(0, 1)) / span
    assert (err[reduced] < 5e-3).all(), dict(zip(np.array(names)[reduced], err[reduced], strict=True))
    assert (err[reduced] > 0).all()  # they were computed on the reduced levels


def test_linear_ramp_is_exact():
    """Interpolation is exact for a linear image: away from the border the reduced scales give
    the ramp's Gaussian, gradient s * |slope| and zero Hessian."""
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    img = 0.3 * xx + 0.2 * yy
    f = classical_features(img, sigmas=(16.0,), families=("gaussian", "gradient", "hessian"), pyramid=True)
    inner = (slice(100, 156), slice(100, 156))
    np.testing.assert_allclose(f[inner][..., 1], img[inner], atol=1e-3)
    np.testing.assert_allclose(f[inner][..., 2], 16 * np.hypot(0.3, 0.2), rtol=1e-4)
    assert np.abs(f[inner][..., 3:]).max() < 1e-3


@pytest.mark.parametrize("families", [LOCAL, ("gaussian", "dog", "variance"), ALL_FAMILIES])
def test_tiles_with_halo_equal_whole_plane(tem, families):
    """A tile that starts on a multiple of the largest reduction factor and has
    ``classical_halo(..., pyramid=True)`` rows of context gives the whole plane's features."""
    families = tuple(f for f in families if f not in ("context", "bilateral"))  # whole-plane families
    sigmas = (1.0, 8.0, 16.0)
    h, step = classical_halo(sigmas, families, pyramid=True), max(pyramid_factor(s) for s in sigmas)
    assert h > classical_halo(sigmas, families)  # the chain of reduced levels reaches further
    whole = classical_features(tem, sigmas=sigmas, families=families, pyramid=True)
    scale = np.abs(whole).max(axis=(0, 1))
    for y0, y1 in ((0, 40), (151, 170), (260, 301)):
        a0, a1 = max(0, y0 - h) // step * step, min(tem.shape[0], y1 + h)
        tile = classical_features(tem[a0:a1], sigmas=sigmas, families=families, pyramid=True)[y0 - a0:y1 - a0]
        assert (np.abs(tile - whole[y0:y1]).max(axis=(0, 1)) <= 1e-4 * scale + 1e-4).all(), (y0, y1)


@pytest.mark.parametrize("rows", [(0, 64), (37, 301), (150, 151), (290, 301)])
def test_featurizer_bands_equal_whole_plane(tem, rows):
    fz = Featurizer(FeatureConfig())
    assert fz.config.pyramid
    whole = fz.compute(tem)
    band = fz.compute(tem, rows=rows)
    scale = np.abs(whole).max(axis=(0, 1))
    assert (np.abs(band - whole[rows[0]:rows[1]]).max(axis=(0, 1)) <= 1e-4 * scale + 1e-4).all()


def test_version4_config_is_unchanged(tem):
    """A feature config of version 4 (every saved file before version 5) computes what it did."""
    cfg4 = FeatureConfig.from_dict({"version": 4})
    exact = classical_features(tem, sigmas=DEFAULT_SIGMAS, families=DEFAULT_FAMILIES)
    np.testing.assert_array_equal(Featurizer(cfg4).compute(tem), exact)
    assert not np.array_equal(Featurizer(FeatureConfig()).compute(tem), exact)


@pytest.mark.parametrize("families, sigmas", [(LOCAL, DEFAULT_SIGMAS), (("gaussian", "dog", "variance"), (8.0, 16.0)),
                                              (("dog",), (8.0, 16.0, 32.0)), (ALL_FAMILIES, (12.0,))])
def test_cpu_and_torch_agree(tem, families, sigmas):
    pytest.importorskip("torch")
    cpu = classical_features(tem, sigmas=sigmas, families=families, pyramid=True)
    tch = classical_features(tem, sigmas=sigmas, families=families, pyramid=True, backend="torch", device="cpu")
    scale = np.abs(cpu).max(axis=(0, 1))
    err = np.abs(tch - cpu).max(axis=(0, 1))
    names = classical_feature_names(sigmas, families)
    bad = [(n, float(e), float(s)) for n, e, s in zip(names, err, scale, strict=True) if e > 2e-4 * s + 1e-5]
    assert not bad, bad


def test_bilateral_is_not_reduced(tem):
    """The whole-plane families are the same with and without the pyramid (a reduced 4-px
    bilateral filter cost sandstone_xrm 0.015 mIoU), in the whole-plane path and the bands'."""
    from napari_vitseg.features.classical import whole_plane_features

    fams = ("gaussian", "bilateral")
    ref = whole_plane_features(tem, fams)
    for pyramid in (False, True):
        np.testing.assert_array_equal(classical_features(tem, sigmas=(1.0,), families=fams, pyramid=pyramid)[..., -3:],
                                      ref)


def test_dog_and_variance_stay_at_full_resolution(tem):
    fams = ("gaussian", "dog", "variance")
    names = classical_feature_names((4.0, 8.0, 16.0), fams)
    full = [i for i, n in enumerate(names) if n.startswith(("dog", "stddev", "intensity"))]
    a = classical_features(tem, sigmas=(4.0, 8.0, 16.0), families=fams, pyramid=True)
    b = classical_features(tem, sigmas=(4.0, 8.0, 16.0), families=fams)
    np.testing.assert_array_equal(a[..., full], b[..., full])


def test_tiny_images():
    for shape in [(1, 1), (1, 7), (5, 1), (3, 4), (9, 2)]:
        img = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        f = classical_features(img, sigmas=(1, 8, 16), pyramid=True)
        assert f.shape == shape + (len(classical_feature_names((1, 8, 16))),) and np.isfinite(f).all()


def test_bad_pyramid_argument(tem):
    with pytest.raises(VitsegError, match="pyramid must be True or False"):
        classical_features(tem, pyramid="yes")


@pytest.mark.parametrize("rows", [None, (37, 101)])
def test_featurizer_computes_into_a_reused_buffer(tem, rows):
    """A buffer large enough (Featurizer.buffer_size) is used and the result is its view, equal to
    a fresh computation; a small one is ignored."""
    fz = Featurizer(FeatureConfig())
    fresh = fz.compute(tem, rows=rows)
    big = np.full(fz.buffer_size(tem.shape), np.nan, np.float32)
    got = fz.compute(tem, rows=rows, buffer=big)
    assert np.shares_memory(got, big) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, fresh)
    small = np.zeros(10, np.float32)
    got = fz.compute(tem, rows=rows, buffer=small)
    assert not np.shares_memory(got, small)
    np.testing.assert_array_equal(got, fresh)
