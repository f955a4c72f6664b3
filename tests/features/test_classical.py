"""Tests of the classical multiscale filter features (napari_vitseg.features.classical)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vitseg._validation import VitsegError
from napari_vitseg.features.classical import (
    classical_feature_names,
    classical_features,
    classical_halo,
    gaussian_kernel,
)
from napari_vitseg.features.config import CLASSICAL_FAMILIES, FeatureConfig

SIGMAS = (1.0, 2.0, 4.0)
DERIVED = ("gradient", "laplacian", "hessian", "structure", "dog")
TEM = Path(__file__).resolve().parents[3] / "shared" / "data" / "tem_nanoparticles" / "image.tif"


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(0).random((48, 56), dtype=np.float32)


def _channels(feats, names, prefix):
    return [i for i, n in enumerate(names) if n.startswith(prefix)]


# -- names, shapes, dtypes ------------------------------------------------------------------
def test_default_names():
    names = classical_feature_names((1, 2, 4, 8, 16), CLASSICAL_FAMILIES)
    assert len(names) == 40 == len(set(names))
    assert names[:9] == [
        "intensity",
        "gaussian_s1",
        "gradient_s1",
        "laplacian_s1",
        "hessian_max_s1",
        "hessian_min_s1",
        "structure_max_s1",
        "structure_min_s1",
        "gaussian_s2",
    ]
    assert "dog_s8-s16" in names and "dog_s1-s2" in names and not any("s0" in n for n in names)
    cfg = FeatureConfig()  # version 4: no laplacian / dog, sigma 0.5 added, bilateral channels last
    default = classical_feature_names(cfg.sigmas, cfg.families, cfg.include_intensity)
    assert len(default) == 40 == len(set(default))
    assert default[:7] == ["intensity", "gaussian_s0.5", "gradient_s0.5", "hessian_max_s0.5", "hessian_min_s0.5",
                           "structure_max_s0.5", "structure_min_s0.5"]
    assert default[-3:] == ["bilateral_s2", "bilateral_s4", "bilateral_s8"]
    assert not any(n.startswith(("laplacian", "dog")) for n in default)


def test_names_canonical_order():
    a = classical_feature_names((4, 1.5), ("dog", "gaussian"), include_intensity=False)
    assert a == ["gaussian_s1.5", "gaussian_s4", "dog_s1.5-s4"]


@pytest.mark.parametrize(
    "families, intensity",
    [(CLASSICAL_FAMILIES, True), (("dog",), False), (("hessian", "gaussian"), True), ((), True)],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64, bool])
def test_shape_dtype_count(families, intensity, dtype):
    img = (np.random.default_rng(1).random((20, 27)) * 200).astype(dtype)
    names = classical_feature_names(SIGMAS, families, intensity)
    f = classical_features(img, sigmas=SIGMAS, families=families, include_intensity=intensity)
    assert f.shape == (20, 27, len(names)) and f.dtype == np.float32 and f.flags.c_contiguous
    assert np.isfinite(f).all()


def test_channels_match_names(noise):
    """Each named channel has its definition, and does not depend on the other families."""
    names = classical_feature_names(SIGMAS, CLASSICAL_FAMILIES)
    full = classical_features(noise, sigmas=SIGMAS)
    by = dict(zip(names, np.moveaxis(full, -1, 0), strict=True))
    np.testing.assert_array_equal(by["intensity"], noise)
    g = {
        s: ndi.gaussian_filter(noise.astype(np.float64), s, mode="mirror", truncate=4.0)
        for s in SIGMAS
    }
    for s in SIGMAS:
        np.testing.assert_allclose(by[f"gaussian_s{s:g}"], g[s], atol=2e-6)
        gy, gx = (np.gradient(g[s], axis=a) for a in (0, 1))  # central differences inside
        grad = s * np.hypot(gx, gy)
        np.testing.assert_allclose(by[f"gradient_s{s:g}"][1:-1, 1:-1], grad[1:-1, 1:-1], atol=2e-5)
    np.testing.assert_allclose(by["dog_s2-s4"], g[4.0] - g[2.0], atol=2e-6)
    for fams in (("hessian",), ("structure", "dog"), ("laplacian", "gradient")):
        sub_names = classical_feature_names(SIGMAS, fams, include_intensity=False)
        sub = classical_features(noise, sigmas=SIGMAS, families=fams, include_intensity=False)
        for i, n in enumerate(sub_names):
            np.testing.assert_allclose(sub[..., i], by[n], rtol=0, atol=1e-6, err_msg=n)


def test_out_argument(noise):
    n = len(classical_feature_names(SIGMAS))
    out = np.full(noise.shape + (n,), np.nan, np.float32)
    res = classical_features(noise, sigmas=SIGMAS, out=out)
    assert res is out and np.isfinite(out).all()
    np.testing.assert_array_equal(out, classical_features(noise, sigmas=SIGMAS))
    with pytest.raises(VitsegError, match="out must be"):
        classical_features(noise, sigmas=SIGMAS, out=np.empty(noise.shape + (n,), np.float64))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_out_may_be_a_channel_slice_of_a_larger_array(noise, backend):
    """A caller assembling more channels (the Featurizer's row bands) passes ``big[..., c0:c1]``:
    written in place, equal to a fresh result; views that are not pixel-major are refused."""
    if backend == "torch":
        pytest.importorskip("torch")
    n = len(classical_feature_names(SIGMAS))
    big = np.full(noise.shape + (n + 5,), np.nan, np.float32)
    res = classical_features(noise, sigmas=SIGMAS, out=big[:, :, 2:2 + n], backend=backend, device="cpu")
    assert np.shares_memory(res, big)
    np.testing.assert_array_equal(big[:, :, 2:2 + n], classical_features(noise, sigmas=SIGMAS, backend=backend,
                                                                           device="cpu"))
    assert np.isnan(big[:, :, :2]).all() and np.isnan(big[:, :, 2 + n:]).all()  # nothing outside the slice
    for bad in (np.empty((noise.shape[0] * 2, noise.shape[1], n), np.float32)[::2],  # every other row
                np.empty(noise.shape + (2 * n,), np.float32)[:, :, ::2]):  # every other channel
        with pytest.raises(VitsegError, match="out must be"):
            classical_features(noise, sigmas=SIGMAS, out=bad)


def test_workers_give_same_result(noise):
    a = classical_features(noise, sigmas=SIGMAS, workers=1)
    b = classical_features(noise, sigmas=SIGMAS, workers=4)
    np.testing.assert_array_equal(a, b)


# -- analytic cases -------------------------------------------------------------------------
def test_constant_image():
    img = np.full((30, 33), 7.5, np.float32)
    names = classical_feature_names(SIGMAS)
    f = classical_features(img, sigmas=SIGMAS)
    for i, n in enumerate(names):
        expected = 0.0 if n.startswith(DERIVED) else 7.5
        np.testing.assert_allclose(f[..., i], expected, atol=1e-5, err_msg=n)


def test_linear_ramp():
    """Gradient magnitude = s * slope, structure_max = (s * slope)^2, no curvature (interior)."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    a, b = 0.3, -0.4  # d/dx, d/dy; slope 0.5
    img = (a * (xx - 32) + b * (yy - 32)).astype(np.float32)
    names = classical_feature_names(SIGMAS)
    f = classical_features(img, sigmas=SIGMAS)
    h = classical_halo(SIGMAS)
    inner = f[h:-h, h:-h]
    assert inner.size
    for s in SIGMAS:
        v = {
            n: inner[..., names.index(f"{n}_s{s:g}")]
            for n in (
                "gradient",
                "laplacian",
                "hessian_max",
                "hessian_min",
                "structure_max",
                "structure_min",
            )
        }
        np.testing.assert_allclose(v["gradient"], s * 0.5, rtol=1e-4)
        np.testing.assert_allclose(v["structure_max"], (s * 0.5) ** 2, rtol=1e-4)
        for n in ("laplacian", "hessian_max", "hessian_min", "structure_min"):
            np.testing.assert_allclose(v[n], 0.0, atol=1e-4 * s * s, err_msg=n)


def test_quadratic():
    """Hessian of c1 x^2 + c2 y^2 + c3 x y is constant: s^2 [[2 c1, c3], [c3, 2 c2]]."""
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float64) - 48
    c1, c2, c3 = 0.01, -0.004, 0.006
    img = (c1 * xx**2 + c2 * yy**2 + c3 * xx * yy).astype(np.float32)
    sigmas = (1.0, 2.0, 4.0, 8.0)  # 8: central differences with a 2-pixel step
    names = classical_feature_names(sigmas, ("laplacian", "hessian"), include_intensity=False)
    f = classical_features(
        img, sigmas=sigmas, families=("laplacian", "hessian"), include_intensity=False
    )
    h = classical_halo(sigmas, ("hessian",))
    eig = np.linalg.eigvalsh(np.array([[2 * c1, c3], [c3, 2 * c2]]))
    for s in sigmas:
        inner = f[h:-h, h:-h]
        lap = inner[..., names.index(f"laplacian_s{s:g}")]
        np.testing.assert_allclose(lap, s * s * 2 * (c1 + c2), rtol=2e-3)
        np.testing.assert_allclose(
            inner[..., names.index(f"hessian_max_s{s:g}")], s * s * eig[1], rtol=2e-3
        )
        np.testing.assert_allclose(
            inner[..., names.index(f"hessian_min_s{s:g}")], s * s * eig[0], rtol=2e-3
        )


