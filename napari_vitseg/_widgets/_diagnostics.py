"""The Diagnostics dock widget: what a ViT backbone does to *your* images.

Pick one or more backbones and image layers and press *Run*. In a worker thread the widget runs
:func:`napari_vitseg.diagnostics.iter_diagnose` (positional-bias linear probe, per-block token norms,
SINDER defect angles, PCA-RGB) and then shows

- plots: R² per probe target with the backbones side by side, R² through the blocks, the
  channels x blocks "fingerprint" heat-map, and the token-norm histograms;
- layers aligned with each image: the token-norm map, the flagged high-norm tokens (Labels),
  the angle to the SINDER defect direction and the PCA-RGB of the final features. The norm,
  flag and angle layers show one block (the *block* box; the last one by default).

The widget is thin: all numbers come from :mod:`napari_vitseg.diagnostics`, run by the
widgets' job runner (:mod:`napari_vitseg._widgets._jobs`).
"""

from __future__ import annotations

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
from ..backbones import NO_WEIGHTS_NOTICE, available_backbones, get_backbone_cfg, list_backbones
from . import _notify
from ._compat import avoid_triton_crash
from ._controller import random_weights_allowed
from ._jobs import Job, JobRunner, JobTexts

__all__ = ["DiagnosticsWidget", "RANDOM_LABEL"]

RANDOM_LABEL = "random weights (testing)"
#: Status texts of the diagnostics job.
TEXTS = JobTexts(started="starting…", progress="{msg}", cancelling="cancelling…", cancelled="cancelled",
                 busy="Diagnostics are already running; press Cancel first.")


class _Canvas(QWidget):
    """A matplotlib figure in a Qt widget (``matplotlib.backends.backend_qtagg``)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(5, 3.5), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(420)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)

    def draw(self) -> None:
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
        root.addWidget(gb)

        # -- images -------------------------------------------------------------------------
        gi = QGroupBox("Image layers (homogeneous images for the probe)")
        vi = QVBoxLayout(gi)
        self.image_list = QListWidget()
        self.image_list.setMaximumHeight(80)
        vi.addWidget(self.image_list)
        root.addWidget(gi)

        # -- options ------------------------------------------------------------------------
        form = QFormLayout()
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
        self.angles_check = QCheckBox("angle to SINDER defect direction")
        self.angles_check.setChecked(True)
        form.addRow(self.angles_check)
        self.shared_pca_check = QCheckBox("one PCA basis for all images")
        self.shared_pca_check.setChecked(True)
        form.addRow(self.shared_pca_check)
        root.addLayout(form)

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
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        root.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        self.jobs = JobRunner(set_status=self._set_status, progress_bar=self.progress, cancel_button=self.cancel_btn,
                              texts=TEXTS, on_busy_changed=lambda busy: self.run_btn.setEnabled(not busy))

        # -- results ------------------------------------------------------------------------
        row2 = QHBoxLayout()
        row2.addWidget(QLabel("block shown in layers"))
        self.block_spin = QSpinBox()
        self.block_spin.setRange(-1, -1)
        self.block_spin.setSpecialValueText("last")
        self.block_spin.setValue(-1)
        self.block_spin.valueChanged.connect(self._update_layers)
        row2.addWidget(self.block_spin)
        row2.addWidget(QLabel("norm plot of"))
        self.norms_combo = QComboBox()
        self.norms_combo.currentIndexChanged.connect(self._draw_norms)
        row2.addWidget(self.norms_combo, 1)
        root.addLayout(row2)
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
        if not have and not random:
            self.status.setText(NO_WEIGHTS_NOTICE)

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

    def _on_layer_removed(self, event=None):
        gone = getattr(event, "value", None)
        self._layers = {k: v for k, v in self._layers.items() if v is not gone and v in self.viewer.layers}
        self._refresh_images()

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
        if not backbones:
            _notify.show_error("Choose at least one backbone (one with weights, or tick random weights for testing).")
            return None
        if not names:
            _notify.show_error("Choose at least one image layer.")
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
        for i, img in enumerate(res.images):
            src = self._sources[i] if i < len(self._sources) else None
            ext = self._extent(i, src) if src is not None and src in self.viewer.layers else res.extent(i)
            for bd in res.results:
                a = bd.norms.per_image[i]
                b = block % len(bd.norms.layers)
                tag = f"{img.name} · {{}} · {bd.backbone}"
                self._put((img.name, bd.backbone, "norm"), a["norms"][b], "image",
                          name=tag.format("token norm"), colormap="inferno", opacity=0.7, **ext)
                self._put((img.name, bd.backbone, "flagged"), a["flagged"][b].astype(np.uint8), "labels",
                          name=tag.format("high-norm tokens"), opacity=0.6, **ext)
                if a["angles"] is not None:
                    lay = self._put((img.name, bd.backbone, "angle"), a["angles"][b], "image",
                                    name=tag.format("angle to defect dir."), colormap="viridis",
                                    contrast_limits=(0, 90), opacity=0.7, visible=False, **ext)
                    lay.contrast_limits = (0, 90)
                self._put((img.name, bd.backbone, "pca"), bd.pca[i], "image",
                          name=tag.format("PCA-RGB"), rgb=True, visible=False, **ext)
                for kind in ("norm", "flagged", "angle"):
                    layer = self._layers.get((img.name, bd.backbone, kind))
                    if layer is not None:
                        layer.metadata["vitseg_diagnostics"]["block"] = b
