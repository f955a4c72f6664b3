"""The sections of the segmentation dock widget (Qt views; no computation).

- :class:`InputSection`: image, channel axis and scribbles layer; the scribbles' edit events;
  the geometry of the image and the inputs of a job, read from these layers;
- :class:`ClassesSection`: the class table (names, colours) and *Add class*;
- :class:`FeaturesSection`: backbone, upsampling, classical filters, scales, ViT PCA -> the
  controller's :class:`~napari_vitseg.features.config.FeatureConfig`;
- :class:`ClassifierSection`: classifier kind, trees, depth, fast live model -> the controller's
  classifier parameters;
- :class:`ActionsSection`: the Train / Live / Cancel / Save / Load / Apply buttons and the
  *probabilities layer* box.

:class:`~napari_vitseg._widgets._segmentation.SegmentationWidget` composes them and connects
their signals to its actions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .._sample_data import class_colormap
from .._validation import VitsegError
from ..backbones import available_backbones, list_backbones
from ..features.config import MAX_Z_ANISOTROPY, MIN_Z_ANISOTROPY, FeatureConfig
from ..pipeline import DEFAULT_COLORS, SegmenterConfig
from ..pipeline._boundary import DEFAULT_ROWS as BOUNDARY_ROWS
from ..pipeline._boundary import FINE_MAX_SIGMA, MAX_ROWS
from ._controller import (
    LIVE_PARAMS,
    RANDOM_WEIGHTS_ENV,
    JobInputs,
    guess_channel_axis,
    history_regions,
    random_weights_allowed,
    stack_channels,
)
from ._layers import hex_color, layer_data

__all__ = [
    "MISSING_ROW",
    "NO_BACKBONE",
    "NO_WEIGHTS_GUI",
    "RANDOM_SUFFIX",
    "ActionsSection",
    "ClassesSection",
    "ClassifierSection",
    "FeaturesSection",
    "InputSection",
]

NO_BACKBONE = "none (classical features)"
RANDOM_SUFFIX = " [random weights — testing only]"
#: The combo row that stands for every backbone without weights (``{n}``: how many).
MISSING_ROW = "{n} more need weights: Import weights…"
#: What the widget says when no backbone has weights (no command line in the GUI).
NO_WEIGHTS_GUI = ("No ViT backbone weights on this computer: segmenting with classical features. To use a "
                  "ViT, press 'Import weights…' and choose a checkpoint file (e.g. DINOv2 ViT-S/14 with "
                  "registers, dinov2_vits14_reg4_pretrain.pth).")

#: The Features box's "Across planes" choices: (shown text, ``FeatureConfig.spatial``).
SPATIAL_CHOICES = (("auto (3D for volumes)", "auto"), ("2D: each plane", "2d"), ("3D: across planes", "3d"))


def parse_sigmas(text: str) -> tuple[float, ...]:
    """Scales typed as ``'1, 2, 4'`` (commas, semicolons or spaces).

    Raises
    ------
    VitsegError
        Not numbers, or not positive.
    """
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    try:
        sig = tuple(float(p) for p in parts)
    except ValueError:
        raise VitsegError(f"Classical scales must be numbers separated by commas (e.g. '1, 2, 4, 8'); got {text!r}.") from None
    if any(s <= 0 for s in sig):
        raise VitsegError(f"Classical scales must be positive pixel sizes; got {text!r}.")
    return sig


def _disconnect(pairs) -> None:
    for ev, cb in pairs:
        try:
            ev.disconnect(cb)
        except (TypeError, ValueError, RuntimeError):
            pass


class InputSection(QGroupBox):
    """Image, channel axis and scribbles layer (the *Input* box), and what jobs read from them.

    Parameters
    ----------
    viewer : napari.Viewer
    is_output : callable ``(layer) -> bool``
        Layers that the widget writes (never offered as inputs).

    Signals
    -------
    image_changed
        Another image layer or channel axis: the shown predictions are stale.
    scribbles_changed(layer or None)
        Another scribbles layer was chosen.
    scribbles_edited(list of regions, or None)
        The scribbles changed, with the boxes (tuples of slices) that changed: a brush stroke,
        fill or erase ended (napari's ``paint`` event, fired on mouse release, carries the
        history item), or undo / redo moved items between the layer's history queues (they
        fire no ``paint`` event; the moved items name the regions). ``None`` when the data
        was replaced (``layer.data = ...``) or the change cannot be located: index it again.
    channel_axis_changed(old, new)
        The user set another channel axis of the same image (``int`` or ``None`` each).
    channels_changed(str)
        Several image layers are now used as channels, or fewer (a chosen layer was removed or
        changed shape): what to tell the user.
    """

    image_changed = Signal()
    scribbles_changed = Signal(object)
    scribbles_edited = Signal(object)
    channel_axis_changed = Signal(object, object)
    channels_changed = Signal(str)

    def __init__(self, viewer, is_output: Callable[[object], bool], parent=None):
        super().__init__("Input", parent)
        self.viewer = viewer
        self._is_output = is_output
        self._image = None
        self._scribbles = None
        self._history_len: tuple | None = None
        self._fresh = None  # the zeros of a scribbles layer being created (nothing to index)
        self.form = QFormLayout(self)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image (or stack) to segment.")
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self._channels: list = []  # image layers used together as channels (the Image one among them), or []
        self._stacked = None  # (their arrays, the lazy stack of them) built once
        self.channels_btn = QToolButton()
        self.channels_btn.setText("+ channels…")
        self.channels_btn.setPopupMode(QToolButton.InstantPopup)
        self.channels_btn.setToolTip("Use other image layers of the same shape as more channels of this image "
                                     "(napari shows a multichannel file as one layer per channel).")
        self.channels_menu = QMenu(self.channels_btn)
        self.channels_menu.aboutToShow.connect(self._fill_channels_menu)
        self.channels_btn.setMenu(self.channels_menu)
        self.channels_btn.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.image_combo, 1)
        row.addWidget(self.channels_btn)
        self.form.addRow("Image", row)
        self.channel_spin = QSpinBox()
        self.channel_spin.setRange(-1, 8)
        self.channel_spin.setSpecialValueText("none")
        self.channel_spin.setValue(-1)
        self.channel_spin.setToolTip("Axis of the image that holds channels ('none' for a grey image or a stack "
                                     "of planes; RGB is detected). Guessed when the image is chosen: check it.")
        self.channel_spin.valueChanged.connect(self._on_channel_spin)
        self.form.addRow("Channel axis", self.channel_spin)
        self.channel_hint = QLabel("")
        self.channel_hint.setWordWrap(True)
        self.channel_hint.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.channel_hint.setVisible(False)
        self.form.addRow(self.channel_hint)
        self._axis = None  # the channel axis the current scribbles were painted with
        row = QHBoxLayout()
        self.scribbles_combo = QComboBox()
        self.scribbles_combo.setToolTip("Labels layer with your brush strokes: 0 = unlabelled, 1..K = classes.")
        self.scribbles_combo.currentIndexChanged.connect(self._on_scribbles_changed)
        row.addWidget(self.scribbles_combo, 1)
        self.new_scribbles_btn = QPushButton("New")
        self.new_scribbles_btn.setToolTip("Create an empty scribbles layer matching the image.")
        row.addWidget(self.new_scribbles_btn)
        self.form.addRow("Scribbles", row)

    @property
    def image_layer(self):
        return self.image_combo.currentData()

    @property
    def scribbles_layer(self):
        return self.scribbles_combo.currentData()

    # -- layer lists ----------------------------------------------------------------------
    def _layers_of(self, kind: str) -> list:
        from napari.layers import Image, Labels

        cls = {"image": Image, "labels": Labels}[kind]
        return [lay for lay in self.viewer.layers if isinstance(lay, cls) and not self._is_output(lay)]

    def refresh(self) -> None:
        """Fill the combos from the viewer's layers (keeping the current choices)."""
        for combo, kind, cur in ((self.image_combo, "image", self._image),
                                 (self.scribbles_combo, "labels", self._scribbles)):
            layers = self._layers_of(kind)
            combo.blockSignals(True)
            combo.clear()
            for layer in layers:
                combo.addItem(layer.name, layer)
            if cur in layers:
                combo.setCurrentIndex(layers.index(cur))
            elif layers:
                combo.setCurrentIndex(0 if kind == "image" else self._best_scribbles_index(layers))
            combo.blockSignals(False)
        self._prune_channels()
        self._on_image_changed()
        self._update_channels_btn()

    def _best_scribbles_index(self, layers) -> int:
        shape = self.spatial_shape()
        for i, layer in enumerate(layers):
            if shape is not None and tuple(layer.data.shape) == shape:
                return i
        return 0

    def _on_image_changed(self, *_):
        layer = self.image_layer
        if layer is not self._image:
            self._image = layer
            if self._channels:  # another Image chosen in the combo: that layer alone
                self._channels = []
                self.channels_changed.emit(f"Using the image {layer.name!r} alone (one layer); '+ channels…' "
                                           "combines layers again." if layer is not None else "")
            self._update_channels_btn()
            if layer is not None:
                spin = self.channel_spin
                spin.blockSignals(True)
                if layer.rgb:
                    spin.setEnabled(False)
                    spin.setValue(-1)
                    spin.setSpecialValueText("RGB (last)")
                    self._show_hint("")
                else:
                    spin.setEnabled(True)
                    spin.setSpecialValueText("none")
                    data = layer_data(layer)
                    spin.setRange(-1, max(0, data.ndim - 1))
                    ca, why = guess_channel_axis(data.shape, layer.metadata)
                    spin.setValue(-1 if ca is None else ca)
                    self._show_hint(self._describe_axis(ca, why))
                spin.blockSignals(False)
            else:
                self._show_hint("")
            self._axis = self.channel_axis()
            self.image_changed.emit()
        self._on_scribbles_changed()

    def _describe_axis(self, ca: int | None, why: str) -> str:
        layer = self.image_layer
        if layer is None or not why:
            return ""
        shape = tuple(layer_data(layer).shape)
        if ca is None:
            return f"No channel axis ({why})."
        return f"Channel axis {ca}: {shape[ca]} channels ({why})."

    def _show_hint(self, text: str) -> None:
        self.channel_hint.setText(text)
        self.channel_hint.setVisible(bool(text))

    def _on_channel_spin(self, *_):
        old, new = self._axis, self.channel_axis()
        self._axis = new
        layer = self.image_layer
        if layer is not None and not layer.rgb:
            shape = tuple(layer_data(layer).shape)
            self._show_hint("No channel axis: a grey image or a stack of planes." if new is None
                            else f"Channel axis {new}: {shape[new]} channels.")
        self.image_changed.emit()
        if old != new:
            self.channel_axis_changed.emit(old, new)

    # -- several image layers as channels -----------------------------------------------------
    def channel_candidates(self) -> list:
        """Other image layers that can be channels of the Image layer: same data shape, (Y, X)
        or (Z, Y, X), not RGB, not an output (layers of another shape are never offered)."""
        main = self.image_layer
        if main is None or main.rgb or layer_data(main).ndim not in (2, 3):
            return []
        shape = tuple(layer_data(main).shape)
        return [lay for lay in self._layers_of("image")
                if lay is not main and not lay.rgb and tuple(layer_data(lay).shape) == shape]

    def channel_layers(self) -> list:
        """The image layers that make the image, in channel order: ``[image layer]`` alone, or
        the layers combined by :meth:`set_channel_layers` (``[]`` without an image)."""
        main = self.image_layer
        return list(self._channels) if self._channels else ([] if main is None else [main])

    def set_channel_layers(self, layers) -> None:
        """Use several image layers of one shape as the channels of one image.

        napari shows a multichannel file as one image layer per channel (``viewer.open(path,
        channel_axis=0)``, readers that split channels). The jobs then segment the stack of
        these layers, channel ``i`` = ``layers[i]`` (:func:`~napari_vitseg._widgets._controller.stack_channels`,
        lazy: nothing is read until a plane is segmented), as a ``(Y, X, C)`` image; the
        scribbles keep the layers' shape, and a classifier trained so expects ``len(layers)``
        channels (files given to *Apply to files* must have them, in this order).

        Parameters
        ----------
        layers : sequence of napari.layers.Image
            In channel order. The Image combo moves to the first one unless it is among them.
            Zero or one layer: back to a single image layer.

        Raises
        ------
        VitsegError
            A layer that is not an image layer of the viewer, RGB, or of another shape than the
            others.
        """
        layers = list(dict.fromkeys(layers))
        if len(layers) >= 2:
            offered = self._layers_of("image")
            shape = tuple(layer_data(layers[0]).shape)
            for lay in layers:
                if lay not in offered:
                    raise VitsegError(f"{getattr(lay, 'name', lay)!r} is not an image layer of this viewer; pick "
                                      "channels among the image layers.")
                if lay.rgb or tuple(layer_data(lay).shape) != shape or len(shape) not in (2, 3):
                    raise VitsegError(
                        f"The layer {lay.name!r} ({'RGB' if lay.rgb else f'shape {tuple(layer_data(lay).shape)}'}) "
                        f"cannot be a channel of {layers[0].name!r} (shape {shape}): combine grey (Y, X) or "
                        "(Z, Y, X) layers of one shape.")
        if layers and self.image_layer not in layers:
            self.image_combo.setCurrentIndex(self.image_combo.findData(layers[0]))  # that layer, alone
        old = self.channel_layers()
        old_axis = None if self._channels else self._axis
        self._channels = layers if len(layers) >= 2 else []
        if self.channel_layers() == old:
            return
        self._show_channels()
        self.image_changed.emit()
        if old_axis is not None and self._channels:
            # the layer was read with a channel axis; its layers are now whole: keep what was painted
            self.channel_axis_changed.emit(old_axis, None)
        main = self.image_layer
        self.channels_changed.emit(
            f"Segmenting {len(self._channels)} layers as the channels of one image: {self._channel_names()}."
            if self._channels else f"Using the image {main.name!r} alone (one channel)." if main is not None else "")

    def _channel_names(self) -> str:
        return ", ".join(f"{i} = {lay.name!r}" for i, lay in enumerate(self._channels))

    def _show_channels(self) -> None:
        """The channel-axis field and its hint, for several layers or one."""
        spin = self.channel_spin
        spin.blockSignals(True)
        spin.setValue(-1)
        if self._channels:
            spin.setEnabled(False)
            spin.setSpecialValueText("layers (last)")
            self._show_hint(f"Channels from {len(self._channels)} layers: {self._channel_names()}.")
        elif self.image_layer is not None and not self.image_layer.rgb:
            spin.setEnabled(True)
            spin.setSpecialValueText("none")
            self._show_hint("No channel axis: a grey image or a stack of planes.")
        spin.blockSignals(False)
        self._axis = None
        self._update_channels_btn()

    def _prune_channels(self) -> None:
        """Drop channel layers that left the viewer or changed shape, and say so (back to a
        single layer when fewer than two are left)."""
        if not self._channels:
            return
        main = self.image_layer
        if main is not self._image or main not in self._channels:
            keep = []  # the Image layer itself went: the combo shows another one, alone
        else:
            ok = self.channel_candidates()
            keep = [lay for lay in self._channels if lay is main or any(lay is c for c in ok)]
        lost = [lay for lay in self._channels if not any(lay is k for k in keep)]
        if not lost:
            return
        removed = ", ".join(repr(lay.name) for lay in lost)
        n_before = len(self._channels)
        self._channels = keep if len(keep) >= 2 else []
        if self._channels:
            now = f"now {len(keep)} channels: {self._channel_names()}"
        elif main is not None:
            now = f"back to a single layer, {main.name!r} alone (1 channel)"
        else:
            now = "no image left"
        if main is self._image:
            self._show_channels()
            self.image_changed.emit()
        self.channels_changed.emit(
            f"Channel layer(s) {removed} removed or changed shape: {now}. A classifier trained on "
            f"{n_before} channels does not fit it: retrain (Train or Live).")

    def _update_channels_btn(self) -> None:
        n = len(self._channels)
        self.channels_btn.setText(f"{n} channels…" if n else "+ channels…")
        self.channels_btn.setVisible(bool(n) or bool(self.channel_candidates()))

    def _fill_channels_menu(self) -> None:
        """The *+ channels…* menu: all layers of this shape at once, or each one (checkable)."""
        menu = self.channels_menu
        menu.clear()
        main = self.image_layer
        cands = self.channel_candidates()
        if not cands:
            menu.addAction("No other image layer of this shape").setEnabled(False)
            return
        order = {id(lay): i for i, lay in enumerate(self.viewer.layers)}
        everything = sorted([main, *cands], key=lambda lay: order.get(id(lay), 0))
        act = menu.addAction(f"All {len(everything)} layers of this shape as channels")
        act.triggered.connect(lambda *_: self.set_channel_layers(everything))
        menu.addSeparator()
        chosen = self.channel_layers()
        for lay in cands:
            act = menu.addAction(lay.name)
            act.setCheckable(True)
            act.setChecked(any(lay is c for c in chosen))
            act.toggled.connect(lambda on, lay=lay: self._toggle_channel(lay, on))
        if self._channels:
            menu.addSeparator()
            menu.addAction(f"{main.name} alone", lambda: self.set_channel_layers([]))

    def _toggle_channel(self, layer, on: bool) -> None:
        """Add or remove one layer from the channels (kept in the viewer's layer order)."""
        chosen = [lay for lay in self.channel_layers() if lay is not layer] + ([layer] if on else [])
        order = {id(lay): i for i, lay in enumerate(self.viewer.layers)}
        self.set_channel_layers(sorted(chosen, key=lambda lay: order.get(id(lay), 0)))

    def image_data(self):
        """The array that jobs segment: the Image layer's data, or the lazy channels-last stack
        of the channel layers (built once per set of arrays); ``None`` without an image."""
        main = self.image_layer
        if main is None:
            return None
        if not self._channels:
            return layer_data(main)
        arrays = [layer_data(lay) for lay in self._channels]
        if self._stacked is None or len(self._stacked[0]) != len(arrays) or \
                any(a is not b for a, b in zip(self._stacked[0], arrays, strict=True)):
            self._stacked = (arrays, stack_channels(arrays, [lay.name for lay in self._channels]))
        return self._stacked[1]

    # -- scribbles and their events ---------------------------------------------------------
    def _on_scribbles_changed(self, *_):
        layer = self.scribbles_layer
        if layer is self._scribbles:
            return
        if self._scribbles is not None:
            self._disconnect_scribbles(self._scribbles)
        self._scribbles = layer
        if layer is not None:
            layer.events.paint.connect(self._on_paint)
            layer.events.data.connect(self._on_data)  # the data was replaced (``layer.data = ...``)
            layer.events.set_data.connect(self._on_set_data)
            self._history_len = self._history_state(layer)
        self.scribbles_changed.emit(layer)

    def _disconnect_scribbles(self, layer) -> None:
        _disconnect(((layer.events.paint, self._on_paint), (layer.events.data, self._on_data),
                     (layer.events.set_data, self._on_set_data)))

    def is_fresh(self, layer) -> bool:
        """Whether ``layer`` is the scribbles layer that :meth:`new_scribbles_layer` is making
        (all zeros: its index is empty without reading it)."""
        return self._fresh is not None and layer is not None and layer.data is self._fresh

    def disconnect_layers(self) -> None:
        """Stop listening to the scribbles layer (the widget closes)."""
        if self._scribbles is not None:
            self._disconnect_scribbles(self._scribbles)

    @staticmethod
    def _history_state(layer):
        # napari has no public API for the Labels undo history, and undo / redo fire no paint
        # event: its private history lengths tell whether undo / redo changed the scribbles
        if layer is None:
            return None
        return (len(getattr(layer, "_undo_history", ())), len(getattr(layer, "_redo_history", ())))

    def _on_paint(self, event=None) -> None:
        """A stroke, fill or erase ended: its history item (``event.value``) names the regions."""
        self._history_len = self._history_state(self._scribbles)
        item = getattr(event, "value", None)
        self.scribbles_edited.emit(history_regions([item]) if isinstance(item, list) else None)

    def _on_data(self, event=None) -> None:
        self._history_len = self._history_state(self._scribbles)
        self.scribbles_edited.emit(None)

    def _on_set_data(self, event=None) -> None:
        """Undo / redo only refresh the layer: an edit when the history moved."""
        self.sync_history()

    def sync_history(self) -> bool:
        """Report undo / redo steps not seen yet (``set_data`` is not fired for a hidden layer).

        Undo moves items from the end of the undo queue to the end of the redo queue and redo
        the other way; the items that moved since the last look name the changed regions.

        Returns
        -------
        bool
            Whether an edit was reported.
        """
        layer = self._scribbles
        state = self._history_state(layer)
        old = self._history_len
        if state == old:
            return False
        self._history_len = state
        regions = None
        if old is not None and state is not None:
            (u0, r0), (u1, r1) = old, state
            if u1 < u0:  # undo: the undone items are now at the end of the redo queue
                regions = history_regions(list(layer._redo_history)[-(u0 - u1):])
            elif r1 < r0:  # redo: the redone items are back at the end of the undo queue
                regions = history_regions(list(layer._undo_history)[-(r0 - r1):])
        self.scribbles_edited.emit(regions)
        return True

    # -- geometry ----------------------------------------------------------------------------
    def channel_axis(self) -> int | None:
        """The image's channel axis (the last one for RGB and for several layers used as
        channels, see :meth:`image_data`), or ``None``."""
        layer = self.image_layer
        if layer is None:
            return None
        if self._channels:
            return layer_data(layer).ndim  # a new last axis
        if layer.rgb:
            return layer_data(layer).ndim - 1
        v = self.channel_spin.value()
        return None if v < 0 else v

    def spatial_shape(self) -> tuple | None:
        """The image's shape without the channel axis, or ``None`` without an image."""
        layer = self.image_layer
        if layer is None:
            return None
        shape = list(layer_data(layer).shape)
        ca = self.channel_axis()
        if ca is not None and ca < len(shape):
            del shape[ca]
        return tuple(shape)

    def spatial_transform(self) -> dict:
        """``scale`` and ``translate`` of the image without the channel axis (for new layers)."""
        layer = self.image_layer
        if layer is None:
            return {}
        scale, translate = list(layer.scale), list(layer.translate)
        ca = self.channel_axis()
        if ca is not None and not layer.rgb and ca < len(scale):
            del scale[ca]
            del translate[ca]
        return {"scale": scale, "translate": translate}

    def declared_z_step(self) -> float | None:
        """The z step a stack's image layer declares: ``scale[-3] / scale[-1]`` of its spatial
        axes (napari's voxel size, e.g. set by a reader from the file's physical sizes), or
        ``None`` for a 2D image or a scale ratio of 1 (napari's default, which declares nothing)."""
        shape = self.spatial_shape()
        if shape is None or len(shape) != 3:
            return None
        from ..io._tiff import z_step_of

        scale = self.spatial_transform()["scale"]
        return z_step_of({"Z": scale[-3], "X": scale[-1]}) if len(scale) >= 3 else None

    def current_z(self) -> int | None:
        """The plane of a stack in view, ``None`` for a 2D image."""
        shape = self.spatial_shape()
        if shape is None or len(shape) != 3:
            return None
        scr = self._scribbles
        if scr is not None and tuple(scr.data.shape) == shape:
            z = scr.world_to_data(self.viewer.dims.point)[0]
        else:
            img = self.image_layer
            pos = list(img.world_to_data(self.viewer.dims.point))
            ca = self.channel_axis()
            if ca is not None and not img.rgb and ca < len(pos):
                del pos[ca]
            z = pos[0]
        return int(np.clip(round(float(z)), 0, shape[0] - 1))

    def view_rows(self) -> tuple[int, int] | None:
        """Rows ``[y0, y1)`` of the plane that the canvas shows (from napari's corner pixels),
        or ``None`` when unknown (no canvas drawn yet, a 3D view, transposed axes)."""
        shape = self.spatial_shape()
        if shape is None:
            return None
        scr = self._scribbles
        layer = scr if scr is not None and tuple(scr.data.shape) == shape else self.image_layer
        try:
            ndim = layer.ndim
            if tuple(self.viewer.dims.displayed) != (ndim - 2, ndim - 1):
                return None
            cp = np.asarray(layer.corner_pixels)
            axis = ndim - 2
            ca = self.channel_axis()
            if layer is self.image_layer and ca is not None and not layer.rgb and ndim - 2 <= ca < ndim:
                return None  # channels among the displayed axes: not our geometry
            y0, y1 = int(cp[0, axis]), int(cp[1, axis]) + 1
        except (AttributeError, IndexError, TypeError, ValueError):
            return None
        y0, y1 = max(0, y0), min(shape[-2], y1)
        if y1 - y0 <= 1 or (y0 == 0 and y1 >= shape[-2]):
            return None
        return y0, y1

    def job_inputs(self, *, need_scribbles: bool, need_image: bool = True, probabilities: bool = False,
                   snapshot: Callable[[], object] | None = None, scribbles_error: str | None = None) -> JobInputs:
        """What a job needs from the layers, captured on the UI thread.

        Parameters
        ----------
        need_scribbles, need_image : bool
        probabilities : bool
        snapshot : callable, optional
            Returns the snapshot of the scribbles index that the job gets (the scribbles array
            itself is never copied nor handed to a job).
        scribbles_error : str, optional
            Why the scribbles could not be indexed.

        Raises
        ------
        VitsegError
            Missing image, scribbles of another shape or that could not be indexed.

        Notes
        -----
        Every job (Train, Live, a plane on scroll, Apply to stack / files, Save, Load) takes its
        image from here: the Image layer's data, or the lazy stack of the layers combined as
        channels (:meth:`image_data`, channel axis last).
        """
        self._prune_channels()  # a channel layer's data may have been replaced by another shape
        image = self.image_layer
        if image is None:
            if need_image:
                raise VitsegError("There is no image layer: open an image (File > Open) or a sample "
                                  "(File > Open Sample > napari-vitseg).")
            return JobInputs()
        shape = self.spatial_shape()
        if len(shape) not in (2, 3):
            raise VitsegError(f"The image {image.name!r} has spatial shape {shape}; napari-vitseg segments "
                              "2D images and 3D stacks. Set the channel axis if one axis holds channels.")
        scr = self.scribbles_layer
        scribbles = None
        if scr is not None:
            if tuple(scr.data.shape) != shape:
                if need_scribbles:
                    raise VitsegError(
                        f"The scribbles layer {scr.name!r} has shape {tuple(scr.data.shape)} but the image "
                        f"{image.name!r} has spatial shape {shape}; pick the matching layer or press 'New'."
                    )
            else:
                scribbles = snapshot() if snapshot is not None else None
                if scribbles is None and need_scribbles:
                    raise VitsegError(f"The scribbles layer {scr.name!r} cannot be used: "
                                      f"{scribbles_error or 'it is not indexed'}")
        elif need_scribbles:
            raise VitsegError("There is no scribbles layer: press 'New' next to Scribbles and paint some strokes.")
        return JobInputs(image=self.image_data(), channel_axis=self.channel_axis(), scribbles=scribbles,
                         z=self.current_z(), probabilities=probabilities, view_rows=self.view_rows(),
                         z_step=self.declared_z_step())

    def new_scribbles_layer(self, names, colors):
        """Add an empty uint8 scribbles layer matching the image, choose it and return it.

        Raises
        ------
        VitsegError
            There is no image layer.
        """
        shape = self.spatial_shape()
        if shape is None:
            raise VitsegError("Open an image first: the scribbles layer takes its shape from the image layer.")
        # np.zeros takes its pages from the OS lazily: a stack's scribbles cost only the painted pages
        self._fresh = np.zeros(shape, np.uint8)
        try:
            return self.add_scribbles_layer(self._fresh, names, colors)
        finally:
            self._fresh = None

    def add_scribbles_layer(self, data, names, colors, name: str = "scribbles"):
        """Add ``data`` as a scribbles Labels layer (class colours and names, the image's
        transform, paint mode with class 1 and an 8 px brush), choose it and return it."""
        layer = self.viewer.add_labels(data, name=name, colormap=class_colormap(len(names), colors),
                                       metadata={"class_names": list(names)}, **self.spatial_transform())
        layer.brush_size = 8
        layer.mode = "paint"
        layer.selected_label = 1
        idx = self.scribbles_combo.findData(layer)
        if idx >= 0:
            self.scribbles_combo.setCurrentIndex(idx)
        return layer


