"""Bad input, as a hostile or unlucky user gives it, through the CLI and the Python API.

Every case must end in the project's own error: the CLI exits with 2 and prints one line
``vitseg: error: ...`` that names the input; the API raises ``VitsegError``; nothing is written
(no output, no partial or temporary file) and every file that existed is unchanged, byte for byte.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_vitseg._progress import run
from napari_vitseg._validation import VitsegError
from napari_vitseg.cli import main
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter

FAST = ["--backbone", "none", "--sigmas", "1", "--n-estimators", "3", "--quiet"]


def _image(shape=(48, 48), dtype=np.uint8):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, shape).astype(dtype)
    a[..., shape[-1] // 2:] += 100
    return a


def _scribbles(shape=(48, 48)):
    s = np.zeros(shape, np.uint8)
    s[..., 5:40, 3:8] = 1
    s[..., 5:40, 40:45] = 2
    return s


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3}).fit(_image(), _scribbles()).save(d / "m.vitseg")
    return (d / "m.vitseg").read_bytes()


@dataclass
class Workspace:
    root: Path
    model: Path

    def file(self, name: str, data) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            tifffile.imwrite(p, data)
        return p


@pytest.fixture
def ws(tmp_path, model_bytes):
    root = tmp_path / "ws"
    root.mkdir()
    w = Workspace(root, root / "m.vitseg")
    w.model.write_bytes(model_bytes)
    w.file("img.tif", _image())
    w.file("scr.tif", _scribbles())
    return w


def _snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = p.read_bytes()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = None
    return out


def _zip(members: dict) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return buf.getvalue()


def _model_with(model_bytes: bytes, change) -> bytes:
    import io

    with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(members["metadata.json"])
    change(meta)
    members["metadata.json"] = json.dumps(meta).encode()
    return _zip(members)


def _truncated_zlib_tiff(fraction=0.6) -> bytes:
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(1).integers(0, 255, (4, 64, 64), dtype=np.uint8),
                     compression="zlib", photometric="minisblack")
    data = buf.getvalue()
    return data[: int(len(data) * fraction)]


def _truncated_stack_tiff(fraction=0.6, **kwargs) -> bytes:
    """An uncompressed (4, 64, 64) stack cut short: its header and shape metadata are whole, the
    planes from 2 on are missing. ``kwargs`` go to ``tifffile.imwrite``: ``ome=True`` writes an
    OME-TIFF, whose OME-XML (written last) is lost too, so the file reads as its first plane
    unless the broken chain of pages is noticed; ``imagej=True, truncate=True`` writes an ImageJ
    stack with one IFD, as ImageJ writes stacks over 4 GB (only its header tells the planes)."""
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(1).integers(0, 255, (4, 64, 64), dtype=np.uint8),
                     photometric="minisblack", **kwargs)
    data = buf.getvalue()
    return data[: int(len(data) * fraction)]


def _stack_scribbles() -> bytes:
    """A TIFF of scribbles of two classes on every plane of a (4, 64, 64) stack (as
    ``_truncated_zlib_tiff``)."""
    import io

    scr = np.zeros((4, 64, 64), np.uint8)
    scr[:, 5:10, 5:30] = 1
    scr[:, 40:45, 5:30] = 2
    buf = io.BytesIO()
    tifffile.imwrite(buf, scr, photometric="minisblack")
    return buf.getvalue()


def _lying_header_tiff() -> bytes:
    """A 400-byte TIFF whose header declares a 65535 x 65535 uint16 image."""
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8), np.uint16))
    data = bytearray(buf.getvalue())
    for tag, value in ((256, 65535), (257, 65535)):  # ImageWidth, ImageLength in the first IFD
        ifd = int.from_bytes(data[4:8], "little")
        n = int.from_bytes(data[ifd:ifd + 2], "little")
        for i in range(n):
            e = ifd + 2 + 12 * i
            if int.from_bytes(data[e:e + 2], "little") == tag:
                typ = int.from_bytes(data[e + 2:e + 4], "little")
                data[e + 8:e + 8 + (2 if typ == 3 else 4)] = value.to_bytes(2 if typ == 3 else 4, "little")
    return bytes(data[:400])


# -- the cases: (id, setup(ws) -> (cli argv, api callable), words the message must contain) --------
def _train(ws, image="img.tif", scribbles="scr.tif", out="new.vitseg", extra=()):
    img = ws.root / image if isinstance(image, str) else image
    scr = ws.root / scribbles if isinstance(scribbles, str) else scribbles
    o = ws.root / out if isinstance(out, str) else out
    argv = ["train", str(img), "--scribbles", str(scr), "-o", str(o), *FAST, *extra]

    def api():
        from napari_vitseg.io import read_image

        seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3})
        seg.fit(read_image(img), read_image(scr))
        seg.save(o, inputs=[img, scr])

    return argv, api


def _apply(ws, inputs=("img.tif",), out="out.tif", model=None, extra=()):
    model = model or ws.model
    ins = [ws.root / i if isinstance(i, str) else i for i in inputs]
    o = ws.root / out if isinstance(out, str) else out
    argv = ["apply", str(model), *map(str, ins), "-o", str(o), "--quiet", *extra]

    def api():
        seg = Segmenter.load(model)
        if len(ins) == 1 and not str(out).endswith("/"):
            run(seg.iter_apply_file(ins[0], o))
        else:
            run(seg.iter_apply_files(ins, o))

    return argv, api


def _bad_model(change):
    def setup(ws):
        ws.model.write_bytes(_model_with(ws.model.read_bytes(), change))
        return _apply(ws)
    return setup


def _raw_model(data: bytes):
    def setup(ws):
        ws.model.write_bytes(data)
        return _apply(ws)
    return setup


@functools.lru_cache
def _xgb_members() -> dict:
    """The members of a small XGBoost classifier file (made once)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.vitseg"
        Segmenter(FeatureConfig(sigmas=(1,)), "xgb", {"n_estimators": 2}).fit(_image(), _scribbles()).save(path)
        with zipfile.ZipFile(path) as zf:
            return {n: zf.read(n) for n in zf.namelist()}


