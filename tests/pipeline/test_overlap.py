"""Overlapped batch prediction (napari_vitseg.pipeline.batch.iter_plane_probabilities): the next
row band is featurised in one thread while the current one is predicted in another. Labels
equal the sequential path's (Segmenter.predict_plane, use_cache=False) for both prediction
settings and both classifier kinds, on the real TEM cells stack and nanoparticles; at most two
bands' features exist at once; the threads add up to the cores; closing the generator stops
the featurising thread; bad planes and read errors are reported as before; vitseg apply's
files are byte-identical with and without overlap; thread caps of the engines."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import tifffile
from threadpoolctl import threadpool_info

from napari_vitseg._validation import VitsegError
from napari_vitseg.classifiers._engines import _thread_cap, engine_info, predict_threads
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter, batch
from napari_vitseg.pipeline.batch import iter_apply_file, iter_plane_probabilities, overlap_threads

FAST = FeatureConfig(sigmas=(1.0, 2.0, 4.0))


def _drain(gen):
    return [x for x in gen]


def _bands(seg, plane, n):
    """Make the featurizer cut ``plane`` into ``n`` row bands."""
    nf = seg.featurizer.n_features(seg.n_channels_)
    seg.featurizer.strip_bytes = -(-plane.shape[0] // n) * plane.shape[1] * nf * 4


@pytest.fixture
def two_cores(monkeypatch):
    """The overlapped path needs >= 2 cores; pretend to have 2 wherever the tests run."""
    monkeypatch.setattr(batch, "_cores", lambda: 2)
    monkeypatch.delenv("VITSEG_OVERLAP", raising=False)
    monkeypatch.delenv("VITSEG_PREDICTION", raising=False)
    monkeypatch.setenv("VITSEG_ENGINE", "sklearn")


@pytest.fixture(scope="module")
def fitted(cells_stack):
    stack, scr = cells_stack
    out = {}
    for kind in ("rf", "xgb"):
        params = {"n_estimators": 30}
        out[kind] = Segmenter(FAST, classifier=kind, classifier_params=params).fit(stack[:2], scr[:2])
    return out


@pytest.mark.parametrize("kind", ["rf", "xgb"])
@pytest.mark.parametrize("prediction", ["exact", "coarse-to-fine"])
def test_overlapped_equals_sequential(fitted, cells_stack, two_cores, kind, prediction):
    stack = cells_stack[0]
    seg = fitted[kind]
    seg.prediction = prediction
    _bands(seg, stack[0], 3)  # several bands per plane: overlap inside planes and across them
    assert len(seg._batch_bands(stack[0])) == 3
    try:
        seq = [seg.predict_plane(p, use_cache=False) for p in stack]
        got = _drain(iter_plane_probabilities(seg, enumerate(stack), overlap=True))
    finally:
        seg.prediction = None
    assert [k for k, _ in got] == list(range(len(stack)))
    for (_, p), ref in zip(got, seq, strict=True):
        assert p.shape == ref.shape and p.dtype == np.float32
        np.testing.assert_array_equal(seg.labels_from_proba(p), seg.labels_from_proba(ref))
        # the forest on one thread instead of all cores: the same trees, summed in tree order
        np.testing.assert_allclose(p, ref, rtol=0, atol=1e-6)


def test_overlapped_equals_whole_plane_on_nanoparticles(nanoparticles, two_cores):
    img, scr, _ = nanoparticles
    seg = Segmenter(FAST, classifier_params={"n_estimators": 30}).fit(img, scr)
    whole = seg.predict_plane(img, use_cache=True)  # one band, the cached whole-plane features
    _bands(seg, img, 4)
    (_, p), = _drain(iter_plane_probabilities(seg, [("a", img)], overlap=True))
    assert np.mean(seg.labels_from_proba(p) == seg.labels_from_proba(whole)) >= 0.9999


def test_at_most_two_bands_in_flight_and_threads_add_up(fitted, cells_stack, two_cores, monkeypatch):
    stack = cells_stack[0][:4]
    seg = fitted["rf"]
    _bands(seg, stack[0], 3)
    live, peak, seen = [0], [0], {"feat_cpus": [], "pred_cap": [], "threads": set()}
    lock = threading.Lock()
    band_features, predict_band = seg._band_features, seg._predict_band

    def counted_features(*a, **k):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        if hasattr(os, "sched_getaffinity"):
            seen["feat_cpus"].append(len(os.sched_getaffinity(0)))
        seen["threads"].add(threading.current_thread().name)
        return band_features(*a, **k)

    def slow_predict(*a, **k):
        time.sleep(0.05)  # prediction slower than featurising: an unbounded producer would run ahead
        seen["pred_cap"].append(_thread_cap())
        predict_band(*a, **k)
        with lock:
            live[0] -= 1

    monkeypatch.setattr(seg, "_band_features", counted_features)
    monkeypatch.setattr(seg, "_predict_band", slow_predict)
    n_feat, n_pred = overlap_threads(True)
    assert (n_feat, n_pred) == (1, 1)
    got = _drain(iter_plane_probabilities(seg, enumerate(stack), overlap=True))
    assert len(got) == 4
    assert peak[0] == 2  # overlapped, and never more than two bands of features at once
    assert seen["threads"] == {"vitseg-featurise"}
    # capped while bands are being featurised; every core for the last ones (nothing left to featurise)
    caps = seen["pred_cap"]
    assert len(caps) == 4 * 3 and caps[0] == n_pred and caps[-1] is None
    assert set(caps) <= {n_pred, None} and caps == sorted(caps, key=lambda c: c is None)
    if hasattr(os, "sched_getaffinity"):  # the first band on every core (nothing to predict yet), then its share
        assert seen["feat_cpus"][0] == len(os.sched_getaffinity(0)) and set(seen["feat_cpus"][1:]) == {n_feat}
    assert _thread_cap() is None  # the cap ends with the prediction


def test_overlap_threads_setting(monkeypatch):
    monkeypatch.setattr(batch, "_cores", lambda: 2)
    monkeypatch.delenv("VITSEG_OVERLAP", raising=False)
    assert overlap_threads() == (1, 1)  # on by default
    assert overlap_threads(True) == (1, 1)
    monkeypatch.setenv("VITSEG_OVERLAP", "1")
    assert overlap_threads() == (1, 1)
    monkeypatch.setattr(batch, "_cores", lambda: 16)
    assert overlap_threads() == (8, 8)  # half each: the two take about the same CPU time per pixel
    monkeypatch.setattr(batch, "_cores", lambda: 1)
    assert overlap_threads() is None  # nothing to overlap on one core
    monkeypatch.setattr(batch, "_cores", lambda: 2)
    assert overlap_threads(False) is None
    monkeypatch.setenv("VITSEG_OVERLAP", "0")
    assert overlap_threads() is None
    monkeypatch.setattr(batch, "_cores", lambda: 1)
    assert overlap_threads(True) is None  # one core: nothing to overlap
    monkeypatch.setattr(batch, "_cores", lambda: 16)
    assert overlap_threads(True) == (8, 8)


def test_close_stops_the_featurising_thread(fitted, cells_stack, two_cores):
    stack = cells_stack[0]
    seg = fitted["rf"]
    _bands(seg, stack[0], 2)
    read = []

    def planes():
        for i, p in enumerate(stack):
            yield i, (lambda i=i, p=p: read.append(i) or p)

    gen = iter_plane_probabilities(seg, planes(), overlap=True)
    k, p = next(gen)
    assert k == 0
    gen.close()
    assert not any(t.name == "vitseg-featurise" for t in threading.enumerate())
    assert len(read) <= 2 < len(stack)  # at most the next plane was started


def test_bad_plane_is_named_and_stops(fitted, cells_stack, two_cores):
    stack = cells_stack[0][:3].astype(np.float32)
    stack[1, 5, 5] = np.nan
    seg = fitted["rf"]
    gen = iter_plane_probabilities(seg, enumerate(stack), overlap=True, where=lambda k: f"plane {k} of 'x.tif'")
    k, _ = next(gen)
    assert k == 0
    with pytest.raises(VitsegError, match=r"plane 1 of 'x.tif': .*(NaN|finite)"):
        next(gen)
    assert not any(t.name == "vitseg-featurise" for t in threading.enumerate())

    def unreadable():
        raise VitsegError("Cannot read plane 0 of 'y.tif' (damaged)")

    with pytest.raises(VitsegError, match=r"^Cannot read plane 0 of 'y.tif'"):
        _drain(iter_plane_probabilities(seg, [(0, unreadable)], overlap=True, where=lambda k: "never"))


def test_autocontext_falls_back_to_sequential(cells_stack, two_cores):
    stack, scr = cells_stack
    stack, scr = stack[:2, :, :320], scr[:2, :, :320]
    seg = Segmenter(FAST, classifier_params={"n_estimators": 10}, autocontext_stages=2).fit(stack[:1], scr[:1])
    got = _drain(iter_plane_probabilities(seg, enumerate(stack), overlap=True))
    for (_, p), plane in zip(got, stack, strict=True):
        np.testing.assert_array_equal(p, seg.predict_plane(plane, use_cache=False))


def test_apply_file_identical_with_and_without_overlap(fitted, cells_stack, two_cores, tmp_path):
    stack = cells_stack[0][:3]
    seg = fitted["rf"]
    _bands(seg, stack[0], 2)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack, photometric="minisblack", metadata={"axes": "ZYX"})
    outs = {}
    for overlap in (False, True):
        out = tmp_path / f"seg_{overlap}.tif"
        _drain(iter_apply_file(seg, src, out, probabilities_path=tmp_path / f"p_{overlap}.tif", overlap=overlap))
        outs[overlap] = (tifffile.imread(out), tifffile.imread(tmp_path / f"p_{overlap}.tif"))
    np.testing.assert_array_equal(outs[True][0], outs[False][0])
    np.testing.assert_allclose(outs[True][1].astype(np.float32), outs[False][1].astype(np.float32), atol=1e-3)
    assert not list(tmp_path.glob(".*.part.zarr"))  # staging stores committed and removed


@pytest.mark.parametrize("kind", ["rf", "xgb"])
def test_predict_threads_caps_the_engine(fitted, cells_stack, monkeypatch, kind):
    monkeypatch.setenv("VITSEG_ENGINE", "sklearn")
    seg = fitted[kind]
    feats = seg.featurizer.compute(cells_stack[0][0])
    X = np.ascontiguousarray(feats.reshape(-1, feats.shape[-1])[:20000])
    clf = seg.classifier_
    ref = clf.predict_proba(X)
    omp = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"]
    with predict_threads(1):
        assert _thread_cap() == 1
        p = clf.predict_proba(X)
    assert _thread_cap() is None
    # the cap leaves OpenMP's thread count of this thread alone (TL2cgen refuses more threads than it)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"] == omp
    assert engine_info(clf)["used"] == "sklearn"
    np.testing.assert_array_equal(p.argmax(1), ref.argmax(1))
    np.testing.assert_allclose(p, ref, atol=1e-6)
    if kind == "rf":  # a copy with its own n_jobs; the classifier's own forest is untouched
        assert clf.estimator_.n_jobs == -1
    with pytest.raises(VitsegError, match="positive number of threads"):
        with predict_threads(0):
            pass


def test_segment_api_overlaps_with_the_same_result(fitted, cells_stack, two_cores, monkeypatch):
    stack = cells_stack[0][:3]
    seg = fitted["rf"]
    _bands(seg, stack[0], 2)
    calls = []
    orig = batch.iter_plane_probabilities

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(batch, "iter_plane_probabilities", spy)
    monkeypatch.setenv("VITSEG_OVERLAP", "1")
    got = seg.segment(stack)
    assert calls  # Segmenter.segment / predict take the overlapped path
    monkeypatch.setenv("VITSEG_OVERLAP", "0")
    ref = seg.segment(stack)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_allclose(got.probabilities.astype(np.float32), ref.probabilities.astype(np.float32), atol=1e-3)
