"""The project file: a session of the segmentation widget in one file (``*.vitseg-project``).

A project restores what a user built: the image it refers to (by path: relative to the
project file, and absolute), its channel axis and the reader that opened it (or, when several
image layers were used as the channels of one image, each of those layers: file, reader, name,
shape and a fingerprint of its pixels, in channel order), the painted scribbles (a 2D plane or a
(Z, Y, X) stack), the class names and colours, and the trained classifier if there is one. It can be sent to a colleague: opening it never runs code, never
crashes and never allocates more than the sizes it declares, within :data:`PROJECT_LIMITS`.

Layout (a zip)::

    project.json         format name and version, package version, the image (relative and
                         absolute path, reader, layer name, channel axis), the channel layers
                         (format 2 only: one such entry per layer, with its shape and
                         :func:`image_fingerprint`), the class table,
                         the scribbles' shape and dtype, and the size and SHA-256 of each
                         other member
    scribbles.npy        the scribbles, uint8 0..255, written with ``np.save``'s format
                         (deflated: sparse strokes are mostly 0); read without pickles
    classifier.vitseg    optional: the classifier file (:mod:`napari_vitseg.pipeline._persist`),
                         stored as is and loaded with its own checks

Loading checks, before anything is decompressed, that the zip holds only these members with
declared sizes within :data:`PROJECT_LIMITS` (and, for the scribbles, exactly the size their
declared shape needs), then the schema of ``project.json`` (pydantic), then each member's
SHA-256 while it is read. A project of a newer format is refused with a message to upgrade.

Format versions: 1 (one image layer) and 2 (adds ``channels``: several image layers as the
channels of one image). A project is written in the lowest version that holds it, so a
napari-vitseg that reads only version 1 opens single-image projects and refuses (rather than
restoring one channel of) a project of several channel layers.

Examples
--------
>>> import tempfile, numpy as np, tifffile
>>> from pathlib import Path
>>> from napari_vitseg.pipeline.project import Project, save_project, load_project
>>> d = Path(tempfile.mkdtemp())
>>> tifffile.imwrite(d / "cells.tif", np.zeros((32, 32), np.uint8))
>>> scribbles = np.zeros((32, 32), np.uint8)
>>> scribbles[2:5, 2:5] = 1
>>> p = save_project(d / "cells.vitseg-project", Project(d / "cells.tif", scribbles, ["cell", "background"],
...                                                      ["#ff0000", "#0000ff"]))
>>> back = load_project(p)
>>> back.image_path == str(d / "cells.tif"), int(back.scribbles.sum()), back.class_names
(True, 9, ['cell', 'background'])
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
import tokenize
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import __version__
from .._validation import VitsegError
from ..classifiers._file import _check_members, open_zip_file
from ..classifiers._schema import LIMITS, ClassEntry, _depth
from ..io._atomic import atomic_write

__all__ = ["PROJECT_SUFFIX", "PROJECT_FORMAT_NAME", "PROJECT_FORMAT_VERSION", "PROJECT_LIMITS", "Project",
           "ProjectChannel", "save_project", "load_project", "extracted_classifier", "image_fingerprint"]

#: Conventional suffix of project files.
PROJECT_SUFFIX = ".vitseg-project"
PROJECT_FORMAT_NAME = "napari-vitseg project"
#: Newest format version read and written (2: several channel layers); files of a later version are
#: refused. Projects of one image layer are still written as version 1.
PROJECT_FORMAT_VERSION = 2
#: At most this many image layers as channels in a project.
MAX_CHANNEL_LAYERS = 64
#: Sizes (bytes) a project may declare; checked on the zip directory before any member is read.
PROJECT_LIMITS = {
    "json_bytes": 2**20,                 # project.json
    "npy_header_bytes": 2**16,           # the .npy header of scribbles.npy
    "scribbles_bytes": 4 * 2**30,        # the scribbles array (uint8: one byte a pixel)
    "classifier_bytes": LIMITS["model_bytes"] + LIMITS["arrays_bytes"] + LIMITS["metadata_bytes"]
    + 2**20,                             # classifier.vitseg as stored (its own limits apply inside)
}
_JSON, _SCRIBBLES, _CLASSIFIER = "project.json", "scribbles.npy", "classifier.vitseg"
_CHUNK = 4 * 2**20
#: Pixels per axis of the sample that :func:`image_fingerprint` hashes.
_FINGERPRINT_SIDE = 128


def image_fingerprint(data) -> str:
    """A SHA-256 of an image layer's shape, dtype and a strided sample of its pixels.

    Tells, when a project is opened, which layer holds which channel (a file opened with
    napari's ``channel_axis`` gives one layer per channel, in an order that napari, not the
    project, decides) and whether the file changed since. Reads one plane only: the middle
    one of a (Z, Y, X) stack, at most ``128 x 128`` pixels of it (every ``ceil(Y / 128)``-th
    row and column), so it is cheap for lazy (dask, zarr) layers of any size.

    Parameters
    ----------
    data : array-like, (Y, X) or (Z, Y, X)
        Anything with ``shape``, ``dtype`` and numpy slicing (numpy, dask, zarr).

    Returns
    -------
    str
        64 lowercase hexadecimal digits.

    Raises
    ------
    VitsegError
        ``data`` is not 2D or 3D.
    """
    shape = tuple(int(s) for s in data.shape)
    if len(shape) not in (2, 3):
        raise VitsegError(f"A channel layer must be a (Y, X) plane or a (Z, Y, X) stack; got shape {shape}.")
    plane = data[shape[0] // 2] if len(shape) == 3 else data
    sy, sx = (max(1, -(-n // _FINGERPRINT_SIDE)) for n in shape[-2:])
    sample = np.asarray(plane[::sy, ::sx])
    sample = np.ascontiguousarray(sample, dtype=sample.dtype.newbyteorder("<"))
    h = hashlib.sha256(f"{shape}|{sample.dtype.str}|".encode())
    h.update(sample.tobytes())
    return h.hexdigest()


@dataclass
class ProjectChannel:
    """One of several image layers used as the channels of one image.

    Attributes
    ----------
    path : str or os.PathLike
        The file (or folder) the layer was opened from; after :func:`load_project` resolved as
        :attr:`Project.image_path` is (see :attr:`found`).
    name : str or None
        The layer's name.
    reader : str or None
        The napari reader plugin that opened the file.
    shape : tuple of int
        The layer's data shape, (Y, X) or (Z, Y, X) (no channel axis: the layer is one channel).
    fingerprint : str or None
        :func:`image_fingerprint` of the layer's data (64 hex digits).
    candidates : tuple of str
        Set by :func:`load_project`: where the file was looked for (relative, absolute).
    """

    path: str | os.PathLike
    name: str | None = None
    reader: str | None = None
    shape: tuple[int, ...] = ()
    fingerprint: str | None = None
    candidates: tuple[str, ...] = field(default=(), repr=False)

    @property
    def found(self) -> bool:
        """Whether :attr:`path` exists."""
        return os.path.exists(self.path)


@dataclass
class Project:
    """A segmentation session: the image it refers to, scribbles, classes and classifier.

    Attributes
    ----------
    image_path : str or os.PathLike
        The image file (or folder, e.g. a zarr store) on disk. After :func:`load_project`:
        the path found (the one relative to the project file first, then the absolute one),
        or, when neither exists, the relative one (see :attr:`image_found`).
    scribbles : ndarray, (Y, X) or (Z, Y, X), integer 0..255, or None
        The painted labels (0 = unlabelled), without the channel axis; loaded as uint8.
    class_names, class_colors : list of str
        Names and ``'#rrggbb'`` colours of classes 1..K (K >= 1, the same length).
    channel_axis : int or None
        The image's channel axis (the last one for RGB), ``None`` for grey images and stacks.
    segmenter : Segmenter or None
        The trained classifier (saved as a classifier file inside the project).
    image_reader : str or None
        The napari reader plugin that opened the image (``layer.source.reader_plugin``).
    image_name, scribbles_name : str or None
        Layer names to restore.
    image_candidates : tuple of str
        Set by :func:`load_project`: where the image was looked for (relative, absolute).
    has_classifier : bool
        Set by :func:`load_project`: the file holds a classifier (loaded into :attr:`segmenter`
        unless ``classifier=False`` was asked).
    channels : list of ProjectChannel
        Empty for one image layer; else the 2..64 image layers used as the channels of one
        image (the widget's *+ channels…*), in channel order. ``image_path`` is then the first
        one's file and ``channel_axis`` must be ``None`` (each layer is one channel).
    """

    image_path: str | os.PathLike
    scribbles: np.ndarray | None
    class_names: list[str]
    class_colors: list[str]
    channel_axis: int | None = None
    segmenter: object | None = None
    image_reader: str | None = None
    image_name: str | None = None
    scribbles_name: str | None = None
    image_candidates: tuple[str, ...] = field(default=(), repr=False)
    has_classifier: bool = False
    channels: list[ProjectChannel] = field(default_factory=list)

    @property
    def image_found(self) -> bool:
        """Whether :attr:`image_path` and the file of every channel layer exist."""
        return os.path.exists(self.image_path) and all(ch.found for ch in self.channels)

    def missing_image_message(self, project_path) -> str:
        """One line for a user whose image is not where the project says: the paths and what to do."""
        what, path, candidates = "image", self.image_path, self.image_candidates
        missing = next((ch for ch in self.channels if not ch.found), None)
        if os.path.exists(self.image_path) and missing is not None:
            what = f"channel layer {missing.name!r}" if missing.name else "channel layer"
            path, candidates = missing.path, missing.candidates
        looked = " nor at ".join(repr(p) for p in candidates) or repr(str(path))
        absolute = candidates[-1] if candidates else str(path)
        return (f"The {what} of project {Path(project_path).name!r} is not at {looked}: put the project file "
                f"back beside the image (where it was saved) or the image back at {absolute!r}, then open the "
                "project again.")


# ----------------------------------------------------------------------------- schema
_Text = Annotated[str, Field(max_length=4096)]
_Name = Annotated[str, Field(max_length=200)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _FileEntry(_Model):
    relative: _Text | None = None
    absolute: Annotated[str, Field(min_length=1, max_length=4096)]
    reader: Annotated[str, Field(max_length=100)] | None = None
    layer_name: _Name | None = None


class _ImageEntry(_FileEntry):
    channel_axis: Annotated[int, Field(ge=0, le=31)] | None = None


class _ChannelEntry(_FileEntry):
    shape: Annotated[list[Annotated[int, Field(ge=1, le=2**31)]], Field(min_length=2, max_length=3)]
    fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class _ScribblesEntry(_Model):
    shape: Annotated[list[Annotated[int, Field(ge=1, le=2**31)]], Field(min_length=2, max_length=3)]
    dtype: Literal["uint8"]
    layer_name: _Name | None = None


class _MemberEntry(_Model):
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _ProjectMetadata(_Model):
    format: Literal["napari-vitseg project"]
    format_version: Annotated[int, Field(ge=1)]
    package_version: Annotated[str, Field(max_length=64)] = "unknown"
    image: _ImageEntry
    classes: Annotated[list[ClassEntry], Field(min_length=1, max_length=255)]
    scribbles: _ScribblesEntry | None = None
    members: Annotated[dict[Literal["scribbles.npy", "classifier.vitseg"], _MemberEntry], Field(max_length=2)]
    channels: Annotated[list[_ChannelEntry], Field(min_length=2, max_length=MAX_CHANNEL_LAYERS)] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if [c.id for c in self.classes] != list(range(1, len(self.classes) + 1)):
            raise ValueError("the classes must be numbered 1..K in order")
        if self.channels is not None:
            if self.format_version < 2:
                raise ValueError("channel layers need project format 2")
            if self.image.channel_axis is not None:
                raise ValueError("a project of channel layers has no channel axis")
            if len({tuple(c.shape) for c in self.channels}) != 1:
                raise ValueError("the channel layers must have one shape")
            if self.scribbles is not None and self.scribbles.shape != self.channels[0].shape:
                raise ValueError("the scribbles and the channel layers have different shapes")
        if (self.scribbles is None) != (_SCRIBBLES not in self.members):
            raise ValueError("the scribbles section and the scribbles.npy member do not match")
        return self


# ----------------------------------------------------------------------------- saving
def _check_classes(names, colors) -> tuple[list[str], list[str]]:
    from matplotlib.colors import to_hex

    if isinstance(names, str) or isinstance(colors, str):
        raise VitsegError("class_names and class_colors must be lists (class 1 first), not strings.")
    names, colors = [str(n) for n in names], list(colors)
    if not 1 <= len(names) <= 255 or len(colors) != len(names) or any(len(n) > 200 for n in names):
        raise VitsegError(f"A project needs 1..255 class names of at most 200 characters and one colour each; "
                          f"got {len(names)} names and {len(colors)} colours.")
    try:
        colors = [to_hex(c) for c in colors]
    except (ValueError, TypeError) as e:
        raise VitsegError(f"Class colours must be colour names or '#rrggbb' ({e}).") from None
    return names, colors


def _check_scribbles(scribbles):
    if scribbles is None:
        return None
    if not hasattr(scribbles, "shape") or not hasattr(scribbles, "dtype"):
        scribbles = np.asarray(scribbles)
    dtype = np.dtype(scribbles.dtype)
    shape = tuple(int(s) for s in scribbles.shape)
    if dtype.kind not in "biu":
        raise VitsegError(f"The scribbles must be integer labels (0 = unlabelled, 1..255 = classes); got dtype {dtype}.")
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise VitsegError(f"The scribbles must be a 2D plane or a (Z, Y, X) stack; got shape {shape}.")
    if int(np.prod(shape, dtype=np.int64)) > PROJECT_LIMITS["scribbles_bytes"]:
        raise VitsegError(f"The scribbles of shape {shape} exceed the {PROJECT_LIMITS['scribbles_bytes']} pixels "
                          "a project can hold.")
    return scribbles


def _write_scribbles(zf: zipfile.ZipFile, scribbles) -> dict:
    """Stream the scribbles into ``scribbles.npy`` plane by plane (uint8), hashing what is written."""
    shape = tuple(int(s) for s in scribbles.shape)
    h = hashlib.sha256()
    size = 0
    with zf.open(_SCRIBBLES, "w", force_zip64=True) as f:
        class _Hashing:
            def write(self, b):
                nonlocal size
                h.update(b)
                size += len(b)
                return f.write(b)

        out = _Hashing()
        np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
        planes = (scribbles,) if len(shape) == 2 else (scribbles[z] for z in range(shape[0]))
        for plane in planes:
            plane = np.asarray(plane)
            if plane.size and (plane.min() < 0 or plane.max() > 255):
                raise VitsegError(f"The scribbles hold labels outside 0..255 ({int(plane.min())}..{int(plane.max())}); "
                                  "napari-vitseg classes are 1..255.")
            out.write(np.ascontiguousarray(plane, dtype=np.uint8).tobytes())
    return {"size": size, "sha256": h.hexdigest()}


def _write_classifier(zf: zipfile.ZipFile, segmenter) -> dict:
    """The segmenter's classifier file, made in a temporary folder and stored (it is compressed already)."""
    from ._persist import save_segmenter

    if not getattr(segmenter, "is_fitted", False):
        raise VitsegError("The project's segmenter is not trained: train it first, or save the project without it.")
    with tempfile.TemporaryDirectory(prefix="vitseg-project-") as d:
        tmp = save_segmenter(segmenter, Path(d) / _CLASSIFIER)
        h = hashlib.sha256()
        with open(tmp, "rb") as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                h.update(chunk)
        zf.write(tmp, _CLASSIFIER, compress_type=zipfile.ZIP_STORED)
        return {"size": tmp.stat().st_size, "sha256": h.hexdigest()}


def _check_channels(project: Project) -> list[ProjectChannel]:
    """The channel layers to save, each with an existing file, one shape and a fingerprint."""
    channels = list(project.channels or ())
    if not channels:
        return []
    if not 2 <= len(channels) <= MAX_CHANNEL_LAYERS:
        raise VitsegError(f"A project holds 2..{MAX_CHANNEL_LAYERS} channel layers (or none); got {len(channels)}.")
    if project.channel_axis is not None:
        raise VitsegError("A project of channel layers has no channel axis (each layer is one channel); "
                          f"got channel_axis={project.channel_axis!r}.")
    for i, ch in enumerate(channels):
        if not isinstance(ch, ProjectChannel):
            raise VitsegError(f"channels[{i}] must be a ProjectChannel; got {type(ch).__name__}.")
        if not os.path.exists(ch.path):
            raise VitsegError(f"The file {str(ch.path)!r} of channel layer {i} ({ch.name!r}) does not exist: a "
                              "project refers to its images on disk; save that layer first (napari: File > Save "
                              "Selected Layers…).")
        shape = tuple(ch.shape)
        if len(shape) not in (2, 3) or not all(isinstance(n, (int, np.integer)) and 1 <= n <= 2**31 for n in shape):
            raise VitsegError(f"Channel layer {i} ({ch.name!r}) must have a (Y, X) or (Z, Y, X) shape; got {shape}.")
        if shape != tuple(channels[0].shape):
            raise VitsegError(f"The channel layers must have one shape: layer 0 ({channels[0].name!r}) is "
                              f"{tuple(channels[0].shape)}, layer {i} ({ch.name!r}) is {shape}.")
        if not (isinstance(ch.fingerprint, str) and len(ch.fingerprint) == 64
                and all(c in "0123456789abcdef" for c in ch.fingerprint)):
            raise VitsegError(f"Channel layer {i} ({ch.name!r}) needs its fingerprint: "
                              "ProjectChannel(fingerprint=image_fingerprint(layer data)).")
        if ch.name is not None and len(str(ch.name)) > 200:
            raise VitsegError(f"The name of channel layer {i} is longer than 200 characters; rename the layer.")
    return channels


def _file_entry(file, parent: Path) -> dict:
    absolute = Path(os.path.abspath(os.fspath(file)))
    try:
        relative = PurePosixPath(Path(os.path.relpath(absolute, parent))).as_posix()
    except ValueError:  # another drive (Windows): the absolute path only
        relative = None
    return {"relative": relative, "absolute": str(absolute)}


def save_project(path, project: Project, *, inputs: Iterable = ()) -> Path:
    """Write a project file atomically (a unique temporary name in the same folder, then rename).

    Parameters
    ----------
    path : str or pathlib.Path
        Destination, conventionally ``*.vitseg-project`` (:data:`PROJECT_SUFFIX`).
    project : Project
        ``image_path`` must exist; ``scribbles`` (any integer dtype, values 0..255) is read
        plane by plane and stored as uint8; ``segmenter``, if given, must be fitted. With
        ``channels`` (2..64 layers, each file existing, one shape, each with its
        :func:`image_fingerprint`) the file is written as format 2, else as format 1.
    inputs : iterable of path, optional
        Other files the caller read (layers' sources): the project is written over none of them
        (nor over the image).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    VitsegError
        The image does not exist; ``path`` is the image or an input, a folder, a non-regular
        file, or its folder is missing; scribbles that are not 2D / 3D integer labels 0..255;
        invalid classes or channel axis; invalid channel layers (see above, or scribbles of
        another shape than theirs); an unfitted segmenter. Nothing is written then.
    """
    path = Path(path)
    image = Path(os.path.abspath(os.fspath(project.image_path)))
    if not image.exists():
        raise VitsegError(f"The project's image {str(image)!r} does not exist: a project refers to an image file "
                          "on disk; save the image first (napari: File > Save Selected Layers…).")
    names, colors = _check_classes(project.class_names, project.class_colors)
    ca = project.channel_axis
    if ca is not None and (isinstance(ca, bool) or not isinstance(ca, (int, np.integer)) or not 0 <= ca <= 31):
        raise VitsegError(f"channel_axis must be None or an axis number 0..31; got {ca!r}.")
    scribbles = _check_scribbles(project.scribbles)
    channels = _check_channels(project)
    if channels and scribbles is not None and tuple(scribbles.shape) != tuple(channels[0].shape):
        raise VitsegError(f"The scribbles of shape {tuple(scribbles.shape)} do not fit the channel layers of shape "
                          f"{tuple(channels[0].shape)}.")
    parent = Path(os.path.abspath(path.parent if str(path.parent) else "."))
    relative = _file_entry(image, parent)["relative"]
    with atomic_write(path, inputs=[image, *(ch.path for ch in channels), *inputs], what="project file") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            members = {}
            if scribbles is not None:
                members[_SCRIBBLES] = _write_scribbles(zf, scribbles)
            if project.segmenter is not None:
                members[_CLASSIFIER] = _write_classifier(zf, project.segmenter)
            meta = {
                "format": PROJECT_FORMAT_NAME,
                "format_version": 2 if channels else 1,
                "package": "napari-vitseg",
                "package_version": __version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "image": {"relative": relative, "absolute": str(image), "reader": project.image_reader,
                          "layer_name": project.image_name, "channel_axis": None if ca is None else int(ca)},
                "classes": [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(names, colors, strict=True), 1)],
                "scribbles": None if scribbles is None else {
                    "shape": [int(s) for s in scribbles.shape], "dtype": "uint8",
                    "layer_name": project.scribbles_name},
                "members": members,
            }
            if channels:
                meta["channels"] = [{**_file_entry(ch.path, parent), "reader": ch.reader,
                                     "layer_name": None if ch.name is None else str(ch.name),
                                     "shape": [int(n) for n in ch.shape], "fingerprint": ch.fingerprint}
                                    for ch in channels]
            zf.writestr(_JSON, json.dumps(meta, indent=2))
    return path