def _xgb_model(ubj=None, tree_change=None):
    """Setup: an XGBoost classifier file whose model.ubj is ``ubj``, or whose first tree is changed
    (``tree_change(tree)``, on the model's JSON) and saved again by XGBoost itself (which accepts it)."""
    def setup(ws):
        members = dict(_xgb_members())
        if tree_change is not None:
            import xgboost as xgb

            booster = xgb.Booster()
            booster.load_model(bytearray(members["model.ubj"]))
            model = json.loads(booster.save_raw("json"))
            tree_change(model["learner"]["gradient_booster"]["model"]["trees"][0])
            crafted = xgb.Booster()
            crafted.load_model(bytearray(json.dumps(model).encode()))
            members["model.ubj"] = bytes(crafted.save_raw("ubj"))
        else:
            members["model.ubj"] = ubj
        ws.model.write_bytes(_zip(members))
        return _apply(ws)
    return setup


def _damaged_deflate(ws):
    """The classifier with the deflate stream of its model member overwritten (zlib.error when read;
    the zip directory and the declared sizes are intact)."""
    data = bytearray(ws.model.read_bytes())
    with zipfile.ZipFile(ws.model) as zf:
        info = zf.getinfo("model.skops")
    start = info.header_offset + 30 + len(info.filename.encode()) + int.from_bytes(
        data[info.header_offset + 28:info.header_offset + 30], "little")
    data[start:start + 16] = b"\xff" * 16  # deflate block type 3: "invalid block type"
    ws.model.write_bytes(bytes(data))
    return _apply(ws)


def _fifo(ws, name):
    p = ws.root / name
    os.mkfifo(p)
    return p


