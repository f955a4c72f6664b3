import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_vitseg.cli import main
from napari_vitseg.io._writers import recorded_planes, staging_path
from napari_vitseg.metrics import mean_iou

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"

NANO = SAMPLES / "tem_nanoparticles"


def test_train_apply_classical_real_data(tmp_path, capsys):
    """`vitseg train` + `vitseg apply` with --backbone none: mIoU >= 0.88 on the real TEM image."""
    model = tmp_path / "m.vitseg"
    assert main(["train", str(NANO / "image.tif"), "--scribbles", str(NANO / "scribbles.tif"),
                 "-o", str(model), "--backbone", "none", "--quiet"]) == 0
    out, probs = tmp_path / "seg.tif", tmp_path / "p.tif"
    assert main(["apply", str(model), str(NANO / "image.tif"), "-o", str(out),
                 "--probabilities", str(probs), "--quiet"]) == 0
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint8
    assert mean_iou(labels, tifffile.imread(NANO / "ground_truth.tif")) >= 0.88
    assert tifffile.imread(probs).shape == (2, 518, 518)
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["format"] == "napari-vitseg classifier"
    assert meta["backbone"] is None and meta["feature_config"]["backbone"] is None
    assert meta["training"]["labelled_pixels"].keys() == {"1", "2"}


def test_train_no_pyramid_saves_full_resolution_features(tmp_path, capsys):
    """`--no-pyramid` gives the classifier version 4's full-resolution scales; the default the pyramid."""
    crop = tifffile.imread(NANO / "image.tif")[:120, :120]
    tifffile.imwrite(tmp_path / "im.tif", crop)
    tifffile.imwrite(tmp_path / "sc.tif", tifffile.imread(NANO / "scribbles.tif")[:120, :120])
    common = ["--scribbles", str(tmp_path / "sc.tif"), "--quiet", "--backbone", "none", "--n-estimators", "5"]
    for flag, want in (([], True), (["--no-pyramid"], False)):
        model = tmp_path / f"{want}.vitseg"
        assert main(["train", str(tmp_path / "im.tif"), "-o", str(model), *common, *flag]) == 0
        capsys.readouterr()
        assert main(["info", str(model)]) == 0
        cfg = json.loads(capsys.readouterr().out)["feature_config"]
        assert cfg["pyramid"] is want and cfg["version"] == 6 and cfg["spatial"] == "2d"


def test_train_spatial_3d_on_a_stack_and_apply_equal_the_api(tmp_path, capsys):
    """--spatial 3d --z-anisotropy: the file's feature config says so, and apply's labels equal
    the in-memory model's (3D features through the batch path: planes read with their neighbours)."""
    import numpy as np

    from napari_vitseg import Segmenter

    stack = tifffile.imread(NANO.parent / "tem_cells_stack" / "image.tif")[:, :96, :128]
    scr = tifffile.imread(NANO.parent / "tem_cells_stack" / "scribbles.tif")[:, :96, :128]
    tifffile.imwrite(tmp_path / "st.tif", stack)
    tifffile.imwrite(tmp_path / "sc.tif", scr)
    model = tmp_path / "m3.vitseg"
    assert main(["train", str(tmp_path / "st.tif"), "--scribbles", str(tmp_path / "sc.tif"), "-o", str(model),
                 "--quiet", "--backbone", "none", "--n-estimators", "5", "--spatial", "3d",
                 "--z-anisotropy", "2"]) == 0
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    cfg = json.loads(capsys.readouterr().out)["feature_config"]
    assert cfg["spatial"] == "3d" and cfg["z_anisotropy"] == 2.0
    out = tmp_path / "lab.tif"
    assert main(["apply", str(model), str(tmp_path / "st.tif"), "-o", str(out), "--quiet"]) == 0
    seg = Segmenter.load(model)
    np.testing.assert_array_equal(tifffile.imread(out), seg.predict(stack))
    assert main(["train", str(tmp_path / "st.tif"), "--scribbles", str(tmp_path / "sc.tif"), "-o",
                 str(tmp_path / "x.vitseg"), "--backbone", "none", "--spatial", "3d", "--z-anisotropy", "-1"]) == 2
    assert "--z-anisotropy must" in capsys.readouterr().err and not (tmp_path / "x.vitseg").exists()


