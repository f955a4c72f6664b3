"""Opening a classifier file never runs code, never crashes the process and never takes more
memory than its declared, checked sizes allow: planted payloads, out-of-range trees, size bombs,
malformed metadata, and fuzzing of the reader with hypothesis."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_vitseg._validation import VitsegError
from napari_vitseg.classifiers import load_classifier_file, read_metadata
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter


def _small_classifier(folder: Path, kind: str) -> Path:
    """A real, small classifier file (classical features) of ``kind``."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(48, 48)).astype(np.float32)
    image[:, 24:] += 4
    scribbles = np.zeros((48, 48), np.uint8)
    scribbles[5:40, 3:8] = 1
    scribbles[5:40, 40:45] = 2
    path = folder / f"{kind}.vitseg"
    Segmenter(FeatureConfig(sigmas=(1,)), kind, {"n_estimators": 3}).fit(image, scribbles).save(path)
    return path


@pytest.fixture(scope="module")
def rf_file(tmp_path_factory):
    return _small_classifier(tmp_path_factory.mktemp("rf"), "rf")


@pytest.fixture(scope="module")
def xgb_file(tmp_path_factory):
    return _small_classifier(tmp_path_factory.mktemp("xgb"), "xgb")


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return Path(path)


def _with_meta(src, dst, change) -> Path:
    members = _members(src)
    meta = json.loads(members["metadata.json"])
    replaced = change(meta)
    if isinstance(replaced, list):  # a change may replace the whole metadata
        meta = replaced
    members["metadata.json"] = json.dumps(meta).encode()
    return _write(dst, members)


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _tampered_forest(rf_file, dst, field: str, value_of) -> Path:
    """The classifier file with one field of the first tree's node array changed inside the
    skops model (what a hand-crafted file would do)."""
    members = _members(rf_file)
    inner_in = zipfile.ZipFile(io.BytesIO(members["model.skops"]))
    out = io.BytesIO()
    done = False
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as inner_out:
        for info in inner_in.infolist():
            data = inner_in.read(info.filename)
            if not done and info.filename.endswith(".npy"):
                arr = np.load(io.BytesIO(data), allow_pickle=False)
                if arr.dtype.names and field in arr.dtype.names:
                    arr = arr.copy()
                    arr[field][0] = value_of(arr)
                    buf = io.BytesIO()
                    np.save(buf, arr, allow_pickle=False)
                    data, done = buf.getvalue(), True
            inner_out.writestr(info.filename, data)
    assert done, "no tree node array found in the skops model"
    members["model.skops"] = out.getvalue()
    return _write(dst, members)


def _subprocess_load_and_predict(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import numpy as np
        from napari_vitseg._validation import VitsegError
        from napari_vitseg.pipeline import Segmenter
        try:
            seg = Segmenter.load({str(path)!r})
            seg.predict(np.zeros((32, 32), np.float32))
            print("LOADED")
        except VitsegError as e:
            print("REFUSED", str(e).splitlines()[0])
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)