# ----------------------------------------------------------------------------- loading
def _open(path: Path) -> zipfile.ZipFile:
    """The project's zip, after the checks on its directory (nothing decompressed yet)."""
    zf = open_zip_file(path, noun="project file", save_hint="save the project")
    try:
        names = [i.filename for i in zf.infolist()]
        if len(names) != len(set(names)) or not set(names) <= {_JSON, _SCRIBBLES, _CLASSIFIER} or _JSON not in names:
            raise VitsegError(f"{str(path)!r} is not a napari-vitseg project (its members are "
                              f"{[n[:40] for n in names[:5]]}).")
        # the scribbles are mostly 0 and deflate far beyond any ratio: their size limit bounds them
        _check_members(zf, path, {_JSON: PROJECT_LIMITS["json_bytes"], _CLASSIFIER: PROJECT_LIMITS["classifier_bytes"],
                                  _SCRIBBLES: PROJECT_LIMITS["scribbles_bytes"] + PROJECT_LIMITS["npy_header_bytes"]},
                       3, "The zip", ratio_exempt=(_SCRIBBLES,))
    except BaseException:
        zf.close()
        raise
    return zf


def _damaged(path: Path, member: str, e: Exception) -> VitsegError:
    return VitsegError(f"Project file {str(path)!r} is damaged ({member}: {str(e)[:100] or type(e).__name__}); "
                       "save the project again.")


