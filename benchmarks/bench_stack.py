"""Multi-GB stacks end to end: ``vitseg apply`` on a >= 4 GB uint16 BigTIFF, 1 process vs workers.

Data: a stack made on disk from real TEM texture, ``../shared/data/tem_cells_stack/image.tif``
(6 planes of 518 x 518 uint8, TEM of cells; HR-Dv2, MIT): plane ``z`` is source plane ``z % 6``
scaled to uint16 (x 257), mirrored 2 x 2 and rolled by a plane-dependent offset, cropped to
``--size`` (default 1024 x 1024). ``--stack-planes`` (default 2000) of them make 4.2 GB, written
plane by plane as one uncompressed BigTIFF series (never all in memory) in a temporary folder
that is deleted at the end unless ``--keep``. The classifier: the default classical features
(``FeatureConfig()``) + the default random forest (100 trees), trained on the real scribbles of
planes 0-1 of the same source (3 classes).

Measured, all in the same run:

- **in-memory baseline**: ``Segmenter.predict_plane`` (+ ``labels_from_proba``) on planes held
  in memory, in a fresh process (median of ``--baseline-planes`` after one warm-up plane), once
  before and once after the CLI runs (ratios use their mean; the 1-minute load average during
  every run is recorded, since a shared machine drifts);
- **CLI**: ``vitseg apply model stack.tif -o out.tif --planes 0:N`` as a subprocess (the real
  command), 1 process and ``--workers W`` for each W of ``--workers`` (a LocalCluster started
  and closed by the command). The command applies to the first ``--planes`` planes only
  (``--planes 0:N``; the whole stack takes about an hour per run on 2 cores). Progress lines
  (``VITSEG_PROGRESS_INTERVAL=0``: one per plane) are time-stamped as they arrive: *steady*
  throughput is planes 2..N (excluding start-up, worker imports and the first plane),
  *end-to-end* is N planes over the command's wall time (start-up, cluster, final TIFF
  assembly included). Peak RSS is polled with psutil every 0.05 s: the command's process, and
  the sum over it and its children (the workers); CPU seconds of the whole command (workers
  included) from ``getrusage(RUSAGE_CHILDREN)``;
- **pieces of the model** in docs/cluster.md: the client's cost per plane (staging write +
  planes log, final TIFF assembly) on the real output labels and on real float16 probabilities
  (3 classes), transfer sizes (input plane, pickled results, classifier file), and the
  distributed overhead per plane at almost no compute (tiny planes through a 2-worker
  LocalCluster), unless ``--no-overhead``.

Prints a markdown table with ratios against the in-memory plane and writes JSON to
``benchmarks/results/bench_stack_<time>.json``. Goals (issue 9): peak RSS <= 1.5 GB, throughput
within 20 % of one in-memory plane.

Run: ``python benchmarks/bench_stack.py [--planes 20] [--workers 2] [--keep] [--tmp DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO.parent / "shared" / "data" / "tem_cells_stack"
RESULTS = Path(__file__).resolve().parent / "results"
VITSEG = [sys.executable, "-c", "import sys; from napari_vitseg.cli import main; sys.exit(main(sys.argv[1:]))"]


# -- the stack -------------------------------------------------------------------------------------
def source_planes() -> np.ndarray:
    return tifffile.imread(SOURCE / "image.tif").astype(np.uint16) * 257


def make_plane(src: np.ndarray, z: int, size: int) -> np.ndarray:
    a = src[z % len(src)]
    reps = -(-size // a.shape[0]) + 1
    row = np.concatenate([a if i % 2 == 0 else a[:, ::-1] for i in range(reps)], axis=1)
    big = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(reps)], axis=0)
    dy, dx = (z * 37) % a.shape[0], (z * 91) % a.shape[1]
    return np.ascontiguousarray(big[dy:dy + size, dx:dx + size])


def make_stack(path: Path, n: int, size: int) -> float:
    src = source_planes()
    t = time.perf_counter()
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write((make_plane(src, z, size) for z in range(n)), shape=(n, size, size), dtype=np.uint16,
                 photometric="minisblack", metadata={"axes": "ZYX"})
    return time.perf_counter() - t


def train(model: Path) -> float:
    from napari_vitseg.features import FeatureConfig
    from napari_vitseg.pipeline import Segmenter

    src = source_planes()
    scribbles = tifffile.imread(SOURCE / "scribbles.tif")
    t = time.perf_counter()
    Segmenter(FeatureConfig()).fit(src[:2], scribbles[:2]).save(model)
    return time.perf_counter() - t


# -- measuring a subprocess -------------------------------------------------------------------------
class Watch:
    """Run a command; time-stamp its stderr lines; poll its peak RSS (process, and with children)."""

    def __init__(self, cmd: list[str], env: dict):
        self.lines: list[tuple[float, str]] = []
        self.peak_main = self.peak_tree = 0
        self._cpu0 = self._children_cpu()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @staticmethod
    def _children_cpu() -> float:
        """User + system CPU seconds of finished, waited-for descendants (workers included: the
        command waits for them)."""
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.perf_counter() - self.t0, line.rstrip("\n")))

    def wait(self) -> float:
        ps = psutil.Process(self.proc.pid)
        loads = []
        while self.proc.poll() is None:
            loads.append(os.getloadavg()[0])
            try:
                main = ps.memory_info().rss
                tree = main + sum(c.memory_info().rss for c in ps.children(recursive=True))
            except psutil.Error:
                main = tree = 0
            self.peak_main, self.peak_tree = max(self.peak_main, main), max(self.peak_tree, tree)
            time.sleep(0.05)
        wall = time.perf_counter() - self.t0
        self.cpu_s = self._children_cpu() - self._cpu0
        self.load = statistics.mean(loads) if loads else os.getloadavg()[0]
        self._reader.join(timeout=10)
        self.stdout = self.proc.stdout.read()
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.proc.args} failed ({self.proc.returncode}):\n" +
                               "\n".join(s for _, s in self.lines[-20:]))
        return wall

    def done_times(self) -> dict[int, float]:
        """First time each 'apply: k/N planes' line arrived."""
        out: dict[int, float] = {}
        for t, line in self.lines:
            m = re.match(r"apply: (\d+)/(\d+) planes", line)
            if m:
                out.setdefault(int(m.group(1)), t)
        return out


BASELINE = """
import json, resource, sys, time
import numpy as np, tifffile
from napari_vitseg.pipeline import Segmenter
model, stack, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
seg = Segmenter.load(model)
with tifffile.TiffFile(stack) as tf:
    planes = [tf.pages[i].asarray() for i in range(k + 1)]
