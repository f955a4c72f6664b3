"""Lazy image reading and atomic, plane-by-plane TIFF writing (tifffile + zarr + dask).

:func:`open_image` is the one way to open an image lazily: a TIFF / BigTIFF / OME-TIFF file
(pyramidal ones with all their levels), a stack of 2D TIFF slices named by a glob pattern,
or a zarr array / OME-Zarr image (:mod:`napari_vitseg.io._zarr`). Nothing reads pixels until
they are asked for, and then one plane at a time.

Label outputs carry their class table (ids, names, colours) in the TIFF: tifffile writes its
``metadata`` dict as JSON into the first page's ImageDescription ("shaped" description, e.g.
``{"shape": [6, 518, 518], "axes": "ZYX", "napari_vitseg": {"role": "labels", "classes":
[{"id": 1, "name": "nucleus", "color": "#1f77b4"}, ...]}}``); :func:`class_table_metadata`
builds that entry and :func:`tiff_series` / :func:`parse_class_table` read it back. Other
programs ignore the extra key; the pixels stay plain uint8 / uint16 / uint32 labels.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._validation import UnreadableInputError, VitsegError, unreadable
from ._paths import IMAGE_SUFFIXES, is_pattern, is_tiff, is_zarr, pattern_files

__all__ = [
    "VITSEG_KEY",
    "LazyImage",
    "TiffSeries",
    "class_table_metadata",
    "parse_class_table",
    "tiff_series",
    "layer_scale",
    "open_image",
    "read_image",
    "plane_chunks",
    "TiffPlaneWriter",
    "write_tiff",
]

#: Key of napari-vitseg's entry (role, class table) in a TIFF's JSON ImageDescription.
VITSEG_KEY = "napari_vitseg"
#: Roles of the outputs that carry a :data:`VITSEG_KEY` entry.
ROLES = ("labels", "probabilities")


def class_table_metadata(classes, *, role: str = "labels", axes: str | None = None) -> dict:
    """The :data:`VITSEG_KEY` entry that a label (or probability) output stores in its TIFF.

    Parameters
    ----------
    classes : sequence of dict
        ``{'id': int >= 1, 'name': str, 'color': '#rrggbb'}`` per class, as
        :meth:`napari_vitseg.Segmenter.class_table` gives them.
    role : {'labels', 'probabilities'}
    axes : str, optional
        Axes of the stored array (``'YX'``, ``'ZYX'``, ``'CYX'``, ``'ZCYX'``).

    Returns
    -------
    dict
        ``{'version', 'role', 'classes'[, 'axes']}``: pass it as
        ``metadata={'axes': ..., VITSEG_KEY: entry}`` to tifffile.

    Raises
    ------
    VitsegError
        An unknown role or a class table that :func:`parse_class_table` would reject.

    Examples
    --------
    >>> e = class_table_metadata([{"id": 1, "name": "pore", "color": "#1F77B4"}], axes="YX")
    >>> e["role"], e["classes"]
    ('labels', [{'id': 1, 'name': 'pore', 'color': '#1f77b4'}])
    """
    from .. import __version__

    if role not in ROLES:
        raise VitsegError(f"role must be one of {list(ROLES)}; got {role!r}.")
    table = parse_class_table({"classes": list(classes)})
    if table is None:
        raise VitsegError("The class table must be a list of {'id': int >= 1, 'name': str, 'color': '#rrggbb'} "
                          f"with distinct ids; got {classes!r}.")
    entry = {"version": __version__, "role": role, "classes": table}
    if axes:
        entry["axes"] = axes
    return entry


def _hex(color) -> str | None:
    if not isinstance(color, str) or len(color) != 7 or color[0] != "#":
        return None
    try:
        int(color[1:], 16)
    except ValueError:
        return None
    return color.lower()


def parse_class_table(entry) -> list[dict] | None:
    """The class table of a :data:`VITSEG_KEY` entry, checked; ``None`` if absent or malformed.

    A file edited by hand or by another program must never stop it from opening: anything
    that is not a list of ``{'id': int >= 1, 'name': str, 'color': '#rrggbb'}`` with distinct
    ids gives ``None`` (the file then opens without class names).

    Parameters
    ----------
    entry : dict or None
        The entry (``{'classes': [...], ...}``).

    Returns
    -------
    list of dict or None
        Sorted by id; colours lower-case.
    """
    classes = entry.get("classes") if isinstance(entry, dict) else None
    if not isinstance(classes, list) or not classes:
        return None
    out = []
    for c in classes:
        if not isinstance(c, dict):
            return None
        cid, name, color = c.get("id"), c.get("name"), _hex(c.get("color"))
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 1 or not isinstance(name, str) or color is None:
            return None
        out.append({"id": cid, "name": name, "color": color})
    if len({c["id"] for c in out}) != len(out):
        return None
    return sorted(out, key=lambda c: c["id"])



@dataclass
class LazyImage:
    """An image opened without reading its pixels.

    Attributes
    ----------
    path : pathlib.Path
        What was opened: a TIFF file, a zarr folder or a glob pattern of TIFF slices.
    data : dask.array.Array
        Lazily read pixels of the full-resolution level, one plane per chunk (see
        :func:`plane_chunks`).
    axes : str
        One letter per axis of ``data``, in tifffile's convention: ``'Z'`` planes, ``'Y'``
        rows, ``'X'`` columns, ``'C'`` channels, ``'S'`` colour samples (RGB), e.g.
        ``'ZYX'``, ``'YXS'``, ``'CZYX'``.
    store : object, optional
        The open tifffile store, closed by :meth:`close`; ``None`` for zarr.
    levels : list of dask.array.Array
        Every resolution level, full resolution (``data``) first, each with the same
        ``axes``; ``[data]`` for an image that is not pyramidal.
    kind : str
        ``'tiff'``, ``'tiff-sequence'`` (a stack of slices) or ``'zarr'``.
    voxel_size : dict or None
        The physical pixel size the file declares, ``{'Z': dz, 'Y': dy, 'X': dx}`` (µm where
        its unit is known; :func:`voxel_size_of`), or ``None``.
    """

    path: Path
    data: object
    axes: str
    store: object = None
    levels: list = field(default_factory=list)
    kind: str = "tiff"
    voxel_size: dict | None = None

    def __post_init__(self):
        if not self.levels:
            self.levels = [self.data]

    def close(self) -> None:
        """Close the underlying TIFF file(s) (the dask arrays must not be used afterwards)."""
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
        """Index of the samples/channel axis ('S' or 'C') when there is one."""
        for ch in "SC":
            if ch in self.axes:
                return self.axes.index(ch)
        return None

    @property
    def rgb(self) -> bool:
        """Whether the image is RGB(A): a trailing samples axis of 3 or 4."""
        return self.axes.endswith("S") and self.shape[-1] in (3, 4)

    @property
    def multiscale(self) -> bool:
        """Whether the image has more than one resolution level (a pyramid)."""
        return len(self.levels) > 1

    @property
    def z_step(self) -> float | None:
        """The z step in pixels the file declares for a stack (:func:`z_step_of`), else ``None``."""
        return z_step_of(self.voxel_size) if "Z" in self.axes else None

    @property
    def layer_scale(self) -> tuple[float, ...] | None:
        """napari's ``scale`` for this image's layer (:func:`layer_scale`)."""
        return layer_scale(self.axes, self.rgb, self.voxel_size)


@dataclass(frozen=True)
class TiffSeries:
    """Shape, dtype and axes of a TIFF's first series, read from its header only.

    Attributes
    ----------
    axes : str
        tifffile's axes string (e.g. ``'ZYX'``, ``'YXS'`` for RGB).
    shape : tuple of int
    dtype : numpy.dtype
    n_levels : int
        Number of resolution levels (more than 1 for a pyramidal OME-TIFF).
    vitseg : dict or None
        The file's :data:`VITSEG_KEY` entry (role, class table) when napari-vitseg wrote it.
    voxel_size : dict or None
        The physical pixel size it declares (:func:`voxel_size_of`).
    """

    axes: str
    shape: tuple
    dtype: np.dtype
    n_levels: int = 1
    vitseg: dict | None = field(default=None, compare=False, hash=False)
    voxel_size: dict | None = field(default=None, compare=False, hash=False)

    @property
    def role(self) -> str | None:
        """``'labels'`` or ``'probabilities'`` for napari-vitseg's outputs, else ``None``."""
        role = (self.vitseg or {}).get("role")
        return role if role in ROLES else None

    @property
    def class_table(self) -> list[dict] | None:
        """The stored class table (:func:`parse_class_table`), or ``None``."""
        return parse_class_table(self.vitseg)

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


