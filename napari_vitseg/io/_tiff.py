"""Lazy TIFF reading and atomic, plane-by-plane TIFF writing (tifffile + zarr + dask)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._validation import VitsegError
from ._paths import IMAGE_SUFFIXES, is_tiff

__all__ = ["LazyImage", "TiffSeries", "tiff_series", "open_image", "read_image", "TiffPlaneWriter", "write_tiff"]


@dataclass
class LazyImage:
    """An image opened without reading its pixels.

    Attributes
    ----------
    path : pathlib.Path
    data : dask.array.Array
        Lazily read pixels, chunked by TIFF page (one plane per chunk for stacks).
    axes : str
        tifffile's axes string of the series (e.g. ``'ZYX'``, ``'YXS'`` for RGB).
    """

    path: Path
    data: object
    axes: str
    store: object = None

    def close(self) -> None:
        """Close the underlying TIFF file (the dask array must not be used afterwards)."""
        if self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def channel_axis(self) -> int | None:
        """Index of the samples/channel axis ('S' or 'C') when tifffile reports one."""
        for ch in "SC":
            if ch in self.axes:
                return self.axes.index(ch)
        return None


@dataclass(frozen=True)
class TiffSeries:
    """Shape, dtype and axes of a TIFF's first series, read from its header only.

    Attributes
    ----------
    axes : str
        tifffile's axes string (e.g. ``'ZYX'``, ``'YXS'`` for RGB).
    shape : tuple of int
    dtype : numpy.dtype
    """

    axes: str
    shape: tuple
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of pixel data the series declares."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def channel_axis(self) -> int | None:
        """Index of the samples/channel axis ('S' or 'C'), if any."""
        return next((self.axes.index(c) for c in "SC" if c in self.axes), None)

    @property
    def rgb(self) -> bool:
        """Whether the series is RGB(A): a trailing samples axis of 3 or 4."""
        return self.axes.endswith("S") and self.shape[-1] in (3, 4)


def tiff_series(path) -> TiffSeries:
    """Describe a TIFF's first series without reading pixel data.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    TiffSeries

    Raises
    ------
    VitsegError
        Missing file, folder, a file tifffile cannot read, or one without an image series.
    """
    import tifffile

    path = _check_path(path)
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            return TiffSeries(series.axes, tuple(series.shape), np.dtype(series.dtype))
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as e:
        raise VitsegError(f"Cannot read {str(path)!r} as a TIFF image ({e}).") from None


def _check_path(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise VitsegError(f"File {str(path)!r} does not exist.")
    if path.is_dir():
        raise VitsegError(f"{str(path)!r} is a folder; give a TIFF file.")
    return path


def open_image(path) -> LazyImage:
    """Open a TIFF lazily (tifffile ``aszarr`` -> zarr -> dask); no pixel data is read.

    Parameters
    ----------
    path : str or pathlib.Path
        A TIFF / BigTIFF / OME-TIFF file.

    Returns
    -------
    LazyImage
        Keeps the file open; close it with :meth:`LazyImage.close` or use it as a context
        manager (``with open_image(p) as im: ...``).

    Raises
    ------
    VitsegError
        Missing file, folder, or a file tifffile cannot read.
    """
    import dask.array as da
    import tifffile
    import zarr

    path = _check_path(path)
    axes = tiff_series(path).axes
    try:
        store = tifffile.imread(path, aszarr=True)
        try:
            z = zarr.open(store, mode="r")
        except BaseException:
            store.close()
            raise
        if not hasattr(z, "shape"):  # a multiscale group: take level 0
            z = z[0]
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError) as e:
        raise VitsegError(f"Cannot read {str(path)!r} as a TIFF image ({e}).") from None
    chunks = (1,) * max(0, z.ndim - 2 - (axes[-1:] in ("S",))) + tuple(z.shape[max(0, z.ndim - 2 - (axes[-1:] in ("S",))):])
    data = da.from_zarr(z, chunks=chunks)
    return LazyImage(path=path, data=data, axes=axes, store=store)


def read_image(path) -> np.ndarray:
    """Read a whole image file into memory (for small images and scribbles).

    TIFF files are read with tifffile; PNG, JPEG and BMP (:data:`IMAGE_SUFFIXES`) with imageio.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    ndarray
        As stored: (Y, X), (Z, Y, X), (Y, X, 3) for RGB, ...

    Raises
    ------
    VitsegError
        Missing or unreadable file.
    """
    import tifffile

    path = _check_path(path)
    if is_tiff(path) or path.suffix.lower() not in IMAGE_SUFFIXES:
        try:
            return tifffile.imread(path)
        except (tifffile.TiffFileError, OSError, ValueError) as e:
            raise VitsegError(f"Cannot read {str(path)!r} as a TIFF image ({e}).") from None
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path))
    except Exception as e:  # noqa: BLE001 - imageio raises many types for unreadable files
        raise VitsegError(f"Cannot read image {str(path)!r} ({type(e).__name__}: {e}).") from None


class TiffPlaneWriter:
    """Write a (Z, Y, X[, C]) or (Y, X[, C]) TIFF plane by plane, atomically.

    Planes go to ``<path>.part`` as one contiguous BigTIFF series; :meth:`close` renames it
    to ``path`` only after every plane was written, so an interrupted run never leaves a
    file that looks complete.

    Parameters
    ----------
    path : str or pathlib.Path
    shape : tuple of int
        Full shape of the output.
    dtype : numpy dtype
    planes_axis_len : int
        Number of planes that will be written (``shape[0]`` for stacks, 1 for 2D).
    metadata : dict, optional
        Written as tifffile ``metadata`` (e.g. ``{'axes': 'ZYX'}``).
    """

    def __init__(self, path, shape, dtype, *, n_planes: int, metadata: dict | None = None):
        import tifffile

        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".part")
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.n_planes = n_planes
        self.written = 0
        if self.path.parent and not self.path.parent.exists():
            raise VitsegError(f"Output folder {str(self.path.parent)!r} does not exist.")
        bigtiff = int(np.prod(self.shape)) * self.dtype.itemsize > 2**31
        self._tw = tifffile.TiffWriter(self.tmp, bigtiff=bigtiff)
        self._metadata = metadata

    def write(self, plane: np.ndarray) -> None:
        """Append the next plane."""
        plane = np.ascontiguousarray(plane, dtype=self.dtype)
        if self.written == 0:
            self._tw.write(plane, contiguous=True, photometric="minisblack", metadata=self._metadata)
        else:
            self._tw.write(plane, contiguous=True)
        self.written += 1

    def close(self) -> Path:
        """Finish the file and rename it into place.

        Raises
        ------
        RuntimeError
            If fewer planes than announced were written (the partial file is removed).
        """
        self._tw.close()
        if self.written != self.n_planes:
            self.abort()
            raise RuntimeError(f"{self.path}: wrote {self.written} of {self.n_planes} planes")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            self._tw.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_tiff(path, data: np.ndarray, metadata: dict | None = None, *, rgb: bool | None = None) -> Path:
    """Write an in-memory array to TIFF atomically (temporary name, then rename).

    Parameters
    ----------
    path : str or pathlib.Path
    data : ndarray
        (Y, X), (Z, Y, X), (Y, X, 3|4) RGB(A), ...
    metadata : dict, optional
        tifffile metadata, e.g. ``{'axes': 'ZYX'}``.
    rgb : bool, optional
        Store a trailing axis of 3 or 4 as colour samples. Default: only for (Y, X, 3|4)
        data; everything else (a 3-plane stack included) is stored grey (minisblack).

    Returns
    -------
    pathlib.Path
    """
    import tifffile

    path = Path(path)
    data = np.asarray(data)
    if rgb is None:
        rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
    tmp = path.with_name(path.name + ".part")
    try:
        tifffile.imwrite(tmp, data, metadata=metadata, bigtiff=data.nbytes > 2**31,
                         photometric="rgb" if rgb else "minisblack")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path
