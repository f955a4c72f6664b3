"""Hypothesis fuzzers of the classifier-file reader, the project-file reader and of the label /
shape validators.

Not collected by the normal test run (the name does not start with ``test_``): it is run as one
pytest session in a child process under ``resource.setrlimit(RLIMIT_AS, ...)`` by
``tests/test_fuzz_subprocess.py``, which asserts that the child exits normally (no signal), that
every fuzzer passed, and that its peak memory stayed bounded. Inside, every fuzzer asserts that
only :class:`napari_vitseg._validation.VitsegError` ever escapes, and that whatever is accepted
also works (a loaded classifier predicts, an accepted config round-trips, a loaded project has
the scribbles and classes it declares).

Examples run derandomised (``derandomize=True``) so that CI sees the same inputs every time;
``VITSEG_FUZZ_EXAMPLES`` scales the number of examples (default in :data:`EXAMPLES`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_vitseg import _validation as V
from napari_vitseg._validation import VitsegError
from napari_vitseg.classifiers import load_classifier_file
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter
from napari_vitseg.pipeline.project import (
    Project,
    ProjectChannel,
    image_fingerprint,
    load_project,
    save_project,
)
from napari_vitseg.pipeline.scribbles import ScribbleIndex
from napari_vitseg.pipeline.segmenter import SegmenterConfig, as_channels_last


def known_bug(exc, where: str):
    """A fuzzer that currently finds a bug outside the tests: expected to fail with exactly ``exc``
    (strict: once the bug is fixed the run reports XPASS as a failure; then remove the marker)."""
    return pytest.mark.xfail(raises=exc, strict=True, reason=f"known bug: {where}")


#: Examples per fuzzer (scaled by the environment variable ``VITSEG_FUZZ_EXAMPLES``, a factor).
EXAMPLES = 40
_SCALE = float(os.environ.get("VITSEG_FUZZ_EXAMPLES", "1"))


def fuzz(n: int = EXAMPLES):
    return settings(max_examples=max(1, int(n * _SCALE)), deadline=None, derandomize=True, database=None,
                    report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# -- real classifier files to mutate -------------------------------------------------------------
def _small_classifier(folder: Path, kind: str) -> Path:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(40, 40)).astype(np.float32)
    image[:, 20:] += 4
    scribbles = np.zeros((40, 40), np.uint8)
    scribbles[5:35, 3:8] = 1
    scribbles[5:35, 32:37] = 2
    path = folder / f"{kind}.vitseg"
    Segmenter(FeatureConfig(sigmas=(1,)), kind, {"n_estimators": 3}).fit(image, scribbles).save(path)
    return path


@functools.lru_cache
def _real(kind: str) -> bytes:
    """The bytes of a real small classifier file of ``kind`` (made once per session)."""
    with tempfile.TemporaryDirectory() as d:
        return _small_classifier(Path(d), kind).read_bytes()


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return out.getvalue()


def _set_at(d: dict, where: tuple, value) -> None:
    """Set ``d[where[0]][where[1]]...[where[-1]] = value`` (a nested metadata field)."""
    for k in where[:-1]:
        d = d[k]
    d[where[-1]] = value


def _load_and_use(path: Path) -> None:
    """Load a classifier file; if it is accepted it must predict a small image. Only
    VitsegError may escape."""
    try:
        seg = Segmenter.load(path)
    except VitsegError as e:
        assert str(e), "an empty error message"
        return
    _predicts(seg)


def _predicts(seg) -> None:
    """A loaded segmenter predicts a small image of its channel count (or refuses with VitsegError)."""
    nc = int(seg.n_channels_)
    image = np.zeros((20, 20) if nc == 1 else (20, 20, nc), np.float32)
    try:
        labels = seg.predict(image, channel_axis=None if nc == 1 else -1)
    except VitsegError:
        return
    assert labels.shape == (20, 20)
    assert set(np.unique(labels)) <= {int(c) for c in seg.classes_}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
META_PATHS = [("format", ), ("format_version",), ("n_channels",), ("classes",), ("feature_names",), ("backbone",),
              ("classifier",), ("classifier", "params"), ("classifier", "classes"), ("classifier", "n_features_in"),
              ("classifier", "kind"), ("classifier", "model_file"), ("feature_config", "sigmas"),
              ("feature_config", "tile_size"), ("feature_config", "families"), ("feature_config", "version"),
              ("feature_config",), ("training",), ("arrays",)]


#: Names given random content (``model.ubj`` included: the reader decodes it in bounded Python
#: before XGBoost's own reader, which aborts or segfaults on some, ever sees it).
RANDOM_MEMBER_NAMES = ["metadata.json", "model.skops", "model.ubj", "arrays.npz", "x", "../evil", "/abs", "dir/"]


# -- the classifier-file reader -----------------------------------------------------------------
@fuzz()
@given(data=st.binary(max_size=4096), zip_magic=st.booleans())
def test_reader_random_bytes(tmp_path, data, zip_magic):
    path = tmp_path / "f.vitseg"
    path.write_bytes(b"PK\x03\x04" + data if zip_magic else data)
    with pytest.raises(VitsegError):
        load_classifier_file(path)


@fuzz()
@given(kind=st.sampled_from(["rf", "xgb"]),
       keep=st.sets(st.sampled_from(["metadata.json", "model.skops", "model.ubj", "arrays.npz"])),
       extra=st.dictionaries(st.sampled_from(RANDOM_MEMBER_NAMES), st.binary(max_size=512), max_size=4),
       stored=st.booleans())
def test_reader_random_zip_members(tmp_path, kind, keep, extra, stored):
    """Real members of a real file mixed with random ones (random content under real names)."""
    members = {n: b for n, b in _members(_real(kind)).items() if n in keep}
    members.update(extra)
    path = tmp_path / "z.vitseg"
    path.write_bytes(_zip(members, zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED))
    _load_and_use(path)


@fuzz()
@given(kind=st.sampled_from(["rf", "xgb"]), where=st.sampled_from(META_PATHS), value=json_values)
def test_reader_random_metadata_values(tmp_path, kind, where, value):
    members = _members(_real(kind))
    meta = json.loads(members["metadata.json"])
    _set_at(meta, where, value)
    members["metadata.json"] = json.dumps(meta).encode()
    path = tmp_path / "v.vitseg"
    path.write_bytes(_zip(members))
    _load_and_use(path)


@fuzz()
@given(kind=st.sampled_from(["rf", "xgb"]), value=json_values)
def test_reader_random_metadata_document(tmp_path, kind, value):
    members = _members(_real(kind))
    members["metadata.json"] = json.dumps(value).encode()
    path = tmp_path / "d.vitseg"
    path.write_bytes(_zip(members))
    _load_and_use(path)


def _damaged(blob: bytearray, data) -> bytearray:
    """``blob`` with a few bytes flipped, a run overwritten, or truncated (drawn from ``data``)."""
    how = data.draw(st.sampled_from(["flip", "overwrite", "truncate"]))
    if how == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=8)):
            blob[pos] ^= data.draw(st.integers(1, 255))
    elif how == "overwrite":
        start = data.draw(st.integers(0, len(blob) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=64))
        blob[start:start + len(chunk)] = chunk
    else:
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    return blob


@fuzz()
@given(kind=st.sampled_from(["rf", "xgb"]), data=st.data())
def test_reader_damaged_real_file(tmp_path, kind, data):
    """Byte flips, overwritten runs and truncation of a real file (CRC errors, deflate errors,
    damaged central directories)."""
    blob = _damaged(bytearray(_real(kind)), data)
    path = tmp_path / "b.vitseg"
    path.write_bytes(bytes(blob))
    _load_and_use(path)


def _node_arrays(skops_blob: bytes):
    """(inner members, names of the .npy members that are tree node arrays)."""
    inner = _members(skops_blob)
    names = []
    for n, b in inner.items():
        if n.endswith(".npy"):
            arr = np.load(io.BytesIO(b), allow_pickle=False)
            if arr.dtype.names and "left_child" in arr.dtype.names:
                names.append(n)
    return inner, sorted(names)


@fuzz()
@given(data=st.data())
def test_reader_random_tree_arrays(tmp_path, data):
    """Random values in the node arrays of the skops forest (children, features, thresholds,
    sample counts): refused, or loaded and predicting, never a crash of the process."""
    members = _members(_real("rf"))
    inner, names = _node_arrays(members["model.skops"])
    name = data.draw(st.sampled_from(names))
    arr = np.load(io.BytesIO(inner[name]), allow_pickle=False).copy()
    for _ in range(data.draw(st.integers(1, 4))):
        field = data.draw(st.sampled_from(arr.dtype.names))
        i = data.draw(st.integers(0, len(arr) - 1))
        if arr.dtype[field].kind == "f":
            v = data.draw(st.floats(allow_nan=True, allow_infinity=True, width=64))
        else:
            v = data.draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-3, len(arr) + 3))
        try:
            arr[field][i] = v
        except (OverflowError, ValueError):
            continue
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    inner[name] = buf.getvalue()
    members["model.skops"] = _zip(inner)
    path = tmp_path / "t.vitseg"
    path.write_bytes(_zip(members))
    _load_and_use(path)


@fuzz()
@given(data=st.data())
def test_reader_random_skops_schema(tmp_path, data):
    """Random values inside the skops schema (types, module names, array references)."""
    members = _members(_real("rf"))
    inner = _members(members["model.skops"])
    schema = json.loads(inner["schema.json"])
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((*path, k))
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append((*path, i))
                walk(v, (*path, i))

    walk(schema, ())
    where = data.draw(st.sampled_from(paths))
    value = data.draw(json_values | st.sampled_from(["builtins.eval", "os.system", "posix", "system",
                                                     "numpy.load", "sklearn.tree._tree.Tree"]))
    _set_at(schema, where, value)
    inner["schema.json"] = json.dumps(schema).encode()
    members["model.skops"] = _zip(inner)
    path = tmp_path / "s.vitseg"
    path.write_bytes(_zip(members))
    _load_and_use(path)


# -- the project-file reader --------------------------------------------------------------------
@functools.lru_cache
def _real_project(kind: str) -> bytes:
    """The bytes of a real small project (made once per session): ``"rf"`` / ``"xgb"``: one image,
    2D scribbles and a trained classifier; ``"channels"``: two channel layers (format 2), (Z, Y, X)
    scribbles, no classifier."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if kind == "channels":
            stack = rng.integers(0, 255, (2, 3, 16, 16), dtype=np.uint8)
            for i in range(2):
                tifffile.imwrite(d / f"c{i}.tif", stack[i], photometric="minisblack")
            scribbles = np.zeros((3, 16, 16), np.uint8)
            scribbles[1, 2:6, 2:6], scribbles[2, 8:12, 8:12] = 1, 2
            channels = [ProjectChannel(d / f"c{i}.tif", f"c{i}", "napari", (3, 16, 16), image_fingerprint(stack[i]))
                        for i in range(2)]
            project = Project(d / "c0.tif", scribbles, ["a", "b"], ["red", "blue"], channels=channels)
        else:
            clf = Segmenter.load(_small_classifier(d, kind))
            tifffile.imwrite(d / "img.tif", np.zeros((40, 40), np.float32))
            scribbles = np.zeros((40, 40), np.uint8)
            scribbles[5:35, 3:8], scribbles[5:35, 32:37] = 1, 2
            project = Project(d / "img.tif", scribbles, ["a", "b"], ["red", "blue"], segmenter=clf,
                              image_reader="napari", image_name="img", scribbles_name="s")
        return save_project(d / "p.vitseg-project", project).read_bytes()