# -- payloads and crashes -------------------------------------------------------------------
def test_pickle_payloads_are_refused_and_never_run(rf_file, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    raw = tmp_path / "raw.vitseg"
    raw.write_bytes(payload)
    members = _members(rf_file)
    members["model.skops"] = payload  # a pickle stored as the model member
    inside = _write(tmp_path / "inside.vitseg", members)
    members = _members(rf_file)
    members["arrays.npz"] = payload  # and as the arrays member
    npz = _write(tmp_path / "npz.vitseg", members)
    for path in (raw, inside, npz):
        proc = _subprocess_load_and_predict(path, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith("REFUSED"), (path.name, proc.stdout, proc.stderr[-500:])
        assert str(path) in proc.stdout
    assert not marker.exists()


@pytest.mark.parametrize("field, value_of, match", [
    ("left_child", lambda a: len(a) + 50, "child indices"),
    ("right_child", lambda a: -7, "child indices"),
    ("left_child", lambda a: 0, "child indices"),  # a cycle: the root as its own child
    ("feature", lambda a: 10_000, "features outside"),
    ("threshold", lambda a: np.nan, "non-finite"),
])
def test_out_of_range_trees_are_refused_without_a_crash(rf_file, tmp_path, field, value_of, match):
    bad = _tampered_forest(rf_file, tmp_path / "bad.vitseg", field, value_of)
    with pytest.raises(VitsegError, match=match):
        load_classifier_file(bad)
    proc = _subprocess_load_and_predict(bad, tmp_path)
    assert proc.returncode == 0, f"the process died (return code {proc.returncode}): {proc.stderr[-1500:]}"
    assert proc.stdout.startswith("REFUSED")


def test_xgboost_feature_count_mismatch_is_refused(xgb_file, tmp_path):
    def change(m):
        m["classifier"]["n_features_in"] += 3
        m["feature_names"] += ["a", "b", "c"]

    with pytest.raises(VitsegError, match="takes 8 features|features"):
        load_classifier_file(_with_meta(xgb_file, tmp_path / "x.vitseg", change))


# -- XGBoost models: bounded UBJSON decoding and tree checks before XGBoost sees the bytes ---------
RELEASE_XGB = Path(__file__).resolve().parents[1] / "data" / "v0.1.0_xgb.vitseg"


def _plain(x):
    """Decoded UBJSON / parsed JSON as plain Python with float32-rounded floats (to compare)."""
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return float(np.float32(x)) if isinstance(x, float) else x


@pytest.mark.parametrize("source", ["release", "new"])
def test_ubjson_decoder_reads_what_xgboost_writes(xgb_file, source):
    import xgboost as xgb

    from napari_vitseg.classifiers._ubjson import decode

    blob = _members(RELEASE_XGB if source == "release" else xgb_file)["model.ubj"]
    booster = xgb.Booster()
    booster.load_model(bytearray(blob))
    assert _plain(decode(blob)) == _plain(json.loads(booster.save_raw("json")))


def test_release_xgboost_file_loads_the_exact_model():
    """The 0.1.0 XGBoost file passes the new checks and its booster is the file's, byte for byte."""
    import xgboost as xgb

    est, _, _ = load_classifier_file(RELEASE_XGB)
    raw = xgb.Booster()
    raw.load_model(bytearray(_members(RELEASE_XGB)["model.ubj"]))
    assert bytes(est.booster_.save_raw("ubj")) == bytes(raw.save_raw("ubj"))
    x = np.random.default_rng(0).normal(0, 50, (2000, est.n_features_in_)).astype(np.float32)
    np.testing.assert_array_equal(est.booster_.predict(xgb.DMatrix(x)), raw.predict(xgb.DMatrix(x)))


@pytest.mark.parametrize("blob, match", [
    (b"", "no data"),
    (b"{L\x00\x00\x00\x00\x10\x00\x00\x00", "larger than"),  # a key of 256 MiB declared in 10 bytes
    (b"SL\x7f\xff\xff\xff\xff\xff\xff\xff", "larger than"),  # a string of 2**63 - 1 bytes
    (b"SL\xff\xff\xff\xff\xff\xff\xff\xff", "larger than"),  # a negative length
    (b"[$d#L\x00\x00\x00\x00\x00\x00\x00\x05" + b"\x00" * 8, "runs past the end"),  # 5 float32 in 8 bytes
    (b"[$Z#L\x00\x00\x00\x00\x7f\x00\x00\x00", "container of type"),  # zero-byte elements: a count bomb
    (b"[#L\x00\x00\x00\x00\x10\x00\x00\x00", "larger than"),
    (b"[" * 40 + b"]" * 40, "nesting deeper"),
    (b"{i\x01ai\x01i\x01ai\x02}", "duplicate key"),
    (b"i\x01i\x02", "trailing"),
    (b"N", "unexpected marker"),
    (b"H", "unexpected marker"),
    (b"Si\x02\xff\xfe", "UTF-8"),
    (b"{i\x01a", "runs past the end"),
])
def test_ubjson_decoder_refuses_malformed_and_over_declared_input(blob, match):
    from napari_vitseg.classifiers._ubjson import UBJSONError, decode

    with pytest.raises(UBJSONError, match=match):
        decode(blob)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=256), prefix=st.sampled_from([b"", b"{", b"[", b"[$l#", b"{L", b"SL", b"[#i"]))
