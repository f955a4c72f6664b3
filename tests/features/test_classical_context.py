"""Tests of the opt-in classical families: 'variance', 'membrane', 'context' and 'bilateral'
(napari_vitseg.features.classical, and how the Featurizer computes them in row bands)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig, Featurizer
from napari_vitseg.features.classical import (
    BILATERAL_SIGMAS,
    CONTEXT_SIGMAS,
    MEMBRANE_RADIUS,
    classical_feature_names,
    classical_features,
    classical_halo,
    context_features,
    whole_plane_features,
)
from napari_vitseg.features.config import ALL_FAMILIES, CLASSICAL_FAMILIES, EXTRA_FAMILIES

SIGMAS = (1.0, 2.0, 4.0)


def _rel_err(a, b):
    """Largest error per channel relative to the channel's range (+ a floor)."""
    scale = np.abs(b).max(axis=(0, 1)) + 1e-6
    return (np.abs(a - b).max(axis=(0, 1)) / scale).max()


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(0).random((150, 70), dtype=np.float32) * 100 + 500


# -- names, counts, halo ----------------------------------------------------------------------
def test_families_are_opt_in_and_old_dicts_migrate():
    """New families only append channels; the default (version 4) is gaussian, gradient,
    hessian, structure and bilateral; dictionaries of versions 1 to 3 keep what they computed."""
    assert FeatureConfig().families == ("gaussian", "gradient", "hessian", "structure", "bilateral")
    assert FeatureConfig.from_dict({"version": 3, "backbone": None}).families == CLASSICAL_FAMILIES + ("bilateral",)
    assert ALL_FAMILIES == CLASSICAL_FAMILIES + EXTRA_FAMILIES
    assert len(classical_feature_names((1, 2, 4, 8, 16))) == 40
    with_bilateral = Featurizer(FeatureConfig(sigmas=(1, 2, 4, 8, 16),
                                              families=CLASSICAL_FAMILIES + ("bilateral",))).feature_names()
    assert len(with_bilateral) == 43 and with_bilateral[:40] == classical_feature_names((1, 2, 4, 8, 16))
    for version in (1, 2):  # saved files name their families; a dictionary that does not gets the old default
        assert FeatureConfig.from_dict({"version": version, "backbone": None}).families == CLASSICAL_FAMILIES
        old = {"version": version, "backbone": None, "families": ["gaussian", "dog"]}
        assert FeatureConfig.from_dict(old).families == ("gaussian", "dog")
    cfg = FeatureConfig(families=CLASSICAL_FAMILIES + ("bilateral",))
    d = cfg.to_dict()
    assert d["families"][-1] == "bilateral" and FeatureConfig.from_dict(d) == cfg


@pytest.mark.parametrize("extra, added", [
    (("variance",), ["stddev_s1", "stddev_s2", "stddev_s4"]),
    (("membrane",), ["membrane_max", "membrane_min", "membrane_mean", "membrane_std"]),
    (("context",), [f"context_{k}_s{s:g}" for s in CONTEXT_SIGMAS for k in ("mean", "diff", "std")]),
    (("bilateral",), ["bilateral_s2", "bilateral_s4", "bilateral_s8"]),
])
def test_names_counts_and_order(noise, extra, added):
    base = classical_feature_names(SIGMAS, CLASSICAL_FAMILIES)
    names = classical_feature_names(SIGMAS, CLASSICAL_FAMILIES + extra)
    assert set(names) == set(base) | set(added) and len(names) == len(set(names))
    # the old channels keep their relative order; the per-image ones come last
    assert [n for n in names if n in base] == base
    if extra != ("variance",):
        assert names[-len(added):] == added
    else:  # one stddev channel at the end of each scale block
        assert names.index("stddev_s1") == names.index("gaussian_s2") - 1
    feats = classical_features(noise, sigmas=SIGMAS, families=CLASSICAL_FAMILIES + extra)
    assert feats.shape == noise.shape + (len(names),) and feats.dtype == np.float32 and np.isfinite(feats).all()
    fz = Featurizer(FeatureConfig(sigmas=SIGMAS, families=CLASSICAL_FAMILIES + extra))
    assert fz.feature_names() == names and fz.n_features(2) == 2 * len(names)
    # a channel does not depend on which other families are computed with it
    alone = classical_features(noise, sigmas=SIGMAS, families=extra, include_intensity=False)
    for i, n in enumerate(classical_feature_names(SIGMAS, extra, include_intensity=False)):
        np.testing.assert_allclose(alone[..., i], feats[..., names.index(n)], rtol=1e-6, atol=1e-4, err_msg=n)


