"""The segmentation widget's Qt-free controller, headless (no viewer, no Qt).

Its jobs are driven the way the widget drives them (as stardist-napari's tests call the plugin
function without a GUI): iterate the generator, adopt each ``ModelReady`` as it arrives (the
widget does that on the UI thread), and collect what is yielded.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_vitseg._progress import Progress
from napari_vitseg._validation import VitsegError
from napari_vitseg._widgets._controller import (
    COARSE_PIXELS,
    LIVE_PARAMS,
    JobInputs,
    ModelReady,
    PlaneUpdate,
    SegmentationController,
    Status,
)
from napari_vitseg.features.cache import content_digest
from napari_vitseg.features.config import FeatureConfig
from napari_vitseg.metrics import mean_iou
from napari_vitseg.pipeline.batch import PROGRESS_UNITS, output_paths


def drive(controller: SegmentationController, job):
    """Run a controller job as the widget does; returns (yielded values, returned value)."""
    values = []
    while True:
        try:
            value = next(job)
        except StopIteration as stop:
            return values, stop.value
        values.append(value)
        if isinstance(value, ModelReady):
            controller.adopt(value)


def of_type(values, cls) -> list:
    return [v for v in values if isinstance(v, cls)]


def position(values, obj) -> int:
    """Index of ``obj`` itself in ``values`` (the dataclasses hold arrays: no ``==``)."""
    return next(i for i, v in enumerate(values) if v is obj)


def two_region_stack(nz: int, size: int = 64, seed: int = 0):
    """(stack, truth): noisy planes with a bright right half (class 2) and a dark left half (class 1)."""
    rng = np.random.default_rng(seed)
    stack = rng.normal(size=(nz, size, size)).astype(np.float32)
    stack[:, :, size // 2:] += 4
    truth = np.ones((nz, size, size), np.uint8)
    truth[:, :, size // 2:] = 2
    return stack, truth


def test_importing_the_controller_imports_no_qt():
    code = ("import sys, napari_vitseg._widgets._controller; "
            "gui = {'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'superqt', 'magicgui', 'napari', 'vispy'}; "
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in gui)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout


def test_live_train_small_model_reused_when_scribbles_unchanged(nanoparticles):
    image, scribbles, truth = nanoparticles
    assert image.size < COARSE_PIXELS  # one full-resolution plane, no coarse preview
    c = SegmentationController()
    values, ready = drive(c, c.iter_train(JobInputs(image=image, scribbles=scribbles.copy()), live=True))
    assert all(isinstance(v, (Progress, ModelReady, PlaneUpdate)) for v in values)
    assert of_type(values, ModelReady) == [ready]
    assert ready.live and c.model is ready and c.n_trainings == 1
    assert ready.digest == content_digest(scribbles)
    assert ready.description == "live preview: random forest, 16 trees, depth 10"
    # the small live model: 16 trees of depth <= 10 on at most 1,000 pixels per class
    live = LIVE_PARAMS["rf"]
    assert ready.segmenter.classifier_params == live
    trees = ready.segmenter.classifier_.estimator_.estimators_
    assert len(trees) == live["n_estimators"] and max(t.get_depth() for t in trees) <= live["max_depth"]
    # ModelReady comes before the plane it predicts
    kinds = [type(v) for v in values if not isinstance(v, Progress)]
    assert kinds == [ModelReady, PlaneUpdate]
    (upd,) = of_type(values, PlaneUpdate)
    assert upd.z is None and not upd.coarse and upd.probabilities is None
    assert upd.labels.shape == image.shape and upd.labels.dtype == np.uint8
    assert upd.uncertainty.shape == image.shape and upd.uncertainty.dtype == np.float32
    assert 0 <= upd.uncertainty.min() and upd.uncertainty.max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(upd.classes, [1, 2])
    miou = mean_iou(upd.labels, truth)
    assert miou >= 0.88, miou

    # unchanged scribbles (e.g. undo then redo): no training, the same model predicts again
    misses = c.cache.misses
    values2, ready2 = drive(c, c.iter_train(JobInputs(image=image, scribbles=scribbles.copy()), live=True))
    assert ready2 is ready and c.n_trainings == 1 and not of_type(values2, ModelReady)
    np.testing.assert_array_equal(of_type(values2, PlaneUpdate)[-1].labels, upd.labels)
    # a new stroke retrains, on the cached features
    scr = scribbles.copy()
    scr[300, 100:140] = 2
    _, ready3 = drive(c, c.iter_train(JobInputs(image=image, scribbles=scr), live=True))
    assert ready3 is not ready and c.model is ready3 and c.n_trainings == 2
    assert ready3.digest == content_digest(scr)
    assert c.cache.misses == misses


def test_full_train_miou_and_probabilities(nanoparticles):
    image, scribbles, truth = nanoparticles
    c = SegmentationController()
    inputs = JobInputs(image=image, scribbles=scribbles.copy(), probabilities=True)
    values, ready = drive(c, c.iter_train(inputs, live=False))
    assert not ready.live and c.model is ready
    assert ready.description == "full model: random forest, 100 trees, depth unlimited"
    assert len(ready.segmenter.classifier_.estimator_.estimators_) == 100
    (upd,) = of_type(values, PlaneUpdate)  # a full train shows no coarse preview
    assert not upd.coarse
    assert upd.probabilities.shape == (2, *image.shape) and upd.probabilities.dtype == np.float32
    np.testing.assert_allclose(upd.probabilities.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(upd.labels, upd.classes[np.argmax(upd.probabilities, 0)])
    np.testing.assert_allclose(upd.uncertainty, 1 - upd.probabilities.max(0), atol=1e-6)
    miou = mean_iou(upd.labels, truth)
    print(f"controller mIoU (classical features, RF 100 trees): {miou:.4f}")
    assert miou >= 0.88, miou


def test_fewer_than_two_classes(two_region_image):
    image, scribbles = two_region_image
    one = np.where(scribbles == 1, 1, 0).astype(np.uint8)
    c = SegmentationController()
    # live mode waits quietly: a status message, no training, no error
    values, ready = drive(c, c.iter_train(JobInputs(image=image, scribbles=one), live=True))
    assert ready is None and c.model is None and c.n_trainings == 0
    assert len(values) == 1 and isinstance(values[0], Status) and "at least two classes" in values[0].msg
    # a full train is an error that says what to do
    with pytest.raises(VitsegError, match="at least two classes"):
        drive(c, c.iter_train(JobInputs(image=image, scribbles=one), live=False))
    with pytest.raises(VitsegError, match="no scribbles layer"):
        drive(c, c.iter_train(JobInputs(image=image), live=False))
    # without a model nor two painted classes, there is nothing to apply or save
    with pytest.raises(VitsegError, match="No classifier yet"):
        drive(c, c.iter_apply_stack(JobInputs(image=image, scribbles=one)))
    assert c.n_trainings == 0


def test_predict_plane_coarse_preview_then_full():
    size = 800
    assert size * size > COARSE_PIXELS
    rng = np.random.default_rng(1)
    image = rng.normal(size=(size, size)).astype(np.float32)
    image[:, size // 2:] += 4
    scribbles = np.zeros((size, size), np.uint8)
    scribbles[100:700, 50:60] = 1
    scribbles[100:700, 700:710] = 2
    c = SegmentationController()
    c.feature_config = FeatureConfig(sigmas=(1.0, 2.0))
    _, ready = drive(c, c.iter_train(JobInputs(image=image, scribbles=scribbles), live=True, predict=False))
    inputs = JobInputs(image=image, probabilities=True)
    values, _ = drive(c, c.iter_predict_plane(ready.segmenter, inputs, coarse=True))
    planes = of_type(values, PlaneUpdate)
    assert [p.coarse for p in planes] == [True, False]  # the stride-2 preview first
    assert position(values, planes[0]) < position(values, planes[1])
    for p in planes:
        assert p.labels.shape == (size, size) and p.labels.dtype == np.uint8
        assert p.uncertainty.shape == (size, size) and p.probabilities.shape == (2, size, size)
    coarse, full = planes
    assert (coarse.labels == full.labels).mean() > 0.95
    assert values[-1] == Progress(2, 2, "done")
    # without coarse: the full plane only
    values, _ = drive(c, c.iter_predict_plane(ready.segmenter, inputs, coarse=False))
    assert [p.coarse for p in of_type(values, PlaneUpdate)] == [False]


def test_apply_stack_trains_full_model_first_and_starts_at_the_current_plane():
    stack, truth = two_region_stack(5)
    scribbles = np.zeros(stack.shape, np.uint8)
    scribbles[1, 10:50, 5:10] = 1
    scribbles[1, 10:50, 50:55] = 2
    c = SegmentationController()
    c.classifier_params = {"n_estimators": 10}
    # a live model on plane 1 (its plane only)
    values, live = drive(c, c.iter_train(JobInputs(image=stack, scribbles=scribbles, z=1), live=True))
    assert live.live and [p.z for p in of_type(values, PlaneUpdate)] == [1]
    with pytest.raises(VitsegError, match="outside the stack"):
        drive(c, c.iter_predict_plane(live.segmenter, JobInputs(image=stack, z=5)))

    values, n = drive(c, c.iter_apply_stack(JobInputs(image=stack, scribbles=scribbles, z=3)))
    assert n == 5
    # the live preview is replaced by the full-quality model before any plane is drawn
    assert "training the full-quality model first" in of_type(values, Status)[0].msg
    (full,) = of_type(values, ModelReady)
    assert not full.live and c.model is full
    assert len(full.segmenter.classifier_.estimator_.estimators_) == 10
    planes = of_type(values, PlaneUpdate)
    assert position(values, full) < position(values, planes[0])
    assert [p.z for p in planes] == [3, 0, 1, 2, 4]  # the plane in view first
    for p in planes:
        assert p.labels.shape == (64, 64) and p.labels.dtype == np.uint8 and p.probabilities is None
        assert (p.labels == truth[p.z]).mean() > 0.95
    assert values[-1] == Progress(5, 5, "done")
    # with a full model there is nothing to retrain
    values, _ = drive(c, c.iter_apply_stack(JobInputs(image=stack, scribbles=scribbles, probabilities=True)))
    assert not of_type(values, ModelReady) and c.n_trainings == 2
    planes = of_type(values, PlaneUpdate)
    assert [p.z for p in planes] == [0, 1, 2, 3, 4] and planes[0].probabilities.shape == (2, 64, 64)
    # a 2D image is one plane
    values, n = drive(c, c.iter_apply_stack(JobInputs(image=stack[0])))
    assert n == 1 and [p.z for p in of_type(values, PlaneUpdate)] == [None]


def test_apply_files_writes_named_outputs_and_resumes(tmp_path, two_region_image):
    image, scribbles = two_region_image
    c = SegmentationController()
    c.classifier_params = {"n_estimators": 10}
    _, ready = drive(c, c.iter_train(JobInputs(image=image, scribbles=scribbles), live=False, predict=False))
    seg = ready.segmenter
    src = tmp_path / "in"
    src.mkdir()
    stack, _ = two_region_stack(3, seed=2)
    tifffile.imwrite(src / "a.tif", image)
    tifffile.imwrite(src / "cell.day1.tif", stack, photometric="minisblack")
    tifffile.imwrite(src / "cell.day2.tif", stack[::-1], photometric="minisblack")
    files = sorted(src.iterdir())
    out = tmp_path / "out"
    expected = output_paths(files, out, probabilities=True)
    assert [o.name for _, o, _ in expected] == ["a_seg.tif", "cell.day1_seg.tif", "cell.day2_seg.tif"]

    # cancelled (the generator closed) while the second file is written: no partial output
    job = c.iter_apply_files(JobInputs(), [src], out, probabilities=True)
    for value in job:
        if isinstance(value, Progress) and value.msg.startswith("file 2/3"):
            break
    job.close()
    done = sorted(p.name for p in out.iterdir())
    assert done == ["a_seg.tif", "a_seg_probabilities.tif"], done
    first = (out / "a_seg.tif").stat().st_mtime_ns

    # resume: finished files are skipped, the others written
    values, written = drive(c, c.iter_apply_files(JobInputs(), [src], out, probabilities=True))
    assert written == [o for _, o, _ in expected]
    assert values[-1].done == values[-1].total == PROGRESS_UNITS
    assert (out / "a_seg.tif").stat().st_mtime_ns == first  # skipped, not rewritten
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [o.name for _, o, _ in expected] + [p.name for _, _, p in expected])
    lab = tifffile.imread(out / "a_seg.tif")
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, seg.labels_from_proba(seg.predict_plane(image)))
    lab = tifffile.imread(out / "cell.day1_seg.tif")
    assert lab.shape == stack.shape
    np.testing.assert_array_equal(lab[1], seg.labels_from_proba(seg.predict_plane(stack[1])))
    prob = tifffile.imread(out / "cell.day2_seg_probabilities.tif")
    assert prob.shape == (3, 2, 64, 64) and prob.dtype == np.float16
    assert c.n_trainings == 1


def test_save_load_roundtrip_class_names_and_colours(tmp_path, nanoparticles):
    image, scribbles, truth = nanoparticles
    c = SegmentationController()
    c.classifier_params = {"n_estimators": 20}
    c.class_names = ["particle", "matrix"]
    c.class_colors = ["#00ff00", "#aa00aa"]
    _, live = drive(c, c.iter_train(JobInputs(image=image, scribbles=scribbles.copy()), live=True, predict=False))
    assert live.live
    path = tmp_path / "nano.vitseg"
    with pytest.raises(VitsegError, match="No classifier yet"):
        drive(SegmentationController(), SegmentationController().iter_save(JobInputs(), path))

    # saving a live preview trains the full-quality model first
    values, saved = drive(c, c.iter_save(JobInputs(image=image, scribbles=scribbles.copy()), path))
    assert saved == path and path.is_file()
    msgs = [v.msg for v in of_type(values, Status)]
    assert msgs == ["training the full-quality model first", "saving nano.vitseg"]
    (full,) = of_type(values, ModelReady)
    assert not full.live and c.model is full and c.n_trainings == 2
    ref = full.segmenter.predict_plane(image)

    c2 = SegmentationController()
    values, ready = drive(c2, c2.iter_load(JobInputs(image=image, probabilities=True), path))
    assert ready.loaded_from == str(path) and c2.model is ready and not ready.live
    assert c2.class_names == ["particle", "matrix"]
    assert c2.class_colors == ["#00ff00", "#aa00aa"]
    assert c2.classifier == "rf" and c2.classifier_params["n_estimators"] == 20
    assert c2.feature_config == c.feature_config
    (upd,) = of_type(values, PlaneUpdate)
    np.testing.assert_allclose(upd.probabilities, ref, atol=1e-6)
    np.testing.assert_array_equal(upd.labels, full.segmenter.labels_from_proba(ref))
    assert mean_iou(upd.labels, truth) >= 0.88
    # without an image: the model only
    c3 = SegmentationController()
    values, ready3 = drive(c3, c3.iter_load(JobInputs(), path))
    assert not of_type(values, PlaneUpdate) and c3.class_names == ["particle", "matrix"]
    # a live stroke after loading trains a new model (a loaded model is never taken for a live one)
    _, again = drive(c3, c3.iter_train(JobInputs(image=image, scribbles=scribbles.copy()), live=True, predict=False))
    assert again is not ready3 and again.live and c3.n_trainings == 1
