"""Boundary refinement (napari_vitseg.pipeline._boundary): which channels are fine, the band, the
gain on real data, exact banded prediction, and the classifier file (formats 3 and 4)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import tifffile
from _file_helpers import rewrite_metadata

from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig
from napari_vitseg.metrics import mean_iou
from napari_vitseg.pipeline import Segmenter, SegmenterConfig
from napari_vitseg.pipeline._boundary import (
    DEFAULT_ROWS,
    LABEL_MAJORITY,
    boundary_band,
    context_rows,
    fine_columns,
    majority_labels,
)
from napari_vitseg.pipeline.batch import iter_plane_probabilities


def test_fine_columns_are_intensity_small_scales_and_bilateral():
    names = ["intensity", "gaussian_s0.5", "gradient_s2", "hessian_max_s2", "gaussian_s4", "structure_min_s16",
             "dog_s1-s2", "membrane_max", "bilateral_s8", "context_mean_s32", "vit_dinov2_s_pc000"]
    assert [names[i] for i in fine_columns(names)] == ["intensity", "gaussian_s0.5", "gradient_s2",
                                                       "hessian_max_s2", "bilateral_s8"]
    rgb = [f"ch{c}:{n}" for c in range(3) for n in ("intensity", "gaussian_s1", "gaussian_s8")]
    assert [rgb[i] for i in fine_columns(rgb)] == [f"ch{c}:{n}" for c in range(3) for n in ("intensity", "gaussian_s1")]
    assert fine_columns(["gaussian_s4", "gaussian_s8"]).size == 0
    default = Segmenter().featurizer.feature_names(1)
    cols = fine_columns(default)
    chosen = [default[i] for i in cols]
    assert 0 < len(cols) < len(default)
    assert all(n.startswith("bilateral") or not n.endswith(("_s4", "_s8", "_s16")) for n in chosen)


def test_band_is_the_pixels_near_a_label_change_and_is_exact_in_row_bands():
    labels = np.zeros((30, 40), np.uint8)
    labels[:, 20:] = 1
    labels[10:14, 5:8] = 1
    band = boundary_band(labels, 2)
    assert band[:, 18:22].all() and not band[:, 23:].any() and not band[20:, :16].any()
    assert band[8:16, 3:10].all() and not band[17, 5]  # 3 px below the speck
    # rows 0..14 of the whole plane's band from the labels of rows 0..16 (2 rows of context)
    np.testing.assert_array_equal(boundary_band(labels[:17], 2)[:15], band[:15])
    np.testing.assert_array_equal(boundary_band(labels[8:30], 2)[2:], band[10:])


def test_majority_filter_is_the_mode_of_the_cut_window_and_exact_in_row_slabs():
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 4, (40, 50)).astype(np.uint8)
    m = majority_labels(labels, 5)
    ref = np.empty_like(labels)
    for y in range(40):
        for x in range(50):
            window = labels[max(0, y - 2):y + 3, max(0, x - 2):x + 3]
            ref[y, x] = np.argmax(np.bincount(window.ravel(), minlength=4))  # ties: the smallest label
    np.testing.assert_array_equal(m, ref)
    np.testing.assert_array_equal(majority_labels(labels[:22], 5)[:20], m[:20])  # 2 rows of context
    np.testing.assert_array_equal(majority_labels(labels[18:], 5)[2:], m[20:])
    assert majority_labels(labels, 1) is labels
    with pytest.raises(ValueError, match="odd"):
        majority_labels(labels, 4)


def test_majority_band_ignores_specks_and_keeps_region_boundaries():
    labels = np.zeros((40, 40), np.uint8)
    labels[:, 20:] = 1
    labels[10:12, 5:7] = 1  # a 2 x 2 speck: no band around it once the labels are majority-filtered
    plain, filtered = boundary_band(labels, 2), boundary_band(labels, 2, LABEL_MAJORITY)
    assert plain[8:14, 3:9].all() and not filtered[:, :14].any()
    np.testing.assert_array_equal(filtered[:, 14:], plain[:, 14:])  # the region boundary is kept
    r = context_rows(2, LABEL_MAJORITY)
    assert r == 2 + LABEL_MAJORITY // 2 and context_rows(0, LABEL_MAJORITY) == 0
    np.testing.assert_array_equal(boundary_band(labels[:15 + r], 2, LABEL_MAJORITY)[:15], filtered[:15])


@pytest.fixture(scope="module")
def tem(nanoparticles):
    image, scribbles, gt = nanoparticles
    on = Segmenter(prediction="exact").fit(image, scribbles)
    off = Segmenter(prediction="exact", boundary_refinement=0).fit(image, scribbles)
    return image, scribbles, gt, on, off


def test_refinement_raises_miou_on_real_tem(tem):
    image, _, gt, on, off = tem
    assert on.boundary_refinement == DEFAULT_ROWS and off.boundary_classifier_ is None
    assert on.boundary_classifier_ is not None and len(on.boundary_columns_) < on.featurizer.n_features(1)
    m_on = mean_iou(on.predict(image), gt)
    m_off = mean_iou(off.predict(image), gt)
    assert m_on > m_off + 0.005, (m_on, m_off)  # measured 0.960 vs 0.947


def test_refinement_changes_only_the_band_and_gives_the_fine_classifier_there(tem):
    image, _, _, on, off = tem
    p_on, p_off = on.predict_plane(image), off.predict_plane(image)
    np.testing.assert_array_equal(on.classifier_.predict_proba(on.plane_features(image)[:3, :3].reshape(-1, 40)),
                                  off.classifier_.predict_proba(off.plane_features(image)[:3, :3].reshape(-1, 40)))
    assert on.boundary_majority_ == LABEL_MAJORITY and off.boundary_majority_ == 1
    band = boundary_band(np.argmax(p_off, 0), on.boundary_refinement, on.boundary_majority_)
    changed = np.abs(p_on - p_off).max(0) > 0
    assert changed.any() and not (changed & ~band).any()
    feats = on.plane_features(image)
    rr, cc = np.nonzero(band)
    fine = on.boundary_classifier_.predict_proba(feats[rr, cc][:, on.boundary_columns_])
    np.testing.assert_allclose(p_on[:, rr, cc].T, fine, atol=1e-6)


@pytest.mark.parametrize("prediction", ["exact", "coarse-to-fine"])
def test_bands_rows_and_overlap_equal_the_whole_plane(nanoparticles, prediction):
    image, scribbles, _ = nanoparticles
    seg = Segmenter(prediction=prediction, classifier_params={"n_estimators": 20}).fit(image, scribbles)
    whole = seg.predict_plane(image, use_cache=True)
    seg.featurizer.strip_rows = lambda shape, nc: 96  # row bands that do not divide the plane
    banded = seg.predict_plane(image, use_cache=False)
    rows = np.concatenate([seg.predict_rows(image, (y, min(518, y + 77)), use_cache=False)
                           for y in range(0, 518, 77)], axis=1)
    overlapped = next(iter_plane_probabilities(seg, [("k", image)], overlap=True))[1]
    lab = seg.labels_from_proba(whole)
    # one tree's whole vote in the smallest forest (the boundary forest has half the trees)
    one_vote = 1 / min(20, seg.boundary_classifier_.n_estimators)
    for other in (banded, rows, overlapped):
        # features of a band differ from the whole plane's by float rounding (~1e-3 of a 0-255 range),
        # which may move one tree to another leaf; the labels agree
        assert np.abs(other - whole).max() <= one_vote + 1e-3
        assert (seg.labels_from_proba(other) == lab).mean() > 0.9995


def test_stride_preview_is_not_refined(tem):
    image, _, _, on, off = tem
    np.testing.assert_array_equal(on.predict_plane(image, stride=2), off.predict_plane(image, stride=2))


def test_file_round_trip_format_4_and_2(tem, tmp_path):
    image, _, _, on, off = tem
    a, b = tmp_path / "on.vitseg", tmp_path / "off.vitseg"
    on.save(a)
    off.save(b)
    meta_a = json.loads(zipfile.ZipFile(a).read("metadata.json"))
    meta_b = json.loads(zipfile.ZipFile(b).read("metadata.json"))
    assert meta_a["format_version"] == 4 and meta_a["boundary"]["rows"] == DEFAULT_ROWS
    assert meta_a["boundary"]["majority"] == LABEL_MAJORITY
    assert meta_a["boundary"]["columns"] == on.boundary_columns_.tolist()
    assert "boundary.skops" in zipfile.ZipFile(a).namelist()
    assert meta_b["format_version"] == 2 and "boundary" not in meta_b
    la, lb = Segmenter.load(a, prediction="exact"), Segmenter.load(b, prediction="exact")
    assert la.boundary_refinement == DEFAULT_ROWS and lb.boundary_refinement == 0
    np.testing.assert_array_equal(la.predict_plane(image), on.predict_plane(image))
    np.testing.assert_array_equal(lb.predict_plane(image), off.predict_plane(image))


def test_format_3_files_load_and_predict_without_the_majority_filter(tem, tmp_path):
    """A format-3 file (napari-vitseg of session 19: no majority window) refines the band around
    the unfiltered labels, as it did when it was written."""
    image, _, _, on, off = tem
    good = on.save(tmp_path / "good.vitseg")

    def as_format_3(m):
        m["format_version"] = 3
        del m["boundary"]["majority"]

    old = Segmenter.load(rewrite_metadata(good, tmp_path / "v3.vitseg", as_format_3), prediction="exact")
    assert old.boundary_majority_ == 1 and old._refine_rows == DEFAULT_ROWS
    p_old, p_off = old.predict_plane(image), off.predict_plane(image)
    band = boundary_band(np.argmax(p_off, 0), DEFAULT_ROWS)  # no majority filter
    rr, cc = np.nonzero(band)
    fine = on.boundary_classifier_.predict_proba(on.plane_features(image)[rr, cc][:, on.boundary_columns_])
    np.testing.assert_allclose(p_old[:, rr, cc].T, fine, atol=1e-6)
    np.testing.assert_array_equal(p_old[:, ~band], p_off[:, ~band])
    # in row bands too (2 rows of label context, not 4)
    rows = np.concatenate([old.predict_rows(image, (y, min(518, y + 100)), use_cache=False)
                           for y in range(0, 518, 100)], axis=1)
    assert (old.labels_from_proba(rows) == old.labels_from_proba(p_old)).mean() > 0.9995


def test_xgboost_and_autocontext_refine_and_round_trip(nanoparticles, tmp_path):
    image, scribbles, _ = nanoparticles
    image, scribbles = image[:160, :200], scribbles[:160, :200]
    for seg in (Segmenter(classifier="xgb", classifier_params={"n_estimators": 10}),
                Segmenter(FeatureConfig(sigmas=(1, 2, 4)), classifier_params={"n_estimators": 10},
                          autocontext_stages=2)):
        seg.fit(image, scribbles)
        assert seg.boundary_classifier_ is not None and seg.boundary_classifier_.kind == seg.classifier
        path = tmp_path / f"{seg.classifier}{seg.n_stages}.vitseg"
        seg.save(path)
        np.testing.assert_array_equal(Segmenter.load(path).predict_plane(image), seg.predict_plane(image))


@pytest.mark.parametrize("change, match", [
    (lambda m: m["boundary"].update(columns=[99999]), "boundary"),
    (lambda m: m["boundary"].update(columns=m["boundary"]["columns"][::-1]), "boundary"),
    (lambda m: m["boundary"]["classifier"].update(n_features_in=3), "boundary"),
    (lambda m: m["boundary"]["classifier"].update(model_file="model.skops"), "boundary"),
    (lambda m: m["boundary"].update(rows=100), "boundary"),
    (lambda m: m["boundary"].update(columns=m["boundary"]["columns"][:-1] + [m["boundary"]["columns"][-1] + 1]),
     "chooses differently|boundary"),
    (lambda m: m.update(format_version=5), "upgrade"),
    (lambda m: m["boundary"].update(majority=4), "majority"),
    (lambda m: m["boundary"].update(majority=0), "boundary"),
    (lambda m: m["boundary"].update(majority=99), "boundary"),
    (lambda m: m["boundary"].update(majority="5"), "boundary"),
    (lambda m: m["boundary"].pop("majority"), "majority"),
])
def test_bad_boundary_sections_are_refused(tem, tmp_path, change, match):
    on = tem[3]
    good = on.save(tmp_path / "good.vitseg")
    bad = rewrite_metadata(good, tmp_path / "bad.vitseg", change)
    with pytest.raises(VitsegError, match=match):
        Segmenter.load(bad)


def test_config_validates_the_band():
    assert SegmenterConfig().boundary_refinement == DEFAULT_ROWS
    with pytest.raises(VitsegError, match="boundary_refinement"):
        SegmenterConfig(boundary_refinement=-1)
    with pytest.raises(VitsegError, match="boundary_refinement"):
        SegmenterConfig(boundary_refinement=99)
    seg = Segmenter.from_config(SegmenterConfig(boundary_refinement=0))
    assert seg.config.boundary_refinement == 0


def test_cli_train_flag_reaches_the_file(nanoparticles, tmp_path):
    from napari_vitseg.cli import main

    image, scribbles, _ = nanoparticles
    tifffile.imwrite(tmp_path / "img.tif", image[:128, :128])
    tifffile.imwrite(tmp_path / "scr.tif", scribbles[:128, :128])
    for px, fmt in ((0, 2), (3, 4)):
        out = tmp_path / f"m{px}.vitseg"
        rc = main(["train", str(tmp_path / "img.tif"), "--scribbles", str(tmp_path / "scr.tif"), "-o", str(out),
                   "--n-estimators", "5", "--boundary-refinement", str(px), "--quiet"])
        assert rc == 0
        meta = json.loads(zipfile.ZipFile(out).read("metadata.json"))
        assert meta["format_version"] == fmt
        assert Segmenter.load(out).boundary_refinement == px
