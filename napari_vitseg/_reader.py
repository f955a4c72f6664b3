"""npe2 reader: TIFF files, read lazily when they are large.

:func:`napari_get_reader` returns ``None`` for anything it cannot read (other suffixes,
missing files, lists, folders, files tifffile rejects), so that other readers can try.
Small files are read into memory; files above :data:`LAZY_BYTES` stay on disk as a dask
array chunked per plane (tifffile ``aszarr`` + zarr), so a multi-GB stack opens at once.
No Qt is imported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["napari_get_reader", "read_tiff", "LAZY_BYTES"]

#: Files larger than this (bytes of pixel data) are opened lazily as dask arrays.
LAZY_BYTES = 256 * 2**20


def _tiff_path(path) -> Path | None:
    if not isinstance(path, (str, Path)):
        return None
    from .io import is_tiff

    p = Path(path)
    if not is_tiff(p) or not p.is_file():
        return None
    try:
        import tifffile

        with tifffile.TiffFile(p) as tf:
            if not tf.series:
                return None
    except Exception:  # noqa: BLE001 - anything tifffile rejects is "not ours"
        return None
    return p


def napari_get_reader(path):
    """Return :func:`read_tiff` when ``path`` is one readable ``.tif`` / ``.tiff`` file, else ``None``.

    Parameters
    ----------
    path : str or pathlib.Path
        napari may also pass a list of paths; lists are declined.

    Returns
    -------
    callable or None
    """
    return read_tiff if _tiff_path(path) is not None else None


def read_tiff(path) -> list[tuple]:
    """Read one TIFF as a napari image layer.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    list of LayerData tuples
        ``[(data, {'name', 'rgb', 'multiscale', 'metadata'}, 'image')]``; ``data`` is a
        numpy array, or a dask array (chunked per plane) above :data:`LAZY_BYTES`. An RGB(A)
        TIFF (axes ending in ``S`` with 3 or 4 samples) gives ``rgb=True``. The TIFF axes
        string and the channel axis (if any) are stored in ``metadata`` for the
        segmentation widget.
    """
    import tifffile

    from ._validation import VitsegError
    from .io import image_stem, open_image, read_image

    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as e:
        raise VitsegError(f"Cannot read {str(path)!r} as a TIFF image ({e}).") from None
    nbytes = int(np.prod(shape)) * dtype.itemsize
    lazy = nbytes > LAZY_BYTES
    data = open_image(path).data if lazy else read_image(path)
    rgb = axes.endswith("S") and shape[-1] in (3, 4)
    channel_axis = next((axes.index(c) for c in "SC" if c in axes), None)
    name = image_stem(path)
    meta = {
        "name": name,
        "rgb": bool(rgb),
        "multiscale": False,
        "metadata": {"axes": axes, "channel_axis": channel_axis, "path": str(path), "lazy": lazy},
    }
    return [(data, meta, "image")]
