"""Output writers of batch apply: resumable staging, tiled compressed TIFF, OME-Zarr.

Every output of :mod:`napari_vitseg.pipeline.batch` is first written plane by plane into a
hidden *staging store* next to it, and only a complete output ever carries its final name::

    .<name>.part.zarr/            staging store of output <name> (zarr v2, one chunk per plane)
        vitseg-manifest.json      what the run depends on (written atomically: temporary file +
                                  rename, when the store is made or verified)
        vitseg-planes.log         one line per finished plane, appended after its chunk is
                                  written: "<plane index> crc32:<checksum of the plane's values>"
                                  (append-only, so a 500 000-plane stack costs O(1) per plane;
                                  a line torn by a crash simply does not verify)
        .zgroup, .zattrs          group metadata (NGFF 0.4 multiscales for OME-Zarr outputs)
        0/                        the array: labels (Z, Y, X) uint8 or probabilities float16
        assembled.tif.part        TIFF outputs only: the TIFF assembled from the staging store
                                  when every plane is finished, then renamed to <name>
        vitseg.lock               held (flock) by the run writing the store: a second run on
                                  the same output is refused

The format follows the output name (:func:`output_kind`):

- ``.tif`` / ``.tiff`` (any TIFF suffix): a tiled (256 x 256, or the plane rounded up to 16
  when smaller), zlib-compressed TIFF, BigTIFF above 2 GiB of pixels, with tifffile's shaped
  metadata (axes ``ZYX`` / ``YX``, probabilities ``ZCYX`` / ``CYX``) and, from the
  ``napari_vitseg`` entry of the output's attributes, the role and class table (ids, names,
  colours; :func:`napari_vitseg.io._tiff.class_table_metadata`) in the same JSON description,
  so that napari-vitseg's reader reopens labels as a coloured, named Labels layer. It is
  assembled from the staging store (into ``assembled.tif.part`` inside it) when every plane is
  finished and renamed into place.
- ``.zarr`` / ``.ome.zarr``: an OME-Zarr image (NGFF 0.4, zarr v2, one level, written with
  :mod:`ome_zarr.writer`): labels (Z, Y, X) uint8 with ``image-label`` colours and class names,
  probabilities (C, Z, Y, X) float16 (NGFF puts the channel axis before space) with ``omero``
  channel names. The staging store *is* that OME-Zarr: it is renamed into place when
  complete. Existing OME-Zarr outputs (folders) are never overwritten.

A plane counts as finished (:attr:`StagedOutput.done`) only when the planes log lists it, its
chunk file exists, and the chunk read back has the recorded CRC-32. A staging store whose
manifest depends on anything else (classifier, input file, output settings, package version)
is discarded; a folder at the staging path that has no manifest of ours is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._validation import VitsegError
from ._paths import ZARR_SUFFIXES, is_tiff

__all__ = [
    "MANIFEST_NAME",
    "OUTPUT_KINDS",
    "PLANES_LOG",
    "OutputSpec",
    "StagedOutput",
    "check_free_space",
    "format_bytes",
    "is_disk_full",
    "output_kind",
    "recorded_planes",
    "staging_path",
]

#: Output formats, chosen by the output name (:func:`output_kind`).
OUTPUT_KINDS = ("tiff", "ome-zarr")
#: File name of the manifest inside a staging store.
MANIFEST_NAME = "vitseg-manifest.json"
#: File name of the append-only log of finished planes inside a staging store.
PLANES_LOG = "vitseg-planes.log"
LOCK_NAME = "vitseg.lock"
ASSEMBLED_NAME = "assembled.tif.part"
MANIFEST_FORMAT = "napari-vitseg staging"
MANIFEST_VERSION = 1
#: Tile edge of TIFF outputs (px); smaller planes get one tile (rounded up to 16).
TIFF_TILE = 256
TIFF_COMPRESSION = "zlib"
TIFF_COMPRESSION_LEVEL = 6
#: TIFF outputs with more pixel bytes than this are BigTIFF (classic TIFF stays readable by
#: every tool below that).
BIGTIFF_ABOVE = 2**31
#: NGFF version of OME-Zarr outputs (0.4: zarr v2, read by every current OME-Zarr tool).
NGFF_VERSION = "0.4"


def output_kind(path) -> str:
    """The format of an output, from its name: ``'tiff'`` or ``'ome-zarr'``.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    str

    Raises
    ------
    VitsegError
        A name that is neither a TIFF nor a ``.zarr`` name.

    Examples
    --------
    >>> output_kind("out/a_seg.tif"), output_kind("a_seg.OME.ZARR"), output_kind("a.zarr")
    ('tiff', 'ome-zarr', 'ome-zarr')
    """
    name = Path(path).name.lower()
    if any(name.endswith(s) and len(name) > len(s) for s in ZARR_SUFFIXES):
        return "ome-zarr"
    if is_tiff(path):
        return "tiff"
    raise VitsegError(
        f"Cannot tell the output format of {str(path)!r} from its name; end it in .tif / .tiff (tiled, "
        "compressed TIFF) or .zarr / .ome.zarr (OME-Zarr)."
    )


def staging_path(path) -> Path:
    """The hidden staging store of an output: ``<folder>/.<name>.part.zarr``.

    Examples
    --------
    >>> staging_path("out/a_seg.tif").as_posix()
    'out/.a_seg.tif.part.zarr'
    """
    path = Path(path)
    return path.with_name(f".{path.name}.part.zarr")


def recorded_planes(staging) -> dict[int, str]:
    """Planes a staging store's log lists as finished, with their checksums (not verified).

    Parameters
    ----------
    staging : str or pathlib.Path
        A staging store (:func:`staging_path`).

    Returns
    -------
    dict of int to str
        Empty when there is no log; malformed (torn) lines are skipped; the last entry of a
        plane wins.
    """
    planes: dict[int, str] = {}
    try:
        text = (Path(staging) / PLANES_LOG).read_text(errors="replace")
    except OSError:
        return planes
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].startswith("crc32:") and len(parts[1]) == 14:
            planes[int(parts[0])] = parts[1]
    return planes


def format_bytes(n: float) -> str:
    """Bytes for messages: ``'1.5 GB'`` (powers of 1000).

    Examples
    --------
    >>> format_bytes(1_500_000_000), format_bytes(2048)
    ('1.5 GB', '2.0 kB')
    """
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def check_free_space(needs: dict) -> None:
    """Refuse to start when an output folder lacks the space a run will write.

    Parameters
    ----------
    needs : dict of pathlib.Path to int
        Bytes each output folder will receive; folders on one filesystem are added up.

    Raises
    ------
    VitsegError
        Names the folder, the bytes needed and the bytes free.
    """
    by_device: dict[int, tuple[Path, int]] = {}
    for folder, nbytes in needs.items():
        folder = Path(folder)
        dev = os.stat(folder).st_dev
        first, total = by_device.get(dev, (folder, 0))
        by_device[dev] = (first, total + int(nbytes))
    for folder, need in by_device.values():
        free = shutil.disk_usage(folder).free
        if need > free:
            raise VitsegError(
                f"Not enough free space in {str(folder)!r}: this run writes up to {format_bytes(need)} (uncompressed "
                f"upper bound, staging included) and {format_bytes(free)} are free; free some space or choose "
                "another output folder."
            )


def _crc(data: np.ndarray) -> str:
    return f"crc32:{zlib.crc32(np.ascontiguousarray(data).view(np.uint8)):08x}"


def _tile(n: int) -> int:
    return min(TIFF_TILE, -(-n // 16) * 16)


@dataclass(frozen=True)
class OutputSpec:
    """Shape, type and layout of one output of batch apply.

    Parameters
    ----------
    path : pathlib.Path
        The final name; its suffix sets the format (:func:`output_kind`).
    role : {'labels', 'probabilities'}
    n_planes : int or None
        Planes of a stack; ``None`` for a 2D image.
    plane_shape : tuple of int
        What one plane holds: (Y, X) labels or (K, Y, X) probabilities.
    dtype : str
        ``'uint8'`` (labels) or ``'float16'`` (probabilities).
    """

    path: Path
    role: str
    n_planes: int | None
    plane_shape: tuple
    dtype: str

    @property
    def kind(self) -> str:
        return output_kind(self.path)

    @property
    def _zarr_probs(self) -> bool:
        return self.role == "probabilities" and self.kind == "ome-zarr" and self.n_planes is not None

    @property
    def shape(self) -> tuple:
        """Shape of the output array (OME-Zarr probabilities: channel axis before Z)."""
        if self.n_planes is None:
            return tuple(self.plane_shape)
        if self._zarr_probs:
            return (self.plane_shape[0], self.n_planes, *self.plane_shape[1:])
        return (self.n_planes, *self.plane_shape)

    @property
    def chunks(self) -> tuple:
        """One chunk per plane."""
        chunks = list(self.shape)
        if self.n_planes is not None:
            chunks[1 if self._zarr_probs else 0] = 1
        return tuple(chunks)

    @property
    def axes(self) -> str:
        """Axes of the output array, e.g. ``'ZYX'``, ``'ZCYX'`` (TIFF), ``'CZYX'`` (OME-Zarr)."""
        spatial = "ZYX" if self.n_planes is not None else "YX"
        if self.role != "probabilities":
            return spatial
        if self.n_planes is None:
            return "CYX"
        return "CZYX" if self.kind == "ome-zarr" else "ZCYX"

    def selection(self, j: int) -> tuple:
        """Index of plane ``j`` in the output array."""
        if self.n_planes is None:
            return ()
        return (slice(None), j) if self._zarr_probs else (j,)

    def chunk_key(self, j: int) -> str:
        """Path of plane ``j``'s chunk file inside the array folder."""
        idx = [0] * len(self.shape)
        if self.n_planes is not None:
            idx[1 if self._zarr_probs else 0] = j
        return "/".join(map(str, idx))

    @property
    def plane_nbytes(self) -> int:
        return int(np.prod(self.plane_shape)) * np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.plane_nbytes * (self.n_planes or 1)

    def params(self) -> dict:
        """Everything about the output's bytes that a resumed run must share (for the manifest)."""
        p = {"kind": self.kind, "role": self.role, "shape": list(self.shape), "chunks": list(self.chunks),
             "dtype": self.dtype, "axes": self.axes, "staging_codec": _codec_config()}
        if self.kind == "tiff":
            p["tiff"] = {"tile": TIFF_TILE, "compression": TIFF_COMPRESSION, "level": TIFF_COMPRESSION_LEVEL,
                         "bigtiff_above": BIGTIFF_ABOVE}
        else:
            p["ngff"] = NGFF_VERSION
        return p


