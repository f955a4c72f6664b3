import numpy as np
import pytest
import tifffile

from napari_vitseg._validation import VitsegError
from napari_vitseg.io import TiffPlaneWriter, open_image, read_image, write_tiff


def test_open_image_is_lazy_per_plane(samples):
    with open_image(samples / "tem_cells_stack" / "image.tif") as im:
        assert im.shape == (6, 518, 518)
        assert im.data.chunks[0] == (1,) * 6  # one plane per chunk: planes are read one at a time
        ref = tifffile.imread(samples / "tem_cells_stack" / "image.tif")
        np.testing.assert_array_equal(np.asarray(im.data[3]), ref[3])
    assert im.store is None


def test_rgb_channel_axis(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    write_tiff(tmp_path / "rgb.tif", rgb)
    with open_image(tmp_path / "rgb.tif") as im:
        assert im.channel_axis == 2 and im.shape == (20, 30, 3)


def test_plane_writer_atomic(tmp_path):
    a = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)
    with TiffPlaneWriter(tmp_path / "o.tif", a.shape, a.dtype, n_planes=3, metadata={"axes": "ZYX"}) as w:
        for p in a:
            w.write(p)
            assert not (tmp_path / "o.tif").exists()  # nothing at the final name until done
    np.testing.assert_array_equal(read_image(tmp_path / "o.tif"), a)
    assert not (tmp_path / "o.tif.part").exists()


def test_plane_writer_interrupted_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with TiffPlaneWriter(tmp_path / "o.tif", (3, 4, 4), np.uint8, n_planes=3) as w:
            w.write(np.zeros((4, 4)))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    w = TiffPlaneWriter(tmp_path / "p.tif", (3, 4, 4), np.uint8, n_planes=3)
    w.write(np.zeros((4, 4)))
    with pytest.raises(RuntimeError, match="1 of 3"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_errors(tmp_path):
    with pytest.raises(VitsegError, match="does not exist"):
        open_image(tmp_path / "nope.tif")
    with pytest.raises(VitsegError, match="folder"):
        read_image(tmp_path)
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(VitsegError, match="Cannot read"):
        open_image(tmp_path / "bad.tif")
    with pytest.raises(VitsegError, match="Cannot read"):
        read_image(tmp_path / "bad.tif")
    with pytest.raises(VitsegError, match="does not exist"):
        TiffPlaneWriter(tmp_path / "no" / "o.tif", (4, 4), np.uint8, n_planes=1)
