import numpy as np
import pytest

from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig, Featurizer
from napari_vitseg.metrics import mean_iou
from napari_vitseg.pipeline import Segmenter


def test_end_to_end_real_nanoparticles(nanoparticles):
    """Classical features + random forest on the real TEM image reach mIoU >= 0.88 against ground truth."""
    image, scribbles, truth = nanoparticles
    seg = Segmenter(FeatureConfig(), "rf").fit(image, scribbles)
    result = seg.segment(image)
    assert result.labels.dtype == np.uint8 and result.labels.shape == image.shape
    assert result.probabilities.dtype == np.float16 and result.probabilities.shape == (2, *image.shape)
    np.testing.assert_allclose(result.probabilities.astype(np.float32).sum(0), 1, atol=2e-3)
    np.testing.assert_allclose(result.uncertainty, 1 - result.probabilities.max(0), atol=2e-3)
    miou = mean_iou(result.labels, truth)
    assert miou >= 0.88, miou


def test_xgboost_real_nanoparticles(nanoparticles):
    image, scribbles, truth = nanoparticles
    seg = Segmenter(FeatureConfig(), "xgb").fit(image, scribbles)
    assert mean_iou(seg.predict(image), truth) >= 0.88


def test_stack_plane_by_plane(cells_stack):
    """Training on the scribbles of the 6-plane stack; the stack result equals plane-by-plane results."""
    stack, scribbles = cells_stack
    seg = Segmenter(FeatureConfig(sigmas=(1, 2, 4, 8)), "rf", {"n_estimators": 30}).fit(stack, scribbles)
    assert seg.training_stats_["n_training_planes"] == int(sum(np.any(s) for s in scribbles))
    np.testing.assert_array_equal(seg.classes_, [1, 2, 3])
    result = seg.segment(stack)
    assert result.labels.shape == stack.shape
    assert result.probabilities.shape == (3, *stack.shape)
    # stack vs single image give the same answer (Weka #63, convpaint #67)
    np.testing.assert_array_equal(seg.predict(stack[2]), result.labels[2])
    # the classifier reproduces most of its own scribbles on every plane and finds all 3 classes
    lab = scribbles != 0
    assert (result.labels[lab] == scribbles[lab]).mean() > 0.9
    assert set(np.unique(result.labels)) == {1, 2, 3}


def test_multichannel_explicit_axis(two_region_image):
    image, scribbles = two_region_image
    rgb_first = np.stack([image, image[::-1], -image])  # (C, Y, X)
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 20}).fit(rgb_first, scribbles, channel_axis=0)
    assert seg.n_channels_ == 3
    names = seg.featurizer.feature_names(3)
    assert names[0].startswith("ch0:") and names[-1].startswith("ch2:")
    labels = seg.predict(rgb_first, channel_axis=0)
    assert (labels[:, 40:] == 2).mean() > 0.95
    with pytest.raises(VitsegError, match="channel"):
        seg.predict(image)  # a single-channel image for a 3-channel classifier


def test_strips_equal_whole_plane(nanoparticles):
    """Row strips with a halo give the same features and labels as the whole plane."""
    image = nanoparticles[0]
    f = Featurizer(FeatureConfig())
    whole = f.compute(image)
    for rows in [(0, 100), (100, 300), (450, 518)]:
        band = f.compute(image, rows=rows)
        scale = np.abs(whole).max(axis=(0, 1))
        assert (np.abs(band - whole[rows[0]:rows[1]]).max(axis=(0, 1)) <= 1e-4 * scale + 1e-5).all()
    seg = Segmenter(FeatureConfig(), "rf", {"n_estimators": 20}).fit(image, nanoparticles[1])
    cached = seg.predict_plane(image, use_cache=True)
    seg.featurizer.strip_bytes = 64 * 518 * 40 * 4  # force 64-row strips
    strips = seg.predict_plane(image, use_cache=False)
    assert (cached.argmax(0) == strips.argmax(0)).mean() > 0.999


