"""Live-mode latency of the segmentation widget: brush stroke -> updated overlay.

Runs the real dock widget in a napari viewer (headless: under ``xvfb-run -a``, or a virtual
display started with pyvirtualdisplay when there is no ``$DISPLAY``) on a 1024 x 1024 plane of
real data (``sem_phases/3_phase.tif``, 751 x 751 X-ray CT slice, reflect-padded), with
scribbles of 3 intensity classes. The features of the plane are computed once (warm-up);
then N strokes are painted with ``Labels.paint`` (one undo item, one ``paint`` event each, as
a mouse release) and the time from the ``paint`` event to the segmentation layer being
updated is recorded -- including the 300 ms debounce and excluding it, to the first overlay
(a stride-2 preview on planes this large) and to the full-resolution one.

Baseline in the same run: the full-quality path (*Train*: 100 full-depth trees, all
labelled pixels, full-resolution prediction) after a stroke, from the click to the updated
overlay. Also a breakdown of the live path into fit / coarse / full predictions measured on
the library directly, and the peak resident memory (``ru_maxrss``).

Usage::

    xvfb-run -a python benchmarks/bench_live.py            # 20 strokes, 3 baseline runs
    xvfb-run -a python benchmarks/bench_live.py --volume   # a 16-plane FIB-SEM volume (3D filters)
    python benchmarks/bench_live.py --strokes 5 --baseline 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _widget_driver import paint_stroke, stroke_points, wait

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("VITSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def make_plane(size: int, rgb: bool = False) -> np.ndarray:
    """A ``(size, size)`` grey plane (``sem_phases/3_phase.tif``) or a ``(size, size, 3)`` RGB one
    (``cast_iron_optical/image.tif``, 422 x 800 optical micrograph), reflect-padded."""
    import tifffile

    name = ("cast_iron_optical", "image.tif") if rgb else ("sem_phases", "3_phase.tif")
    im = tifffile.imread(DATA.joinpath(*name))
    while im.shape[0] < size or im.shape[1] < size:  # reflect-pad (np.pad needs pad < size per step)
        py, px = min(im.shape[0] - 1, size - im.shape[0]), min(im.shape[1] - 1, size - im.shape[1])
        pad = ((0, max(py, 0)), (0, max(px, 0))) + ((0, 0),) * (im.ndim - 2)
        im = np.pad(im, pad, mode="reflect")
    return np.ascontiguousarray(im[:size, :size])


def make_volume(size: int) -> np.ndarray:
    """The (16, size, size) FIB-SEM volume ``flyem_medulla_fibsem`` (isotropic 10 nm voxels),
    each plane reflect-padded to ``size`` x ``size``."""
    import tifffile

    vol = tifffile.imread(DATA / "flyem_medulla_fibsem" / "image.tif")
    while vol.shape[1] < size or vol.shape[2] < size:
        py, px = min(vol.shape[1] - 1, size - vol.shape[1]), min(vol.shape[2] - 1, size - vol.shape[2])
        vol = np.pad(vol, ((0, 0), (0, max(py, 0)), (0, max(px, 0))), mode="reflect")
    return np.ascontiguousarray(vol[:, :size, :size])


def class_masks(im: np.ndarray, smooth: float = 3.0, erode: int = 6) -> list[np.ndarray]:
    """Three intensity classes of the image smoothed by ``smooth`` px, eroded by ``erode`` px so
    strokes stay inside them (the FIB-SEM plane: 6 and 2, else no class holds a 60 px stroke)."""
    from scipy import ndimage as ndi

    grey = im.astype(np.float32).mean(axis=-1) if im.ndim == 3 else np.asarray(im, np.float32)
    sm = ndi.gaussian_filter(grey, smooth)
    q1, q2 = np.quantile(sm, [0.3, 0.7])
    masks = [sm < q1, (sm > q1 + 3) & (sm < q2 - 3), sm > q2]
    return [ndi.binary_erosion(m, iterations=erode) for m in masks]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rgb", action="store_true", help="RGB plane (cast_iron_optical) instead of the grey one")
    ap.add_argument("--volume", action="store_true",
                    help="a 16-plane FIB-SEM volume (flyem_medulla_fibsem, each plane reflect-padded to --size) instead "
                         "of one plane: strokes on its middle plane; the default spatial='auto' trains 3D filters")
    ap.add_argument("--strokes", type=int, default=20)
    ap.add_argument("--baseline", type=int, default=3, help="full-quality Train runs")
    ap.add_argument("--json", type=Path, default=None,
                    help="where the results go (default benchmarks/results/bench_live_<time>.json)")
    args = ap.parse_args(argv)

    disp = None
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        disp = Display(visible=False, size=(1400, 900))
        disp.start()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_vitseg._widgets._segmentation import LIVE_DEBOUNCE_MS, SegmentationWidget
    from napari_vitseg.pipeline.segmenter import plane_of

    rng = np.random.default_rng(0)
    if args.volume:
        vol = make_volume(args.size)
        z = len(vol) // 2
        im = plane_of(vol, 3, z)  # the plane the strokes go on (a StackPlane: 3D filters read its stack)
        name = f"flyem_volume_{len(vol)}x{args.size}"
    else:
        vol, z = None, None
        im = make_plane(args.size, rgb=args.rgb)
        name = f"{'cast_iron_rgb' if args.rgb else '3_phase'}_{args.size}"
    masks = class_masks(im, 6.0, 2) if args.volume else class_masks(im)
    viewer = napari.Viewer(show=False)
    viewer.add_image(vol if args.volume else im, name=name, rgb=args.rgb)
    if args.volume:
        viewer.dims.set_current_step(0, z)
    widget = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    app = QApplication.instance()
    layer = widget.new_scribbles_layer()
    widget.add_class()
    layer.brush_size = 5
    for c, m in enumerate(masks, start=1):
        for _ in range(4):
            paint_stroke(layer, stroke_points(m, rng, 60), c, z=z)
    n_init = int((layer.data > 0).sum())

    # warm-up: Live on computes (and caches) the plane's features, trains and predicts once
    t0 = time.perf_counter()
    widget.live_check.setChecked(True)
    wait(app, lambda: not widget.busy and widget.controller.model is not None)
    t_warm = time.perf_counter() - t0
    cache = widget.controller.cache
    misses0 = cache.misses

    # N live strokes
    widget.latencies.clear()
    for i in range(args.strokes):
        c = i % 3 + 1
        n = len(widget.latencies)
        paint_stroke(layer, stroke_points(masks[c - 1], rng), c, z=z)
        wait(app, lambda n=n: len(widget.latencies) > n and not widget.busy)
    lat = widget.latencies[-args.strokes:]
    assert cache.misses == misses0, "features were recomputed during the strokes"

    def ms(vals):
        return statistics.median(vals) * 1e3, max(vals) * 1e3

    first = [r["t_first"] - r["t_paint"] for r in lat]
    final = [r["t_final"] - r["t_paint"] for r in lat]
    first_x = [r["t_first"] - r["t_start"] for r in lat]
    final_x = [r["t_final"] - r["t_start"] for r in lat]

    # breakdown of the live path on the library (same cached features)
    c = widget.controller
    scr = np.array(layer.data)
    if args.volume:
        from napari_vitseg._widgets._controller import JobInputs

        seg = c.new_segmenter(live=True, inputs=JobInputs(image=vol, scribbles=c.scribbles_snapshot()))
    else:
        seg = c.new_segmenter(live=True)
    feats = seg.plane_features(im)
    tf, tc, tp = [], [], []
    for _ in range(5):
        t = time.perf_counter()
        seg.fit(vol if args.volume else im, scr, channel_axis=-1 if args.rgb else None)
        tf.append(time.perf_counter() - t)
        t = time.perf_counter()
        seg.classifier_.predict_proba(feats[::2, ::2].reshape(-1, feats.shape[-1]))
        tc.append(time.perf_counter() - t)
        t = time.perf_counter()
        seg.predict_plane(im)
        tp.append(time.perf_counter() - t)
    t_fit, t_coarse, t_pred = (statistics.median(v) for v in (tf, tc, tp))

    # baseline: full-quality Train (100 full-depth trees, all labelled pixels) after a stroke
    widget.live_check.setChecked(False)
    wait(app, lambda: not widget.busy)
    base = []
    for i in range(args.baseline):
        paint_stroke(layer, stroke_points(masks[i % 3], rng), i % 3 + 1, z=z)
        t = time.perf_counter()
        widget.train()
        wait(app, lambda: not widget.busy)
        base.append(time.perf_counter() - t)
    assert not widget.controller.model.live

    # Cancel during training: press Train, Cancel 0.5 s later (the full model is then growing its
    # trees), time until the widget is idle again
    cancel_s = []
    for _ in range(3):
        paint_stroke(layer, stroke_points(masks[0], rng), 1, z=z)
        widget.train()
        t = time.perf_counter()
        while time.perf_counter() - t < 0.5:
            app.processEvents()
        phase = widget.status.text()
        t = time.perf_counter()
        widget.cancel()
        wait(app, lambda: not widget.busy)
        cancel_s.append((time.perf_counter() - t, phase))
    full_params = dict(widget.controller.classifier_params)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    med_final = statistics.median(final)
    med_base = statistics.median(base)
    lp = c.live_params()
    rows = [
        ("plane", f"{args.size} x {args.size}"
                  + (f" plane {z} of a {len(vol)}-plane volume (flyem_medulla_fibsem, reflect-padded; "
                     f"{c.model.segmenter.feature_config.spatial} filters, z step {c.model.segmenter.feature_config.z_anisotropy:g}), "
                     if args.volume else
                     " x 3 RGB (cast_iron_optical, reflect-padded), " if args.rgb else " (3_phase.tif, reflect-padded), ")
                  + f"{feats.shape[-1]} classical features, 3 classes"),
        ("labelled pixels", f"{n_init} at start, {int((layer.data > 0).sum())} at the end"),
        ("warm-up (features + first live model)", f"{t_warm:.2f} s"),
        ("live model", f"RF {lp['n_estimators']} trees, depth <= {lp['max_depth']}, <= {lp['max_samples_per_class']} px/class"),
        (f"stroke -> first overlay (stride-2 preview), incl. {LIVE_DEBOUNCE_MS} ms debounce",
         "median {:.0f} ms, max {:.0f} ms".format(*ms(first))),
        ("stroke -> full-resolution overlay, incl. debounce", "median {:.0f} ms, max {:.0f} ms".format(*ms(final))),
        ("stroke -> first overlay, excl. debounce", "median {:.0f} ms, max {:.0f} ms".format(*ms(first_x))),
        ("stroke -> full-resolution overlay, excl. debounce", "median {:.0f} ms, max {:.0f} ms".format(*ms(final_x))),
        ("live path breakdown (library, median of 5)", f"fit {t_fit * 1e3:.0f} ms, stride-2 predict {t_coarse * 1e3:.0f} ms, "
                                          f"full predict {t_pred * 1e3:.0f} ms"),
        (f"baseline: Train, full model ({full_params}), click -> overlay",
         f"median {med_base:.2f} s over {len(base)} (min {min(base):.2f}, max {max(base):.2f})"),
        ("ratio live full-res overlay (incl. debounce) / baseline", f"{med_final / med_base:.3f} ({med_base / med_final:.1f}x faster)"),
        ("Cancel pressed 0.5 s into Train -> idle", ", ".join(f"{t * 1e3:.0f} ms" for t, _ in cancel_s)
         + f" (status when pressed: {cancel_s[-1][1]!r})"),
        ("feature cache during strokes", f"{cache.misses - misses0} misses"),
        ("peak RSS (ru_maxrss)", f"{peak_mib:.0f} MiB"),
        ("strokes", f"{len(lat)}; CPU cores visible: {os.cpu_count()}; load avg {os.getloadavg()[0]:.1f}"),
    ]
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    out = args.json or Path(__file__).resolve().parent / "results" / f"bench_live_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "size": args.size, "rgb": args.rgb, "volume": args.volume, "debounce_ms": LIVE_DEBOUNCE_MS, "first_ms": [x * 1e3 for x in first], "final_ms": [x * 1e3 for x in final],
        "first_excl_debounce_ms": [x * 1e3 for x in first_x], "final_excl_debounce_ms": [x * 1e3 for x in final_x],
        "baseline_s": base, "fit_ms": t_fit * 1e3, "coarse_ms": t_coarse * 1e3, "predict_ms": t_pred * 1e3,
        "cancel_ms": [t * 1e3 for t, _ in cancel_s], "warmup_s": t_warm, "peak_rss_mib": peak_mib,
    }, indent=2))
    print(f"wrote {out}")
    viewer.close()
    if disp is not None:
        disp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