def _load_project_and_use(path: Path) -> None:
    """Load a project; if it is accepted its parts must be what it declares (and its classifier
    must predict). Only VitsegError may escape."""
    try:
        project = load_project(path)
    except VitsegError as e:
        assert str(e), "an empty error message"
        return
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("project.json"))
    assert len(project.class_names) == len(project.class_colors) == len(meta["classes"]) >= 1
    if project.scribbles is None:
        assert meta.get("scribbles") is None
    else:
        assert project.scribbles.dtype == np.uint8
        assert list(project.scribbles.shape) == meta["scribbles"]["shape"]
    assert len(project.channels) in (0, *range(2, 65))
    assert all(tuple(ch.shape) == tuple(project.channels[0].shape) for ch in project.channels)
    if project.segmenter is not None:
        assert project.has_classifier
        _predicts(project.segmenter)


PROJECT_KINDS = ["rf", "xgb", "channels"]
#: Member names to edit: mostly the real ones (other names are refused from the zip directory alone).
#: Hypothesis favours the first entries of a list: the ones behind the checks come first.
PROJECT_MEMBER_NAMES = ["scribbles.npy", "classifier.vitseg", "project.json"] * 4 + ["x", "../evil", "/abs", "dir/"]
PROJECT_META_PATHS = [("channels",), ("scribbles", "shape"), ("image", "channel_axis"), ("classes",), ("members",),
                      ("scribbles",), ("scribbles", "dtype"), ("image",), ("image", "absolute"), ("image", "relative"),
                      ("image", "reader"), ("format_version",), ("format",)]


