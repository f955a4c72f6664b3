"""Benchmark: the cost of each opt-in classical family against the default families.

Run ``python benchmarks/bench_families.py [--size 1024] [--repeats 5] [--workers 1 2]``.

Input: the real 3-phase SEM slice (``shared/data/sem_phases/3_phase.tif``, 751 x 751 uint8),
mirror-extended to ``--size`` squared. For every feature set (the default six families, the
default plus ``variance``, ``membrane``, ``context``, ``bilateral`` or all four, and each new
family alone with the intensity) it times ``classical_features(image, families=..., backend='cpu',
workers=W, out=<reused>)``: one warm-up, then the median of ``--repeats`` calls.

Columns: wall time and Mpx/s; CPU time (user + sys of all threads, ``resource.getrusage``),
which on a shared machine measures the work far better than wall time; and the ratio of CPU
time to the default families' CPU time measured in the same run (> 1: more work). The last
line is the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_vitseg.features.classical import classical_feature_names, classical_features  # noqa: E402
from napari_vitseg.features.config import CLASSICAL_FAMILIES as C  # noqa: E402

SEM = REPO.parent / "shared" / "data" / "sem_phases" / "3_phase.tif"
SETS = {
    "default": C,
    "+variance": C + ("variance",),
    "+membrane": C + ("membrane",),
    "+context": C + ("context",),
    "+bilateral": C + ("bilateral",),
    "+all four": C + ("variance", "membrane", "context", "bilateral"),
    "variance alone": ("variance",),
    "membrane alone": ("membrane",),
    "context alone": ("context",),
    "bilateral alone": ("bilateral",),
}


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    img = tifffile.imread(SEM)
    n = args.size
    img = np.pad(img, ((0, max(0, n - img.shape[0])), (0, max(0, n - img.shape[1]))), mode="reflect")[:n, :n]
    mpx = img.size / 1e6
    print(f"image {img.shape} from {SEM.name}; median of {args.repeats} calls")
    print(f"{'families':16s} {'ch':>3s} {'workers':>7s} {'wall ms':>8s} {'Mpx/s':>6s} {'CPU ms':>7s} {'CPU / default':>13s}")
    for workers in args.workers:
        cv2.setNumThreads(workers)
        base = None
        for name, fams in SETS.items():
            k = len(classical_feature_names((1, 2, 4, 8, 16), fams, True))
            out = np.empty(img.shape + (k,), np.float32)
            classical_features(img, families=fams, workers=workers, out=out)  # warm-up
            walls, cpus = [], []
            for _ in range(args.repeats):
                c0, t0 = _cpu_seconds(), time.perf_counter()
                classical_features(img, families=fams, workers=workers, out=out)
                walls.append(time.perf_counter() - t0)
                cpus.append(_cpu_seconds() - c0)
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            base = base if base is not None else cpu
            print(f"{name:16s} {k:3d} {workers:7d} {wall * 1e3:8.0f} {mpx / wall:6.2f} {cpu * 1e3:7.0f} {cpu / base:13.2f}",
                  flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
