"""pipeline.batch: applying a classifier to files and folders (naming, formats, resume inside a
file, atomic writes, free space)."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_vitseg._progress import run
from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig
from napari_vitseg.io._writers import (
    MANIFEST_NAME,
    PLANES_LOG,
    StagedOutput,
    recorded_planes,
    staging_path,
)
from napari_vitseg.pipeline import Segmenter, output_paths
from napari_vitseg.pipeline.batch import iter_apply_file, iter_apply_files


def test_apply_file_streams_stack(tmp_path, cells_stack, samples):
    import tifffile

    stack, scribbles = cells_stack
    seg = Segmenter(FeatureConfig(sigmas=(1, 2, 4)), "rf", {"n_estimators": 10}).fit(stack[:2], scribbles[:2])
    from napari_vitseg._progress import run

    steps = []
    run(seg.iter_apply_file(samples / "tem_cells_stack" / "image.tif", tmp_path / "o.tif",
                            probabilities_path=tmp_path / "p.tif"), steps.append)
    labels = tifffile.imread(tmp_path / "o.tif")
    probs = tifffile.imread(tmp_path / "p.tif")
    assert labels.shape == stack.shape and labels.dtype == np.uint8
    assert probs.shape == (6, 3, 518, 518) and probs.dtype == np.float16
    np.testing.assert_array_equal(labels, seg.predict(stack))
    assert [s.done for s in steps][:6] == list(range(6))


def test_apply_files_resumes(tmp_path, two_region_image):
    import tifffile

    image, scribbles = two_region_image
    for i in range(3):
        tifffile.imwrite(tmp_path / f"im{i}.tif", image)
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3}).fit(image, scribbles)
    out = tmp_path / "out"
    from napari_vitseg._progress import run

    run(seg.iter_apply_files([tmp_path / "im0.tif"], out))
    mtime = (out / "im0_seg.tif").stat().st_mtime_ns
    msgs = []
    written = run(seg.iter_apply_files(sorted(tmp_path.glob("im*.tif")), out), lambda p: msgs.append(p.msg))
    assert [w.name for w in written] == ["im0_seg.tif", "im1_seg.tif", "im2_seg.tif"]
    assert (out / "im0_seg.tif").stat().st_mtime_ns == mtime  # finished outputs are not redone
    assert any("already done" in m for m in msgs)


def test_names_that_differ_after_the_first_dot_get_their_own_output(tmp_path, two_region_image):
    """cell.day1.tif and cell.day2.tif both get segmented (they used to collide on 'cell_seg.tif')."""
    image, scribbles = two_region_image
    tifffile.imwrite(tmp_path / "cell.day1.tif", image)
    tifffile.imwrite(tmp_path / "cell.day2.tif", image[:, ::-1].copy())
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3}).fit(image, scribbles)
    out = tmp_path / "out"
    written = run(seg.iter_apply_files([tmp_path], out))
    assert [w.name for w in written] == ["cell.day1_seg.tif", "cell.day2_seg.tif"]
    np.testing.assert_array_equal(tifffile.imread(written[0]), seg.predict(image))
    np.testing.assert_array_equal(tifffile.imread(written[1]), seg.predict(image[:, ::-1].copy()))


def test_colliding_or_overwriting_outputs_are_refused_before_writing(tmp_path, two_region_image):
    image, scribbles = two_region_image
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in (tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif", tmp_path / "a" / "y.tif", tmp_path / "a" / "y.tiff"):
        tifffile.imwrite(p, image)
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3}).fit(image, scribbles)
    out = tmp_path / "out"
    with pytest.raises(VitsegError, match="would both be written"):
        run(seg.iter_apply_files([tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"], out))
    with pytest.raises(VitsegError, match="would both be written"):
        output_paths([tmp_path / "a" / "y.tif", tmp_path / "a" / "y.tiff"], out)
    assert not out.exists()
    # an output name that is the input itself
    tifffile.imwrite(tmp_path / "z_seg.tif", image)
    with pytest.raises(VitsegError, match="is one of the inputs"):
        output_paths([tmp_path / "z.tif", tmp_path / "z_seg.tif"], tmp_path)
    before = (tmp_path / "a" / "x.tif").read_bytes()
    with pytest.raises(VitsegError, match="is the input"):
        run(seg.iter_apply_file(tmp_path / "a" / "x.tif", tmp_path / "a" / "x.tif"))
    assert (tmp_path / "a" / "x.tif").read_bytes() == before


# -- streaming outputs, resume, free space ---------------------------------------------------------

CROP = (slice(None), slice(64, 192), slice(64, 224))  # 128 x 160 px of the real TEM cells, 3 classes


@pytest.fixture(scope="module")
def crop_stack(cells_stack):
    stack, scribbles = cells_stack
    return np.ascontiguousarray(stack[CROP]), np.ascontiguousarray(scribbles[CROP])


@pytest.fixture(scope="module")
def small_seg(crop_stack):
    stack, scribbles = crop_stack
    return Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 5}).fit(stack[:2], scribbles[:2])


@pytest.fixture
def stack_file(tmp_path, crop_stack):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, crop_stack[0])
    return p


class CountingSegmenter:
    """Counts the row bands a single-stage segmenter predicts (``_predict_band``, on both the
    sequential and the overlapped path): the planes a run really computed, for planes of one band."""

    def __init__(self, seg, monkeypatch):
        self.calls = 0
        orig = seg._predict_band

        def counted(*a, **k):
            self.calls += 1
            return orig(*a, **k)

        monkeypatch.setattr(seg, "_predict_band", counted)


def _read(path):
    """An output's pixels: tifffile for TIFF, zarr for OME-Zarr."""
    if str(path).endswith(".zarr"):
        import zarr

        return np.asarray(zarr.open(str(path), mode="r")["0"])
    return tifffile.imread(path)


