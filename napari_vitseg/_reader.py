"""npe2 reader: TIFF files, read lazily when they are large.

:func:`napari_get_reader` returns ``None`` for anything it cannot read (other suffixes,
missing files, lists, folders, files tifffile rejects), so that other readers can try.
Small files are read into memory; files above :data:`LAZY_BYTES` stay on disk as a dask
array chunked per plane (tifffile ``aszarr`` + zarr), so a multi-GB stack opens at once.
No Qt is imported here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["napari_get_reader", "read_tiff", "LAZY_BYTES"]

#: Files larger than this (bytes of pixel data) are opened lazily as dask arrays.
LAZY_BYTES = 256 * 2**20


def _tiff_path(path) -> Path | None:
    if not isinstance(path, (str, Path)):
        return None
    from ._validation import VitsegError
    from .io import is_tiff, tiff_series

    p = Path(path)
    if not is_tiff(p) or not p.is_file():
        return None
    try:
        tiff_series(p)
    except VitsegError:  # anything tifffile rejects is "not ours"
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
    from .io import image_stem, open_image, read_image, tiff_series

    if isinstance(path, (list, tuple)):
        path = path[0]
    series = tiff_series(path)
    lazy = series.nbytes > LAZY_BYTES
    data = open_image(path).data if lazy else read_image(path)
    meta = {
        "name": image_stem(path),
        "rgb": series.rgb,
        "multiscale": False,
        "metadata": {"axes": series.axes, "channel_axis": series.channel_axis, "path": str(path), "lazy": lazy},
    }
    return [(data, meta, "image")]