CASES = [
    # train: images and scribbles
    ("train-missing-image", lambda ws: _train(ws, image="nope.tif"), "nope.tif"),
    ("train-missing-scribbles", lambda ws: _train(ws, scribbles="nope.tif"), "nope.tif"),
    ("train-image-is-folder", lambda ws: (ws.root.joinpath("d").mkdir(), _train(ws, image="d"))[1], "folder"),
    ("train-image-fifo", lambda ws: _train(ws, image=_fifo(ws, "f.tif")), "not a regular file"),
    ("train-4-byte-tiff", lambda ws: (ws.file("t.tif", b"II*\0"), _train(ws, image="t.tif"))[1], "t.tif"),
    ("train-empty-file", lambda ws: (ws.file("e.tif", b""), _train(ws, image="e.tif"))[1], "empty"),
    ("train-text-file", lambda ws: (ws.file("x.tif", b"hello " * 100), _train(ws, image="x.tif"))[1], "x.tif"),
    ("train-zero-size-array", lambda ws: (ws.file("z.tif", np.zeros((0, 0), np.uint8)),
                                          _train(ws, image="z.tif", scribbles="z.tif"))[1], "empty image"),
    ("train-shape-mismatch", lambda ws: (ws.file("s2.tif", _scribbles((40, 40))), _train(ws, scribbles="s2.tif"))[1],
     "shape"),
    ("train-single-class", lambda ws: (ws.file("s1.tif", (_scribbles() == 1).astype(np.uint8)),
                                       _train(ws, scribbles="s1.tif"))[1], "single class"),
    ("train-no-labels", lambda ws: (ws.file("s0.tif", np.zeros((48, 48), np.uint8)), _train(ws, scribbles="s0.tif"))[1],
     "no labelled"),
    ("train-float-labels", lambda ws: (ws.file("sf.tif", _scribbles().astype(np.float32) + 0.5),
                                       _train(ws, scribbles="sf.tif"))[1], "integer"),
    ("train-negative-labels", lambda ws: (ws.file("sn.tif", -_scribbles().astype(np.int8)),
                                          _train(ws, scribbles="sn.tif"))[1], "negative"),
    ("train-class-300", lambda ws: (ws.file("s3.tif", _scribbles().astype(np.uint16) * 150),
                                    _train(ws, scribbles="s3.tif"))[1], "1..255"),
    ("train-nan-image", lambda ws: (ws.file("nan.tif", np.where(_scribbles() == 1, np.nan, 1.0).astype(np.float32)),
                                    _train(ws, image="nan.tif"))[1], "NaN"),
    ("train-complex-image", lambda ws: (ws.file("c.tif", _image().astype(np.complex64)), _train(ws, image="c.tif"))[1],
     "dtype"),
    ("train-4d-image", lambda ws: (ws.file("4d.tif", np.zeros((2, 2, 48, 48), np.uint8)),
                                   _train(ws, image="4d.tif"))[1], "dimensions"),
    # train: outputs
    ("train-output-is-image", lambda ws: _train(ws, out="img.tif"), "input"),
    ("train-output-is-scribbles", lambda ws: _train(ws, out="scr.tif"), "input"),
    ("train-output-is-folder", lambda ws: (ws.root.joinpath("od").mkdir(), _train(ws, out="od"))[1], "folder"),
    ("train-output-char-device", lambda ws: _train(ws, out=Path("/dev/null")), "not a regular file"),
    ("train-output-missing-folder", lambda ws: _train(ws, out="no/such/m.vitseg"), "does not exist"),
    # train: parameters
    ("train-n-estimators-0", lambda ws: _train(ws, extra=["--n-estimators", "0"]), "--n-estimators must"),
    ("train-max-depth-negative", lambda ws: _train(ws, extra=["--max-depth", "-3"]), "--max-depth must"),
    ("train-boundary-refinement-99", lambda ws: _train(ws, extra=["--boundary-refinement", "99"]),
     "--boundary-refinement must be an int in the range [0, 16]"),
    ("train-autocontext-stages-9", lambda ws: _train(ws, extra=["--autocontext-stages", "9"]),
     "--autocontext-stages must"),
    ("train-sigma-1e9", lambda ws: _train(ws, extra=["--sigmas", "1e9"]), "sigmas"),
    ("train-channel-axis-out-of-range", lambda ws: _train(ws, extra=["--channel-axis", "5"]), "channel_axis"),
    ("train-unknown-backbone", lambda ws: _train(ws, extra=["--backbone", "resnet50"]), "Unknown backbone"),
    ("train-vit-pca-negative", lambda ws: _train(ws, extra=["--backbone", "dinov2_vits14_reg", "--random-weights",
                                                           "--vit-pca", "-1"]), "vit_pca"),
    # apply: the classifier file
    ("apply-missing-model", lambda ws: _apply(ws, model=ws.root / "nope.vitseg"), "nope.vitseg"),
    ("apply-pickle-model", _raw_model(b"\x80\x04\x95" + b"\0" * 64), "pickle"),
    ("apply-truncated-model", lambda ws: (ws.model.write_bytes(ws.model.read_bytes()[:300]), _apply(ws))[1],
     "m.vitseg"),
    ("apply-foreign-zip", _raw_model(_zip({"hello.txt": b"hi"})), "m.vitseg"),
    ("apply-pickle-in-zip", lambda ws: _raw_model(_zip({"metadata.json": zipfile.ZipFile(ws.model).read(
        "metadata.json"), "model.skops": b"\x80\x04\x95" + b"\0" * 64}))(ws), "skops"),
    ("apply-format-version-string", _bad_model(lambda m: m.update(format_version="1")), "format_version"),
    ("apply-newer-format", _bad_model(lambda m: m.update(format_version=99)), "newer"),
    ("apply-metadata-list", _raw_model(_zip({"metadata.json": b"[1, 2]"})), "JSON object"),
    ("apply-metadata-not-json", _raw_model(_zip({"metadata.json": b"{nope"})), "JSON"),
    ("apply-class-without-name", _bad_model(lambda m: m["classes"][0].pop("name")), "name"),
    ("apply-class-id-1e9", _bad_model(lambda m: m["classes"][0].update(id=10**9)), "id"),
    ("apply-unknown-param", _bad_model(lambda m: m["classifier"]["params"].update(n_trees=3)), "parameter"),
    ("apply-bad-param-value", _bad_model(lambda m: m["classifier"]["params"].update(n_jobs=0)), "n_jobs"),
    ("apply-sigmas-not-numbers", _bad_model(lambda m: m["feature_config"].update(sigmas=["x"])), "sigmas"),
    ("apply-unknown-feature-key", _bad_model(lambda m: m["feature_config"].update(colour=1)), "feature config"),
    ("apply-class-count-disagrees", _bad_model(lambda m: m["classifier"].update(classes=[1, 2, 3])), "class"),
    ("apply-feature-count-disagrees", _bad_model(lambda m: m["classifier"].update(n_features_in=99)), "feature"),
    # apply: XGBoost models and damaged members (issue 11, found by the fuzzers)
    ("apply-xgb-empty-model-member", _xgb_model(b""), "UBJSON"),
    ("apply-xgb-model-declares-256mib", _xgb_model(b"{L\x00\x00\x00\x00\x10\x00\x00\x00"), "UBJSON"),
    ("apply-xgb-truncated-model-member", lambda ws: _xgb_model(_xgb_members()["model.ubj"][:-7])(ws), "UBJSON"),
    ("apply-xgb-child-out-of-range", _xgb_model(tree_change=lambda t: t["left_children"].__setitem__(0, 100_000)),
     "child"),
    ("apply-xgb-child-cycle", _xgb_model(tree_change=lambda t: t["right_children"].__setitem__(0, 0)), "child"),
    ("apply-xgb-feature-out-of-range", _xgb_model(tree_change=lambda t: t["split_indices"].__setitem__(0, 10**6)),
     "features outside"),
    ("apply-xgb-nan-leaf", _xgb_model(tree_change=lambda t: t["split_conditions"].__setitem__(
        t["left_children"].index(-1), float("nan"))), "non-finite"),
    ("apply-damaged-deflate-stream", _damaged_deflate, "damaged"),
    # apply: feature config values of the wrong type (FeatureConfig refuses them with its own error)
    ("apply-families-null", _bad_model(lambda m: m["feature_config"].update(families=None)), "families"),
    ("apply-vit-channels-false", _bad_model(lambda m: m["feature_config"].update(vit_channels=False)),
     "vit_channels"),
    ("apply-vit-channels-strings", _bad_model(lambda m: m["feature_config"].update(vit_channels=["a"])),
     "vit_channels"),
    ("apply-vit-pca-string", _bad_model(lambda m: m["feature_config"].update(vit_pca="a")), "vit_pca"),
    ("apply-feature-backbone-number", _bad_model(lambda m: m["feature_config"].update(backbone=5)), "backbone"),
    ("apply-classical-string", _bad_model(lambda m: m["feature_config"].update(classical="no")), "classical"),
    ("apply-model-is-folder", lambda ws: (ws.root.joinpath("md").mkdir(), _apply(ws, model=ws.root / "md"))[1],
     "folder"),
    # apply: inputs
    ("apply-missing-input", lambda ws: _apply(ws, inputs=("nope.tif",)), "nope.tif"),
    ("apply-empty-folder", lambda ws: (ws.root.joinpath("empty").mkdir(), _apply(ws, inputs=("empty",), out="o/"))[1],
     "empty"),
    ("apply-fifo-input", lambda ws: _apply(ws, inputs=(_fifo(ws, "p.tif"),)), "not a regular file"),
    ("train-truncated-tiff-stack", lambda ws: (ws.file("cut.tif", _truncated_stack_tiff()),
                                               ws.file("scr4.tif", _stack_scribbles()),
                                               _train(ws, image="cut.tif", scribbles="scr4.tif"))[2],
     "damaged or truncated"),
    ("apply-truncated-ome-tiff", lambda ws: (ws.file("cut.ome.tif", _truncated_stack_tiff(0.5, ome=True)),
                                             _apply(ws, inputs=("cut.ome.tif",)))[1], "damaged or truncated"),
    ("apply-truncated-imagej-one-ifd", lambda ws: (ws.file("cut.tif", _truncated_stack_tiff(imagej=True, truncate=True)),
                                                   _apply(ws, inputs=("cut.tif",)))[1], "ImageJ header declares 4"),
    ("apply-truncated-zlib-tiff", lambda ws: (ws.file("cut.tif", _truncated_zlib_tiff()),
                                              _apply(ws, inputs=("cut.tif",)))[1], "cut.tif"),
    ("apply-lying-header-tiff", lambda ws: (ws.file("lie.tif", _lying_header_tiff()),
                                            _apply(ws, inputs=("lie.tif",)))[1], "lie.tif"),
    ("apply-zero-size-tiff", lambda ws: (ws.file("z.tif", np.zeros((0, 0), np.uint8)),
                                         _apply(ws, inputs=("z.tif",)))[1], "z.tif"),
    ("apply-rgb-to-grey-classifier", lambda ws: (ws.file("rgb.tif", np.stack([_image()] * 3, -1)),
                                                 _apply(ws, inputs=("rgb.tif",)))[1], "channel"),
    ("apply-4d-input", lambda ws: (ws.file("4d.tif", np.zeros((2, 2, 48, 48), np.uint8)),
                                   _apply(ws, inputs=("4d.tif",)))[1], "4d.tif"),
    ("apply-nan-input", lambda ws: (ws.file("nan.tif", np.full((48, 48), np.nan, np.float32)),
                                    _apply(ws, inputs=("nan.tif",)))[1], "NaN"),
    # apply: outputs
    ("apply-output-is-input", lambda ws: _apply(ws, out="img.tif"), "input"),
    ("apply-output-is-model", lambda ws: _apply(ws, out="m.vitseg"), "classifier"),
    ("apply-output-char-device", lambda ws: _apply(ws, out=Path("/dev/null")), "/dev/null"),
    ("apply-output-missing-folder", lambda ws: _apply(ws, out="no/such/o.tif"), "does not exist"),
    ("apply-colliding-outputs", lambda ws: (ws.file("a/x.tif", _image()), ws.file("b/x.tif", _image()),
                                            _apply(ws, inputs=("a/x.tif", "b/x.tif"), out="res/"))[-1], "x.tif"),
    ("apply-output-folder-is-a-file", lambda ws: (ws.file("a/x.tif", _image()), ws.file("a/y.tif", _image()),
                                                  ws.file("res", b"I am a file"),
                                                  _apply(ws, inputs=("a",), out="res"))[-1], "res"),
    ("apply-probabilities-equal-output", lambda ws: _apply(ws, extra=["--probabilities", str(ws.root / "out.tif")]),
     "out.tif"),
    ("apply-probabilities-is-input", lambda ws: _apply(ws, extra=["--probabilities", str(ws.root / "img.tif")]),
     "input"),
    # info
    ("info-missing", lambda ws: (["info", str(ws.root / "nope.vitseg")], lambda: __import__(
        "napari_vitseg.classifiers", fromlist=["read_metadata"]).read_metadata(ws.root / "nope.vitseg")), "nope"),
    ("info-not-a-zip", lambda ws: (ws.file("t.vitseg", b"plain text, not a zip"),
                                   (["info", str(ws.root / "t.vitseg")], lambda: __import__(
                                       "napari_vitseg.classifiers", fromlist=["read_metadata"]).read_metadata(
                                       ws.root / "t.vitseg")))[1], "not a napari-vitseg classifier"),
]


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case, setup, words", CASES, ids=[c[0] for c in CASES])
def test_cli_exit_2_one_line_nothing_written(ws, capsys, case, setup, words):
    argv, _ = setup(ws)
    before = _snapshot(ws.root)
    devnull = os.stat("/dev/null")
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (case, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vitseg: error: "), (case, err)
    assert words.lower() in lines[0].lower(), (case, lines[0])
    assert _snapshot(ws.root) == before, (case, "files were written or changed")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_rdev == devnull.st_rdev


#: CLI options without an API call of the same shape (their API errors are tested in tests/classifiers,
#: tests/features and tests/backbones).
CLI_ONLY = ("train-n-estimators-0", "train-max-depth-negative", "train-boundary-refinement-99",
            "train-autocontext-stages-9", "train-sigma-1e9", "train-channel-axis-out-of-range",
            "train-unknown-backbone", "train-vit-pca-negative", "apply-probabilities-equal-output",
            "apply-probabilities-is-input")
API_CASES = [c for c in CASES if c[0] not in CLI_ONLY]


@pytest.mark.parametrize("case, setup, words", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_raises_the_project_error_nothing_written(ws, case, setup, words):
    _, api = setup(ws)
    before = _snapshot(ws.root)
    with pytest.raises(VitsegError):
        api()
    assert _snapshot(ws.root) == before, (case, "files were written or changed")


# -- API-only values of the wrong type (no CLI option takes them): the project's error, one line ----
def _ragged():
    return [[1, 2, 3], [4, 5]]


API_VALUE_CASES = [
    ("classifier-list", lambda: __import__("napari_vitseg.pipeline.segmenter", fromlist=["x"]).SegmenterConfig(
        classifier=[]), "classifier"),
    ("classifier-params-list", lambda: _config(classifier_params=[1]), "classifier_params"),
    ("class-names-int", lambda: _config(class_names=5), "class_names"),
    ("class-colors-int", lambda: _config(class_colors=5), "class_colors"),
    ("class-colors-nested", lambda: _config(class_colors=[[1, 2]]), "colour"),
    ("families-none", lambda: FeatureConfig(families=None), "families"),
    ("vit-channels-false", lambda: FeatureConfig(vit_channels=False), "vit_channels"),
    ("vit-channels-strings", lambda: FeatureConfig(vit_channels=["a"]), "vit_channels"),
    ("vit-pca-string", lambda: FeatureConfig(vit_pca="a"), "vit_pca"),
    ("backbone-int", lambda: FeatureConfig(backbone=5), "backbone"),
    ("sigmas-string", lambda: FeatureConfig(sigmas="12"), "sigmas"),
    ("sigmas-bools", lambda: FeatureConfig(sigmas=[True]), "sigmas"),
    ("include-intensity-string", lambda: FeatureConfig(include_intensity="yes"), "include_intensity"),
    ("feature-version-true", lambda: FeatureConfig.from_dict({"version": True}), "version"),
    ("scribbles-ragged", lambda: __import__("napari_vitseg.pipeline.scribbles", fromlist=["x"]).ScribbleIndex
     .from_array(_ragged()), "scribbles"),
    ("image-ragged", lambda: __import__("napari_vitseg.pipeline.segmenter", fromlist=["x"]).as_channels_last(
        _ragged(), None), "image"),
    ("fit-ragged-image", lambda: Segmenter(FeatureConfig(sigmas=(1,))).fit(_ragged(), _scribbles()), "image"),
    ("channel-axis-bool", lambda: __import__("napari_vitseg._validation", fromlist=["x"]).check_channel_axis(3, True),
     "channel_axis"),
    ("image-beyond-float32", lambda: __import__("napari_vitseg._validation", fromlist=["x"]).as_float32(
        np.full((4, 4), 1e300)), "float32"),
]


def _config(**kw):
    from napari_vitseg.pipeline.segmenter import SegmenterConfig

    return SegmenterConfig(**kw)


@pytest.mark.parametrize("case, call, words", API_VALUE_CASES, ids=[c[0] for c in API_VALUE_CASES])
def test_api_values_of_the_wrong_type_raise_the_project_error(case, call, words):
    with pytest.raises(VitsegError) as info:
        call()
    msg = str(info.value)
    assert msg and "\n" not in msg and words.lower() in msg.lower(), (case, msg)


def test_folder_run_with_a_file_locked_by_another_run_says_to_wait(ws):
    """A folder run whose one output is being written by another run: the final message says that
    another run is writing it and to wait for that run (not to fix or remove the file)."""
    from napari_vitseg.pipeline.batch import iter_apply_file, iter_apply_files

    seg = Segmenter.load(ws.model)
    a, b = ws.file("in/a.tif", _image()), ws.file("in/b.tif", _image())
    out = ws.root / "out"
    out.mkdir()
    other = iter_apply_file(seg, a, out / "a_seg.tif")
    next(other)  # the other run: a's staging store open and locked
    try:
        with pytest.raises(VitsegError) as info:
            run(iter_apply_files(seg, [a, b], out))
        msg = str(info.value)
        assert "\n" not in msg and "Another run is writing" in msg and "wait for that run" in msg, msg
        assert "Fix or remove" not in msg, msg
        assert (out / "b_seg.tif").is_file()  # the other input was done
    finally:
        other.close()