class ClassesSection(QWidget):
    """The class table (colour and name of labels 1..K), *Add class* and *legend on canvas*.

    The row numbers are the classes' Alt+number shortcuts (their tooltips say so, once the
    widget has bound them: :meth:`set_shortcut_keys`).

    Signals
    -------
    changed
        Names or colours changed (edited, picked, added, or all rows replaced).
    label_chosen(int)
        A row was clicked: paint with this label.
    """

    changed = Signal()
    label_chosen = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._colors: list[str] = []
        self._updating = False
        self.palette: tuple[str, ...] = tuple(DEFAULT_COLORS)  # colours of new classes
        self.shortcut_keys: dict[int, str] = {}  # class -> 'Alt+k' (set_shortcut_keys)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.class_table = QTableWidget(0, 2)
        self.class_table.setHorizontalHeaderLabels(["", "class name (click or Alt+number to paint)"])
        self.class_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.class_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        self.class_table.verticalHeader().setVisible(True)
        self.class_table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.class_table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.class_table.setMaximumHeight(130)
        self.class_table.itemChanged.connect(self._on_item_changed)
        self.class_table.cellClicked.connect(lambda row, col: self.label_chosen.emit(row + 1))
        self.class_table.cellDoubleClicked.connect(self._on_double_clicked)
        lay.addWidget(self.class_table)
        self.add_class_btn = QPushButton("Add class")
        self.add_class_btn.clicked.connect(self.add_class)
        self.legend_check = QCheckBox("legend on canvas")
        self.legend_check.setChecked(True)
        self.legend_check.setToolTip("Show the class names in their colours at the top left of the canvas "
                                     "(hovering a scribble or the segmentation also names its class in "
                                     "napari's status bar).")
        row = QHBoxLayout()
        row.addWidget(self.add_class_btn)
        row.addWidget(self.legend_check)
        lay.addLayout(row)

    def names(self) -> list[str]:
        """Class names 1..K as shown in the table."""
        return [self.class_table.item(i, 1).text() for i in range(self.class_table.rowCount())]

    def colors(self) -> list[str]:
        """Hex colours of classes 1..K."""
        return list(self._colors)

    def set_classes(self, names, colors) -> None:
        """Show these classes (missing colours get the default ones)."""
        names = list(names)
        colors = list(colors)[: len(names)]
        colors += [self.palette[k % len(self.palette)] for k in range(len(colors), len(names))]
        self._updating = True
        try:
            self.class_table.setRowCount(len(names))
            for i, (name, color) in enumerate(zip(names, colors, strict=True)):
                sw = QTableWidgetItem("")
                sw.setBackground(QColor(color))
                sw.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                sw.setToolTip("Double-click to change the colour.")
                self.class_table.setItem(i, 0, sw)
                it = QTableWidgetItem(name)
                self.class_table.setItem(i, 1, it)
            self.class_table.setVerticalHeaderLabels([str(i + 1) for i in range(len(names))])
            self._show_shortcuts()
        finally:
            self._updating = False
        self._colors = colors
        self.changed.emit()

    def set_shortcut_keys(self, keys) -> None:
        """Name the bound class shortcuts (napari key names ``'Alt-1'``...) in the row tooltips."""
        self.shortcut_keys = {int(k.rsplit("-", 1)[1]): k.replace("-", "+") for k in keys}
        updating, self._updating = self._updating, True  # a tooltip is no rename
        try:
            self._show_shortcuts()
        finally:
            self._updating = updating

    def _show_shortcuts(self) -> None:
        for i in range(self.class_table.rowCount()):
            key = self.shortcut_keys.get(i + 1)
            paint = f"click or press {key} to paint with it" if key else "click to paint with it"
            it = self.class_table.item(i, 1)
            if it is not None:
                it.setToolTip(f"label {i + 1}: {paint}; double-click to rename")
            head = self.class_table.verticalHeaderItem(i)
            if head is not None:
                head.setToolTip(f"label {i + 1}" + (f" ({key} paints with it)" if key else ""))

    def load_from_layer(self, layer) -> None:
        """Show the classes of a scribbles layer: names from its metadata, colours from its colormap."""
        names = list((layer.metadata or {}).get("class_names") or [])
        n = max(len(names), 2)
        try:
            cmap_keys = [k for k in layer.colormap.color_dict if isinstance(k, (int, np.integer)) and k > 0]
            n = max(n, max(cmap_keys, default=0)) if len(cmap_keys) < 50 else n
        except AttributeError:
            pass
        names += [f"class {k}" for k in range(len(names) + 1, n + 1)]
        self.set_classes(names, [hex_color(layer.get_color(k)) for k in range(1, n + 1)])

    def set_color(self, label: int, color: str) -> None:
        """Set the colour of class ``label`` (1-based)."""
        colors = self.colors()
        colors[label - 1] = color
        self.set_classes(self.names(), colors)

    def add_class(self) -> None:
        """Append a class (next label, next default colour) and choose it for painting."""
        names = self.names() + [f"class {self.class_table.rowCount() + 1}"]
        n = len(names)
        self.set_classes(names, self.colors() + [self.palette[(n - 1) % len(self.palette)]])
        self.class_table.selectRow(n - 1)
        self.label_chosen.emit(n)

    def ensure_classes(self, n: int) -> list[int]:
        """Add rows ``class k`` (palette colours) up to label ``n``; returns the labels added.

        A label painted by any napari control (its ``=`` / ``-`` keys, the label spin box, a
        stroke into a layer made elsewhere) gets a named, coloured row rather than napari's grey.
        """
        have = self.class_table.rowCount()
        if n <= have:
            return []
        names = self.names() + [f"class {k}" for k in range(have + 1, n + 1)]
        colors = self.colors() + [self.palette[(k - 1) % len(self.palette)] for k in range(have + 1, n + 1)]
        self.set_classes(names, colors)
        return list(range(have + 1, n + 1))

    def use_palette(self, palette) -> None:
        """Colour new classes from ``palette``; rows still in the other default palette are recoloured."""
        palette = tuple(palette)
        if palette == self.palette:
            return
        old, self.palette = self.palette, palette
        colors = self.colors()
        if colors and all(c.lower() == old[i % len(old)].lower() for i, c in enumerate(colors)):
            self.set_classes(self.names(), [palette[i % len(palette)] for i in range(len(colors))])

    def _on_item_changed(self, item) -> None:
        if not self._updating and item.column() == 1:
            self.changed.emit()

    def _on_double_clicked(self, row: int, col: int) -> None:
        if col != 0:
            return
        color = self.ask_color(self._colors[row])
        if color:
            self.set_color(row + 1, color)

    def ask_color(self, current: str) -> str | None:
        """Colour dialog (a method so that tests can replace it)."""
        c = QColorDialog.getColor(QColor(current), self, "Class colour")
        return c.name() if c.isValid() else None