def _fix_members(members: dict[str, bytes]) -> dict[str, bytes]:
    """project.json's member sizes and SHA-256 made to match the members (a forged file that
    passes the checksum checks and reaches the parsers behind them)."""
    try:
        meta = json.loads(members["project.json"])
    except (KeyError, ValueError):
        return members
    if isinstance(meta, dict):
        meta["members"] = {n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                           for n, b in members.items() if n != "project.json"}
        members = {**members, "project.json": json.dumps(meta).encode()}
    return members


@fuzz()
@given(kind=st.sampled_from(PROJECT_KINDS), data=st.data())
def test_project_damaged_real_file(tmp_path, kind, data):
    """Byte flips, overwritten runs and truncation of a real project file."""
    blob = _damaged(bytearray(_real_project(kind)), data)
    path = tmp_path / "b.vitseg-project"
    path.write_bytes(bytes(blob))
    _load_project_and_use(path)


@fuzz()
@given(kind=st.sampled_from(PROJECT_KINDS), data=st.data(), fix=st.booleans(), stored=st.booleans())
def test_project_zip_member_edits(tmp_path, kind, data, fix, stored):
    """Members of a real project dropped, truncated, bit-flipped, replaced with random bytes or a
    random .npy, or added under other names; with the checksums in project.json fixed or not."""
    members = _members(_real_project(kind))
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(PROJECT_MEMBER_NAMES))
        how = data.draw(st.sampled_from(["flip", "npy", "random", "truncate", "drop"]))
        old = members.get(name, b"")
        if how == "drop":
            members.pop(name, None)
        elif how == "truncate":
            members[name] = old[:data.draw(st.integers(0, max(len(old) - 1, 0)))]
        elif how == "flip" and old:
            b = bytearray(old)
            for pos in data.draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=4)):
                b[pos] ^= data.draw(st.integers(1, 255))
            members[name] = bytes(b)
        elif how == "npy":
            arr = data.draw(hnp.arrays(hnp.integer_dtypes() | hnp.unsigned_integer_dtypes() | hnp.floating_dtypes(),
                                       hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=17)))
            buf = io.BytesIO()
            np.save(buf, arr if data.draw(st.booleans()) else np.asfortranarray(arr), allow_pickle=False)
            members[name] = buf.getvalue()
        else:
            members[name] = data.draw(st.binary(max_size=512))
    if fix:
        members = _fix_members(members)
    path = tmp_path / "z.vitseg-project"
    path.write_bytes(_zip(members, zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED))
    _load_project_and_use(path)


