"""Screenshot of the segmentation widget with a live segmentation of a real sample.

Opens napari (a real window: run it under Xvfb when headless), loads the bundled
``tem_nanoparticles`` sample with its scribbles, docks the *Trainable segmentation* widget,
trains on the scribbles (classical features, or ``--backbone``), waits for the worker and
saves a PNG of the whole main window, dock included.

Usage::

    xvfb-run -a python scripts/napari_screenshot.py -o docs/images/widget.png
    python scripts/napari_screenshot.py --interactive        # keep napari open and paint

Without ``xvfb-run`` and without a display, a virtual display is started with
pyvirtualdisplay when it is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _ensure_display():
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        try:
            from pyvirtualdisplay import Display
        except ImportError:
            sys.exit("No display: run under `xvfb-run -a` or install pyvirtualdisplay.")
        disp = Display(visible=False, size=(1600, 1000))
        disp.start()
        return disp
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="docs/images/widget.png", help="PNG to write")
    ap.add_argument("--sample", default="tem_nanoparticles", choices=["tem_nanoparticles", "tem_cells_stack"])
    ap.add_argument("--backbone", default=None, help="backbone name (default: classical features only)")
    ap.add_argument("--interactive", action="store_true", help="keep napari open (Live mode on)")
    ap.add_argument("--size", default="1500x950", help="window size WxH")
    args = ap.parse_args(argv)

    disp = None if args.interactive else _ensure_display()
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_vitseg import _sample_data
    from napari_vitseg._widgets._segmentation import SegmentationWidget
    from napari_vitseg.io import sample_data_dir

    viewer = napari.Viewer(title="napari-vitseg", show=True)
    w, h = (int(s) for s in args.size.split("x"))
    viewer.window._qt_window.resize(w, h)
    for data, meta, kind in getattr(_sample_data, args.sample)():
        getattr(viewer, f"add_{kind}")(data, **meta)
    widget = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Trainable segmentation", area="right")
    if args.backbone:
        i = widget.backbone_combo.findText(args.backbone)
        if i < 0:
            sys.exit(f"backbone {args.backbone!r} is not offered (weights missing?)")
        widget.backbone_combo.setCurrentIndex(i)
    app = QApplication.instance()

    def wait_idle(limit=600):
        t0 = time.time()
        while widget.busy and time.time() - t0 < limit:
            app.processEvents()
            time.sleep(0.02)
        if widget.busy:
            sys.exit(f"the widget did not finish in {limit} s")

    # Live mode: trains on the scribbles and segments at once; then one more brush stroke
    widget.live_check.setChecked(True)
    wait_idle()
    scribbles = widget.scribbles_layer
    scribbles.brush_size = 6
    if args.sample == "tem_nanoparticles":
        with scribbles.block_history():  # one stroke = one undo item + one paint event
            for x in range(330, 420, 3):
                scribbles.paint((470, x), 2, refresh=False)
        scribbles.refresh()
        wait_idle()
    viewer.layers.selection.active = scribbles
    seg = viewer.layers["segmentation"]
    seg.opacity = 0.4
    viewer.reset_view()
    if args.interactive:
        napari.run()
        return 0
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    img = viewer.screenshot(canvas_only=False, flash=False)
    import imageio.v3 as iio

    iio.imwrite(out, img)
    msg = f"wrote {out} ({img.shape[1]}x{img.shape[0]}); {widget.status.text()}"
    truth = Path(sample_data_dir()) / args.sample / "ground_truth.tif"
    if truth.exists():
        from napari_vitseg.io import read_image
        from napari_vitseg.metrics import mean_iou

        msg += f"; mIoU vs ground truth {mean_iou(seg.data, read_image(truth)):.3f}"
    print(msg)
    viewer.close()
    if disp is not None:
        disp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