class FeaturesSection(QGroupBox):
    """Backbone, upsampling, classical filters, scales and ViT PCA (the *Features* box).

    Writes the controller's ``feature_config`` and ``random_weights`` when a field changes.

    Signals
    -------
    changed
        The controller's feature configuration changed.
    invalid(str)
        The fields do not describe a valid configuration (the message; also in :attr:`error`).
    """

    changed = Signal()
    invalid = Signal(str)
    weights_imported = Signal(str)

    def __init__(self, controller, parent=None):
        super().__init__("Features", parent)
        self.controller = controller
        self.error: str | None = None
        form = QFormLayout(self)
        self.backbone_combo = QComboBox()
        self.backbone_combo.setToolTip("ViT backbone for the features; classical filters are always available.")
        # as narrow as the dock: long rows are elided, not widening the dock off a laptop screen
        self.backbone_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.backbone_combo.setMinimumContentsLength(14)
        self.fill_backbones()
        self.backbone_combo.currentIndexChanged.connect(self.apply)
        row = QHBoxLayout()
        row.addWidget(self.backbone_combo, 1)
        self.import_weights_btn = QPushButton("Import weights…")
        self.import_weights_btn.setToolTip("Add a backbone checkpoint file (.pth / .safetensors) from this computer.")
        self.import_weights_btn.clicked.connect(self.import_weights)
        row.addWidget(self.import_weights_btn)
        form.addRow("Backbone", row)
        self.weights_notice = QLabel("")
        self.weights_notice.setWordWrap(True)
        self.weights_notice.setStyleSheet("color: #e0a030;")
        # wrap to the dock's width rather than widen the dock to fit the long notice
        self.weights_notice.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        form.addRow(self.weights_notice)
        self.update_weights_notice()
        self.upsample_combo = QComboBox()
        self.upsample_combo.addItems(["guided", "bilinear"])
        self.upsample_combo.setToolTip("How ViT patch features are brought to the pixel grid.")
        self.upsample_combo.currentIndexChanged.connect(self.apply)
        form.addRow("Upsampling", self.upsample_combo)
        self.classical_check = QCheckBox("classical filters")
        self.classical_check.setChecked(True)
        self.classical_check.toggled.connect(self.apply)
        form.addRow(self.classical_check)
        self.sigmas_edit = QLineEdit(", ".join(f"{s:g}" for s in FeatureConfig().sigmas))
        self.sigmas_edit.setToolTip("Gaussian scales (pixels) of the classical filters.")
        self.sigmas_edit.editingFinished.connect(self.apply)
        form.addRow("Scales (px)", self.sigmas_edit)
        self.pyramid_check = QCheckBox("large scales on a pyramid (faster)")
        self.pyramid_check.setChecked(FeatureConfig().pyramid)
        self.pyramid_check.setToolTip(
            "Compute the scales of 8 px and more on the image reduced by 2, 4, … and interpolate them back: "
            "about 0.6x the featurising time, the same mIoU on the shared sets (docs/features.md). "
            "Off: every scale at full resolution, as classifiers saved before version 5.")
        self.pyramid_check.toggled.connect(self.apply)
        form.addRow(self.pyramid_check)
        self.spatial_combo = QComboBox()
        for text, mode in SPATIAL_CHOICES:
            self.spatial_combo.addItem(text, mode)
        self.spatial_combo.setCurrentIndex(self.spatial_combo.findData(FeatureConfig().spatial))
        self.spatial_combo.setToolTip(
            "How the filters of a (Z, Y, X) stack treat its planes. 3D: the fine scales (<= 2 px) of the Gaussian, "
            "gradient, Hessian and structure-tensor filters across neighbouring planes, as ilastik's 3D filters "
            "(FIB-SEM stack: mIoU 0.593 -> 0.607, about 5x the featurising time of a plane; docs/features.md). "
            "auto (default): 3D with the z step estimated from the pixels when neighbouring planes are as alike as "
            "pixels at most 2 px apart (a volume), else 2D (time series, unrelated planes, thick sections); the "
            "status line after training says which. Single images are always 2D.")
        self.spatial_combo.currentIndexChanged.connect(self.apply)
        form.addRow("Across planes", self.spatial_combo)
        self.z_spin = QDoubleSpinBox()
        self.z_spin.setRange(MIN_Z_ANISOTROPY, MAX_Z_ANISOTROPY)
        self.z_spin.setDecimals(2)
        self.z_spin.setValue(FeatureConfig().z_anisotropy)
        self.z_spin.setToolTip("z step / pixel size of the stack (1: isotropic voxels; 5: sections 5x thicker "
                               "than a pixel): the 3D filters' Gaussians in z span sigma / this many planes.")
        self.z_spin.setEnabled(self.spatial_combo.currentData() == "3d")
        self.z_spin.valueChanged.connect(self.apply)
        form.addRow("z step / pixel", self.z_spin)
        self.pca_spin = QSpinBox()
        self.pca_spin.setRange(0, 1024)
        self.pca_spin.setSpecialValueText("off")
        self.pca_spin.setValue(FeatureConfig().vit_pca or 0)
        self.pca_spin.setToolTip("Reduce the ViT channels to this many principal components (off: keep all).")
        self.pca_spin.valueChanged.connect(self.apply)
        form.addRow("ViT PCA", self.pca_spin)

    def _fields(self) -> tuple:
        return (self.backbone_combo, self.upsample_combo, self.classical_check, self.sigmas_edit, self.pyramid_check,
                self.spatial_combo, self.z_spin, self.pca_spin)

    def fill_backbones(self) -> None:
        """List the backbones whose weights are here; the others are one disabled row
        (:data:`MISSING_ROW`, their names in its tooltip) that points at *Import weights…*, or
        are offered with random weights when ``VITSEG_ALLOW_RANDOM_WEIGHTS=1``."""
        self._allow_random = random_weights_allowed()
        self._available = set(available_backbones())
        combo = self.backbone_combo
        current = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(NO_BACKBONE, (None, False))
        names = list_backbones()
        missing = [n for n in names if n not in self._available]
        for name in names:
            if name in self._available:
                combo.addItem(name, (name, False))
        if missing:
            combo.insertSeparator(combo.count())
            combo.addItem(MISSING_ROW.format(n=len(missing)), None)
            item = combo.model().item(combo.count() - 1)
            item.setEnabled(False)
            item.setToolTip("Without weights: " + ", ".join(missing))
            if self._allow_random:
                for name in missing:
                    combo.addItem(name + RANDOM_SUFFIX, (name, True))
        self.missing_backbones = missing
        idx = next((i for i in range(combo.count()) if current is not None and combo.itemData(i) == current), 0)
        combo.setCurrentIndex(idx)
        combo.blockSignals(False)

    def update_weights_notice(self) -> None:
        if self._available:
            self.weights_notice.setText("")
            self.weights_notice.setVisible(False)
            return
        text = NO_WEIGHTS_GUI
        if self._allow_random:
            text += f"\n{RANDOM_SUFFIX.strip(' []')} backbones enabled by {RANDOM_WEIGHTS_ENV}=1."
        self.weights_notice.setText(text)
        self.weights_notice.setVisible(True)

    # -- importing weights ------------------------------------------------------------------
    def import_weights(self) -> str | None:
        """Ask for a checkpoint file and the backbone it is for, check it and copy it into the
        weights folder (:func:`napari_vitseg.backbones.import_weights`), then offer the backbone.

        Returns
        -------
        str or None
            The backbone now available, or ``None`` (cancelled or refused: the reason is shown).
        """
        from .. import backbones

        path = self.ask_weights_file()
        if not path:
            return None
        name = self.ask_backbone_name(path, self.missing_backbones or list_backbones())
        if not name:
            return None
        try:
            dest, _ = backbones.import_weights(path, name)
        except VitsegError as e:
            self.invalid.emit(f"Import weights: {e}")
            return None
        self.fill_backbones()
        self.update_weights_notice()
        idx = next((i for i in range(self.backbone_combo.count())
                    if self.backbone_combo.itemData(i) == (name, False)), -1)
        if idx >= 0:
            self.backbone_combo.setCurrentIndex(idx)
        self.weights_imported.emit(f"Imported weights of {name} ({Path(dest).name}); it is now in the Backbone list.")
        return name

    def ask_weights_file(self) -> str | None:
        """File dialog for a checkpoint (a method so that tests can replace it)."""
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Import backbone weights", "",
                                              "Checkpoints (*.pth *.pt *.safetensors *.bin);;All files (*)")
        return path or None

    def ask_backbone_name(self, path: str, names: list[str]) -> str | None:
        """Which backbone the file is for (the one whose weights file has its name first)."""
        from qtpy.QtWidgets import QInputDialog

        from ..backbones import get_backbone_cfg

        fname = Path(path).name
        first = next((i for i, n in enumerate(names) if get_backbone_cfg(n).weights_file == fname), 0)
        name, ok = QInputDialog.getItem(self, "Import backbone weights", f"Backbone of {fname}:", names, first, False)
        return name if ok and name else None

    def apply(self, *_) -> None:
        """Write the fields to the controller (or report why they are invalid)."""
        name, random = self.backbone_combo.currentData() or (None, False)
        vit = name is not None
        self.upsample_combo.setEnabled(vit)
        self.pca_spin.setEnabled(vit)
        self.z_spin.setEnabled(self.spatial_combo.currentData() == "3d")
        try:
            # the fields this box has over the current config: a loaded classifier's other settings
            # (families, intensity, tiling, ...) stay as they were
            cfg = self.controller.feature_config.replace(
                backbone=name, classical=self.classical_check.isChecked(),
                sigmas=parse_sigmas(self.sigmas_edit.text()), upsample=self.upsample_combo.currentText(),
                vit_pca=self.pca_spin.value() or None, pyramid=self.pyramid_check.isChecked(),
                spatial=self.spatial_combo.currentData(), z_anisotropy=self.z_spin.value(),
            )
        except VitsegError as e:
            self.error = str(e)
            self.invalid.emit(self.error)
            return
        self.error = None
        c = self.controller
        if cfg != c.feature_config or random != c.random_weights:
            c.feature_config = cfg
            c.random_weights = bool(random)
            self.changed.emit()

    def show_config(self, cfg: FeatureConfig, random: bool) -> None:
        """Show a loaded classifier's feature configuration (the controller already has it)."""
        for w in self._fields():
            w.blockSignals(True)
        try:
            want = (cfg.backbone, bool(random and cfg.backbone))
            combo = self.backbone_combo
            idx = next((i for i in range(combo.count())
                        if combo.itemData(i) is not None and tuple(combo.itemData(i)) == want), -1)
            if idx >= 0:
                combo.setCurrentIndex(idx)
            self.upsample_combo.setCurrentText(cfg.upsample)
            self.classical_check.setChecked(cfg.classical)
            self.sigmas_edit.setText(", ".join(f"{s:g}" for s in cfg.sigmas))
            self.pyramid_check.setChecked(cfg.pyramid)
            self.spatial_combo.setCurrentIndex(self.spatial_combo.findData(cfg.spatial))
            self.z_spin.setValue(cfg.z_anisotropy)
            self.z_spin.setEnabled(cfg.spatial == "3d")
            self.pca_spin.setValue(cfg.vit_pca or 0)
        finally:
            for w in self._fields():
                w.blockSignals(False)
        self.error = None


