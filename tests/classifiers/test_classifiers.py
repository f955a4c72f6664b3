import zipfile

import numpy as np
import pytest
from sklearn.base import clone

from napari_vitseg._validation import VitsegError
from napari_vitseg.classifiers import (
    RandomForestPixelClassifier,
    XGBoostPixelClassifier,
    load_classifier_file,
    make_classifier,
    save_classifier_file,
)

KINDS = ["rf", "xgb"]


def _data(classes=(1, 2), n=600, f=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, n)
    X = rng.normal(size=(n, f)).astype(np.float32)
    X[:, 0] += 3 * np.searchsorted(np.sort(classes), y)
    return X, y


@pytest.mark.parametrize("kind", KINDS)
def test_sklearn_conventions(kind):
    clf = make_classifier(kind, n_estimators=10)
    assert clone(clf).get_params() == clf.get_params()
    X, y = _data()
    assert clf.fit(X, y) is clf
    assert clf.n_features_in_ == 5
    np.testing.assert_array_equal(clf.classes_, [1, 2])


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_classes_and_column_order(kind):
    X, y = _data(classes=(2, 5, 9))
    clf = make_classifier(kind, n_estimators=20).fit(X, y)
    np.testing.assert_array_equal(clf.classes_, [2, 5, 9])
    p = clf.predict_proba(X)
    assert p.shape == (len(y), 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    # column j is the probability of classes_[j]: argmax maps back to the right ids
    assert (clf.classes_[p.argmax(1)] == y).mean() > 0.9
    assert set(np.unique(clf.predict(X))) <= {2, 5, 9}


@pytest.mark.parametrize("kind", KINDS)
def test_label_zero_is_unlabelled(kind):
    X, y = _data()
    y0 = y.copy()
    y0[:300] = 0
    clf = make_classifier(kind, n_estimators=10).fit(X, y0)
    np.testing.assert_array_equal(clf.classes_, [1, 2])


@pytest.mark.parametrize("kind", KINDS)
def test_class_balanced(kind):
    # 20 pixels of class 2 against 2000 of class 1, overlapping distributions
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (2000, 2)), rng.normal(1.5, 1, (20, 2))]).astype(np.float32)
    y = np.r_[np.ones(2000, int), np.full(20, 2)]
    # (fully grown forests have pure leaves, where class weights cannot act: use larger leaves)
    extra = {"min_samples_leaf": 10} if kind == "rf" else {}
    clf = make_classifier(kind, n_estimators=30, max_samples_per_class=None, **extra).fit(X, y)
    test = rng.normal(1.5, 1, (500, 2)).astype(np.float32)
    # without balancing the minority class is almost never predicted
    assert (clf.predict(test) == 2).mean() > 0.3


@pytest.mark.parametrize("kind", KINDS)
def test_errors(kind):
    clf = make_classifier(kind)
    X, y = _data()
    with pytest.raises(VitsegError, match="two classes"):
        clf.fit(X, np.ones_like(y))
    with pytest.raises(VitsegError, match="NaN"):
        Xn = X.copy()
        Xn[0, 0] = np.nan
        clf.fit(Xn, y)
    clf.fit(X, y)
    with pytest.raises(VitsegError, match="feature configuration"):
        clf.predict_proba(X[:, :3])
    with pytest.raises(VitsegError, match="one of"):
        make_classifier("svm")
    with pytest.raises(VitsegError, match="parameter"):
        make_classifier(kind, not_a_param=1)


