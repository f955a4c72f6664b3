"""The hypothesis fuzzers of ``tests/_fuzz_targets.py`` (classifier-file reader; project-file reader;
label and shape validators) run as one pytest session in a child process whose address space is capped with
``resource.setrlimit(RLIMIT_AS, ...)``: only VitsegError may escape (asserted inside each fuzzer),
the child must not die of a signal (a segfault in a tree walk, the kernel's OOM killer), and its
memory stays within the cap (a decompression or allocation bomb hits the cap and fails the
fuzzer with a MemoryError instead of taking the machine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TARGETS = Path(__file__).resolve().parent / "_fuzz_targets.py"
#: Address space the child may use beyond what the interpreter and its imports have mapped.
HEADROOM = 1024 * 2**20
#: Fuzzers in TARGETS (each must be collected and pass).
N_FUZZERS = 16

CHILD = textwrap.dedent("""
    import json, resource, sys
    import psutil
    # everything the fuzzers import, before the cap: the cap then bounds what the fuzzed code allocates
    import numpy, pytest, hypothesis, sklearn.ensemble, xgboost, skops.io, zarr, tifffile  # noqa: F401
    import napari_vitseg.pipeline, napari_vitseg.classifiers, napari_vitseg.features  # noqa: F401
    base = psutil.Process().memory_info()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = base.vms + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    code = pytest.main([sys.argv[1], "-q", "-p", "no:cacheprovider", "--noconftest", "-o", "addopts=",
                        "-rxX", "-W", "error::napari_vitseg._validation.VitsegWarning", "--basetemp", sys.argv[3]])
    # this process's own high-water mark (VmHWM: ru_maxrss would carry the pytest parent's peak over exec)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    print("FUZZ-CHILD " + json.dumps({"base_vms": base.vms, "base_rss": base.rss, "cap": cap, "peak_rss": peak}))
    sys.exit(int(code))
""")


@pytest.mark.slow
def test_fuzzers_in_a_memory_capped_subprocess(tmp_path):
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",
           "VITSEG_WEIGHTS_DIR": str(tmp_path / "weights"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(TARGETS), str(HEADROOM), str(tmp_path / "t")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode >= 0, f"the fuzzing process died of signal {-proc.returncode}:\n{out[-4000:]}"
    assert proc.returncode == 0, out[-6000:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|xfailed|failed|errors?|skipped|xpassed)", out)}
    # every fuzzer ran: passed, or failed exactly as a known bug marked in the targets (strict xfail)
    assert counts.get("passed", 0) + counts.get("xfailed", 0) == N_FUZZERS, (counts, out[-3000:])
    stats = json.loads(out.split("FUZZ-CHILD ", 1)[1].splitlines()[0])
    # bounded memory: the resident peak stays below the address-space cap (and far below it in practice)
    assert stats["peak_rss"] < stats["cap"]
    assert stats["peak_rss"] - stats["base_rss"] < HEADROOM, stats


LOAD_CAPPED = textwrap.dedent("""
    import resource, sys
    import psutil
    from napari_vitseg._validation import VitsegError
    from napari_vitseg.pipeline import Segmenter
    import xgboost, torch, napari_vitseg.features  # noqa: F401 - mapped before the cap, as in the fuzzers
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (psutil.Process().memory_info().vms + int(sys.argv[2]), hard))
    try:
        Segmenter.load(sys.argv[1])
        print("LOADED")
    except VitsegError as e:
        print("REFUSED", str(e).splitlines()[0])
""")


def _assert_refused_in_child(tmp_path, members: dict, script: str) -> None:
    """Zip ``members`` into a classifier file and open it with ``script`` in a memory-capped child:
    it must exit normally and print REFUSED with the file's name (never die by a signal)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    bad = tmp_path / "bad.vitseg"
    bad.write_bytes(buf.getvalue())
    proc = subprocess.run([sys.executable, "-c", script, str(bad), str(HEADROOM)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"return code {proc.returncode}: {proc.stderr[-1500:]}"
    assert proc.stdout.startswith("REFUSED") and str(bad) in proc.stdout, proc.stdout


@pytest.mark.parametrize("blob", [b"", b"{L\x00\x00\x00\x00\x10\x00\x00\x00"], ids=["empty", "declares-256MiB"])
def test_garbage_xgboost_model_member_is_refused_without_a_crash(tmp_path, blob):
    """A model.ubj of a few bytes (found by the fuzzer of random zip members) must end in
    VitsegError, in a process capped like the fuzzers."""
    import zipfile

    import numpy as np

    from napari_vitseg.features import FeatureConfig
    from napari_vitseg.pipeline import Segmenter

    rng = np.random.default_rng(0)
    image = rng.normal(size=(32, 32)).astype(np.float32)
    image[:, 16:] += 4
    scribbles = np.zeros((32, 32), np.uint8)
    scribbles[4:28, 2:6], scribbles[4:28, 26:30] = 1, 2
    good = tmp_path / "good.vitseg"
    Segmenter(FeatureConfig(sigmas=(1,)), "xgb", {"n_estimators": 2}).fit(image, scribbles).save(good)
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["model.ubj"] = blob
    _assert_refused_in_child(tmp_path, members, LOAD_CAPPED)


PREDICT_CAPPED = LOAD_CAPPED.replace('Segmenter.load(sys.argv[1])', (
    'seg = Segmenter.load(sys.argv[1])\n'
    '    import numpy as np\n'
    '    seg.predict(np.zeros((24, 24), np.float32))'))


@pytest.mark.parametrize("field, value", [("left_children", 100_000), ("split_indices", 10**6),
                                          ("right_children", 0)])
def test_out_of_range_xgboost_tree_is_refused_without_a_crash(tmp_path, field, value):
    import json
    import zipfile

    import numpy as np
    import xgboost as xgb

    from napari_vitseg.features import FeatureConfig
    from napari_vitseg.pipeline import Segmenter

    rng = np.random.default_rng(0)
    image = rng.normal(size=(32, 32)).astype(np.float32)
    image[:, 16:] += 4
    scribbles = np.zeros((32, 32), np.uint8)
    scribbles[4:28, 2:6], scribbles[4:28, 26:30] = 1, 2
    good = tmp_path / "good.vitseg"
    Segmenter(FeatureConfig(sigmas=(1,)), "xgb", {"n_estimators": 2}).fit(image, scribbles).save(good)
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    booster = xgb.Booster()
    booster.load_model(bytearray(members["model.ubj"]))
    model = json.loads(booster.save_raw("json"))
    model["learner"]["gradient_booster"]["model"]["trees"][0][field][0] = value
    crafted = xgb.Booster()
    crafted.load_model(bytearray(json.dumps(model).encode()))  # XGBoost itself accepts it
    members["model.ubj"] = bytes(crafted.save_raw("ubj"))
    _assert_refused_in_child(tmp_path, members, PREDICT_CAPPED)