def test_feature_cache_reused(two_region_image):
    image, scribbles = two_region_image
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 5})
    seg.fit(image, scribbles)
    misses = seg.cache.misses
    seg.fit(image, scribbles)  # retrain with the same image: features from the cache
    assert seg.cache.misses == misses and seg.cache.hits >= 1
    seg.fit(image + 1, scribbles)  # an edited image invalidates
    assert seg.cache.misses == misses + 1


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda im, sc: (im, np.zeros_like(sc)), "no labelled pixels"),
        (lambda im, sc: (im, (sc > 0).astype(np.uint8)), "single class"),
        (lambda im, sc: (im, sc[:-1]), "shape"),
        (lambda im, sc: (np.where(sc == 1, np.nan, im), sc), "NaN"),
        (lambda im, sc: (np.where(sc == 1, np.inf, im), sc), "NaN or infinite"),
        (lambda im, sc: (im.astype(np.complex64), sc), "dtype"),
        (lambda im, sc: (im[None, None, None], sc), "spatial dimensions"),
        (lambda im, sc: (im[0], sc[0]), "spatial dimensions"),
        (lambda im, sc: (im, sc.astype(np.float32) + 0.5), "integer"),
    ],
)
def test_bad_input_clear_errors(two_region_image, make, match):
    image, scribbles = make(*two_region_image)
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3})
    with pytest.raises(VitsegError, match=match):
        seg.fit(image, scribbles)
    assert not seg.is_fitted


def test_rgb_hint(two_region_image):
    image, scribbles = two_region_image
    rgb = np.stack([image] * 3, -1)[None]  # (1, Y, X, 3) without channel_axis: 4 spatial dims
    with pytest.raises(VitsegError, match="channel_axis=-1"):
        Segmenter(FeatureConfig(sigmas=(1,))).fit(rgb, scribbles[None])


def test_predict_before_fit(two_region_image):
    with pytest.raises(VitsegError, match="not trained"):
        Segmenter().predict(two_region_image[0])


@pytest.mark.parametrize("upsample, pca", [("guided", None), ("bilinear", 6)])
def test_vit_bands_equal_whole_plane_and_vit_features(nanoparticles, upsample, pca):
    """Row bands of ViT features (random weights) equal the whole plane and features.vit.vit_features."""
    from napari_vitseg.backbones import create_backbone
    from napari_vitseg.features.vit import vit_features

    image = nanoparticles[0][:300, :260]
    bb = create_backbone("dinov2_vits14_reg", pretrained=False, seed=0)
    f = Featurizer(FeatureConfig(backbone="dinov2_vits14_reg", sigmas=(1,), upsample=upsample, vit_pca=pca),
                   backbone=bb)
    whole = f.compute(image, key="plane")
    nv = pca or 384
    nc = whole.shape[-1] - nv  # classical channels: intensity + 6 at sigma 1 (default families) + 3 bilateral
    assert nc == 10 and len(f.feature_names()) == nc + nv
    assert all(n.startswith("dinov2_vits14_reg_") for n in f.feature_names()[nc:])
    if pca is None:
        np.testing.assert_allclose(whole[..., nc:], vit_features(image, bb, upsample=upsample), atol=1e-5)
    for rows in [(0, 50), (120, 230), (250, 300)]:
        np.testing.assert_allclose(f.compute(image, rows=rows, key="plane"), whole[rows[0]:rows[1]], rtol=1e-5, atol=1e-4)


def test_vit_pca_basis_kept_and_in_cache_key(nanoparticles):
    """The ViT PCA basis is fitted once; retraining reuses cached features; another basis is another key."""
    from napari_vitseg.backbones import create_backbone

    image, scribbles = nanoparticles[0][:140, :168], nanoparticles[1][:140, :168]
    seg = Segmenter(FeatureConfig(backbone="dinov2_vits14_reg", sigmas=(1,), vit_pca=4, upsample="bilinear"),
                    "rf", {"n_estimators": 5}, backbone=create_backbone("dinov2_vits14_reg", pretrained=False, seed=0))
    seg.fit(image, scribbles)
    basis = seg.featurizer.pca_.to_arrays()
    key = seg.featurizer.state_key
    misses = seg.cache.misses
    seg.fit(image, scribbles)
    assert seg.cache.misses == misses  # second training: features from the cache
    for k, v in seg.featurizer.pca_.to_arrays().items():
        np.testing.assert_array_equal(v, basis[k])
    seg.featurizer.fit_pca(np.random.default_rng(0).normal(size=(5, 5, 384)).astype(np.float32))
    assert seg.featurizer.state_key != key


def test_predict_plane_stride_preview(two_region_image):
    image, scribbles = two_region_image
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 10}).fit(image, scribbles)
    full = seg.predict_plane(image)
    seg.prediction = "exact"  # coarse-to-fine classifies only some stride-2 points, with early exit
    coarse = seg.predict_plane(image[:63], stride=2)
    assert coarse.shape == (2, 32, 32)
    np.testing.assert_allclose(coarse, seg.predict_plane(image[:63])[:, ::2, ::2], atol=1e-6)
    seg.prediction = None
    assert full.shape == (2, 64, 64)