def _codec():
    import numcodecs

    return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)


def _codec_config() -> dict:
    return {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": "bitshuffle"}


def _stale_reason(old: dict | None, new: dict) -> str | None:
    if not isinstance(old, dict):
        return "its manifest is unreadable"
    if old == new:
        return None
    names = {"segmenter": "another classifier", "input": "the input file changed",
             "package": "another napari-vitseg version", "planes": "other planes",
             "output": "other output settings"}
    for key, why in names.items():
        if old.get(key) != new.get(key):
            return why
    return "other settings"


class StagedOutput:
    """One output written plane by plane into its staging store, resumable, finished atomically.

    Use: :meth:`open` (resume or start), :meth:`write_plane` for every plane not in
    :attr:`done`, then :meth:`prepare`, :meth:`commit` and :meth:`cleanup` (split so that a
    job with several outputs assembles all of them before renaming any). Closing early
    (Cancel, Ctrl+C, SIGTERM, SIGKILL) leaves the staging store for the next run and nothing
    under the final name.

    Parameters
    ----------
    spec : OutputSpec
    depends : dict
        JSON-serialisable description of everything the planes depend on (classifier
        identity, input path / size / mtime / shape / dtype, ...); the output's own
        :meth:`OutputSpec.params` are added. A staging store recorded with other values is
        discarded.
    attrs : dict, optional
        Extra group attributes of OME-Zarr outputs (``image-label``, ``omero``, provenance).

    Attributes
    ----------
    staging : pathlib.Path
        :func:`staging_path` of the output.
    done : dict of int to str
        Finished planes and their checksums.
    created : bool
        Whether :meth:`open` made a new staging store (nothing to resume).
    """

    def __init__(self, spec: OutputSpec, depends: dict, attrs: dict | None = None):
        self.spec = spec
        self.path = Path(spec.path)
        self.staging = staging_path(self.path)
        self.depends = {**depends, "output": spec.params()}
        self.attrs = dict(attrs or {})
        self.done: dict[int, str] = {}
        self._array = None
        self._part: Path | None = None
        self._lock = None
        self.created = False

    # -- the manifest ---------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.staging / MANIFEST_NAME

    def _read_manifest(self):
        """The manifest of an existing staging store; ``None`` for an empty folder.

        Raises VitsegError for anything at the staging path that is not ours.
        """
        s = self.staging
        if s.is_symlink() or not s.is_dir():
            raise VitsegError(
                f"{str(s)!r} exists and is not a napari-vitseg staging folder; move it away or choose another "
                "output name."
            )
        if not self.manifest_path.exists():
            if not any(s.iterdir()):
                return None
            raise VitsegError(
                f"{str(s)!r} exists but is not a napari-vitseg staging folder (no {MANIFEST_NAME}); move it away "
                "or choose another output name."
            )
        try:
            man = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            man = {"format": MANIFEST_FORMAT, "depends": None}
        if not isinstance(man, dict) or man.get("format") != MANIFEST_FORMAT:
            raise VitsegError(
                f"{str(self.manifest_path)!r} is not a napari-vitseg manifest; move {str(s)!r} away or choose "
                "another output name."
            )
        man["planes"] = recorded_planes(s)
        return man

    def _replace(self, name: str, text: str) -> None:
        tmp = self.staging / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.staging / name)

    def _save_manifest(self) -> None:
        """Write the manifest and a log of exactly :attr:`done` (both atomically)."""
        man = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "depends": self.depends}
        self._replace(MANIFEST_NAME, json.dumps(man, indent=1, sort_keys=True))
        self._replace(PLANES_LOG, "".join(f"{j} {c}\n" for j, c in sorted(self.done.items())))

    # -- opening ----------------------------------------------------------------------------
    def open(self) -> list[str]:
        """Resume from the staging store, or start a new one.

        Returns
        -------
        list of str
            What happened, for progress messages (stale staging discarded, planes kept).

        Raises
        ------
        VitsegError
            Something that is not a napari-vitseg staging folder sits at the staging path.
        """
        msgs: list[str] = []
        name = self.path.name
        # A store appears at the staging path complete and locked (made under a temporary name and
        # renamed) and leaves it by a rename while still locked, so a concurrent run sees it whole
        # or not at all; when it appears or leaves between two looks, look again.
        for _ in range(20):
            if not os.path.lexists(self.staging):
                if self._create():
                    return msgs
                continue  # another run put its store there first
            try:
                man = self._read_manifest()
            except FileNotFoundError:
                continue  # removed meanwhile
            if man is None:
                with contextlib.suppress(OSError):
                    self.staging.rmdir()
                continue
            if not self._take_lock():  # before anything is verified or discarded
                continue  # the store was removed or replaced meanwhile
            reason = _stale_reason(man.get("depends"), self.depends)
            if reason is None and not self._verify(man):
                reason = "its store is damaged"
            if reason is None:
                return msgs
            n = len(man.get("planes") or {})
            msgs.append(f"{name}: discarding the unfinished staging of an earlier run ({reason}; {n} plane(s))")
            self.discard()
        raise VitsegError(f"Another run keeps creating and removing {str(self.staging)!r}; wait for it to finish "
                          "or choose another output name.")

    def _take_lock(self, staging: Path | None = None) -> bool:
        """Lock the store at ``staging`` (default: the staging path); False when the store there was
        removed or replaced while the lock was taken."""
        staging = self.staging if staging is None else staging
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            return True
        try:
            fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise VitsegError(
                f"Another run is writing {str(self.path)!r} (its staging {str(self.staging)!r} is locked); wait "
                "for it to finish or choose another output name."
            ) from None
        try:  # the lock file still at the path: the store was not removed while we waited for it
            same = os.path.samestat(os.fstat(fd), os.stat(staging / LOCK_NAME))
        except OSError:
            same = False
        if not same:
            os.close(fd)
            return False
        self._lock = fd
        return True

    def close(self) -> None:
        """Release the staging store (its lock); the store itself stays for the next run."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _verify(self, man: dict) -> bool:
        import zarr

        spec = self.spec
        try:
            arr = zarr.open_array(str(self.staging / "0"), mode="r+", zarr_format=2)
        except Exception:  # noqa: BLE001 - any unreadable store means: start again
            return False
        if tuple(arr.shape) != spec.shape or tuple(arr.chunks) != spec.chunks or arr.dtype != np.dtype(spec.dtype):
            return False
        self.done = {}
        for j, crc in (man.get("planes") or {}).items():
            if not 0 <= j < (spec.n_planes or 1):
                continue
            if not (self.staging / "0" / spec.chunk_key(j)).is_file():
                continue
            try:
                data = np.asarray(arr[spec.selection(j)])
            except Exception:  # noqa: BLE001 - a truncated or corrupt chunk is simply not finished
                continue
            if _crc(data) == crc:
                self.done[j] = crc
        self._array = arr
        self._save_manifest()  # keep only what was proven
        return True

    def _create(self) -> bool:
        """Make a new, locked store under a temporary name and rename it to the staging path;
        False (nothing left behind) when another run's store got there first."""
        import secrets

        import zarr

        final = self.staging
        tmp = final.with_name(f"{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        tmp.mkdir()
        try:
            self.staging = tmp
            self._build_store()
            self._take_lock(tmp)
        except BaseException:
            self.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            self.staging = final
        try:
            os.rename(tmp, final)  # atomic; fails when a store appeared at the staging path meanwhile
        except OSError:
            self.close()
            shutil.rmtree(tmp, ignore_errors=True)
            self._array = None
            return False
        self._array = zarr.open_array(str(final / "0"), mode="r+", zarr_format=2)
        self.created = True
        return True

    def _build_store(self) -> None:
        import zarr

        spec = self.spec
        self.done = {}
        self._save_manifest()  # first: a folder with our manifest is ours to resume or discard
        group = zarr.open_group(str(self.staging), mode="a", zarr_format=2)
        arr = group.create_array("0", shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype,
                                 compressors=_codec(), fill_value=0, overwrite=True,
                                 chunk_key_encoding={"name": "v2", "separator": "/"},
                                 config={"write_empty_chunks": True})  # every plane has its chunk file
        if spec.kind == "ome-zarr":
            import warnings

            from ome_zarr.format import FormatV04

            with warnings.catch_warnings():  # ome_zarr.writer builds a deprecated Scaler at import
                warnings.simplefilter("ignore", DeprecationWarning)
                from ome_zarr.writer import write_multiscales_metadata

            axes = [{"name": a.lower(), "type": "channel" if a == "C" else "space"} for a in spec.axes]
            metadata = {"omero": self.attrs["omero"]} if "omero" in self.attrs else {}
            write_multiscales_metadata(
                group, datasets=[{"path": "0", "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0] * len(spec.shape)}]}],
                fmt=FormatV04(), axes=axes, name=self.path.name, metadata=metadata)
            group.attrs.update({k: v for k, v in self.attrs.items() if k != "omero"})
        self._array = arr

    def discard(self) -> None:
        """Delete the staging store (only ours: it holds our manifest); renamed away first, while
        still locked, so that another run never sees it half deleted."""
        if self.staging.is_dir() and not self.staging.is_symlink() and self.manifest_path.exists():
            import secrets

            gone = self.staging.with_name(f"{self.staging.name}.{os.getpid()}-{secrets.token_hex(4)}.del")
            try:
                os.rename(self.staging, gone)
            except FileNotFoundError:
                pass
            else:
                shutil.rmtree(gone, ignore_errors=True)
        self.close()
        self._array = None
        self.done = {}

    # -- writing ------------------------------------------------------------------------------
    def bytes_needed(self, n_todo: int) -> int:
        """Upper bound of the bytes still to write: staging of ``n_todo`` planes, plus the whole
        assembled file for TIFF outputs."""
        return self.spec.plane_nbytes * n_todo + (self.spec.nbytes if self.spec.kind == "tiff" else 0)

    def write_plane(self, j: int, data: np.ndarray) -> None:
        """Store plane ``j`` (its own chunk), then append its checksum to the planes log."""
        spec = self.spec
        data = np.ascontiguousarray(data, dtype=spec.dtype)
        if data.shape != tuple(spec.plane_shape):
            raise ValueError(f"plane of shape {data.shape}; expected {tuple(spec.plane_shape)}")
        self._array[spec.selection(j)] = data
        crc = _crc(data)
        with open(self.staging / PLANES_LOG, "a") as log:
            log.write(f"{j} {crc}\n")
        self.done[j] = crc

    # -- finishing ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Make the output ready to be renamed: TIFF outputs are assembled inside the staging store."""
        spec = self.spec
        missing = [j for j in range(spec.n_planes or 1) if j not in self.done]
        if missing:
            raise RuntimeError(f"{self.path}: planes {missing[:5]} are not written")
        if spec.kind != "tiff":
            return
        import tifffile

        part = self.staging / ASSEMBLED_NAME
        arr = self._array
        y, x = spec.plane_shape[-2:]
        ty, tx = _tile(y), _tile(x)

        def tiles():
            for j in range(spec.n_planes or 1):
                plane = np.asarray(arr[spec.selection(j)])
                for page in plane.reshape(-1, y, x):
                    for y0 in range(0, y, ty):
                        for x0 in range(0, x, tx):
                            yield page[y0:y0 + ty, x0:x0 + tx]

        self._part = part
        try:
            with tifffile.TiffWriter(part, bigtiff=spec.nbytes > BIGTIFF_ABOVE) as tw:
                tw.write(tiles(), shape=spec.shape, dtype=spec.dtype, tile=(ty, tx), compression=TIFF_COMPRESSION,
                         compressionargs={"level": TIFF_COMPRESSION_LEVEL}, photometric="minisblack",
                         metadata=self._tiff_metadata())
        except BaseException:
            self.abort()
            raise

    def _tiff_metadata(self) -> dict:
        """tifffile ``metadata`` of a TIFF output: its axes, and the role and class table
        (:data:`~napari_vitseg.io._tiff.VITSEG_KEY` entry of ``attrs``) when given."""
        from ._tiff import VITSEG_KEY

        meta = {"axes": self.spec.axes}
        if isinstance(self.attrs.get(VITSEG_KEY), dict):
            meta[VITSEG_KEY] = self.attrs[VITSEG_KEY]
        return meta

    def commit(self) -> Path:
        """Rename the finished output into place (TIFF: the assembled file; OME-Zarr: the staging store)."""
        if self.spec.kind == "tiff":
            if self._part is None:
                raise RuntimeError("prepare() first")
            os.replace(self._part, self.path)
            self._part = None
            return self.path
        if os.path.lexists(self.path):
            raise VitsegError(f"The output {str(self.path)!r} appeared while it was written; nothing was "
                              f"overwritten, the result is in {str(self.staging)!r}.")
        os.rename(self.staging, self.path)
        self._array = None
        self.close()
        for name in (PLANES_LOG, MANIFEST_NAME, LOCK_NAME):
            (self.path / name).unlink(missing_ok=True)
        return self.path

    def cleanup(self) -> None:
        """Remove the staging store of a committed TIFF output."""
        if self.spec.kind == "tiff":
            self.discard()

    def abort(self) -> None:
        """Remove a half-assembled TIFF (the staging store is kept)."""
        if self._part is not None:
            self._part.unlink(missing_ok=True)
            self._part = None