def _read_json(zf: zipfile.ZipFile, path: Path) -> _ProjectMetadata:
    try:
        with zf.open(_JSON) as f:
            raw = f.read(PROJECT_LIMITS["json_bytes"] + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
        raise _damaged(path, _JSON, e) from None
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise VitsegError(f"The project.json of {str(path)!r} is not valid JSON ({str(e)[:100]}).") from None
    if not isinstance(meta, dict) or meta.get("format") != PROJECT_FORMAT_NAME:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise VitsegError(f"{str(path)!r} is not a napari-vitseg project (format {str(fmt)[:80]!r}).")
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > PROJECT_FORMAT_VERSION:
        raise VitsegError(f"{str(path)!r} uses project format {version}, newer than this napari-vitseg supports "
                          f"({PROJECT_FORMAT_VERSION}); upgrade napari-vitseg.")
    if _depth(meta, LIMITS["json_depth"]) > LIMITS["json_depth"]:
        raise VitsegError(f"The project.json of {str(path)!r} is nested deeper than {LIMITS['json_depth']} levels; "
                          "it was not written by napari-vitseg.")
    try:
        model = _ProjectMetadata.model_validate(meta)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "project.json"
        raise VitsegError(f"{str(path)!r} has an invalid project.json at {where!r}: {err.get('msg', 'invalid')}; "
                          "the file is damaged or was not written by napari-vitseg.") from None
    stored = {i.filename: i.file_size for i in zf.infolist() if i.filename != _JSON}
    declared = {k: v.size for k, v in model.members.items()}
    if stored != declared:
        raise VitsegError(f"The members of {str(path)!r} ({stored}) are not those its project.json declares "
                          f"({declared}); the file is damaged or was edited.")
    return model


def _read_scribbles(zf: zipfile.ZipFile, path: Path, meta: _ProjectMetadata) -> np.ndarray:
    """``scribbles.npy``, streamed into a new array of the declared shape (pages left untouched where
    the scribbles are 0), its header and size checked before the data is read, hashed as it is read."""
    entry, member = meta.scribbles, meta.members[_SCRIBBLES]
    shape = tuple(entry.shape)
    nbytes = int(np.prod(shape, dtype=np.int64))
    if nbytes > PROJECT_LIMITS["scribbles_bytes"]:
        raise VitsegError(f"{str(path)!r} declares scribbles of shape {shape} ({nbytes} bytes), more than a project "
                          f"may hold ({PROJECT_LIMITS['scribbles_bytes']}); refusing to read them.")
    if not nbytes < member.size <= nbytes + PROJECT_LIMITS["npy_header_bytes"]:
        raise VitsegError(f"The scribbles of {str(path)!r} take {member.size} bytes, not what shape {shape} needs; "
                          "the file is damaged or was edited.")
    h = hashlib.sha256()
    try:
        with zf.open(_SCRIBBLES) as raw:
            class _Hashing:
                def read(self, n=-1):
                    b = raw.read(n)
                    h.update(b)
                    return b

                def readline(self, n=-1):
                    b = raw.readline(n)
                    h.update(b)
                    return b

            f = _Hashing()
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise VitsegError(f"The scribbles of {str(path)!r} use .npy format {version}; refusing them.")
            hshape, fortran, dtype = read_header(f)  # the header only: shape, order and dtype
            if dtype.hasobject or dtype != np.dtype(np.uint8) or fortran or tuple(hshape) != shape:
                raise VitsegError(f"The scribbles of {str(path)!r} are {dtype} of shape {hshape}, not the uint8 "
                                  f"{shape} its project.json declares; refusing them (never unpickled).")
            if raw.tell() + nbytes != member.size:
                raise VitsegError(f"The scribbles of {str(path)!r} hold {member.size - raw.tell()} bytes of data for "
                                  f"shape {shape}; the file is damaged or was edited.")
            out = np.zeros(shape, np.uint8)  # the OS gives pages lazily: untouched zeros cost nothing
            flat = out.reshape(-1)
            pos = 0
            while pos < nbytes:
                b = f.read(min(_CHUNK, nbytes - pos))
                if not b:
                    raise VitsegError(f"The scribbles of {str(path)!r} are truncated; save the project again.")
                a = np.frombuffer(b, np.uint8)
                if a.any():
                    flat[pos:pos + len(a)] = a
                pos += len(a)
            if f.read(1):  # also checks the CRC at the end of the member
                raise VitsegError(f"The scribbles of {str(path)!r} are longer than declared; refusing them.")
    except VitsegError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError,
            SyntaxError, TypeError, RecursionError, tokenize.TokenError) as e:  # + a damaged .npy header
        raise _damaged(path, _SCRIBBLES, e) from None
    if h.hexdigest() != member.sha256:
        raise VitsegError(f"The scribbles of {str(path)!r} do not match their SHA-256 in project.json; the file is "
                          "damaged or was edited. Save the project again.")
    return out