def _tree_bytes(path):
    """Every file of an output (one file, or an OME-Zarr folder) by relative path."""
    path = Path(path)
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _interrupt_after(job, k):
    """Run a job generator until k planes are written, then close it (Cancel / Ctrl+C)."""
    for p in job:
        if p.msg.endswith(f"plane {k + 1}/{p.total}"):
            break
    job.close()


@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_streaming_apply_equals_in_memory(tmp_path, small_seg, crop_stack, stack_file, fmt):
    stack, _ = crop_stack
    ext = ".tif" if fmt == "tiff" else ".ome.zarr"
    out, probs = tmp_path / f"o{ext}", tmp_path / f"p{ext}"
    assert run(iter_apply_file(small_seg, stack_file, out, probabilities_path=probs)) == out
    ref = small_seg.segment(stack)
    np.testing.assert_array_equal(_read(out), ref.labels)
    p = _read(probs)
    assert p.dtype == np.float16
    # TIFF probabilities are (Z, C, Y, X); OME-Zarr puts the channel axis first, as NGFF requires
    np.testing.assert_array_equal(p, np.moveaxis(ref.probabilities, 0, 1) if fmt == "tiff" else ref.probabilities)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["stack.tif", out.name, probs.name])
    if fmt == "tiff":
        with tifffile.TiffFile(out) as tf:
            assert tf.series[0].axes == "ZYX" and tf.pages[0].is_tiled
            assert tf.pages[0].tilelength == 128 and tf.pages[0].tilewidth == 160  # the plane, < 256
            assert tf.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        with tifffile.TiffFile(probs) as tf:
            assert tf.series[0].axes == "ZCYX"
    else:
        import zarr

        arr = zarr.open(str(out), mode="r")["0"]
        assert arr.chunks == (1, 128, 160) and arr.dtype == np.uint8
        assert zarr.open(str(probs), mode="r")["0"].chunks == (3, 1, 128, 160)


