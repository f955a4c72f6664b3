"""open_image on every input kind: TIFF stacks, pyramidal OME-TIFF, TIFF slices, zarr and OME-Zarr.

Each is opened without reading a pixel (counted at the store, or at tifffile's file read),
reads one plane's chunks when one plane is asked for, and gives the values written.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import zarr
from tifffile.zarr import ZarrTiffStore
from zarr.storage import LocalStore

from napari_vitseg._validation import VitsegError
from napari_vitseg.io import open_image, read_image


def _chunk_index(key: str, ndim: int) -> tuple[int, ...]:
    """The chunk grid index of a zarr key ('c/0/3/1', '3.0.1', 's0/0/3/1/0', ...)."""
    return tuple(int(i) for i in re.split(r"[/.]", key)[-ndim:])


def _stack(shape=(5, 32, 48), seed=0):
    return np.random.default_rng(seed).integers(0, 60000, shape, dtype=np.uint16)


# --- TIFF -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [None, (16, 16)])
def test_tiff_stack_reads_only_the_plane_asked_for(tmp_path, chunk_reads, tile):
    a = _stack()
    tifffile.imwrite(tmp_path / "s.tif", a, metadata={"axes": "ZYX"}, tile=tile)
    keys = chunk_reads(ZarrTiffStore)
    with open_image(tmp_path / "s.tif") as im:
        assert (im.axes, im.shape, im.kind, im.multiscale) == ("ZYX", a.shape, "tiff", False)
        assert im.levels == [im.data]
        assert keys == []  # opening reads headers, no pixels
        np.testing.assert_array_equal(np.asarray(im.data[3]), a[3])
        assert keys and {_chunk_index(k, 3)[0] for k in keys} == {3}
        assert len(keys) == (1 if tile is None else 2 * 3)  # the whole plane: one strip, or 2 x 3 tiles
        keys.clear()
        np.testing.assert_array_equal(np.asarray(im.data[1, :16, :16]), a[1, :16, :16])
        assert len(keys) == 1  # a region of a tiled plane reads only its tiles (or the one strip)


def _write_pyramid(path, levels, *, axes="ZYX", tile=(16, 16)):
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, metadata={"axes": axes}, tile=tile)
        for lev in levels[1:]:
            tw.write(lev, subfiletype=1, tile=tile)


def test_pyramidal_ome_tiff_gives_levels(tmp_path, chunk_reads):
    a = _stack((3, 64, 64))
    levels = [a, a[:, ::2, ::2], a[:, ::4, ::4]]
    _write_pyramid(tmp_path / "p.ome.tif", levels)
    keys = chunk_reads(ZarrTiffStore)
    with open_image(tmp_path / "p.ome.tif") as im:
        assert im.multiscale and im.axes == "ZYX" and im.data is im.levels[0]
        assert [lev.shape for lev in im.levels] == [(3, 64, 64), (3, 32, 32), (3, 16, 16)]
        assert all(lev.chunksize[0] == 1 for lev in im.levels)
        assert keys == []
        np.testing.assert_array_equal(np.asarray(im.levels[2][1]), levels[2][1])
        assert keys == ["2/1.0.0"]  # level 2, plane 1: its one 16 x 16 tile
        for got, want in zip(im.levels, levels, strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)


def test_pyramidal_rgb_tiff(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    _write_pyramid(tmp_path / "rgb.ome.tif", [rgb, rgb[::2, ::2]], axes="YXS")
    with open_image(tmp_path / "rgb.ome.tif") as im:
        assert im.rgb and im.channel_axis == 2 and [lev.shape for lev in im.levels] == [(64, 64, 3), (32, 32, 3)]
        np.testing.assert_array_equal(np.asarray(im.levels[1]), rgb[::2, ::2])


# --- stacks of TIFF slices --------------------------------------------------------------------


def _write_slices(folder, n=11, shape=(6, 7), dtype=np.uint16):
    folder.mkdir(exist_ok=True)
    planes = [np.full(shape, i, dtype) + np.arange(shape[1], dtype=dtype) for i in range(n)]
    for i, p in enumerate(planes):
        tifffile.imwrite(folder / f"z_{i + 1}.tif", p)  # z_1 .. z_11: natural order differs from lexical
    return planes


def test_slices_equal_the_stack_of_the_files_in_natural_order(tmp_path, monkeypatch):
    planes = _write_slices(tmp_path / "slices")
    (tmp_path / "slices" / "notes.txt").write_text("not a slice")
    reads = []
    orig = tifffile.TiffFile.asarray

    def counting_asarray(self, *args, **kwargs):
        reads.append(self.filename)
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "asarray", counting_asarray)
    with open_image(tmp_path / "slices" / "*.tif") as im:
        assert (im.kind, im.axes, im.shape, im.dtype) == ("tiff-sequence", "ZYX", (11, 6, 7), np.uint16)
        assert im.data.chunks[0] == (1,) * 11 and not im.multiscale
        assert reads == []  # headers only
        np.testing.assert_array_equal(np.asarray(im.data[9]), planes[9])
        assert reads == ["z_10.tif"]  # plane 9 is the tenth file in natural order, and only it is read
        np.testing.assert_array_equal(np.asarray(im.data), np.stack(planes))
    np.testing.assert_array_equal(read_image(str(tmp_path / "slices" / "z_*.tif")), np.stack(planes))


def test_rgb_slices(tmp_path):
    (tmp_path / "rgb").mkdir()
    rgb = np.random.default_rng(2).integers(0, 255, (3, 8, 9, 3), dtype=np.uint8)
    for i, p in enumerate(rgb):
        tifffile.imwrite(tmp_path / "rgb" / f"{i}.tif", p, photometric="rgb")
    with open_image(tmp_path / "rgb" / "*.tif") as im:
        assert im.axes == "ZYXS" and im.channel_axis == 3 and im.data.chunksize == (1, 8, 9, 3)
        np.testing.assert_array_equal(np.asarray(im.data), rgb)


def test_slices_errors(tmp_path):
    _write_slices(tmp_path / "s", n=3)
    with pytest.raises(VitsegError, match=r"No files match the pattern .*\*\.tiff"):
        open_image(tmp_path / "s" / "*.tiff")
    tifffile.imwrite(tmp_path / "s" / "z_2.tif", np.zeros((6, 8), np.uint16))
    with pytest.raises(VitsegError, match=r"z_2\.tif' is 6x8 uint16, but .*z_1\.tif' .* is 6x7 uint16"):
        open_image(tmp_path / "s" / "*.tif")
    tifffile.imwrite(tmp_path / "s" / "z_2.tif", np.zeros((6, 7), np.float32))
    with pytest.raises(VitsegError, match=r"z_2\.tif' is 6x7 float32.*same shape and dtype"):
        open_image(tmp_path / "s" / "*.tif")
    tifffile.imwrite(tmp_path / "s" / "z_1.tif", np.zeros((2, 6, 7), np.uint16), metadata={"axes": "ZYX"})
    with pytest.raises(VitsegError, match=r"z_1\.tif' holds a 2x6x7 image .*one 2D plane"):
        open_image(tmp_path / "s" / "*.tif")
    (tmp_path / "s" / "z_0.tif").write_bytes(b"not a tiff")
    with pytest.raises(VitsegError, match=r"Cannot read .*z_0\.tif.* remove it or narrow the pattern"):
        open_image(tmp_path / "s" / "*.tif")


# --- zarr and OME-Zarr ------------------------------------------------------------------------


def _fmt(version):
    from ome_zarr.format import FormatV04, FormatV05

    return {"0.4": FormatV04(), "0.5": FormatV05()}[version]


def _write_ome_zarr(path, data, axes, *, version="0.5", chunks=None, levels=3):
    from ome_zarr.writer import write_image

    factors = tuple(2 ** i for i in range(1, levels))
    write_image(data, str(path), axes=axes, scale_factors=factors, fmt=_fmt(version), method="nearest",
                storage_options={"chunks": chunks} if chunks else None)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_round_trip_with_levels(tmp_path, chunk_reads, version):
    a = _stack((4, 64, 64))
    path = tmp_path / "img.ome.zarr"
    _write_ome_zarr(path, a, "zyx", version=version, chunks=(1, 16, 16))
    keys = chunk_reads(LocalStore)
    im = open_image(path)
    assert (im.kind, im.axes, im.shape, im.dtype, im.channel_axis) == ("zarr", "ZYX", a.shape, np.uint16, None)
    assert im.multiscale and [lev.shape for lev in im.levels] == [(4, 64, 64), (4, 32, 32), (4, 16, 16)]
    assert [lev.chunksize for lev in im.levels] == [(1, 64, 64), (1, 32, 32), (1, 16, 16)]  # a plane per chunk
    assert keys == []  # metadata only
    np.testing.assert_array_equal(np.asarray(im.data[3]), a[3])
    assert len(keys) == 16 and {_chunk_index(k, 3)[0] for k in keys} == {3}  # plane 3's 4 x 4 tiles only
    keys.clear()
    np.testing.assert_array_equal(np.asarray(im.levels[0][2, 16:32, 48:64]), a[2, 16:32, 48:64])
    assert len(keys) == 1 and _chunk_index(keys[0], 3) == (2, 1, 3)  # a region: its one tile
    stored = zarr.open_group(path, mode="r")  # the levels as ome-zarr wrote them, full resolution first
    names = sorted(stored.array_keys(), key=lambda k: stored[k].shape, reverse=True)
    for lev, name in zip(im.levels, names, strict=True):
        np.testing.assert_array_equal(np.asarray(lev), stored[name][:])
    im.close()


def test_ome_zarr_squeezes_singletons_and_reports_channels(tmp_path):
    a = _stack((1, 1, 3, 32, 32))
    _write_ome_zarr(tmp_path / "t1c1.ome.zarr", a, "tczyx", version="0.4", levels=2)
    im = open_image(tmp_path / "t1c1.ome.zarr")
    assert im.axes == "ZYX" and [lev.shape for lev in im.levels] == [(3, 32, 32), (3, 16, 16)]
    np.testing.assert_array_equal(np.asarray(im.data), a[0, 0])
    c = _stack((2, 3, 32, 32), seed=3)
    _write_ome_zarr(tmp_path / "c2.ome.zarr", c, "czyx", levels=2)
    im = open_image(tmp_path / "c2.ome.zarr")
    assert im.axes == "CZYX" and im.channel_axis == 0 and im.data.chunksize == (1, 1, 32, 32)
    np.testing.assert_array_equal(np.asarray(im.data[1, 2]), c[1, 2])
    two_d = _stack((1, 32, 32), seed=4)
    _write_ome_zarr(tmp_path / "2d.ome.zarr", two_d, "zyx", levels=1)
    im = open_image(tmp_path / "2d.ome.zarr")
    assert im.axes == "YX" and not im.multiscale and im.shape == (32, 32)
    np.testing.assert_array_equal(read_image(tmp_path / "2d.ome.zarr"), two_d[0])


def test_plain_zarr_array(tmp_path, chunk_reads):
    a = _stack((5, 16, 16))
    zarr.create_array(tmp_path / "raw.zarr", data=a, chunks=(1, 8, 8))
    keys = chunk_reads(LocalStore)
    im = open_image(tmp_path / "raw.zarr")
    assert (im.axes, im.shape, im.levels, keys) == ("ZYX", a.shape, [im.data], [])
    np.testing.assert_array_equal(np.asarray(im.data[4]), a[4])
    assert len(keys) == 4 and {_chunk_index(k, 3)[0] for k in keys} == {4}
    # named dimensions (zarr v3) and a folder without the .zarr suffix (found by its metadata)
    zarr.create_array(tmp_path / "named", data=a[:2], dimension_names=["c", "y", "x"])
    im = open_image(tmp_path / "named")
    assert im.axes == "CYX" and im.channel_axis == 0
    zarr.create_array(tmp_path / "flat.zarr", data=a[0])
    np.testing.assert_array_equal(read_image(tmp_path / "flat.zarr"), a[0])


def test_bioformats2raw_container_opens_its_first_image(tmp_path):
    a = _stack((2, 16, 16))
    root = zarr.open_group(tmp_path / "b2r.ome.zarr", mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    _write_ome_zarr(tmp_path / "b2r.ome.zarr" / "0", a, "zyx", version="0.4", levels=1)
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "b2r.ome.zarr").data), a)


def test_zarr_errors(tmp_path):
    with pytest.raises(VitsegError, match="missing.zarr' does not exist; check the path"):
        open_image(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(VitsegError, match="empty.zarr' is not a zarr store .*zarr.json"):
        open_image(tmp_path / "empty.zarr")
    (tmp_path / "file.zarr").write_bytes(b"zip?")
    with pytest.raises(VitsegError, match="is a file, not a zarr folder"):
        open_image(tmp_path / "file.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(VitsegError, match=r"folder without zarr metadata.*plain/\*\.tif"):
        open_image(tmp_path / "plain")
    g = zarr.open_group(tmp_path / "group.zarr", mode="w")
    g.create_array("raw", shape=(4, 4), dtype=np.uint8)
    with pytest.raises(VitsegError, match=r"group without an image .*group.zarr/raw"):
        open_image(tmp_path / "group.zarr")
    _write_ome_zarr(tmp_path / "t3.ome.zarr", _stack((3, 1, 2, 16, 16)), "tczyx", levels=1)
    with pytest.raises(VitsegError, match="has 3 time points .*choose one time point"):
        open_image(tmp_path / "t3.ome.zarr")
    zarr.create_array(tmp_path / "4d.zarr", shape=(2, 2, 4, 4), dtype=np.uint8)
    with pytest.raises(VitsegError, match="Cannot tell the axes of a 4D zarr array"):
        open_image(tmp_path / "4d.zarr")
    zarr.create_array(tmp_path / "odd.zarr", shape=(3, 4, 4), dtype=np.uint8, dimension_names=["angle", "y", "x"])
    with pytest.raises(VitsegError, match="cannot place"):
        open_image(tmp_path / "odd.zarr")
    zarr.create_array(tmp_path / "yx_last.zarr", shape=(4, 4, 3), dtype=np.uint8, dimension_names=["y", "x", "c"])
    with pytest.raises(VitsegError, match="last two must be the rows and columns"):
        open_image(tmp_path / "yx_last.zarr")
    bad = zarr.open_group(tmp_path / "bad.ome.zarr", mode="w", zarr_format=2)
    bad.create_array("0", shape=(4, 4), dtype=np.uint8)
    bad.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}],  # a channel after space
                                 "axes": [{"name": "y", "type": "space"}, {"name": "c", "type": "channel"}]}]
    with pytest.raises(VitsegError, match="invalid OME-Zarr 'multiscales' metadata"):
        open_image(tmp_path / "bad.ome.zarr")
