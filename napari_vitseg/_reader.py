"""npe2 reader: TIFF files and zarr / OME-Zarr folders, read lazily when they are large.

:func:`napari_get_reader` returns ``None`` for anything it cannot read (other suffixes,
missing files, lists, folders that are no zarr store, files tifffile rejects, zarr groups
without an image or with several time points), so that other readers (napari's builtins,
napari-ome-zarr) can try. Small TIFF files are read into memory; TIFF files above
:data:`LAZY_BYTES` stay on disk as a dask array chunked per plane (tifffile ``aszarr`` +
zarr), so a multi-GB stack opens at once. Zarr images are always lazy. Pyramids (a
multi-level OME-TIFF or OME-Zarr) give a multiscale image layer: the list of levels, full
resolution first. A glob pattern of TIFF slices (``viewer.open("slices/*.tif")``) opens as one
lazy stack. No Qt is imported here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["napari_get_reader", "read_tiff", "read_zarr", "LAZY_BYTES"]

#: Files larger than this (bytes of pixel data) are opened lazily as dask arrays.
LAZY_BYTES = 256 * 2**20


def _tiff_path(path) -> Path | None:
    if not isinstance(path, (str, Path)):
        return None
    from ._validation import VitsegError
    from .io import is_pattern, is_tiff, pattern_files, tiff_series

    p = Path(path)
    if not is_tiff(p):
        return None
    if is_pattern(p):  # a stack of slices: readable if the first file is a TIFF
        files = pattern_files(p)
        p = Path(files[0]) if files else p
    if not p.is_file():
        return None
    try:
        tiff_series(p)
    except VitsegError:  # anything tifffile rejects is "not ours"
        return None
    return Path(path)


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
    """Return the reader for one TIFF file / pattern of TIFF slices or zarr folder, else ``None``.

    Parameters
    ----------
    path : str or pathlib.Path
        napari may also pass a list of paths; lists are declined.

    Returns
    -------
    callable or None
        :func:`read_tiff`, :func:`read_zarr` or ``None``.
    """
    if _tiff_path(path) is not None:
        return read_tiff
    if _zarr_path(path) is not None:
        return read_zarr
    return None


def _layer(data, *, path, axes: str, channel_axis: int | None, rgb: bool, lazy: bool) -> list[tuple]:
    """One image ``LayerData`` tuple; a list ``data`` is a pyramid (``multiscale=True``)."""
    from .io import image_stem

    meta = {
        "name": image_stem(path),
        "rgb": rgb,
        "multiscale": isinstance(data, list),
        "metadata": {"axes": axes, "channel_axis": channel_axis, "path": str(path), "lazy": lazy},
    }
    return [(data, meta, "image")]


def _lazy_layer(im) -> list[tuple]:
    """The layer of a :class:`~napari_vitseg.io.LazyImage`: its levels if a pyramid, else its data."""
    data = list(im.levels) if im.multiscale else im.data
    return _layer(data, path=im.path, axes=im.axes, channel_axis=im.channel_axis, rgb=im.rgb, lazy=True)


def read_tiff(path) -> list[tuple]:
    """Read one TIFF (or a glob pattern of TIFF slices) as a napari image layer.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    list of LayerData tuples
        ``[(data, {'name', 'rgb', 'multiscale', 'metadata'}, 'image')]``; ``data`` is a
        numpy array, a dask array (chunked per plane) above :data:`LAZY_BYTES` or for a
        pattern of slices, or for a pyramidal OME-TIFF the list of its levels as dask arrays
        (``multiscale=True``). An RGB(A) TIFF (axes ending in ``S`` with 3 or 4 samples)
        gives ``rgb=True``. ``metadata`` holds the axes string, the channel axis (if any),
        the path and whether the data is lazy, for the segmentation widget.
    """
    from .io import is_pattern, open_image, read_image, tiff_series

    if isinstance(path, (list, tuple)):
        path = path[0]
    if is_pattern(path):
        return _lazy_layer(open_image(path))
    series = tiff_series(path)
    if series.n_levels > 1:
        return _lazy_layer(open_image(path))
    lazy = series.nbytes > LAZY_BYTES
    data = open_image(path).data if lazy else read_image(path)
    return _layer(data, path=path, axes=series.axes, channel_axis=series.channel_axis, rgb=series.rgb,
                  lazy=lazy)


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

