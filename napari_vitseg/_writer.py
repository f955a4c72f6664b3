"""npe2 writer: a Labels layer (segmentation or scribbles) to a TIFF, atomically, with its classes.

The class table of the layer (ids, names, colours: what the segmentation widget puts on its
scribbles and segmentation layers) is stored in the TIFF's JSON description
(:func:`napari_vitseg.io._tiff.class_table_metadata`), so that the plugin's reader reopens the
file as a Labels layer with the same names and colours. No Qt is imported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["layer_class_table", "write_labels"]


def _hex_of(color) -> str | None:
    """``'#rrggbb'`` of a colour given as '#rrggbb' / '#rrggbbaa' or RGB(A) floats in [0, 1]."""
    if isinstance(color, str):
        c = color.strip().lower()
        if c.startswith("#") and len(c) in (7, 9):
            try:
                int(c[1:], 16)
            except ValueError:
                return None
            return c[:7]
        return None
    try:
        rgb = [float(v) for v in list(color)[:3]]
    except (TypeError, ValueError):
        return None
    if len(rgb) != 3 or not all(np.isfinite(rgb)):
        return None
    r, g, b = (int(round(min(max(v, 0.0), 1.0) * 255)) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _feature_names(features) -> dict[int, str]:
    """``{label: name}`` from a Labels features table with ``index`` and ``class`` columns."""
    try:
        index, names = list(features["index"]), list(features["class"])
    except (KeyError, TypeError, IndexError):
        return {}
    out = {}
    for i, n in zip(index, names, strict=False):
        try:
            i = int(i)
        except (TypeError, ValueError):
            continue
        if i >= 1 and isinstance(n, str):
            out[i] = n
    return out


def layer_class_table(meta: dict) -> list[dict] | None:
    """The class table of a Labels layer, from the attributes napari passes to writers.

    Names come from ``metadata['class_names']`` (class k is entry k - 1, the convention of the
    segmentation widget and of the sample data), else from a ``features`` table with ``index``
    and ``class`` columns; colours from a direct colormap (``colormap.color_dict`` or a plain
    ``{label: colour}`` dict). Classes without a name get ``'class k'``, without a colour the
    default class colour. A layer with neither names nor a direct colormap (instance labels,
    napari's cyclic colours) has no class table.

    Parameters
    ----------
    meta : dict
        Layer attributes (``layer._get_state()``): ``metadata``, ``colormap``, ``features``.

    Returns
    -------
    list of dict or None
        ``{'id', 'name', 'color'}`` per class, sorted by id.
    """
    from .pipeline.segmenter import default_class_color, default_class_name

    md = meta.get("metadata") if isinstance(meta.get("metadata"), dict) else {}
    names: dict[int, str] = {}
    listed = md.get("class_names")
    if isinstance(listed, (list, tuple)) and all(isinstance(n, str) for n in listed):
        names = {k: n for k, n in enumerate(listed, start=1)}
    elif meta.get("features") is not None:
        names = _feature_names(meta["features"])
    cmap = meta.get("colormap")
    cdict = getattr(cmap, "color_dict", cmap if isinstance(cmap, dict) else None)
    colors: dict[int, str] = {}
    if isinstance(cdict, dict):
        for k, v in cdict.items():
            if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1:
                h = _hex_of(v)
                if h is not None:
                    colors[int(k)] = h
    if not names and not colors:
        return None
    ids = sorted(set(names) | (set(colors) if not names else set()))
    return [{"id": k, "name": names.get(k, default_class_name(k)), "color": colors.get(k, default_class_color(k))}
            for k in ids]


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write label data as an uint8 / uint16 / uint32 TIFF (the smallest that fits), with its classes.

    The file is written under a temporary name and renamed when complete
    (:func:`napari_vitseg.io.write_tiff`). The layer's class table (:func:`layer_class_table`)
    goes into the TIFF's JSON description; the plugin's reader turns it back into a Labels
    layer with the same colours and class names.

    Parameters
    ----------
    path : str
        Destination; ``.tif`` is appended when the name has no TIFF suffix.
    data : array-like of int
        Labels, (Y, X) or (Z, Y, X); dask arrays are computed.
    meta : dict
        Layer attributes: ``metadata['class_names']``, ``colormap`` and ``features`` give the
        class table; the rest is unused.

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    VitsegError
        Negative, non-integer or too-large label values.
    """
    from ._validation import VitsegError
    from .io import is_tiff, write_tiff
    from .io._tiff import VITSEG_KEY, class_table_metadata

    arr = np.asarray(data)
    if arr.dtype.kind not in "biu":
        raise VitsegError(f"Labels must be integers to be written as TIFF; got dtype {arr.dtype}.")
    lo = int(arr.min()) if arr.size else 0
    hi = int(arr.max()) if arr.size else 0
    if lo < 0:
        raise VitsegError(f"Labels must be >= 0 to be written as TIFF; the layer has value {lo}.")
    for dt in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dt).max:
            break
    else:
        raise VitsegError(f"Label value {hi} does not fit in uint32.")
    p = Path(path)
    if not is_tiff(p):
        p = p.with_name(p.name + ".tif")
    axes = {2: "YX", 3: "ZYX"}.get(arr.ndim)
    metadata = {"axes": axes} if axes else {}
    table = layer_class_table(meta or {})
    if table is not None:
        metadata[VITSEG_KEY] = class_table_metadata(table, role="labels", axes=axes)
    write_tiff(p, arr.astype(dt, copy=False), metadata=metadata or None, rgb=False)
    return [str(p)]
