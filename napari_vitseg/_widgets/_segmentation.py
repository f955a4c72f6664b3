"""The trainable-segmentation dock widget.

Paint scribbles in a Labels layer (one label per class), press *Train* or tick *Live*, and
the segmentation, its uncertainty (1 - max probability) and optionally the per-class
probabilities appear as layers that are updated in place. Classifiers are saved to and
loaded from the library's classifier file and batch-applied to the whole stack or to TIFF
files.

The widget is thin. Where things are:

- ``_sections.py``: the boxes of the dock (input layers, class table, feature and classifier
  fields, action buttons); the field sections write the controller's settings;
- ``_controller.py``: :class:`~napari_vitseg._widgets._controller.SegmentationController`,
  the Qt-free state and job generators (which call :mod:`napari_vitseg.pipeline`);
- ``_jobs.py``: the job runner (one job at a time in a ``thread_worker``, supersede rules,
  cancel, progress, errors);
- ``_layers.py``: the output layers (numpy for small images, on-disk zarr stores for big
  stacks) and the class names / colours written to layers;
- this module: :class:`SegmentationWidget`, which lays them out (Input and Actions, then the
  feature and classifier fields folded under *Advanced*, in a vertical scroll area; the
  progress bar and status line below it, always in view on a 1366 x 768 screen), keeps the
  class table following every label painted, the channel axis guessed and the scribbles
  carried across a channel-axis change, keeps the controller's
  scribbles index in sync with the scribbles layer's edits, checks memory before heavy jobs,
  captures a job's inputs on the UI thread, and draws what the jobs yield.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFrame,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .._sample_data import class_colormap
from .._validation import VitsegError
from ..io._atomic import same_file
from ..pipeline import DEFAULT_COLORS
from ..pipeline.project import (
    PROJECT_SUFFIX,
    Project,
    ProjectChannel,
    extracted_classifier,
    image_fingerprint,
    load_project,
    save_project,
)
from . import _notify
from ._compat import return_large_frees
from ._controller import (
    RGB_CLASS_COLORS,
    WIDGET_CACHE_BYTES,
    JobInputs,
    ModelReady,
    PlaneUpdate,
    SegmentationController,
    Status,
    carry_scribbles,
    suggest_region,
)
from ._jobs import Job, JobRunner
from ._layers import (
    EXPORTS,
    ClassLegend,
    ClassShortcuts,
    ExportPlan,
    OutputLayers,
    iter_export,
    layer_data,
    write_classes,
)
from ._sections import (
    ActionsSection,
    ClassesSection,
    ClassifierSection,
    FeaturesSection,
    InputSection,
)

__all__ = ["LIVE_DEBOUNCE_MS", "SegmentationWidget", "VerticalScrollArea"]

#: Debounce between the end of a brush stroke and the live retraining, in ms.
LIVE_DEBOUNCE_MS = 150
#: Jobs the widget starts by itself: a newer one makes a running one stale.
BACKGROUND_JOBS = ("live", "predict")
#: Jobs that a user action (Train, Apply, Save, Load) cancels: its result would supersede theirs.
SUPERSEDABLE_JOBS = ("live", "predict", "train")


@dataclass
class ProjectStep:
    """Yielded by the *Open project…* job once the project file is read and checked: the UI thread
    opens the image and adds the scribbles, stores the job's inputs (or the error) and sets ``done``."""

    project: Project
    done: threading.Event = field(default_factory=threading.Event)
    inputs: JobInputs | None = None
    error: Exception | None = None

    #: Yielded while the job waits for the UI thread.
    WAITING: ClassVar[object] = object()


class VerticalScrollArea(QScrollArea):
    """Scrolls vertically only: as wide as its widget needs (hints follow the napari theme's
    fonts), as tall as the screen allows."""

    def _hint(self, h):
        w = self.widget()
        if w is None:
            return h
        bar = self.verticalScrollBar().sizeHint().width()
        width = max(w.minimumSizeHint().width(), w.sizeHint().width()) + bar + 2 * self.frameWidth()
        return QSize(width, h.height())

    def setWidget(self, widget):
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, obj, event):
        # the theme's style sheet or an expanded section changed the widget's hints: tell the dock
        if obj is self.widget() and event.type() in (QEvent.LayoutRequest, QEvent.StyleChange,
                                                     QEvent.FontChange, QEvent.Show):
            self.updateGeometry()
        return super().eventFilter(obj, event)

    def minimumSizeHint(self):
        return self._hint(super().minimumSizeHint())

    def sizeHint(self):
        return self._hint(super().sizeHint())


