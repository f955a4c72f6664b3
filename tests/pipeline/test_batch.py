"""pipeline.batch: applying a classifier to files and folders (naming, resume, atomic writes)."""

import numpy as np
import pytest
import tifffile

from napari_vitseg._progress import run
from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter, output_paths


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