def test_fuzz_ubjson_decoder(data, prefix):
    """Random bytes: decoded (bounded by their length) or UBJSONError, nothing else."""
    from napari_vitseg.classifiers._ubjson import UBJSONError, decode

    try:
        decode(prefix + data)
    except UBJSONError as e:
        assert str(e)


def _xgb_doc(path):
    from napari_vitseg.classifiers._ubjson import decode

    doc = _plain(decode(_members(path)["model.ubj"]))
    model = doc["learner"]["gradient_booster"]["model"]
    return doc, model, model["trees"][0]


def _set(key, value):
    return lambda doc, model, tree: tree.__setitem__(key, value) if key in tree else model.__setitem__(key, value)


def _set_at(key, i, value):
    return lambda doc, model, tree: tree[key].__setitem__(i if i >= 0 else tree["left_children"].index(-1), value)


@pytest.mark.parametrize("change, match", [
    (_set_at("left_children", 0, 10**5), "child"),
    (_set_at("right_children", 0, 0), "child"),  # back to the root: a cycle
    (lambda d, m, t: t["right_children"].__setitem__(0, t["left_children"][0]), "child"),  # a shared node
    (_set_at("left_children", 0, -5), "child"),
    (lambda d, m, t: t["right_children"].__setitem__(t["left_children"].index(-1), 1), "child"),  # half a leaf
    (_set_at("split_indices", 0, 10**6), "features outside"),
    (_set_at("split_indices", 0, -1), "features outside"),
    (_set_at("split_conditions", 0, float("inf")), "non-finite"),
    (_set_at("split_conditions", -1, float("nan")), "non-finite"),
    (_set_at("base_weights", 0, float("nan")), "non-finite"),
    (_set_at("split_type", 0, 1), "categorical"),
    (_set_at("default_left", 0, 7), "flags"),
    (_set_at("parents", 1, 5), "parent"),
    (lambda d, m, t: t.__setitem__("left_children", t["left_children"][:-1]), "wrong length"),
    (lambda d, m, t: t["tree_param"].__setitem__("num_nodes", "100000"), "wrong length"),
    (lambda d, m, t: t["tree_param"].__setitem__("num_nodes", "-3"), "node count"),
    (lambda d, m, t: t["tree_param"].__setitem__("num_feature", "99"), "features"),
    (lambda d, m, t: t["tree_param"].__setitem__("size_leaf_vector", "2"), "vector leaves"),
    (lambda d, m, t: m["tree_info"].__setitem__(0, 5), "one tree per round"),
    (lambda d, m, t: m["tree_info"].__setitem__(0, -1), "one tree per round"),
    (lambda d, m, t: m.__setitem__("trees", m["trees"][:-1]), "trees"),
    (lambda d, m, t: m["gbtree_model_param"].__setitem__("num_trees", "1000000"), "trees"),
    (lambda d, m, t: m.__setitem__("iteration_indptr", [0, 5]), "iteration_indptr"),
    (lambda d, m, t: d["learner"]["gradient_booster"].__setitem__("name", "gblinear"), "gbtree"),
    (lambda d, m, t: d["learner"]["learner_model_param"].__setitem__("num_feature", "99"), "features"),
    (lambda d, m, t: d["learner"]["learner_model_param"].__setitem__("num_class", "5"), "classes"),
    (lambda d, m, t: d["learner"]["learner_model_param"].__setitem__("num_target", "2"), "targets"),
    (lambda d, m, t: d["learner"].pop("gradient_booster"), "lacks"),
    (lambda d, m, t: m.__setitem__("trees", [5] * len(m["trees"])), "not a tree"),
])
def test_xgboost_trees_are_checked(xgb_file, tmp_path, change, match):
    """Every tree of an XGBoost model is checked before XGBoost loads it (its predict trusts child,
    feature and class-group indices: out of range they crash the process)."""
    from napari_vitseg.classifiers._file import _check_xgboost_model

    meta = read_metadata(xgb_file)
    n_features, n_classes = meta["classifier"]["n_features_in"], len(meta["classifier"]["classes"])
    doc, model, tree = _xgb_doc(xgb_file)
    _check_xgboost_model(doc, n_features, n_classes, xgb_file)  # the unchanged model passes
    change(doc, model, tree)
    with pytest.raises(VitsegError, match=match):
        _check_xgboost_model(doc, n_features, n_classes, xgb_file)


