"""The Diagnostics dock widget: what a ViT backbone does to *your* images.

Pick one or more backbones and image layers and press *Run*. In a worker thread the widget runs
:func:`napari_vitseg.diagnostics.iter_diagnose` (positional-bias linear probe, per-block token norms,
SINDER defect angles, PCA-RGB) and then shows

- plots: R² per probe target with the backbones side by side, R² through the blocks, the
  channels x blocks "fingerprint" heat-map, and the token-norm histograms;
- layers aligned with each image: the token-norm map, the flagged high-norm tokens (Labels),
  the angle to the SINDER defect direction and the PCA-RGB of the final features. The norm,
  flag and angle layers show one block (the *block* box; the last one by default).

and a plain-language verdict per backbone (:func:`verdict`: does it suit these images?), from the
probe score and the high-norm / defect tokens, with the thresholds of docs/diagnostics.md.

*Run* is enabled only when it can run: at least one usable backbone and one image layer ticked;
otherwise the line below it says what is missing. Layer names are
``<backbone> · <image> · <kind>`` with a short name of the backbone (:func:`short_backbone_names`),
unique among the backbones of a run: napari's layer list cuts long names in the middle, so both
ends, which tell the layers apart, stay visible.

The widget is thin: all numbers come from :mod:`napari_vitseg.diagnostics`, run by the
widgets' job runner (:mod:`napari_vitseg._widgets._jobs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .._validation import VitsegError
from ..backbones import available_backbones, get_backbone_cfg, list_backbones, weights_dir
from . import _notify
from ._compat import avoid_triton_crash
from ._controller import random_weights_allowed
from ._jobs import Job, JobRunner, JobTexts

__all__ = ["DiagnosticsWidget", "RANDOM_LABEL", "Verdict", "drawn_tick_labels", "short_backbone_names", "stack_panels",
           "thin_tick_labels", "verdict"]

RANDOM_LABEL = "random weights (testing)"

#: Verdict thresholds (docs/diagnostics.md, "The verdict"). Position R² = held-out R² of the
#: ``lr+ud`` probe on the final features, mean over images and repeats.
STRONG_R2 = 0.5
#: At or above (and :data:`CONTROL_MARGIN` above the noise control): some positional information.
SOME_R2 = 0.2
#: The position R² must exceed the backbone's own noise control (chance floor) by this much to count.
CONTROL_MARGIN = 0.3
#: Share of high-norm tokens in the last block (mean over the images) that counts as defect tokens.
DEFECT_SHARE = 0.01
#: Status texts of the diagnostics job.
TEXTS = JobTexts(started="starting…", progress="{msg}", cancelling="cancelling…", cancelled="cancelled",
                 busy="Diagnostics are already running; press Cancel first.")


_ARCH = {"s": "S", "b": "B", "l": "L", "g": "g"}


def _short_name(name: str) -> str:
    """``alibi_coco_dv2_vits14_reg`` -> ``alibi-coco-S-reg``; ``dinov2_vitb14`` -> ``dv2-B``."""
    parts = name.split("_")
    arch = next((i for i, t in enumerate(parts) if re.fullmatch(r"vit[sblg]\d+", t)), None)
    if arch is None:
        return name
    m = re.fullmatch(r"vit([sblg])(\d+)", parts[arch])
    size = _ARCH[m.group(1)] + ("" if m.group(2) == "14" else m.group(2))
    family = [t for t in parts[:arch] if t not in ("dinov2", "dv2")] or ["dv2"]
    return "-".join([*family, size, *parts[arch + 1:]])


def short_backbone_names(names) -> dict[str, str]:
    """Short, unique names of backbones for layer names (full names where two would collide).

    Examples
    --------
    >>> short_backbone_names(["dinov2_vits14", "dinov2_vits14_reg", "alibi_coco_dv2_vits14_reg"])
    {'dinov2_vits14': 'dv2-S', 'dinov2_vits14_reg': 'dv2-S-reg', 'alibi_coco_dv2_vits14_reg': 'alibi-coco-S-reg'}
    """
    names = list(dict.fromkeys(names))
    short = {n: _short_name(n) for n in names}
    counts = {v: list(short.values()).count(v) for v in short.values()}
    return {n: (v if counts[v] == 1 else n) for n, v in short.items()}


@dataclass(frozen=True)
class Verdict:
    """What the diagnostics of one backbone mean for the user's images.

    Attributes
    ----------
    backbone : str
    level : {'good', 'caution', 'bad'}
    text : str
        One or two plain sentences.
    position_r2 : float
        Held-out ``lr+ud`` R² of the final features.
    control_r2 : float
        The same backbone's noise control (chance floor).
    defect_share : float
        Share of high-norm tokens in the last block, mean over the images.
    sinder_images : int
        Images with SINDER defect tokens (at least 3) in the last block; 0 without directions.
    """

    backbone: str
    level: str
    text: str
    position_r2: float
    control_r2: float
    defect_share: float
    sinder_images: int


def verdict(bd) -> Verdict:
    """A plain-language verdict on one backbone's diagnostics (thresholds: docs/diagnostics.md).

    Position: the ``lr+ud`` probe R² of the final features is *strong* at or above
    :data:`STRONG_R2`, *some* at or above :data:`SOME_R2`, each only when it also exceeds the
    backbone's own noise control by :data:`CONTROL_MARGIN` (Pawlowsky et al. 2026 report 0.83
    for DINOv2-S on micrographs, -0.23 for ALiBi-DINOv2). Defect tokens: at least
    :data:`DEFECT_SHARE` of the last block's tokens above the high-norm threshold (Darcet et al.
    2024), or SINDER defect tokens (Wang et al. 2024) in the last block of any image.

    Parameters
    ----------
    bd : napari_vitseg.diagnostics.BackboneDiagnostics

    Returns
    -------
    Verdict
    """
    probe, norms = bd.probe, bd.norms
    r2, ctrl = probe.mean("lr+ud", "final"), probe.mean("random", "final")
    above = np.isfinite(r2) and np.isfinite(ctrl) and r2 - ctrl >= CONTROL_MARGIN
    share = float(np.nanmean(norms.share[:, -1])) if norms.per_image else 0.0
    sinder = sum(1 for p in norms.per_image
                 if p.get("defect_counts") is not None and int(p["defect_counts"][-1]) >= 3)
    sentences, level = [], "good"
    if above and r2 >= STRONG_R2:
        level = "bad"
        sentences.append(f"Features are strongly positional (position R² {r2:.2f}, chance {ctrl:.2f}): expect "
                         "position-driven errors on large images; prefer ALiBi / NoPE / SINDER backbones.")
    elif above and r2 >= SOME_R2:
        level = "caution"
        sentences.append(f"Features carry some position (R² {r2:.2f}, chance {ctrl:.2f}): fine on small images; "
                         "on large ones check the segmentation across the image, or prefer ALiBi / NoPE.")
    if share >= DEFECT_SHARE or sinder:
        level = "bad" if level == "bad" else "caution"
        what = f"{100 * share:.1f} % high-norm tokens in the last block"
        if sinder:
            what += f", SINDER defect tokens in {sinder} image(s)"
        reg = bd.backbone.endswith("_reg")
        sentences.append(f"{what[0].upper()}{what[1:]}: expect isolated spots in the segmentation; prefer "
                         + ("a SINDER-repaired backbone." if reg else "a register (_reg) or SINDER backbone."))
    if not sentences:
        sentences.append(f"Suits your images: no positional bias (position R² {r2:.2f}, chance {ctrl:.2f}) and "
                         "no defect tokens.")
    text = " ".join(sentences)
    if not bd.pretrained:
        text = "RANDOM WEIGHTS (a pipeline test; says nothing about the pretrained model). " + text
    return Verdict(bd.backbone, level, text, float(r2), float(ctrl), share, sinder)


def drawn_tick_labels(axis) -> list:
    """The major tick labels of ``axis`` that matplotlib draws (ticks inside the view limits)."""
    return [t.label1 for t in axis._update_ticks() if t in axis.majorTicks]


def thin_tick_labels(fig) -> int:
    """Hide tick labels that would overlap a neighbour (keep every k-th), after a draw.

    Returns
    -------
    int
        The number of labels hidden.
    """
    renderer = fig.canvas.get_renderer()
    hidden = 0
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in drawn_tick_labels(axis) if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in labels]
            step = 1
            while step < len(labels) and any(a.overlaps(b) for a, b in zip(boxes[::step], boxes[step::step], strict=False)):
                step += 1
            for i, t in enumerate(labels):
                if i % step:
                    t.set_visible(False)
                    hidden += 1
    return hidden


#: Narrowest panel of a plot (px) before side-by-side panels are stacked, and a stacked panel's height.
PANEL_MIN_WIDTH = 280
PANEL_HEIGHT = 300


def _panels(fig) -> dict | None:
    """The axes of a one-row grid of panels, by column (twins and colorbars follow their panel)."""
    panels: dict[int, list] = {}
    for ax in fig.axes:
        ss = ax.get_subplotspec()
        if ss is None:
            continue
        gs = ss.get_gridspec()
        if gs.nrows != 1:
            return None
        panels.setdefault(ss.colspan.start, []).append(ax)
    return panels


def stack_panels(fig) -> int:
    """Put side-by-side panels of a figure one below the other; returns the number of rows."""
    panels = _panels(fig)
    if not panels or len(panels) < 2:
        return 1
    gs = fig.add_gridspec(len(panels), 1)
    for i, col in enumerate(sorted(panels)):
        for ax in panels[col]:
            ax.set_subplotspec(gs[i, 0])
    return len(panels)


def _sticks_out(t, renderer, width: float) -> bool:
    bb = t.get_window_extent(renderer)
    return bb.x1 > width + 1 or bb.x0 < -1


def _texts(fig) -> list:
    """Visible texts of a figure other than tick labels and legend entries."""
    from matplotlib.text import Text

    ticks = {id(t) for ax in fig.axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels())}
    legend = {id(t) for leg in fig.legends for t in leg.get_texts()}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text() and id(t) not in ticks | legend]


class _Canvas(QWidget):
    """A matplotlib figure in a Qt widget (``matplotlib.backends.backend_qtagg``) that fits the dock.

    The figure takes the widget's width (no horizontal scrolling); tick labels that would
    overlap at that width are thinned (:func:`thin_tick_labels`) and a legend wider than the
    figure is put in one column, again on every resize.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.5), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(380)
        self.canvas.setMinimumWidth(200)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self._tidying = False
        self.canvas.mpl_connect("resize_event", lambda _e: self.draw())

    def tidy(self) -> None:
        """Make the figure readable at the dock's width: wrap the title, one-column legends,
        texts kept inside, overlapping tick labels turned upright and, if still needed, thinned."""
        if self._tidying or not self.figure.axes:
            return
        self._tidying = True
        fig = self.figure
        try:
            for ax in fig.axes:
                for t in (*ax.get_xticklabels(), *ax.get_yticklabels()):
                    t.set_visible(True)
            if fig._suptitle is not None:
                fig._suptitle.set_wrap(True)
                fig._suptitle.set_fontsize(min(fig._suptitle.get_fontsize(), 9))
            self.canvas.draw()
            renderer = self.canvas.get_renderer()
            width = fig.bbox.width
            for leg in list(fig.legends):  # too wide: the same entries in one column
                if leg.get_window_extent(renderer).width > width and leg._ncols > 1:
                    texts = leg.get_texts()
                    leg.remove()
                    fig.legend(leg.legend_handles, [t.get_text() for t in texts], fontsize=texts[0].get_fontsize(),
                               loc="outside lower center", ncol=1, frameon=False)
            self.canvas.draw()
            out = [t for t in _texts(fig) if _sticks_out(t, renderer, width)]
            for t in out:  # titles and notes that stick out at the sides: wrapped at the figure's edge
                t.set_wrap(True)
            if out:
                self.canvas.draw()
            for t in _texts(fig):  # still out (one long word): anchored on the inner side
                bb = t.get_window_extent(renderer)
                if bb.x1 > width + 1:
                    t.set_horizontalalignment("right")
                elif bb.x0 < -1:
                    t.set_horizontalalignment("left")
            self.canvas.draw()
            rotated = False
            for ax in fig.axes:
                labels = [t for t in ax.get_xticklabels() if t.get_text()]
                boxes = [t.get_window_extent(renderer) for t in labels]
                if any(a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False)) and labels[0].get_rotation() == 0:
                    for t in labels:  # upright boxes of rotated text are as narrow as a line
                        t.set_rotation(90)
                        t.set_fontsize(min(t.get_fontsize(), 8))
                    rotated = True
            if rotated:
                self.canvas.draw()
            if thin_tick_labels(fig):
                self.canvas.draw()
        finally:
            self._tidying = False

    def draw(self) -> None:
        panels = _panels(self.figure) or {}
        rows = 1
        if len(panels) > 1 and self.canvas.width() / len(panels) < PANEL_MIN_WIDTH:
            rows = stack_panels(self.figure)  # a narrow dock: one panel per row, full width
        else:
            rows = max((ax.get_subplotspec().get_gridspec().nrows for ax in self.figure.axes
                        if ax.get_subplotspec() is not None), default=1)
        self.canvas.setMinimumHeight(max(380, PANEL_HEIGHT * rows + 80))
        self.tidy()
        self.canvas.draw_idle()