@fuzz()
@given(kind=st.sampled_from(PROJECT_KINDS), where=st.sampled_from(PROJECT_META_PATHS), value=json_values,
       channel_field=st.sampled_from(["shape", "absolute", "relative", "fingerprint", "layer_name", "reader"]),
       whole=st.integers(0, 7).map(lambda i: i == 7))
def test_project_random_metadata_values(tmp_path, kind, where, value, channel_field, whole):
    """Random values at places in a real project.json (checksums kept right), or (one in eight) a
    random document."""
    members = _members(_real_project(kind))
    meta = json.loads(members["project.json"])
    if whole:
        meta = value
    elif where == ("channels",) and meta.get("channels"):
        meta["channels"][-1][channel_field] = value
    else:
        _set_at(meta, where, value)
    members["project.json"] = json.dumps(meta).encode()
    path = tmp_path / "v.vitseg-project"
    path.write_bytes(_zip(members))
    _load_project_and_use(path)


# -- label / shape validators -------------------------------------------------------------------
any_dtype = (hnp.integer_dtypes() | hnp.unsigned_integer_dtypes() | hnp.floating_dtypes() | hnp.boolean_dtypes()
             | hnp.complex_number_dtypes() | hnp.datetime64_dtypes() | st.just(np.dtype(object))
             | st.just(np.dtype("U3")))
small_arrays = hnp.arrays(any_dtype, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5),
                          elements=None)
label_arrays = hnp.arrays(hnp.integer_dtypes() | hnp.unsigned_integer_dtypes() | hnp.floating_dtypes()
                          | hnp.boolean_dtypes(),
                          hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6))
junk = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5) \
    | st.lists(st.integers(-3, 3), max_size=3)


@fuzz(60)
@given(scribbles=label_arrays | small_arrays,
       spatial=st.none() | st.lists(st.integers(0, 7), min_size=0, max_size=4).map(tuple))
def test_scribble_index_from_array(scribbles, spatial):
    try:
        index = ScribbleIndex.from_array(scribbles, spatial)
    except VitsegError as e:
        assert str(e)
        return
    assert index.shape == scribbles.shape
    assert scribbles.ndim in (2, 3)
    dense = np.asarray(scribbles)
    assert np.all(dense >= 0)  # negative labels are refused
    assert set(index.planes) == ({z for z in range(dense.shape[0]) if dense[z].any()} if dense.ndim == 3
                                 else ({0} if dense.any() else set()))


