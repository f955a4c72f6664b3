"""Lazy zarr / OME-Zarr reading (zarr + ome-zarr + dask).

An OME-Zarr image's NGFF ``multiscales`` metadata (axes, the path of each resolution level)
is read through the ome-zarr library; a plain zarr array takes its axes from its dimension
names (zarr v3 ``dimension_names`` or xarray's ``_ARRAY_DIMENSIONS``), else from its number
of dimensions. The pixels are read by zarr, lazily, through dask.

Axes follow tifffile's convention (:attr:`napari_vitseg.io.LazyImage.axes`): NGFF's ``t``,
``c``, ``z``, ``y``, ``x`` become ``T``, ``C``, ``Z``, ``Y``, ``X``; axes of length 1 other
than Y and X are dropped (as tifffile squeezes them), a ``C`` axis longer than 1 is reported
as the channel axis, and a time axis longer than 1 is refused (choose one time point).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from .._validation import VitsegError
from ._paths import ZARR_METADATA
from ._tiff import UM_PER_UNIT, LazyImage, lazy_planes, positive_length

__all__ = ["open_zarr", "zarr_axes"]

#: NGFF axis names (lower case) and types -> tifffile's axis letters.
_NGFF_NAMES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
_NGFF_TYPES = {"time": "T", "channel": "C"}


@contextmanager
def _quiet_ome_zarr():
    """ome-zarr logs a warning when a file's NGFF version differs from its newest; not ours to show."""
    log = logging.getLogger("ome_zarr")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def zarr_axes(names, shape) -> str:
    """tifffile-style axes of a zarr array from NGFF axes or dimension names.

    Parameters
    ----------
    names : sequence of str or dict, or None
        NGFF axes (``{'name': 'z', 'type': 'space'}`` or ``'z'``), dimension names, or
        ``None`` when the array has none.
    shape : tuple of int

    Returns
    -------
    str
        One letter per axis: ``T``, ``C``, ``Z``, ``Y``, ``X``, or ``Q`` for an axis of
        unknown meaning. Without names a 2D array is ``'YX'`` and a 3D one ``'ZYX'``.

    Raises
    ------
    VitsegError
        No names and neither 2 nor 3 dimensions, or names that do not match the shape.

    Examples
    --------
    >>> zarr_axes([{"name": "c", "type": "channel"}, "z", "y", "x"], (2, 5, 8, 8))
    'CZYX'
    >>> zarr_axes(None, (5, 8, 8)), zarr_axes(["T", "angle", "y", "x"], (1, 3, 8, 8))
    ('ZYX', 'TQYX')
    """
    if names is None or all(n is None for n in names):
        if len(shape) in (2, 3):
            return "ZYX"[3 - len(shape):]
        raise VitsegError(
            f"Cannot tell the axes of a {len(shape)}D zarr array without axes metadata; save it as "
            "OME-Zarr (with 'axes'), or with dimension names such as ['z', 'y', 'x']."
        )
    if len(names) != len(shape):
        raise VitsegError(f"The zarr axes {list(names)} do not match the array's shape {tuple(shape)}.")
    out = ""
    for n in names:
        name, kind = (n.get("name"), n.get("type")) if isinstance(n, dict) else (n, None)
        out += _NGFF_NAMES.get(str(name).lower()) or _NGFF_TYPES.get(str(kind).lower(), "Q")
    return out


def open_zarr(path) -> LazyImage:
    """Open a zarr array or OME-Zarr image lazily; only metadata is read.

    Parameters
    ----------
    path : str or pathlib.Path
        A folder: an OME-Zarr image (a group with NGFF ``multiscales`` metadata, v0.1-0.5,
        zarr v2 or v3), a bioformats2raw container (its first image, ``0``), or a zarr
        array.

    Returns
    -------
    LazyImage
        ``kind='zarr'``; ``levels`` every resolution level, full resolution first (one for a
        plain array); ``data`` is ``levels[0]``; ``axes`` as described in this module's
        docstring (e.g. ``'ZYX'``, ``'CZYX'``, ``'YX'``). Each level is a dask array with one
        plane per chunk (:func:`napari_vitseg.io.plane_chunks`), so reading a plane reads
        only the stored chunks that hold it.

    Raises
    ------
    VitsegError
        Missing path, a file or a folder that is no zarr store, a group without an image,
        invalid NGFF metadata, a time axis longer than 1, more than one channel axis, or
        axes that do not end in (Y, X).

    Examples
    --------
    >>> import numpy as np, tempfile, zarr
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = zarr.create_array(d + "/stack.zarr", data=np.full((4, 8, 8), 7, np.uint8), chunks=(1, 8, 8))
    ...     im = open_zarr(d + "/stack.zarr")
    ...     print(im.axes, im.shape, im.data.chunksize, int(im.data[2].sum()))
    ZYX (4, 8, 8) (1, 8, 8) 448
    """
    import zarr

    path = Path(path).expanduser()
    if not path.exists():
        raise VitsegError(f"{str(path)!r} does not exist; check the path.")
    if not path.is_dir():
        raise VitsegError(
            f"{str(path)!r} is a file, not a zarr folder; give the folder of a zarr array or OME-Zarr image."
        )
    if not any((path / m).is_file() for m in ZARR_METADATA):
        raise VitsegError(
            f"{str(path)!r} is not a zarr store (it holds no {', '.join(ZARR_METADATA)}); give the folder "
            "of a zarr array or OME-Zarr image, the one that holds that metadata."
        )
    try:
        node = zarr.open(str(path), mode="r")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VitsegError(f"Cannot read {str(path)!r} as zarr ({type(e).__name__}: {e}).") from None
    if isinstance(node, zarr.Array):
        arrays = [node]
        names = node.metadata.dimension_names if node.metadata.zarr_format == 3 else node.attrs.get("_ARRAY_DIMENSIONS")
    else:
        attrs = node.attrs.asdict()
        ome = attrs.get("ome", attrs)
        if "multiscales" in ome:
            datasets, names, transforms = _ngff_multiscales(path)
            try:
                arrays = [node[d] for d in datasets]
            except KeyError as e:
                raise VitsegError(
                    f"{str(path)!r}: the OME-Zarr metadata names a resolution level {e} that is missing."
                ) from None
            if not all(isinstance(a, zarr.Array) for a in arrays):
                raise VitsegError(f"{str(path)!r}: the OME-Zarr levels {datasets} are not all arrays.")
        elif "bioformats2raw.layout" in ome and "0" in node:
            return open_zarr(path / "0")
        else:
            members = sorted(node.keys())
            hint = f"open one of its members, e.g. {str(path / members[0])!r}" if members else "it is empty"
            raise VitsegError(
                f"{str(path)!r} is a zarr group without an image (no OME-Zarr 'multiscales' metadata); {hint}."
            )
    axes = zarr_axes(names, arrays[0].shape)
    voxel_size = ngff_voxel_size(names, axes, transforms) if not isinstance(node, zarr.Array) else None
    return _lazy_image(path, arrays, axes, voxel_size)


