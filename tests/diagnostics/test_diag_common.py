"""Image preparation for the diagnostics and layer alignment."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vitseg._validation import VitsegError
from napari_vitseg.diagnostics import layer_extent, prepare_image


def test_prepare_grey_uint8_crops_top_left_and_scales_like_the_features():
    from napari_vitseg.features.vit import to_rgb01

    img = (np.arange(100 * 130) % 256).astype(np.uint8).reshape(100, 130)
    p = prepare_image(img, name="x")
    assert p.rgb.shape == (98, 126, 3) and p.rgb.dtype == np.float32
    assert p.offset == (0, 0) and p.grid == (7, 9) and p.source_shape == (100, 130)
    # the segmentation features' scaling (percentiles of the whole plane), then the crop
    np.testing.assert_allclose(p.rgb, to_rgb01(img)[:98, :126], rtol=1e-6)
    assert np.all(p.rgb[..., 0] == p.rgb[..., 2])


def test_prepare_dtypes_and_channels():
    """intensity='percentile' (the rule of version-1 classifier files)."""
    rng = np.random.default_rng(0)
    u16 = rng.integers(0, 4096, size=(60, 60)).astype(np.uint16)
    p = prepare_image(u16, intensity="percentile")
    assert 0 <= p.rgb.min() and p.rgb.max() <= 1 and p.rgb.max() > 0.99
    f = rng.random((56, 56)).astype(np.float64)
    lo, hi = np.percentile(f, (0.5, 99.5))
    np.testing.assert_allclose(prepare_image(f, intensity="percentile").rgb[..., 1],
                               np.clip((f - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert prepare_image(np.full((56, 56), 7.0), intensity="percentile").rgb.max() == 0.0  # constant: no division by zero
    rgb = rng.integers(0, 256, size=(56, 70, 3)).astype(np.uint8)
    p = prepare_image(rgb, channel_axis=-1, intensity="percentile")
    lo, hi = np.percentile(rgb, (0.5, 99.5))  # all channels together: colour balance kept
    np.testing.assert_allclose(p.rgb, np.clip((rgb - lo) / (hi - lo), 0, 1), atol=1e-6)
    rgba = np.concatenate([rgb, np.zeros((56, 70, 1), np.uint8)], -1)
    np.testing.assert_allclose(prepare_image(rgba, channel_axis=2, intensity="percentile").rgb, p.rgb)
    np.testing.assert_allclose(prepare_image(np.moveaxis(rgb, -1, 0), channel_axis=0, intensity="percentile").rgb,
                               p.rgb)
    one = prepare_image(rgb[..., :1], channel_axis=-1, intensity="percentile")
    assert one.rgb.shape == (56, 70, 3)
    assert prepare_image(rng.random((56, 56)) > 0.5).rgb.max() == 1.0


def test_prepare_reference_intensity_is_the_features_rule():
    """The default, intensity='reference': the dtype's range, as FeatureConfig() and to_rgb01."""
    from napari_vitseg.features.vit import to_rgb01

    rng = np.random.default_rng(1)
    u16 = rng.integers(0, 4096, size=(60, 60)).astype(np.uint16)
    np.testing.assert_array_equal(prepare_image(u16).rgb, to_rgb01(u16)[:56, :56])
    np.testing.assert_allclose(prepare_image(u16).rgb[..., 0], u16[:56, :56] / 65535, rtol=1e-6)
    u8 = rng.integers(40, 181, size=(56, 70, 3)).astype(np.uint8)
    np.testing.assert_array_equal(prepare_image(u8, channel_axis=-1).rgb, u8.astype(np.float32) / 255)


def test_prepare_max_side_crops_around_centre():
    img = np.zeros((300, 200), np.uint8)
    p = prepare_image(img, max_side=100)
    assert p.rgb.shape == (98, 98, 3)
    assert p.offset == ((300 - 98) // 2, (200 - 98) // 2)


def test_prepare_errors():
    with pytest.raises(VitsegError, match="pick a plane"):
        prepare_image(np.zeros((3, 60, 60)))
    with pytest.raises(VitsegError, match="channel_axis=-1"):
        prepare_image(np.zeros((60, 60, 3)))
    with pytest.raises(VitsegError, match="5 channels"):
        prepare_image(np.zeros((60, 60, 5)), channel_axis=-1)
    with pytest.raises(VitsegError, match="at least 28 x 28"):
        prepare_image(np.zeros((27, 60)))
    with pytest.raises(VitsegError, match="NaN"):
        prepare_image(np.full((56, 56), np.nan))
    with pytest.raises(VitsegError, match="out of range"):
        prepare_image(np.zeros((56, 56)), channel_axis=3)


def test_layer_extent_puts_token_centres_on_patch_centres():
    p = prepare_image(np.zeros((300, 200), np.uint8), max_side=100)
    ext = layer_extent(p)
    assert ext["scale"] == (14.0, 14.0)
    # token (0, 0) covers pixels offset .. offset + 13: centre offset + 6.5
    assert ext["translate"] == (p.offset[0] + 6.5, p.offset[1] + 6.5)