def test_tiff_tiles_are_256_for_large_planes_and_2d_outputs(tmp_path, small_seg, cells_stack):
    plane = cells_stack[0][0]  # 518 x 518
    tifffile.imwrite(tmp_path / "im.tif", plane)
    run(iter_apply_file(small_seg, tmp_path / "im.tif", tmp_path / "o.tif", probabilities_path=tmp_path / "p.tif"))
    with tifffile.TiffFile(tmp_path / "o.tif") as tf:
        assert tf.series[0].axes == "YX" and (tf.pages[0].tilelength, tf.pages[0].tilewidth) == (256, 256)
        np.testing.assert_array_equal(tf.asarray(), small_seg.predict(plane))
    with tifffile.TiffFile(tmp_path / "p.tif") as tf:  # 3 classes: 3 grey pages, not one RGB page
        assert tf.series[0].axes == "CYX" and tf.series[0].shape == (3, 518, 518)


def test_ome_zarr_output_has_valid_multiscale_metadata(tmp_path, small_seg, stack_file, cells_stack):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    out, probs = tmp_path / "o.ome.zarr", tmp_path / "p.ome.zarr"
    run(iter_apply_file(small_seg, stack_file, out, probabilities_path=probs))
    for path, axes in ((out, ["z", "y", "x"]), (probs, ["c", "z", "y", "x"])):
        nodes = list(Reader(parse_url(str(path)))())
        assert nodes and any(isinstance(s, Multiscales) for s in nodes[0].specs)
        assert [a["name"] for a in nodes[0].metadata["axes"]] == axes
        assert nodes[0].data[0].shape == _read(path).shape
        attrs = json.loads((path / ".zattrs").read_text())
        (ms,) = attrs["multiscales"]
        assert ms["version"] == "0.4" and [d["path"] for d in ms["datasets"]] == ["0"]
        assert ms["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [1.0] * len(axes)}]
        assert [a["type"] for a in ms["axes"]] == ["channel" if a == "c" else "space" for a in axes]
        assert not (path / MANIFEST_NAME).exists()
    labels_attrs = json.loads((out / ".zattrs").read_text())
    assert [c["label-value"] for c in labels_attrs["image-label"]["colors"]] == [1, 2, 3]
    assert [c["label"] for c in json.loads((probs / ".zattrs").read_text())["omero"]["channels"]] == \
        ["class 1", "class 2", "class 3"]
    # a 2D image gives (Y, X) labels
    tifffile.imwrite(tmp_path / "im2d.tif", cells_stack[0][0, :100, :90])
    run(iter_apply_file(small_seg, tmp_path / "im2d.tif", tmp_path / "o2d.zarr"))
    (ms,) = json.loads((tmp_path / "o2d.zarr" / ".zattrs").read_text())["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["y", "x"] and _read(tmp_path / "o2d.zarr").shape == (100, 90)


@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(tmp_path, small_seg, stack_file, fmt,
                                                                 monkeypatch):
    ext = ".tif" if fmt == "tiff" else ".ome.zarr"
    (tmp_path / "ref").mkdir()
    ref, ref_p = tmp_path / "ref" / f"o{ext}", tmp_path / "ref" / f"p{ext}"  # same names: same metadata
    run(iter_apply_file(small_seg, stack_file, ref, probabilities_path=ref_p))
    out, probs = tmp_path / f"o{ext}", tmp_path / f"p{ext}"
    _interrupt_after(iter_apply_file(small_seg, stack_file, out, probabilities_path=probs), 2)
    assert not out.exists() and not probs.exists()  # nothing under a final name
    for o in (out, probs):
        assert sorted(recorded_planes(staging_path(o))) == [0, 1]
        man = json.loads((staging_path(o) / MANIFEST_NAME).read_text())
        assert man["depends"]["input"]["shape"] == [6, 128, 160] and man["depends"]["output"]["role"] in (
            "labels", "probabilities")
    counter = CountingSegmenter(small_seg, monkeypatch)
    msgs = []
    run(iter_apply_file(small_seg, stack_file, out, probabilities_path=probs), lambda p: msgs.append(p.msg))
    assert counter.calls == 4  # only the missing planes
    assert "stack.tif: 2 of 6 planes finished earlier, resuming" in msgs
    assert _tree_bytes(out) == _tree_bytes(ref) and _tree_bytes(probs) == _tree_bytes(ref_p)  # bit for bit
    assert not staging_path(out).exists() and not staging_path(probs).exists()


def test_only_planes_proven_finished_are_kept(tmp_path, small_seg, stack_file, monkeypatch):
    run(iter_apply_file(small_seg, stack_file, tmp_path / "ref.tif"))
    out = tmp_path / "o.tif"
    _interrupt_after(iter_apply_file(small_seg, stack_file, out), 4)
    staging = staging_path(out)
    chunk = staging / "0" / "1" / "0" / "0"  # plane 1: truncated, as by a crash while writing
    chunk.write_bytes(chunk.read_bytes()[:10])
    (staging / "0" / "3" / "0" / "0").unlink()  # plane 3: listed but gone
    with open(staging / PLANES_LOG, "a") as log:  # plane 5: a line torn by a crash
        log.write("5 crc32:1f")
    counter = CountingSegmenter(small_seg, monkeypatch)
    msgs = []
    run(iter_apply_file(small_seg, stack_file, out), lambda p: msgs.append(p.msg))
    assert counter.calls == 4 and "stack.tif: 2 of 6 planes finished earlier, resuming" in msgs
    assert out.read_bytes() == (tmp_path / "ref.tif").read_bytes()


def test_stale_staging_is_discarded(tmp_path, small_seg, crop_stack, stack_file, monkeypatch):
    stack, scribbles = crop_stack
    other = Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 5, "random_state": 1}).fit(
        stack[:2], scribbles[:2])
    out = tmp_path / "o.tif"
    _interrupt_after(iter_apply_file(small_seg, stack_file, out), 3)
    counter = CountingSegmenter(other, monkeypatch)
    msgs = []
    run(iter_apply_file(other, stack_file, out), lambda p: msgs.append(p.msg))
    assert counter.calls == 6
    assert any("discarding the unfinished staging" in m and "another classifier" in m for m in msgs), msgs
    np.testing.assert_array_equal(tifffile.imread(out), other.predict(stack))
    # a changed input is stale too
    _interrupt_after(iter_apply_file(small_seg, stack_file, tmp_path / "o2.tif"), 3)
    tifffile.imwrite(stack_file, stack[:, ::-1].copy())
    msgs.clear()
    run(iter_apply_file(small_seg, stack_file, tmp_path / "o2.tif"), lambda p: msgs.append(p.msg))
    assert any("the input file changed" in m for m in msgs), msgs
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o2.tif"), small_seg.predict(stack[:, ::-1].copy()))


