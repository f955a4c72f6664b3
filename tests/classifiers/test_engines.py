"""Inference engines (napari_vitseg.classifiers._engines): every engine returns the library's
probabilities (scikit-learn / XGBoost) to float tolerance and the same labels, on features of
real images; compiled forests are built locally into a per-user cache keyed by the model,
rebuilt when the classifier changes and never taken from next to a classifier file; a missing
engine falls back to the library's predictor and says so.

Real data: tem_nanoparticles (2 classes) and sandstone_xrm (4 classes) from ../shared/data."""

from __future__ import annotations

import pickle
import shutil
import time
import warnings

import numpy as np
import pytest
import tifffile

from napari_vitseg._validation import VitsegError, VitsegWarning
from napari_vitseg.classifiers import _engines, load_classifier_file, save_classifier_file
from napari_vitseg.classifiers._engines import engine_info, model_hash
from napari_vitseg.cli import main
from napari_vitseg.pipeline import Segmenter

pytestmark = pytest.mark.skipif(_engines._compiled_available() is not None,
                                reason=f"compiled engine unavailable: {_engines._compiled_available()}")

SETS = {"tem_nanoparticles": 2, "sandstone_xrm": 4}
SMALL = {"rf": {"n_estimators": 6}, "xgb": {"n_estimators": 6}}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_cache") / "compiled"


@pytest.fixture(autouse=True)
def _private_cache(cache_root, monkeypatch):
    """One compiled-forest cache per test module (never the user's), no engine from the environment."""
    monkeypatch.setenv("VITSEG_ENGINE_CACHE", str(cache_root))
    monkeypatch.delenv("VITSEG_ENGINE", raising=False)


@pytest.fixture(scope="module")
def data(shared_data):
    """(segmenter trained with the given classifier, features (n, F)) per (set, kind), built lazily."""
    built = {}

    def get(name, kind, **params):
        key = (name, kind, tuple(sorted(params.items())))
        if key not in built:
            d = shared_data(name)
            img, scr = tifffile.imread(d / "image.tif"), tifffile.imread(d / "scribbles.tif")
            seg = Segmenter(classifier=kind, classifier_params={**SMALL[kind], **params}).fit(img, scr)
            feats = seg.plane_features(img)
            X = np.ascontiguousarray(feats[::3, ::3].reshape(-1, feats.shape[-1]))  # ~30-40 k real pixels
            assert len(seg.classes_) == SETS[name]
            built[key] = (seg.classifier_, X)
        return built[key]

    return get


