"""Training with real progress: classifiers grow in chunks (trees / boosting rounds) and yield
between them, give the same model as a one-shot fit, and stop when the generator is closed."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from sklearn.ensemble import RandomForestClassifier

from napari_vitseg._progress import Progress, run
from napari_vitseg.classifiers import make_classifier
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter

DATA = "/work/shared/data"


@pytest.fixture(scope="module")
def tem_pixels():
    """Features and labels of the scribbled pixels of a real TEM crop (tem_nanoparticles)."""
    from pathlib import Path

    root = Path(DATA) / "tem_nanoparticles"
    if not root.exists():
        pytest.skip("shared data not available")
    image = tifffile.imread(root / "image.tif")[:256, :256]
    scribbles = tifffile.imread(root / "scribbles.tif")[:256, :256]
    seg = Segmenter(FeatureConfig(sigmas=(1, 2, 4)))
    feats = seg.plane_features(image)
    mask = scribbles > 0
    return image, scribbles, feats[mask], scribbles[mask].astype(np.int64)


def _trees_equal(a, b) -> bool:
    if len(a.estimators_) != len(b.estimators_):
        return False
    for ta, tb in zip(a.estimators_, b.estimators_, strict=True):
        sa, sb = ta.tree_.__getstate__(), tb.tree_.__getstate__()
        for name in sa["nodes"].dtype.names:
            if not np.array_equal(sa["nodes"][name], sb["nodes"][name]):
                return False
        if not np.array_equal(sa["values"], sb["values"]):
            return False
    return True


def test_rf_iter_fit_yields_tree_progress_and_equals_one_shot(tem_pixels):
    _, _, X, y = tem_pixels
    clf = make_classifier("rf", n_estimators=12, n_jobs=2, max_samples_per_class=None)
    steps = []
    # chunk_seconds=0: the smallest chunks (one tree per thread), so there are many of them
    run(clf.iter_fit(X, y, chunk_seconds=0.0), steps.append)
    assert all(isinstance(p, Progress) for p in steps)
    assert steps[0].done == 0 and steps[-1].done == 12 and all(p.total == 12 for p in steps)
    assert sorted(set(p.done for p in steps)) == list(range(0, 13, 2))  # 12 trees, 2 per chunk
    assert [p.done for p in steps] == sorted(p.done for p in steps)
    assert "training rf: 4/12 trees" in [p.msg for p in steps]
    # same trees as scikit-learn's one-shot fit with the same random_state
    ref = RandomForestClassifier(n_estimators=12, class_weight="balanced", random_state=0, n_jobs=2,
                                 min_samples_leaf=clf.min_samples_leaf, max_samples=clf.max_samples).fit(X, y)
    assert _trees_equal(clf.estimator_, ref)
    np.testing.assert_array_equal(clf.predict_proba(X), ref.predict_proba(X).astype(np.float32))
    assert clf.estimator_.warm_start is False and clf.estimator_.n_estimators == 12


def test_rf_fit_is_deterministic_whatever_the_chunks(tem_pixels):
    _, _, X, y = tem_pixels
    a = make_classifier("rf", n_estimators=9, n_jobs=1).fit(X, y)
    b = run(make_classifier("rf", n_estimators=9, n_jobs=2).iter_fit(X, y, chunk_seconds=0.0))
    c = run(make_classifier("rf", n_estimators=9, n_jobs=2).iter_fit(X, y, chunk_seconds=100.0))
    assert _trees_equal(a.estimator_, b.estimator_) and _trees_equal(a.estimator_, c.estimator_)


def test_rf_iter_fit_closed_midway_stops_and_leaves_it_unfitted(tem_pixels):
    _, _, X, y = tem_pixels
    clf = make_classifier("rf", n_estimators=50, n_jobs=2)
    job = clf.iter_fit(X, y, chunk_seconds=0.0)
    seen = [next(job)]
    while seen[-1].done < 4:
        seen.append(next(job))
    job.close()
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert not hasattr(clf, "estimator_") and not hasattr(clf, "classes_")
    with pytest.raises(StopIteration):
        next(job)


def test_a_chunk_runs_in_a_thread_so_close_returns_while_it_still_runs():
    """Cancel does not wait for a slow tree: the generator yields while the chunk's thread works,
    and closing it returns with the thread still running (it is abandoned)."""
    import threading

    from napari_vitseg.classifiers._estimators import _iter_in_thread

    release, started = threading.Event(), []

    def slow():
        started.append(threading.current_thread())
        release.wait(30)
        return "grown"

    job = _iter_in_thread(slow, 0.01, lambda: Progress(3, 10, "training rf: 3/10 trees"))
    assert next(job) == Progress(3, 10, "training rf: 3/10 trees")
    assert next(job).done == 3
    job.close()
    assert started[0].is_alive()  # closed while the work still runs
    release.set()
    started[0].join(5)
    assert run(_iter_in_thread(lambda: 42, 0.01, lambda: Progress(0, 1))) == 42
    with pytest.raises(ZeroDivisionError):
        run(_iter_in_thread(lambda: 1 / 0, 0.01, lambda: Progress(0, 1)))


def test_xgb_iter_fit_equals_one_shot_and_can_be_closed(tem_pixels):
    import xgboost as xgb
    from sklearn.utils.class_weight import compute_sample_weight

    _, _, X, y = tem_pixels
    clf = make_classifier("xgb", n_estimators=15, n_jobs=2, max_samples_per_class=None)
    steps = []
    run(clf.iter_fit(X, y, chunk_seconds=0.0), steps.append)
    assert [p.done for p in steps] == list(range(16))
    assert steps[5].msg == "training xgb: 5/15 rounds"
    yi = y - 1
    d = xgb.DMatrix(X, label=yi, weight=compute_sample_weight("balanced", yi))
    ref = xgb.train(clf._params(2), d, num_boost_round=15)
    assert bytes(clf.booster_.save_raw("ubj")) == bytes(ref.save_raw("ubj"))
    other = make_classifier("xgb", n_estimators=15, n_jobs=2)
    job = other.iter_fit(X, y, chunk_seconds=0.0)
    next(job), next(job)
    job.close()
    assert not hasattr(other, "booster_")


def test_max_samples_per_class_caps_the_training_set(tem_pixels):
    _, _, X, y = tem_pixels
    steps = []
    run(make_classifier("rf", n_estimators=2, max_samples_per_class=300).iter_fit(X, y), steps.append)
    assert steps[0].msg.endswith("on 600 pixels")  # 2 classes x 300


def test_segmenter_iter_fit_reports_trees_and_cancel_leaves_it_unfitted(tem_pixels):
    image, scribbles, _, _ = tem_pixels
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), classifier_params={"n_estimators": 20, "n_jobs": 2})
    msgs = []
    job = seg.iter_fit(image, scribbles)
    for p in job:
        msgs.append(p.msg)
        if p.msg == "training rf: 2/20 trees":  # the first chunk: one tree per thread
            break
    assert msgs[-1] == "training rf: 2/20 trees"
    job.close()  # what the widget's Cancel does between two yields
    assert not seg.is_fitted
    assert any(m.startswith("training rf: 0/20 trees on") for m in msgs)
    done = []
    run(Segmenter(FeatureConfig(sigmas=(1, 2)), classifier_params={"n_estimators": 20}).iter_fit(image, scribbles),
        done.append)
    assert done[-1].done == done[-1].total and [p.done for p in done] == sorted(p.done for p in done)
    assert sum("trees" in p.msg for p in done) >= 3