def test_what_is_not_ours_is_never_touched(tmp_path, small_seg, stack_file):
    out = tmp_path / "o.tif"
    foreign = staging_path(out)
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(VitsegError, match="not a napari-vitseg staging folder"):
        run(iter_apply_file(small_seg, stack_file, out))
    assert (foreign / "notes.txt").read_text() == "mine" and not out.exists()
    # outputs that are folders or not regular files, and existing OME-Zarr outputs, are refused up front
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(VitsegError, match="is a folder"):
        run(iter_apply_file(small_seg, stack_file, tmp_path / "dir.tif"))
    os.mkfifo(tmp_path / "fifo.tif")
    with pytest.raises(VitsegError, match="not a regular file"):
        run(iter_apply_file(small_seg, stack_file, tmp_path / "fifo.tif"))
    (tmp_path / "x.ome.zarr").mkdir()
    with pytest.raises(VitsegError, match="never overwritten"):
        run(iter_apply_file(small_seg, stack_file, tmp_path / "x.ome.zarr"))
    with pytest.raises(VitsegError, match="output format"):
        run(iter_apply_file(small_seg, stack_file, tmp_path / "o.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [foreign.name, "stack.tif", "dir.tif", "fifo.tif", "x.ome.zarr"])
    # an output name that is a link to the input is the input
    (tmp_path / "link.tif").symlink_to(stack_file)
    with pytest.raises(VitsegError, match="is the input"):
        run(iter_apply_file(small_seg, stack_file, tmp_path / "link.tif"))


def test_a_second_run_on_the_same_output_is_refused(tmp_path, small_seg, stack_file):
    first = iter_apply_file(small_seg, stack_file, tmp_path / "o.tif")
    next(first)  # staging open and locked
    with pytest.raises(VitsegError, match="Another run is writing"):
        run(iter_apply_file(small_seg, stack_file, tmp_path / "o.tif"))
    assert run(first) == tmp_path / "o.tif"
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), small_seg.predict(tifffile.imread(stack_file)))