def ngff_voxel_size(names, axes: str, transforms) -> dict[str, float] | None:
    """The physical pixel size of an OME-Zarr image's full-resolution level: its ``scale``
    coordinate transformation on the Z / Y / X axes, in micrometres where the axes name their
    unit (NGFF's ``'nanometer'``, ``'micrometer'``, ...), else in their common unit. Anything
    malformed declares nothing (``None``), never an error.

    Parameters
    ----------
    names : sequence of dict or str
        The NGFF ``axes``.
    axes : str
        Their letters (:func:`zarr_axes`).
    transforms : list or None
        The ``coordinateTransformations`` of each level (full resolution first).

    Returns
    -------
    dict or None
        ``{'Z': dz, 'Y': dy, 'X': dx}`` with the spatial axes it has (Y and X at least).

    Examples
    --------
    >>> ngff_voxel_size([{"name": "z", "unit": "micrometer"}, {"name": "y", "unit": "nanometer"},
    ...                  {"name": "x", "unit": "nanometer"}], "ZYX", [[{"type": "scale", "scale": [0.5, 200, 200]}]])
    {'Z': 0.5, 'Y': 0.2, 'X': 0.2}
    """
    try:
        scale = next(t["scale"] for t in transforms[0] if t.get("type") == "scale")
        if len(scale) != len(axes):
            return None
        out = {}
        for letter, n, v in zip(axes, names, scale, strict=True):
            if letter not in "ZYX":
                continue
            unit = n.get("unit") if isinstance(n, dict) else None
            factor = 1.0 if unit is None else UM_PER_UNIT.get(str(unit).lower())
            size = positive_length(v)
            if factor is None or size is None:
                return None
            out[letter] = size * factor
    except (TypeError, KeyError, IndexError, StopIteration, ValueError, AttributeError):
        return None
    return out if {"Y", "X"} <= set(out) else None


def _ngff_multiscales(path: Path) -> tuple[list[str], list, list | None]:
    """The level paths, axes and coordinate transformations of an OME-Zarr image, through
    ome-zarr's reader."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    try:
        with _quiet_ome_zarr():
            loc = parse_url(str(path), mode="r")
            node = next(iter(Reader(loc)())) if loc is not None else None
    except (ValueError, KeyError, TypeError, IndexError, OSError) as e:
        raise VitsegError(
            f"{str(path)!r} has invalid OME-Zarr 'multiscales' metadata ({type(e).__name__}: {e}); "
            "check it with an OME-Zarr validator."
        ) from None
    spec = next((s for s in (node.specs if node is not None else ()) if isinstance(s, Multiscales)), None)
    if spec is None:
        raise VitsegError(f"ome-zarr found no image in {str(path)!r}; give the folder of an OME-Zarr image.")
    return list(spec.datasets), node.metadata.get("axes"), node.metadata.get("coordinateTransformations")


def _lazy_image(path: Path, arrays: list, axes: str, voxel_size: dict | None = None) -> LazyImage:
    """Dask levels with one plane per chunk, singleton axes dropped, the axes checked."""

    shape = arrays[0].shape
    if axes[-2:] != "YX":
        raise VitsegError(
            f"{str(path)!r} has axes {axes!r}; the last two must be the rows and columns (y, x)."
        )
    keep = [i for i, (a, n) in enumerate(zip(axes, shape, strict=True)) if a in "YX" or n > 1]
    kept = "".join(axes[i] for i in keep)
    if "T" in kept:
        n = shape[axes.index("T")]
        raise VitsegError(
            f"{str(path)!r} has {n} time points (axes {axes}); vitseg segments one (Z, Y, X) image at a "
            "time: choose one time point and save it as its own image."
        )
    if "Q" in kept or any(kept.count(a) > 1 for a in "CZYX"):
        raise VitsegError(
            f"{str(path)!r} has axes {axes!r} (Q: unknown) of shape {tuple(shape)}, which vitseg cannot "
            "place: keep one axis each of channels, planes, rows and columns (c, z, y, x)."
        )
    index = tuple(slice(None) if i in keep else 0 for i in range(len(axes)))
    levels = []
    for a in arrays:
        if a.ndim != len(axes):
            raise VitsegError(f"{str(path)!r}: the resolution levels differ in their number of axes.")
        levels.append(lazy_planes(a, axes, path)[index])
    return LazyImage(path=path, data=levels[0], axes=kept, store=None, levels=levels, kind="zarr",
                     voxel_size=voxel_size)
