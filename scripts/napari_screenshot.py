"""Screenshot of the segmentation widget with a live segmentation of a real sample.

Opens napari (a real window: run it under Xvfb when headless), loads the bundled
``tem_nanoparticles`` sample with its scribbles, docks the *Trainable segmentation* widget,
segments in Live mode (classical features, or ``--backbone``), adds one brush stroke, waits for
the worker and saves a PNG of the whole main window, docks and the on-canvas class legend
included. ``--importance`` then presses *Train* (the full model) and docks the *Feature
importance* panel below the widget.

Every screenshot in the README and docs/ is made by one command, from the repository root, in
a 1600 x 1000 virtual screen::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/napari_screenshot.py -o docs/images/widget.png
    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/napari_screenshot.py --size 1366x768 -o docs/images/widget_laptop.png
    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/napari_screenshot.py --importance -o docs/images/importance.png
    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/napari_screenshot.py --export-menu -o docs/images/project_export.png
    python scripts/napari_screenshot.py --interactive        # keep napari open and paint

The PNG is written with Pillow's ``optimize=True``, lossless when that fits in ``--max-kb``
(600 KB), else with a 256-colour palette.

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


def _save_png(img, out: Path, max_kb: float) -> str:
    """Write the RGB(A) screenshot ``img`` (H, W, 3|4) uint8 as a PNG with Pillow's ``optimize=True``.

    Lossless when that fits in ``max_kb`` kilobytes; otherwise as a 256-colour palette PNG
    (median cut, no dithering: the UI's flat colours stay exact, the noisy micrograph changes
    by a fraction of a grey level on average). Returns what was written, for the log line.
    """
    from PIL import Image

    rgb = Image.fromarray(img).convert("RGB")
    rgb.save(out, optimize=True)
    kb = out.stat().st_size / 1e3
    if kb <= max_kb:
        return f"{kb:.0f} KB, lossless"
    rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    return f"{out.stat().st_size / 1e3:.0f} KB, 256 colours (lossless was {kb:.0f} KB > {max_kb:g} KB)"


def _grab_with_menu(widget, button, settle):
    """Pop up ``button``'s menu (without blocking, below the button, right-aligned with it so that
    it stays over the window) and grab the screen under the widget's dock, down to the
    *Advanced* bar, and the menu: a menu is a window of its own, which ``viewer.screenshot``
    leaves out. Returns an (H, W, 4) uint8 array."""
    from napari._qt.utils import QImg2array
    from qtpy.QtCore import QPoint, QRect
    from qtpy.QtWidgets import QApplication

    menu = button.menu()
    menu.popup(button.mapToGlobal(QPoint(button.width() - menu.sizeHint().width(), button.height())))
    settle(0.5)
    menu.setActiveAction(menu.actions()[0])  # highlighted, as under the mouse
    settle(0.5)
    dock = _dock_of(widget)
    bottom = widget.advanced.mapToGlobal(QPoint(0, widget.advanced.height() + 8)).y()
    top_left = dock.mapToGlobal(QPoint(0, 0))
    r = QRect(top_left.x(), top_left.y(), dock.width(), bottom - top_left.y()).united(menu.geometry())
    pix = QApplication.primaryScreen().grabWindow(0, r.x(), r.y(), r.width(), r.height())
    img = QImg2array(pix.toImage())
    menu.hide()
    return img


def _dock_of(widget):
    """The QDockWidget that napari put ``widget`` in."""
    dock = widget.parent()
    while dock is not None and not hasattr(dock, "setFloating"):
        dock = dock.parent()
    if dock is None:
        sys.exit(f"{type(widget).__name__} is not docked")
    return dock


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="docs/images/widget.png", help="PNG to write")
    ap.add_argument("--sample", default="tem_nanoparticles", choices=["tem_nanoparticles", "tem_cells_stack"])
    ap.add_argument("--backbone", default=None, help="backbone name (default: classical features only)")
    ap.add_argument("--interactive", action="store_true", help="keep napari open (Live mode on)")
    ap.add_argument("--importance", action="store_true",
                    help="after the Live scene, press Train (full model) and dock the Feature importance panel")
    ap.add_argument("--export-menu", action="store_true",
                    help="open the Export… menu and save the segmentation dock only (the screen under it, "
                         "so that the menu's pop-up is in the picture)")
    ap.add_argument("--size", default="1500x950", help="window size WxH")
    ap.add_argument("--max-kb", type=float, default=600,
                    help="PNG size limit: above it the PNG is written with a 256-colour palette (default 600)")
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

    def settle(seconds=1.0):
        for _ in range(int(seconds / 0.05)):
            app.processEvents()
            time.sleep(0.05)

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
    panel = None
    if args.importance:
        widget.live_check.setChecked(False)
        widget.train()  # the full model (the Classifier fields' trees and depth)
        wait_idle()
        panel = widget.show_feature_importance()
        if panel is None:
            sys.exit(widget.status.text())
        t0 = time.time()
        while panel.importances is None and time.time() - t0 < 60:
            app.processEvents()
            time.sleep(0.05)
        if panel.importances is None:
            sys.exit("the feature-importance panel did not fill in 60 s")
        settle()
        # the two docks share the right column: the panel gets what its heat map and summary need
        # (+ a margin), the widget the rest, so that its Input and Actions stay in view
        from qtpy.QtCore import Qt

        docks = [_dock_of(widget), _dock_of(panel)]
        total = sum(d.height() for d in docks)
        h_panel = min(panel.minimumSizeHint().height() + 80, total // 2)
        viewer.window._qt_window.resizeDocks(docks, [total - h_panel, h_panel], Qt.Vertical)
    viewer.layers.selection.active = scribbles
    seg = viewer.layers["segmentation"]
    seg.opacity = 0.4
    settle()  # the docks take their final sizes, so the view is reset on the final canvas
    viewer.reset_view()
    if args.interactive:
        napari.run()
        return 0
    settle()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.export_menu:
        img = _grab_with_menu(widget, widget.export_btn, settle)
    else:
        img = viewer.screenshot(canvas_only=False, flash=False)
    how = _save_png(img, out, args.max_kb)
    msg = f"wrote {out} ({img.shape[1]}x{img.shape[0]}, {how}); {widget.status.text()}"
    if panel is not None:
        msg += f"; importance: {panel.summary.text()}"
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