@fuzz(60)
@given(image=small_arrays, channel_axis=junk | st.integers(-6, 6))
def test_as_channels_last(image, channel_axis):
    try:
        out, nsp, nc = as_channels_last(image, channel_axis)
    except VitsegError as e:
        assert str(e)
        return
    assert nsp in (2, 3) and out.ndim == nsp + (channel_axis is not None)
    assert nc == (out.shape[-1] if channel_axis is not None else 1)
    assert sorted(out.shape) == sorted(image.shape)


@fuzz(60)
@given(array=small_arrays, ndim=st.integers(-2, 8), axis=junk | st.integers(-9, 9),
       spatial=st.lists(st.integers(0, 5), max_size=3).map(tuple), value=junk,
       kind=st.sampled_from(["int", "float"]), low=st.none() | st.integers(-5, 5) | st.floats(-5, 5),
       high=st.none() | st.integers(-5, 5) | st.floats(-5, 5), allow_none=st.booleans())
def test_check_functions(array, ndim, axis, spatial, value, kind, low, high, allow_none):
    calls = [
        lambda: V.check_channel_axis(ndim, axis),
        lambda: V.check_ndim(array, spatial or (2, 3), axis if isinstance(axis, int) and not isinstance(axis, bool)
                             and 0 <= axis < max(array.ndim, 1) else None),
        lambda: V.check_dtype(array),
        lambda: V.check_finite(array) if array.dtype.kind in "biuf" else None,
        lambda: V.as_float32(array),
        lambda: V.check_option(value, ("rf", "xgb"), "classifier"),
        lambda: V.check_option(value, {"rf": 1, "xgb": 2}, "classifier"),
        lambda: V.check_number(value, "n", kind=kind, low=low, high=high, allow_none=allow_none),
    ]
    for call in calls:
        try:
            call()
        except VitsegError as e:
            assert str(e)
    try:
        got = V.as_float32(array)
    except VitsegError:
        return
    assert got.dtype == np.float32 and np.all(np.isfinite(got))


FEATURE_KEYS = ["version", "backbone", "classical", "sigmas", "families", "include_intensity", "upsample",
                "vit_pca", "tile_size", "tile_overlap", "batch_size", "guided_radius", "guided_eps",
                "vit_channels", "intensity", "pos_embed_interp", "vit_autocast", "unknown"]


@fuzz(60)
@given(changes=st.dictionaries(st.sampled_from(FEATURE_KEYS), json_values | junk, max_size=4),
       base=st.booleans())
def test_feature_config_from_dict(changes, base):
    d = {**(FeatureConfig(sigmas=(1.0,)).to_dict() if base else {}), **changes}
    try:
        cfg = FeatureConfig.from_dict(d)
    except VitsegError as e:
        assert str(e)
        return
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())  # serialisable


@fuzz(60)
@given(classifier=st.sampled_from(["rf", "xgb"]) | junk,
       params=st.dictionaries(st.sampled_from(["n_estimators", "max_depth", "min_samples_leaf", "learning_rate",
                                               "max_features", "n_jobs", "random_state", "class_weight",
                                               "bogus"]), json_values | junk, max_size=3),
       names=st.none() | st.lists(st.text(max_size=8) | junk, max_size=4),
       colors=st.none() | st.lists(st.sampled_from(["red", "#00ff00", "nope", "#12"]) | junk, max_size=4))
def test_segmenter_config(classifier, params, names, colors):
    try:
        SegmenterConfig(classifier=classifier, classifier_params=params, class_names=names, class_colors=colors)
    except VitsegError as e:
        assert str(e)


@fuzz(25)
@given(image=hnp.arrays(hnp.integer_dtypes() | hnp.unsigned_integer_dtypes() | hnp.floating_dtypes()
                        | hnp.boolean_dtypes() | hnp.complex_number_dtypes(),
                        hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=12)),
       scribbles=label_arrays, channel_axis=st.none() | st.integers(-4, 3))
def test_fit_validates_image_and_scribbles(image, scribbles, channel_axis):
    """The public training entry point with random images and scribbles: refused with one
    VitsegError, or trained and predicting the image's spatial shape."""
    seg = Segmenter(FeatureConfig(sigmas=(1.0,)), "rf", {"n_estimators": 2})
    try:
        seg.fit(image, scribbles, channel_axis=channel_axis)
    except VitsegError as e:
        assert str(e)
        return
    labels = seg.predict(image, channel_axis=channel_axis)
    assert labels.shape == scribbles.shape
