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

The widget's *Export…* menu writes these layers to TIFF files (:meth:`OutputLayers.export_plan`,
:func:`iter_export`); :class:`ClassLegend` shows the class names in their colours on the canvas
and :class:`ClassShortcuts` binds Alt+1..9 to "paint with class k".
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._progress import Progress
from .._sample_data import class_colormap
from .._validation import VitsegError
from ._controller import PlaneUpdate

__all__ = ["CLASS_KEYS", "EXPORTS", "OUTPUT_MEMORY_BYTES", "OUTPUT_NAMES", "UNCERTAINTY_COLORMAP", "ClassLegend",
           "ClassShortcuts", "ExportPlan", "OutputLayers", "OutputStores", "hex_color", "iter_export", "layer_data",
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
#: What *Export…* writes: name -> (output layer key, file name suffix after the image's stem).
#: The suffixes are those of *Apply to files…* (``_seg.tif``, ``_seg_probabilities.tif``), so
#: that the plugin's reader reopens the files with their class names and colours.
EXPORTS = {"segmentation": ("labels", "_seg"), "probabilities": ("probabilities", "_seg_probabilities"),
           "uncertainty": ("uncertainty", "_seg_uncertainty")}
#: napari key combinations that choose class 1..9 for painting. napari binds the bare digits
#: 1-7 to the Labels modes (erase, paint, polygon, fill, pick, pan/zoom, transform) and
#: advises against Shift with digits (keyboard layouts turn Shift+1 into '!'); Alt+digit is
#: bound nowhere in napari 0.5-0.9.
CLASS_KEYS = tuple(f"Alt-{k}" for k in range(1, 10))
#: Keys of the legend's text overlays in ``viewer.canvas.overlays`` (``{}``: the class id).
LEGEND_KEY = "vitseg_class_{}"


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
    predicted_probabilities : set
        Those of :attr:`predicted` whose probabilities were drawn too (the *probabilities
        layer* box was ticked).
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
        self.predicted_probabilities: set = set()
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
        self.predicted_probabilities.clear()

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
            if upd.probabilities is not None:
                self.predicted_probabilities.add(upd.z)

    # -- export --------------------------------------------------------------------------------
    def export_plan(self, what: str, path, *, sources: dict, names, colors) -> ExportPlan:
        """What *Export…* would write to ``path``: checked on the UI thread, written by :func:`iter_export`.

        Parameters
        ----------
        what : {'segmentation', 'probabilities', 'uncertainty'}
        path : str or pathlib.Path
            The TIFF to write (``.tif`` is appended to a name without a TIFF suffix).
        sources : dict
            ``{file path: layer name}`` of the files the viewer's layers came from (the image,
            the scribbles...): the export never writes over one of them.
        names, colors : sequence of str
            Class names and ``'#rrggbb'`` colours of labels 1..K (the class table).

        Returns
        -------
        ExportPlan
            ``missing`` lists the planes (``None`` for a 2D image) that the current classifier
            has not drawn into the layer; ``data`` is ``None`` when the layer does not exist.

        Raises
        ------
        VitsegError
            An unknown ``what``, no image, or a path that is a layer's source file, a folder, a
            non-regular file or in a folder that does not exist. Nothing is written.
        """
        from ..io import is_tiff
        from ..io._atomic import check_output_path, same_file
        from ..pipeline.segmenter import default_class_color, default_class_name

        if what not in EXPORTS:
            raise VitsegError(f"Export: 'what' must be one of {sorted(EXPORTS)}; got {what!r}.")
        spatial = self.inputs.spatial_shape()
        if spatial is None:
            raise VitsegError("Nothing to export: choose an image layer (and segment it) first.")
        path = Path(path)
        if not is_tiff(path):
            path = path.with_name(path.name + ".tif")
        for src, layer_name in sources.items():
            if same_file(path, src):
                raise VitsegError(f"Export: {str(path)!r} is the file of the layer {layer_name!r}; exporting there "
                                  f"would overwrite it. Choose another name (e.g. the proposed *{EXPORTS[what][1]}.tif).")
        check_output_path(path, inputs=list(sources), what=f"{what} file")
        key = EXPORTS[what][0]
        layer = self.layers.get(key)
        planes = [None] if len(spatial) == 2 else list(range(spatial[0]))
        data = None
        if layer is not None and layer in self.viewer.layers:
            shape = tuple(layer.data.shape[1:] if key == "probabilities" else layer.data.shape)
            if shape == tuple(spatial):
                data = layer.data
        done = self.predicted_probabilities if key == "probabilities" else self.predicted
        missing = [z for z in planes if data is None or z not in done]
        classes = [int(c) for c in ((layer.metadata or {}).get("classes") or [])] if data is not None else []
        if key == "probabilities" and data is not None and len(classes) != data.shape[0]:
            classes = list(range(1, data.shape[0] + 1))
        ids = classes if key == "probabilities" else list(range(1, len(names) + 1))
        table = [{"id": k, "name": names[k - 1] if k <= len(names) else default_class_name(k),
                  "color": colors[k - 1] if k <= len(colors) else default_class_color(k)} for k in ids]
        return ExportPlan(what, path, data, planes, missing, table, list(sources))

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


# -- export -----------------------------------------------------------------------------------
def _plane_list(planes) -> str:
    """``'planes 2, 3 and 5'`` (numbered as napari's slider, from 0)."""
    zs = [str(z) for z in planes]
    if len(zs) == 1:
        return f"plane {zs[0]}"
    return f"planes {', '.join(zs[:-1])} and {zs[-1]}"


@dataclass
class ExportPlan:
    """One file that *Export…* writes (made by :meth:`OutputLayers.export_plan`).

    Attributes
    ----------
    what : {'segmentation', 'probabilities', 'uncertainty'}
    path : pathlib.Path
        The TIFF to write.
    data : array-like or None
        The output layer's data: (Y, X) or (Z, Y, X) uint8 labels / uncertainty (0..255), or
        (K, Y, X) / (K, Z, Y, X) probabilities (float32, or uint8 0..255 in an on-disk store);
        ``None`` when the layer does not exist.
    planes : list
        Every plane of the image (``[None]`` for a 2D image).
    missing : list
        Planes the current classifier has not drawn (written as 0 labels, NaN probabilities
        and uncertainty).
    table : list of dict
        ``{'id', 'name', 'color'}`` of the classes (labels 1..K; for probabilities, the
        classifier's classes in the order of the ``C`` axis).
    inputs : list of str
        Source files of the viewer's layers: never written over.
    written : pathlib.Path or None
        Set by :func:`iter_export` once the file is in place.
    """

    what: str
    path: Path
    data: object
    planes: list
    missing: list
    table: list
    inputs: list = field(default_factory=list)
    written: Path | None = None

    @property
    def stack(self) -> bool:
        return self.planes != [None]

    @property
    def complete(self) -> bool:
        """Every plane is drawn by the current classifier."""
        return not self.missing

    @property
    def empty(self) -> bool:
        """No plane is drawn by the current classifier: nothing to export."""
        return len(self.missing) == len(self.planes)

    def describe_missing(self) -> str:
        """``'planes 2 and 5 of 6 are not segmented…'`` (empty when complete)."""
        if not self.missing:
            return ""
        if not self.stack:
            return "the image is not segmented with the current classifier"
        return (f"{_plane_list(self.missing)} of {len(self.planes)} "
                f"{'is' if len(self.missing) == 1 else 'are'} not segmented with the current classifier")

    @property
    def axes(self) -> str:
        spatial = "ZYX" if self.stack else "YX"
        if self.what == "probabilities":
            return "ZCYX" if self.stack else "CYX"
        return spatial

    def metadata(self) -> dict:
        """tifffile ``metadata``: axes and the :data:`~napari_vitseg.io._tiff.VITSEG_KEY` entry
        (role and class table, as *Apply to files…* writes them; plus the missing planes)."""
        from ..io._tiff import VITSEG_KEY, class_table_metadata

        if self.what == "uncertainty":
            from .. import __version__

            entry = {"version": __version__, "role": "uncertainty",
                     "definition": "1 - max class probability: 0 = sure, 1 = unsure"}
        else:
            role = "probabilities" if self.what == "probabilities" else "labels"
            entry = class_table_metadata(self.table, role=role, axes=self.axes)
        if self.missing and self.stack:
            entry["missing_planes"] = [int(z) for z in self.missing]
        return {"axes": self.axes, VITSEG_KEY: entry}

    def summary(self) -> str:
        """The status line after the export."""
        where = self.written or self.path
        msg = f"Exported the {self.what} to {where}."
        if self.missing:
            fill = "0 (unlabelled)" if self.what == "segmentation" else "NaN"
            msg += f" Note: {self.describe_missing()}; written as {fill}."
        return msg


def iter_export(plan: ExportPlan):
    """Write an :class:`ExportPlan` to its TIFF, plane by plane, atomically.

    The file is written under a unique temporary name and renamed into place when complete
    (:func:`napari_vitseg.io._atomic.atomic_write`, with :class:`napari_vitseg.io.TiffPlaneWriter`
    inside), so a cancelled or failed export leaves nothing behind and never a half file.
    Stored: the segmentation as uint8 labels (``YX`` / ``ZYX``) with the class table; the
    probabilities as float32 in 0..1 (``CYX`` / ``ZCYX``) with the class names and colours of
    the ``C`` axis; the uncertainty as float32 in 0..1 (``YX`` / ``ZYX``). Planes not drawn by
    the current classifier are 0 (labels) or NaN (probabilities, uncertainty).

    Yields
    ------
    Progress
        One step per plane.

    Returns
    -------
    ExportPlan
        ``plan`` with :attr:`ExportPlan.written` set.

    Raises
    ------
    VitsegError
        The path became invalid (see :func:`~napari_vitseg.io._atomic.check_output_path`) or the
        layer does not exist.
    """
    from ..io import TiffPlaneWriter
    from ..io._atomic import atomic_write

    if plan.data is None or plan.empty:
        raise VitsegError(f"Nothing to export: the {plan.what} is not drawn yet; press Train or Apply to stack.")
    data = plan.data
    proba = plan.what == "probabilities"
    spatial = tuple(data.shape[1:] if proba else data.shape)
    ny, nx = spatial[-2:]
    k = int(data.shape[0]) if proba else 0
    plane_shape = (k, ny, nx) if proba else (ny, nx)
    dtype = np.dtype(np.uint8 if plan.what == "segmentation" else np.float32)
    shape = ((len(plan.planes),) if plan.stack else ()) + plane_shape
    missing = set(plan.missing)
    n = len(plan.planes)
    with atomic_write(plan.path, inputs=plan.inputs, what=f"{plan.what} file") as tmp, \
            TiffPlaneWriter(tmp, shape, dtype, n_planes=n, metadata=plan.metadata()) as writer:
        for i, z in enumerate(plan.planes):
            yield Progress(i, n, f"writing the {plan.what}: {f'plane {z} ({i + 1}/{n})' if plan.stack else 'image'}",
                           unit="plane")
            if z in missing:
                plane = np.zeros(plane_shape, dtype) if dtype == np.uint8 else np.full(plane_shape, np.nan, dtype)
            else:
                sl = (slice(None),) if proba else ()
                plane = np.asarray(data[sl + ((z,) if z is not None else ())])
                if dtype == np.float32:
                    plane = plane.astype(np.float32) / U8_ONE if plane.dtype == np.uint8 else plane.astype(np.float32)
            writer.write(plane)
    plan.written = plan.path
    yield Progress(n, n, f"wrote {plan.path.name}", unit="plane")
    return plan


# -- legend and shortcuts ----------------------------------------------------------------------
class ClassLegend:
    """The class names in their colours on napari's canvas (top left), one line per class.

    napari's single text overlay (``viewer.text_overlay``) has one colour; napari >= 0.6 tiles
    any number of canvas overlays at one position, so each class gets its own
    :class:`napari.components.overlays.TextOverlay` (``'■ 1  background'`` in the class colour,
    on napari's background box), under the keys ``vitseg_class_<k>`` of
    ``viewer.canvas.overlays``. The number is the class's Alt+number shortcut.
    """

    def __init__(self, viewer):
        self.viewer = viewer
        self.visible = True
        self._keys: list[str] = []
        self._classes: tuple = ((), ())

    def _overlays(self):
        canvas = getattr(self.viewer, "canvas", None)
        return getattr(canvas, "overlays", None)

    @property
    def lines(self) -> list[str]:
        """The legend's lines as shown (empty when hidden)."""
        overlays = self._overlays()
        if overlays is None:
            return []
        return [overlays[k].text for k in self._keys if k in overlays and overlays[k].visible]

    def show(self, names, colors) -> None:
        """Show (or update) the legend for classes 1..K."""
        self._classes = (tuple(names), tuple(colors))
        overlays = self._overlays()
        if overlays is None:  # napari < 0.6: no canvas overlays (the status bar still names the class)
            return
        from napari.components.overlays import TextOverlay

        names, colors = list(names), list(colors)
        keys = [LEGEND_KEY.format(k) for k in range(1, len(names) + 1)]
        for key in self._keys:
            if key not in keys and key in overlays:
                del overlays[key]
        for key, k, name, color in zip(keys, range(1, len(names) + 1), names, colors, strict=False):
            text = f"■ {k}  {name}"
            ov = overlays.get(key)
            if ov is None:
                overlays[key] = TextOverlay(text=text, color=color, position="top_left", box=True, font_size=11,
                                            visible=self.visible)
            else:
                ov.text, ov.color, ov.visible = text, color, self.visible
        self._keys = keys

    def set_visible(self, on: bool) -> None:
        self.visible = bool(on)
        overlays = self._overlays()
        for key in self._keys:
            if overlays is not None and key in overlays:
                overlays[key].visible = self.visible

    def clear(self) -> None:
        """Remove the legend's overlays (the widget closes)."""
        overlays = self._overlays()
        for key in self._keys:
            if overlays is not None and key in overlays:
                try:
                    del overlays[key]
                except Exception:  # noqa: BLE001 - the viewer may be closing
                    pass
        self._keys = []


class ClassShortcuts:
    """Alt+1..Alt+9 on the viewer: paint with class 1..9 (:data:`CLASS_KEYS`).

    Bound in the viewer's keymap, so they work whichever layer is selected (``choose`` makes
    the scribbles layer active); a key already bound there (by the user or another plugin) is
    left alone. :meth:`unbind` removes only the bindings made here.

    Parameters
    ----------
    viewer : napari.Viewer
    choose : callable ``(k) -> None``
        Called with the class number when its key is pressed.
    """

    def __init__(self, viewer, choose: Callable[[int], None]):
        self.viewer = viewer
        self.choose = choose
        self.bound: dict[str, Callable] = {}
        self.skipped: list[str] = []

    def bind(self) -> list[str]:
        """Bind the free keys of :data:`CLASS_KEYS`; returns those bound."""
        for k, key in enumerate(CLASS_KEYS, start=1):
            if key in self.bound:
                continue

            def press(viewer, k=k):
                self.choose(k)

            try:
                self.viewer.bind_key(key, press)
            except (ValueError, TypeError, AttributeError):  # taken: keep the user's binding
                self.skipped.append(key)
                continue
            self.bound[key] = press
        return list(self.bound)

    def unbind(self) -> None:
        """Remove the bindings made by :meth:`bind` (those still ours)."""
        from napari.utils.key_bindings import coerce_keybinding

        keymap = getattr(self.viewer, "keymap", {})
        for key, func in list(self.bound.items()):
            if keymap.get(coerce_keybinding(key)) is func:
                self.viewer.bind_key(key, None)
        self.bound.clear()
