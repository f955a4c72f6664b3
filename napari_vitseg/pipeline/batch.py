"""Applying a trained segmenter to files and folders: the one implementation.

The CLI (``vitseg apply``), the Python API (:meth:`Segmenter.iter_apply_files`) and the
napari widget (*Apply to files*) all call these generators, so input expansion, output
naming, resume and atomic writing are the same everywhere:

- inputs: files, zarr / OME-Zarr folders and patterns of TIFF slices as given, other folders
  expanded to their TIFF files and zarr folders (sorted; see
  :func:`napari_vitseg.io.expand_inputs`); read lazily, one plane at a time, so memory is
  bounded by one plane's features whatever the stack size;
- outputs: the format follows the name (:func:`napari_vitseg.io._writers.output_kind`):
  ``.tif`` / ``.tiff`` is a tiled, zlib-compressed TIFF (BigTIFF above 2 GiB), ``.zarr`` /
  ``.ome.zarr`` an OME-Zarr (NGFF 0.4); folders get ``<stem><suffix>.tif`` (or
  ``.ome.zarr`` with ``output_format='ome-zarr'``), where the stem is the input's name without
  its image suffix only (``cell.day1.tif`` -> ``cell.day1_seg.tif``); two inputs that would
  share an output, an output that is one of the inputs, and outputs that exist and are not
  regular files (folders, devices, pipes; see :func:`napari_vitseg.io._atomic.check_output_path`)
  or are existing OME-Zarr outputs are refused before anything is written;
- resume inside a file: planes go to a hidden staging store next to the output
  (``.<name>.part.zarr/``, one chunk per plane) with a manifest of what they depend on (the
  classifier's identity, the input's path, size, modification time, shape and dtype, the
  planes, the output settings, the package version) and an append-only log of finished planes
  (index and CRC-32 of the plane's values). A rerun keeps the planes whose chunk exists and
  matches its checksum and computes only the others; the result equals an uninterrupted run bit
  for bit. A staging store made with another classifier or input is discarded (with a progress
  message); one being written by another run is refused (it is locked);
- outputs appear under their final name only when complete: TIFF outputs are assembled from
  the staging store (inside it) and renamed into place, OME-Zarr outputs are the staging store
  renamed into place; the staging store is then removed. Closing the job early (Cancel,
  Ctrl+C, SIGTERM, or a killed process) keeps the staging store for the next run and leaves
  nothing under the final name; a rerun of :func:`iter_apply_files` skips outputs that exist;
- disk space: checked before starting against an upper bound of the bytes the run writes
  (uncompressed, staging included); a full disk during the run is a :class:`VitsegError`
  that keeps the staging store;
- scale-out: with a ``distributed.Client`` the planes are predicted on the cluster's workers
  (:mod:`napari_vitseg.pipeline._distributed`; inputs on a shared filesystem) and written by
  the caller through the same staging path, in order; results are identical to one process;
- overlap (one process, default on with 2 cores or more; ``overlap=False`` or ``$VITSEG_OVERLAP=0``
  turns it off): the next row band
  (or plane) is read and featurised in one thread while the current one is predicted, with the
  threads split between the two so that together they use the machine's cores and no more
  (:func:`iter_plane_probabilities`); the labels are those of :meth:`Segmenter.predict_plane`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from .._progress import Progress
from .._validation import UnreadableInputError, VitsegError, check_option, unreadable
from ..io import expand_inputs, image_stem, is_pattern, open_image, pattern_files
from ..io._atomic import check_output_path, same_file
from ..io._tiff import VITSEG_KEY, class_table_metadata
from ..io._writers import (
    MANIFEST_NAME,
    OutputSpec,
    StagedOutput,
    check_free_space,
    is_disk_full,
    output_kind,
    recorded_planes,
    staging_path,
)
from .segmenter import Segmenter, as_channels_last, plane_of

__all__ = ["OUTPUT_FORMATS", "OVERLAP_ENV", "output_paths", "iter_apply_file", "iter_apply_files",
           "iter_plane_probabilities", "overlap_threads"]

#: Progress of :func:`iter_apply_files` is reported in these units for the whole run.
PROGRESS_UNITS = 1000

#: Output formats of folder outputs and the suffix they get.
OUTPUT_FORMATS = {"tiff": ".tif", "ome-zarr": ".ome.zarr"}


def output_paths(inputs: Sequence, output_dir, *, suffix: str = "_seg", probabilities: bool = False,
                 output_format: str = "tiff") -> list[tuple[Path, Path, Path | None]]:
    """Output names for input files in ``output_dir``.

    Parameters
    ----------
    inputs : sequence of str or pathlib.Path
        Input files (already expanded; see :func:`napari_vitseg.io.expand_inputs`).
    output_dir : str or pathlib.Path
    suffix : str
        Added to each input's stem: ``<stem><suffix>.tif``.
    probabilities : bool
        Also name ``<stem><suffix>_probabilities.tif``.
    output_format : {'tiff', 'ome-zarr'}
        ``.tif`` or ``.ome.zarr`` outputs.

    Returns
    -------
    list of (input, labels output, probabilities output or None)

    Raises
    ------
    VitsegError
        Two inputs that would be written to the same output (e.g. ``a.tif`` and ``a.tiff``,
        or the same name in two folders), or an output that is one of the inputs.

    Examples
    --------
    >>> [o.name for _, o, _ in output_paths(["d/cell.day1.tif", "d/cell.day2.tif"], "out")]
    ['cell.day1_seg.tif', 'cell.day2_seg.tif']
    >>> output_paths(["d/a.tif"], "out", output_format="ome-zarr", probabilities=True)[0][2].name
    'a_seg_probabilities.ome.zarr'
    """
    check_option(output_format, OUTPUT_FORMATS, "output_format")
    ext = OUTPUT_FORMATS[output_format]
    out_dir = Path(output_dir)
    rows = []
    by_output: dict[str, Path] = {}
    for inp in map(Path, inputs):
        stem = image_stem(inp)
        out = out_dir / f"{stem}{suffix}{ext}"
        probs = out_dir / f"{stem}{suffix}_probabilities{ext}" if probabilities else None
        for o in (out, probs):
            if o is None:
                continue
            key = os.path.normcase(os.path.abspath(o))
            if key in by_output:
                raise VitsegError(
                    f"{str(by_output[key])!r} and {str(inp)!r} would both be written to {str(o)!r}; rename one "
                    "of them or apply them into different output folders."
                )
            by_output[key] = inp
        rows.append((inp, out, probs))
    for _, out, probs in rows:
        for o in (out, probs):
            if o is not None and any(same_file(o, i) for i, _, _ in rows):
                raise VitsegError(f"The output {str(o)!r} is one of the inputs; choose another output folder.")
    return rows


# -- what a run depends on --------------------------------------------------------------------
def _segmenter_identity(seg: Segmenter) -> str:
    """SHA-256 of everything a fitted segmenter's predictions depend on (deterministic, unlike
    the classifier file, which records its creation time)."""
    from ..classifiers._file import _estimator_bytes

    h = hashlib.sha256()
    nc = int(seg.n_channels_)
    desc = {"features": seg.feature_config.to_dict(), "feature_names": seg.featurizer.feature_names(nc),
            "n_channels": nc, "classes": [int(c) for c in seg.classes_], "classifier": seg.classifier,
            "backbone": seg.featurizer.backbone_identity, "state": seg.featurizer.state_key}
    stages = getattr(seg, "stage_classifiers_", None) or [seg.classifier_]
    if len(stages) > 1:  # auto-context: every stage decides the labels (one stage hashes as before)
        desc["autocontext_stages"] = len(stages)
    h.update(json.dumps(desc, sort_keys=True, default=str).encode())
    for clf in stages:
        forest = getattr(clf, "estimator_", None)
        if forest is not None and hasattr(forest, "estimators_"):
            for tree in forest.estimators_:  # skops output is not byte-stable; the tree arrays are
                state = tree.tree_.__getstate__()
                nodes = state["nodes"]
                for name in nodes.dtype.names:  # field by field: the record's padding bytes are garbage
                    h.update(np.ascontiguousarray(nodes[name]).tobytes())
                h.update(np.ascontiguousarray(state["values"]).tobytes())
        else:
            h.update(_estimator_bytes(clf)[1])
    return h.hexdigest()


def _input_files(path: Path) -> list[str]:
    """The files an input consists of: itself, the slices of a pattern, the files of a zarr folder."""
    if is_pattern(path):
        return pattern_files(path)
    if os.path.isdir(path):
        return sorted(os.path.join(root, n) for root, _, names in os.walk(path) for n in names)
    return [os.fspath(path)]


def _input_signature(path: Path) -> dict:
    """Size and modification time of a file, or summed / latest over the files of a pattern or
    zarr folder (a rewritten chunk changes them)."""
    if not is_pattern(path) and os.path.isfile(path):
        st = os.stat(path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    stats = [os.stat(f) for f in _input_files(path)]
    return {"files": len(stats), "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def _output_stamp(identity: str, prediction: str, input_path: Path, channel_axis, planes) -> str:
    """SHA-256 of what an output's content depends on: the segmenter, the prediction mode, the
    input (file name and size) and the options that select its planes and channels. Every
    output stores it (:data:`~napari_vitseg.io._tiff.VITSEG_KEY` entry), so a folder rerun skips
    only outputs this classifier made from this input; an input modified after its output was
    written is caught by the modification times (:func:`iter_apply_files`). Folders and
    modification times stay out of the stamp, so the same input copied elsewhere gives the
    same bytes."""
    sig = _input_signature(Path(input_path))
    desc = {"segmenter": identity, "prediction": prediction, "input": Path(input_path).name,
            "size": sig["size"], "files": sig.get("files"), "channel_axis": channel_axis,
            "planes": None if planes is None else str(planes)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()


def _stored_stamp(path: Path) -> str | None:
    """The stamp an existing output carries (``None``: none, not ours, or unreadable)."""
    try:
        if os.path.isdir(path):  # OME-Zarr / zarr output: the group's attributes
            import zarr

            entry = zarr.open_group(str(path), mode="r").attrs.get(VITSEG_KEY)
        else:
            from ..io._tiff import tiff_series

            entry = tiff_series(path).vitseg
    except Exception:  # a damaged or foreign file is simply not a finished output of this run
        return None
    stamp = entry.get("stamp") if isinstance(entry, dict) else None
    return stamp if isinstance(stamp, str) else None


def _read_plane(image, nsp: int, z, input_path) -> np.ndarray:
    """Plane ``z`` of a lazy input as numpy; a read that fails is a VitsegError naming the input.

    Read in the calling thread: with a distributed Client as dask's default scheduler the read
    would otherwise be shipped to the cluster (and an open file cannot be).
    """
    import dask

    try:
        with dask.config.set(scheduler="synchronous"):
            return plane_of(image, nsp, z)
    except VitsegError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile, zarr and codecs raise many types for damaged data
        raise unreadable(input_path, e, z) from None


# -- featurising and predicting in two threads -------------------------------------------------
#: Environment variable: ``0`` / ``off`` / ``false`` / ``no`` turns the overlapped path off (planes
#: one after the other); default on (1.3-1.5x the throughput on 2 cores: ``docs/apply_speed.md``).
OVERLAP_ENV = "VITSEG_OVERLAP"
#: Row bands whose features exist at one time in the overlapped path: the one being predicted
#: and the next one, being featurised (memory: twice the sequential path's one band).
MAX_BANDS_IN_FLIGHT = 2


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def overlap_threads(overlap: bool | None = None) -> tuple[int, int] | None:
    """Threads of the overlapped path: ``(featurise, predict)``, or None when it is off.

    Parameters
    ----------
    overlap : bool, optional
        True / False; None: off when ``$VITSEG_OVERLAP`` is ``0`` / ``off`` / ``false`` / ``no``,
        else on.

    Returns
    -------
    (int, int) or None
        Their sum is the number of cores this process may run on; None with fewer than 2
        cores or when switched off. Featurising gets half of the cores (at least one): with
        the default features and coarse-to-fine prediction the two take about the same CPU
        time per pixel (``docs/apply_speed.md``).
    """
    if overlap is None:
        overlap = os.environ.get(OVERLAP_ENV, "").strip().lower() not in ("0", "off", "false", "no")
    cores = _cores()
    if not overlap or cores < 2:
        return None
    feat = max(1, cores // 2)
    return feat, cores - feat


class _Failed:
    """An exception raised in the featurising thread, handed over to the consumer."""

    def __init__(self, key, error: BaseException, reading: bool):
        self.key, self.error, self.reading = key, error, reading


_DONE = object()


def _featurise_planes(seg: Segmenter, planes, coarse: bool, q: queue.SimpleQueue, slots: threading.Semaphore,
                      stop: threading.Event, cpus: set | None, free: queue.SimpleQueue,
                      finished: threading.Event) -> None:
    """The featurising thread: read each plane, then compute its bands' features, at most
    :data:`MAX_BANDS_IN_FLIGHT` ahead of the predicted ones (``slots``), into the buffers the
    consumer has finished with (``free``); ``finished`` is set once the last band is queued."""
    key = None
    pinned = False
    try:
        for key, src in planes:
            if stop.is_set():
                return
            try:
                plane = src() if callable(src) else np.asarray(src)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                q.put(_Failed(key, e, True))
                return
            seg._check_plane(plane)
            digest = seg.featurizer.plane_digest(plane)
            bands = seg._batch_bands(plane)
            for i, band in enumerate(bands):
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                try:
                    buf = free.get_nowait()
                except queue.Empty:
                    nc = 1 if plane.ndim == 2 else plane.shape[-1]
                    buf = np.empty(seg.featurizer.buffer_size(plane.shape, nc), np.float32)
                fb, off = seg._band_features(plane, band, digest, coarse, buffer=buf)
                q.put((key, plane.shape[:2], band, i == len(bands) - 1, fb, off, buf))
                del fb, buf
                if cpus and not pinned:
                    # the first band ran on every core (nothing to predict yet); from now on this
                    # thread (and the feature pool it starts) keeps to its share of the cores
                    os.sched_setaffinity(0, cpus)
                    pinned = True
        finished.set()
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        q.put(_Failed(key, e, False))
    finally:
        finished.set()
        q.put(_DONE)


def iter_plane_probabilities(seg: Segmenter, planes: Iterable, *, overlap: bool | None = None, where=None):
    """Probabilities of planes, featurising the next row band while the current one is predicted.

    The batch path of ``vitseg apply`` and :func:`iter_apply_file`: each plane in the
    bounded-memory row bands of :meth:`Segmenter.predict_plane` (``use_cache=False``), with
    the same results. A background thread reads each plane and computes the features of its
    bands (:meth:`Segmenter._band_features`) at most :data:`MAX_BANDS_IN_FLIGHT` bands ahead,
    while the calling thread predicts (:meth:`Segmenter._predict_band`), across plane
    boundaries, so both run at once (a software pipeline). The threads are split between the
    two (:func:`overlap_threads`): after the first band (computed on every core, while nothing
    can be predicted yet) the featurising thread is restricted to its share of the cores
    (``os.sched_setaffinity``, Linux) and the forest's threads are capped to the rest
    (:func:`napari_vitseg.classifiers._engines.predict_threads`) until the last band has been
    featurised, so the process never runs more compute threads than cores. Feature buffers of
    predicted bands are reused for the next ones (at most :data:`MAX_BANDS_IN_FLIGHT` exist). Auto-context models (several stages, each needing the
    previous one's whole-plane probabilities), one core, or ``overlap=False`` predict the
    planes one after the other with :meth:`Segmenter.predict_plane`.

    Parameters
    ----------
    seg : Segmenter
        Fitted.
    planes : iterable of (key, plane or callable)
        Planes (Y, X) or (Y, X, C) in order, or functions returning them (called in the
        featurising thread, so reading overlaps with prediction too); ``key`` is passed back.
    overlap : bool, optional
        See :func:`overlap_threads` (None: ``$VITSEG_OVERLAP``, default on).
    where : callable, optional
        ``where(key) -> str`` names a plane in error messages (e.g. ``"plane 3 of 'a.tif'"``).

    Yields
    ------
    (key, ndarray)
        Probabilities (K, Y, X) float32 in ``seg.classes_`` order, in the order of ``planes``.
        Closing the generator stops the featurising thread (after the band it is computing).

    Raises
    ------
    VitsegError
        A plane with the wrong number of channels or non-finite values (named by ``where``);
        errors of reading a plane are raised as they are.
    """
    seg._check_fitted()

    def named(key, e: VitsegError) -> VitsegError:
        if where is None or isinstance(e, UnreadableInputError):  # it names its file and plane
            return e
        return VitsegError(f"{where(key)}: {e}")

    threads = overlap_threads(overlap)
    chain = seg._stages()
    if threads is None or len(chain) > 1:
        for key, src in planes:
            plane = src() if callable(src) else np.asarray(src)
            try:
                p = seg.predict_plane(plane, use_cache=False)
            except VitsegError as e:
                raise named(key, e) from None
            yield key, p
        return
    from ..classifiers._engines import predict_threads

    n_feat, n_pred = threads
    cpus = None
    if hasattr(os, "sched_setaffinity"):
        cpus = set(sorted(os.sched_getaffinity(0))[-n_feat:])
    coarse = seg.prediction_mode == "coarse-to-fine"
    clf, classes = chain[0], seg.classes_
    q: queue.SimpleQueue = queue.SimpleQueue()
    free: queue.SimpleQueue = queue.SimpleQueue()  # feature buffers of predicted bands, for reuse
    slots = threading.Semaphore(MAX_BANDS_IN_FLIGHT)
    stop, finished = threading.Event(), threading.Event()
    worker = threading.Thread(target=_featurise_planes,
                              args=(seg, planes, coarse, q, slots, stop, cpus, free, finished),
                              name="vitseg-featurise", daemon=True)
    worker.start()
    out = None
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            if isinstance(item, _Failed):
                if isinstance(item.error, VitsegError) and not item.reading:
                    raise named(item.key, item.error) from None
                raise item.error
            key, (ny, nx), band, last, fb, off, buf = item
            del item
            try:
                if out is None:
                    out = np.empty((len(classes), ny, nx), dtype=np.float32)
                # every core once nothing is left to featurise (the last bands of a run)
                with predict_threads(None if finished.is_set() else n_pred):
                    seg._predict_band(clf, fb, off, band, ny, classes, None, coarse, out, refine=True)
            except VitsegError as e:
                raise named(key, e) from None
            finally:
                del fb
                free.put(buf)
                del buf
                slots.release()
            if last:
                p, out = out, None
                yield key, p
    finally:
        stop.set()
        slots.release()  # a producer waiting for a slot sees ``stop`` at once
        worker.join()


class _Run:
    """What every file of one apply run shares: the segmenter, its identity, the cluster."""

    def __init__(self, seg: Segmenter, client=None, max_in_flight: int | None = None, overlap: bool | None = None):
        seg._check_fitted()
        self.seg = seg
        self.overlap = overlap
        self.identity = _segmenter_identity(seg)
        self.remote = None
        if client is not None:
            from ._distributed import RemotePredictor

            self.remote = RemotePredictor(client, seg, self.identity, max_in_flight)

    def planes(self, image, nsp: int, input_path: Path, channel_axis, jobs: list, probabilities: bool):
        """Yield ``(j, labels, float16 probabilities or None)`` for ``jobs`` = [(j, z), ...] in order."""
        if self.remote is not None:
            yield from self.remote.iter_planes(input_path, channel_axis, jobs, probabilities)
            return
        seg = self.seg
        zs = dict(jobs)

        def where(j):  # bad values (NaN, ...): the message names the file
            return (f"plane {zs[j]} of " if zs[j] is not None else "") + repr(str(input_path))

        source = iter_plane_probabilities(
            seg, ((j, lambda z=z: _read_plane(image, nsp, z, input_path)) for j, z in jobs),
            overlap=self.overlap, where=where)
        try:
            for j, p in source:
                yield j, seg.labels_from_proba(p), (p.astype(np.float16) if probabilities else None)
        finally:
            source.close()

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()


# -- one file ----------------------------------------------------------------------------------
def _check_outputs(input_path: Path, outputs: list[Path]) -> None:
    """The rules of :func:`napari_vitseg.io._atomic.check_output_path`, plus: OME-Zarr outputs
    (folders) are never replaced, and no output is one of the input's files."""
    inputs = _input_files(input_path) if is_pattern(input_path) else [input_path]
    for o in outputs:
        kind = output_kind(o)
        if any(same_file(o, i) for i in inputs) or os.path.abspath(o) == os.path.abspath(input_path):
            raise VitsegError(f"The output {str(o)!r} is the input image; choose another output name.")
        if kind == "ome-zarr":
            if os.path.lexists(o):
                raise VitsegError(f"The output {str(o)!r} exists; OME-Zarr outputs are never overwritten: delete "
                                  "it or choose another name.")
            if not o.parent.is_dir():
                raise VitsegError(f"The folder of the output, {str(o.parent)!r}, does not exist; create it first.")
        else:
            check_output_path(o, inputs=inputs, what="output")
    if len(outputs) == 2 and os.path.abspath(outputs[0]) == os.path.abspath(outputs[1]):
        raise VitsegError(f"The labels and probabilities outputs are both {str(outputs[0])!r}; give two names.")


def _plane_range(planes, nz: int | None, input_path: Path) -> range | None:
    """Normalise ``planes`` (slice, range, sequence of consecutive ints) for a stack of ``nz``."""
    if planes is None:
        return None if nz is None else range(nz)
    if nz is None:
        raise VitsegError(f"{str(input_path)!r} is a 2D image; planes= applies to stacks only.")
    if isinstance(planes, slice):
        r = range(*planes.indices(nz))
    elif isinstance(planes, range):
        r = range(*slice(planes.start, planes.stop, planes.step).indices(nz))
    else:
        raise VitsegError(f"planes must be a slice or range (e.g. slice(0, 20)); got {planes!r}.")
    if len(r) == 0:
        raise VitsegError(f"planes={planes!r} selects no plane of {str(input_path)!r} ({nz} planes).")
    return r


def _open_input(seg: Segmenter, lazy, input_path: Path, channel_axis):
    """The input as a channels-last (lazy) array, checked against the classifier's channels.

    The channel axis is, in order: the one asked for; the one the file declares (its axes
    metadata: ``S`` / ``C``); for a classifier of ``n > 1`` channels and a file that declares
    none (a plain TIFF written without axes), its first or last axis when exactly one of them
    has ``n`` entries -- a single-channel reading could not be applied anyway.
    """
    declared = lazy.channel_axis  # a samples (RGB) or channel axis the file declares
    if channel_axis is None and declared is None and seg.n_channels_ > 1 and len(lazy.shape) >= 3:
        fits = sorted({ax % len(lazy.shape) for ax in (0, -1) if lazy.shape[ax] == seg.n_channels_})
        if len(fits) == 1:
            channel_axis = fits[0]
    if channel_axis is None and declared is not None:
        k = lazy.shape[declared]
        if seg.n_channels_ > 1 or k == 1:
            channel_axis = declared
        else:
            raise VitsegError(
                f"{str(input_path)!r} has {k} channels (axes {lazy.axes}); the classifier was trained on "
                "single-channel images. Apply a classifier trained on such images, or pick one channel of the "
                "file first."
            )
    try:
        image, nsp, nc = as_channels_last(lazy.data, channel_axis)
    except VitsegError as e:
        raise VitsegError(f"{str(input_path)!r}: {e}") from None
    if nc != seg.n_channels_:
        raise VitsegError(
            f"{str(input_path)!r} has {nc} channel(s) (axes {lazy.axes}, channel_axis={channel_axis}); "
            f"the classifier expects {seg.n_channels_}. Pass the channel axis (CLI --channel-axis)."
        )
    return image, nsp, channel_axis


def _specs(seg: Segmenter, outputs: list[Path], spatial: tuple, zs: range | None) -> list[OutputSpec]:
    n = len(zs) if zs is not None else None
    specs = [OutputSpec(outputs[0], "labels", n, tuple(spatial), "uint8")]
    if len(outputs) > 1:
        specs.append(OutputSpec(outputs[1], "probabilities", n, (len(seg.classes_), *spatial), "float16"))
    return specs


def _attrs(seg: Segmenter, spec: OutputSpec, stamp: str | None = None) -> dict:
    table = seg.class_table()
    info = {VITSEG_KEY: class_table_metadata(table, role=spec.role, axes=spec.axes)}  # TIFF and OME-Zarr
    if stamp is not None:
        info[VITSEG_KEY]["stamp"] = stamp
    if spec.role == "labels":
        info["image-label"] = {
            "version": "0.4",
            "colors": [{"label-value": c["id"], "rgba": [int(c["color"][i:i + 2], 16) for i in (1, 3, 5)] + [255]}
                       for c in table],
            "properties": [{"label-value": c["id"], "class": c["name"]} for c in table],
        }
    else:
        info["omero"] = {"version": "0.4", "channels": [
            {"label": c["name"], "color": c["color"].lstrip("#").upper(), "active": True,
             "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}} for c in table]}
    return info


class _DiskFull(VitsegError):
    """The disk filled up during the run: the staging store is kept for a rerun."""


@contextlib.contextmanager
def _disk_full_is_an_error(st: StagedOutput):
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise _DiskFull(
            f"The disk of {str(st.path.parent)!r} is full ({e.strerror}) while writing {st.path.name}; the finished "
            f"planes are kept in {str(st.staging)!r}: free some space and run the same command again to resume."
        ) from None


def _iter_apply_one(run: _Run, input_path, output_path, probabilities_path, channel_axis, planes, check_space: bool):
    seg = run.seg
    input_path = Path(input_path)
    given = (channel_axis, planes)  # the options as given, for the output's stamp
    outputs = [Path(output_path)] + ([Path(probabilities_path)] if probabilities_path is not None else [])
    _check_outputs(input_path, outputs)
    name = input_path.name
    staged: list[StagedOutput] = []
    try:
        with open_image(input_path) as lazy:
            image, nsp, channel_axis = _open_input(seg, lazy, input_path, channel_axis)
            zs = _plane_range(planes, image.shape[0] if nsp == 3 else None, input_path)
            spatial = tuple(image.shape[1:3] if nsp == 3 else image.shape[:2])
            n = len(zs) if zs is not None else 1
            depends = {
                "package": f"napari-vitseg {__version__}",
                "segmenter": run.identity,
                "prediction": seg.prediction_key,  # coarse-to-fine (of each scheme) and exact labels may differ
                "input": {"path": os.path.abspath(input_path), **_input_signature(input_path),
                          "shape": list(lazy.shape), "dtype": str(lazy.dtype), "channel_axis": channel_axis},
                "planes": [zs.start, zs.stop, zs.step] if zs is not None else None,
            }
            specs = _specs(seg, outputs, spatial, zs)
            stamp = _output_stamp(run.identity, seg.prediction_key, input_path, *given)
            if check_space:  # before anything is written
                check_free_space(_bytes_needed(specs))
            for spec in specs:
                staged.append(StagedOutput(spec, depends, _attrs(seg, spec, stamp)))
                with _disk_full_is_an_error(staged[-1]):
                    msgs = staged[-1].open()
                for m in msgs:
                    yield Progress(0, n, m, unit="plane")
            done = set.intersection(*(set(st.done) for st in staged))
            todo = [j for j in range(n) if j not in done]
            if done:
                yield Progress(len(done), n, f"{name}: {len(done)} of {n} planes finished earlier, resuming",
                               unit="plane")
            source = run.planes(image, nsp, input_path, channel_axis,
                                [(j, zs[j] if zs is not None else None) for j in todo], len(staged) > 1)
            try:
                for count, j in enumerate(todo, start=len(done)):
                    yield Progress(count, n, f"{name}: plane {j + 1}/{n}", unit="plane")
                    jj, labels, probs = next(source)
                    assert jj == j, (jj, j)
                    for st, data in zip(staged, (labels, probs), strict=False):
                        with _disk_full_is_an_error(st):
                            st.write_plane(j, data)
            finally:
                source.close()
        yield Progress(n, n, f"{name}: writing {', '.join(o.name for o in outputs)}", unit="plane")
        try:
            for st in staged:
                with _disk_full_is_an_error(st):
                    st.prepare()
            for st in reversed(staged):  # the labels output last: it marks the job as done
                st.commit()
            for st in staged:
                st.cleanup()
        finally:
            for st in staged:
                st.abort()
    except VitsegError as e:
        # bad input (damaged plane, NaN, ...): a rerun cannot succeed without another input, so
        # a staging store this run made is removed (nothing written); resumed ones and a full
        # disk's keep their planes
        if not isinstance(e, _DiskFull):
            for st in staged:
                if st.created:
                    st.discard()
        raise
    finally:
        for st in staged:
            st.close()  # the staging stores stay (unless committed or discarded) for the next run
    yield Progress(n, n, "done", unit="plane")
    return outputs[0]


def iter_apply_file(seg: Segmenter, input_path, output_path, *, probabilities_path=None, channel_axis=None,
                    planes=None, client=None, max_in_flight: int | None = None, overlap: bool | None = None):
    """Segment an image file plane by plane and write the labels as you go, resumably.

    Memory stays bounded by one plane's features (row strips for large planes). Planes are
    written to the output's hidden staging store (``.<name>.part.zarr``) with a log of finished
    planes; a rerun after an interruption computes only the planes not proven finished, and the output
    appears under its name only when complete (see the module docstring).

    Parameters
    ----------
    seg : Segmenter
        Fitted.
    input_path : str or pathlib.Path
        A 2D, 3D or multichannel image file (read lazily).
    output_path : str or pathlib.Path
        Labels, uint8, the input's spatial shape: ``.tif`` / ``.tiff`` (tiled, zlib, axes
        ``ZYX`` / ``YX``) or ``.zarr`` / ``.ome.zarr`` (OME-Zarr).
    probabilities_path : str or pathlib.Path, optional
        Probabilities, float16: TIFF (Z, K, Y, X) / (K, Y, X), or OME-Zarr (K, Z, Y, X) /
        (K, Y, X) (NGFF puts channels before space).
    channel_axis : int, optional
        Channel axis of the input; default: the TIFF's samples axis (RGB) when the
        classifier was trained on several channels.
    planes : slice or range, optional
        Only these planes of a stack (e.g. ``slice(0, 20)``); the output holds only them, in order.
    client : distributed.Client, optional
        Predict the planes on this dask.distributed cluster (inputs on a filesystem the workers
        share); the results are identical to a single process.
    max_in_flight : int, optional
        With ``client``: tasks submitted at a time (default twice the cluster's threads).
    overlap : bool, optional
        Featurise the next row band while the current one is predicted
        (:func:`iter_plane_probabilities`; same labels). None: ``$VITSEG_OVERLAP`` (default on).

    Yields
    ------
    Progress
        One unit per plane (``unit='plane'``).

    Returns
    -------
    pathlib.Path
        ``output_path``.

    Raises
    ------
    VitsegError
        Unreadable input, channel mismatch, missing output folder, an output that is the input
        or that exists and is not a regular file (or an existing OME-Zarr), an unknown output
        format, not enough free space (checked first), or a full disk (the staging is kept).
    """
    run = _Run(seg, client, max_in_flight, overlap)
    try:
        return (yield from _iter_apply_one(run, input_path, output_path, probabilities_path, channel_axis, planes,
                                           check_space=True))
    finally:
        run.close()


def _bytes_needed(specs: list[OutputSpec], needs: dict | None = None) -> dict:
    """Upper bound of the bytes each output folder receives (planes an existing staging store
    lists are counted as written; whether they are proven is decided later)."""
    needs = {} if needs is None else needs
    for spec in specs:
        n = spec.n_planes or 1
        staged = min(n, len(recorded_planes(staging_path(spec.path))))
        needs[spec.path.parent] = needs.get(spec.path.parent, 0) + StagedOutput(spec, {}).bytes_needed(n - staged)
    return needs


def _plan_needs(seg: Segmenter, rows, channel_axis, planes) -> tuple[dict, list[int]]:
    """Bytes each output folder receives (upper bound) and the planes of every row."""
    needs: dict[Path, int] = {}
    counts = []
    for inp, out, probs in rows:
        outputs = [out] + ([probs] if probs is not None else [])
        _check_outputs(inp, outputs)
        with open_image(inp) as lazy:
            image, nsp, _ = _open_input(seg, lazy, inp, channel_axis)
            zs = _plane_range(planes, image.shape[0] if nsp == 3 else None, inp)
            spatial = tuple(image.shape[1:3] if nsp == 3 else image.shape[:2])
        counts.append(len(zs) if zs is not None else 1)
        _bytes_needed(_specs(seg, outputs, spatial, zs), needs)
    return needs, counts


def _remove_leftover_staging(outputs) -> None:
    for o in outputs:
        s = staging_path(o)
        if s.is_dir() and not s.is_symlink() and (s / MANIFEST_NAME).exists():
            import shutil

            shutil.rmtree(s)


def iter_apply_files(seg: Segmenter, inputs: Sequence, output_dir, *, suffix: str = "_seg",
                     probabilities: bool = False, channel_axis=None, skip_existing: bool = True,
                     output_format: str = "tiff", planes=None, client=None, max_in_flight: int | None = None,
                     overlap: bool | None = None):
    """Segment image files (and the TIFF files of folders) into ``output_dir``.

    Outputs are named by :func:`output_paths`; with ``skip_existing`` a rerun skips the
    outputs that exist (only complete outputs carry the final name) and resumes the others
    inside the file (see :func:`iter_apply_file`). A file whose job is closed early (Cancel,
    Ctrl+C) leaves no output under its name, only its staging store for the next run. Free
    space for the whole run is checked before the first file.

    Parameters
    ----------
    seg : Segmenter
        Fitted.
    inputs : sequence of str or pathlib.Path
        Files and folders.
    output_dir : str or pathlib.Path
        Created if missing.
    suffix : str
        Output names are ``<stem><suffix>.tif`` (or ``.ome.zarr``).
    probabilities : bool
        Also write ``<stem><suffix>_probabilities.tif`` (float16).
    channel_axis : int, optional
        See :func:`iter_apply_file`.
    skip_existing : bool
        Skip inputs whose outputs exist.
    output_format : {'tiff', 'ome-zarr'}
        Tiled, compressed TIFF (default) or OME-Zarr outputs.
    planes : slice or range, optional
        Only these planes of every stack (see :func:`iter_apply_file`).
    client : distributed.Client, optional
        Predict on this dask.distributed cluster (the classifier is shipped once for all files).
    max_in_flight, overlap : optional
        See :func:`iter_apply_file`.

    Yields
    ------
    Progress
        Fraction of the whole run, in :data:`PROGRESS_UNITS` units; ``count`` holds
        (planes done, planes to do) for rates (``unit='plane'``).

    Returns
    -------
    list of pathlib.Path
        The labels outputs, written or already present, in input order.

    Raises
    ------
    VitsegError
        Missing inputs, empty folders, outputs that would collide or overwrite an input,
        not enough free space, and the errors of :func:`iter_apply_file`. With several
        inputs, a file found damaged while it is segmented is reported, the others are still
        segmented, and one error naming the failed inputs is raised at the end.
    """
    seg._check_fitted()
    check_option(output_format, OUTPUT_FORMATS, "output_format")
    files = expand_inputs(inputs)
    rows = output_paths(files, output_dir, suffix=suffix, probabilities=probabilities, output_format=output_format)
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise VitsegError(f"The output {str(out_dir)!r} exists and is not a folder; give a folder.")

    identity = _segmenter_identity(seg)
    stale: dict[Path, str] = {}

    def finished(inp, out, probs) -> bool:
        """Both outputs exist and carry this run's stamp; an existing output made by another
        classifier, from another input or by another program is never skipped as done and
        never overwritten: it is reported and the run fails at the end."""
        outs = [out] + ([probs] if probs is not None else [])
        if not skip_existing or not any(os.path.lexists(o) for o in outs):
            return False
        try:
            want = _output_stamp(identity, seg.prediction_key, inp, channel_axis, planes)
            changed = _input_signature(Path(inp))["mtime_ns"]  # the input was modified after its output
        except OSError:  # a missing / unreadable input: segmenting it reports the problem
            return False
        if all(os.path.lexists(o) and _stored_stamp(o) == want for o in outs):
            if all(os.stat(o).st_mtime_ns >= changed for o in outs):
                return True
            stale[inp] = (f"{str(inp)!r} was modified after its output {str(out)!r} was written; the output is "
                          "left as it is: remove it to segment the input again, or choose another output folder")
            return False
        other = next((o for o in outs if os.path.lexists(o) and _stored_stamp(o) != want), None)
        if other is not None:
            stale[inp] = (f"{str(other)!r} exists but was not made by this classifier from {str(inp)!r} "
                          "with these options (or was made by another program or an older napari-vitseg); "
                          "it is left as it is: remove it or choose another output folder")
        return False

    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if not finished(*r) and r[0] not in stale]
    needs, counts = _plan_needs(seg, todo, channel_axis, planes)
    check_free_space(needs)
    n = len(rows)
    units = PROGRESS_UNITS
    total_planes = sum(counts)
    planes_done = 0
    run = _Run(seg, client, max_in_flight, overlap)
    failed: list[tuple[Path, str]] = []
    try:
        k = 0
        for i, (inp, out, probs) in enumerate(rows):
            if inp in stale:
                if n == 1:
                    raise VitsegError(stale[inp] + ".")
                failed.append((inp, stale[inp]))
                yield Progress(int(units * (i + 1) / n), units, f"{inp.name}: FAILED ({stale[inp]})",
                               unit="plane", count=(planes_done, total_planes))
                continue
            if finished(inp, out, probs):
                _remove_leftover_staging([out] + ([probs] if probs is not None else []))
                yield Progress(int(units * (i + 1) / n), units, f"{inp.name}: already done", unit="plane",
                               count=(planes_done, total_planes))
                continue
            job = _iter_apply_one(run, inp, out, probs, channel_axis, planes, check_space=False)
            try:
                while True:
                    p = next(job)
                    frac = (i + (p.done / p.total if p.total else 0)) / n
                    yield Progress(int(units * frac), units, f"file {i + 1}/{n}: {p.msg}", unit="plane",
                                   count=(planes_done + p.done, total_planes))
            except StopIteration:
                pass
            except VitsegError as e:
                if n == 1:
                    raise
                # a damaged file found mid-run: report it, go on with the others, fail at the end
                failed.append((inp, str(e).splitlines()[0] if str(e) else type(e).__name__))
                yield Progress(int(units * (i + 1) / n), units, f"{inp.name}: FAILED ({failed[-1][1]})",
                               unit="plane", count=(planes_done, total_planes))
            finally:
                job.close()  # an early close keeps the staging store and writes no output
            planes_done += counts[k]
            k += 1
    finally:
        run.close()
    if failed:
        first, why = failed[0]
        locked = sum(w.startswith("Another run is writing") for _, w in failed)  # io/_writers.py's lock message
        todo = (f"Fix or remove {'it' if len(failed) == 1 else 'them'} and rerun" if not locked else
                "Another run is writing " + ("it" if len(failed) == 1 else f"{locked} of them")
                + ": wait for that run to finish" + (", fix or remove the others" if locked < len(failed) else "")
                + " and rerun")
        raise VitsegError(
            f"{len(failed)} of {n} inputs failed and have no output (first: {why.rstrip('.')}); the other outputs are "
            f"complete. {todo}: finished outputs are skipped."
        )
    yield Progress(units, units, f"{n} file(s) done", unit="plane", count=(planes_done, total_planes))
    return [out for _, out, _ in rows]