class DiagnosticsWidget(QWidget):
    """Positional-bias probe, token norms / defects and PCA views for chosen backbones and images.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result = None          # DiagnosticsResult of the last run
        self._layers: dict[tuple[str, str, str], object] = {}   # (image, backbone, kind) -> layer
        self._sources: list = []    # image layers of the last run, in result order

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # plots take the dock's width
        self.scroll = scroll
        outer.addWidget(scroll)
        inner = QWidget()
        scroll.setWidget(inner)
        root = QVBoxLayout(inner)

        # -- backbones ----------------------------------------------------------------------
        gb = QGroupBox("Backbones")
        v = QVBoxLayout(gb)
        self.backbone_list = QListWidget()
        self.backbone_list.setMaximumHeight(150)
        v.addWidget(self.backbone_list)
        self.random_check = QCheckBox(RANDOM_LABEL)
        self.random_check.setToolTip("Random weights with LayerScale 1: for tests and method checks only, "
                                     "never a statement about a real backbone.")
        self.random_check.setVisible(random_weights_allowed())
        self.random_check.toggled.connect(self._refresh_backbones)
        v.addWidget(self.random_check)
        self.backbone_list.itemChanged.connect(self._update_run_state)
        root.addWidget(gb)

        # -- images -------------------------------------------------------------------------
        gi = QGroupBox("Image layers")
        gi.setToolTip("Homogeneous images (noise, a texture, a microstructure with no preferred direction): "
                      "content that changes with position makes position predictable without any bias.")
        vi = QVBoxLayout(gi)
        self.image_list = QListWidget()
        self.image_list.setMaximumHeight(80)
        self.image_list.itemChanged.connect(self._update_run_state)
        vi.addWidget(self.image_list)
        root.addWidget(gi)

        # -- options (collapsed: the results come first) ----------------------------------------
        from superqt import QCollapsible

        self.options = QCollapsible("Options")
        self.options.setToolTip("Probe layers, repeats, ridge alpha, high-norm threshold, crop size, defect angles.")
        opts = QWidget()
        form = QFormLayout(opts)
        form.setContentsMargins(0, 0, 0, 0)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # labels above fields in a narrow dock
        self.layers_combo = QComboBox()
        self.layers_combo.addItem("every block + final (fingerprint)", "all")
        self.layers_combo.addItem("final features only", "final")
        form.addRow("probe layers", self.layers_combo)
        self.repeats_spin = QSpinBox()
        self.repeats_spin.setRange(1, 50)
        self.repeats_spin.setValue(3)
        form.addRow("repeats", self.repeats_spin)
        self.alpha_combo = QComboBox()
        self.alpha_combo.addItem("1.0 (paper)", 1.0)
        self.alpha_combo.addItem("leave-one-out CV", "cv")
        form.addRow("ridge alpha", self.alpha_combo)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(1.05, 1000.0)
        self.threshold_spin.setSingleStep(0.5)
        self.threshold_spin.setValue(3.0)
        self.threshold_spin.setSuffix(" x median")
        self.threshold_spin.setToolTip("Flag tokens whose norm exceeds this multiple of their block's median.")
        self.threshold_spin.valueChanged.connect(self._reflag)
        form.addRow("high-norm flag", self.threshold_spin)
        self.max_side_spin = QSpinBox()
        self.max_side_spin.setRange(28, 10_000)
        self.max_side_spin.setValue(1008)
        self.max_side_spin.setSuffix(" px")
        self.max_side_spin.setToolTip("Larger images are cropped around the centre to this size.")
        form.addRow("max side", self.max_side_spin)
        self.angles_check = QCheckBox("defect-direction angles")
        self.angles_check.setToolTip("Angle of each token to the SINDER defect direction of its block (Wang et al. 2024).")
        self.angles_check.setChecked(True)
        form.addRow(self.angles_check)
        self.shared_pca_check = QCheckBox("shared PCA basis")
        self.shared_pca_check.setToolTip("One PCA basis for all images of a backbone, so that colours compare.")
        self.shared_pca_check.setChecked(True)
        form.addRow(self.shared_pca_check)
        self.options.addWidget(opts)
        self.options.collapse(animate=False)
        root.addWidget(self.options)

        # -- run ----------------------------------------------------------------------------
        row = QHBoxLayout()
        self.run_btn = QPushButton("Run")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        self.run_hint = QLabel("")
        self.run_hint.setWordWrap(True)
        self.run_hint.setStyleSheet("color: #e0a040;")
        root.addWidget(self.run_hint)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        root.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        self.jobs = JobRunner(set_status=self._set_status, progress_bar=self.progress, cancel_button=self.cancel_btn,
                              texts=TEXTS, on_busy_changed=lambda busy: self._update_run_state())
        self.destroyed.connect(self.jobs.close)  # a job must not touch a closed widget

        # -- verdict --------------------------------------------------------------------------
        self.verdict_box = QGroupBox("Verdict")
        vv = QVBoxLayout(self.verdict_box)
        self.verdict_label = QLabel("")
        self.verdict_label.setWordWrap(True)
        self.verdict_label.setTextFormat(Qt.TextFormat.RichText)
        vv.addWidget(self.verdict_label)
        self.verdict_box.setVisible(False)
        root.addWidget(self.verdict_box)
        self.verdicts: list[Verdict] = []

        # -- results ------------------------------------------------------------------------
        row2 = QFormLayout()  # one control per row: the dock may be narrow
        row2.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.block_spin = QSpinBox()
        self.block_spin.setRange(-1, -1)
        self.block_spin.setSpecialValueText("last")
        self.block_spin.setValue(-1)
        self.block_spin.valueChanged.connect(self._update_layers)
        row2.addRow("block shown in layers", self.block_spin)
        self.norms_combo = QComboBox()
        self.norms_combo.currentIndexChanged.connect(self._draw_norms)
        row2.addRow("norm plot of", self.norms_combo)
        root.addLayout(row2)
        for combo in (self.norms_combo, self.layers_combo, self.alpha_combo):  # long items must not widen the dock
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        self.tabs = QTabWidget()
        self.bars_canvas = _Canvas()
        self.depth_canvas = _Canvas()
        self.fingerprint_canvas = _Canvas()
        self.norms_canvas = _Canvas()
        self.tabs.addTab(self.bars_canvas, "R² per target")
        self.tabs.addTab(self.depth_canvas, "R² by block")
        self.tabs.addTab(self.fingerprint_canvas, "fingerprint")
        self.tabs.addTab(self.norms_canvas, "token norms")
        root.addWidget(self.tabs, 1)

        self._refresh_backbones()
        self._refresh_images()
        self._update_run_state()
        ev = self.viewer.layers.events
        ev.inserted.connect(self._refresh_images)
        ev.removed.connect(self._on_layer_removed)

    # -- lists ------------------------------------------------------------------------------------
    def _refresh_backbones(self, *_):
        checked = set(self.selected_backbones())
        random = self.random_check.isChecked()
        have = set(available_backbones())
        self.backbone_list.clear()
        for name in list_backbones():
            if random and get_backbone_cfg(name).heavy:
                continue  # > 1 B parameters: not offered with random weights
            ok = random or name in have
            label = name + ("" if name in have else "  (no weights)")
            item = QListWidgetItem(label)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setToolTip(get_backbone_cfg(name).description)
            flags = Qt.ItemFlag.ItemIsUserCheckable | (Qt.ItemFlag.ItemIsEnabled if ok else Qt.ItemFlag.NoItemFlags)
            item.setFlags(flags)
            item.setCheckState(Qt.CheckState.Checked if (name in checked and ok) else Qt.CheckState.Unchecked)
            self.backbone_list.addItem(item)
        self._update_run_state()

    def _refresh_images(self, *_):
        from napari.layers import Image

        checked = set(self.selected_images())
        first = not checked and self.image_list.count() == 0
        self.image_list.clear()
        for layer in self.viewer.layers:
            if not isinstance(layer, Image) or layer.metadata.get("vitseg_diagnostics"):
                continue
            item = QListWidgetItem(layer.name)
            item.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
            on = layer.name in checked or (first and self.image_list.count() == 0)
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.image_list.addItem(item)
        self._update_run_state()

    def _on_layer_removed(self, event=None):
        gone = getattr(event, "value", None)
        self._layers = {k: v for k, v in self._layers.items() if v is not gone and v in self.viewer.layers}
        self._refresh_images()

    def usable_backbones(self) -> list[str]:
        """Backbones that can be ticked now (weights on disk, or random weights when allowed and ticked)."""
        return [self.backbone_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.backbone_list.count())
                if self.backbone_list.item(i).flags() & Qt.ItemFlag.ItemIsEnabled]

    def run_blocker(self) -> str:
        """Why *Run* cannot run now, in words; ``''`` when it can (busy aside)."""
        random_offer = self.random_check.isVisibleTo(self) and not self.random_check.isChecked()
        if not self.usable_backbones():
            msg = (f"No backbone has weights on this machine, so there is nothing to run (weights are looked for "
                   f"in {weights_dir()}); add weights for one of the backbones listed.")
            if random_offer:
                msg += f" To test the widget, tick '{RANDOM_LABEL}'."
            return msg
        if not self.selected_backbones():
            return "Tick a backbone above to run."
        if self.image_list.count() == 0:
            return "Open an image to run the diagnostics on (File > Open, or a sample)."
        if not self.selected_images():
            return "Tick an image layer above to run."
        return ""

    def _update_run_state(self, *_) -> None:
        """Enable *Run* only when it can run; say why not under it."""
        if not hasattr(self, "jobs"):  # during construction
            return
        why = self.run_blocker()
        self.run_btn.setEnabled(not why and not self.jobs.busy)
        self.run_btn.setToolTip(why or "Run the diagnostics on the ticked backbones and images.")
        self.run_hint.setText(why)
        self.run_hint.setVisible(bool(why))

    def selected_backbones(self) -> list[str]:
        """Names of the checked backbones."""
        return [self.backbone_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.backbone_list.count())
                if self.backbone_list.item(i).checkState() == Qt.CheckState.Checked]

    def selected_images(self) -> list[str]:
        """Names of the checked image layers."""
        return [self.image_list.item(i).text() for i in range(self.image_list.count())
                if self.image_list.item(i).checkState() == Qt.CheckState.Checked]

    def set_selection(self, backbones=None, images=None, random_weights: bool | None = None) -> None:
        """Check these backbones / image layers (for scripts and tests)."""
        if random_weights is not None:
            self.random_check.setChecked(random_weights)
        for lst, names in ((self.backbone_list, backbones), (self.image_list, images)):
            if names is None:
                continue
            for i in range(lst.count()):
                it = lst.item(i)
                key = it.data(Qt.ItemDataRole.UserRole) if lst is self.backbone_list else it.text()
                if it.flags() & Qt.ItemFlag.ItemIsEnabled:
                    it.setCheckState(Qt.CheckState.Checked if key in names else Qt.CheckState.Unchecked)

    # -- running ------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether the diagnostics are running."""
        return self.jobs.busy

    def _set_status(self, msg: str, error: bool = False) -> None:
        self.status.setText(f"error: {msg.splitlines()[0] if msg else ''}" if error else msg)

    def plane_of(self, layer):
        """The layer's 2-D plane at the current viewer position, and its channel axis."""
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        n_sp = data.ndim - (1 if layer.rgb else 0)
        if n_sp > 2:
            pt = np.asarray(layer.world_to_data(self.viewer.dims.point[-layer.ndim:]))
            idx = tuple(int(np.clip(round(float(pt[k])), 0, data.shape[k] - 1)) for k in range(n_sp - 2))
            data = data[idx]
        return np.asarray(data), (-1 if layer.rgb else None)

    def run(self) -> Job | None:
        """Start the diagnostics for the checked backbones and images (returns the job)."""
        if self.busy:
            _notify.show_info(TEXTS.busy)
            return None
        backbones = self.selected_backbones()
        names = self.selected_images()
        why = self.run_blocker()
        if why:
            _notify.show_error(why)
            return None
        try:
            layers = [self.viewer.layers[n] for n in names]
            planes = [self.plane_of(layer) for layer in layers]
            cas = {ca for _, ca in planes}
            if len(cas) > 1:  # mix of RGB and greyscale: make all RGB
                planes = [(np.repeat(p[..., None], 3, -1) if ca is None else p, -1) for p, ca in planes]
            images, ca = [p for p, _ in planes], planes[0][1]
        except (VitsegError, KeyError, ValueError) as e:
            _notify.show_error(str(e))
            return None
        # import timm (and through it torchvision, torch._dynamo, maybe triton) on the main
        # thread: a first import inside a worker thread can crash the interpreter
        avoid_triton_crash()
        import timm  # noqa: F401

        from ..diagnostics import iter_diagnose

        kwargs = dict(names=names, channel_axis=ca, max_side=self.max_side_spin.value(),
                      layers=self.layers_combo.currentData(), repeats=self.repeats_spin.value(),
                      alpha=self.alpha_combo.currentData(), rel_threshold=self.threshold_spin.value(),
                      directions="auto" if self.angles_check.isChecked() else None,
                      pca_shared=self.shared_pca_check.isChecked(),
                      random_weights=self.random_check.isChecked())

        return self.jobs.request("diagnostics", lambda: iter_diagnose(backbones, images, **kwargs),
                                 on_returned=lambda job, result, srcs=layers: self._on_returned(result, srcs))

    def cancel(self) -> None:
        """Stop the running job at its next step."""
        self.jobs.cancel()

    def _on_returned(self, result, sources) -> str:
        """Draw the result; returns the final status (a drawing error is reported by the runner)."""
        self.result = result
        self._sources = list(sources)
        self._show(result)
        self._show_verdicts(result)
        msg = "done"
        if result.random_weights:
            msg += " — RANDOM WEIGHTS, not a pretrained model"
        if result.missing:
            missing = ", ".join(result.missing)
            msg += f"; not run (no weights): {missing}"
            _notify.show_warning(f"Diagnostics skipped {missing}: "
                                 + next(iter(result.missing.values())).splitlines()[0])
        return msg

    # -- drawing ------------------------------------------------------------------------------------
    def _show_verdicts(self, result) -> None:
        """One plain-language verdict per backbone, above the plots (scrolled into view)."""
        self.verdicts = [verdict(bd) for bd in result.results]
        short = short_backbone_names([v.backbone for v in self.verdicts])
        dot = {"good": "#2ca02c", "caution": "#e0a040", "bad": "#d62728"}
        rows = [f"<p><span style='color:{dot[v.level]}'>&#9679;</span> <b>{short[v.backbone]}</b> "
                f"({v.backbone}): {v.text}</p>" for v in self.verdicts]
        self.verdict_label.setText("".join(rows))
        self.verdict_box.setVisible(bool(rows))
        self.scroll.ensureWidgetVisible(self.verdict_box)

    def _show(self, result) -> None:
        from ..diagnostics import figures

        probes = [r.probe for r in result.results]
        figures.r2_bars_figure(probes, fig=self.bars_canvas.figure)
        self.bars_canvas.draw()
        if len(probes[0].layers) > 1:
            figures.r2_depth_figure(probes, fig=self.depth_canvas.figure)
        else:
            self.depth_canvas.figure.clear()
            self.depth_canvas.figure.text(0.5, 0.5, "run with 'every block' to see R² by block",
                                          ha="center", va="center")
        self.depth_canvas.draw()
        figures.fingerprint_figure(probes, fig=self.fingerprint_canvas.figure)
        self.fingerprint_canvas.draw()
        self.norms_combo.blockSignals(True)
        self.norms_combo.clear()
        for r in result.results:
            self.norms_combo.addItem(r.backbone)
        self.norms_combo.blockSignals(False)
        self._draw_norms()
        n_blocks = len(result.results[0].norms.layers)
        self.block_spin.blockSignals(True)
        self.block_spin.setRange(-1, n_blocks - 1)
        self.block_spin.setValue(-1)
        self.block_spin.blockSignals(False)
        self._update_layers()

    def _draw_norms(self, *_):
        if self.result is None or not self.result.results:
            return
        from ..diagnostics import figures

        i = max(0, self.norms_combo.currentIndex())
        figures.norms_figure(self.result.results[i].norms, fig=self.norms_canvas.figure)
        self.norms_canvas.draw()

    def _reflag(self, *_):
        """Re-flag with the new threshold (no recomputation: the norms are kept)."""
        if self.result is None:
            return
        from ..diagnostics import flag_high_norm

        thr = self.threshold_spin.value()
        for r in self.result.results:
            r.norms.rel_threshold = thr
            for a in r.norms.per_image:
                a["flagged"], a["share"] = flag_high_norm(a["norms"], thr)
        self._draw_norms()
        self._update_layers()

    def _extent(self, i: int, source) -> dict:
        """scale / translate of token layers for image ``i``, composed with the source layer's own."""
        ext = self.result.extent(i)
        s = np.asarray(source.scale[-2:], float)
        t = np.asarray(source.translate[-2:], float)
        return {"scale": tuple(s * ext["scale"]), "translate": tuple(t + s * np.asarray(ext["translate"]))}

    def _put(self, key, data, kind: str, **kw):
        """Add a layer or update the existing one with the same role."""
        layer = self._layers.get(key)
        if layer is not None and layer in self.viewer.layers:
            layer.data = data
            for k in ("scale", "translate"):
                if k in kw:
                    setattr(layer, k, kw[k])
            if kind == "image" and not kw.get("rgb") and "contrast_limits" not in kw:
                layer.reset_contrast_limits()
            return layer
        name = kw.pop("name")
        if name in self.viewer.layers:  # from an earlier widget instance or run: replace it
            self.viewer.layers.remove(name)
        meta = {"vitseg_diagnostics": {"image": key[0], "backbone": key[1], "kind": key[2]}}
        if kind == "labels":
            layer = self.viewer.add_labels(data, name=name, metadata=meta, **kw)
        else:
            layer = self.viewer.add_image(data, name=name, metadata=meta, **kw)
        self._layers[key] = layer
        return layer

    def _update_layers(self, *_):
        if self.result is None:
            return
        block = self.block_spin.value()
        res = self.result
        short = short_backbone_names([bd.backbone for bd in res.results])
        for i, img in enumerate(res.images):
            src = self._sources[i] if i < len(self._sources) else None
            ext = self._extent(i, src) if src is not None and src in self.viewer.layers else res.extent(i)
            for bd in res.results:
                a = bd.norms.per_image[i]
                b = block % len(bd.norms.layers)
                # napari's layer list elides long names in the middle: backbone first, kind last
                tag = f"{short[bd.backbone]} · {img.name} · {{}}"
                self._put((img.name, bd.backbone, "norm"), a["norms"][b], "image",
                          name=tag.format("norm"), colormap="inferno", opacity=0.7, **ext)
                self._put((img.name, bd.backbone, "flagged"), a["flagged"][b].astype(np.uint8), "labels",
                          name=tag.format("high-norm"), opacity=0.6, **ext)
                if a["angles"] is not None:
                    lay = self._put((img.name, bd.backbone, "angle"), a["angles"][b], "image",
                                    name=tag.format("defect angle"), colormap="viridis",
                                    contrast_limits=(0, 90), opacity=0.7, visible=False, **ext)
                    lay.contrast_limits = (0, 90)
                self._put((img.name, bd.backbone, "pca"), bd.pca[i], "image",
                          name=tag.format("PCA"), rgb=True, visible=False, **ext)
                for kind in ("norm", "flagged", "angle"):
                    layer = self._layers.get((img.name, bd.backbone, kind))
                    if layer is not None:
                        layer.metadata["vitseg_diagnostics"]["block"] = b