def test_blob_scale_normalised():
    """The scale-normalised LoG of a Gaussian blob of width t peaks (in s) near s = t."""
    yy, xx = np.mgrid[0:129, 0:129] - 64.0
    t = 4.0
    img = np.exp(-(xx**2 + yy**2) / (2 * t * t)).astype(np.float32)
    sigmas = (1.0, 2.0, 4.0, 8.0, 16.0)
    names = classical_feature_names(sigmas, ("laplacian",), include_intensity=False)
    f = classical_features(img, sigmas=sigmas, families=("laplacian",), include_intensity=False)
    centre = -f[64, 64]
    assert names[int(np.argmax(centre))] == "laplacian_s4"


def test_rotation_and_flip_invariance(noise):
    """All channels are invariant to 90-degree rotations and flips (symmetric stencils, mirror borders)."""
    f = classical_features(noise, sigmas=SIGMAS)
    # float32 rounding differs (the row and column passes swap), amplified by s**2 in the
    # second differences: ~2e-5 of the channel's range at s = 4.
    tol = 1e-4 * np.abs(f).max(axis=(0, 1)) + 1e-7
    for k in (1, 2, 3):
        r = np.rot90(classical_features(np.rot90(noise, k), sigmas=SIGMAS), -k, axes=(0, 1))
        assert (np.abs(r - f).max(axis=(0, 1)) <= tol).all()
    t = classical_features(noise.T, sigmas=SIGMAS).transpose(1, 0, 2)
    assert (np.abs(t - f).max(axis=(0, 1)) <= tol).all()