class ClassifierSection(QGroupBox):
    """Classifier kind, trees, depth and the fast live model (the *Classifier* box).

    Writes the controller's ``classifier``, ``classifier_params`` and ``live_fast`` when a
    field changes.
    """

    def __init__(self, controller, parent=None):
        super().__init__("Classifier", parent)
        self.controller = controller
        form = QFormLayout(self)
        self.clf_combo = QComboBox()
        self.clf_combo.addItem("random forest", "rf")
        self.clf_combo.addItem("XGBoost", "xgb")
        self.clf_combo.currentIndexChanged.connect(self._on_kind_changed)
        form.addRow("Classifier", self.clf_combo)
        self.trees_spin = QSpinBox()
        self.trees_spin.setRange(1, 5000)
        self.trees_spin.setValue(100)
        self.trees_spin.valueChanged.connect(self.apply)
        form.addRow("Trees", self.trees_spin)
        self.depth_spin = QSpinBox()
        self.depth_spin.setRange(0, 64)
        self.depth_spin.setSpecialValueText("unlimited")
        self.depth_spin.setValue(0)
        self.depth_spin.valueChanged.connect(self.apply)
        form.addRow("Max depth", self.depth_spin)
        self.live_fast_check = QCheckBox("fast live model")
        self.live_fast_check.setChecked(True)
        self.live_fast_check.toggled.connect(self.apply)
        form.addRow(self.live_fast_check)
        self.boundary_spin = QSpinBox()
        self.boundary_spin.setRange(0, MAX_ROWS)
        self.boundary_spin.setSuffix(" px")
        self.boundary_spin.setSpecialValueText("off")
        self.boundary_spin.setValue(SegmenterConfig().boundary_refinement)
        self.boundary_spin.setToolTip(
            f"Boundary refinement: a second classifier on the fine scales (<= {FINE_MAX_SIGMA:g} px) re-decides "
            "the pixels within this many px of a label boundary: the large scales say what a region is, the fine "
            f"ones where it ends (default {BOUNDARY_ROWS} px: better on every shared set, docs/quality.md; 0 = off). "
            "Train, Save and Apply use it; the fast live preview does not."
        )
        self.boundary_spin.valueChanged.connect(self.apply)
        form.addRow("Refine boundaries", self.boundary_spin)

    def _set_depth_mode(self, kind: str) -> None:
        """XGBoost needs a depth >= 1; a random forest may grow unlimited (0)."""
        if kind == "xgb":
            self.depth_spin.setSpecialValueText("")
            self.depth_spin.setMinimum(1)
        else:
            self.depth_spin.setMinimum(0)
            self.depth_spin.setSpecialValueText("unlimited")

    def _on_kind_changed(self, *_):
        kind = self.clf_combo.currentData()
        self.depth_spin.blockSignals(True)
        self._set_depth_mode(kind)
        self.depth_spin.setValue(6 if kind == "xgb" else 0)
        self.depth_spin.blockSignals(False)
        self.apply()

    def apply(self, *_) -> None:
        """Write the fields to the controller."""
        c = self.controller
        c.classifier = self.clf_combo.currentData()
        depth = self.depth_spin.value()
        c.classifier_params = {"n_estimators": self.trees_spin.value(),
                               "max_depth": (depth or None) if c.classifier == "rf" else depth}
        c.live_fast = self.live_fast_check.isChecked()
        c.boundary_refinement = self.boundary_spin.value()
        lp = LIVE_PARAMS[c.classifier]
        self.live_fast_check.setToolTip(
            f"Live mode trains a small model ({lp['n_estimators']} trees, depth <= {lp['max_depth']}, "
            f"<= {lp['max_samples_per_class']} pixels per class) so the overlay follows your strokes "
            "within about a second; Train, Save and Apply use the full model above."
        )

    def show_model(self, classifier: str, params: dict, boundary_refinement: int | None = None) -> None:
        """Show a loaded classifier's kind, parameters and boundary refinement (the controller
        already has them)."""
        fields = (self.clf_combo, self.trees_spin, self.depth_spin, self.boundary_spin)
        for w in fields:
            w.blockSignals(True)
        try:
            self.clf_combo.setCurrentIndex(self.clf_combo.findData(classifier))
            self.trees_spin.setValue(int(params.get("n_estimators", 100)))
            self._set_depth_mode(classifier)
            self.depth_spin.setValue(int(params.get("max_depth") or 0))
            if boundary_refinement is not None:
                self.boundary_spin.setValue(int(boundary_refinement))
        finally:
            for w in fields:
                w.blockSignals(False)