def test_free_space_is_checked_before_starting(tmp_path, small_seg, stack_file, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(VitsegError, match=r"Not enough free space in .*: this run writes up to .* and 1.0 kB are free"):
        run(iter_apply_file(small_seg, stack_file, tmp_path / "o.tif"))
    with pytest.raises(VitsegError, match="Not enough free space"):
        run(iter_apply_files(small_seg, [stack_file], tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stack.tif"]
    assert not any((tmp_path / "out").iterdir())
    # the estimate: 6 planes of labels staged + the assembled TIFF, 6 x 128 x 160 bytes each
    seen = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: (seen.append(p), real(p))[1])
    run(iter_apply_file(small_seg, stack_file, tmp_path / "o.tif"))
    assert seen == [tmp_path]


def test_disk_full_during_the_run_keeps_the_staging(tmp_path, small_seg, stack_file, monkeypatch):
    out = tmp_path / "o.tif"
    real = StagedOutput.write_plane

    def full_at_plane_3(self, j, data):
        if j == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, j, data)

    monkeypatch.setattr(StagedOutput, "write_plane", full_at_plane_3)
    with pytest.raises(VitsegError, match=r"is full .* kept in .*\.o\.tif\.part\.zarr.* to resume"):
        run(iter_apply_file(small_seg, stack_file, out))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.tif.part.zarr", "stack.tif"]
    assert sorted(recorded_planes(staging_path(out))) == [0, 1, 2]
    monkeypatch.setattr(StagedOutput, "write_plane", real)
    msgs = []
    run(iter_apply_file(small_seg, stack_file, out), lambda p: msgs.append(p.msg))
    assert "stack.tif: 3 of 6 planes finished earlier, resuming" in msgs


def test_folder_outputs_as_ome_zarr_and_plane_subsets(tmp_path, small_seg, crop_stack):
    stack, _ = crop_stack
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", stack)
    tifffile.imwrite(src / "b.tif", stack[::-1].copy())
    out = tmp_path / "out"
    steps = []
    written = run(iter_apply_files(small_seg, [src], out, output_format="ome-zarr", probabilities=True,
                                   planes=slice(1, 4)), steps.append)
    assert [w.name for w in written] == ["a_seg.ome.zarr", "b_seg.ome.zarr"]
    np.testing.assert_array_equal(_read(written[0]), small_seg.predict(stack[1:4]))
    np.testing.assert_array_equal(_read(written[1]), small_seg.predict(stack[::-1][1:4].copy()))
    assert _read(out / "b_seg_probabilities.ome.zarr").shape == (3, 3, 128, 160)
    assert steps[-1].count == (6, 6) and steps[-1].unit == "plane"  # planes, for rates in logs
    assert sorted(p.name for p in out.iterdir()) == [
        "a_seg.ome.zarr", "a_seg_probabilities.ome.zarr", "b_seg.ome.zarr", "b_seg_probabilities.ome.zarr"]
    msgs = []
    run(iter_apply_files(small_seg, [src], out, output_format="ome-zarr", probabilities=True, planes=slice(1, 4)),
        lambda p: msgs.append(p.msg))
    assert sum("already done" in m for m in msgs) == 2
    with pytest.raises(VitsegError, match="selects no plane"):
        run(iter_apply_file(small_seg, src / "a.tif", tmp_path / "x.tif", planes=slice(10, 20)))


def test_cancel_in_a_folder_run_keeps_staging_and_resumes(tmp_path, small_seg, crop_stack, monkeypatch):
    stack, _ = crop_stack
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(src / f"{name}.tif", stack)
    out = tmp_path / "out"
    job = iter_apply_files(small_seg, [src], out)
    for p in job:
        if p.msg == "file 2/2: b.tif: plane 3/6":
            break
    job.close()
    assert sorted(p.name for p in out.iterdir()) == [".b_seg.tif.part.zarr", "a_seg.tif"]
    counter = CountingSegmenter(small_seg, monkeypatch)
    run(iter_apply_files(small_seg, [src], out))
    assert counter.calls == 4
    assert sorted(p.name for p in out.iterdir()) == ["a_seg.tif", "b_seg.tif"]
    # same pixels (the files differ only in the stamp naming their input)
    np.testing.assert_array_equal(tifffile.imread(out / "a_seg.tif"), tifffile.imread(out / "b_seg.tif"))


@pytest.mark.parametrize("kind", ["rf", "xgb"])
def test_a_reloaded_classifier_file_resumes(tmp_path, crop_stack, stack_file, kind, monkeypatch):
    """The staging depends on what the classifier computes, not on the file's bytes (which hold a
    creation time): the same classifier loaded again, or saved again, resumes."""
    stack, scribbles = crop_stack
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), kind, {"n_estimators": 5}).fit(stack[:2], scribbles[:2])
    seg.save(tmp_path / "m.vitseg")
    _interrupt_after(iter_apply_file(Segmenter.load(tmp_path / "m.vitseg"), stack_file, tmp_path / "o.tif"), 2)
    seg.save(tmp_path / "m.vitseg")
    again = Segmenter.load(tmp_path / "m.vitseg")
    counter = CountingSegmenter(again, monkeypatch)
    run(iter_apply_file(again, stack_file, tmp_path / "o.tif"))
    assert counter.calls == 4
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), seg.predict(stack))


