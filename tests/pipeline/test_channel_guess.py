"""Applying a multichannel classifier to TIFFs that declare no channel axis."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_vitseg._progress import run
from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter, iter_apply_file


@pytest.fixture(scope="module")
def two_channel():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 48, 40)).astype(np.float32)
    img[0, :, 20:] += 3.0  # only channel 0 separates the halves
    scr = np.zeros((48, 40), np.uint8)
    scr[5:40, 3:10], scr[5:40, 30:37] = 1, 2
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), classifier_params={"n_estimators": 10})
    seg.fit(img, scr, channel_axis=0)
    return seg, img


def test_unlabelled_cyx_tiff_is_read_as_channels(tmp_path, two_channel):
    seg, img = two_channel
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, img)  # no axes metadata: tifffile reads it as a 2-plane stack
    assert tifffile.TiffFile(path).series[0].axes != "CYX"
    out = tmp_path / "plain_seg.tif"
    run(iter_apply_file(seg, path, out))
    np.testing.assert_array_equal(tifffile.imread(out), seg.predict(img, channel_axis=0))


def test_unlabelled_yxc_tiff_is_read_as_channels(tmp_path, two_channel):
    seg, img = two_channel
    path = tmp_path / "last.tif"
    tifffile.imwrite(path, np.ascontiguousarray(np.moveaxis(img, 0, -1)), photometric="minisblack",
                     metadata=None)
    out = tmp_path / "last_seg.tif"
    run(iter_apply_file(seg, path, out))
    np.testing.assert_array_equal(tifffile.imread(out), seg.predict(img, channel_axis=0))


def test_no_axis_of_the_right_size_is_still_refused(tmp_path, two_channel):
    seg, img = two_channel
    path = tmp_path / "three.tif"
    tifffile.imwrite(path, np.concatenate([img, img[:1]]), photometric="minisblack")  # 3 planes, 2 wanted
    with pytest.raises(VitsegError, match="expects 2"):
        run(iter_apply_file(seg, path, tmp_path / "three_seg.tif"))
    assert not (tmp_path / "three_seg.tif").exists()