class ActionsSection(QGroupBox):
    """Train, Live, Cancel, Save, Load, Export…, Save project / Open project, Apply to stack / files (and *open the results*),
    *show uncertainty* and *probabilities layer*.

    Parameters
    ----------
    debounce_ms : int
        Live-mode delay after a stroke (for the tooltip).

    Signals
    -------
    apply_files_requested(str)
        ``'files'`` or ``'folder'`` was chosen in the *Apply to files…* menu.
    export_requested(str)
        ``'segmentation'``, ``'probabilities'`` or ``'uncertainty'`` was chosen in the
        *Export…* menu.
    """

    apply_files_requested = Signal(str)
    export_requested = Signal(str)

    def __init__(self, debounce_ms: int, parent=None):
        super().__init__("Actions", parent)
        v = QVBoxLayout(self)
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.train_btn.setToolTip("Train the full-quality classifier on the scribbles and segment the current plane.")
        row.addWidget(self.train_btn)
        self.live_check = QCheckBox("Live")
        self.live_check.setToolTip(f"Retrain after every brush stroke ({debounce_ms} ms after release) "
                                   "and segment the current plane.")
        row.addWidget(self.live_check)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.cancel_btn)
        v.addLayout(row)
        row = QHBoxLayout()
        self.save_btn = QPushButton("Save…")
        row.addWidget(self.save_btn)
        self.load_btn = QPushButton("Load…")
        row.addWidget(self.load_btn)
        self.export_btn = QToolButton()
        self.export_btn.setText("Export…")
        self.export_btn.setPopupMode(QToolButton.InstantPopup)
        self.export_btn.setToolTip("Write the segmentation, the per-class probabilities or the uncertainty of "
                                   "the image as a TIFF (beside the image by default).")
        menu = QMenu(self.export_btn)
        for what in ("segmentation", "probabilities", "uncertainty"):
            menu.addAction(f"{what.capitalize()} (TIFF)…", lambda what=what: self.export_requested.emit(what))
        self.export_btn.setMenu(menu)
        row.addWidget(self.export_btn)
        v.addLayout(row)
        row = QHBoxLayout()  # the session: image path, scribbles, classes and classifier in one file
        self.save_project_btn = QPushButton("Save project…")
        self.save_project_btn.setToolTip("Save the session in one .vitseg-project file: the image's path, the "
                                          "scribbles, the classes and the trained classifier.")
        row.addWidget(self.save_project_btn)
        self.open_project_btn = QPushButton("Open project…")
        self.open_project_btn.setToolTip("Open a .vitseg-project file: its image, scribbles, classes and classifier.")
        row.addWidget(self.open_project_btn)
        v.addLayout(row)
        row = QHBoxLayout()
        self.apply_stack_btn = QPushButton("Apply to stack")
        self.apply_stack_btn.setToolTip("Segment every plane of the image layer.")
        row.addWidget(self.apply_stack_btn)
        self.apply_files_btn = QToolButton()
        self.apply_files_btn.setText("Apply to files…")
        self.apply_files_btn.setPopupMode(QToolButton.InstantPopup)
        menu = QMenu(self.apply_files_btn)
        menu.addAction("TIFF files…", lambda: self.apply_files_requested.emit("files"))
        menu.addAction("Folder of TIFFs…", lambda: self.apply_files_requested.emit("folder"))
        self.apply_files_btn.setMenu(menu)
        row.addWidget(self.apply_files_btn)
        v.addLayout(row)
        self.suggest_btn = QPushButton("Where to paint next?")
        self.suggest_btn.setToolTip("Jump to the region of the plane in view where the classifier is least sure "
                                    "(highest mean uncertainty, scribbles excluded) and show the uncertainty.")
        v.addWidget(self.suggest_btn)
        self.open_results_check = QCheckBox("open the results")
        self.open_results_check.setChecked(True)
        self.open_results_check.setToolTip("After 'Apply to files…', open the segmentations it wrote in napari.")
        v.addWidget(self.open_results_check)
        row = QHBoxLayout()
        self.uncertainty_check = QCheckBox("show uncertainty")
        self.uncertainty_check.setToolTip("Show where the classifier hesitates (1 - max class probability, "
                                          "bright = unsure): paint more scribbles there.")
        row.addWidget(self.uncertainty_check)
        self.proba_check = QCheckBox("probabilities layer")
        self.proba_check.setToolTip("Also show per-class probabilities as a layer (its first slider picks the "
                                    "class; the slider's label names them).")
        row.addWidget(self.proba_check)
        v.addLayout(row)
