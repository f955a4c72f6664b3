"""Segmenter.feature_importances: shares by feature family and scale (issue 14, feature-importance panel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter
from napari_vitseg.pipeline._importance import FAMILY_LABELS, FeatureImportances, parse_feature_name

DATA = Path(__file__).resolve().parents[1] / "data"


def texture_pair(n: int = 128, seed: int = 0):
    """Left half fine noise, right half coarse noise, both scaled so that their Gaussian (sigma 1)
    has the same spread: the smoothed intensity cannot tell the halves apart, the gradient can."""
    rng = np.random.default_rng(seed)
    fine = ndimage.gaussian_filter(rng.normal(size=(n, n)), 1)
    coarse = ndimage.gaussian_filter(rng.normal(size=(n, n)), 4)
    fine /= ndimage.gaussian_filter(fine, 1).std()
    coarse /= ndimage.gaussian_filter(coarse, 1).std()
    image = np.where(np.arange(n)[None, :] < n // 2, fine, coarse).astype(np.float32)
    scribbles = np.zeros((n, n), np.uint8)
    scribbles[8:-8, 8:n // 2 - 8] = 1
    scribbles[8:-8, n // 2 + 8:-8] = 2
    return image, scribbles


def _check_sums(imp: FeatureImportances):
    assert np.isclose(imp.feature_importance.sum(), 1.0) and np.isclose(imp.importance.sum(), 1.0)
    assert (imp.feature_importance >= 0).all() and (imp.importance >= 0).all()
    assert np.isclose(np.nansum(imp.grid()[2]), 1.0)
    assert np.isclose(sum(imp.by_family().values()), 1.0)


@pytest.mark.parametrize("classifier", ["rf", "xgb"])
def test_the_only_family_that_separates_gets_the_largest_share(classifier):
    image, scribbles = texture_pair()
    cfg = FeatureConfig(sigmas=(1, 2), families=("gaussian", "gradient"), include_intensity=False)
    seg = Segmenter(cfg, classifier, {"n_estimators": 20}).fit(image, scribbles)
    imp = seg.feature_importances()
    assert imp.method == ("mdi" if classifier == "rf" else "gain") and imp.classifier == classifier
    _check_sums(imp)
    fam = imp.by_family()
    assert set(fam) == {"gaussian", "gradient"}
    assert fam["gradient"] > 0.6 > fam["gaussian"]
    assert imp.summary().startswith("Mostly fine-scale features (σ 1 px): edges")


def test_names_line_up_with_the_featurizer_and_groups_are_family_by_scale():
    image, scribbles = texture_pair(64)
    families = ("gaussian", "gradient", "laplacian", "hessian", "structure", "dog", "bilateral")
    seg = Segmenter(FeatureConfig(sigmas=(1, 2, 4), families=families),
                    classifier_params={"n_estimators": 10}).fit(image, scribbles)
    imp = seg.feature_importances()
    assert imp.feature_names == tuple(seg.featurizer.feature_names(1))
    est = seg.classifier_.estimator_.feature_importances_
    assert np.allclose(imp.feature_importance, est / est.sum())
    # every channel belongs to exactly one group, and a group's share is the sum of its channels
    for g, (fam, sigma) in enumerate(zip(imp.family, imp.sigma, strict=True)):
        members = [i for i, n in enumerate(imp.feature_names) if parse_feature_name(n)[:2] == (fam, sigma)]
        assert members and np.isclose(imp.importance[g], imp.feature_importance[members].sum())
    assert imp.names[:3] == ("raw intensity", "Gaussian σ1", "edges (gradient) σ1")
    assert ("hessian", 2.0) in zip(imp.family, imp.sigma, strict=True)  # max and min eigenvalue: one group
    assert len(imp.names) == 1 + 3 * 5 + 2 + 3  # intensity, 5 families x 3 scales, DoG x 2, bilateral x 3
    families, scales, shares = imp.grid()
    assert families == ["intensity", "gaussian", "gradient", "laplacian", "hessian", "structure", "dog",
                        "bilateral"]
    assert scales == [1.0, 2.0, 4.0, 8.0, None]  # bilateral adds its own sigma 8
    assert np.isnan(shares[families.index("dog"), 0]) and np.isfinite(shares[0, -1])


def test_multichannel_groups_per_channel_and_permutation_on_the_scribbles():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(64, 64, 2)).astype(np.float32)
    image[:, 32:, 0] += 3  # only channel 0 separates the halves
    scribbles = np.zeros((64, 64), np.uint8)
    scribbles[8:56, 4:24], scribbles[8:56, 40:60] = 1, 2
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), classifier_params={"n_estimators": 20})
    seg.fit(image, scribbles, channel_axis=-1)
    imp = seg.feature_importances()
    assert imp.feature_names == tuple(seg.featurizer.feature_names(2))
    assert set(imp.channel) == {0, 1} and imp.names[0] == "ch0: raw intensity"
    assert imp.by_channel()[0] > 0.8
    assert "channel 0 carries" in imp.summary()
    perm = seg.feature_importances(method="permutation", image=image, scribbles=scribbles, channel_axis=-1,
                                   max_pixels=1000, n_repeats=2)
    assert perm.method == "permutation"
    _check_sums(perm)
    assert perm.by_channel()[0] > 0.9
    # the grid sums the channels: one row per family, whatever the channels
    families, _, shares = perm.grid()
    assert len(families) == len(set(families)) and np.isclose(np.nansum(shares), 1.0)


def test_autocontext_stages():
    image, scribbles = texture_pair(64)
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), classifier_params={"n_estimators": 10}, autocontext_stages=2)
    seg.fit(image, scribbles)
    one, two = seg.feature_importances(), seg.feature_importances(stage=2)
    for imp in (one, two):
        _check_sums(imp)
        assert imp.n_stages == 2
    assert one.stage == 1 and "autocontext" not in one.family
    assert one.summary().startswith("Stage 1 of 2: ")
    assert two.stage == 2 and two.feature_names[:len(one.feature_names)] == one.feature_names
    ctx = [n for n, f in zip(two.names, two.family, strict=True) if f == "autocontext"]
    assert ctx == ["previous stage, class 2 σ4", "previous stage, class 2 σ8", "previous stage, class 2 σ16"]
    assert two.grid()[0][-1] == "autocontext" and "autocontext" in FAMILY_LABELS


def test_errors_name_the_input_and_what_to_do(two_region_image):
    image, scribbles = two_region_image
    seg = Segmenter(FeatureConfig(sigmas=(1,)), classifier_params={"n_estimators": 5})
    with pytest.raises(VitsegError, match="not trained yet"):
        seg.feature_importances()
    seg.fit(image, scribbles)
    with pytest.raises(VitsegError, match="stage"):
        seg.feature_importances(stage=2)
    with pytest.raises(VitsegError, match="method"):
        seg.feature_importances(method="shap")
    with pytest.raises(VitsegError, match="does not apply to a random forest"):
        seg.feature_importances(method="gain")
    with pytest.raises(VitsegError, match="needs the training image and its scribbles"):
        seg.feature_importances(method="permutation")
    with pytest.raises(VitsegError, match="permutation"):
        seg.feature_importances(image=image, scribbles=scribbles)
    with pytest.raises(VitsegError, match="spatial shape"):
        seg.feature_importances(method="permutation", image=image, scribbles=scribbles[:10])


def test_classifier_files_of_version_0_1_0():
    rf = Segmenter.load(DATA / "v0.1.0_rf.vitseg").feature_importances()
    xgb = Segmenter.load(DATA / "v0.1.0_xgb.vitseg").feature_importances()
    for imp in (rf, xgb):
        _check_sums(imp)
    assert rf.method == "mdi" and xgb.method == "gain"
    assert rf.feature_names == tuple(Segmenter.load(DATA / "v0.1.0_rf.vitseg").classifier_.feature_names_in_)


def test_vit_channels_are_one_group():
    vit = Segmenter.load(DATA / "v0.1.0_vit_random.vitseg", allow_random_weights=True).feature_importances()
    _check_sums(vit)
    assert "vit" in vit.family and vit.names[vit.family.index("vit")] == "ViT (dinov2_vits14_reg)"
    assert vit.family.count("vit") == 1  # all ViT channels are one group


def test_parse_feature_name():
    assert parse_feature_name("intensity") == ("intensity", None, None, None)
    assert parse_feature_name("stddev_s4") == ("variance", 4.0, None, None)
    assert parse_feature_name("ch2:structure_max_s1.5") == ("structure", 1.5, 2, None)
    assert parse_feature_name("membrane_std") == ("membrane", None, None, None)
    assert parse_feature_name("context_diff_s64") == ("context", 64.0, None, None)
    assert parse_feature_name("bilateral_s8") == ("bilateral", 8.0, None, None)
    assert parse_feature_name("context_c3_gaussian_s16") == ("autocontext", 16.0, None, 3)
    assert parse_feature_name("dinov2_vits14_reg_pc012")[0] == "vit"
    assert parse_feature_name("something else")[0] == "other"
