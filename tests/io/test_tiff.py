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


def test_voxel_size_from_ome_and_imagej_metadata(tmp_path):
    """The physical pixel size a TIFF declares (OME PhysicalSize* with units, ImageJ spacing and
    resolution tags), its z step in pixels, and the napari layer scale the reader gives a stack;
    malformed metadata declares nothing and never stops a file from opening."""
    from napari_vitseg._reader import read_tiff
    from napari_vitseg.io import tiff_series

    stack = np.zeros((3, 16, 16), np.uint8)
    cases = {  # name: (how it is written, voxel size in µm, z step)
        "ome.ome.tif": (dict(ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 8, "PhysicalSizeXUnit": "nm",
                                                 "PhysicalSizeY": 8, "PhysicalSizeYUnit": "nm",
                                                 "PhysicalSizeZ": 0.02}), {"Z": 0.02, "Y": 0.008, "X": 0.008}, 2.5),
        "ij.tif": (dict(imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 1.0, "unit": "micron", "axes": "ZYX"}),
                   {"Z": 1.0, "Y": 0.5, "X": 0.5}, 2.0),
        "ij_nm.tif": (dict(imagej=True, resolution=(0.1, 0.1), metadata={"spacing": 10, "unit": "nm", "axes": "ZYX"}),
                      {"Z": 0.01, "Y": 0.01, "X": 0.01}, None),  # isotropic: z step 1 tells nothing
        "plain.tif": (dict(photometric="minisblack", metadata={"axes": "ZYX"}), None, None),
        "bad.ome.tif": (dict(ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": -1, "PhysicalSizeY": 1,
                                                 "PhysicalSizeZ": 2}), None, None),
        "nan.tif": (dict(imagej=True, metadata={"spacing": float("nan"), "axes": "ZYX"}), {"Y": 1.0, "X": 1.0}, None),
    }
    for name, (kwargs, size, step) in cases.items():
        tifffile.imwrite(tmp_path / name, stack, **kwargs)
        got = tiff_series(tmp_path / name).voxel_size
        if size is None:
            assert got is None, name
        else:
            assert got.keys() == size.keys() and all(got[k] == pytest.approx(v) for k, v in size.items()), name
        with open_image(tmp_path / name) as im:
            assert im.z_step == (None if step is None else pytest.approx(step)), name
            scale = read_tiff(tmp_path / name)[0][1].get("scale")
            if step is None:
                assert im.layer_scale is None and scale is None, name
            else:
                assert scale == pytest.approx((size["Z"], size["Y"], size["X"])) == im.layer_scale, name
    # a 2D image with a pixel size keeps napari's pixel grid
    tifffile.imwrite(tmp_path / "plane.ome.tif", stack[0], ome=True, metadata={"PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1})
    with open_image(tmp_path / "plane.ome.tif") as im:
        assert im.voxel_size == {"Y": pytest.approx(0.1), "X": pytest.approx(0.1)} and im.z_step is None
        assert im.layer_scale is None and "scale" not in read_tiff(tmp_path / "plane.ome.tif")[0][1]


def test_voxel_size_of_an_ome_zarr_image(tmp_path):
    """An OME-Zarr image's level-0 ``scale`` transformation with its axes' units gives the voxel
    size and the z step; napari's layer scale follows; a malformed one declares nothing."""
    import json

    import zarr

    from napari_vitseg._reader import read_zarr
    from napari_vitseg.io import open_zarr

    def write(name, axes, scale):
        root = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=2)
        root.create_array("0", data=np.zeros((3, 16, 16), np.uint8), chunks=(1, 16, 16))
        root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
        return tmp_path / name

    um = [{"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "nanometer"},
          {"name": "x", "type": "space", "unit": "nanometer"}]
    with open_zarr(write("a.ome.zarr", um, [0.5, 200, 200])) as im:
        assert im.voxel_size == pytest.approx({"Z": 0.5, "Y": 0.2, "X": 0.2}) and im.z_step == pytest.approx(2.5)
        assert read_zarr(tmp_path / "a.ome.zarr")[0][1]["scale"] == pytest.approx((0.5, 0.2, 0.2))
    plain = [{"name": a, "type": "space"} for a in "zyx"]
    with open_zarr(write("b.ome.zarr", plain, [1.0, 1.0, 1.0])) as im:  # a writer's default: nothing declared
        assert im.z_step is None and "scale" not in read_zarr(tmp_path / "b.ome.zarr")[0][1]
    bad = [dict(a, unit="parsec") for a in um]
    with open_zarr(write("c.ome.zarr", bad, [0.5, 0.2, 0.2])) as im:
        assert im.voxel_size is None and im.z_step is None
    assert json.dumps(read_zarr(tmp_path / "c.ome.zarr")[0][1]["metadata"])  # still opens


_WRITERS = {  # tifffile.imwrite keywords: the layouts our users' files come in
    "shaped": {}, "plain": {"metadata": None}, "bigtiff": {"bigtiff": True, "metadata": None},
    "ome": {"ome": True}, "ome-tiled": {"ome": True, "tile": (32, 32)}, "imagej": {"imagej": True},
    "imagej-one-ifd": {"imagej": True, "truncate": True}, "zlib": {"compression": "zlib"},
}


@pytest.mark.parametrize("kind", sorted(_WRITERS))
def test_a_cut_stack_is_refused_whatever_wrote_it(tmp_path, kind):
    """A (6, 96, 96) stack cut at half or 95 % of its bytes is refused as damaged at opening (the
    header alone), whatever wrote it; whole, it opens with its 6 planes. Before, an OME-TIFF, an
    ImageJ or a plain multi-page TIFF cut short opened as its first plane (tifffile only logs that
    the chain of pages breaks off), and `vitseg apply` wrote a one-plane segmentation."""
    from napari_vitseg.io import tiff_series

    stack = np.random.default_rng(0).integers(0, 255, (6, 96, 96), dtype=np.uint8)
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, stack, photometric="minisblack", **_WRITERS[kind])
    assert tiff_series(whole).shape == (6, 96, 96)
    np.testing.assert_array_equal(np.asarray(open_image(whole).data), stack)
    data = whole.read_bytes()
    for fraction in (0.5, 0.95):
        cut = tmp_path / f"cut{fraction}.tif"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(VitsegError, match=r"cut0\.\d+\.tif' is damaged or truncated \(.+\): only part"):
            open_image(cut)


def test_whole_files_of_other_layouts_are_not_taken_for_cut_ones(tmp_path):
    """What the checks of a cut file must not refuse: a single page, a pyramid in SubIFDs, JPEG
    RGB, and the sample data."""
    from pathlib import Path

    from napari_vitseg.io import tiff_series

    a = np.random.default_rng(1).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "one.tif", a[0])
    tifffile.imwrite(tmp_path / "one.ome.tif", a[0], ome=True)
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([a[0]] * 3, -1), photometric="rgb", compression="jpeg")
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif", ome=True) as w:
        w.write(a, subifds=1, tile=(64, 64))
        w.write(a[:, ::2, ::2], subfiletype=1, tile=(64, 64))
    shapes = {p.name: tiff_series(p).shape for p in sorted(tmp_path.glob("*.tif"))}
    assert shapes == {"one.tif": (128, 128), "one.ome.tif": (128, 128), "rgb.tif": (128, 128, 3),
                      "pyramid.ome.tif": (3, 128, 128)}
    samples = sorted((Path(__file__).parents[2] / "sample_data").rglob("*.tif"))
    assert samples and all(min(tiff_series(p).shape) > 0 for p in samples)
