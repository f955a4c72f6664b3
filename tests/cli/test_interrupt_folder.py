"""`vitseg apply` on a FOLDER, interrupted (SIGKILL, SIGTERM) in the middle of a file and rerun:
the outputs equal an uninterrupted run byte for byte and nothing else is left in the output
folder; two concurrent folder runs to one output folder never produce a mixed file.

Real data: crops of the TEM cells stack (../shared/data/tem_cells_stack)."""

from __future__ import annotations

import os
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

VITSEG = [sys.executable, "-m", "napari_vitseg.cli"]
NAMES = ["a", "b", "c", "d"]
PLANES = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    """A small classical classifier, a folder of 4 six-plane TIFFs cut from the real TEM stack, and
    the outputs of an uninterrupted `vitseg apply` of that folder (the reference)."""
    d = tmp_path_factory.mktemp("folder_run")
    src = shared_data("tem_cells_stack")
    stack, scrib = tifffile.imread(src / "image.tif"), tifffile.imread(src / "scribbles.tif")
    assert stack.shape == (6, 518, 518)
    tifffile.imwrite(d / "train.tif", stack[:2, 64:192, 64:224])
    tifffile.imwrite(d / "train_sc.tif", scrib[:2, 64:192, 64:224])
    model = d / "m.vitseg"
    assert main(["train", str(d / "train.tif"), "--scribbles", str(d / "train_sc.tif"), "-o", str(model),
                 "--backbone", "none", "--sigmas", "1,2", "--n-estimators", "5", "--quiet"]) == 0
    inputs = d / "in"
    inputs.mkdir()
    for i, name in enumerate(NAMES):  # four different crops, so a mixed-up file would show
        y, x = 40 + 60 * i, 250 - 50 * i
        tifffile.imwrite(inputs / f"{name}.tif", np.ascontiguousarray(stack[:, y:y + 224, x:x + 256]))
    ref = d / "ref"
    assert main(["apply", str(model), str(inputs), "-o", str(ref), "--quiet"]) == 0
    expected = {p.name: p.read_bytes() for p in ref.iterdir()}
    assert sorted(expected) == [f"{n}_seg.tif" for n in NAMES]
    return model, inputs, expected


def _listing(folder: Path) -> list[str]:
    """Every entry of a folder, hidden ones included, recursively."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _wait_until(cond, proc, timeout=180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if cond():
            return
        time.sleep(0.005)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        pytest.fail("the condition to interrupt the run never came")
    pytest.fail(f"the run ended (code {proc.returncode}) before it could be interrupted: "
                f"{proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_folder_run_interrupted_mid_file_resumes_to_the_same_bytes(tmp_path, capsys, setup, sig):
    model, inputs, expected = setup
    out = tmp_path / "out"
    proc = subprocess.Popen([*VITSEG, "apply", str(model), str(inputs), "-o", str(out), "--quiet"],
                            stderr=subprocess.PIPE, text=True)
    second = out / "b_seg.tif"
    # interrupt once the first output is complete and the second file is half done
    _wait_until(lambda: (out / "a_seg.tif").exists() and len(recorded_planes(staging_path(second))) >= 2, proc)
    assert proc.poll() is None
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, err
        assert lines[0].startswith("vitseg: error: interrupted (SIGTERM); finished planes are kept in") \
            and str(staging_path(second)) in lines[0], err
    # nothing half-written under a final name: the finished output is whole, the others absent
    assert (out / "a_seg.tif").read_bytes() == expected["a_seg.tif"]
    assert not second.exists() and not (out / "c_seg.tif").exists() and not (out / "d_seg.tif").exists()
    k = len(recorded_planes(staging_path(second)))
    assert 2 <= k < PLANES or (k == PLANES and sig == signal.SIGKILL)
    assert not any(n.endswith(".part") for n in os.listdir(out)), os.listdir(out)  # no temporary file
    capsys.readouterr()
    assert main(["apply", str(model), str(inputs), "-o", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert _listing(out) == sorted(expected)  # no staging store, lock or .part file left
    for name, data in expected.items():
        assert (out / name).read_bytes() == data, name


#: `vitseg` that imports everything first and starts only when the file argv[1] appears, so that
#: two runs can be started at a chosen moment instead of after a slow interpreter start.
VITSEG_ON_CUE = [sys.executable, "-c", (
    "import os, sys, time\n"
    "from napari_vitseg.cli import main\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.002)\n"
    "sys.exit(main(sys.argv[2:]))\n")]


def _run_on_cue(cue: Path, model, inputs, out) -> subprocess.Popen:
    return subprocess.Popen([*VITSEG_ON_CUE, str(cue), "apply", str(model), str(inputs), "-o", str(out), "--quiet"],
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("when", ["together", "mid-run"])
def test_two_concurrent_folder_runs_never_mix_a_file(tmp_path, setup, when):
    """Two `vitseg apply` runs of the same folder to one output folder, started at the same
    instant, or the second while the first is in the middle of its second file: each ends with
    0, or with exit 2 and one line saying another run holds a file; every output that exists
    equals the uninterrupted one; a later run completes the rest and leaves only the outputs."""
    model, inputs, expected = setup
    out = tmp_path / "out"
    cue1, cue2 = tmp_path / "go1", tmp_path / "go2"
    procs = [_run_on_cue(cue1, model, inputs, out), _run_on_cue(cue2, model, inputs, out)]
    if when == "together":
        cue1.touch()
        cue2.touch()
    else:
        cue1.touch()
        _wait_until(lambda: (out / "a_seg.tif").exists() and len(recorded_planes(staging_path(out / "b_seg.tif")))
                    >= 1, procs[0])
        cue2.touch()
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code in (0, 2), (code, err)
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("vitseg: error: "), err
            # a refusal because the other run holds a file, not a crash turned into a line
            assert "Another run is writing" in lines[0] and "unexpected" not in lines[0], err
        else:
            assert err.strip() == "", err
    for name in os.listdir(out):
        if not name.startswith("."):
            assert (out / name).read_bytes() == expected[name], name
    assert main(["apply", str(model), str(inputs), "-o", str(out), "--quiet"]) == 0
    assert _listing(out) == sorted(expected)
    for name, data in expected.items():
        assert (out / name).read_bytes() == data, name