times, cpu = [], []
for p in planes:
    t, c = time.perf_counter(), time.process_time()
    seg.labels_from_proba(seg.predict_plane(p, use_cache=False))
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
print(json.dumps({"warmup_s": times[0], "times_s": times[1:], "cpu_s": cpu[1:],
                  "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def baseline(model: Path, stack: Path, k: int, env: dict) -> dict:
    w = Watch([sys.executable, "-c", BASELINE, str(model), str(stack), str(k)], env)
    wall = w.wait()
    r = json.loads(w.stdout)
    return {"name": "in-memory Segmenter.predict_plane", "planes": k, "wall_s": wall,
            "s_per_plane": statistics.median(r["times_s"]), "times_s": r["times_s"], "warmup_s": r["warmup_s"],
            "cpu_s_per_plane": statistics.median(r["cpu_s"]), "cpu_s": w.cpu_s,
            "peak_rss_main": w.peak_main, "peak_rss_tree": w.peak_tree, "load": w.load}


def cli(model: Path, stack: Path, out: Path, n: int, workers: int | None, env: dict) -> dict:
    cmd = [*VITSEG, "apply", str(model), str(stack), "-o", str(out), "--planes", f"0:{n}"]
    if workers:
        cmd += ["--workers", str(workers)]
    w = Watch(cmd, env)
    wall = w.wait()
    done = w.done_times()
    first = 2 if n > 3 else 1
    steady = (done[n] - done[first]) / (n - first) if n in done and first in done else float("nan")
    return {"name": f"vitseg apply --workers {workers}" if workers else "vitseg apply (1 process)",
            "planes": n, "workers": workers or 0, "wall_s": wall, "s_per_plane": steady,
            "first_plane_done_s": done.get(1), "all_planes_done_s": done.get(n),
            "assemble_and_exit_s": wall - done.get(n, wall), "output_bytes": out.stat().st_size,
            "cpu_s": w.cpu_s, "peak_rss_main": w.peak_main, "peak_rss_tree": w.peak_tree, "load": w.load,
            "command": " ".join(cmd[3:])}


# -- pieces of the scaling model --------------------------------------------------------------------
def _write_costs(planes: np.ndarray, role: str, path: Path) -> dict:
    """Staging write (chunk + planes log) and final TIFF assembly of ``planes``, per plane."""
    from napari_vitseg.io._writers import OutputSpec, StagedOutput

    n = len(planes)
    st = StagedOutput(OutputSpec(path, role, n, planes.shape[1:], str(planes.dtype)), {"bench": 1})
    st.open()
    t = time.perf_counter()
    for j in range(n):
        st.write_plane(j, planes[j])
    write = (time.perf_counter() - t) / n
    staged = sum(p.stat().st_size for p in (st.staging / "0").rglob("*") if p.is_file()) / n
    t = time.perf_counter()
    st.prepare()
    assemble = (time.perf_counter() - t) / n
    st.commit()
    st.cleanup()
    return {"staging_write_s": write, "tiff_assemble_s": assemble, "staged_bytes": staged,
            "tiff_bytes": path.stat().st_size / n, "raw_bytes": planes[0].nbytes,
            "pickled_bytes": len(pickle.dumps(planes[0], protocol=5))}


def client_costs(labels_tif: Path, model: Path, stack: Path, tmp: Path) -> dict:
    """Client-side cost per plane (real labels of the CLI run; real float16 probabilities of two
    planes, repeated) and the bytes that move."""
    from napari_vitseg.pipeline import Segmenter

    labels = tifffile.imread(labels_tif)
    seg = Segmenter.load(model)
    with tifffile.TiffFile(stack) as tf:
        probs = [seg.predict_plane(tf.pages[i].asarray(), use_cache=False).astype(np.float16) for i in range(2)]
    probs = np.stack([probs[j % 2] for j in range(len(labels))])
    return {"labels": _write_costs(labels, "labels", tmp / "cost_labels.tif"),
            "probabilities": _write_costs(probs, "probabilities", tmp / "cost_probs.tif")}


def overhead(tmp: Path, n: int = 120, size: int = 64) -> dict:
    """Per-plane cost of the distributed path at almost no compute: tiny planes, a 1-tree model."""
    from distributed import Client, LocalCluster

    from napari_vitseg._progress import run
    from napari_vitseg.features import FeatureConfig
    from napari_vitseg.pipeline import Segmenter, iter_apply_file

    src = source_planes()
    scribbles = tifffile.imread(SOURCE / "scribbles.tif")
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 1}).fit(src[:2], scribbles[:2])
    stack = np.stack([make_plane(src, z, size) for z in range(n)])
    tifffile.imwrite(tmp / "tiny.tif", stack)
    t = time.perf_counter()
    run(iter_apply_file(seg, tmp / "tiny.tif", tmp / "tiny_one.tif"))
    one = (time.perf_counter() - t) / n
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        run(iter_apply_file(seg, tmp / "tiny.tif", tmp / "warm.tif", planes=slice(0, 4), client=client))
        t = time.perf_counter()
        run(iter_apply_file(seg, tmp / "tiny.tif", tmp / "tiny_two.tif", client=client))
        two = (time.perf_counter() - t) / n
        client.gather([client.submit(int, i, pure=False) for i in range(50)])  # warm-up
        t = time.perf_counter()
        client.gather([client.submit(int, i, pure=False) for i in range(500)])
        noop = (time.perf_counter() - t) / 500
    return {"tiny_plane_px": size * size, "tiny_planes": n, "s_per_plane_1_process": one,
            "s_per_plane_2_workers": two, "noop_task_s": noop}


# -- main ----------------------------------------------------------------------------------------
def mb(n: float) -> str:
    return f"{n / 2**20:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--planes", type=int, default=20, help="planes applied per CLI run (default 20)")
    ap.add_argument("--stack-planes", type=int, default=2000, help="planes of the stack on disk (default 2000)")
    ap.add_argument("--size", type=int, default=1024, help="plane edge in px (default 1024)")
    ap.add_argument("--workers", default="2", help="comma-separated worker counts for --workers runs (default 2)")
    ap.add_argument("--baseline-planes", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="folder for the stack (default: the system's temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the stack and outputs")
    ap.add_argument("--no-overhead", action="store_true", help="skip the distributed-overhead measurement")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="vitseg-bench-stack-", dir=args.tmp))
    env = {**os.environ, "VITSEG_PROGRESS_INTERVAL": "0"}
    try:
        stack, model = tmp / "stack.tif", tmp / "model.vitseg"
        t_stack = make_stack(stack, args.stack_planes, args.size)
        print(f"stack: {stack} {stack.stat().st_size / 1e9:.2f} GB ({args.stack_planes} x {args.size}^2 uint16) "
              f"written in {t_stack:.0f} s", flush=True)
        t_train = train(model)
        print(f"classifier: {model.stat().st_size / 1e6:.1f} MB, trained in {t_train:.0f} s", flush=True)
        rows = [baseline(model, stack, args.baseline_planes, env)]
        print(f"baseline: {rows[0]['s_per_plane']:.2f} s/plane", flush=True)
        for w in [None, *workers]:
            rows.append(cli(model, stack, tmp / f"out_{w or 0}.tif", args.planes, w, env))
            print(f"{rows[-1]['name']}: {rows[-1]['s_per_plane']:.2f} s/plane steady, {rows[-1]['wall_s']:.0f} s wall",
                  flush=True)
        # the in-memory plane again, after the CLI runs: drift of a shared machine shows as a difference
        rows.append(baseline(model, stack, args.baseline_planes, env))
        rows[-1]["name"] += " (again, after the CLI runs)"
        print(f"baseline again: {rows[-1]['s_per_plane']:.2f} s/plane", flush=True)
        outs = [tmp / f"out_{w or 0}.tif" for w in [None, *workers]]
        identical = all(o.read_bytes() == outs[0].read_bytes() for o in outs[1:])
        costs = client_costs(outs[0], model, stack, tmp)
        costs["input_plane_bytes"] = args.size * args.size * 2
        costs["classifier_file_bytes"] = model.stat().st_size
        over = None if args.no_overhead else overhead(tmp)

        mpx = args.size * args.size / 1e6
        base = statistics.mean([rows[0]["s_per_plane"], rows[-1]["s_per_plane"]])  # before and after
        print()
        print(f"stack {stack.stat().st_size / 1e9:.2f} GB ({args.stack_planes} x {args.size}^2 uint16, "
              f"tem_cells_stack texture); {args.planes} planes per CLI run; {os.cpu_count()} CPU cores; ratios "
              "against the mean of the two in-memory runs; load average (1 min) during each run in brackets")
        print()
        print("| run | s/plane (steady) | Mpx/s steady | ratio vs in-memory | Mpx/s end-to-end | wall s | CPU s | "
              "peak RSS process MB | peak RSS with workers MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            e2e = r["planes"] * mpx / r["wall_s"] if r["name"].startswith("vitseg") else float("nan")
            print(f"| {r['name']} [{r['load']:.1f}] | {r['s_per_plane']:.2f} | {mpx / r['s_per_plane']:.3f} | "
                  f"{base / r['s_per_plane']:.2f} | {e2e:.3f} | {r['wall_s']:.1f} | {r['cpu_s']:.0f} | "
                  f"{mb(r['peak_rss_main'])} | "
                  f"{mb(r['peak_rss_tree'])} |")
        print()
        print("in-memory CPU seconds per plane (process time, all threads): "
              f"{rows[0]['cpu_s_per_plane']:.2f} / {rows[-1]['cpu_s_per_plane']:.2f}")
        print(f"outputs of all CLI runs identical: {identical}")
        print(f"input plane {costs['input_plane_bytes']} bytes; classifier file {costs['classifier_file_bytes']} bytes")
        print("| client, per plane | staging write s | TIFF assembly s | raw bytes | pickled bytes | staged bytes | "
              "TIFF bytes |")
        print("|---|---|---|---|---|---|---|")
        for role in ("labels", "probabilities"):
            c = costs[role]
            print(f"| {role} | {c['staging_write_s']:.4f} | {c['tiff_assemble_s']:.4f} | {c['raw_bytes']} | "
                  f"{c['pickled_bytes']} | {c['staged_bytes']:.0f} | {c['tiff_bytes']:.0f} |")
        if over:
            print("overhead at ~0 compute ({tiny_planes} planes of {tiny_plane_px} px): 1 process "
                  "{s_per_plane_1_process:.4f} s/plane, 2 workers {s_per_plane_2_workers:.4f} s/plane; no-op task "
                  "{noop_task_s:.5f} s".format(**over))
        RESULTS.mkdir(exist_ok=True)
        result = {"stack": {"path_kind": "temporary BigTIFF", "bytes": stack.stat().st_size,
                            "planes": args.stack_planes, "size": args.size, "dtype": "uint16",
                            "source": "shared/data/tem_cells_stack/image.tif", "write_s": t_stack},
                  "classifier": {"features": "FeatureConfig() (classical)", "trees": 100, "train_s": t_train},
                  "cpu_count": os.cpu_count(), "planes_per_run": args.planes, "runs": rows,
                  "outputs_identical": identical, "client_costs": costs, "overhead": over}
        out = RESULTS / f"bench_stack_{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
