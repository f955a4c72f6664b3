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


def test_tiff_series_reads_only_the_header(tmp_path):
    from napari_vitseg.io import tiff_series

    rgb = np.zeros((20, 30, 3), np.uint8)
    write_tiff(tmp_path / "rgb.tif", rgb)
    s = tiff_series(tmp_path / "rgb.tif")
    assert (s.axes, s.shape, s.dtype, s.rgb, s.channel_axis, s.nbytes) == ("YXS", (20, 30, 3), np.uint8, True, 2, 1800)
    stack = np.zeros((4, 8, 9), np.uint16)
    write_tiff(tmp_path / "z.tif", stack, metadata={"axes": "ZYX"})
    s = tiff_series(tmp_path / "z.tif")
    assert s.shape == (4, 8, 9) and not s.rgb and s.channel_axis is None
    (tmp_path / "bad.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(VitsegError, match="Cannot read"):
        tiff_series(tmp_path / "bad.tif")


def test_paths_rules(tmp_path):
    from napari_vitseg.io import expand_inputs, image_stem, is_tiff

    assert image_stem("x/cell.day1.ome.tif") == "cell.day1" and image_stem("a.b.TIFF") == "a.b"
    assert is_tiff("a.OME.TIF") and not is_tiff("a.png") and not is_tiff(".tif")
    for n in ("b.tif", "a.tiff", "c.png", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.tiff", "b.tif"]
    assert [p.name for p in expand_inputs([tmp_path / "b.tif", tmp_path, tmp_path / "b.tif"])] == ["b.tif", "a.tiff"]
    with pytest.raises(VitsegError, match="does not exist"):
        expand_inputs([tmp_path / "nope.tif"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitsegError, match="contains no TIFF files"):
        expand_inputs([tmp_path / "empty"])
