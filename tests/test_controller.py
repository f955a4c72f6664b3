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
from napari_vitseg.features.config import FeatureConfig
from napari_vitseg.metrics import mean_iou
from napari_vitseg.pipeline.batch import PROGRESS_UNITS, output_paths
from napari_vitseg.pipeline.scribbles import ScribbleIndex


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
    assert ready.digest == ScribbleIndex.from_array(scribbles).digest()
    assert ready.description == ("live preview: random forest, 16 trees, depth 10, at most 1,000 labelled pixels per "
                                 "class, boundaries not refined (Train refines them)")
    assert ready.segmenter.boundary_classifier_ is None
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
    assert upd.uncertainty.shape == image.shape and upd.uncertainty.dtype == np.uint8  # 0..255 for 0..1
    assert upd.uncertainty.max() <= 128
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
    assert ready3.digest == ScribbleIndex.from_array(scr).digest()
    assert c.cache.misses == misses


def test_full_train_miou_and_probabilities(nanoparticles):
    image, scribbles, truth = nanoparticles
    c = SegmentationController()
    inputs = JobInputs(image=image, scribbles=scribbles.copy(), probabilities=True)
    values, ready = drive(c, c.iter_train(inputs, live=False))
    assert not ready.live and c.model is ready
    assert ready.description == ("full model: random forest, 100 trees, depth unlimited, at most 20,000 labelled pixels "
                                 "per class, boundaries refined")
    assert ready.segmenter.boundary_classifier_ is not None
    assert len(ready.segmenter.classifier_.estimator_.estimators_) == 100
    (upd,) = of_type(values, PlaneUpdate)  # a full train shows no coarse preview
    assert not upd.coarse
    assert upd.probabilities.shape == (2, *image.shape) and upd.probabilities.dtype == np.float32
    np.testing.assert_allclose(upd.probabilities.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(upd.labels, upd.classes[np.argmax(upd.probabilities, 0)])
    np.testing.assert_allclose(upd.uncertainty / 255, 1 - upd.probabilities.max(0), atol=0.5 / 255 + 1e-6)
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
    # nothing under a final name (the batch keeps finished planes in a hidden staging store to resume)
    done = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert done == ["a_seg.tif", "a_seg_probabilities.tif"], done
    first = (out / "a_seg.tif").stat().st_mtime_ns

    # resume: finished files are skipped, the others written
    values, written = drive(c, c.iter_apply_files(JobInputs(), [src], out, probabilities=True))
    assert written == [o for _, o, _ in expected]
    assert values[-1].done == values[-1].total == PROGRESS_UNITS
    assert (out / "a_seg.tif").stat().st_mtime_ns == first  # skipped, not rewritten
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
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
    assert c2.feature_config == full.segmenter.feature_config == c.feature_config.replace(spatial="2d")  # as trained
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


# -- scribbles index, lazy stacks, row bands, memory guard ------------------------------------------


def test_history_regions_of_napari_atoms():
    from collections import namedtuple

    from napari_vitseg._widgets._controller import history_regions, merge_regions

    Atom = namedtuple("Atom", "slice_key mask old_values new_value")  # napari's _MaskedPaintAtom fields
    masked = Atom((slice(2, 3), slice(10, 20), slice(5, 9)), None, np.zeros(1), 1)
    fancy = ((np.array([1, 1, 4]), np.array([3, 7, 5]), np.array([0, 9, 2])), np.zeros(3), 2)
    empty = ((np.array([], int),) * 3, np.zeros(0), 2)
    regions = history_regions([[masked, fancy], [empty]])
    assert regions == [(slice(2, 3), slice(10, 20), slice(5, 9)), (slice(1, 5), slice(3, 8), slice(0, 10))]
    assert history_regions([[object()]]) is None  # unknown atom: the caller re-indexes
    # the dabs of one stroke on one plane become one box; other planes keep theirs
    dabs = [(slice(2, 3), slice(y, y + 5), slice(y, y + 5)) for y in range(0, 40, 4)]
    merged = merge_regions(dabs + [(1, slice(0, 2), slice(0, 2))], (5, 64, 64))
    assert merged == [(slice(2, 3), slice(0, 41), slice(0, 41)), (slice(1, 2), slice(0, 2), slice(0, 2))]


def test_scribble_index_follows_region_updates():
    """update_scribbles with the edited boxes keeps the index equal to indexing the array again."""
    rng = np.random.default_rng(3)
    data = np.zeros((6, 40, 50), np.uint8)
    c = SegmentationController()
    c.index_scribbles(data, empty=True)
    assert c.scribbles.planes == [] and c.scribbles_snapshot().planes == []
    for _ in range(30):
        z = int(rng.integers(6))
        y, x = (int(v) for v in rng.integers(0, 35, 2))
        region = (slice(z, z + 1), slice(y, y + int(rng.integers(1, 6))), slice(x, x + int(rng.integers(1, 9))))
        data[region] = rng.integers(0, 4)  # paint, or erase with 0
        c.update_scribbles([region], lambda r: data[r])
        assert c.scribbles.digest() == ScribbleIndex.from_array(data).digest()
    # a snapshot does not move with later edits
    snap = c.scribbles_snapshot()
    before = snap.digest()
    data[0, :5, :5] = 3
    c.update_scribbles([(0, slice(0, 5), slice(0, 5))], lambda r: data[r])
    assert snap.digest() == before != c.scribbles.digest()
    # an invalid label drops the index with a message
    big = np.zeros((6, 40, 50), np.uint16)
    big[1, 1, 1] = 300
    with pytest.raises(VitsegError, match="1..255"):
        c.update_scribbles([(1, slice(0, 2), slice(0, 2))], lambda r: big[r])
    assert c.scribbles is None and "1..255" in c.scribbles_error
    with pytest.raises(VitsegError, match="no scribbles layer"):
        drive(c, c.iter_train(JobInputs(image=np.zeros((6, 40, 50), np.float32)), live=False))


def counting_stack(nz: int, size: int, reads: list):
    """A lazy (Z, size, size) float32 stack (one dask chunk per plane, one graph layer, like the
    reader's ``da.from_zarr``) whose planes record their index in ``reads`` when read."""
    import dask.array as da

    def load(block_id=None):
        z = block_id[0]
        reads.append(z)
        rng = np.random.default_rng(z)
        plane = rng.normal(size=(size, size)).astype(np.float32)
        plane[:, size // 2:] += 4
        return plane[None]

    return da.map_blocks(load, dtype=np.float32, chunks=((1,) * nz, (size,), (size,)),
                         meta=np.empty((0, 0, 0), np.float32))


def live_retrain_peak(nz: int, size: int = 96, spatial: str = "2d"):
    """(planes read, peak bytes traced) of a live retrain + prediction on a lazy stack of ``nz`` planes."""
    import dask
    import dask.array as da

    reads: list = []
    image = counting_stack(nz, size, reads)
    scr = da.zeros((nz, size, size), np.uint8, chunks=(1, size, size))
    c = SegmentationController()
    c.feature_config = FeatureConfig(sigmas=(1.0, 2.0), spatial=spatial)
    c.index_scribbles(scr)  # the whole (lazy) scribbles array, plane by plane: zeros
    marks = {3: (slice(10, 60), slice(5, 10)), nz - 2: (slice(10, 60), slice(size - 10, size - 5))}
    for (z, (ys, xs)), label in zip(marks.items(), (1, 2), strict=True):
        region = (slice(z, z + 1), ys, xs)
        c.update_scribbles([region], lambda r, label=label: np.full((1, 50, 5), label, np.uint8))
    assert c.scribbles.planes == sorted(marks) and reads == []
    inputs = JobInputs(image=image, scribbles=c.scribbles_snapshot(), z=nz // 2)
    with dask.config.set(scheduler="synchronous"):
        drive(c, c.iter_train(inputs, live=True))  # cold: reads the planes, caches them and their features
        cold = set(reads)
        reads.clear()
        c.update_scribbles([(3, slice(0, 2), slice(0, 2))], lambda r: np.ones((1, 2, 2), np.uint8))
        inputs = JobInputs(image=image, scribbles=c.scribbles_snapshot(), z=nz // 2)
        import tracemalloc

        tracemalloc.start()
        values, ready = drive(c, c.iter_train(inputs, live=True))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert ready is not None and c.n_trainings == 2
    assert [u.z for u in of_type(values, PlaneUpdate)] == [nz // 2]
    assert reads == []  # the next stroke reads nothing: the planes are in the plane cache (LRU)
    if spatial == "auto":
        assert c.model.segmenter.feature_config.spatial == "3d"  # planes alike but for noise
    return cold, peak, set(marks) | {nz // 2}


def test_live_retrain_on_lazy_stack_reads_scribbled_and_shown_planes_only():
    """Issue 9: on a lazy 200-plane stack a live retrain reads the planes with scribbles and the
    plane in view, nothing else, and its peak memory does not grow with the number of planes."""
    read, _, expected = live_retrain_peak(200)
    assert read == expected, sorted(read ^ expected)
    _, peak20, _ = live_retrain_peak(20)
    _, peak400, _ = live_retrain_peak(400)
    print(f"live retrain peak (tracemalloc): 20 planes {peak20 / 2**20:.2f} MiB, 400 planes {peak400 / 2**20:.2f} MiB")
    assert peak400 <= 1.1 * peak20 + 2**20, (peak20, peak400)


def test_live_on_a_lazy_stack_with_auto_spatial_reads_the_3d_windows_once():
    """``spatial='auto'``: the first training estimates the z step from the scribbled planes and
    their neighbours and trains with 3D filters, which read the planes within the z-radius of the
    scribbled planes and of the plane in view; the next stroke reads nothing (estimate kept)."""
    from napari_vitseg.features.volume import z_radius

    read, _, planes = live_retrain_peak(200, spatial="auto")
    r = z_radius((1.0, 2.0), FeatureConfig().families, 1.0)
    def mirror(k):  # reflect-101 at both ends of the 200 planes
        return -k if k < 0 else (2 * 199 - k if k > 199 else k)

    assert read == {mirror(z + d) for z in planes for d in range(-r, r + 1)}, sorted(read)


def test_row_bands_in_view_first():
    from napari_vitseg._widgets._controller import row_bands

    assert row_bands(10, 4, band_pixels=12) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert row_bands(10, 4, (5, 8), band_pixels=12) == [(3, 6), (6, 9), (9, 10), (0, 3)]
    assert row_bands(10, 4, (0, 10), band_pixels=12)[0] == (0, 3)


def test_big_plane_predicted_in_row_bands_view_first(monkeypatch, two_region_image):
    from napari_vitseg._widgets import _controller

    image, scribbles = two_region_image
    c = SegmentationController()
    c.feature_config = FeatureConfig(sigmas=(1.0, 2.0))
    _, ready = drive(c, c.iter_train(JobInputs(image=image, scribbles=scribbles), live=True, predict=False))
    monkeypatch.setattr(_controller, "TILE_PIXELS", 1000)
    monkeypatch.setattr(_controller, "BAND_PIXELS", 16 * 64)  # bands of 16 rows
    values, _ = drive(c, c.iter_predict_plane(ready.segmenter, JobInputs(image=image, view_rows=(40, 50),
                                                                          probabilities=True), coarse=True))
    ups = of_type(values, PlaneUpdate)
    assert [u.rows for u in ups] == [(32, 48), (48, 64), (16, 32), (0, 16)]  # in view first, no coarse preview
    assert [u.complete for u in ups] == [False, False, False, True]
    labels = np.zeros(image.shape, np.uint8)
    proba = np.zeros((2, *image.shape), np.float32)
    for u in ups:
        labels[slice(*u.rows)] = u.labels
        proba[:, slice(*u.rows)] = u.probabilities
        assert u.uncertainty.dtype == np.uint8
    # with the halo the bands' features equal the whole plane's up to float32 rounding (a tree or
    # two of the 16 may then take the other branch at a pixel)
    ref = ready.segmenter.predict_plane(image)
    assert np.abs(proba - ref).max() <= 2 / 16 + 1e-6 and np.abs(proba - ref).mean() < 1e-3
    assert (labels == ready.segmenter.labels_from_proba(ref)).mean() > 0.999
    # the bands' features are cached: predicting again computes nothing
    misses = c.cache.misses
    drive(c, c.iter_predict_plane(ready.segmenter, JobInputs(image=image, view_rows=(40, 50))))
    assert c.cache.misses == misses


def test_memory_guard_counts_the_job_and_points_at_apply_to_files(two_region_image):
    image, scribbles = two_region_image
    stack = np.stack([image] * 4)
    scr = np.zeros(stack.shape, np.uint8)
    scr[1] = scribbles
    c = SegmentationController()
    inputs = JobInputs(image=stack, scribbles=ScribbleIndex.from_array(scr), z=1)
    parts = c.memory_estimate("apply", inputs, outputs_bytes=123)
    nf = c.featurizer().n_features(1)
    n = int((scr > 0).sum())
    assert parts["output layers"] == 123
    assert parts["training matrix"] >= 3 * n * nf * 4  # the model is trained first: no full model yet
    assert parts["classifier"] > 0 and parts["features of a plane"] >= 64 * 64 * nf * 4
    assert c.check_memory("apply", inputs, outputs_bytes=123, available=2**40) == parts
    with pytest.raises(VitsegError, match="Apply to files") as e:
        c.check_memory("apply", inputs, outputs_bytes=2**30, available=2**30)
    assert "output layers 1.0 GiB" in str(e.value)
    with pytest.raises(VitsegError, match="Apply to files"):
        c.check_memory("train", inputs, available=2**10)
    from napari_vitseg._widgets._controller import available_memory

    assert available_memory() > 0


# ------------------------------------------------------------------ channel axes from any reader (issue 14)
@pytest.mark.parametrize(("shape", "metadata", "axis"), [
    ((2, 518, 518), None, 0),                 # CYX from napari's builtin reader
    ((3, 256, 256), {}, 0),
    ((800, 422, 2), None, 2),                 # (Y, X, 2) TIFF
    ((6, 518, 518), None, None),              # a short z-stack stays a stack
    ((4, 518, 518), None, None),
    ((518, 518), None, None),
    ((6, 518, 518), {"axes": "ZYX", "channel_axis": None}, None),   # our reader: no channel axis
    ((2, 6, 64, 64), {"axes": "CZYX"}, 0),    # ImageJ / OME axes
    ((6, 64, 64, 3), {"axes": "ZYXS"}, 3),
    ((6, 64, 64), {"channel_axis": 0}, 0),    # the reader said so
    ((10, 64, 64), None, None),
])
def test_guess_channel_axis(shape, metadata, axis):
    from napari_vitseg._widgets._controller import guess_channel_axis

    got, why = guess_channel_axis(shape, metadata)
    assert got == axis
    if axis is not None:
        assert why  # a reason for the user to confirm


def test_carry_scribbles_between_channel_axes():
    from napari_vitseg._widgets._controller import carry_scribbles

    s = np.zeros((2, 8, 9), np.uint8)
    s[0, 1, 1] = 1
    s[1, 2, 3] = 2
    s[0, 2, 3] = 1  # overlapping strokes: the larger label wins
    flat = carry_scribbles(s, (2, 8, 9), None, 0)
    assert flat.shape == (8, 9) and flat[1, 1] == 1 and flat[2, 3] == 2 and flat.sum() == 3
    back = carry_scribbles(flat, (2, 8, 9), 0, None)
    assert back.shape == (2, 8, 9) and (back[0] == flat).all() and (back[1] == flat).all()
    assert carry_scribbles(flat, (2, 8, 9), 0, 0) is None
    assert carry_scribbles(s, (2, 8, 9), 0, 2) is None  # one axis for another: not guessed


def test_apply_stack_numbers_planes_like_napari(tmp_path):
    stack, truth = two_region_stack(3)
    c = SegmentationController()
    c.classifier_params = {"n_estimators": 5}
    scr = np.zeros(stack.shape, np.uint8)
    scr[1, :, :4] = 1
    scr[1, :, -4:] = 2
    values, n = drive(c, c.iter_apply_stack(JobInputs(stack, None, scr, z=1)))
    msgs = [v.msg for v in of_type(values, Progress) if "(" in v.msg and "/3)" in v.msg]
    assert msgs == ["plane 1 (1/3)", "plane 0 (2/3)", "plane 2 (3/3)"], msgs


def test_suggest_region_finds_the_uncertain_patch_and_skips_scribbles():
    from napari_vitseg._widgets._controller import suggest_region

    u = np.zeros((200, 300), np.uint8)
    u[150:170, 40:60] = 255
    u[20:40, 250:270] = 200
    y, x, mean = suggest_region(u, window=20)
    assert 150 <= y < 170 and 40 <= x < 60 and mean > 0.9
    lab = np.zeros(u.shape, bool)
    lab[140:180, 30:70] = True  # already painted there: the next patch
    y, x, _ = suggest_region(u, window=20, labelled=lab)
    assert 20 <= y < 40 and 250 <= x < 270
    assert suggest_region(np.zeros((10, 10), np.uint8)) is None
