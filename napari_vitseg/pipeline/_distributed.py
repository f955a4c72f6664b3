"""Batch apply on dask.distributed: the classifier shipped once, one task per plane.

Client side, :class:`RemotePredictor` (used by :mod:`napari_vitseg.pipeline.batch` when a
``client`` is given): the classifier file's bytes are scattered to every worker once
(``client.scatter(..., broadcast=True)``); each task predicts one plane and returns its labels
(uint8) and, when asked, its probabilities (float16); at most ``max_in_flight`` tasks exist at
a time and results are taken in plane order, so the client writes through the same staging /
manifest / resume path as a single process and memory stays bounded.

Worker side, :func:`predict_plane_task`: loads the classifier once per worker process (cached
by the segmenter's identity, a SHA-256 of its trees and feature state) and opens the input itself, by path: **the inputs must be on a
filesystem that every worker sees at the same path** (the outputs only need the client's).
The worker checks the file's size and modification time against what the client saw and
refuses a different file.

``distributed`` is imported only here, and only when a client is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import threading
import uuid
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np

from .._validation import VitsegError

__all__ = ["RemotePredictor", "classifier_payload", "dask_client", "predict_plane_task", "worker_state"]

_LOCK = threading.Lock()
_SEGMENTERS: OrderedDict = OrderedDict()  # segmenter identity -> Segmenter
_IMAGES: OrderedDict = OrderedDict()  # (path, size, mtime_ns) -> LazyImage
_MAX_SEGMENTERS = 2
_MAX_IMAGES = 4
_LOADS = 0


def classifier_payload(seg) -> tuple[bytes, str, dict]:
    """The classifier file of ``seg`` as bytes, their SHA-256, and how workers must load it.

    Returns
    -------
    data : bytes
    sha256 : str
        Of ``data`` (which holds a creation time: two saves of one segmenter differ).
    load_kwargs : dict
        ``device``, ``allow_random_weights`` and ``prediction`` for :meth:`Segmenter.load`
        (``prediction`` None: the worker's ``$VITSEG_PREDICTION``, else coarse-to-fine).
    """
    with tempfile.TemporaryDirectory(prefix="vitseg-") as d:
        path = Path(d) / "classifier.vitseg"
        seg.save(path)
        data = path.read_bytes()
    ident = seg.featurizer.backbone_identity
    kwargs = {"device": seg.device, "allow_random_weights": bool(ident) and not ident.get("pretrained", True),
              "prediction": getattr(seg, "prediction", None)}  # an inference setting, not in the file
    return data, hashlib.sha256(data).hexdigest(), kwargs


def _worker_segmenter(key: str, data: bytes, load_kwargs: dict):
    global _LOADS
    with _LOCK:
        seg = _SEGMENTERS.get(key)
        if seg is not None:
            _SEGMENTERS.move_to_end(key)
            seg.prediction = load_kwargs.get("prediction")  # a setting: follows the latest run
            return seg
        import warnings

        from .segmenter import Segmenter

        # scikit-learn runs the forest with n_jobs=1 inside daemonic dask workers (one thread
        # per worker is what we ask for anyway) and says so on every call
        warnings.filterwarnings("ignore", message="Inside a Dask worker with daemon=True", category=UserWarning)

        with tempfile.TemporaryDirectory(prefix="vitseg-") as d:
            path = Path(d) / "classifier.vitseg"
            path.write_bytes(data)
            seg = Segmenter.load(path, **load_kwargs)
        _SEGMENTERS[key] = seg
        _LOADS += 1
        while len(_SEGMENTERS) > _MAX_SEGMENTERS:
            _SEGMENTERS.popitem(last=False)
        return seg


def _worker_image(path: str, expect: tuple | None):
    from ..io import is_pattern, open_image, pattern_files

    shared = "on a cluster the inputs must be on a filesystem shared by the workers, at the same path"
    if is_pattern(path):
        files = pattern_files(path)
        if not files:
            raise VitsegError(f"Worker on {socket.gethostname()} finds no file matching {path!r}; {shared}.")
        key = (path, len(files), os.stat(files[-1]).st_mtime_ns)
    else:
        try:
            st = os.stat(path)
        except OSError as e:
            raise VitsegError(f"Worker on {socket.gethostname()} cannot read {path!r} ({e.strerror}); {shared}.") \
                from None
        if expect is not None and (st.st_size, st.st_mtime_ns) != tuple(expect):
            raise VitsegError(
                f"Worker on {socket.gethostname()} sees another {path!r} than the client (size / modification time "
                "differ); inputs must be on a filesystem shared by the client and the workers."
            )
        key = (path, st.st_size, st.st_mtime_ns)
    with _LOCK:
        lazy = _IMAGES.get(key)
        if lazy is None:
            lazy = open_image(path)
            _IMAGES[key] = lazy
            while len(_IMAGES) > _MAX_IMAGES:
                _IMAGES.popitem(last=False)[1].close()
        else:
            _IMAGES.move_to_end(key)
        return lazy


def predict_plane_task(classifier: bytes, key: str, load_kwargs: dict, input_path: str, expect, channel_axis,
                       z, probabilities: bool):
    """Worker task: predict plane ``z`` of ``input_path``.

    Parameters
    ----------
    classifier : bytes
        The classifier file (scattered once; dask passes the worker's copy).
    key : str
        The segmenter's identity: the key of the per-process cache of loaded segmenters.
    load_kwargs : dict
        From :func:`classifier_payload`.
    input_path : str
        The input, on a shared filesystem.
    expect : tuple of (int, int) or None
        (size, mtime_ns) the client saw (regular files); a different file is refused.
    channel_axis : int or None
    z : int or None
        Plane of a stack; ``None`` for a 2D image.
    probabilities : bool
        Also return the probabilities.

    Returns
    -------
    labels : ndarray, (Y, X) uint8
    probabilities : ndarray, (K, Y, X) float16, or None
    """
    from .batch import _read_plane
    from .segmenter import as_channels_last

    seg = _worker_segmenter(key, classifier, load_kwargs)
    lazy = _worker_image(input_path, expect)
    image, nsp, _ = as_channels_last(lazy.data, channel_axis)
    with _LOCK:
        plane = _read_plane(image, nsp, z, input_path)
    p = seg.predict_plane(plane, use_cache=False)
    return seg.labels_from_proba(p), (p.astype(np.float16) if probabilities else None)


def worker_state() -> dict:
    """What this worker process holds: classifier loads so far, cached segmenters and images
    (run it with ``client.run(worker_state)``)."""
    with _LOCK:
        return {"loads": _LOADS, "segmenters": list(_SEGMENTERS), "images": [k[0] for k in _IMAGES]}


class RemotePredictor:
    """Predict planes on a dask.distributed cluster, in order, with bounded tasks in flight.

    Parameters
    ----------
    client : distributed.Client
    seg : Segmenter
        Fitted; saved once to bytes and scattered to every worker.
    key : str
        Identity of ``seg`` (deterministic, see ``batch._segmenter_identity``): workers load
        the classifier once per process and key their cache by it.
    max_in_flight : int, optional
        Tasks submitted and not yet consumed; default twice the cluster's threads (at least 2).
        Each finished one holds a plane's labels (and probabilities) in worker memory until the
        client takes it.
    """

    def __init__(self, client, seg, key: str, max_in_flight: int | None = None):
        data, self.sha, self.load_kwargs = classifier_payload(seg)
        self.key = key
        self.client = client
        self.classifier_bytes = len(data)
        self._payload = client.scatter(data, broadcast=True, hash=False)
        if max_in_flight is None:
            threads = sum(client.nthreads().values())
            max_in_flight = max(2, 2 * threads)
        if int(max_in_flight) < 1:
            raise VitsegError(f"max_in_flight must be at least 1; got {max_in_flight!r}.")
        self.max_in_flight = int(max_in_flight)

    def iter_planes(self, input_path, channel_axis, jobs, probabilities: bool):
        """Yield ``(j, labels, probabilities)`` for ``jobs`` = [(j, z), ...], in that order."""
        path = os.path.abspath(os.path.expanduser(os.fspath(input_path)))
        if os.path.isfile(path):
            st = os.stat(path)
            expect = (st.st_size, st.st_mtime_ns)
        else:  # a zarr folder or a pattern of slices
            expect = None
        token = uuid.uuid4().hex[:8]
        todo = iter(jobs)
        pending: deque = deque()

        def submit() -> bool:
            try:
                j, z = next(todo)
            except StopIteration:
                return False
            fut = self.client.submit(predict_plane_task, self._payload, self.key, self.load_kwargs, path, expect,
                                     channel_axis, z, probabilities, key=f"vitseg-plane-{token}-{j}", pure=False)
            pending.append((j, fut))
            return True

        try:
            while len(pending) < self.max_in_flight and submit():
                pass
            while pending:
                j, fut = pending.popleft()
                labels, probs = fut.result()
                fut.release()
                submit()
                yield j, labels, probs
        finally:
            for _, fut in pending:
                fut.cancel()

    def close(self) -> None:
        """Release the scattered classifier."""
        with contextlib.suppress(Exception):
            self._payload.release()


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None):
    """A dask.distributed client for the CLI: ``None``, a LocalCluster, or an existing scheduler.

    Parameters
    ----------
    workers : int, optional
        Start ``LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)``, closed
        on exit.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``); only the client is closed on exit.

    Yields
    ------
    distributed.Client or None

    Raises
    ------
    VitsegError
        Both or invalid arguments; a scheduler that cannot be reached.
    """
    if workers is None and not scheduler:
        yield None
        return
    if workers is not None and scheduler:
        raise VitsegError("Give --workers or --scheduler, not both.")
    from distributed import Client, LocalCluster

    cluster = None
    if workers is not None:
        if int(workers) < 1:
            raise VitsegError(f"--workers must be at least 1; got {workers}.")
        import logging

        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError, ValueError) as e:
            raise VitsegError(
                f"Cannot connect to the dask scheduler {scheduler!r} ({e}); check the address (tcp://host:8786) "
                "and that the scheduler runs."
            ) from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
