"""Early exit of random forests (``early_exit_proba``, the approximate 'coarse-to-fine' mode):
on features of real images it keeps >= 99.9 % of the exact labels, gives the whole forest's
probabilities to the rows it does not stop early, and leaves XGBoost, small forests and the
compiled engine exactly as ``predict_proba``. Real data: tem_nanoparticles (2 classes) and
sandstone_xrm (4 classes) from ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_vitseg.classifiers import _engines
from napari_vitseg.classifiers._engines import EARLY_EXIT_STAGES, predict_threads
from napari_vitseg.pipeline import Segmenter


@pytest.fixture(scope="module")
def fitted(shared_data):
    """(classifier, features (n, F)) per (set, kind, trees), built lazily."""
    built = {}

    def get(name, kind="rf", n_estimators=100):
        key = (name, kind, n_estimators)
        if key not in built:
            d = shared_data(name)
            img, scr = tifffile.imread(d / "image.tif"), tifffile.imread(d / "scribbles.tif")
            seg = Segmenter(classifier=kind, classifier_params={"n_estimators": n_estimators}).fit(img, scr)
            feats = seg.plane_features(img)
            built[key] = (seg.classifier_, np.ascontiguousarray(feats[::2, ::2].reshape(-1, feats.shape[-1])))
        return built[key]

    return get


@pytest.fixture(autouse=True)
def _library_engine(monkeypatch):
    monkeypatch.delenv("VITSEG_ENGINE", raising=False)


def _margin(p):
    top = np.sort(p, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


@pytest.mark.parametrize("name", ["tem_nanoparticles", "sandstone_xrm"])
def test_early_exit_keeps_the_labels_and_saves_trees(fitted, name, monkeypatch):
    clf, X = fitted(name)
    exact = clf.predict_proba(X)
    calls = []
    trees_proba = _engines._trees_proba

    def counted(estimator, a, b, Xs):
        calls.append((b - a) * len(Xs))
        return trees_proba(estimator, a, b, Xs)

    monkeypatch.setattr(_engines, "_trees_proba", counted)
    fast = clf.predict_proba_early_exit(X)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    assert (fast.argmax(1) == exact.argmax(1)).mean() >= 0.999
    work = sum(calls) / (len(X) * 100)
    assert work < 0.6  # most rows stop after a quarter or half of the trees
    # rows that went through every tree have the whole forest's probabilities
    full = np.abs(fast - exact).max(axis=1) < 1e-5
    assert full.sum() >= (_margin(exact) < EARLY_EXIT_STAGES[-1][1] - 0.1).sum()
    # rows that stopped early are, by the whole forest, mostly confident ones
    assert np.median(_margin(exact)[~full]) > 0.6


def test_threads_and_small_inputs_give_the_same_result(fitted):
    clf, X = fitted("tem_nanoparticles")
    big = clf.predict_proba_early_exit(X)  # scikit-learn's threaded predict_proba of tree subsets
    with predict_threads(1):  # tree by tree in this thread
        one = clf.predict_proba_early_exit(X)
    np.testing.assert_allclose(one, big, atol=1e-6)
    small = np.concatenate([clf.predict_proba_early_exit(X[a:min(a + 999, 5000)]) for a in range(0, 5000, 999)])
    np.testing.assert_allclose(small, big[:5000], atol=1e-6)


def test_xgboost_small_forests_and_compiled_engine_are_exact(fitted):
    xgb, X = fitted("tem_nanoparticles", kind="xgb", n_estimators=20)
    np.testing.assert_array_equal(xgb.predict_proba_early_exit(X), xgb.predict_proba(X))
    small, X = fitted("tem_nanoparticles", n_estimators=_engines.EARLY_EXIT_MIN_TREES - 1)
    np.testing.assert_array_equal(small.predict_proba_early_exit(X), small.predict_proba(X))
    clf, X = fitted("tem_nanoparticles")
    clf.set_engine("compiled")
    try:
        if _engines._compiled_available() is None:
            np.testing.assert_allclose(clf.predict_proba_early_exit(X[:3000]), clf.predict_proba(X[:3000]), atol=1e-5)
    finally:
        clf.set_engine(None)


def test_segmenter_prediction_key_names_the_early_exit(fitted):
    from napari_vitseg.pipeline._coarse import SCHEME_VERSION

    seg = Segmenter()
    assert seg.prediction_key == f"coarse-to-fine/{SCHEME_VERSION}/early-exit-{_engines.EARLY_EXIT_VERSION}"
    seg.prediction = "exact"
    assert seg.prediction_key == "exact"