def _copy_classifier(zf: zipfile.ZipFile, path: Path, meta: _ProjectMetadata, dest: Path | None) -> None:
    """Stream ``classifier.vitseg`` to ``dest`` (or nowhere: only check it), checking its SHA-256."""
    member = meta.members[_CLASSIFIER]
    h = hashlib.sha256()
    n = 0
    try:
        with zf.open(_CLASSIFIER) as src, (open(dest, "wb") if dest is not None else _Null()) as out:
            while n <= member.size:
                b = src.read(_CHUNK)
                if not b:
                    break
                n += len(b)
                h.update(b)
                out.write(b)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
        raise _damaged(path, _CLASSIFIER, e) from None
    if n != member.size or h.hexdigest() != member.sha256:
        raise VitsegError(f"The classifier in {str(path)!r} does not match its size and SHA-256 in project.json; the "
                          "file is damaged or was edited. Save the project again.")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, b):
        return len(b)


def _image_paths(path: Path, entry: _FileEntry) -> tuple[str, tuple[str, ...]]:
    """The image path to use and the candidates looked at (relative to the project first)."""
    candidates = []
    if entry.relative:
        candidates.append(os.path.normpath(os.path.join(os.path.abspath(path.parent), *PurePosixPath(entry.relative).parts)))
    if entry.absolute not in candidates:
        candidates.append(entry.absolute)
    found = next((c for c in candidates if os.path.exists(c)), candidates[0])
    return found, tuple(candidates)


