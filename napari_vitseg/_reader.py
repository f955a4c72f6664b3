"""npe2 reader: napari-vitseg's outputs, OME-TIFF / BigTIFF, TIFF slices and zarr / OME-Zarr, lazily.

**What the reader is offered.** napari asks every plugin whose ``filename_patterns``
(napari.yaml) match a file's *name* and shows "Choose reader" as soon as two match; napari's
builtin reader matches every ``*.tif``, and the patterns are all npe2 looks at (a reader's
``napari_get_reader`` runs only after the choice, and the dialog lists the plugins' display
names, with no room for a reason). So the manifest names only what this reader does better
than napari's builtin one, and a plain ``cells.tif`` opens with the builtin reader, without a
dialog:

- our label outputs: ``*_seg.tif`` (batch apply, ``vitseg apply``), ``*segmentation.tif`` and
  ``*scribbles.tif`` (the widget's layers saved with **File > Save Selected Layers**) open as a
  **Labels** layer with their class names and colours (:func:`read_tiff`); probability
  outputs (``*_probabilities.tif``) as one image layer per class, named and coloured;
- ``*.ome.tif`` / ``*.ome.tiff`` / ``*.btf`` / ``*.tf8``: pyramids as multiscale layers, the channel
  axis from the OME / ImageJ axes, files above :data:`LAZY_BYTES` read lazily;
- a glob pattern of TIFF slices (``slices/*.tif``) and a folder of TIFF slices: one lazy stack;
- zarr arrays and OME-Zarr images (``*.zarr`` folders).

For these the choice matters, and the dialog is worth its click. :func:`napari_get_reader`
itself accepts any TIFF tifffile can read, so that a reader chosen in the dialog (or with
``viewer.open(path, plugin="napari-vitseg")``) never refuses the file; it returns ``None`` for
what it cannot read (other suffixes, missing files, lists, folders that are neither a zarr
store nor a folder of TIFF slices, files tifffile rejects, zarr groups without an image or with
several time points), so that other readers (napari's builtins, napari-ome-zarr) can try.

Small TIFF files are read into memory; TIFF files above :data:`LAZY_BYTES` stay on disk as a
dask array chunked per plane (tifffile ``aszarr`` + zarr), so a multi-GB stack opens at once.
Zarr images are always lazy. Pyramids (a multi-level OME-TIFF or OME-Zarr) give a multiscale
image layer: the list of levels, full resolution first. A stack whose file declares its voxel
size with a z step other than 1 (OME ``PhysicalSize*``, ImageJ ``spacing`` and resolution,
OME-Zarr ``scale``) gets it as the layer's ``scale`` (:func:`napari_vitseg.io.layer_scale`), which
the segmentation widget's *Across planes: auto* then takes as the z step. No Qt is imported here.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

__all__ = ["napari_get_reader", "read_tiff", "read_zarr", "LAZY_BYTES", "LABEL_NAME_PATTERNS"]

#: Files larger than this (bytes of pixel data) are opened lazily as dask arrays.
LAZY_BYTES = 256 * 2**20
#: Names of label files (case-insensitive) that open as Labels even without our class table:
#: outputs of napari-vitseg written before the table was stored, and the widget's layers saved
#: by name. Only integer, single-channel files; everything else opens as an image.
LABEL_NAME_PATTERNS = ("*_seg.tif", "*_seg.tiff", "*segmentation.tif", "*segmentation.tiff",
                       "*scribbles.tif", "*scribbles.tiff")
#: Most classes given default colours when a label file has no class table.
MAX_DEFAULT_CLASSES = 64


def _folder_pattern(p: Path) -> str | None:
    """``folder/*.tif`` (or ``*.tiff``) for a plain folder that holds TIFF files, else ``None``."""
    from .io import is_tiff, is_zarr

    if not p.is_dir() or is_zarr(p):
        return None
    try:
        suffixes = [f.suffix for f in p.iterdir() if f.is_file() and is_tiff(f) and not f.name.startswith(".")]
    except OSError:
        return None
    if not suffixes:
        return None
    common = max(sorted(set(suffixes)), key=suffixes.count)  # .tif vs .tiff (vs .TIF): the most frequent
    return str(p / f"*{common}")


def _tiff_path(path) -> str | None:
    """The TIFF file, glob pattern of TIFF slices or folder pattern to read, if readable."""
    if not isinstance(path, (str, Path)):
        return None
    from ._validation import UnreadableInputError, VitsegError
    from .io import is_pattern, is_tiff, pattern_files, tiff_series

    p = Path(path)
    target = str(path)
    if p.is_dir():
        target = _folder_pattern(p)
        if target is None:
            return None
        p = Path(target)
    elif not is_tiff(p):
        return None
    if is_pattern(p):  # a stack of slices: readable if the first file is a TIFF
        files = pattern_files(p)
        p = Path(files[0]) if files else p
    if not p.is_file():
        return None
    try:
        tiff_series(p)
    except UnreadableInputError:  # a TIFF cut short or damaged: ours, so that napari shows why it cannot open
        return target
    except VitsegError:  # anything tifffile rejects is "not ours"
        return None
    return target


def _zarr_path(path) -> Path | None:
    if not isinstance(path, (str, Path)):
        return None
    from ._validation import VitsegError
    from .io import is_zarr, open_zarr

    p = Path(path)
    if not (p.is_dir() and is_zarr(p)):
        return None
    try:
        open_zarr(p)  # metadata only
    except VitsegError:  # plates, time series, groups without an image: left to other readers
        return None
    return p


def napari_get_reader(path):
    """Return the reader for one TIFF file, pattern or folder of TIFF slices or zarr folder, else ``None``.

    Parameters
    ----------
    path : str or pathlib.Path
        napari may also pass a list of paths; lists are declined.

    Returns
    -------
    callable or None
        :func:`read_tiff`, :func:`read_zarr` or ``None``.
    """
    if _zarr_path(path) is not None:
        return read_zarr
    if _tiff_path(path) is not None:
        return read_tiff
    return None


def _layer(data, *, path, axes: str, channel_axis: int | None, rgb: bool, lazy: bool,
           voxel_size: dict | None = None) -> list[tuple]:
    """One image ``LayerData`` tuple; a list ``data`` is a pyramid (``multiscale=True``); a stack
    whose file declares its voxel size gets it as the layer's ``scale``
    (:func:`napari_vitseg.io.layer_scale`)."""
    from .io import image_stem, layer_scale

    meta = {
        "name": image_stem(path),
        "rgb": rgb,
        "multiscale": isinstance(data, list),
        "metadata": {"axes": axes, "channel_axis": channel_axis, "path": str(path), "lazy": lazy},
    }
    scale = layer_scale(axes, rgb, voxel_size)
    if scale is not None:
        meta["scale"] = scale
        meta["metadata"]["voxel_size"] = dict(voxel_size)
    return [(data, meta, "image")]


def _lazy_layer(im) -> list[tuple]:
    """The layer of a :class:`~napari_vitseg.io.LazyImage`: its levels if a pyramid, else its data."""
    data = list(im.levels) if im.multiscale else im.data
    return _layer(data, path=im.path, axes=im.axes, channel_axis=im.channel_axis, rgb=im.rgb, lazy=True,
                  voxel_size=im.voxel_size)


def _is_label_name(path) -> bool:
    name = Path(path).name.lower()
    return any(fnmatch.fnmatchcase(name, pat) for pat in LABEL_NAME_PATTERNS)


def _opens_as_labels(series, path) -> bool:
    """Our label outputs: the stored role says so, or (older files) a label name and integer pixels."""
    if series.role is not None:
        return series.role == "labels" and series.dtype.kind in "biu"
    return (_is_label_name(path) and series.dtype.kind in "biu" and series.channel_axis is None
            and not series.rgb)


def _class_attrs(table: list[dict] | None, data) -> dict:
    """``colormap``, ``features`` and ``metadata`` entries of a Labels layer for a class table.

    Without a table (a label output written before tables were stored) classes 1..max get the
    default class colours (up to :data:`MAX_DEFAULT_CLASSES`, from in-memory data only) and
    no names.
    """
    import numpy as np

    from .pipeline.segmenter import default_class_color, default_class_name

    def class_colormap(n: int, colors=()) -> dict:  # as napari_vitseg._sample_data.class_colormap
        colors = list(colors)
        return {0: "transparent", None: "#808080",
                **{k: colors[k - 1] if k <= len(colors) else default_class_color(k) for k in range(1, n + 1)}}

    if table is None:
        if not isinstance(data, np.ndarray) or data.size == 0:
            return {}
        k = int(data.max())
        if not 1 <= k <= MAX_DEFAULT_CLASSES:
            return {}
        return {"colormap": class_colormap(k)}
    by_id = {c["id"]: c for c in table}
    n = max(by_id)
    names = [by_id[k]["name"] if k in by_id else default_class_name(k) for k in range(1, n + 1)]
    cmap = class_colormap(n, [by_id[k]["color"] if k in by_id else default_class_color(k) for k in range(1, n + 1)])
    return {
        "colormap": cmap,
        "features": {"index": [0, *range(1, n + 1)], "class": ["unlabelled", *names]},
        "metadata": {"class_names": names, "classes": table},
    }


def _labels_layer(data, *, path, series, lazy: bool) -> list[tuple]:
    """One Labels ``LayerData`` tuple with the file's class names and colours."""
    from .io import image_stem

    attrs = _class_attrs(series.class_table, data)
    meta = {
        "name": image_stem(path),
        "multiscale": isinstance(data, list),
        "metadata": {"axes": series.axes, "path": str(path), "lazy": lazy, **attrs.pop("metadata", {})},
        **attrs,
    }
    return [(data, meta, "labels")]


def _probabilities_layers(data, *, path, series, lazy: bool) -> list[tuple]:
    """A probability output with a class table and a ``C`` axis: one image layer per class."""
    from .io import image_stem

    table = series.class_table
    ca = series.axes.find("C")
    if table is None or ca < 0 or data.shape[ca] != len(table) or isinstance(data, list):
        return []
    stem = image_stem(path)
    out = []
    for i, c in enumerate(table):
        plane = data[(slice(None),) * ca + (i,)]
        meta = {"name": f"{stem} · {c['name']}", "colormap": _colormap_of(c["color"], c["name"]),
                "blending": "additive", "contrast_limits": (0.0, 1.0),
                "metadata": {"axes": series.axes.replace("C", ""), "path": str(path), "lazy": lazy,
                             "class": c}}
        out.append((plane, meta, "image"))
    return out


def _colormap_of(color: str, name: str) -> dict:
    """A black-to-``color`` linear colormap (napari accepts ``{'name', 'colors'}``)."""
    rgb = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    return {"name": f"vitseg {name} {color}", "colors": [[0.0, 0.0, 0.0, 1.0], [*rgb, 1.0]]}


def read_tiff(path) -> list[tuple]:
    """Read one TIFF (or a glob pattern / folder of TIFF slices) as a napari layer.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    list of LayerData tuples
        Images: ``[(data, {'name', 'rgb', 'multiscale', 'metadata'}, 'image')]``; ``data`` is a
        numpy array, a dask array (chunked per plane) above :data:`LAZY_BYTES` or for a
        pattern or folder of slices, or for a pyramidal OME-TIFF the list of its levels as dask
        arrays (``multiscale=True``). An RGB(A) TIFF (axes ending in ``S`` with 3 or 4
        samples) gives ``rgb=True``. ``metadata`` holds the axes string, the channel axis (if
        any), the path and whether the data is lazy, for the segmentation widget.

        Label outputs (a stored ``labels`` role, or without one an integer single-channel file
        named as in :data:`LABEL_NAME_PATTERNS`): ``[(data, {'name', 'multiscale', 'colormap',
        'features', 'metadata'}, 'labels')]`` with a direct colormap of the class colours
        (``{0: 'transparent', None: '#808080', id: '#rrggbb'}``), a features table
        (``index``, ``class``) that napari's status bar shows, and ``metadata['class_names']``
        (class k is entry k - 1) and ``metadata['classes']`` (the stored table).

        Probability outputs with a class table: one image layer per class, named
        ``'<stem> · <class>'``, coloured black to the class colour, additive, limits 0..1.
    """
    from .io import is_pattern, open_image, read_image, tiff_series

    if isinstance(path, (list, tuple)):
        path = path[0]
    if Path(path).is_dir():
        pattern = _folder_pattern(Path(path))
        if pattern is None:
            from ._validation import VitsegError

            raise VitsegError(f"{str(path)!r} holds no TIFF files; give a TIFF file, a folder of TIFF slices "
                              "or a zarr folder.")
        path = pattern
    if is_pattern(path):
        return _lazy_layer(open_image(path))
    series = tiff_series(path)
    if series.n_levels > 1:
        im = open_image(path)
        if _opens_as_labels(series, path):
            return _labels_layer(list(im.levels), path=path, series=series, lazy=True)
        return _lazy_layer(im)
    lazy = series.nbytes > LAZY_BYTES
    data = open_image(path).data if lazy else read_image(path)
    if _opens_as_labels(series, path):
        return _labels_layer(data, path=path, series=series, lazy=lazy)
    if series.role == "probabilities":
        layers = _probabilities_layers(data, path=path, series=series, lazy=lazy)
        if layers:
            return layers
    return _layer(data, path=path, axes=series.axes, channel_axis=series.channel_axis, rgb=series.rgb,
                  lazy=lazy, voxel_size=series.voxel_size)


def read_zarr(path) -> list[tuple]:
    """Read a zarr array or OME-Zarr image folder as a lazy napari image layer.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    list of LayerData tuples
        As :func:`read_tiff`; ``data`` is a dask array, or the list of levels
        (``multiscale=True``) for a multi-level OME-Zarr. Singleton time / channel / plane
        axes are dropped; a channel axis longer than 1 stays in the data and is named in
        ``metadata['channel_axis']``.
    """
    from .io import open_image

    if isinstance(path, (list, tuple)):
        path = path[0]
    return _lazy_layer(open_image(path))
