"""Auto-context (napari_vitseg.pipeline._autocontext): out-of-fold stage training, exact banded
prediction, the classifier file (format 2), and a real set where context pays."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _file_helpers import rewrite_metadata

from napari_vitseg._validation import VitsegError
from napari_vitseg.classifiers import FORMAT_VERSION
from napari_vitseg.features import FeatureConfig
from napari_vitseg.features.config import CLASSICAL_FAMILIES
from napari_vitseg.pipeline import Segmenter, SegmenterConfig
from napari_vitseg.pipeline._autocontext import (
    N_FOLDS,
    context_feature_names,
    context_features,
    context_halo,
    stroke_folds,
)

DATA = Path("/work/shared/data")
RELEASE = Path(__file__).resolve().parents[1] / "data"


def _shared(name):
    root = DATA / name
    if not root.exists():
        pytest.skip("shared data not available")
    return (tifffile.imread(root / "image.tif"), tifffile.imread(root / "scribbles.tif"),
            tifffile.imread(root / "ground_truth.tif"))


def _miou(labels, gt):
    return float(np.mean([((labels == c) & (gt == c)).sum() / ((labels == c) | (gt == c)).sum()
                          for c in np.unique(gt) if c]))


@pytest.fixture(scope="module")
def tem_crop():
    image, scribbles, _ = _shared("tem_nanoparticles")
    return image[:200, :240], scribbles[:200, :240]


@pytest.fixture(scope="module")
def fitted(tem_crop):
    """A 2-stage model on a real TEM crop that keeps its out-of-fold training internals."""
    image, scribbles = tem_crop
    # fully grown trees (min_samples_leaf=1): the in-sample stage-1 model is then clearly overconfident
    # on its own training pixels, which is what out-of-fold training avoids
    seg = Segmenter(FeatureConfig(sigmas=(1, 2, 4)),
                    classifier_params={"n_estimators": 12, "n_jobs": 2, "min_samples_leaf": 1},
                    autocontext_stages=2, boundary_refinement=0)  # format 2: no boundary classifier
    seg._keep_training_internals = True
    return seg.fit(image, scribbles)


def test_config_validates_stages():
    assert SegmenterConfig().autocontext_stages == 1
    with pytest.raises(VitsegError, match="autocontext_stages"):
        SegmenterConfig(autocontext_stages=0)
    with pytest.raises(VitsegError, match="autocontext_stages"):
        SegmenterConfig(autocontext_stages=9)


def test_stroke_folds_keep_strokes_together_and_spread_every_class():
    lab_img = np.zeros((60, 60), np.uint8)
    for i, r in enumerate(range(2, 60, 8)):  # 8 separate strokes of class 1
        lab_img[r:r + 3, 2:20 + i] = 1
    lab_img[5:55, 40:43] = 2  # one long stroke of class 2: cut into pieces
    rr, cc = np.nonzero(lab_img)
    lab = lab_img[rr, cc]
    (folds,) = stroke_folds([(rr, cc, lab, lab_img.shape)], N_FOLDS)
    assert folds.shape == lab.shape
    for c in (1, 2):
        assert set(folds[lab == c].tolist()) == set(range(N_FOLDS))  # every class in every fold
    from scipy import ndimage

    comp, n = ndimage.label(lab_img == 1, structure=np.ones((3, 3)))
    for j in range(1, n + 1):  # a stroke of class 1 never straddles two folds
        assert len(set(folds[(lab == 1) & (comp[rr, cc] == j)].tolist())) == 1
    # the cut stroke: its pieces are contiguous runs along its length
    rows2 = rr[lab == 2]
    for f in range(N_FOLDS):
        r = rows2[folds[lab == 2] == f]
        assert r.max() - r.min() < 50 / N_FOLDS + 2


def test_stage2_trains_on_out_of_fold_context(fitted, tem_crop):
    """The stage-2 training context of fold f's pixels comes from fold model f's predictions,
    not from the in-sample stage-1 model."""
    image, scribbles = tem_crop
    info = fitted.training_internals_
    rr, cc = np.nonzero(scribbles)
    lab = scribbles[rr, cc]
    folds = info["folds"]
    C = info["context"][2]
    assert C.shape == (len(lab), len(context_feature_names(fitted.classes_)))
    in_sample = context_features(fitted.predict_plane(image, use_cache=False, stages=1))[rr, cc]
    for f in range(N_FOLDS):
        sel = folds == f
        assert sel.any()
        from_fold_model = context_features(info["fold_proba"][(1, f, 0)])[rr[sel], cc[sel]]
        np.testing.assert_allclose(C[sel], from_fold_model, rtol=0, atol=1e-5)  # banded vs whole: float32 rounding
        assert np.abs(C[sel] - in_sample[sel]).max() > 0.05
    # the fold model never saw its fold's pixels: its probabilities there are less confident
    conf_oof = np.concatenate([info["fold_proba"][(1, f, 0)].max(0)[rr[folds == f], cc[folds == f]]
                               for f in range(N_FOLDS)])
    conf_in = fitted.predict_plane(image, use_cache=False, stages=1).max(0)[rr, cc]
    assert conf_oof.mean() < conf_in.mean()


def test_banded_rows_and_cached_plane_equal_the_whole_plane(fitted, tem_crop):
    image, _ = tem_crop
    whole = fitted.predict_plane(image, use_cache=False)
    np.testing.assert_allclose(fitted.predict_plane(image, use_cache=True), whole, atol=1e-6)
    for rows in ((0, 30), (90, 130), (170, 200)):
        part = fitted.predict_rows(image, rows, use_cache=False)
        assert part.shape == (2, rows[1] - rows[0], image.shape[1])
        np.testing.assert_allclose(part, whole[:, rows[0]:rows[1]], atol=1e-5)
    assert context_halo() > 0
    assert fitted.n_stages == 2 and fitted.stages_used() == 2 and fitted.stages_used(stride=2) == 1
    fast = fitted.predict_plane(image, stride=2)  # the fast form: stage 1 only, forest with early exit
    fitted.prediction = "exact"  # coarse-to-fine classifies only some stride-2 points, with early exit
    try:
        coarse = fitted.predict_plane(image, stride=2)
        np.testing.assert_allclose(coarse, fitted.predict_plane(image, stages=1)[:, ::2, ::2], atol=1e-6)
    finally:
        fitted.prediction = None
    assert (fast.argmax(0) == coarse.argmax(0)).mean() > 0.999


def test_file_round_trip_format_2(fitted, tem_crop, tmp_path):
    image, _ = tem_crop
    path = fitted.save(tmp_path / "ac.vitseg")
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("metadata.json"))
        assert sorted(zf.namelist()) == ["metadata.json", "model.skops", "stage1.skops"]
    assert meta["format_version"] == 2 and FORMAT_VERSION == 4  # 4 only with a boundary classifier
    assert meta["autocontext"]["stages"] == 2 and len(meta["stages"]) == 1
    loaded = Segmenter.load(path)
    assert loaded.n_stages == 2 and loaded.autocontext_stages == 2
    assert loaded.feature_config == fitted.feature_config
    assert loaded.classifier_params["n_estimators"] == 12
    np.testing.assert_array_equal(loaded.predict_plane(image, use_cache=False),
                                  fitted.predict_plane(image, use_cache=False))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer than this napari-vitseg"),
    (lambda m: m.update(stages=[]), "auto-context section and the earlier stages"),
    (lambda m: m["autocontext"].update(stages=3), "auto-context section and the earlier stages"),
    (lambda m: m["stages"][0].update(n_features_in=5), "stage 1 takes 5 features"),
    (lambda m: m["autocontext"].update(context_sigmas=[1.0, 3.0, 5.0]), "auto-context features"),
])
def test_bad_or_newer_files_are_refused(fitted, tmp_path, edit, match):
    path = fitted.save(tmp_path / "ac.vitseg")
    with pytest.raises(VitsegError, match=match):
        Segmenter.load(rewrite_metadata(path, tmp_path / "bad.vitseg", edit))


@pytest.mark.parametrize("name", ["rf", "xgb"])
def test_release_files_load_and_predict_as_before(name):
    expected = np.load(RELEASE / "v0.1.0_expected.npz")
    seg = Segmenter.load(RELEASE / f"v0.1.0_{name}.vitseg")
    assert seg.autocontext_stages == 1 and seg.n_stages == 1
    result = seg.segment(expected["image"])
    np.testing.assert_array_equal(result.labels, expected[f"{name}_labels"])
    np.testing.assert_array_equal(result.probabilities, expected[f"{name}_probabilities"])


def test_autocontext_raises_miou_on_membranes():
    """FIB-SEM membranes (flyem_medulla_fibsem, plane 2: the first painted one): context of where
    the interiors were predicted helps to find the thin membranes between them. Without boundary
    refinement on either side, so that the difference is the context alone."""
    image, scribbles, gt = (a[2] for a in _shared("flyem_medulla_fibsem"))
    features = FeatureConfig(sigmas=(1, 2, 4, 8, 16), families=CLASSICAL_FAMILIES)
    scores = {}
    for stages in (1, 2):
        seg = Segmenter(features, autocontext_stages=stages, boundary_refinement=0)
        scores[stages] = _miou(seg.fit(image, scribbles).predict(image), gt)
    assert scores[2] > scores[1] + 0.01, scores


def test_xgboost_stages_round_trip(tem_crop, tmp_path):
    image, scribbles = tem_crop
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), "xgb", {"n_estimators": 5, "n_jobs": 2}, autocontext_stages=3)
    seg.fit(image, scribbles)
    path = seg.save(tmp_path / "xgb.vitseg")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["metadata.json", "model.ubj", "stage1.ubj", "stage2.ubj"]
    loaded = Segmenter.load(path)
    assert loaded.n_stages == 3 and loaded.classifier == "xgb"
    np.testing.assert_array_equal(loaded.predict_plane(image, use_cache=False),
                                  seg.predict_plane(image, use_cache=False))