def test_not_fitted():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        RandomForestPixelClassifier().predict_proba(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        XGBoostPixelClassifier().predict_proba(np.zeros((2, 3)))


@pytest.mark.parametrize("kind", KINDS)
def test_file_round_trip(tmp_path, kind):
    X, y = _data(classes=(1, 3))
    clf = make_classifier(kind, n_estimators=15).fit(X, y, feature_names=[f"f{i}" for i in range(5)])
    path = save_classifier_file(tmp_path / "m.vitseg", clf, {"feature_names": [f"f{i}" for i in range(5)]},
                                arrays={"basis": np.eye(3)})
    assert zipfile.is_zipfile(path)
    assert not (tmp_path / "m.vitseg.part").exists()
    clf2, meta, arrays = load_classifier_file(path)
    np.testing.assert_array_equal(clf.predict_proba(X), clf2.predict_proba(X))
    np.testing.assert_array_equal(clf2.classes_, [1, 3])
    np.testing.assert_array_equal(arrays["basis"], np.eye(3))
    assert meta["classifier"]["kind"] == kind
    assert list(clf2.feature_names_in_) == [f"f{i}" for i in range(5)]


def test_refuses_pickle(tmp_path):
    import pickle

    X, y = _data()
    p = tmp_path / "m.vitseg"
    p.write_bytes(pickle.dumps(make_classifier("rf", n_estimators=2).fit(X, y)))
    with pytest.raises(VitsegError, match="pickle"):
        load_classifier_file(p)


def test_refuses_truncated_and_foreign(tmp_path):
    X, y = _data()
    good = save_classifier_file(tmp_path / "m.vitseg", make_classifier("rf", n_estimators=3).fit(X, y), {})
    data = good.read_bytes()
    bad = tmp_path / "t.vitseg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(VitsegError, match="damaged or truncated|not a napari-vitseg"):
        load_classifier_file(bad)
    txt = tmp_path / "x.vitseg"
    txt.write_text("hello")
    with pytest.raises(VitsegError, match="not a napari-vitseg"):
        load_classifier_file(txt)
    other = tmp_path / "o.vitseg"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("metadata.json", '{"format": "something else"}')
    with pytest.raises(VitsegError, match="not a napari-vitseg"):
        load_classifier_file(other)
    with pytest.raises(VitsegError, match="does not exist"):
        load_classifier_file(tmp_path / "missing.vitseg")


def test_refuses_untrusted_skops_types(tmp_path):
    import json

    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = _data()
    clf = make_classifier("rf", n_estimators=3).fit(X, y)
    path = save_classifier_file(tmp_path / "m.vitseg", clf, {})
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("metadata.json"))
    evil = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(np.abs(X), y)
    bad = tmp_path / "evil.vitseg"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("metadata.json", json.dumps(meta))
        zf.writestr("model.skops", sio.dumps(evil))
    with pytest.raises(VitsegError, match="untrusted|not a random forest"):
        load_classifier_file(bad)


def test_max_samples_subbagging_is_the_default_and_old_files_keep_the_bootstrap(tmp_path):
    """Each tree of the default forest draws half the pixels (``max_samples=0.5``, passed to
    scikit-learn); a file saved before the parameter existed loads with ``None`` (Breiman's
    bootstrap), so that a refit of it trains as it always did, and predicts exactly as saved."""
    import json

    X, y = _data()
    clf = make_classifier("rf", n_estimators=10).fit(X, y)
    assert clf.max_samples == 0.5 and clf.estimator_.max_samples == 0.5
    for bad in (0, 1.5, "half"):
        with pytest.raises(VitsegError, match="max_samples"):
            make_classifier("rf", max_samples=bad).validate_params()
    old = make_classifier("rf", n_estimators=10, max_samples=None).fit(X, y)
    path = save_classifier_file(tmp_path / "new.vitseg", old, {})
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(members["metadata.json"])
    del meta["classifier"]["params"]["max_samples"]  # as written before the parameter existed
    members["metadata.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "old.vitseg", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    loaded, _, _ = load_classifier_file(tmp_path / "old.vitseg")
    assert loaded.get_params()["max_samples"] is None
    np.testing.assert_array_equal(loaded.predict_proba(X), old.predict_proba(X))
    again, _, _ = load_classifier_file(path)
    assert again.get_params()["max_samples"] is None  # saved with None: None