#: Lengths of the units microscopy files give pixel sizes in, in micrometres: OME's UnitsLength
#: symbols, ImageJ's spellings and NGFF's (OME-Zarr) unit names.
UM_PER_UNIT = {"pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "um": 1.0, "micron": 1.0, "\\u00B5m": 1.0,
               "mm": 1e3, "cm": 1e4, "m": 1e6, "angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0,
               "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6}


def positive_length(v) -> float | None:
    """``v`` as a float when it is a finite number > 0 (a pixel size), else ``None``."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def voxel_size_of(tf) -> dict[str, float] | None:
    """The physical pixel size a TIFF declares, per spatial axis, in micrometres where its unit
    is known (else in its own unit, the same for every axis).

    Read from the OME-XML ``Pixels`` element (``PhysicalSizeX/Y/Z`` and their units; OME's
    default unit is µm) or from ImageJ's metadata (``spacing`` between planes, with the pixel
    size from the ``XResolution`` / ``YResolution`` tags, pixels per unit). Malformed or
    missing values give no entry, never an error.

    Parameters
    ----------
    tf : tifffile.TiffFile
        The open file.

    Returns
    -------
    dict or None
        ``{'Z': dz, 'Y': dy, 'X': dx}`` with the axes the file declares (Y and X at least), or
        ``None`` when it declares no pixel size.
    """
    import tifffile

    out: dict[str, float] = {}
    try:
        if tf.is_ome and tf.ome_metadata:
            image = tifffile.xml2dict(tf.ome_metadata).get("OME", {}).get("Image", {})
            pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
            for ax in "ZYX":
                size = positive_length(pixels.get(f"PhysicalSize{ax}"))
                factor = UM_PER_UNIT.get(str(pixels.get(f"PhysicalSize{ax}Unit", "µm")))
                if size is not None and factor is not None:
                    out[ax] = size * factor
        elif tf.is_imagej and tf.imagej_metadata:
            page = tf.pages.first
            for ax, tag in (("Y", "YResolution"), ("X", "XResolution")):
                t = page.tags.get(tag)
                num, den = t.value if t is not None else (0, 0)
                size = positive_length(den / num) if num else None
                if size is not None:
                    out[ax] = size
            z = positive_length(tf.imagej_metadata.get("spacing"))
            if z is not None and out:
                out["Z"] = z
            factor = UM_PER_UNIT.get(str(tf.imagej_metadata.get("unit", "")))
            if factor is not None:
                out = {k: v * factor for k, v in out.items()}
    except Exception:  # noqa: BLE001 - metadata written by other programs must never stop a file from opening
        return None
    return out if {"Y", "X"} <= set(out) else None


def z_step_of(voxel_size: dict | None) -> float | None:
    """The z step in pixels a declared voxel size gives: ``Z / X``; ``None`` without both (as
    finite lengths > 0), when it is not finite, or when it is exactly 1 (what uncalibrated files and writers' defaults say: it tells nothing
    the pixels do not, as napari's default scale of 1).

    Parameters
    ----------
    voxel_size : dict or None
        ``{'Z': dz, 'Y': dy, 'X': dx}`` (:func:`voxel_size_of`).
    """
    if not voxel_size:
        return None
    z, x = positive_length(voxel_size.get("Z")), positive_length(voxel_size.get("X"))
    step = z / x if z is not None and x is not None else None
    return None if step is None or step == 1.0 or not np.isfinite(step) else step


def layer_scale(axes: str, rgb: bool, voxel_size: dict | None) -> tuple[float, ...] | None:
    """napari's ``scale`` for a stack's image layer: the declared pixel size on its Z / Y / X
    axes and 1 on the others (an RGB image's colour samples have none). ``None`` unless the file
    declares a z step other than 1 for a stack (:func:`z_step_of`; a 2D image keeps napari's
    pixel grid: it is the planes' spacing that changes how a stack is segmented,
    :func:`~napari_vitseg.features.volume.resolve_spatial`).

    Parameters
    ----------
    axes : str
        The image's axes (tifffile's letters, e.g. ``'ZYX'``, ``'CZYX'``, ``'ZYXS'``).
    rgb : bool
        Whether the last axis holds RGB(A) samples (napari gives it no scale).
    voxel_size : dict or None
        ``{'Z': dz, 'Y': dy, 'X': dx}`` (:func:`voxel_size_of`).

    Examples
    --------
    >>> layer_scale("CZYX", False, {"Z": 0.5, "Y": 0.2, "X": 0.2}), layer_scale("YX", False, {"Y": 1, "X": 1})
    ((1.0, 0.5, 0.2, 0.2), None)
    """
    if z_step_of(voxel_size) is None or "Z" not in axes:
        return None
    return tuple(float(voxel_size.get(a, 1.0)) if a in "ZYX" else 1.0 for a in (axes[:-1] if rgb else axes))


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
            shaped = tf.shaped_metadata[0] if tf.is_shaped and tf.shaped_metadata else {}
            damage = _cut_short(tf, series, shaped.get("shape"))
            vitseg = shaped.get(VITSEG_KEY)
            info = TiffSeries(series.axes, tuple(series.shape), np.dtype(series.dtype), len(series.levels),
                              vitseg if isinstance(vitseg, dict) else None, voxel_size_of(tf))
    except VitsegError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises struct.error, ValueError, ... for broken files
        raise VitsegError(f"Cannot read {str(path)!r} as a TIFF image ({type(e).__name__}: {str(e)[:120]}).") from None
    if damage:
        raise UnreadableInputError(
            f"{str(path)!r} is damaged or truncated ({damage}): only part of the image could be read; copy the "
            f"file again."
        )
    if 0 in info.shape:
        raise VitsegError(f"{str(path)!r} holds an empty image (shape {info.shape}); give an image with pixels.")
    return info


def _cut_short(tf, series, declared=None) -> str | None:
    """What shows that an open TIFF was cut short or damaged after its first page, else ``None``.

    tifffile recovers from a chain of IFDs (pages) that points past the end of the file, or into
    bytes that are no IFD, by ending the chain there and logging an error: a file cut short then
    reads as its first plane(s) without an exception (an OME-TIFF also loses its OME-XML, written
    last, and with it its shape). Four checks, all cheap next to reading pixels: the last IFD
    tifffile could read must end the chain (its next-IFD offset is 0, TIFF 6.0 section 2), the
    last page's strips or tiles must lie inside the file, a file with tifffile's shaped
    metadata must hold the shape it declares, and an ImageJ file the planes its header declares
    (``images=``; ImageJ writes stacks over 4 GB with one IFD, so their chain says nothing).

    Parameters
    ----------
    tf : tifffile.TiffFile
        Open; its IFD chain is walked once (``TiffPages.next_page_offset``).
    series : tifffile.TiffPageSeries
        The series that will be read (``tf.series[0]``).
    declared : sequence of int, optional
        The shape tifffile's shaped metadata declares (``shaped_metadata[0]['shape']``).
    """
    fh, fmt = tf.filehandle, tf.tiff
    field = tf.pages.next_page_offset  # walks the chain; where the last IFD stores the next one's offset
    if field is not None:
        fh.seek(field)
        raw = fh.read(fmt.offsetsize)
        if len(raw) < fmt.offsetsize:
            return f"its list of pages breaks off at byte {field}, the end of the file"
        following = struct.unpack(fmt.offsetformat, raw)[0]
        if following:
            where = "past the end of the file" if following >= fh.size else "where no page can be read"
            return f"its list of pages goes on at byte {following}, {where}"
    if len(tf.pages):
        last = tf.pages[len(tf.pages) - 1]
        strips = zip(last.dataoffsets, last.databytecounts, strict=True)
        end = max((int(o) + int(n) for o, n in strips if n), default=0)
        if end > fh.size:
            return f"the pixels of its last page end at byte {end}, past the end of the file at byte {fh.size}"
    if declared is not None and int(np.prod(declared)) != int(np.prod(series.shape)):
        return f"it declares an image of shape {tuple(declared)} but holds {tuple(series.shape)}"
    images = (tf.imagej_metadata or {}).get("images") if tf.is_imagej else None
    planes = int(np.prod([n for n, a in zip(series.shape, series.axes, strict=True) if a not in "YXS"], dtype=np.int64))
    if isinstance(images, int) and images > planes:
        return f"its ImageJ header declares {images} planes but {planes} can be read"
    return None


def _check_path(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise VitsegError(f"File {str(path)!r} does not exist; check the path.")
    if path.is_dir():
        raise VitsegError(f"{str(path)!r} is a folder; give a TIFF file.")
    if not path.is_file():  # a FIFO would block forever, a device never ends
        raise VitsegError(f"{str(path)!r} is not a regular file (a device, pipe or socket); give an image file.")
    if path.stat().st_size == 0:
        raise VitsegError(f"{str(path)!r} is empty (0 bytes); give an image file.")
    return path


def plane_chunks(shape, axes: str) -> tuple[int, ...]:
    """Dask chunks that hold one plane: 1 along every axis before the rows, whole from there on.

    Parameters
    ----------
    shape : tuple of int
    axes : str
        One letter per axis (tifffile's convention); the rows are ``'Y'``, else the
        second-to-last axis (third-to-last when the last is ``'S'``).

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> plane_chunks((6, 518, 518), "ZYX"), plane_chunks((2, 4, 64, 64), "CZYX"), plane_chunks((20, 30, 3), "YXS")
    ((1, 518, 518), (1, 1, 64, 64), (20, 30, 3))
    """
    rows = axes.index("Y") if "Y" in axes else max(0, len(shape) - 2 - axes.endswith("S"))
    return (1,) * rows + tuple(shape[rows:])


class _ReadChecked:
    """A zarr array whose reads end in the project's error naming the file (see :func:`lazy_planes`)."""

    def __init__(self, array, axes: str, path):
        self.array, self.path = array, path
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim
        self._zi = next((axes.index(a) for a in "ZQI" if a in axes), None) if len(axes) == array.ndim else None

    def __getitem__(self, key):
        try:
            return np.asarray(self.array[key])
        except Exception as e:  # noqa: BLE001 - tifffile, zarr and codecs raise many types for damaged data
            k = key[self._zi] if self._zi is not None and isinstance(key, tuple) and len(key) > self._zi else None
            plane = None
            if isinstance(k, slice) and k.start is not None and (k.stop is None or k.stop - k.start == 1):
                plane = k.start
            elif isinstance(k, (int, np.integer)):
                plane = int(k)
            raise unreadable(self.path, e, plane) from None


def lazy_planes(array, axes: str, path):
    """A zarr array as dask, one plane per chunk (:func:`plane_chunks`), whose reads end in the
    project's error naming the file: ``dask.array.from_zarr`` with failed reads (a truncated or
    damaged file: tifffile, zarr and codec errors) turned into :class:`VitsegError`, wherever
    they happen (training, Live, apply, the napari reader). Slices of a plane read only the
    chunks (tiles, strips) of the file they cover, as with ``from_zarr``.

    Parameters
    ----------
    array : zarr.Array
    axes : str
        One letter per axis (tifffile's convention); a ``'Z'`` (or unnamed ``'Q'`` / ``'I'``)
        axis names the plane in errors.
    path : str or pathlib.Path
        What was opened, for the messages.

    Returns
    -------
    dask.array.Array
        Lazy; each chunk is read when it is computed.
    """
    import uuid

    import dask.array as da

    return da.from_array(_ReadChecked(array, axes, path), chunks=plane_chunks(array.shape, axes),
                         name=f"vitseg-read-{uuid.uuid4().hex}", asarray=False,
                         meta=np.empty((0,) * array.ndim, array.dtype))


def open_image(path) -> LazyImage:
    """Open an image lazily; no pixel data is read until asked for.

    - a TIFF / BigTIFF / OME-TIFF file: tifffile ``aszarr`` -> zarr -> dask; a pyramidal
      OME-TIFF gives all its levels;
    - a glob pattern of 2D TIFF slices (``"slices/*.tif"``): a (Z, Y, X) stack of the files it
      matches in natural order (``z2`` before ``z10``, as FIJI and ilastik image sequences),
      one file per plane, through tifffile's ``TiffSequence``;
    - a zarr array or OME-Zarr image (a folder named ``*.zarr`` / ``*.ome.zarr`` or holding
      zarr metadata): see :func:`napari_vitseg.io.open_zarr`.

    Parameters
    ----------
    path : str or pathlib.Path
        A TIFF file, a glob pattern or a zarr folder.

    Returns
    -------
    LazyImage
        ``data`` chunked one plane per chunk; keeps TIFF files open: close it with
        :meth:`LazyImage.close` or use it as a context manager
        (``with open_image(p) as im: ...``).

    Raises
    ------
    VitsegError
        Missing file, a folder that is no zarr store, a file tifffile cannot read, a pattern
        that matches no file or slices that differ in shape or dtype, and the zarr errors of
        :func:`napari_vitseg.io.open_zarr`.
    """
    if is_pattern(path):
        return _open_tiff_sequence(os.path.expanduser(os.fspath(path)))
    path = Path(path).expanduser()
    if is_zarr(path):
        from ._zarr import open_zarr

        return open_zarr(path)
    if path.is_dir():
        raise VitsegError(
            f"{str(path)!r} is a folder without zarr metadata; give a TIFF file, a zarr / OME-Zarr "
            f"folder, or a pattern such as '{path / '*.tif'}' to open its TIFF slices as one stack."
        )
    return _open_tiff(_check_path(path))


def _open_tiff(path: Path) -> LazyImage:
    import tifffile
    import zarr

    series = tiff_series(path)
    axes = series.axes
    try:
        store = tifffile.imread(path, aszarr=True)
        try:
            z = zarr.open(store, mode="r")
            if hasattr(z, "shape"):
                arrays = [z]
            else:  # a pyramid: a multiscales group, full resolution first
                arrays = [z[d["path"]] for d in z.attrs["multiscales"][0]["datasets"]]
        except BaseException:
            store.close()
            raise
    except VitsegError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to parse the file
        raise VitsegError(f"Cannot read {str(path)!r} as a TIFF image ({type(e).__name__}: {str(e)[:120]}).") from None
    levels = [lazy_planes(a, axes, path) for a in arrays]
    return LazyImage(path=path, data=levels[0], axes=axes, store=store, levels=levels, kind="tiff",
                     voxel_size=series.voxel_size)


def _open_tiff_sequence(pattern: str) -> LazyImage:
    import tifffile
    import zarr

    files = pattern_files(pattern)
    if not files:
        raise VitsegError(
            f"No files match the pattern {pattern!r}; check the folder and the pattern (e.g. 'slices/*.tif')."
        )
    def header(f: str) -> TiffSeries:  # headers only: the pixels are read plane by plane, when asked
        try:
            return tiff_series(f)
        except VitsegError as e:
            raise VitsegError(f"{e} It matches {pattern!r}: remove it or narrow the pattern.") from None

    first = header(files[0])
    if len(first.shape) != 2 and not (first.rgb and len(first.shape) == 3):
        raise VitsegError(
            f"{files[0]!r} holds a {'x'.join(map(str, first.shape))} image (axes {first.axes}); a stack "
            f"of slices needs one 2D plane (or RGB image) per file. Open it on its own, not as "
            f"part of {pattern!r}."
        )
    for f in files[1:]:
        s = header(f)
        if (s.shape, s.dtype) != (first.shape, first.dtype):
            raise VitsegError(
                f"Slice {f!r} is {'x'.join(map(str, s.shape))} {s.dtype}, but {files[0]!r} (the first of "
                f"{len(files)} files matching {pattern!r}) is {'x'.join(map(str, first.shape))} {first.dtype}; "
                "every slice of a stack needs the same shape and dtype: fix or remove that file, or "
                "narrow the pattern."
            )
    try:
        seq = tifffile.TiffSequence(files)
        store = seq.aszarr(chunkshape=first.shape, chunkdtype=first.dtype)  # no pixel read here
        z = zarr.open(store, mode="r")
    except Exception as e:  # noqa: BLE001 - any failure to parse the files
        raise VitsegError(f"Cannot open the TIFF slices {pattern!r} as a stack ({type(e).__name__}: "
                          f"{str(e)[:120]}).") from None
    axes = "Z" + first.axes
    data = lazy_planes(z, axes, pattern)
    return LazyImage(path=Path(pattern), data=data, axes=axes, store=store, kind="tiff-sequence")


def read_image(path) -> np.ndarray:
    """Read a whole image into memory (for small images and scribbles).

    TIFF files are read with tifffile; PNG, JPEG and BMP (:data:`IMAGE_SUFFIXES`) with
    imageio; zarr folders and glob patterns of TIFF slices through :func:`open_image`.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    ndarray
        As stored: (Y, X), (Z, Y, X), (Y, X, 3) for RGB, ...; zarr images as
        :func:`open_image` gives them (singleton axes dropped).

    Raises
    ------
    VitsegError
        Missing or unreadable file.
    """
    import tifffile

    if is_pattern(path) or is_zarr(path) or Path(path).expanduser().is_dir():
        with open_image(path) as im:
            return np.asarray(im.data)
    path = _check_path(path)
    if is_tiff(path) or path.suffix.lower() not in IMAGE_SUFFIXES:
        tiff_series(path)  # damaged, truncated or empty files end here, from the header
        try:
            return tifffile.imread(path)
        except MemoryError:
            raise VitsegError(f"{str(path)!r} declares an image too large for this machine's memory; open it "
                              "lazily (napari's reader, vitseg apply) or check the file.") from None
        except Exception as e:  # noqa: BLE001 - tifffile raises struct.error, ValueError, ... for broken files
            raise VitsegError(f"Cannot read {str(path)!r} as a TIFF image ({type(e).__name__}: "
                              f"{str(e)[:120]}).") from None
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
