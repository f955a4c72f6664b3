"""pipeline.scribbles.ScribbleIndex, and training that reads only the planes holding scribbles."""

import tracemalloc

import numpy as np
import pytest

from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter
from napari_vitseg.pipeline.scribbles import ScribbleIndex


class LazyStack:
    """A (Z, Y, X) float32 stack made plane by plane on access (nothing held), counting reads."""

    def __init__(self, nz, ny=64, nx=64):
        self.shape, self.ndim, self.dtype = (nz, ny, nx), 3, np.dtype(np.float32)
        self.reads: list[int] = []

    def __getitem__(self, z):
        if not isinstance(z, (int, np.integer)):
            raise AssertionError(f"only whole planes may be read, got {z!r}")
        self.reads.append(int(z))
        rng = np.random.default_rng(int(z))
        plane = rng.normal(size=self.shape[1:]).astype(np.float32)
        plane[:, self.shape[2] // 2:] += 4
        return plane


def _scribbles(shape, planes):
    s = np.zeros(shape, np.uint8)
    for z in planes:
        s[z, 10:50, 5:10] = 1
        s[z, 10:50, 50:55] = 2
    return s


def test_index_matches_the_dense_scribbles_and_updates_in_place():
    rng = np.random.default_rng(0)
    dense = (rng.random((4, 30, 40)) < 0.05) * rng.integers(1, 4, (4, 30, 40))
    index = ScribbleIndex.from_array(dense.astype(np.uint16))
    np.testing.assert_array_equal(index.to_array(), dense)
    ids, counts = np.unique(dense[dense > 0], return_counts=True)
    assert index.class_counts() == dict(zip(ids.tolist(), counts.tolist(), strict=True))
    r, c, lab = index.plane(2)
    np.testing.assert_array_equal(lab, dense[2][dense[2] > 0])  # row-major order, as dense[mask]
    # brush strokes and erasing, region by region, keep index == dense
    for _ in range(30):
        z, y, x = rng.integers(0, 4), rng.integers(0, 25), rng.integers(0, 35)
        h, w = rng.integers(1, 6, 2)
        new = rng.integers(0, 4, (h, w))
        dense[z, y:y + h, x:x + w] = new
        index.update((int(z), slice(y, y + h), slice(x, x + w)), new)
        np.testing.assert_array_equal(index.to_array(), dense)
    assert index.digest() == ScribbleIndex.from_array(dense.astype(np.uint8)).digest()
    dense[:] = 0
    index.update((slice(None), slice(None), slice(None)), dense)
    assert index.planes == [] and index.class_counts() == {}


def test_index_errors():
    with pytest.raises(VitsegError, match="class ids must be 1..255"):
        ScribbleIndex.from_array(np.full((3, 3), 300, np.uint16))
    with pytest.raises(VitsegError, match="negative"):
        ScribbleIndex.from_array(-np.ones((3, 3), np.int8))
    with pytest.raises(VitsegError, match="integer class ids"):
        ScribbleIndex.from_array(np.full((3, 3), 0.5))
    with pytest.raises(VitsegError, match="spatial shape"):
        ScribbleIndex.from_array(np.zeros((3, 3), np.uint8), (4, 4))
    with pytest.raises(VitsegError, match="single class"):
        ScribbleIndex.from_array(np.ones((3, 3), np.uint8)).check_trainable()


def test_fit_reads_only_scribbled_planes_of_a_lazy_stack():
    stack = LazyStack(200)
    index = ScribbleIndex.from_array(_scribbles(stack.shape, [3, 150]))
    seg = Segmenter(FeatureConfig(sigmas=(1, 2), spatial="2d"), "rf", {"n_estimators": 5}).fit(stack, index)
    assert sorted(set(stack.reads)) == [3, 150]
    assert seg.training_stats_["n_training_planes"] == 2
    assert seg.training_stats_["labelled_pixels"] == {"1": 400, "2": 400}


def test_auto_fit_reads_the_scribbled_planes_and_their_3d_windows_only():
    """With ``spatial='auto'`` the z-step estimate reads the scribbled planes and the next one of
    each; this stack's planes share their structure (noise aside), so it trains with 3D filters,
    which read the planes within the z-radius: nothing else of the 200 planes."""
    from napari_vitseg.features.volume import z_radius

    stack = LazyStack(200)
    index = ScribbleIndex.from_array(_scribbles(stack.shape, [3, 150]))
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 5}).fit(stack, index)
    cfg = seg.feature_config
    assert cfg.spatial == "3d"
    r = z_radius(cfg.sigmas, cfg.families, cfg.z_anisotropy)
    # the window of plane 3 mirrors at the stack's start (reflect-101: plane -k is plane k)
    assert 0 < r < 20 and set(stack.reads) == {abs(z + d) for z in (3, 150) for d in range(-r, r + 1)}


def test_fit_on_an_index_equals_fit_on_the_array():
    stack = LazyStack(6)
    dense = _scribbles(stack.shape, [1, 4])
    planes = np.stack([stack[z] for z in range(6)])
    a = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 5}).fit(planes, dense)
    b = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 5}).fit(stack, ScribbleIndex.from_array(dense))
    np.testing.assert_array_equal(a.predict_plane(planes[2]), b.predict_plane(planes[2]))


def test_fit_peak_memory_does_not_grow_with_the_number_of_planes():
    peaks = {}
    for nz in (20, 400):
        stack = LazyStack(nz)
        index = ScribbleIndex.from_array(_scribbles(stack.shape, [2, 7]))
        seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3, "n_jobs": 1})
        tracemalloc.start()
        seg.fit(stack, index)
        peaks[nz] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[400] < 1.2 * peaks[20], peaks


def test_copy_is_an_independent_snapshot():
    dense = _scribbles((3, 64, 64), [0, 2])
    index = ScribbleIndex.from_array(dense)
    snap = index.copy()
    index.update((0, slice(0, 64), slice(0, 64)), np.zeros((64, 64), np.uint8))
    index.update((1, slice(0, 4), slice(0, 4)), np.full((4, 4), 3, np.uint8))
    np.testing.assert_array_equal(snap.to_array(), dense)
    assert snap.digest() == ScribbleIndex.from_array(dense).digest() != index.digest()


def test_predict_rows_equals_the_rows_of_the_whole_plane():
    stack = LazyStack(2)
    seg = Segmenter(FeatureConfig(sigmas=(1, 4)), "rf", {"n_estimators": 5}).fit(
        stack, ScribbleIndex.from_array(_scribbles(stack.shape, [0])))
    plane = stack[1]
    whole = seg.predict_plane(plane, use_cache=False)
    band = seg.predict_rows(plane, (10, 30))
    assert band.shape == (2, 20, 64) and band.dtype == np.float32
    np.testing.assert_allclose(band, whole[:, 10:30], atol=1e-6)
    hits = seg.cache.hits
    np.testing.assert_array_equal(seg.predict_rows(plane, (10, 30)), band)
    assert seg.cache.hits == hits + 1  # the band's features came from the cache