def test_halo_makes_tiles_equal_whole(noise):
    img = np.random.default_rng(3).random((160, 40), dtype=np.float32)
    h = classical_halo(SIGMAS)
    whole = classical_features(img, sigmas=SIGMAS)
    y0, y1 = 60, 90
    tile = classical_features(img[y0 - h : y1 + h], sigmas=SIGMAS)[h:-h]
    scale = np.abs(whole).max(axis=(0, 1))
    assert (np.abs(tile - whole[y0:y1]).max(axis=(0, 1)) <= 1e-5 * scale + 1e-7).all()


def test_gaussian_kernel():
    for s in (0.5, 1.0, 3.3, 16.0):
        k = gaussian_kernel(s)
        assert k.dtype == np.float32 and len(k) == 2 * int(4 * s + 0.5) + 1
        assert abs(float(k.sum(dtype=np.float64)) - 1) < 1e-6 and np.array_equal(k, k[::-1])


def test_tiny_images():
    for shape in [(1, 1), (1, 7), (5, 1), (3, 4)]:
        img = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        f = classical_features(img, sigmas=(1, 16))
        assert f.shape == shape + (len(classical_feature_names((1, 16))),) and np.isfinite(f).all()
        np.testing.assert_allclose(f[..., 1], ndi.gaussian_filter(img, 1, mode="mirror"), atol=1e-5)


# -- backends -------------------------------------------------------------------------------
def _assert_backends_agree(img, sigmas, rtol):
    cpu = classical_features(img, sigmas=sigmas, backend="cpu")
    tch = classical_features(img, sigmas=sigmas, backend="torch", device="cpu")
    assert tch.dtype == np.float32 and tch.shape == cpu.shape and tch.flags.c_contiguous
    scale = np.abs(cpu).max(axis=(0, 1))
    err = np.abs(tch - cpu).max(axis=(0, 1))
    names = classical_feature_names(sigmas)
    bad = [
        (n, float(e), float(s))
        for n, e, s in zip(names, err, scale, strict=True)
        if e > rtol * s + 1e-6
    ]
    assert not bad, bad


def test_cpu_torch_agree_random(noise):
    pytest.importorskip("torch")
    _assert_backends_agree(noise, (1.0, 2.0, 4.0, 8.0, 16.0), rtol=2e-4)


def test_cpu_torch_agree_real():
    pytest.importorskip("torch")
    tifffile = pytest.importorskip("tifffile")
    if not TEM.exists():
        pytest.skip(f"shared data missing: {TEM}")
    img = tifffile.imread(TEM)[100:260, 150:310]
    _assert_backends_agree(img, (1.0, 2.0, 4.0, 8.0, 16.0), rtol=2e-4)


def test_auto_backend_on_cpu_device(noise):
    a = classical_features(noise, sigmas=SIGMAS, backend="auto", device="cpu")
    np.testing.assert_array_equal(a, classical_features(noise, sigmas=SIGMAS))


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((4, 5, 3), np.float32), "2D"),
        (np.zeros((5,), np.float32), "2D"),
        (np.zeros((0, 5), np.float32), "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]], np.float32), "infinite"),
        (np.zeros((4, 4), np.complex64), "complex"),
        (np.array([["a", "b"]]), "dtype"),
    ],
)
def test_bad_images(image, match):
    with pytest.raises(VitsegError, match=match):
        classical_features(image)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigmas": (1, -2)}, "positive"),
        ({"sigmas": (1, 1)}, "repeat"),
        ({"sigmas": (1, float("nan"))}, "finite"),
        ({"sigmas": "x"}, "sigmas"),
        ({"families": ("gaussian", "sobel")}, "families"),
        ({"families": (), "include_intensity": False}, "empty"),
        ({"backend": "opencl"}, "backend"),
        ({"workers": 0}, "workers"),
        ({"workers": 0, "families": ()}, "workers"),
        ({"workers": 1.5, "backend": "torch"}, "workers"),
        ({"backend": "torch", "device": "nonsense"}, "device"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(VitsegError, match=match):
        classical_features(np.zeros((8, 8), np.float32), **kwargs)