@pytest.mark.parametrize("kind", ["rf", "xgb"])
@pytest.mark.parametrize("name", list(SETS))
def test_compiled_equals_library(data, name, kind):
    clf, X = data(name, kind)
    ref = clf.set_engine("sklearn").predict_proba(X)
    assert engine_info(clf)["used"] == "sklearn"
    p = clf.set_engine("compiled").predict_proba(X)
    assert engine_info(clf) == {"requested": "compiled", "used": "compiled", "reason": ""}
    assert p.dtype == np.float32 and p.shape == ref.shape == (len(X), SETS[name])
    np.testing.assert_allclose(p, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(clf.predict(X), clf.set_engine("sklearn").predict(X))
    if kind == "rf":  # a forest's probabilities are averages of leaf fractions: reproduced exactly
        np.testing.assert_array_equal(p, ref)


def test_ties_broken_like_the_library(data):
    """Rows with equal votes (a 2-class forest of 6 trees has many 3:3 ties) get the library's argmax."""
    clf, X = data("tem_nanoparticles", "rf")
    ref = clf.set_engine("sklearn").predict_proba(X)
    ties = np.abs(ref[:, 0] - ref[:, 1]) < 1e-6
    assert ties.sum() > 10
    lab = clf.set_engine("compiled").predict(X)
    np.testing.assert_array_equal(lab, clf.classes_[np.argmax(ref, axis=1)])


def test_cache_keyed_by_model_and_rebuilt_when_it_changes(data, shared_data, cache_root):
    clf, X = data("tem_nanoparticles", "rf")
    clf2, _ = data("tem_nanoparticles", "rf", random_state=1)
    assert model_hash(clf) != model_hash(clf2)
    clf.set_engine("compiled").predict_proba(X[:10])
    clf2.set_engine("compiled").predict_proba(X[:10])
    libs = sorted(cache_root.glob("*.so"))
    assert {_engines._library_name(clf), _engines._library_name(clf2)} <= {p.name for p in libs}
    # the same in-memory classifier refitted: the old compiled forest is not used any more
    d = shared_data("tem_nanoparticles")
    img, scr = tifffile.imread(d / "image.tif"), tifffile.imread(d / "scribbles.tif")
    seg = Segmenter(classifier="rf", classifier_params={"n_estimators": 6}).fit(img, scr)
    c = seg.classifier_.set_engine("compiled")
    c.predict_proba(X[:10])
    before = model_hash(c)
    c.fit(X[:2000], np.where(X[:2000, 0] > np.median(X[:2000, 0]), 1, 2))
    assert model_hash(c) != before
    np.testing.assert_array_equal(c.predict_proba(X), c.set_engine("sklearn").predict_proba(X))
    assert engine_info(c)["used"] == "sklearn"
    c.set_engine("compiled").predict_proba(X)
    assert engine_info(c)["used"] == "compiled"
    # a damaged cache entry is rebuilt
    path = cache_root / _engines._library_name(c)
    c2 = pickle.loads(pickle.dumps(c))  # runtime state (loaded library) is not pickled
    assert "_engine_runtime" not in c2.__dict__
    path.write_bytes(b"not a library")
    np.testing.assert_array_equal(c2.predict_proba(X), c.set_engine("sklearn").predict_proba(X))
    assert engine_info(c2)["used"] == "compiled" and path.stat().st_size > 1000


def test_library_next_to_classifier_file_is_never_loaded(data, tmp_path, cache_root, monkeypatch):
    """A planted library next to the classifier file, even under the exact cache name, is
    ignored: the engine builds its own from the loaded model into the per-user cache."""
    clf, X = data("tem_nanoparticles", "rf")
    other, _ = data("tem_nanoparticles", "rf", random_state=2)
    other.set_engine("compiled").predict_proba(X[:10])
    wrong = cache_root / _engines._library_name(other)
    path = save_classifier_file(tmp_path / "m.vitseg", clf, {})
    loaded = load_classifier_file(path)[0]
    name = _engines._library_name(loaded)
    for planted in (tmp_path / name, tmp_path / "m.so", tmp_path / "m.vitseg.so"):
        shutil.copy(wrong, planted)  # a library that predicts something else
    cache = tmp_path / "fresh_cache"
    monkeypatch.setenv("VITSEG_ENGINE_CACHE", str(cache))
    p = loaded.set_engine("compiled").predict_proba(X)
    assert engine_info(loaded)["used"] == "compiled"
    assert (cache / name).is_file()  # built locally
    np.testing.assert_array_equal(p, loaded.set_engine("sklearn").predict_proba(X))


def test_cache_entry_writable_by_others_is_refused(data, tmp_path, monkeypatch):
    clf, X = data("tem_nanoparticles", "xgb")
    clf = pickle.loads(pickle.dumps(clf))  # no library loaded yet
    cache = tmp_path / "c"
    monkeypatch.setenv("VITSEG_ENGINE_CACHE", str(cache))
    clf.set_engine("compiled").predict_proba(X[:10])
    lib = cache / _engines._library_name(clf)
    lib.chmod(0o777)
    fresh = pickle.loads(pickle.dumps(clf))
    with pytest.warns(VitsegWarning, match="writable by other users"):
        p = fresh.predict_proba(X)
    assert engine_info(fresh)["used"] == "sklearn"
    np.testing.assert_array_equal(p, fresh.set_engine("sklearn").predict_proba(X))


def test_fallback_when_unavailable_is_reported(data, monkeypatch):
    clf, X = data("sandstone_xrm", "xgb")
    clf = pickle.loads(pickle.dumps(clf))
    monkeypatch.setattr(_engines, "_compiler", lambda: None)
    ref = clf.set_engine("sklearn").predict_proba(X)
    with pytest.warns(VitsegWarning, match="no C compiler"):
        p = clf.set_engine("compiled").predict_proba(X)
    info = engine_info(clf)
    assert info["used"] == "sklearn" and "no C compiler" in info["reason"]
    np.testing.assert_array_equal(p, ref)
    with warnings.catch_warnings():  # 'auto' falls back silently, but records why
        warnings.simplefilter("error")
        clf.set_engine("auto").predict_proba(X)
    assert engine_info(clf)["used"] == "sklearn" and "no C compiler" in engine_info(clf)["reason"]


def test_auto_keeps_library_for_deep_forests_and_uses_env(data, monkeypatch):
    clf, X = data("tem_nanoparticles", "rf")  # max_depth None: deeper than AUTO_MAX_DEPTH
    clf = pickle.loads(pickle.dumps(clf))
    clf.set_engine(None)
    clf.predict_proba(X[:100])
    info = engine_info(clf)
    assert info["requested"] == "auto" and info["used"] == "sklearn" and "depth" in info["reason"]
    monkeypatch.setenv("VITSEG_ENGINE", "compiled")
    clf.predict_proba(X[:100])
    assert engine_info(clf)["used"] == "compiled"
    monkeypatch.setenv("VITSEG_ENGINE", "fastest")
    with pytest.raises(VitsegError, match="VITSEG_ENGINE"):
        clf.predict_proba(X[:100])
    with pytest.raises(VitsegError, match="engine must be one of"):
        clf.set_engine("onnx")


def test_auto_compiles_shallow_forest_after_batch_sized_work(data, monkeypatch, tmp_path):
    clf, X = data("sandstone_xrm", "xgb")  # depth 6
    clf = pickle.loads(pickle.dumps(clf)).set_engine("auto")
    monkeypatch.setenv("VITSEG_ENGINE_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(_engines, "AUTO_COMPILE_AFTER_ROWS", 2 * len(X))
    clf.predict_proba(X)
    assert engine_info(clf)["used"] == "sklearn" and "not compiled yet" in engine_info(clf)["reason"]
    ref = clf.predict_proba(X)  # crosses the threshold: builds in the background
    assert "background" in engine_info(clf)["reason"]
    rt = clf.__dict__["_engine_runtime"]
    for _ in range(600):
        if not rt.building:
            break
        time.sleep(0.5)
    p = clf.predict_proba(X)
    assert engine_info(clf)["used"] == "compiled"
    np.testing.assert_allclose(p, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(p.argmax(1), ref.argmax(1))


def test_engine_is_not_saved_in_the_classifier_file(data, tmp_path):
    clf, _ = data("tem_nanoparticles", "xgb")
    clf.set_engine("sklearn")
    assert "engine" not in clf.get_params()
    loaded = load_classifier_file(save_classifier_file(tmp_path / "m.vitseg", clf, {}))[0]
    assert loaded.engine is None


def test_cli_engine_option_gives_identical_labels(tmp_path, shared_data):
    d = shared_data("tem_nanoparticles")
    img, scr = tifffile.imread(d / "image.tif"), tifffile.imread(d / "scribbles.tif")
    tifffile.imwrite(tmp_path / "img.tif", img)
    tifffile.imwrite(tmp_path / "scr.tif", scr)
    tifffile.imwrite(tmp_path / "apply.tif", np.ascontiguousarray(img[100:356, 50:370]))
    model = tmp_path / "m.vitseg"
    assert main(["train", str(tmp_path / "img.tif"), "--scribbles", str(tmp_path / "scr.tif"), "-o", str(model),
                 "--backbone", "none", "--classifier", "xgb", "--n-estimators", "6", "--quiet"]) == 0
    outs = {}
    for engine in (None, "sklearn", "compiled"):
        out = tmp_path / f"lab_{engine}.tif"
        extra = ["--engine", engine] if engine else []
        assert main(["apply", str(model), str(tmp_path / "apply.tif"), "-o", str(out), "--quiet", *extra]) == 0
        outs[engine] = tifffile.imread(out)
    np.testing.assert_array_equal(outs[None], outs["sklearn"])
    np.testing.assert_array_equal(outs["compiled"], outs["sklearn"])