def test_ome_zarr_in_ome_zarr_out_and_slices_in(tmp_path, small_seg, crop_stack, monkeypatch):
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_image
    stack, _ = crop_stack
    src = tmp_path / "in.ome.zarr"
    write_image(stack, zarr.open_group(str(src), mode="w"), axes="zyx", scale_factors=(2,))
    out = tmp_path / "out.ome.zarr"
    _interrupt_after(iter_apply_file(small_seg, src, out), 2)  # resumes from a folder input too
    counter = CountingSegmenter(small_seg, monkeypatch)
    run(iter_apply_file(small_seg, src, out))
    assert counter.calls == 4
    np.testing.assert_array_equal(_read(out), small_seg.predict(stack))
    from napari_vitseg.io import open_image

    with open_image(out) as back:  # our output reads back as an image
        assert back.axes == "ZYX" and back.shape == stack.shape
    # a stack of 2D slices given as a pattern: one input, named after its folder
    (tmp_path / "slices").mkdir()
    for z in range(6):
        tifffile.imwrite(tmp_path / "slices" / f"z{z}.tif", stack[z])
    written = run(iter_apply_files(small_seg, [str(tmp_path / "slices" / "*.tif")], tmp_path / "res"))
    assert [w.name for w in written] == ["slices_seg.tif"]
    np.testing.assert_array_equal(tifffile.imread(written[0]), small_seg.predict(stack))


