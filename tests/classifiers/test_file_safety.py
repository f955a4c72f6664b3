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