def test_damaged_deflate_stream_is_a_clear_error(rf_file, tmp_path):
    """A member whose deflate stream is damaged (zlib.error inside zipfile) ends in VitsegError."""
    data = bytearray(rf_file.read_bytes())
    with zipfile.ZipFile(rf_file) as zf:
        info = zf.getinfo("model.skops")
    start = info.header_offset + 30 + len(info.filename.encode()) + int.from_bytes(
        data[info.header_offset + 28:info.header_offset + 30], "little")
    data[start:start + 16] = b"\xff" * 16
    bad = tmp_path / "deflate.vitseg"
    bad.write_bytes(bytes(data))
    with pytest.raises(VitsegError, match="damaged") as info:
        load_classifier_file(bad)
    assert str(bad) in str(info.value)


# -- size bombs -------------------------------------------------------------------------------
def _npz_header_bomb() -> bytes:
    """An arrays.npz whose .npy declares a (30000, 25000) float64 array (6 GB) with no data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (30000, 25000)})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("mean.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:])
    return out.getvalue()


def _declared_size_bomb(members: dict[str, bytes], name: str, declared: int) -> bytes:
    """The zip of ``members`` whose central directory declares ``declared`` bytes for ``name``
    (what a zero-padded member compressed 1000:1 looks like to a reader, without the minutes
    it takes to deflate gigabytes here)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    data = bytearray(out.getvalue())
    pos = 0
    while True:
        pos = data.index(b"PK\x01\x02", pos)
        name_len = int.from_bytes(data[pos + 28:pos + 30], "little")
        if data[pos + 46:pos + 46 + name_len].decode() == name:
            data[pos + 24:pos + 28] = min(declared, 0xFFFFFFFE).to_bytes(4, "little")
            return bytes(data)
        pos += 46


