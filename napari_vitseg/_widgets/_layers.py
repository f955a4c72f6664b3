"""The napari layers that the segmentation widget writes.

:class:`OutputLayers` owns the ``segmentation``, ``uncertainty`` and ``probabilities`` layers
and draws the planes that jobs yield into them, in place; :func:`write_classes` puts class
names and colours on a Labels layer (the scribbles and the segmentation).
"""

from __future__ import annotations

import numpy as np

from .._sample_data import class_colormap
from ._controller import PlaneUpdate

__all__ = ["OUTPUT_NAMES", "OutputLayers", "hex_color", "layer_data", "write_classes"]

OUTPUT_NAMES = {"labels": "segmentation", "uncertainty": "uncertainty", "probabilities": "probabilities"}


def hex_color(rgba) -> str:
    """``'#rrggbb'`` of an RGB(A) colour with components in [0, 1]."""
    r, g, b = (int(round(float(c) * 255)) for c in list(rgba)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def layer_data(layer):
    """A layer's data (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def write_classes(layer, names, colors) -> None:
    """Write class names (metadata, hover features) and colours 1..K to a Labels layer."""
    names = list(names)
    cmap = class_colormap(len(names), colors)
    md = dict(layer.metadata or {})
    md["class_names"] = names
    layer.metadata = md
    try:
        old = {k: hex_color(layer.get_color(k)) for k in range(1, len(names) + 1)}
        if old != {k: cmap[k] for k in range(1, len(names) + 1)} or not hasattr(layer.colormap, "color_dict"):
            layer.colormap = cmap
        layer.features = {"index": list(range(len(names) + 1)), "class": ["unlabelled", *names]}
    except Exception:  # noqa: BLE001 - cosmetic; never break the widget over it
        pass


class OutputLayers:
    """The output layers of the segmentation widget, updated in place.

    Parameters
    ----------
    viewer : napari.Viewer
    controller : SegmentationController
        Class names and colours of a new segmentation layer.
    inputs : InputSection
        The image (shape and scale of the outputs) and the scribbles (kept above the outputs).

    Attributes
    ----------
    layers : dict
        ``'labels'``, ``'uncertainty'``, ``'probabilities'`` -> layer, once made.
    predicted : set
        Planes (``None`` for a 2D image) drawn at full resolution with the current model.
    """

    def __init__(self, viewer, controller, inputs):
        self.viewer = viewer
        self.controller = controller
        self.inputs = inputs
        self.layers: dict = {}
        self.predicted: set = set()

    def owns(self, layer) -> bool:
        """Whether ``layer`` is one of the outputs (not offered as an input)."""
        return any(layer is out for out in self.layers.values())

    def forget_removed(self) -> None:
        """Drop outputs that the user removed from the viewer."""
        for key, layer in list(self.layers.items()):
            if layer not in self.viewer.layers:
                del self.layers[key]

    def mark_stale(self) -> None:
        """The model, image or features changed: planes must be predicted again."""
        self.predicted.clear()

    def layer(self, key: str, shape: tuple, dtype, *, classes=None):
        """The output layer ``key`` with this shape and dtype, made (or its data replaced) if needed."""
        layer = self.layers.get(key)
        if layer is not None and layer in self.viewer.layers and tuple(layer.data.shape) == shape \
                and layer.data.dtype == dtype:
            return layer
        data = np.zeros(shape, dtype)
        tr = self.inputs.spatial_transform()
        if key == "probabilities":
            tr = {k: [1.0 if k == "scale" else 0.0] + v for k, v in tr.items()}
        if layer is not None and layer in self.viewer.layers:
            layer.data = data
            return layer
        scribbles = self.inputs.scribbles_layer
        idx = self.viewer.layers.index(scribbles) if scribbles is not None and scribbles in self.viewer.layers else None
        names, colors = self.controller.class_names, self.controller.class_colors
        if key == "labels":
            layer = self.viewer.add_labels(data, name=OUTPUT_NAMES[key], opacity=0.45,
                                           colormap=class_colormap(max(len(names), 1), colors),
                                           metadata={"class_names": list(names)}, **tr)
        elif key == "uncertainty":
            layer = self.viewer.add_image(data, name=OUTPUT_NAMES[key], colormap="magma", contrast_limits=(0, 1),
                                          blending="additive", opacity=0.6, visible=False, **tr)
        else:
            layer = self.viewer.add_image(data, name=OUTPUT_NAMES[key], colormap="gray", contrast_limits=(0, 1),
                                          blending="additive", opacity=0.6, visible=False,
                                          metadata={"classes": [int(c) for c in classes]}, **tr)
        self.layers[key] = layer
        if idx is not None:  # keep the scribbles on top, and active for painting
            self.viewer.layers.move(self.viewer.layers.index(layer), idx)
            self.viewer.layers.selection.active = scribbles
        if key == "labels":
            write_classes(layer, names, colors)
        self.inputs.refresh()  # the new layer is an output, not an input
        return layer

    def show(self, upd: PlaneUpdate) -> None:
        """Draw one plane's prediction into the output layers, in place."""
        spatial = self.inputs.spatial_shape()
        if spatial is None:
            return
        if tuple(upd.labels.shape) != tuple(spatial[-2:]) or (upd.z is None) != (len(spatial) == 2):
            return  # the image changed under the job
        sl = (upd.z,) if upd.z is not None else (Ellipsis,)
        lab = self.layer("labels", spatial, np.dtype(np.uint8))
        lab.data[sl] = upd.labels
        lab.refresh()
        unc = self.layer("uncertainty", spatial, np.dtype(np.float32))
        unc.data[sl] = upd.uncertainty
        unc.refresh()
        if upd.probabilities is not None:
            k = upd.probabilities.shape[0]
            prob = self.layer("probabilities", (k, *spatial), np.dtype(np.float32), classes=upd.classes)
            prob.data[(slice(None),) + sl] = upd.probabilities
            prob.refresh()
        if not upd.coarse:
            self.predicted.add(upd.z)
