"""The feature-importance panel: what the trained classifier relies on, by feature family and scale.

A napari-matplotlib widget (:class:`napari_matplotlib.base.NapariMPLWidget`, themed like the
viewer) opened from the segmentation dock (*Advanced* -> *Feature importance…*). It shows a heat
map of the importance shares of the current classifier
(:meth:`Segmenter.feature_importances <napari_vitseg.pipeline.Segmenter.feature_importances>`):
one row per feature family, one column per Gaussian scale (and a "none" column for scale-free
features: raw intensity, membrane projections, ViT), each cell its share in percent, summed over
the channels of a multichannel image; below it one sentence in plain language ("Mostly
large-scale features (σ 8-16 px): texture 41 %, edges 22 %; raw intensity matters least
(<1 %)."). With auto-context a combo picks the stage (stage 1 by default: the one that sees the
image features only). The panel refreshes after every Train and Live retraining and says
"Train a classifier first" while there is none.

The shares are the classifier's own measure (mean decrease in impurity for a random forest, total
gain for XGBoost); the methods and their biases are in :mod:`napari_vitseg.pipeline._importance`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari_matplotlib.base import NapariMPLWidget
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel

from .._validation import VitsegError
from ..pipeline._importance import FAMILY_LABELS, FAMILY_WORDS, FeatureImportances

__all__ = ["NO_MODEL", "ImportancePanel"]

#: What the panel says while there is no trained classifier.
NO_MODEL = "Train a classifier first: the panel then shows which features it relies on."
#: Height of one heat-map row (px) and of everything around the rows (title, scale axis, margins).
ROW_PX = 20
FRAME_PX = 100

_METHOD_WORDS = {
    "mdi": "mean decrease in impurity (MDI) of the random forest: read from the trees, biased towards "
           "continuous features and split between correlated ones (neighbouring scales)",
    "gain": "total gain of the XGBoost trees (loss reduction of the splits on each feature)",
    "permutation": "drop in balanced accuracy when a feature is shuffled (permutation importance)",
}


class ImportancePanel(NapariMPLWidget):
    """Heat map (feature family x scale) of the current classifier's importances, with a summary.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    source : callable
        Returns the current trained :class:`~napari_vitseg.pipeline.Segmenter`, or ``None``.
    busy : callable, optional
        Returns whether the segmentation widget is running a job: a scheduled refresh waits
        until it is not (drawing takes the UI thread for ~0.1-0.3 s; the overlay comes first).

    Attributes
    ----------
    importances : FeatureImportances or None
        What is drawn now (``None``: no trained classifier).
    families : list of str
        Row keys of the heat map (:data:`~napari_vitseg.pipeline._importance.FAMILY_LABELS`).
    scales : list of float or None
        Column scales in px (``None``: the scale-free column).
    shares : ndarray, (rows, columns)
        The cells drawn (``NaN``: no such feature).
    summary : QLabel
        The one-line summary (or :data:`NO_MODEL`).
    stage_combo : QComboBox
        The stage shown (visible with auto-context only).
    """

    def __init__(self, napari_viewer, source: Callable[[], object], busy: Callable[[], bool] | None = None,
                 parent=None):
        super().__init__(napari_viewer, parent=parent)
        self._source = source
        self._busy = busy or (lambda: False)
        self._layout = None
        self.importances: FeatureImportances | None = None
        self.families: list[str] = []
        self.scales: list[float | None] = []
        self.shares = np.zeros((0, 0))
        self._stale = False

        row = QHBoxLayout()
        self.stage_label = QLabel("Stage:")
        self.stage_combo = QComboBox()
        self.stage_combo.setToolTip("Auto-context stage whose classifier is shown. Stage 1 sees the image "
                                    "features only; later stages also see the previous stage's output.")
        self.stage_combo.currentIndexChanged.connect(lambda _i: self.refresh())
        row.addWidget(self.stage_label)
        row.addWidget(self.stage_combo, 1)
        self.layout().insertLayout(0, row)
        self.summary = QLabel(NO_MODEL)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.layout().addWidget(self.summary)
        self.figure.set_size_inches(3.4, 3.6)  # the canvas's size hint: a dock's width, not half the window
        self.canvas.setMinimumWidth(200)
        self.canvas.setToolTip("Rows: feature families (" + "; ".join(
            f"{FAMILY_LABELS[f]}: {FAMILY_WORDS[f]}" for f in FAMILY_LABELS if f not in ("other", "autocontext"))
            + "). Columns: the Gaussian scale σ in pixels ('none': features without a scale). Cells: percent "
            "of the classifier's importance, summed over the image channels; blank: no such feature.")
        self._set_stage_choices(0)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._refresh_if_shown)
        self.refresh()

    # ------------------------------------------------------------ napari-matplotlib hooks
    def _setup_callbacks(self) -> None:
        """The importances depend on the classifier only, not on the plane in view or the layer
        selection (napari-matplotlib's defaults): nothing to follow but the theme."""

    def clear(self) -> None:
        self.figure.clear()

    def draw(self) -> None:
        """Draw :attr:`shares` (called by napari-matplotlib inside the theme's style)."""
        fig = self.figure
        fig.set_layout_engine("constrained")
        self._layout = None
        if self.importances is None or not self.families:
            fig.text(0.5, 0.5, "Train a classifier first", ha="center", va="center", fontsize=10, wrap=True)
            self.canvas.setMinimumHeight(FRAME_PX + 2 * ROW_PX)
            return
        import matplotlib

        ax = fig.add_subplot()
        n_rows, n_cols = self.shares.shape
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0, 0, 0, 0))  # no such feature: blank
        self._image = ax.imshow(np.zeros((n_rows, n_cols)), cmap=cmap, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(n_cols), [("none" if s is None else f"{s:g}") for s in self.scales])
        ax.set_yticks(range(n_rows), [self._row_label(f) for f in self.families])
        ax.tick_params(labelsize=8, length=2)
        ax.set_xlabel("scale σ (px)", fontsize=8)
        fig.suptitle("share of importance (%)", fontsize=9)
        # cell borders as two line collections (minor ticks and a grid cost ~10x more to draw)
        ax.hlines(np.arange(-0.5, n_rows), -0.5, n_cols - 0.5, color="#808080", linewidth=0.5)
        ax.vlines(np.arange(-0.5, n_cols), -0.5, n_rows - 0.5, color="#808080", linewidth=0.5)
        self._cells = {(i, j): ax.text(j, i, "", ha="center", va="center", fontsize=7)
                       for i in range(n_rows) for j in range(n_cols)}
        self._layout = self._layout_key()
        self._fill()
        self.canvas.setMinimumHeight(FRAME_PX + ROW_PX * n_rows)

    def _layout_key(self):
        return (tuple(self.families), tuple(self.scales), tuple(self._row_label(f) for f in self.families))

    def _fill(self) -> None:
        """Put :attr:`shares` into the drawn image and cell texts."""
        finite = self.shares[np.isfinite(self.shares)]
        vmax = max(float(finite.max()) * 100 if finite.size else 1.0, 1e-9)
        self._image.set_data(np.ma.masked_invalid(100 * self.shares))
        self._image.set_clim(0, vmax)
        for (i, j), text in self._cells.items():
            pct = 100 * self.shares[i, j]
            text.set_text("" if not np.isfinite(pct) else (f"{pct:.0f}" if pct >= 0.5 else "·"))
            text.set_color("black" if pct > 0.6 * vmax else "white")

    def _row_label(self, family: str) -> str:
        if family == "autocontext" and self.importances is not None:
            return f"stage {self.importances.stage - 1} output"
        return FAMILY_LABELS.get(family, family)

    # ------------------------------------------------------------ refresh
    def schedule_refresh(self) -> None:
        """Refresh soon (after a burst of Live retrainings, once); while hidden, when next shown."""
        self._timer.start()

    def _refresh_if_shown(self) -> None:
        if self._busy():
            self._timer.start()  # after the job: its overlay first
        elif self.isVisibleTo(self.window()):  # docked and not hidden (the window itself may be hidden: tests)
            self.refresh()
        else:
            self._stale = True

    def _fit_summary(self) -> None:
        # a word-wrapped label's minimum is one line: reserve the lines it needs at its width, so the
        # dock's layout never lets the canvas draw over it
        w = self.summary.width() if self.summary.width() > 50 else max(200, self.width() - 20)
        self.summary.setMinimumHeight(self.summary.heightForWidth(w))

    def resizeEvent(self, event) -> None:
        self.figure.set_layout_engine("constrained")  # lay the figure out again at the new size
        super().resizeEvent(event)
        self._fit_summary()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._stale:
            self.refresh()

    def _set_stage_choices(self, n_stages: int) -> None:
        if self.stage_combo.count() != n_stages:
            keep = self.stage_combo.currentIndex()
            self.stage_combo.blockSignals(True)
            self.stage_combo.clear()
            for s in range(1, n_stages + 1):
                self.stage_combo.addItem("stage 1 (image features)" if s == 1 else f"stage {s} (+ stage {s - 1} output)")
            self.stage_combo.setCurrentIndex(keep if 0 <= keep < n_stages else 0)
            self.stage_combo.blockSignals(False)
        for w in (self.stage_label, self.stage_combo):
            w.setVisible(n_stages > 1)

    def refresh(self) -> None:
        """Read the current classifier's importances and redraw."""
        self._stale = False
        seg = self._source()
        imp = None
        message = NO_MODEL
        if seg is not None and getattr(seg, "is_fitted", False):
            self._set_stage_choices(seg.n_stages)
            try:
                imp = seg.feature_importances(stage=self.stage_combo.currentIndex() + 1)
            except VitsegError as e:
                message = str(e)
        else:
            self._set_stage_choices(0)
        self.importances = imp
        if imp is None:
            self.families, self.scales, self.shares = [], [], np.zeros((0, 0))
            self.summary.setText(message)
            self.summary.setToolTip("")
        else:
            self.families, self.scales, self.shares = imp.grid()
            self.summary.setText(imp.summary())
            self.summary.setToolTip(f"Measure: {_METHOD_WORDS.get(imp.method, imp.method)}. Cells: share of the "
                                    "classifier's importance, summed over the image channels.")
        self._fit_summary()
        if imp is not None and getattr(self, "_layout", None) == self._layout_key():
            # same rows and columns (a retraining): new numbers only, in the same layout (the
            # constrained layout and new axes would take half of the drawing time)
            self.figure.set_layout_engine("none")
            self._fill()
            self.canvas.draw_idle()
        else:
            self._draw()