@pytest.fixture(scope="module")
def bombs(rf_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    members = _members(rf_file)
    files = {}
    files["npz_header"] = _write(d / "npz.vitseg", {**members, "arrays.npz": _npz_header_bomb()})
    big_meta = dict(members)
    meta = json.loads(big_meta["metadata.json"])
    meta["training"]["padding"] = " " * (64 * 2**20)  # 64 MB of metadata in a ~64 kB zip
    big_meta["metadata.json"] = json.dumps(meta).encode()
    files["metadata"] = _write(d / "meta.vitseg", big_meta)
    files["model_declared"] = d / "declared.vitseg"
    files["model_declared"].write_bytes(_declared_size_bomb(members, "model.skops", 3 * 2**30))
    return files


def test_declared_sizes_are_checked_before_decompressing(bombs, tmp_path):
    """Each bomb is refused, in a subprocess capped at 1.5 GB of address space beyond the
    interpreter, so that unpacking one would fail the test instead of the machine."""
    for name in ("npz_header", "metadata", "model_declared"):
        path = bombs[name]
        assert path.stat().st_size < 2**20
        code = textwrap.dedent(f"""
            import resource
            from napari_vitseg._validation import VitsegError
            from napari_vitseg.classifiers import load_classifier_file
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            import psutil
            used = psutil.Process().memory_info().vms
            resource.setrlimit(resource.RLIMIT_AS, (used + 1536 * 2**20, hard))
            try:
                load_classifier_file({str(path)!r})
                print("LOADED")
            except VitsegError as e:
                print("REFUSED", str(e).splitlines()[0])
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (name, proc.stderr[-1500:])
        assert proc.stdout.startswith("REFUSED") and ("declares" in proc.stdout or "refusing" in proc.stdout), \
            (name, proc.stdout)


# -- malformed metadata -----------------------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(format_version="1"), "format_version"),
    (lambda m: [1, 2, 3], "not a JSON object"),
    (lambda m: m["classes"][0].pop("name"), "classes.0.name"),
    (lambda m: m["classes"][0].update(color="not a colour"), "classes.0.color"),
    (lambda m: m["classes"][0].update(id=10**9), "classes.0.id"),
    (lambda m: m["classifier"]["params"].update(n_trees=3), "unknown classifier parameters"),
    (lambda m: m["classifier"]["params"].update(n_estimators=0), "n_estimators"),
    (lambda m: m["classifier"].update(classes=[1, 2, 3]), "class table|n_classes|other classes"),
    (lambda m: m["classifier"].update(classes=[1]), "classifier.classes"),
    (lambda m: m["feature_config"].update(sigmas=["a"]), "sigmas must be numbers"),
    (lambda m: m["feature_config"].update(sigmas=[1e9]), "sigmas must be at most"),
    (lambda m: m.update(n_channels=10**6), "n_channels"),
    (lambda m: m.update(feature_names=m["feature_names"][:-1]), "feature names"),
    (lambda m: m.update(training={"x": json.loads("[" * 100 + "]" * 100)}), "nested deeper"),
    (lambda m: m["classifier"].update(model_file="../../etc/passwd"), "model_file"),
])
def test_malformed_metadata_ends_in_one_clear_error(rf_file, tmp_path, change, match):
    bad = _with_meta(rf_file, tmp_path / "m.vitseg", change)
    with pytest.raises(VitsegError, match=match) as info:
        Segmenter.load(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_100000_deep_json_is_refused(rf_file, tmp_path):
    members = _members(rf_file)
    members["metadata.json"] = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(VitsegError):
        read_metadata(_write(tmp_path / "deep.vitseg", members))


# -- fuzzing ------------------------------------------------------------------------------------
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=2048))
def test_fuzz_random_bytes(tmp_path, data):
    path = tmp_path / "f.vitseg"
    path.write_bytes(data)
    with pytest.raises(VitsegError):
        load_classifier_file(path)


@FUZZ
@given(members=st.dictionaries(st.sampled_from(["metadata.json", "model.skops", "model.ubj", "arrays.npz", "x"]),
                               st.binary(max_size=512), max_size=5))
def test_fuzz_random_zip_members(tmp_path, members):
    with pytest.raises(VitsegError):
        load_classifier_file(_write(tmp_path / "z.vitseg", members))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
META_PATHS = [("format_version",), ("n_channels",), ("classes",), ("feature_names",), ("backbone",),
              ("classifier", "params"), ("classifier", "classes"), ("classifier", "n_features_in"),
              ("classifier", "kind"), ("feature_config", "sigmas"), ("feature_config", "tile_size"),
              ("feature_config",), ("training",)]


@FUZZ
@given(where=st.sampled_from(META_PATHS), value=json_values)
def test_fuzz_metadata_values(rf_file, tmp_path, where, value):
    def change(m):
        d = m
        for k in where[:-1]:
            d = d[k]
        d[where[-1]] = value

    path = _with_meta(rf_file, tmp_path / "v.vitseg", change)
    try:
        seg = Segmenter.load(path)
    except VitsegError:
        return
    seg.predict(np.zeros((24, 24), np.float32))  # an accepted change must still work