def _rename_errors(e: VitsegError, tmp: Path, path: Path) -> VitsegError:
    return VitsegError(str(e).replace(str(tmp), f"{path}:{_CLASSIFIER}"))


@contextmanager
def extracted_classifier(path) -> Iterator[Path | None]:
    """The classifier of a project as a temporary classifier file (removed on exit), or ``None``.

    For callers that load classifier files their own way (the napari widget); its SHA-256 and
    size are checked against ``project.json``. The file is named after the project
    (``<project name>.vitseg``).

    Raises
    ------
    VitsegError
        As :func:`load_project`.
    """
    path = Path(path)
    with _open(path) as zf:
        meta = _read_json(zf, path)
        if _CLASSIFIER not in meta.members:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="vitseg-project-") as d:
            tmp = Path(d) / f"{path.name.split('.')[0] or 'project'}.vitseg"
            _copy_classifier(zf, path, meta, tmp)
            zf.close()
            yield tmp


def load_project(path, *, classifier: bool = True, **segmenter_kwargs) -> Project:
    """Read a project file without running code from it.

    Parameters
    ----------
    path : str or pathlib.Path
    classifier : bool
        Load the stored classifier into :attr:`Project.segmenter` (its SHA-256 is checked
        either way); ``False`` leaves it for :func:`extracted_classifier`.
    **segmenter_kwargs
        Passed to :func:`napari_vitseg.pipeline._persist.load_segmenter` (``backbone``,
        ``device``, ``cache``, ``allow_random_weights``...).

    Returns
    -------
    Project
        ``image_path`` resolved (see :attr:`Project.image_path`; the image is not opened);
        ``scribbles`` uint8 of the declared shape; ``class_names`` / ``class_colors`` from the
        project's class table (also given to the loaded segmenter); ``channels`` (format 2)
        with their paths resolved the same way (no file is opened).

    Raises
    ------
    VitsegError
        Missing, non-regular, pickled, truncated or foreign files; members other than the
        three above or declared larger than :data:`PROJECT_LIMITS` allow (checked before
        anything is decompressed); invalid ``project.json``; a newer format version;
        scribbles that are not uint8 of the declared shape or whose SHA-256 differs; a
        classifier that fails its checksum or the classifier file's own checks.
    """
    path = Path(path)
    with _open(path) as zf:
        meta = _read_json(zf, path)
        scribbles = _read_scribbles(zf, path, meta) if meta.scribbles is not None else None
        has_clf = _CLASSIFIER in meta.members
        if has_clf and not classifier:
            _copy_classifier(zf, path, meta, None)
    names = [c.name for c in meta.classes]
    colors = [c.color for c in meta.classes]
    seg = None
    if has_clf and classifier:
        from ._persist import load_segmenter

        with extracted_classifier(path) as tmp:
            try:
                seg = load_segmenter(tmp, **segmenter_kwargs)
            except VitsegError as e:
                raise _rename_errors(e, tmp, path) from None
        seg.set_classes(names, colors)
    image, candidates = _image_paths(path, meta.image)
    channels = []
    for entry in meta.channels or ():
        found, looked = _image_paths(path, entry)
        channels.append(ProjectChannel(path=found, name=entry.layer_name, reader=entry.reader, shape=tuple(entry.shape),
                                       fingerprint=entry.fingerprint, candidates=looked))
    return Project(image_path=image, scribbles=scribbles, class_names=names, class_colors=colors,
                   channel_axis=meta.image.channel_axis, segmenter=seg, image_reader=meta.image.reader,
                   image_name=meta.image.layer_name,
                   scribbles_name=meta.scribbles.layer_name if meta.scribbles is not None else None,
                   image_candidates=candidates, has_classifier=has_clf, channels=channels)