def test_bad_input_found_mid_run_leaves_nothing_behind(tmp_path, small_seg, crop_stack):
    stack = crop_stack[0].astype(np.float32)
    stack[3, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", stack)
    with pytest.raises(VitsegError, match="NaN"):
        run(iter_apply_file(small_seg, tmp_path / "nan.tif", tmp_path / "o.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.tif"]  # the staging this run made is gone
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([crop_stack[0][0]] * 3, -1))
    with pytest.raises(VitsegError, match=r"rgb\.tif.* has 3 channels .*single-channel"):
        run(iter_apply_file(small_seg, tmp_path / "rgb.tif", tmp_path / "o.tif"))
    tifffile.imwrite(tmp_path / "4d.tif", np.zeros((2, 2, 48, 48), np.uint8))
    with pytest.raises(VitsegError, match=r"4d\.tif.*spatial dimensions"):
        run(iter_apply_file(small_seg, tmp_path / "4d.tif", tmp_path / "o.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4d.tif", "nan.tif", "rgb.tif"]


def test_a_damaged_file_in_a_folder_run_is_reported_and_the_others_are_segmented(tmp_path, two_region_image):
    """A TIFF whose pixel data is damaged (header fine: found only when its plane is read) does not stop
    the batch: the other files get their outputs, the damaged one none, and the run ends in one error."""
    import io

    image, scribbles = two_region_image
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3}).fit(image, scribbles)
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", image)
    tifffile.imwrite(d / "c.tif", image[::-1].copy())
    buf = io.BytesIO()
    tifffile.imwrite(buf, (image * 10).astype(np.uint16), compression="zlib")
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tf:
        off, n = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
    data[off:off + n] = b"\xff" * n  # the compressed strip is garbage, the header is intact
    (d / "b.tif").write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(VitsegError, match=r"1 of 3 inputs failed.*b\.tif"):
        run(seg.iter_apply_files([d], out))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a_seg.tif", "c_seg.tif"]
    np.testing.assert_array_equal(tifffile.imread(out / "c_seg.tif"), seg.predict(image[::-1].copy()))


def test_a_folder_rerun_skips_only_outputs_of_this_classifier_and_input(tmp_path, small_seg, monkeypatch):
    """An existing output made by another classifier, or older than its input, is neither skipped
    as done nor overwritten: it is reported, the other inputs are segmented, the run fails at the end."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        tifffile.imwrite(src / f"{name}.tif", rng.normal(size=(40, 48)).astype(np.float32))
    out = tmp_path / "out"
    run(iter_apply_files(small_seg, [src], out))
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    msgs = []
    run(iter_apply_files(small_seg, [src], out), lambda p: msgs.append(p.msg))  # same classifier: skipped
    assert sum("already done" in m for m in msgs) == 2
    before = small_seg.prediction  # another prediction mode gives other labels: a different stamp
    small_seg.prediction = "exact" if small_seg.prediction_mode != "exact" else "coarse-to-fine"
    try:
        with pytest.raises(VitsegError, match="exists but was not made by this classifier"):
            run(iter_apply_files(small_seg, [src], out))
    finally:
        small_seg.prediction = before
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # nothing overwritten
    # a later coarse-to-fine scheme gives other labels too: outputs of the old one are not "done"
    import napari_vitseg.pipeline.segmenter as segmenter_module

    monkeypatch.setattr(segmenter_module, "COARSE_SCHEME_VERSION", "older")
    with pytest.raises(VitsegError, match="exists but was not made by this classifier"):
        run(iter_apply_files(small_seg, [src], out))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    stamp = os.stat(out / "a_seg.tif").st_mtime_ns
    os.utime(src / "a.tif", ns=(stamp + 10**9, stamp + 10**9))  # the input changed after its output
    with pytest.raises(VitsegError, match="was modified after its output"):
        run(iter_apply_files(small_seg, [src], out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