def test_train_auto_spatial_prints_and_stores_the_choice(tmp_path, capsys, shared_data):
    """The default --spatial auto: the FIB-SEM volume trains with 3D filters at the estimated z step,
    the TEM cells stack (unrelated images) with 2D ones; the output line and the file say which."""
    from napari_vitseg.features.volume import estimate_z_anisotropy
    from napari_vitseg.pipeline.scribbles import ScribbleIndex

    fib = shared_data("flyem_medulla_fibsem")
    cells = NANO.parent / "tem_cells_stack"
    for d, want in ((fib, "3d"), (cells, "2d")):
        model = tmp_path / f"{d.name}.vitseg"
        assert main(["train", str(d / "image.tif"), "--scribbles", str(d / "scribbles.tif"), "-o", str(model),
                     "--backbone", "none", "--n-estimators", "3"]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert main(["info", str(model)]) == 0
        cfg = json.loads(capsys.readouterr().out)["feature_config"]
        assert cfg["spatial"] == want
        if want == "3d":
            planes = ScribbleIndex.from_array(tifffile.imread(d / "scribbles.tif")).planes
            a = round(estimate_z_anisotropy(tifffile.imread(d / "image.tif"), planes), 2)
            assert cfg["z_anisotropy"] == a and 1.0 <= a <= 1.5
            assert line.endswith(f"3D filters across planes (z step {a:g} px, chosen from the stack))"), line
        else:
            assert line.endswith("2D filters per plane (chosen from the stack))"), line


def test_train_auto_spatial_takes_the_voxel_size_the_file_declares(tmp_path, capsys):
    """--spatial auto on a stack whose TIFF declares its voxel size (ImageJ spacing + resolution,
    OME PhysicalSize*): that z step decides, not the pixels: the TEM cells stack (unrelated
    images, 2D from its pixels) trains 3D at z step 1.5 when its file says so, 2D at 5."""
    cells = NANO.parent / "tem_cells_stack"
    image, scribbles = tifffile.imread(cells / "image.tif"), tifffile.imread(cells / "scribbles.tif")
    tifffile.imwrite(tmp_path / "sc.tif", scribbles)
    files = {  # name: (how it is written, the z step it declares)
        "ij15.tif": (dict(imagej=True, resolution=(100, 100), metadata={"spacing": 0.015, "unit": "um", "axes": "ZYX"}),
                     1.5),
        "ome15.ome.tif": (dict(ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 10, "PhysicalSizeXUnit": "nm",
                                                   "PhysicalSizeY": 10, "PhysicalSizeYUnit": "nm",
                                                   "PhysicalSizeZ": 0.015}), 1.5),  # µm, OME's default unit
        "ij5.tif": (dict(imagej=True, resolution=(1, 1), metadata={"spacing": 5.0, "axes": "ZYX"}), 5.0),
    }
    for name, (kwargs, step) in files.items():
        tifffile.imwrite(tmp_path / name, image, **kwargs)
        model = tmp_path / (name.split(".")[0] + ".vitseg")
        assert main(["train", str(tmp_path / name), "--scribbles", str(tmp_path / "sc.tif"), "-o", str(model),
                     "--backbone", "none", "--n-estimators", "3"]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert main(["info", str(model)]) == 0
        cfg = json.loads(capsys.readouterr().out)["feature_config"]
        if step > 2:
            assert cfg["spatial"] == "2d", name
            assert line.endswith("2D filters per plane (chosen from the file's voxel size))"), line
        else:
            assert cfg["spatial"] == "3d" and cfg["z_anisotropy"] == pytest.approx(1.5), name
            assert line.endswith("3D filters across planes (z step 1.5 px, chosen from the file's voxel size))"), line
    assert main(["train", str(tmp_path / "ij15.tif"), "--scribbles", str(tmp_path / "sc.tif"), "-o",
                 str(tmp_path / "as_set.vitseg"), "--backbone", "none", "--n-estimators", "3", "--spatial", "2d"]) == 0
    assert capsys.readouterr().out.strip().endswith("2D filters per plane (as set))")


def test_apply_3d_model_to_a_damaged_stack_names_the_unreadable_plane_once(tmp_path, capsys):
    """A 3D model's plane 0 reads planes 1-2 too: when plane 2 of the file cannot be read (its
    compressed pixels overwritten; the file is whole, so it opens), the one-line error names
    plane 2 of the file (not "plane 0 of ...: Cannot read plane 2 of ..."), and no output is
    written."""
    import io

    import numpy as np
    from scipy import ndimage as ndi

    from napari_vitseg import Segmenter
    from napari_vitseg.features import FeatureConfig

    rng = np.random.default_rng(0)
    stack = (ndi.gaussian_filter(rng.normal(size=(4, 64, 64)), 2) * 400 + 128).clip(0, 255).astype(np.uint8)
    scr = np.zeros(stack.shape, np.uint8)
    scr[1, 5:10, 5:40], scr[1, 50:55, 5:40] = 1, 2
    model = Segmenter(FeatureConfig(sigmas=(1,), spatial="3d"), classifier_params={"n_estimators": 3}) \
        .fit(stack, scr).save(tmp_path / "m3.vitseg")
    buf = io.BytesIO()
    tifffile.imwrite(buf, stack, photometric="minisblack", compression="zlib")
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tf:
        offset, size = tf.pages[2].dataoffsets[0], tf.pages[2].databytecounts[0]
    data[offset:offset + size] = b"\xff" * size  # plane 2's deflate stream is garbage
    (tmp_path / "cut.tif").write_bytes(bytes(data))
    out = tmp_path / "lab.tif"
    assert main(["apply", str(model), str(tmp_path / "cut.tif"), "-o", str(out), "--quiet"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vitseg: error: Cannot read plane 2 of "), lines
    assert "cut.tif" in lines[0] and "plane 0 of" not in lines[0] and not out.exists()


def test_random_weight_vit_changes_classifier_input(tmp_path, capsys):
    """The same flow with a random-weight ViT runs, and the ViT features reach the classifier."""
    crop = tifffile.imread(NANO / "image.tif")[:140, :168]
    scrib = tifffile.imread(NANO / "scribbles.tif")[:140, :168]
    assert set(np.unique(scrib)) == {0, 1, 2}
    tifffile.imwrite(tmp_path / "im.tif", crop)
    tifffile.imwrite(tmp_path / "sc.tif", scrib)
    common = ["--scribbles", str(tmp_path / "sc.tif"), "--quiet", "--sigmas", "1,2", "--n-estimators", "10"]
    assert main(["train", str(tmp_path / "im.tif"), "-o", str(tmp_path / "c.vitseg"), "--backbone", "none", *common]) == 0
    assert main(["train", str(tmp_path / "im.tif"), "-o", str(tmp_path / "v.vitseg"), "--backbone",
                 "dinov2_vits14_reg", "--random-weights", "--upsample", "bilinear", "--vit-pca", "0", *common]) == 0
    capsys.readouterr()
    main(["info", str(tmp_path / "v.vitseg")])
    meta = json.loads(capsys.readouterr().out)
    assert meta["backbone"] == {"name": "dinov2_vits14_reg", "weights_sha256": "random", "pretrained": False}
    assert meta["classifier"]["n_features_in"] == 16 + 384  # intensity + 6 x 2 sigmas + 3 bilateral
    assert sum(n.startswith("dinov2_vits14_reg_") for n in meta["feature_names"]) == 384
    # the forest actually uses ViT channels
    from napari_vitseg.backbones import create_backbone
    from napari_vitseg.pipeline import Segmenter

    seg = Segmenter.load(tmp_path / "v.vitseg", backbone=create_backbone("dinov2_vits14_reg", pretrained=False, seed=0))
    imp = seg.classifier_.estimator_.feature_importances_
    assert imp[16:].sum() > 0.05
    out = tmp_path / "o.tif"
    assert main(["apply", str(tmp_path / "v.vitseg"), str(tmp_path / "im.tif"), "-o", str(out),
                 "--random-weights", "--quiet"]) == 0
    assert tifffile.imread(out).shape == crop.shape
    # without the test flag the random-weight classifier is refused (no weights here)
    assert main(["apply", str(tmp_path / "v.vitseg"), str(tmp_path / "im.tif"), "-o", str(tmp_path / "x.tif"),
                 "--quiet"]) == 2
    assert not (tmp_path / "x.tif").exists()


def test_apply_stack_and_folder(tmp_path):
    stack = SAMPLES / "tem_cells_stack"
    model = tmp_path / "m.vitseg"
    assert main(["train", str(stack / "image.tif"), "--scribbles", str(stack / "scribbles.tif"), "-o", str(model),
                 "--backbone", "none", "--sigmas", "1,2,4", "--n-estimators", "10", "--quiet",
                 "--class-names", "nucleus,cytoplasm,background"]) == 0
    folder = tmp_path / "in"
    folder.mkdir()
    im = tifffile.imread(stack / "image.tif")
    tifffile.imwrite(folder / "a.tif", im[:2])
    tifffile.imwrite(folder / "b.tif", im[3])
    assert main(["apply", str(model), str(folder), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert tifffile.imread(tmp_path / "out" / "a_seg.tif").shape == (2, 518, 518)
    assert tifffile.imread(tmp_path / "out" / "b_seg.tif").shape == (518, 518)


def _write(tmp_path, name, arr):
    p = tmp_path / name
    tifffile.imwrite(p, arr)
    return str(p)


@pytest.mark.parametrize(
    "case, match",
    [
        ("no_labels", "no labelled pixels"),
        ("one_class", "single class"),
        ("shape", "shape"),
        ("nan", "NaN"),
        ("dtype", "dtype"),
        ("ndim", "spatial dimensions"),
        ("missing", "does not exist"),
        ("unreadable", "Cannot read"),
    ],
)
def test_train_bad_input_exit_2_nothing_written(tmp_path, capsys, case, match):
    rng = np.random.default_rng(0)
    image = rng.random((40, 40)).astype(np.float32)
    scrib = np.zeros((40, 40), np.uint8)
    scrib[5:10, 5:10] = 1
    scrib[30:35, 30:35] = 2
    if case == "no_labels":
        scrib[:] = 0
    elif case == "one_class":
        scrib[scrib == 2] = 1
    elif case == "shape":
        scrib = scrib[:30]
    elif case == "nan":
        image[3, 3] = np.nan
    elif case == "dtype":
        image = image.astype(np.complex64)
    elif case == "ndim":
        image = image[None, None, None].repeat(2, 0)
    im_path = _write(tmp_path, "im.tif", image)
    sc_path = _write(tmp_path, "sc.tif", scrib)
    if case == "missing":
        im_path = str(tmp_path / "nope.tif")
    elif case == "unreadable":
        (tmp_path / "bad.tif").write_bytes(b"garbage")
        im_path = str(tmp_path / "bad.tif")
    out = tmp_path / "m.vitseg"
    capsys.readouterr()
    code = main(["train", im_path, "--scribbles", sc_path, "-o", str(out), "--backbone", "none", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("vitseg: error:") and match in err and "\n" not in err
    assert not out.exists() and not (tmp_path / "m.vitseg.part").exists()


@pytest.mark.parametrize("case, match", [("pickle", "pickle"), ("truncated", "truncated"),
                                         ("other_config", "channel"), ("missing", "does not exist")])
def test_apply_bad_classifier_exit_2(tmp_path, capsys, case, match):
    import pickle

    model = tmp_path / "m.vitseg"
    assert main(["train", str(NANO / "image.tif"), "--scribbles", str(NANO / "scribbles.tif"), "-o", str(model),
                 "--backbone", "none", "--sigmas", "1", "--n-estimators", "3", "--quiet"]) == 0
    img = str(NANO / "image.tif")
    if case == "pickle":
        model.write_bytes(pickle.dumps({"a": 1}))
    elif case == "truncated":
        model.write_bytes(model.read_bytes()[:300])
    elif case == "other_config":
        rgb = np.stack([tifffile.imread(NANO / "image.tif")] * 3, -1)
        img = _write(tmp_path, "rgb.tif", rgb)
    elif case == "missing":
        model.unlink()
    capsys.readouterr()
    out = tmp_path / "o.tif"
    assert main(["apply", str(model), img, "-o", str(out), "--quiet", "--channel-axis", "-1"] if case == "other_config"
                else ["apply", str(model), img, "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert not out.exists() and not (tmp_path / "o.tif.part").exists()


def test_unknown_backbone(tmp_path, capsys):
    code = main(["train", str(NANO / "image.tif"), "--scribbles", str(NANO / "scribbles.tif"), "-o",
                 str(tmp_path / "m.vitseg"), "--backbone", "resnet50", "--quiet"])
    assert code == 2 and "Unknown backbone" in capsys.readouterr().err


def test_train_and_apply_rgb_tiff_without_a_channel_flag(tmp_path, capsys, shared_data):
    """An RGB TIFF (axes YXS) trains and applies with no --channel-axis (the TIFF says where the
    channels are); real brightfield histology from ../shared/data."""
    d = shared_data("dsb2018_histology")
    model = tmp_path / "rgb.vitseg"
    assert main(["train", str(d / "image.tif"), "--scribbles", str(d / "scribbles.tif"), "-o", str(model),
                 "--backbone", "none", "--sigmas", "1,2,4", "--n-estimators", "20", "--quiet"]) == 0
    meta_out = capsys.readouterr()
    assert main(["info", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["n_channels"] == 3, meta_out
    out = tmp_path / "seg.tif"
    assert main(["apply", str(model), str(d / "image.tif"), "-o", str(out), "--quiet"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (256, 320)
    assert mean_iou(labels, tifffile.imread(d / "ground_truth.tif")) > 0.6


# -- vitseg apply: formats, resume after a kill, progress in logs, --workers -----------------------
CELLS = SAMPLES / "tem_cells_stack"
CROP = (slice(None), slice(64, 192), slice(64, 224))
VITSEG = [sys.executable, "-c", "import sys; from napari_vitseg.cli import main; sys.exit(main(sys.argv[1:]))"]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """A small classical classifier trained with `vitseg train` on a crop of the real TEM cells."""
    d = tmp_path_factory.mktemp("model")
    im, sc = (tifffile.imread(CELLS / f)[CROP][:2] for f in ("image.tif", "scribbles.tif"))
    tifffile.imwrite(d / "im.tif", im)
    tifffile.imwrite(d / "sc.tif", sc)
    assert main(["train", str(d / "im.tif"), "--scribbles", str(d / "sc.tif"), "-o", str(d / "m.vitseg"),
                 "--backbone", "none", "--sigmas", "1,2", "--n-estimators", "5", "--quiet"]) == 0
    return d / "m.vitseg"


def _long_stack(path, n=24):
    """n planes of 518 x 518 real TEM texture (the 6 planes, flipped), uint8."""
    im = tifffile.imread(CELLS / "image.tif")
    planes = [im[i % 6][:: 1 - 2 * (i // 6 % 2)] for i in range(n)]
    tifffile.imwrite(path, np.stack(planes))
    return path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_apply_killed_mid_file_resumes_to_the_same_bytes(tmp_path, capsys, monkeypatch, cli_model, sig):
    stack = _long_stack(tmp_path / "stack.tif")
    (tmp_path / "ref").mkdir()
    assert main(["apply", str(cli_model), str(stack), "-o", str(tmp_path / "ref" / "o.tif"), "--quiet"]) == 0
    out = tmp_path / "o.tif"
    proc = subprocess.Popen([*VITSEG, "apply", str(cli_model), str(stack), "-o", str(out), "--quiet"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(recorded_planes(staging_path(out))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    if sig == signal.SIGTERM:
        assert proc.returncode == 2
        assert err.strip().startswith("vitseg: error: interrupted (SIGTERM); finished planes are kept in") and \
            str(staging_path(out)) in err and "\n" not in err.strip(), err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and not (tmp_path / "o.tif.part").exists()  # nothing under a final name
    k = len(recorded_planes(staging_path(out)))
    assert 2 <= k < 24
    monkeypatch.setenv("VITSEG_PROGRESS_INTERVAL", "0")  # a log line per step
    capsys.readouterr()
    assert main(["apply", str(cli_model), str(stack), "-o", str(out)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert any(f"stack.tif: {k} of 24 planes finished earlier, resuming" in s for s in lines), lines
    computed = [s for s in lines if s.split(" | ")[-1].startswith("stack.tif: plane ")]
    assert len(computed) == 24 - k  # only the missing planes were computed
    assert out.read_bytes() == (tmp_path / "ref" / "o.tif").read_bytes()
    assert not staging_path(out).exists()


def test_progress_lines_without_a_terminal(tmp_path, capsys, monkeypatch, cli_model):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, tifffile.imread(CELLS / "image.tif")[CROP])
    monkeypatch.setenv("VITSEG_PROGRESS_INTERVAL", "0")
    capsys.readouterr()
    assert main(["apply", str(cli_model), str(stack), "-o", str(tmp_path / "o.tif")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("apply: 0/6 planes (0.0%) | rate - | ETA - | elapsed 0:00:00 | stack.tif: plane 1/6")
    assert re.fullmatch(r"apply: 3/6 planes \(50\.0%\) \| [0-9.]+ planes/s \| ETA \d+:\d\d:\d\d \| elapsed "
                        r"\d+:\d\d:\d\d \| stack\.tif: plane 4/6", err[3]), err[3]
    assert re.fullmatch(r"apply: done: 6/6 planes in \d+:\d\d:\d\d, [0-9.]+ planes/s", err[-1]), err[-1]
    assert "\r" not in "".join(err)
    # the default interval (30 s): the first line and the closing line only
    monkeypatch.delenv("VITSEG_PROGRESS_INTERVAL")
    assert main(["apply", str(cli_model), str(stack), "-o", str(tmp_path / "o2.tif")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("apply: 0/6 planes") and err[1].startswith("apply: done: 6/6")
    # folders: the rate is in planes, over all files
    monkeypatch.setenv("VITSEG_PROGRESS_INTERVAL", "0")
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", tifffile.imread(stack)[:2])
    tifffile.imwrite(folder / "b.tif", tifffile.imread(stack)[:3], photometric="minisblack")
    assert main(["apply", str(cli_model), str(folder), "-o", str(tmp_path / "out"), "--format", "ome-zarr"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("apply: done: 5/5 planes")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_seg.ome.zarr", "b_seg.ome.zarr"]


def test_progress_on_a_terminal_keeps_the_tqdm_bar():
    from napari_vitseg._progress import Progress, run_with_tqdm

    class Tty(io.StringIO):
        def isatty(self):
            return True

    def job():
        for i in range(3):
            yield Progress(i, 3, f"plane {i + 1}/3", unit="plane")
        return "result"

    tty, log = Tty(), io.StringIO()
    assert run_with_tqdm(job(), desc="apply", file=tty) == "result"
    assert "\r" in tty.getvalue() and "apply:" in tty.getvalue() and "plane/s" in tty.getvalue()
    assert " | ETA " not in tty.getvalue()
    assert run_with_tqdm(job(), desc="apply", file=log, interval=0) == "result"
    assert log.getvalue().count("\n") == 4 and "\r" not in log.getvalue()


def test_apply_with_workers_equals_one_process(tmp_path, cli_model):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, tifffile.imread(CELLS / "image.tif")[CROP])
    assert main(["apply", str(cli_model), str(stack), "-o", str(tmp_path / "one.tif"), "--probabilities",
                 str(tmp_path / "one_p.tif"), "--quiet"]) == 0
    assert main(["apply", str(cli_model), str(stack), "-o", str(tmp_path / "two.tif"), "--probabilities",
                 str(tmp_path / "two_p.tif"), "--workers", "2", "--quiet"]) == 0
    assert (tmp_path / "one.tif").read_bytes() == (tmp_path / "two.tif").read_bytes()
    assert (tmp_path / "one_p.tif").read_bytes() == (tmp_path / "two_p.tif").read_bytes()


@pytest.mark.parametrize("case, match", [
    ("both", "--workers or --scheduler"),
    ("model", "is the classifier file"),
    ("format", "contradicts the output name"),
    ("space", "Not enough free space"),
    ("exists", "never overwritten"),
    ("suffix", "Cannot tell the output format"),
])
def test_apply_refusals_exit_2_with_one_line(tmp_path, capsys, monkeypatch, cli_model, case, match):
    import shutil

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, tifffile.imread(CELLS / "image.tif")[CROP])
    out = tmp_path / "o.tif"
    extra = []
    if case == "both":
        extra = ["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"]
    elif case == "model":
        out = cli_model.parent / "copy.tif"
        model = cli_model.parent / "copy.tif"
        model.write_bytes(cli_model.read_bytes())
    elif case == "format":
        extra = ["--format", "ome-zarr"]
    elif case == "space":
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=0))
    elif case == "exists":
        out = tmp_path / "o.ome.zarr"
        out.mkdir()
    elif case == "suffix":
        out = tmp_path / "o.png"
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    model = out if case == "model" else cli_model
    code = main(["apply", str(model), str(stack), "-o", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("vitseg: error:") and match in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "model":
        assert model.read_bytes() == cli_model.read_bytes()


def test_a_truncated_tiff_gives_exactly_one_line_in_a_real_process(tmp_path):
    """In a real `vitseg` process (no pytest log capture) tifffile's own warnings about the damaged file
    do not add lines to the one-line error."""
    import io
    import subprocess
    import sys

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(0).integers(0, 255, (4, 256, 256), dtype=np.uint8),
                     compression="zlib", photometric="minisblack")
    (tmp_path / "cut.tif").write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.6)])
    model = tmp_path / "m.vitseg"
    assert main(["train", str(NANO / "image.tif"), "--scribbles", str(NANO / "scribbles.tif"), "-o", str(model),
                 "--backbone", "none", "--sigmas", "1", "--n-estimators", "3", "--quiet"]) == 0
    proc = subprocess.run([sys.executable, "-m", "napari_vitseg.cli", "apply", str(model), str(tmp_path / "cut.tif"),
                           "-o", str(tmp_path / "o.tif")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [ln for ln in proc.stderr.splitlines() if ln.startswith("vitseg: error: ")]
    assert len(proc.stderr.splitlines()) == 1 and "cut.tif" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif", "m.vitseg"]


def test_train_with_autocontext_stages_saves_every_stage(tmp_path, capsys):
    """`vitseg train --autocontext-stages 2` stores both stages; `apply` equals the API's prediction."""
    from napari_vitseg.pipeline import Segmenter

    image = tifffile.imread(NANO / "image.tif")[:200, :200]
    scribbles = tifffile.imread(NANO / "scribbles.tif")[:200, :200]
    assert set(np.unique(scribbles)) >= {1, 2}
    img_path, scr_path, model = tmp_path / "img.tif", tmp_path / "scr.tif", tmp_path / "m.vitseg"
    tifffile.imwrite(img_path, image)
    tifffile.imwrite(scr_path, scribbles)
    assert main(["train", str(img_path), "--scribbles", str(scr_path), "-o", str(model), "--backbone", "none",
                 "--n-estimators", "10", "--autocontext-stages", "2", "--quiet"]) == 0
    seg = Segmenter.load(model)
    assert seg.autocontext_stages == 2 and seg.n_stages == 2
    out = tmp_path / "seg.tif"
    assert main(["apply", str(model), str(img_path), "-o", str(out), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), seg.predict(image))
    assert main(["train", str(img_path), "--scribbles", str(scr_path), "-o", str(tmp_path / "x.vitseg"),
                 "--backbone", "none", "--autocontext-stages", "0", "--quiet"]) == 2
    assert "--autocontext-stages must" in capsys.readouterr().err and not (tmp_path / "x.vitseg").exists()