def test_halo():
    assert classical_halo(SIGMAS, ("variance",)) == classical_halo(SIGMAS, ("gaussian",)) == 16
    assert classical_halo(SIGMAS, ("membrane",)) == MEMBRANE_RADIUS == classical_halo((0.5,), ("gaussian", "membrane"))
    assert classical_halo(SIGMAS, ("context",)) == 0  # whole-plane family, see context_features
    assert classical_halo(SIGMAS, ("bilateral",)) == 0  # whole-plane family (intensity percentiles)
    assert classical_halo(SIGMAS, ALL_FAMILIES) == classical_halo(SIGMAS, CLASSICAL_FAMILIES)


@pytest.mark.parametrize("families", [("variance",), ("membrane",), ("hessian", "variance", "membrane")])
def test_row_bands_with_halo_equal_whole_plane(noise, families):
    h = classical_halo(SIGMAS, families)
    whole = classical_features(noise, sigmas=SIGMAS, families=families)
    for y0, y1 in ((0, 20), (60, 90), (140, 150)):
        a0, a1 = max(0, y0 - h), min(noise.shape[0], y1 + h)
        band = classical_features(noise[a0:a1], sigmas=SIGMAS, families=families)[y0 - a0:y1 - a0]
        assert _rel_err(band, whole[y0:y1]) < 2e-5, (families, y0)
    if "membrane" in families and h == MEMBRANE_RADIUS:  # box-like kernels: one pixel less halo shows
        short = classical_features(noise[60 - h + 1:90 + h - 1], sigmas=SIGMAS, families=families)[h - 1:1 - h]
        assert _rel_err(short, whole[60:90]) > 1e-3


@pytest.mark.parametrize("nc", [1, 2])
def test_featurizer_bands_equal_whole_plane_with_context(nc):
    """'context' needs the whole plane: the Featurizer takes it from there for every band."""
    rng = np.random.default_rng(5)
    img = ndi.gaussian_filter(rng.random((230, 90) + ((nc,) if nc > 1 else ())), 3) * 4000
    img = img.astype(np.uint16)
    fz = Featurizer(FeatureConfig(sigmas=SIGMAS, families=("gaussian", "dog") + EXTRA_FAMILIES))
    whole = fz.compute(img)
    assert whole.shape == img.shape[:2] + (fz.n_features(nc),)
    for key in ("plane", None):  # memoised and not
        bands = np.concatenate([fz.compute(img, rows=(a, min(230, a + 64)), key=key) for a in range(0, 230, 64)])
        assert _rel_err(bands, whole) < 2e-5
        names = fz.feature_names(nc)
        ctx = [i for i, n in enumerate(names) if "context" in n or "bilateral" in n]
        assert len(ctx) == (6 + len(BILATERAL_SIGMAS)) * nc
        np.testing.assert_array_equal(bands[..., ctx], whole[..., ctx])  # exactly the whole plane's


# -- definitions ------------------------------------------------------------------------------
def test_stddev_is_gaussian_weighted_local_std(noise):
    f = classical_features(noise, sigmas=SIGMAS, families=("variance",), include_intensity=False)
    x = noise.astype(np.float64)
    for i, s in enumerate(SIGMAS):
        m = ndi.gaussian_filter(x, s, mode="mirror")
        v = ndi.gaussian_filter(x * x, s, mode="mirror") - m * m
        np.testing.assert_allclose(f[..., i], np.sqrt(np.maximum(v, 0)), rtol=1e-3, atol=1e-2)
    const = classical_features(np.full((20, 30), 9.0), sigmas=SIGMAS, families=("variance",), include_intensity=False)
    np.testing.assert_allclose(const, 0, atol=1e-4)


def test_membrane_responds_to_thin_lines_in_any_orientation():
    img = np.zeros((81, 81), np.float32)
    rr = np.arange(10, 71)
    img[rr, rr] = 1.0  # diagonal membrane
    img[40, 5:76] = 1.0  # horizontal one
    names = classical_feature_names((), ("membrane",), include_intensity=False)
    f = dict(zip(names, np.moveaxis(classical_features(img, sigmas=(), families=("membrane",),
                                                        include_intensity=False), -1, 0), strict=True))
    # on a line the best-aligned kernel stays on it all along: its mean is ~1
    assert f["membrane_max"][25, 25] > 0.9 and f["membrane_max"][40, 20] > 0.9
    assert f["membrane_mean"][25, 25] < 0.3 and f["membrane_std"][25, 25] > 0.2
    # off the lines (3 px away) no orientation sees much
    assert f["membrane_max"][25, 29] < 0.3 and f["membrane_max"][44, 20] < 0.3
    assert (f["membrane_min"] <= f["membrane_mean"] + 1e-6).all() and (f["membrane_mean"] <= f["membrane_max"] + 1e-6).all()