class SegmentationWidget(QWidget):
    """Dock widget: scribbles -> trained classifier -> live segmentation overlay.

    Parameters
    ----------
    napari_viewer : napari.Viewer

    Attributes
    ----------
    controller : SegmentationController
        The headless state and jobs.
    input, classes, features, classifier, actions : sections of the dock
        Their fields are also attributes of the widget (``widget.train_btn``...).
    outputs : OutputLayers
        The segmentation, uncertainty and probabilities layers.
    jobs : JobRunner
    latencies : list of dict
        Live-mode timings, one per live job: ``t_paint`` (the paint event), ``t_start``
        (after the debounce), ``t_first`` (first overlay drawn, a coarse preview on large
        planes) and ``t_final`` (full-resolution overlay drawn), all ``time.perf_counter()``.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        # napari hands plugin widgets a PublicOnlyProxy of the viewer, whose layers are new proxy
        # objects on every access; the widget needs layer identity (which layer is which output)
        # and the Labels undo history length (undo/redo fire no paint event), so it keeps the
        # viewer itself.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        return_large_frees()  # bounded memory on big stacks (see _compat.return_large_frees)
        self.controller = SegmentationController(cache_bytes=WIDGET_CACHE_BYTES)
        self.controller.random_weights = False
        self.latencies: list[dict] = []
        self._last_paint: float | None = None
        self._pending_regions: list = []
        self._pending_rebuild = False
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(0)
        self._flush_timer.timeout.connect(self.sync_scribbles)

        # the sections scroll; the progress bar and the status line stay below them, always in view
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        self.input = InputSection(self.viewer, is_output=lambda layer: self.outputs.owns(layer))
        self.classes = ClassesSection()
        self.input.form.addRow(self.classes)
        self.features = FeaturesSection(self.controller)
        self.classifier = ClassifierSection(self.controller)
        self.actions = ActionsSection(LIVE_DEBOUNCE_MS)
        self.advanced = QCollapsible("Advanced: features and classifier")
        self.advanced.addWidget(self.features)
        self.advanced.addWidget(self.classifier)
        self.importance_btn = QPushButton("Feature importance…")
        self.importance_btn.setToolTip("Open a panel showing which features (family and scale) the trained "
                                       "classifier relies on; it follows every Train and Live retraining.")
        self.advanced.addWidget(self.importance_btn)
        self.importance_panel = None  # the ImportancePanel once opened (show_feature_importance)
        body = QWidget()
        blay = QVBoxLayout(body)
        blay.setContentsMargins(0, 0, 0, 0)
        for section in (self.input, self.actions, self.advanced):
            blay.addWidget(section)
        blay.addStretch(1)
        self.scroll = VerticalScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.scroll.setWidget(body)
        lay.addWidget(self.scroll, 1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(10)
        lay.addWidget(self.progress)
        self.status = QLabel("Paint scribbles of two or more classes, then Train or tick Live.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.status)
        self.outputs = OutputLayers(self.viewer, self.controller, self.input)
        self.jobs = JobRunner(set_status=self.set_status, progress_bar=self.progress,
                              cancel_button=self.actions.cancel_btn, background=BACKGROUND_JOBS,
                              supersedable=SUPERSEDABLE_JOBS)
        self.destroyed.connect(self.jobs.close)  # a job must not touch a closed widget

        # the fields under the names they had before the sections (scripts and tests use them)
        s = self.input
        self.image_combo, self.channel_spin, self.scribbles_combo = s.image_combo, s.channel_spin, s.scribbles_combo
        self.new_scribbles_btn = s.new_scribbles_btn
        self.class_table, self.add_class_btn = self.classes.class_table, self.classes.add_class_btn
        s = self.features
        self.backbone_combo, self.weights_notice, self.upsample_combo = s.backbone_combo, s.weights_notice, s.upsample_combo
        self.classical_check, self.sigmas_edit, self.pca_spin = s.classical_check, s.sigmas_edit, s.pca_spin
        self.pyramid_check, self.spatial_combo, self.z_spin = s.pyramid_check, s.spatial_combo, s.z_spin
        s = self.classifier
        self.clf_combo, self.trees_spin, self.depth_spin = s.clf_combo, s.trees_spin, s.depth_spin
        self.live_fast_check, self.boundary_spin = s.live_fast_check, s.boundary_spin
        s = self.actions
        self.train_btn, self.live_check, self.cancel_btn = s.train_btn, s.live_check, s.cancel_btn
        self.save_btn, self.load_btn = s.save_btn, s.load_btn
        self.save_project_btn, self.open_project_btn = s.save_project_btn, s.open_project_btn
        self.apply_stack_btn, self.apply_files_btn, self.proba_check = s.apply_stack_btn, s.apply_files_btn, s.proba_check
        self.uncertainty_check, self.open_results_check = s.uncertainty_check, s.open_results_check
        self.suggest_btn = s.suggest_btn
        self.channel_hint, self.import_weights_btn = self.input.channel_hint, self.features.import_weights_btn
        self._label_layer = None  # the scribbles layer whose selected label is followed

        self.input.new_scribbles_btn.clicked.connect(self.new_scribbles_layer)
        self.spatial_combo.currentIndexChanged.connect(self._z_step_from_layer)
        self.input.image_changed.connect(self.outputs.mark_stale)
        self.input.image_changed.connect(self._use_palette)
        self.input.channels_changed.connect(lambda msg: msg and self.set_status(msg))
        self.input.channel_axis_changed.connect(self._carry_scribbles)
        self.uncertainty_check.toggled.connect(self.outputs.set_uncertainty_visible)
        self.suggest_btn.clicked.connect(self.suggest_where_to_paint)
        self.importance_btn.clicked.connect(self.show_feature_importance)
        self.features.weights_imported.connect(lambda msg: self.set_status(msg))
        self.input.scribbles_changed.connect(self._on_scribbles_changed)
        self.input.scribbles_edited.connect(self._on_scribbles_edited)
        self.classes.changed.connect(self._on_classes_changed)
        self.classes.label_chosen.connect(self._paint_with)
        self.features.changed.connect(self._on_features_changed)
        self.features.invalid.connect(self._on_invalid_fields)
        self.train_btn.clicked.connect(self.train)
        self.live_check.toggled.connect(self._on_live_toggled)
        self.cancel_btn.clicked.connect(self.cancel)
        self.save_btn.clicked.connect(self.save_classifier)
        self.load_btn.clicked.connect(self.load_classifier)
        self.save_project_btn.clicked.connect(lambda: self.save_project())
        self.open_project_btn.clicked.connect(lambda: self.open_project())
        self.apply_stack_btn.clicked.connect(self.apply_to_stack)
        self.actions.apply_files_requested.connect(lambda kind: self.apply_to_files(kind=kind))
        # issue 14: Alt+number paints with a class, a legend on the canvas, Export…
        self.export_btn = self.actions.export_btn
        self.actions.export_requested.connect(lambda what: self.export_outputs(what))
        self._export_after = None  # (apply job, what, path): export when that Apply to stack ends
        self.legend = ClassLegend(self.viewer)
        self.classes.legend_check.toggled.connect(self.legend.set_visible)
        self.shortcuts = ClassShortcuts(self.viewer, self.choose_class)
        self.classes.set_shortcut_keys(self.shortcuts.bind())

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(LIVE_DEBOUNCE_MS)
        self._debounce.timeout.connect(self._run_live)
        self._plane_timer = QTimer(self)
        self._plane_timer.setSingleShot(True)
        self._plane_timer.setInterval(150)
        self._plane_timer.timeout.connect(self._predict_current_plane)
        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layers_changed)
        ev.removed.connect(self._on_layers_changed)
        ev.reordered.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.input.refresh()
        self.features.apply()
        self.classifier.apply()
        self._use_palette()
        if self.classes.class_table.rowCount() == 0:  # no scribbles layer yet: the classes 'New' will make
            self.classes.set_classes(self.controller.class_names, self.controller.class_colors)

    # ------------------------------------------------------------ state
    def set_status(self, msg: str, error: bool = False) -> None:
        self.status.setText(msg)
        self.status.setStyleSheet("color: #ff6060;" if error else "")

    @property
    def image_layer(self):
        return self.input.image_layer

    def _z_step_from_layer(self, *_) -> None:
        """Choosing 3D filters takes the z step from the image layer's scale (napari's voxel size,
        :meth:`declared_z_step <napari_vitseg._widgets._sections.InputSection.declared_z_step>`)
        when it says something other than 1."""
        if self.spatial_combo.currentData() != "3d":
            return
        step = self.input.declared_z_step()
        if step is not None:
            self.z_spin.setValue(step)

    @property
    def scribbles_layer(self):
        return self.input.scribbles_layer

    def channel_axis(self) -> int | None:
        """The image's channel axis (the last one for RGB), or ``None``."""
        return self.input.channel_axis()

    @property
    def busy(self) -> bool:
        """Whether a job is running or waiting."""
        return self.jobs.busy or self._debounce.isActive()

    @property
    def current_job(self) -> Job | None:
        """The running job, if any."""
        return self.jobs.current

    @property
    def live_debounce_ms(self) -> int:
        """Delay between the end of a stroke and the live retraining (:data:`LIVE_DEBOUNCE_MS`)."""
        return self._debounce.interval()

    @live_debounce_ms.setter
    def live_debounce_ms(self, ms: int) -> None:
        self._debounce.setInterval(int(ms))

    # ------------------------------------------------------------ layers and classes
    def _on_layers_changed(self, event=None) -> None:
        self.outputs.forget_removed()
        self.input.refresh()

    def new_scribbles_layer(self):
        """Add an empty uint8 scribbles layer matching the image, with one colour per class."""
        c = self.controller
        names = c.class_names[:] if len(c.class_names) >= 2 else ["class 1", "class 2"]
        try:
            layer = self.input.new_scribbles_layer(names, c.class_colors)
        except VitsegError as e:
            _notify.show_error(str(e))
            return None
        if self.status.styleSheet():  # an error about the old layer no longer applies
            self.set_status(f"Paint in {layer.name!r}: pick a class in the table, then brush on the image.")
        return layer

    def _on_scribbles_changed(self, layer) -> None:
        if self._label_layer is not None:
            try:
                self._label_layer.events.selected_label.disconnect(self._on_selected_label)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._label_layer = layer
        if layer is None:
            self.classes.set_classes(self.controller.class_names, self.controller.class_colors)
        else:
            layer.events.selected_label.connect(self._on_selected_label)
            self.classes.load_from_layer(layer)
        self._reindex(layer)
        self._follow_labels()

    def _on_selected_label(self, event=None) -> None:
        """napari's ``=`` key or label spin box chose a label beyond the table: add its row now,
        so that it is painted in its own colour."""
        layer = self.input.scribbles_layer
        if layer is not None and 0 < int(layer.selected_label) <= 255:
            self._add_class_rows(int(layer.selected_label))

    def _follow_labels(self) -> None:
        """Give every label found in the scribbles a row of the class table."""
        index = self.controller.scribbles
        if index is not None:
            classes = index.classes()
            if classes:
                self._add_class_rows(int(max(classes)))

    def _add_class_rows(self, label: int) -> None:
        added = self.classes.ensure_classes(label)
        if added:
            which = ", ".join(str(k) for k in added)
            self.set_status(f"Label {which} was not in the class table: added as "
                            f"{', '.join(repr(f'class {k}') for k in added)} (double-click to rename or recolour).")

    def _use_palette(self) -> None:
        """Class colours that stand out on this image (see :data:`RGB_CLASS_COLORS`)."""
        layer = self.input.image_layer
        rgb = layer is not None and (layer.rgb or self.input.channel_axis() is not None)
        palette = tuple(RGB_CLASS_COLORS if rgb else DEFAULT_COLORS)
        old = self.classes.palette
        self.classes.use_palette(palette)
        c = self.controller
        if self.classes.class_table.rowCount() == 0 and old != palette and all(
                col.lower() == old[i % len(old)].lower() for i, col in enumerate(c.class_colors)):
            c.class_colors = [palette[i % len(palette)] for i in range(len(c.class_colors))]

    def _carry_scribbles(self, old_axis, new_axis) -> None:
        """The channel axis changed: bring the painted scribbles to the new geometry (a new
        layer; the old one is hidden, not deleted)."""
        layer, image = self.input.scribbles_layer, self.input.image_layer
        if layer is None or image is None:
            return
        data = layer_data(layer)
        if not np.any(data):
            new = None
        else:
            new = carry_scribbles(data, layer_data(image).shape, old_axis, new_axis)
        if new is None or tuple(new.shape) != self.input.spatial_shape():
            if np.any(data) and tuple(data.shape) != self.input.spatial_shape():
                self.set_status(f"The scribbles {layer.name!r} were painted with another channel axis and do not "
                                "fit this one; set the channel axis back, or press 'New'.", error=True)
            elif not np.any(data) and tuple(data.shape) != self.input.spatial_shape():
                self._replace_scribbles(layer, np.zeros(self.input.spatial_shape(), np.uint8))
            return
        self._replace_scribbles(layer, new.astype(layer.data.dtype, copy=False))
        self.set_status(f"Scribbles kept: {layer.name!r} was redrawn for channel axis "
                        f"{'none' if new_axis is None else new_axis} (the old layer is hidden).")

    def _replace_scribbles(self, old, data) -> None:
        c = self.controller
        names, colors = list(c.class_names), list(c.class_colors)
        new = self.viewer.add_labels(data, name=old.name, colormap=class_colormap(len(names), colors),
                                     metadata={**(old.metadata or {}), "class_names": names},
                                     **self.input.spatial_transform())
        new.brush_size = old.brush_size
        new.selected_label = old.selected_label
        new.mode = "paint"
        old.visible = False
        old.name = f"{old.name} (before channel axis change)"
        idx = self.scribbles_combo.findData(new)
        if idx >= 0:
            self.scribbles_combo.setCurrentIndex(idx)

    # ------------------------------------------------------------ the scribbles index
    def _reindex(self, layer) -> None:
        """Index the scribbles layer plane by plane (a new layer: nothing to read).

        A layer that does not match the image's spatial shape is not read (it cannot be trained
        on; it is indexed when a job needs it and the shapes match).
        """
        c = self.controller
        self._pending_regions, self._pending_rebuild = [], False
        if layer is None or tuple(layer_data(layer).shape) != self.input.spatial_shape():
            c.forget_scribbles()
            return
        try:
            c.index_scribbles(layer_data(layer), empty=self.input.is_fresh(layer), name=f"scribbles {layer.name!r}")
        except VitsegError as e:
            self.set_status(str(e), error=True)

    def _on_scribbles_edited(self, regions) -> None:
        """Note the changed regions (read at the next event-loop turn), then debounce a live retrain.

        The regions are read once the edit is complete: napari fires ``paint`` before it writes
        an edit made outside a stroke (``layer.paint(...)``, ``layer.fill(...)`` from a script).
        """
        if regions is None:
            self._pending_rebuild = True
        else:
            self._pending_regions.extend(regions)
        self._flush_timer.start()
        if self.live_check.isChecked():
            self._last_paint = time.perf_counter()
            self._debounce.start()

    def sync_scribbles(self) -> None:
        """Bring the controller's index up to date with the scribbles layer's pending edits."""
        self._flush_timer.stop()
        self.input.sync_history()  # undo / redo of a hidden layer fire no event
        regions, rebuild = self._pending_regions, self._pending_rebuild
        self._pending_regions, self._pending_rebuild = [], False
        layer = self.input.scribbles_layer
        c = self.controller
        if c.scribbles is None and c.scribbles_error is None:
            rebuild = True  # not indexed yet (picked before an image of its shape was chosen)
        if layer is None or (not regions and not rebuild):
            return
        try:
            if rebuild or c.scribbles is None:
                self._reindex(layer)
            else:
                c.update_scribbles(regions, lambda region: layer.data[region])
        except VitsegError as e:
            self.set_status(str(e), error=True)
            return
        self._follow_labels()

    def rescan_scribbles(self) -> None:
        """Index the scribbles layer again (after writing into ``layer.data`` in place from a
        script, which napari does not report; ``layer.data = ...`` and painting are seen)."""
        self._reindex(self.input.scribbles_layer)

    def class_names(self) -> list[str]:
        """Class names 1..K as shown in the table."""
        return self.classes.names()

    def set_class_color(self, label: int, color: str) -> None:
        """Set the colour of class ``label`` (1-based) in the table and the layers."""
        self.classes.set_color(label, color)

    def add_class(self) -> None:
        """Append a class (next label, next default colour) and select it for painting."""
        self.classes.add_class()

    def _on_classes_changed(self) -> None:
        self.controller.class_names = self.classes.names()
        self.controller.class_colors = self.classes.colors()
        self._sync_layer_classes()
        self.outputs.name_classes()
        self.legend.show(self.controller.class_names, self.controller.class_colors)

    def _sync_layer_classes(self) -> None:
        """Write class names and colours to the scribbles and the segmentation."""
        for layer in (self.input.scribbles_layer, self.outputs.layers.get("labels")):
            if layer is not None:
                write_classes(layer, self.controller.class_names, self.controller.class_colors)

    def _paint_with(self, label: int) -> None:
        layer = self.input.scribbles_layer
        if layer is not None:
            layer.selected_label = label
            if layer.mode not in ("paint", "fill"):
                layer.mode = "paint"
            self.viewer.layers.selection.active = layer

    def _on_invalid_fields(self, msg: str) -> None:
        self.set_status(msg, error=True)
        if not self.advanced.isExpanded():
            self.advanced.expand(animate=False)  # show the field the message is about

    def _on_features_changed(self) -> None:
        self.outputs.mark_stale()
        self.set_status("Features changed: retrain (Train or a stroke in Live mode).")

    def _set_fields_from_model(self, seg) -> None:
        """Show a loaded classifier's feature config, classifier and classes in the fields."""
        self.features.show_config(seg.feature_config, random=self.controller.random_weights)
        self.classifier.show_model(seg.classifier, seg.classifier_params, seg.boundary_refinement)
        if seg.class_names:
            self.classes.set_classes(seg.class_names, seg.class_colors or DEFAULT_COLORS[: len(seg.class_names)])

    # ------------------------------------------------------------ inputs
    def _inputs(self, *, need_scribbles: bool, need_image: bool = True) -> JobInputs:
        """Capture the job inputs on the UI thread (see :meth:`InputSection.job_inputs`).

        Raises
        ------
        VitsegError
            Invalid feature fields, missing image, scribbles of another shape.
        """
        if self.features.error:
            raise VitsegError(self.features.error)
        self.sync_scribbles()
        c = self.controller
        return self.input.job_inputs(need_scribbles=need_scribbles, need_image=need_image,
                                     probabilities=self.proba_check.isChecked(), snapshot=c.scribbles_snapshot,
                                     scribbles_error=c.scribbles_error)

    def _check_memory(self, kind: str, inputs: JobInputs) -> None:
        """Refuse a job that would not fit in memory (counts the output layers kept in memory).

        Raises
        ------
        VitsegError
            Pointing at *Apply to files…*.
        """
        c = self.controller
        spatial = self.input.spatial_shape()
        k = max(2, len(c.class_names))
        if c.model is not None and c.model.segmenter.is_fitted:
            k = len(c.model.segmenter.classes_)
        # numpy output layers are allocated whole, whether one plane or all are drawn
        outputs = self.outputs.memory_needed(spatial, probabilities=inputs.probabilities, k=k)
        c.check_memory(kind, inputs, outputs_bytes=outputs)

    # ------------------------------------------------------------ actions
    def train(self):
        """Train the full-quality classifier and segment the current plane."""
        try:
            inputs = self._inputs(need_scribbles=True)
            self._check_memory("train", inputs)
        except VitsegError as e:
            return self._fail(e)
        return self._request("train", lambda: self.controller.iter_train(inputs, live=False))

    def _on_live_toggled(self, on: bool) -> None:
        if on:
            self._last_paint = time.perf_counter()
            self._run_live()
        else:
            self._debounce.stop()
            job = self.jobs.current
            if job is not None and job.kind == "live":
                job.cancel()

    def _run_live(self) -> None:
        if not self.live_check.isChecked():
            return
        try:
            inputs = self._inputs(need_scribbles=True)
            self._check_memory("live", inputs)
        except VitsegError as e:
            self.set_status(f"Live: {e}", error=True)
            return
        self._request("live", lambda: self.controller.iter_train(inputs, live=True), t_request=self._last_paint)

    def _on_step(self, event=None) -> None:
        """Another plane of a stack in view: predict it with the current model (after Train, Load
        or Live), unless it is shown already."""
        shape = self.input.spatial_shape()
        if shape is None or len(shape) != 3 or self.controller.model is None:
            return
        self._plane_timer.start()

    def _predict_current_plane(self) -> None:
        z = self.input.current_z()
        if z is None or z in self.outputs.predicted or self.controller.model is None:
            return
        try:
            inputs = self._inputs(need_scribbles=False)
        except VitsegError as e:
            return self._fail(e)
        seg = self.controller.model.segmenter
        self._request("predict", lambda: self.controller.iter_predict_plane(seg, inputs, coarse=True))

    def suggest_where_to_paint(self, window: int = 64):
        """Centre the view on the most uncertain region of the plane in view (see
        :func:`~napari_vitseg._widgets._controller.suggest_region`) and show the uncertainty.

        Returns
        -------
        (y, x) or None
            The region's centre in pixels of the plane, or ``None`` (nothing predicted yet).
        """
        unc = self.outputs.layers.get("uncertainty")
        z = self.input.current_z()
        if unc is None or unc not in self.viewer.layers or (z is None) != (unc.data.ndim == 2) \
                or (z is not None and z not in self.outputs.predicted):
            self.set_status("Nothing to suggest yet: press Train (or tick Live) to segment this plane first.")
            return None
        plane = np.asarray(unc.data[z] if z is not None else unc.data)
        labelled = None
        scr = self.input.scribbles_layer
        if scr is not None and tuple(scr.data.shape) == tuple(unc.data.shape):
            labelled = np.asarray(scr.data[z] if z is not None else scr.data) != 0
        found = suggest_region(plane, window=window, labelled=labelled)
        if found is None:
            self.set_status("The classifier is sure everywhere on this plane: nothing to suggest.")
            return None
        y, x, mean = found
        point = (z, y, x) if z is not None else (y, x)
        world = unc.data_to_world(point)
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 (viewer.camera before)
        camera = scene.camera if scene is not None else self.viewer.camera
        camera.center = tuple(world[-2:]) if self.viewer.dims.ndisplay == 2 else tuple(world)
        side = max(1.0, window * 4 * float(min(unc.scale[-2:])))
        canvas = getattr(self.viewer, "_canvas_size", None)  # zoom: the region takes ~1/4 of the canvas
        if canvas is not None and min(canvas) > 1:
            camera.zoom = max(camera.zoom, min(canvas) / side)
        self.uncertainty_check.setChecked(True)
        where = f"plane {z}, " if z is not None else ""
        self.set_status(f"Least sure around ({where}row {y}, column {x}): mean uncertainty {mean:.2f}. "
                        "Paint the right class there.")
        return y, x

    def apply_to_stack(self):
        """Segment every plane of the image layer (a full model is trained first if needed)."""
        try:
            inputs = self._inputs(need_scribbles=False)
            self._check_memory("apply", inputs)
        except VitsegError as e:
            return self._fail(e)
        return self._request("apply", lambda: self.controller.iter_apply_stack(inputs), napari_progress=True)

    def apply_to_files(self, kind: str = "files"):
        """Segment TIFF files (or a folder of TIFFs) into an output folder, in the background."""
        paths = self.ask_input_paths(kind)
        if not paths:
            return None
        out = self.ask_output_dir()
        if not out:
            return None
        try:
            inputs = self._inputs(need_scribbles=False, need_image=False)
        except VitsegError as e:
            return self._fail(e)
        probs = self.proba_check.isChecked()
        return self._request("files", lambda: self.controller.iter_apply_files(inputs, paths, out, probabilities=probs),
                             napari_progress=True)

    def save_classifier(self):
        """Save the classifier (full quality) to a file chosen in a dialog."""
        path = self.ask_save_path()
        if not path:
            return None
        try:
            inputs = self._inputs(need_scribbles=False, need_image=self.controller.model is None)
        except VitsegError as e:
            return self._fail(e)
        inputs.extra["source_paths"] = [  # the files the layers came from: Save must not write over them
            p for layer in self.viewer.layers
            for p in (getattr(getattr(layer, "source", None), "path", None), (layer.metadata or {}).get("path"))
            if isinstance(p, str) and p]
        self.controller.class_names = self.class_names()
        return self._request("save", lambda: self.controller.iter_save(inputs, path))

    def load_classifier(self):
        """Load a classifier file, show its settings and segment the current plane with it."""
        path = self.ask_open_path()
        if not path:
            return None
        try:
            inputs = self._inputs(need_scribbles=False, need_image=False)
        except VitsegError as e:
            return self._fail(e)
        return self._request("load", lambda: self.controller.iter_load(inputs, path))

    # dialogs (public so that tests and scripts can replace them)
    def default_save_path(self) -> str:
        """``<image name>.vitseg`` beside the image's file (its source path or reader metadata),
        else in the working folder."""
        layer = self.input.image_layer
        if layer is None:
            return "classifier.vitseg"
        src = getattr(getattr(layer, "source", None), "path", None) or (layer.metadata or {}).get("path")
        if src:
            src = Path(src)
            stem = src.name.split(".")[0] if src.is_file() or src.suffix else src.name
            return str(src.parent / f"{stem}.vitseg")
        return f"{layer.name}.vitseg"

    def ask_save_path(self) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, "Save classifier", self.default_save_path(),
                                              "napari-vitseg classifier (*.vitseg);;All files (*)")
        return path or None

    def ask_open_path(self) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self, "Load classifier", str(Path(self.default_save_path()).parent),
                                              "napari-vitseg classifier (*.vitseg);;All files (*)")
        return path or None

    def ask_input_paths(self, kind: str = "files") -> list[str] | None:
        if kind == "folder":
            d = QFileDialog.getExistingDirectory(self, "Folder of TIFF files to segment")
            return [d] if d else None
        files, _ = QFileDialog.getOpenFileNames(self, "TIFF files to segment", "", "TIFF (*.tif *.tiff);;All files (*)")
        return files or None

    def ask_output_dir(self) -> str | None:
        d = QFileDialog.getExistingDirectory(self, "Output folder for the segmentations")
        return d or None

    # ------------------------------------------------------------ projects
    @staticmethod
    def image_source(layer) -> str | None:
        """The file a layer was opened from (``layer.source.path``, or our reader's ``metadata['path']``)."""
        src = getattr(getattr(layer, "source", None), "path", None) or (layer.metadata or {}).get("path")
        return str(src) if isinstance(src, (str, Path)) and str(src) else None

    def default_project_path(self) -> str:
        """``<image name>.vitseg-project`` beside the image's file (where *Save…* proposes the classifier)."""
        p = Path(self.default_save_path())
        return str(p.with_name(p.name[: -len(p.suffix)] if p.suffix else p.name)) + PROJECT_SUFFIX

    def ask_project_save_path(self) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, "Save project", self.default_project_path(),
                                              f"napari-vitseg project (*{PROJECT_SUFFIX});;All files (*)")
        if path and not Path(path).suffix:
            path += PROJECT_SUFFIX
        return path or None

    def ask_project_open_path(self) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self, "Open project", str(Path(self.default_project_path()).parent),
                                              f"napari-vitseg project (*{PROJECT_SUFFIX});;All files (*)")
        return path or None

    def save_project(self, path: str | None = None):
        """Save the session as a project file (:mod:`napari_vitseg.pipeline.project`): the image
        layer's file, its channel axis and reader (or, with several image layers used as channels,
        every one of them in channel order: file, reader, name, shape, pixel fingerprint), the
        scribbles, the class table and the trained classifier (full quality: a live preview is
        retrained first, as *Save…* does).

        The image (every channel layer) must come from a file (a project refers to it);
        otherwise the status line says so and nothing is written.

        Returns
        -------
        Job or None
        """
        layer = self.input.image_layer
        if layer is None:
            return self._fail(VitsegError("There is no image layer to save in a project: open an image file first "
                                          "(File > Open)."))
        channel_layers = self.input.channel_layers()
        if len(channel_layers) < 2:
            channel_layers = []
        for lay in channel_layers or [layer]:
            if not self.image_source(lay):
                self.set_status(f"The image {lay.name!r} was not opened from a file, and a project refers to its "
                                "image on disk: save it (File > Save Selected Layers…), open that file, then Save "
                                "project….", error=True)
                return None
        if channel_layers:
            layer = channel_layers[0]
        src = self.image_source(layer)
        path = path or self.ask_project_save_path()
        if not path:
            return None
        try:
            inputs = self._inputs(need_scribbles=False)
            scr = self.input.scribbles_layer
            if scr is not None and tuple(layer_data(scr).shape) != self.input.spatial_shape():
                raise VitsegError(f"The scribbles layer {scr.name!r} has shape {tuple(layer_data(scr).shape)} but the "
                                  f"image {layer.name!r} has spatial shape {self.input.spatial_shape()}; pick the "
                                  "matching scribbles layer, then Save project… again.")
        except VitsegError as e:
            return self._fail(e)
        project = Project(image_path=src, scribbles=layer_data(scr) if scr is not None else None,
                          class_names=self.class_names(), class_colors=self.classes.colors(),
                          channel_axis=None if channel_layers else self.channel_axis(),  # layers: one channel each
                          image_reader=getattr(getattr(layer, "source", None), "reader_plugin", None),
                          image_name=layer.name, scribbles_name=scr.name if scr is not None else None)
        channels = [(ProjectChannel(self.image_source(lay), name=lay.name, shape=tuple(layer_data(lay).shape),
                                    reader=getattr(getattr(lay, "source", None), "reader_plugin", None)),
                     layer_data(lay)) for lay in channel_layers]
        sources = [p for lay in self.viewer.layers if (p := self.image_source(lay))]
        has_model = self.controller.model is not None

        def job():
            seg = None
            if has_model:  # the full-quality model (trained first when the current one is a live preview)
                seg = (yield from self.controller.iter_full_model(inputs)).segmenter
            yield Status(f"saving {Path(path).name}")
            chans = [dataclasses.replace(ch, fingerprint=image_fingerprint(data)) for ch, data in channels]
            return save_project(path, dataclasses.replace(project, segmenter=seg, channels=chans), inputs=sources)

        return self.jobs.request("save project", job, on_yielded=self._on_yielded, on_returned=self._project_message,
                                 uses_torch=lambda: has_model and self.controller.feature_config.backbone is not None)

    def open_project(self, path: str | None = None):
        """Open a project file: open its image (found beside the project first, then at its absolute
        path; a layer already showing that file is reused), set its channel axis, add the scribbles
        layer with the class names and colours, restore the class table, and load the classifier
        (then segment the plane in view, ready for Live / Apply).

        One background job: the project is read and checked in the worker thread, the layers are
        made on the UI thread (:class:`ProjectStep`), then the classifier is loaded in the worker.
        A missing image, a damaged or foreign project, or scribbles that no longer fit the image
        end in the status line; the viewer is left as it was, except for an image layer opened
        before the scribbles were found not to fit.

        Returns
        -------
        Job or None
        """
        path = path or self.ask_project_open_path()
        if not path:
            return None
        name = Path(path).name
        return self.jobs.request("open project", lambda: self._iter_open_project(str(path)),
                                 on_yielded=self._on_project_yielded,
                                 on_returned=lambda job, value: self._project_message(job, value, name),
                                 uses_torch=True)

    def _iter_open_project(self, path: str):
        name = Path(path).name
        yield Status(f"reading {name}")
        project = load_project(path, classifier=False)
        if not project.image_found:
            raise VitsegError(project.missing_image_message(path))
        step = ProjectStep(project)
        yield step
        while not step.done.wait(0.05):
            yield ProjectStep.WAITING  # a yield lets Cancel stop the job
        if step.error is not None:
            raise step.error
        if not project.has_classifier:
            return None
        names, colors = list(project.class_names), list(project.class_colors)
        with extracted_classifier(path) as clf:
            it = self.controller.iter_load(step.inputs, clf)
            ready = None
            try:
                while True:
                    try:
                        value = next(it)
                    except StopIteration:
                        break
                    except VitsegError as e:
                        raise VitsegError(str(e).replace(str(clf), f"{path}:classifier.vitseg")) from None
                    if isinstance(value, ModelReady):
                        value.segmenter.set_classes(names, colors)
                        value = ready = dataclasses.replace(
                            value, description=f"opened project {name} ({value.segmenter.classifier})",
                            loaded_from=str(path))
                    yield value
            finally:
                it.close()
        return ready

    def _on_project_yielded(self, job: Job, value) -> None:
        if value is ProjectStep.WAITING:
            return
        if not isinstance(value, ProjectStep):
            return self._on_yielded(job, value)
        try:  # the UI thread's part of opening a project: layers, fields, the job's inputs
            self._open_project_image(value.project)
            self._add_project_scribbles(value.project)
            self.controller.model = None  # the model of the session before
            self.outputs.mark_stale()
            if value.project.has_classifier:
                value.inputs = self._inputs(need_scribbles=False)
        except Exception as e:  # noqa: BLE001 - raised by the job, which reports it
            value.error = e
        finally:
            value.done.set()

    def _open_image_file(self, p: Path, reader: str | None, what: str = "image", **kwargs) -> list:
        """The image layers that napari opens from ``p`` (with ``reader`` first, then napari's
        reader, then napari's choice; ``kwargs`` such as ``channel_axis`` go to ``viewer.open``).

        Raises
        ------
        VitsegError
            Not a file or folder, or no reader opens it as an image.
        """
        from napari.layers import Image

        if not (p.is_file() or p.is_dir()):
            raise VitsegError(f"The project's {what} {str(p)!r} is not a file or folder (a device, pipe or socket?); "
                              "refusing to open it.")
        error = None
        for plugin in dict.fromkeys((reader, "napari", None)):
            try:
                layers = self.viewer.open(str(p), plugin=plugin, **kwargs)
            except Exception as e:  # noqa: BLE001 - any reader's failure: try the next one
                error = e
                continue
            images = [lay for lay in layers if isinstance(lay, Image)]
            if images:
                return images
            for lay in layers:  # opened, but not as an image (e.g. labels): not ours to keep
                self.viewer.layers.remove(lay)
        why = f" ({str(error).splitlines()[0][:120]})" if error is not None else ""
        raise VitsegError(f"napari could not open the project's {what} {str(p)!r} as an image{why}; open it "
                          "with File > Open, then Open project… again (the open layer is used).")

    def _open_project_channels(self, project: Project) -> list:
        """The project's channel layers (:attr:`Project.channels`), in channel order.

        An open image layer from the same file with the same pixels (shape and
        :func:`~napari_vitseg.pipeline.project.image_fingerprint`) is reused; otherwise each file
        is opened once with the reader that opened it before, and its layers are matched to the
        channels by fingerprint. A file that opens as one layer with one more axis than the
        channels (a multichannel file opened with napari's ``channel_axis``, which is not
        recorded on the layers) is opened again split along the axis whose planes match.
        Layers opened here get their saved names back (unless a layer of that name exists).

        Raises
        ------
        VitsegError
            A file is missing or unreadable, or holds no layer with a channel's pixels (the
            image changed since the project was saved). The layers opened here are removed then.
        """
        from napari.layers import Image

        fingerprints: dict[int, str | None] = {}

        def fingerprint(lay) -> str | None:
            if id(lay) not in fingerprints:
                data = layer_data(lay)
                fingerprints[id(lay)] = image_fingerprint(data) if data.ndim in (2, 3) else None
            return fingerprints[id(lay)]

        chosen, opened, tried = [], [], set()

        def pick(ch, p: Path):
            fits = [lay for lay in self.viewer.layers
                    if isinstance(lay, Image) and not lay.rgb and not self.outputs.owns(lay)
                    and not any(lay is c for c in chosen) and tuple(layer_data(lay).shape) == tuple(ch.shape)
                    and (src := self.image_source(lay)) and same_file(src, p)
                    and (ch.fingerprint is None or fingerprint(lay) == ch.fingerprint)]
            return next((lay for lay in fits if lay.name == ch.name), fits[0] if fits else None)

        def split_axis(layers, ch):
            """(layer, axis) of a layer whose planes along one axis hold this channel."""
            for lay in layers:
                data = layer_data(lay)
                shape = tuple(data.shape)
                if len(shape) != len(ch.shape) + 1:
                    continue
                for a in range(len(shape)):
                    if shape[:a] + shape[a + 1:] != tuple(ch.shape):
                        continue
                    if ch.fingerprint is None or any(
                            image_fingerprint(data[(slice(None),) * a + (k,)]) == ch.fingerprint
                            for k in range(shape[a])):
                        return lay, a
            return None

        try:
            for i, ch in enumerate(project.channels):
                p = Path(ch.path)
                layer = pick(ch, p)
                if layer is None and p.resolve() not in tried:
                    tried.add(p.resolve())
                    new = self._open_image_file(p, ch.reader, "channel layer")
                    opened += new
                    layer = pick(ch, p)
                    split = split_axis(new, ch) if layer is None else None
                    if split is not None:
                        whole, axis = split
                        plugin = getattr(getattr(whole, "source", None), "reader_plugin", None) or ch.reader
                        opened.remove(whole)
                        self.viewer.layers.remove(whole)
                        opened += self._open_image_file(p, plugin, "channel layer", channel_axis=axis)
                        layer = pick(ch, p)
                if layer is None:
                    raise VitsegError(
                        f"Channel {i} of the project (layer {ch.name!r}, shape {tuple(ch.shape)}) is not in "
                        f"{str(p)!r}: the image changed since the project was saved; open the images it was made "
                        "with.")
                chosen.append(layer)
        except BaseException:
            for lay in opened:
                if lay in self.viewer.layers:
                    self.viewer.layers.remove(lay)
            raise
        names = {lay.name for lay in self.viewer.layers}
        for lay, ch in zip(chosen, project.channels, strict=True):
            if ch.name and lay.name != ch.name and ch.name not in names and any(lay is o for o in opened):
                names.discard(lay.name)
                lay.name = ch.name
                names.add(ch.name)
        return chosen

    def _open_project_image(self, project: Project):
        """The project's image layer, chosen in the Input box with the project's channel axis (opened
        with the reader that opened it before, else napari's choice; reused when already open), or
        its channel layers combined (:meth:`_open_project_channels`, then
        :meth:`InputSection.set_channel_layers`).

        Returns
        -------
        napari.layers.Image
            The Image layer (the first channel layer).

        Raises
        ------
        VitsegError
            Not a file or folder, or no reader opens it as an image; a channel not found.
        """
        from napari.layers import Image

        if project.channels:
            layers = self._open_project_channels(project)
            # the scribbles come from the project: nothing to carry over from the layer chosen before
            self.input.channel_axis_changed.disconnect(self._carry_scribbles)
            try:
                self.input.set_channel_layers(layers)
            finally:
                self.input.channel_axis_changed.connect(self._carry_scribbles)
            return self.input.image_layer
        p = Path(project.image_path)
        if not (p.is_file() or p.is_dir()):
            raise VitsegError(f"The project's image {str(p)!r} is not a file or folder (a device, pipe or socket?); "
                              "refusing to open it.")
        image = next((lay for lay in self.viewer.layers if isinstance(lay, Image) and not self.outputs.owns(lay)
                      and (src := self.image_source(lay)) and same_file(src, p)), None)
        if image is None:
            image = self._open_image_file(p, project.image_reader)[0]
        self.input.set_channel_layers([])  # one image layer, whatever was combined before
        idx = self.image_combo.findData(image)
        if idx >= 0:
            self.image_combo.setCurrentIndex(idx)
        if not image.rgb and self.channel_axis() != project.channel_axis:
            # the scribbles come from the project: nothing to carry over from the layer chosen before
            self.input.channel_axis_changed.disconnect(self._carry_scribbles)
            try:
                self.channel_spin.setValue(-1 if project.channel_axis is None else project.channel_axis)
            finally:
                self.input.channel_axis_changed.connect(self._carry_scribbles)
        return image

    def _add_project_scribbles(self, project: Project) -> None:
        """Add the project's scribbles as a Labels layer (chosen in the Input box) and its classes.

        Raises
        ------
        VitsegError
            The scribbles do not fit the image's spatial shape.
        """
        names, colors = list(project.class_names), list(project.class_colors)
        if project.scribbles is not None:
            shape = self.input.spatial_shape()
            if tuple(project.scribbles.shape) != shape:
                raise VitsegError(
                    f"The project's scribbles have shape {tuple(project.scribbles.shape)} but its image "
                    f"{str(project.image_path)!r} has spatial shape {shape} (channel axis "
                    f"{'none' if self.channel_axis() is None else self.channel_axis()}): the image changed since the "
                    "project was saved; open the image it was made with.")
            self.input.add_scribbles_layer(project.scribbles, names, colors, name=project.scribbles_name or "scribbles")
        self.classes.set_classes(names, colors)

    def _project_message(self, job: Job, value, name: str = "") -> str | None:
        if job.kind == "save project":
            _notify.show_info(f"Project saved to {value}")
            return f"Saved project {value}."
        if value is None:
            return f"Opened project {name} (no classifier in it: press Train or tick Live)."
        return f"Done ({value.description})."

    # ------------------------------------------------------------ class shortcuts and export
    def choose_class(self, k: int) -> None:
        """Paint with class ``k`` (its Alt+k shortcut): select its row, make the scribbles layer
        active in paint mode."""
        n = self.class_table.rowCount()
        if self.input.scribbles_layer is None:
            self.set_status("No scribbles layer to paint in: press 'New' beside the scribbles box first.")
            return
        if not 1 <= k <= n:
            self.set_status(f"Alt+{k}: there is no class {k} (the table has {n}); 'Add class' adds one.")
            return
        self.class_table.selectRow(k - 1)
        self._paint_with(k)
        self.set_status(f"Painting class {k}: {self.class_names()[k - 1]}.")

    def layer_sources(self) -> dict:
        """``{file: layer name}`` of the files the viewer's layers came from (Export never writes over them)."""
        out: dict = {}
        for layer in self.viewer.layers:
            for p in (getattr(getattr(layer, "source", None), "path", None), (layer.metadata or {}).get("path")):
                if isinstance(p, str) and p:
                    out.setdefault(p, layer.name)
        return out

    def default_export_path(self, what: str) -> str:
        """``<image>_seg.tif``, ``<image>_seg_probabilities.tif`` or ``<image>_seg_uncertainty.tif``
        beside the image's file (where *Save…* proposes the classifier), else in the working folder."""
        p = Path(self.default_save_path())
        return str(p.with_name(p.stem + EXPORTS[what][1] + ".tif"))

    def ask_export_path(self, what: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, f"Export the {what}", self.default_export_path(what),
                                              "TIFF (*.tif *.tiff);;All files (*)")
        return path or None

    def ask_missing_planes(self, plan: ExportPlan) -> str | None:
        """Some planes are not segmented with the current classifier: ``'apply'`` (segment them
        first, then export), ``'export'`` (what exists; the others are written empty) or ``None``."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Question)
        box.setWindowTitle(f"Export the {plan.what}")
        box.setText(plan.describe_missing()[:1].upper() + plan.describe_missing()[1:] + ".")
        apply_btn = box.addButton("Apply to stack first" if plan.stack else "Segment it first", QMessageBox.AcceptRole)
        export_btn = None if plan.empty else box.addButton("Export what exists", QMessageBox.ActionRole)
        box.addButton(QMessageBox.Cancel)
        box.exec_()
        clicked = box.clickedButton()
        if clicked is apply_btn:
            return "apply"
        return "export" if export_btn is not None and clicked is export_btn else None

    def export_outputs(self, what: str, path: str | None = None, *, ask: bool = True):
        """Write the segmentation, probabilities or uncertainty of the image to a TIFF.

        The file (asked in a dialog, proposed beside the image) is written in the background,
        atomically, with the class names and colours (:func:`~napari_vitseg._widgets._layers.iter_export`);
        it reopens through the plugin's reader. The image's and the scribbles' files are
        refused. Planes not segmented with the current classifier (or without probabilities)
        are named, and :meth:`ask_missing_planes` chooses: *Apply to stack* first (then the
        export follows), export what exists, or nothing.

        Parameters
        ----------
        what : {'segmentation', 'probabilities', 'uncertainty'}
        path : str, optional
            Skip the file dialog.
        ask : bool
            ``False``: export what exists without asking (after the *Apply to stack* it asked for).

        Returns
        -------
        Job or None
            The export job, or the *Apply to stack* job the export follows.
        """
        path = path or self.ask_export_path(what)
        if not path:
            return None
        try:
            plan = self.outputs.export_plan(what, path, sources=self.layer_sources(), names=self.class_names(),
                                            colors=self.classes.colors())
        except VitsegError as e:
            return self._fail(e)
        if plan.missing:
            choice = self.ask_missing_planes(plan) if ask else "export"
            if choice == "apply":
                if what == "probabilities":
                    self.proba_check.setChecked(True)
                job = self.apply_to_stack()
                self._export_after = (job, what, str(plan.path)) if job is not None else None
                return job
            if choice != "export":
                return None
            if plan.empty:
                return self._fail(VitsegError(f"Nothing to export: {plan.describe_missing()}. Press Train or "
                                              "Apply to stack first" + (" with 'probabilities layer' ticked"
                                                                        if what == "probabilities" else "") + "."))
        return self._request("export", lambda: iter_export(plan), napari_progress=plan.stack)

    # ------------------------------------------------------------ jobs
    def cancel(self) -> None:
        """Cancel the running job (and any queued one)."""
        self._debounce.stop()
        self.jobs.cancel()

    def _fail(self, exc) -> None:
        self.jobs.report_error(exc)

    def _request(self, kind: str, factory, *, napari_progress: bool = False, t_request: float | None = None):
        def uses_torch() -> bool:  # asked when the job starts (it may wait behind another)
            return kind in ("load", "files", "save") or self.controller.feature_config.backbone is not None

        return self.jobs.request(kind, factory, on_yielded=self._on_yielded, on_returned=self._final_message,
                                 napari_progress=napari_progress, uses_torch=uses_torch, t_request=t_request)

    def _on_yielded(self, job: Job, value) -> None:
        if isinstance(value, Status):
            self.set_status(value.msg)
        elif isinstance(value, ModelReady):
            self._adopt(value)
        elif isinstance(value, PlaneUpdate):
            self._draw(job, value)

    def _adopt(self, ready: ModelReady) -> None:
        self.controller.adopt(ready)
        self.outputs.mark_stale()
        if ready.loaded_from is not None:
            self._set_fields_from_model(ready.segmenter)
        self.set_status(ready.description)
        if self.importance_panel is not None:
            self.importance_panel.schedule_refresh()

    def current_segmenter(self):
        """The trained (or loaded) segmenter the overlays come from, or ``None``."""
        model = self.controller.model
        return model.segmenter if model is not None else None

    def show_feature_importance(self):
        """Open the feature-importance panel in a dock beside this one (or bring it back).

        Returns
        -------
        ImportancePanel or None
            ``None`` when napari-matplotlib is not installed (the status line says so).
        """
        panel, dock = self.importance_panel, None
        try:
            dock = panel.parent() if panel is not None else None
            while dock is not None and not hasattr(dock, "setFloating"):  # the QDockWidget around it
                dock = dock.parent()
        except RuntimeError:  # deleted with its window
            panel = None
        if panel is None:
            try:
                from ._importance import ImportancePanel
            except ImportError as e:
                return self._fail(VitsegError(f"The feature-importance panel needs napari-matplotlib ({e}); "
                                              "install it with: pip install napari-matplotlib"))
            panel = ImportancePanel(self.viewer, source=self.current_segmenter, busy=lambda: self.busy)
            self.importance_panel = panel
        if dock is None:  # new, or its dock was closed (napari keeps the widget, unparented)
            self.viewer.window.add_dock_widget(panel, name="Feature importance", area="right")
        else:
            dock.show()
            dock.raise_()
        panel.refresh()
        return panel

    def _draw(self, job: Job, upd: PlaneUpdate) -> None:
        final = job.notes.setdefault("final_planes", set())
        if upd.coarse and upd.z in final:
            return  # delivered late (re-entrant event processing): the full result is already shown
        if not upd.coarse:
            final.add(upd.z)
        self.outputs.show(upd)
        if job.kind == "live" and job.t_request is not None:
            now = time.perf_counter()
            rec = job.notes.setdefault("latency", {"t_paint": job.t_request, "t_start": job.t_start})
            rec.setdefault("t_first", now)
            if upd.complete:
                rec["t_final"] = now
                self.latencies.append(rec)

    def _final_message(self, job: Job, value) -> str | None:
        m = self.controller.model
        what = m.description if m is not None else ""
        if job.kind == "save":
            _notify.show_info(f"Classifier saved to {value}")
            return f"Saved {value}."
        if job.kind == "files":
            return self._files_message(value)
        if job.kind == "export":
            _notify.show_info(value.summary())
            return value.summary()
        if job.kind == "apply":
            pending, self._export_after = self._export_after, None
            if pending is not None and pending[0] is job:  # Export… asked for this Apply to stack
                QTimer.singleShot(0, lambda: self.export_outputs(pending[1], pending[2], ask=False))
            return f"Segmented {value} plane(s) with the {what}."
        if job.kind == "train" and len(self.input.spatial_shape() or ()) == 3:
            return (f"Done ({what}). Scroll through the stack: each plane is segmented when you reach it; "
                    "'Apply to stack' segments them all.")
        if value is not None or job.kind != "live":
            return f"Done ({what})."
        return None

    def _files_message(self, outputs) -> str:
        """What *Apply to files* did (written and skipped), and open the outputs if asked."""
        outputs = list(outputs or [])
        skipped = len(self.controller.files_skipped)
        written = len(outputs) - skipped
        where = Path(outputs[0]).parent if outputs else "-"
        parts = [f"Wrote {written} segmentation(s)" if written else "Wrote nothing new"]
        if skipped:
            parts.append(f"{skipped} already done (skipped; delete them to redo)")
        msg = f"{', '.join(parts)} in {where}."
        if outputs and self.open_results_check.isChecked():
            self.open_outputs(outputs)
        return msg

    def open_outputs(self, paths) -> None:
        """Open segmentation files in the viewer (napari picks the reader: ours reopens them as
        Labels with class names and colours)."""
        for path in paths:
            try:
                try:
                    self.viewer.open(str(path), plugin="napari-vitseg")
                except ValueError:  # our reader does not claim it: napari's choice
                    self.viewer.open(str(path))
            except Exception as e:  # noqa: BLE001 - an output that cannot be shown is not a failure of the run
                _notify.show_warning(f"Could not open {Path(path).name} in napari: {e}")

    # ------------------------------------------------------------ teardown
    def close(self) -> bool:
        self.cancel()
        self._disconnect_all()
        self.outputs.close()  # the on-disk stores of big outputs (and the layers showing them)
        return super().close()

    def _disconnect_all(self) -> None:
        self.input.disconnect_layers()
        self.shortcuts.unbind()
        self.legend.clear()
        if self._label_layer is not None:
            try:
                self._label_layer.events.selected_label.disconnect(self._on_selected_label)
            except (TypeError, ValueError, RuntimeError):
                pass
        ev = self.viewer.layers.events
        for e, cb in ((ev.inserted, self._on_layers_changed), (ev.removed, self._on_layers_changed),
                      (ev.reordered, self._on_layers_changed), (self.viewer.dims.events.current_step, self._on_step)):
            try:
                e.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
