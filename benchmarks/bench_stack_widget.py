"""The segmentation widget on a multi-GB lazy stack: brush stroke -> overlay, and peak memory.

Issue 9: on a 4.2 GB stack every live retrain used to scan the whole scribbles array (45-47 s
per stroke, 17-21 GB peak RSS). This benchmark opens a >= 4 GB uint16 stack through the
plugin's npe2 reader (a dask array, one chunk per plane) in a real napari viewer with the real
dock widget (headless: under ``xvfb-run -a``, or a virtual display started with
pyvirtualdisplay when there is no ``$DISPLAY``), paints strokes in Live mode on two planes and
measures brush stroke -> first overlay (a stride-2 preview on 1024 x 1024 planes) and -> full
overlay, and the peak resident memory. The peer, measured in the same run with the same
strokes: the same widget on a single-plane image (the first painted plane of the stack, a
small TIFF read by the same reader). Each of the two runs is a fresh Python process, so that each peak RSS
(``ru_maxrss``) is its own. The goal (issue 9) is a ratio <= 2 and a peak RSS <= 1.5 GB.

The stack is made on disk plane by plane (BigTIFF, uint16, 1024 x 1024 planes) from the real
TEM texture of ``../shared/data/tem_cells_stack`` (6 planes of 518 x 518 TEM of cells,
tldr-group/HR-Dv2, MIT): each plane is one of the 6 TEM planes, reflect-padded to 1024 x 1024,
flipped and rolled by a plane-dependent offset, scaled to uint16 (x 256) plus a small
plane-dependent offset. It is deleted at the end unless ``--keep``; ``--stack PATH`` reuses
an existing stack (not deleted).

Usage::

    xvfb-run -a python benchmarks/bench_stack_widget.py                 # 2000 planes (4.2 GB), 10 strokes
    xvfb-run -a python benchmarks/bench_stack_widget.py --stack big.tif --strokes 6
    xvfb-run -a python benchmarks/bench_stack_widget.py --arena-max 2   # glibc keeps less per thread

Peak RSS depends on glibc's allocator: left to itself, the threads of a live job (the worker,
scikit-learn's, OpenCV's, dask's) keep big freed temporaries in their own arenas and a session
on a lazy stack grew by ~20 MiB per stroke (to 1.7-1.8 GB here). The widget fixes glibc's mmap
threshold (``napari_vitseg._widgets._compat.return_large_frees``) unless ``MALLOC_*`` variables
are set; ``--arena-max N`` runs both scenarios with ``MALLOC_ARENA_MAX=N`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _widget_driver import paint_stroke, stroke_points, wait

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("VITSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCE = DATA / "tem_cells_stack" / "image.tif"
RESULTS = REPO / "benchmarks" / "results"


# -- the stack ------------------------------------------------------------------------------------
def texture_planes(n: int, size: int):
    """``n`` uint16 planes of ``size`` x ``size`` made from the real TEM texture (see the docstring)."""
    import tifffile

    src = tifffile.imread(SOURCE)
    for z in range(n):
        p = src[z % len(src)]
        p = np.pad(p, ((0, max(0, size - p.shape[0])), (0, max(0, size - p.shape[1]))), mode="reflect")
        p = p[:size, :size]
        if (z // len(src)) % 2:
            p = p[::-1]
        if (z // (2 * len(src))) % 2:
            p = p[:, ::-1]
        p = np.roll(p, ((z * 37) % size, (z * 53) % size), axis=(0, 1))
        yield p.astype(np.uint16) * 256 + np.uint16(z % 97)


def make_stack(path: Path, n: int, size: int) -> float:
    """Write the stack plane by plane as a BigTIFF; returns the seconds it took."""
    import tifffile

    t = time.perf_counter()
    tifffile.imwrite(path, texture_planes(n, size), shape=(n, size, size), dtype=np.uint16, bigtiff=True,
                     photometric="minisblack", metadata={"axes": "ZYX"})
    return time.perf_counter() - t


# -- one scenario, in its own process ---------------------------------------------------------------
def class_masks(im: np.ndarray) -> list[np.ndarray]:
    """Two intensity classes of the smoothed plane, eroded so that strokes stay inside them."""
    from scipy import ndimage as ndi

    sm = ndi.gaussian_filter(im.astype(np.float32), 3)
    q1, q2 = np.quantile(sm, [0.35, 0.65])
    return [ndi.binary_erosion(m, iterations=6) for m in (sm < q1, sm > q2)]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_scenario(kind: str, path: Path, n_strokes: int, planes: tuple[int, int]) -> dict:
    """Live strokes on ``path`` (``kind='stack'``) or on its plane ``planes[0]`` as a small TIFF (``'plane'``)."""
    disp = None
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        disp = Display(visible=False, size=(1400, 900))
        disp.start()
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    from napari_vitseg._reader import read_tiff
    from napari_vitseg._widgets._segmentation import SegmentationWidget

    rng = np.random.default_rng(0)
    tmp = None
    if kind == "plane":
        with tifffile.TiffFile(path) as tf:
            plane = tf.pages[planes[0]].asarray()
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "plane.tif"
        tifffile.imwrite(path, plane)
    viewer = napari.Viewer(show=True)
    t = time.perf_counter()
    # our reader's lazy (dask) path; plain `*.tif` names go to napari's builtin reader by default
    for data, kwargs, _ in read_tiff(path):
        viewer.add_image(data, **kwargs)
    t_open = time.perf_counter() - t
    image = viewer.layers[0]
    widget = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    app = QApplication.instance()
    stack = image.data.ndim == 3
    zs = list(planes) if stack else [None, None]
    data = image.data
    masks = {z: class_masks(np.asarray(data[z]) if z is not None else np.asarray(data)) for z in set(zs)}
    t = time.perf_counter()
    layer = widget.new_scribbles_layer()
    t_new = time.perf_counter() - t
    layer.brush_size = 5
    if stack:
        viewer.dims.set_current_step(0, zs[0])
    for z in zs:  # a few strokes per class on each of the two planes (twice on the single plane)
        for c, m in enumerate(masks[z], start=1):
            for _ in range(2):
                paint_stroke(layer, stroke_points(m, rng, 60), c, z=z)
    app.processEvents()
    index = widget.controller.scribbles
    n_init = index.n_labelled

    t = time.perf_counter()
    widget.live_check.setChecked(True)
    wait(app, lambda: not widget.busy and widget.controller.model is not None)
    t_warm = time.perf_counter() - t
    if stack:  # show the second plane once (its features are computed and cached), come back
        viewer.dims.set_current_step(0, zs[1])
        wait(app, lambda: zs[1] in widget.outputs.predicted and not widget.busy)
        viewer.dims.set_current_step(0, zs[0])
        wait(app, lambda: zs[0] in widget.outputs.predicted and not widget.busy)
    cache = widget.controller.cache
    misses0 = cache.misses
    rss_before = rss_mib()

    widget.latencies.clear()
    half = (n_strokes + 1) // 2
    for i in range(n_strokes):
        z = zs[0] if i < half else zs[1]
        if stack and i == half:  # paint on the second plane where it is shown
            viewer.dims.set_current_step(0, z)
            wait(app, lambda z=z: z in widget.outputs.predicted and not widget.busy)
        c = i % 2 + 1
        n = len(widget.latencies)
        paint_stroke(layer, stroke_points(masks[z][c - 1], rng), c, z=z)
        wait(app, lambda n=n: len(widget.latencies) > n and not widget.busy)
    lat = widget.latencies[-n_strokes:]
    seg = viewer.layers["segmentation"]
    result = {
        "kind": kind,
        "image": f"{tuple(image.data.shape)} {image.data.dtype} {type(image.data).__module__}.{type(image.data).__name__}",
        "image_bytes": int(np.prod(image.data.shape)) * image.data.dtype.itemsize,
        "open_s": t_open,
        "new_scribbles_s": t_new,
        "warmup_s": t_warm,
        "labelled_start": n_init,
        "labelled_end": widget.controller.scribbles.n_labelled,
        "index_planes": widget.controller.scribbles.planes,
        "first_ms": [(r["t_first"] - r["t_paint"]) * 1e3 for r in lat],
        "final_ms": [(r["t_final"] - r["t_paint"]) * 1e3 for r in lat],
        "first_excl_debounce_ms": [(r["t_first"] - r["t_start"]) * 1e3 for r in lat],
        "final_excl_debounce_ms": [(r["t_final"] - r["t_start"]) * 1e3 for r in lat],
        "cache_misses_during_strokes": cache.misses - misses0,
        "cache_mib": cache.nbytes / 2**20,
        "output_layer": f"{type(seg.data).__module__}.{type(seg.data).__name__} {seg.data.dtype}",
        "uncertainty_dtype": str(viewer.layers["uncertainty"].data.dtype),
        "rss_before_strokes_mib": rss_before,
        "rss_end_mib": rss_mib(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_trainings": widget.controller.n_trainings,
    }
    widget.close()
    viewer.close()
    if tmp is not None:
        tmp.cleanup()
    if disp is not None:
        disp.stop()
    return result


# -- the run ----------------------------------------------------------------------------------------
def med_max(v):
    return f"median {statistics.median(v):.0f} ms, max {max(v):.0f} ms"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stack", type=Path, default=None, help="reuse this (Z, Y, X) TIFF stack")
    ap.add_argument("--planes", type=int, default=2000, help="planes of the stack to make (2000: 4.2 GB)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--strokes", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the stack that was made")
    ap.add_argument("--json", type=Path, default=RESULTS / "bench_stack_widget.json")
    ap.add_argument("--arena-max", type=int, default=None,
                    help="run both scenarios with MALLOC_ARENA_MAX set to this (glibc's per-thread arenas)")
    ap.add_argument("--scenario", choices=("plane", "stack"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    made = args.stack is None
    path = args.stack
    if args.scenario:  # a child process: one scenario, JSON on the last line of stdout
        import tifffile

        with tifffile.TiffFile(path) as tf:
            nz = len(tf.series[0].shape) == 3 and tf.series[0].shape[0]
        planes = (nz // 3, 2 * nz // 3)
        print(json.dumps(run_scenario(args.scenario, path, args.strokes, planes)))
        return 0

    t_make = None
    if made:
        folder = Path(tempfile.mkdtemp(prefix="vitseg-bench-"))
        path = folder / "tem_stack.tif"
        print(f"writing {args.planes} x {args.size}^2 uint16 planes to {path} ...", flush=True)
        t_make = make_stack(path, args.planes, args.size)
        print(f"  {path.stat().st_size / 1e9:.2f} GB in {t_make:.0f} s", flush=True)
    try:
        out = {}
        for kind in ("plane", "stack"):
            cmd = [sys.executable, __file__, "--scenario", kind, "--stack", str(path), "--strokes", str(args.strokes)]
            print(f"running the {kind} scenario ...", flush=True)
            env = dict(os.environ)
            if args.arena_max:
                env["MALLOC_ARENA_MAX"] = str(args.arena_max)
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                print(p.stdout[-3000:], p.stderr[-6000:], sep="\n")
                raise SystemExit(f"the {kind} scenario failed")
            out[kind] = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        if made and not args.keep:
            path.unlink(missing_ok=True)
            path.parent.rmdir()
    pl, st = out["plane"], out["stack"]

    def ratio(key):
        return statistics.median(st[key]) / statistics.median(pl[key])

    rows = [
        ("image", f"stack {st['image']} ({st['image_bytes'] / 1e9:.2f} GB, lazy) vs plane {pl['image']}"),
        ("open (npe2 reader)", f"stack {st['open_s']:.2f} s, plane {pl['open_s']:.2f} s"),
        ("New scribbles layer", f"stack {st['new_scribbles_s']:.2f} s, plane {pl['new_scribbles_s']:.2f} s"),
        ("labelled pixels (start -> end)", f"stack {st['labelled_start']} -> {st['labelled_end']} on planes "
                                           f"{st['index_planes']}; plane {pl['labelled_start']} -> {pl['labelled_end']}"),
        ("warm-up (features + first live model)", f"stack {st['warmup_s']:.2f} s, plane {pl['warmup_s']:.2f} s"),
        ("stroke -> first overlay, incl. 300 ms debounce",
         f"stack {med_max(st['first_ms'])}; plane {med_max(pl['first_ms'])}"),
        ("stroke -> full overlay, incl. debounce", f"stack {med_max(st['final_ms'])}; plane {med_max(pl['final_ms'])}"),
        ("stroke -> first overlay, excl. debounce",
         f"stack {med_max(st['first_excl_debounce_ms'])}; plane {med_max(pl['first_excl_debounce_ms'])}"),
        ("stroke -> full overlay, excl. debounce",
         f"stack {med_max(st['final_excl_debounce_ms'])}; plane {med_max(pl['final_excl_debounce_ms'])}"),
        ("ratio stack / plane (medians, incl. debounce)",
         f"first {ratio('first_ms'):.2f}, full {ratio('final_ms'):.2f} (goal <= 2)"),
        ("ratio stack / plane (medians, excl. debounce)",
         f"first {ratio('first_excl_debounce_ms'):.2f}, full {ratio('final_excl_debounce_ms'):.2f}"),
        ("feature cache misses during strokes", f"stack {st['cache_misses_during_strokes']}, "
                                                f"plane {pl['cache_misses_during_strokes']}"),
        ("output layers", f"stack {st['output_layer']}, uncertainty {st['uncertainty_dtype']}; "
                          f"plane {pl['output_layer']}, uncertainty {pl['uncertainty_dtype']}"),
        ("peak RSS (ru_maxrss)", f"stack {st['peak_rss_mib']:.0f} MiB, plane {pl['peak_rss_mib']:.0f} MiB "
                                 "(goal <= 1.5 GB)"),
        ("RSS before strokes -> end", f"stack {st['rss_before_strokes_mib']:.0f} -> {st['rss_end_mib']:.0f} MiB, "
                                      f"plane {pl['rss_before_strokes_mib']:.0f} -> {pl['rss_end_mib']:.0f} MiB"),
        ("strokes", f"{len(st['final_ms'])} per scenario; CPU cores visible: {os.cpu_count()}; "
                    f"load avg {os.getloadavg()[0]:.1f}; MALLOC_ARENA_MAX={args.arena_max or 'unset'}"),
    ]
    if t_make is not None:
        rows.insert(1, ("stack written (tifffile, BigTIFF, plane by plane)", f"{t_make:.0f} s"))
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"plane": pl, "stack": st, "make_stack_s": t_make,
                                     "malloc_arena_max": args.arena_max,
                                     "source": str(SOURCE.relative_to(DATA.parent)) if SOURCE.is_relative_to(DATA.parent)
                                     else str(SOURCE), "cpu_count": os.cpu_count(),
                                     "load_avg": os.getloadavg()[0]}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
