"""The napari layers that the segmentation widget writes.

:class:`OutputLayers` owns the ``segmentation``, ``uncertainty`` and ``probabilities`` layers
and draws the planes (or row bands) that jobs yield into them, in place; :func:`write_classes`
puts class names and colours on a Labels layer (the scribbles and the segmentation).

Small images get numpy output layers. Above :data:`OUTPUT_MEMORY_BYTES` of output (a big
stack) the layers are backed by :class:`OutputStores`: zarr arrays in a temporary folder,
chunked per plane, that napari reads plane by plane as it displays them; a plane is written
when it is predicted and unpredicted planes cost nothing (no chunk on disk). The folder is
removed when the widget closes. The uncertainty layer is uint8 everywhere (0..255 stands for
0..1); probabilities are float32 in memory and uint8 (0..255) in a store.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from .._sample_data import class_colormap
from ._controller import PlaneUpdate

__all__ = ["OUTPUT_MEMORY_BYTES", "OUTPUT_NAMES", "UNCERTAINTY_COLORMAP", "OutputLayers", "OutputStores", "hex_color", "layer_data",
           "write_classes"]

OUTPUT_NAMES = {"labels": "segmentation", "uncertainty": "uncertainty", "probabilities": "probabilities"}
#: Output layers above this size (bytes, all of them together) are on-disk stores, not numpy.
OUTPUT_MEMORY_BYTES = 256 * 2**20
#: Largest chunk side of a store (a 1024 x 1024 plane is one chunk).
STORE_CHUNK = 1024
#: Value of a probability or uncertainty of 1 in the uint8 layers.
U8_ONE = 255
#: Colormap of the uncertainty layer (dark = sure, bright = unsure; translucent blending).
UNCERTAINTY_COLORMAP = "inferno"


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


class OutputStores:
    """On-demand zarr arrays in one temporary folder, removed by :meth:`close`.

    The folder is also removed when this object is garbage-collected or the interpreter
    exits (``weakref.finalize``), so a crashed widget leaves nothing behind.
    """

    def __init__(self, prefix: str = "vitseg-outputs-"):
        self._prefix = prefix
        self._dir: Path | None = None
        self._finalizer = None
        self._n = 0

    @property
    def path(self) -> Path | None:
        """The temporary folder (``None`` until the first store)."""
        return self._dir

    def create(self, shape: tuple, dtype):
        """A zero-filled zarr array, chunked per plane (tiles of :data:`STORE_CHUNK` on big planes)."""
        import zarr

        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=self._prefix))
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._dir), ignore_errors=True)
        self._n += 1
        chunks = tuple([1] * (len(shape) - 2) + [min(int(n), STORE_CHUNK) for n in shape[-2:]])
        return zarr.create_array(store=str(self._dir / f"{self._n}.zarr"), shape=tuple(int(n) for n in shape),
                                 chunks=chunks, dtype=np.dtype(dtype), fill_value=0)

    def remove(self, array) -> None:
        """Delete the folder of one store made here (no-op for other arrays)."""
        if self._dir is None:
            return
        root = getattr(getattr(array, "store", None), "root", None)
        if root is not None and Path(root).parent == self._dir:
            shutil.rmtree(root, ignore_errors=True)

    def owns(self, array) -> bool:
        root = getattr(getattr(array, "store", None), "root", None)
        return self._dir is not None and root is not None and Path(root).parent == self._dir

    def close(self) -> None:
        """Remove the folder and everything in it."""
        if self._finalizer is not None:
            self._finalizer()
        self._dir = None
        self._finalizer = None


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
    stores : OutputStores
        The on-disk arrays behind the layers of big images.
    memory_limit : int
        Outputs above this many bytes go to :attr:`stores` (:data:`OUTPUT_MEMORY_BYTES`).
    show_uncertainty : bool
        The uncertainty layer is visible (the widget's *show uncertainty* box).
    """

    def __init__(self, viewer, controller, inputs):
        self.viewer = viewer
        self.controller = controller
        self.inputs = inputs
        self.layers: dict = {}
        self.predicted: set = set()
        self.stores = OutputStores()
        self.memory_limit = OUTPUT_MEMORY_BYTES
        self.show_uncertainty = False

    def owns(self, layer) -> bool:
        """Whether ``layer`` is one of the outputs (not offered as an input)."""
        return any(layer is out for out in self.layers.values())

    def forget_removed(self) -> None:
        """Drop outputs that the user removed from the viewer (and their stores)."""
        for key, layer in list(self.layers.items()):
            if layer not in self.viewer.layers:
                del self.layers[key]
                self.stores.remove(layer.data)

    def mark_stale(self) -> None:
        """The model, image or features changed: planes must be predicted again."""
        self.predicted.clear()

    # -- geometry and memory ---------------------------------------------------------------
    def on_disk(self, spatial: tuple, key: str = "labels", k: int = 2) -> bool:
        """Whether the output ``key`` of an image of this spatial shape is an on-disk store."""
        px = int(np.prod(spatial))
        if 2 * px > self.memory_limit:  # segmentation + uint8 uncertainty
            return True
        return key == "probabilities" and 4 * k * px > self.memory_limit

    def spec(self, key: str, spatial: tuple, k: int = 2) -> tuple[tuple, np.dtype, bool]:
        """(shape, dtype, on disk) of the output ``key``."""
        disk = self.on_disk(spatial, key, k)
        if key == "probabilities":
            return (k, *spatial), np.dtype(np.uint8 if disk else np.float32), disk
        return tuple(spatial), np.dtype(np.uint8), disk

    def memory_needed(self, spatial: tuple, *, probabilities: bool, k: int) -> int:
        """Bytes of numpy output layers that drawing every plane would still allocate."""
        total = 0
        for key in ("labels", "uncertainty") + (("probabilities",) if probabilities else ()):
            shape, dtype, disk = self.spec(key, spatial, k)
            layer = self.layers.get(key)
            if disk or (layer is not None and tuple(layer.data.shape) == shape and layer.data.dtype == dtype):
                continue
            total += int(np.prod(shape)) * dtype.itemsize
        return total

    def _new_data(self, shape, dtype, disk: bool):
        return self.stores.create(shape, dtype) if disk else np.zeros(shape, dtype)

    def layer(self, key: str, spatial: tuple, *, classes=None):
        """The output layer ``key`` for this image, made (or its data replaced) if needed."""
        k = len(classes) if classes is not None else 2
        shape, dtype, disk = self.spec(key, spatial, k)
        layer = self.layers.get(key)
        if layer is not None and layer in self.viewer.layers and tuple(layer.data.shape) == shape \
                and layer.data.dtype == dtype:
            return layer
        data = self._new_data(shape, dtype, disk)
        tr = self.inputs.spatial_transform()
        if key == "probabilities":
            tr = {name: [1.0 if name == "scale" else 0.0] + v for name, v in tr.items()}
        if layer is not None and layer in self.viewer.layers:
            old = layer.data
            layer.data = data
            if key != "labels":
                layer.contrast_limits = (0, U8_ONE) if dtype == np.uint8 else (0, 1)
            if key == "probabilities" and classes is not None:
                layer.metadata = {**(layer.metadata or {}), "classes": [int(c) for c in classes]}
                self._label_class_axis(layer)
            self.stores.remove(old)
            return layer
        scribbles = self.inputs.scribbles_layer
        idx = self.viewer.layers.index(scribbles) if scribbles is not None and scribbles in self.viewer.layers else None
        names, colors = self.controller.class_names, self.controller.class_colors
        if key == "labels":
            layer = self.viewer.add_labels(data, name=OUTPUT_NAMES[key], opacity=0.45,
                                           colormap=class_colormap(max(len(names), 1), colors),
                                           metadata={"class_names": list(names)}, **tr)
        elif key == "uncertainty":
            # translucent, not additive: readable over colour images as well as grey ones
            layer = self.viewer.add_image(data, name=OUTPUT_NAMES[key], colormap=UNCERTAINTY_COLORMAP,
                                          contrast_limits=(0, U8_ONE), blending="translucent", opacity=0.6,
                                          visible=self.show_uncertainty, metadata={"value_of_one": U8_ONE}, **tr)
        else:
            one = U8_ONE if dtype == np.uint8 else 1
            cls = [int(c) for c in classes]
            layer = self.viewer.add_image(data, name=OUTPUT_NAMES[key], colormap="gray", contrast_limits=(0, one),
                                          blending="translucent", opacity=0.6, visible=False,
                                          metadata={"classes": cls, "value_of_one": one,
                                                    "class_names": self._names_of(cls)}, **tr)
            self._label_class_axis(layer)
        self.layers[key] = layer
        if idx is not None:  # keep the scribbles on top, and active for painting
            self.viewer.layers.move(self.viewer.layers.index(layer), idx)
            self.viewer.layers.selection.active = scribbles
        if key == "labels":
            write_classes(layer, names, colors)
        self.inputs.refresh()  # the new layer is an output, not an input
        return layer

    def _names_of(self, classes) -> list[str]:
        names = self.controller.class_names
        return [names[c - 1] if 0 < c <= len(names) else f"class {c}" for c in classes]

    def _label_class_axis(self, layer) -> None:
        """Name the classes on the probabilities layer's first axis (napari's slider label)."""
        cls = list((layer.metadata or {}).get("classes") or [])
        names = self._names_of(cls)
        md = dict(layer.metadata or {})
        md["class_names"] = names
        layer.metadata = md
        labels = list(layer.axis_labels)
        labels[0] = "class: " + ", ".join(f"{i}={n}" for i, n in enumerate(names))
        try:
            layer.axis_labels = tuple(labels)
        except (ValueError, TypeError):  # cosmetic
            pass

    def name_classes(self) -> None:
        """The class names changed: rename them on the probabilities layer."""
        layer = self.layers.get("probabilities")
        if layer is not None and layer in self.viewer.layers:
            self._label_class_axis(layer)

    def set_uncertainty_visible(self, on: bool) -> None:
        """Show or hide the uncertainty layer (now and when it is made)."""
        self.show_uncertainty = bool(on)
        layer = self.layers.get("uncertainty")
        if layer is not None and layer in self.viewer.layers:
            layer.visible = self.show_uncertainty

    def show(self, upd: PlaneUpdate) -> None:
        """Draw one plane's prediction (or a band of its rows) into the output layers, in place."""
        spatial = self.inputs.spatial_shape()
        if spatial is None:
            return
        ny, nx = spatial[-2:]
        y0, y1 = upd.rows if upd.rows is not None else (0, ny)
        if tuple(upd.labels.shape) != (y1 - y0, nx) or y1 > ny or (upd.z is None) != (len(spatial) == 2):
            return  # the image changed under the job
        sl = ((upd.z,) if upd.z is not None else ()) + (slice(y0, y1),)
        lab = self.layer("labels", spatial)
        lab.data[sl] = upd.labels
        lab.refresh()
        unc = self.layer("uncertainty", spatial)
        unc.data[sl] = upd.uncertainty
        unc.refresh()
        if upd.probabilities is not None:
            prob = self.layer("probabilities", spatial, classes=upd.classes)
            p = upd.probabilities
            if prob.data.dtype == np.uint8:
                p = np.clip(np.rint(p * U8_ONE), 0, U8_ONE).astype(np.uint8)
            prob.data[(slice(None),) + sl] = p
            prob.refresh()
        if upd.complete:
            self.predicted.add(upd.z)

    def close(self) -> None:
        """Remove the on-disk stores, and the layers that showed them (the widget closes)."""
        for key, layer in list(self.layers.items()):
            if self.stores.owns(layer.data):
                try:
                    if layer in self.viewer.layers:
                        self.viewer.layers.remove(layer)
                except Exception:  # noqa: BLE001 - the viewer may be closing
                    pass
                del self.layers[key]
        self.stores.close()
