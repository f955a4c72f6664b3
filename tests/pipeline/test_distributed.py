"""pipeline._distributed: batch apply on a dask.distributed LocalCluster equals one process."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_vitseg._progress import run
from napari_vitseg.features import FeatureConfig
from napari_vitseg.io._writers import recorded_planes, staging_path
from napari_vitseg.pipeline import Segmenter
from napari_vitseg.pipeline._distributed import worker_state
from napari_vitseg.pipeline.batch import iter_apply_file, iter_apply_files

CROP = (slice(None), slice(64, 192), slice(64, 224))


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def seg_and_stack(cells_stack):
    stack, scribbles = (np.ascontiguousarray(a[CROP]) for a in cells_stack)
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 5}).fit(stack[:2], scribbles[:2])
    return seg, stack


def test_local_cluster_equals_one_process_bit_for_bit(tmp_path, client, seg_and_stack):
    seg, stack = seg_and_stack
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", stack)
    tifffile.imwrite(src / "b.tif", stack[::-1].copy())
    one, two = tmp_path / "one", tmp_path / "two"
    run(iter_apply_files(seg, [src], one, probabilities=True))
    steps = []
    written = run(iter_apply_files(seg, [src], two, probabilities=True, client=client, max_in_flight=3),
                  steps.append)
    assert [w.name for w in written] == ["a_seg.tif", "b_seg.tif"]
    for name in ("a_seg.tif", "a_seg_probabilities.tif", "b_seg.tif", "b_seg_probabilities.tif"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    np.testing.assert_array_equal(tifffile.imread(two / "b_seg.tif"), seg.predict(stack[::-1].copy()))
    assert steps[-1].count == (12, 12)
    # the classifier was shipped once: each worker process loaded it once, for both files
    state = client.run(worker_state)
    assert len(state) == 2 and all(s["loads"] == 1 for s in state.values()), state
    # OME-Zarr outputs and a plane subset through the cluster
    run(iter_apply_file(seg, src / "a.tif", tmp_path / "one.ome.zarr", planes=slice(2, 5)))
    run(iter_apply_file(seg, src / "a.tif", tmp_path / "two.ome.zarr", planes=slice(2, 5), client=client))
    a = (tmp_path / "one.ome.zarr" / "0")
    b = (tmp_path / "two.ome.zarr" / "0")
    assert {p.name: p.read_bytes() for p in a.rglob("*") if p.is_file()} == \
        {p.name: p.read_bytes() for p in b.rglob("*") if p.is_file()}


def test_a_cluster_run_resumes_in_one_process(tmp_path, client, seg_and_stack, monkeypatch):
    """The staging is the client's: a run interrupted on the cluster resumes without it."""
    seg, stack = seg_and_stack
    tifffile.imwrite(tmp_path / "a.tif", stack)
    (tmp_path / "ref").mkdir()
    run(iter_apply_file(seg, tmp_path / "a.tif", tmp_path / "ref" / "o.tif"))
    job = iter_apply_file(seg, tmp_path / "a.tif", tmp_path / "o.tif", client=client, max_in_flight=2)
    for p in job:
        if p.msg.endswith("plane 4/6"):
            break
    job.close()  # cancels the tasks in flight
    assert not (tmp_path / "o.tif").exists()
    assert sorted(recorded_planes(staging_path(tmp_path / "o.tif"))) == [0, 1, 2]
    calls = []
    orig = seg._predict_band  # one band per plane, on the sequential and the overlapped path
    monkeypatch.setattr(seg, "_predict_band", lambda *a, **k: (calls.append(1), orig(*a, **k))[1])
    run(iter_apply_file(seg, tmp_path / "a.tif", tmp_path / "o.tif"))
    assert len(calls) == 3
    assert (tmp_path / "o.tif").read_bytes() == (tmp_path / "ref" / "o.tif").read_bytes()


def test_distributed_is_imported_only_when_used():
    code = ("import sys, napari_vitseg.pipeline.batch, napari_vitseg.cli._segment; "
            "from napari_vitseg.cli import build_parser; build_parser(); "
            "print('distributed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_slices_and_zarr_inputs_on_the_cluster(tmp_path, client, seg_and_stack):
    """Workers open patterns of slices and zarr folders themselves (shared filesystem)."""
    import zarr

    seg, stack = seg_and_stack
    (tmp_path / "slices").mkdir()
    for z in range(6):
        tifffile.imwrite(tmp_path / "slices" / f"z{z}.tif", stack[z])
    zarr.create_array(str(tmp_path / "in.zarr"), data=stack, chunks=(1, *stack.shape[1:]))
    expected = seg.predict(stack)
    for name, src in (("slices", str(tmp_path / "slices" / "*.tif")), ("zarr", tmp_path / "in.zarr")):
        out = tmp_path / f"{name}.tif"
        run(iter_apply_file(seg, src, out, client=client))
        np.testing.assert_array_equal(tifffile.imread(out), expected)