def test_membrane_is_rotation_invariant(noise):
    img = noise[:70, :70]
    fams = ("membrane",)
    f = classical_features(img, sigmas=(), families=fams, include_intensity=False)
    r = classical_features(np.ascontiguousarray(np.rot90(img)), sigmas=(), families=fams, include_intensity=False)
    np.testing.assert_allclose(np.rot90(f), r, rtol=1e-5, atol=1e-3)


def test_context_definition():
    # constant plane: mean = constant, no difference, no contrast
    c = context_features(np.full((50, 70), 12.0, np.float32))
    np.testing.assert_allclose(c[..., 0::3], 12.0, rtol=1e-6)
    np.testing.assert_allclose(c[..., 1::3], 0.0, atol=1e-5)
    np.testing.assert_allclose(c[..., 2::3], 0.0, atol=1e-3)
    # a real-sized smooth plane: the downsampled Gaussian approximates the full-resolution one
    rng = np.random.default_rng(2)
    img = (ndi.gaussian_filter(rng.random((400, 330)), 6) * 1000).astype(np.float32)
    c = context_features(img)
    rng_ = float(img.max() - img.min())
    for k, s in enumerate(CONTEXT_SIGMAS):
        ref = ndi.gaussian_filter(img.astype(np.float64), s, mode="mirror", truncate=4.0)
        interior = (slice(40, -40), slice(40, -40))
        err = np.abs(c[..., 3 * k] - ref)[interior].max()
        assert err < 0.02 * rng_, (s, err, rng_)
        np.testing.assert_allclose(c[..., 3 * k + 1], img - c[..., 3 * k], atol=1e-3)
        # local contrast at s: the Gaussian-weighted standard deviation
        var = ndi.gaussian_filter(img.astype(np.float64) ** 2, s, mode="mirror") - ref ** 2
        std_ref = np.sqrt(np.maximum(var, 0))[interior]
        assert np.abs(c[..., 3 * k + 2][interior] - std_ref).max() < 0.1 * std_ref.max()
    # classical_features of a whole plane carries exactly these channels last
    f = classical_features(img, sigmas=(1,), families=("gaussian", "context"))
    np.testing.assert_array_equal(f[..., -6:], c)


def test_bilateral_smooths_noise_and_keeps_edges():
    rng = np.random.default_rng(4)
    img = np.zeros((120, 120), np.float32)
    img[:, 60:] = 100.0
    img += rng.normal(0, 5, img.shape).astype(np.float32)
    names = classical_feature_names((4,), ("gaussian", "bilateral"), include_intensity=False)
    f = dict(zip(names, np.moveaxis(classical_features(img, sigmas=(4,), families=("gaussian", "bilateral"),
                                                        include_intensity=False), -1, 0), strict=True))
    for s in (2, 4, 8):
        b = f[f"bilateral_s{s}"]
        assert b[:, 10:50].std() < 0.6 * img[:, 10:50].std()  # flat regions are smoothed
        # next to the edge the bilateral keeps each side's level, the Gaussian mixes them
        assert abs(b[:, 58].mean() - 0.0) < 5 and abs(b[:, 61].mean() - 100.0) < 5
    assert f["gaussian_s4"][:, 58].mean() > 20
    # the range sigma follows the plane's intensity range: affine changes of the intensity commute
    a = whole_plane_features(img, ("bilateral",))
    b = whole_plane_features(3.0 * img + 1000.0, ("bilateral",))
    np.testing.assert_allclose(b, 3.0 * a + 1000.0, rtol=1e-5, atol=1e-2)
    const = whole_plane_features(np.full((20, 30), 7.0), ("bilateral",))
    np.testing.assert_allclose(const, 7.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 4), (17, 9)])
def test_tiny_images(shape):
    img = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    f = classical_features(img, sigmas=(1, 16), families=ALL_FAMILIES)
    assert f.shape == shape + (len(classical_feature_names((1, 16), ALL_FAMILIES)),) and np.isfinite(f).all()


def test_cpu_and_torch_backends_agree(noise):
    pytest.importorskip("torch")
    fams = ("gaussian", "dog") + EXTRA_FAMILIES
    cpu = classical_features(noise, sigmas=SIGMAS, families=fams, backend="cpu")
    tch = classical_features(noise, sigmas=SIGMAS, families=fams, backend="torch", device="cpu")
    assert _rel_err(tch, cpu) < 1e-5


def test_config_roundtrip_and_errors():
    cfg = FeatureConfig(families=("gaussian", "membrane", "context"))
    assert FeatureConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(VitsegError, match="families"):
        FeatureConfig(families=("gaussian", "entropy"))
    with pytest.raises(VitsegError, match="context_features expects|single-channel 2D"):
        context_features(np.zeros((4, 4, 3)))
    # membrane or context alone (no sigma needed) is a valid feature set
    assert classical_features(np.ones((9, 9)), sigmas=(), families=("context",), include_intensity=False).shape == (9, 9, 6)
