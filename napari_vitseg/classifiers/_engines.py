"""Inference engines behind the pixel classifiers' ``predict_proba``.

An engine only changes *how* a fitted forest is evaluated, never the result: every engine
returns the probabilities of the library's own predictor (scikit-learn's
``RandomForestClassifier.predict_proba`` or XGBoost's ``inplace_predict``) to float
tolerance, and the same labels (rows whose two largest probabilities are within
:data:`TIE_MARGIN` of each other are recomputed with the library's predictor, so that ties
are broken exactly as it breaks them).

Engines
-------
``'sklearn'``
    The library's own predictor (scikit-learn for the random forest, XGBoost's
    ``inplace_predict`` for XGBoost): the exact reference, always available.
``'compiled'``
    The forest translated to C by Treelite / TL2cgen (Cho & Li, "Treelite: toolbox for
    decision tree deployment", SysML 2018) and compiled with the system C compiler on first
    use. The shared library is built locally from the already-validated in-memory model (never
    read from, or next to, a classifier file: loading a library from a file someone sent you
    is running their code) and kept in a per-user cache (``platformdirs.user_cache_dir``,
    e.g. ``~/.cache/napari-vitseg/compiled``, or ``$VITSEG_ENGINE_CACHE``) under the SHA-256 of
    the model, the Treelite / TL2cgen versions and the compiler; a changed classifier gets a
    new library. Falls back to ``'sklearn'`` with a :class:`~napari_vitseg._validation.VitsegWarning`
    when TL2cgen or a C compiler is missing, the forest is larger than
    :data:`COMPILE_MAX_NODES` nodes, or the build fails.
``'auto'`` (default)
    The fastest exact engine for this forest on a CPU, as measured in
    ``benchmarks/bench_apply.py`` (``docs/apply_speed.md``): the compiled forest for shallow
    trees (XGBoost's default depth 6: 1.6x less CPU time than ``inplace_predict``), the library's
    predictor for deep trees (the default random forest grows to depth ~15-20, where the
    compiled code measured slower than scikit-learn). Compiling is only worth it for batch
    work, so ``'auto'`` uses a cached library at once but builds one (in a background thread,
    predicting with ``'sklearn'`` meanwhile) only after :data:`AUTO_COMPILE_AFTER_ROWS` rows
    were predicted with the same classifier; live retraining in the viewer never compiles.

The engine is chosen per classifier with ``estimator.set_engine(name)`` (the API; ``vitseg
apply --engine``), else by the environment variable ``VITSEG_ENGINE`` (which the napari widget
and dask workers inherit), else ``'auto'``. It is an inference setting only: it is not a
constructor parameter and is never written to the classifier file.

Threads: every engine uses all cores by default (scikit-learn ``n_jobs=-1``, XGBoost's
OpenMP threads, TL2cgen's thread pool). :func:`predict_threads` caps them for the calling
thread only, so that a pipeline can featurise in one thread while it predicts in another
without running more threads than cores (the overlapped batch path,
:func:`napari_vitseg.pipeline.batch.iter_plane_probabilities`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from .._validation import VitsegError, VitsegWarning

__all__ = ["ENGINES", "ENV_VAR", "EARLY_EXIT_STAGES", "EARLY_EXIT_VERSION", "check_engine",
           "early_exit_proba", "engine_info", "model_hash", "predict_proba", "predict_threads", "requested_engine",
           "compiled_cache_dir"]

log = logging.getLogger(__name__)

ENGINES = ("auto", "sklearn", "compiled")
ENV_VAR = "VITSEG_ENGINE"
CACHE_ENV_VAR = "VITSEG_ENGINE_CACHE"
#: Largest forest (total nodes over all trees) that is compiled; the C code of larger ones
#: takes minutes to compile (the default random forest: ~26 k nodes, ~16 s on 2 cores).
COMPILE_MAX_NODES = 300_000
#: ``'auto'`` compiles only forests whose deepest tree is at most this deep.
AUTO_MAX_DEPTH = 10
#: ``'auto'`` builds a library only once this many rows were predicted with one classifier.
AUTO_COMPILE_AFTER_ROWS = 8 * 2**20
#: Rows whose two largest probabilities differ by less than this are recomputed with the
#: library's own predictor (ties broken exactly as it breaks them).
TIE_MARGIN = 1e-4
#: Bump when the way libraries are built changes (invalidates the cache).
_BUILD_VERSION = 1
#: Early exit of a random forest (:func:`early_exit_proba`, the approximate prediction mode):
#: checkpoints (fraction of the trees, margin): after the first quarter of the trees, rows whose
#: two largest averaged probabilities differ by at least 0.7 keep that vote; after half, rows
#: with at least 0.3; the others are evaluated by every tree.
EARLY_EXIT_STAGES = ((0.25, 0.7), (0.5, 0.3))
#: Version of the early-exit rule (part of ``Segmenter.prediction_key``: outputs record it).
EARLY_EXIT_VERSION = 1
#: Forests with fewer trees always use every tree (a few trees vote too coarsely to stop early).
EARLY_EXIT_MIN_TREES = 32
#: Below this many rows trees are evaluated one by one in the calling thread: scikit-learn's
#: thread dispatch costs 7-26 ms per call, more than the trees take on small inputs.
_SMALL_ROWS = 10_000

_local = threading.local()  # per-thread cap on prediction threads (predict_threads)


@contextlib.contextmanager
def predict_threads(n: int | None):
    """Cap the threads that :func:`predict_proba` runs in the calling thread.

    Parameters
    ----------
    n : int or None
        At most this many threads for each prediction made by this thread inside the
        ``with`` block (scikit-learn's forest ``n_jobs``, XGBoost's ``nthread``, TL2cgen's
        thread pool); None: no cap (every core). Other threads are not affected.

    Raises
    ------
    VitsegError
        ``n`` is not None and not a positive int.

    Examples
    --------
    >>> with predict_threads(1):
    ...     pass  # clf.predict_proba(X) here runs on one thread
    """
    if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1):
        raise VitsegError(f"predict_threads takes a positive number of threads or None; got {n!r}.")
    old = getattr(_local, "threads", None)
    _local.threads = None if n is None else int(n)
    try:
        yield
    finally:
        _local.threads = old


def _thread_cap() -> int | None:
    return getattr(_local, "threads", None)


def check_engine(engine) -> str:
    """Validate an engine name.

    Parameters
    ----------
    engine : str
        One of :data:`ENGINES`.

    Returns
    -------
    str

    Raises
    ------
    VitsegError
        Names the allowed engines and the value received.
    """
    if not isinstance(engine, str) or engine.strip().lower() not in ENGINES:
        raise VitsegError(f"The inference engine must be one of {list(ENGINES)} (API set_engine, CLI --engine, "
                          f"environment variable {ENV_VAR}); got {engine!r} instead.")
    return engine.strip().lower()


def requested_engine(estimator) -> str:
    """The engine asked for: ``estimator.set_engine(...)``, else ``$VITSEG_ENGINE``, else ``'auto'``.

    Raises
    ------
    VitsegError
        ``VITSEG_ENGINE`` holds an unknown name.
    """
    explicit = getattr(estimator, "engine", None)
    if explicit is not None:
        return check_engine(explicit)
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            return check_engine(env)
        except VitsegError as e:
            raise VitsegError(f"Environment variable {ENV_VAR}: {e}") from None
    return "auto"


# -- per-classifier runtime state (never persisted, dropped when pickled) ---------------------
class _Runtime:
    def __init__(self, model):
        self.model = model  # the fitted model object this state belongs to (compared with ``is``)
        self.lock = threading.Lock()
        self.predictor = None
        self.rows = 0
        self.building = False
        self.unavailable: str | None = None  # why the compiled engine cannot be used
        self.warned = False
        self.size: tuple[int, int] | None = None  # (total nodes, deepest tree)
        self.libname: str | None = None
        self.libpath: Path | None = None  # the loaded library (for predictors with fewer threads)
        self.capped: dict = {}  # thread cap -> forest copy (sklearn) or TL2cgen predictor
        self.last = {"requested": None, "used": None, "reason": ""}


def _runtime(estimator) -> _Runtime:
    model = _fitted_model(estimator)
    rt = estimator.__dict__.get("_engine_runtime")
    if rt is None or rt.model is not model:  # refitted or reloaded: nothing compiled carries over
        rt = _Runtime(model)
        estimator.__dict__["_engine_runtime"] = rt
    return rt


def _fitted_model(estimator):
    model = getattr(estimator, "estimator_", None)
    return model if model is not None else getattr(estimator, "booster_", None)


def engine_info(estimator) -> dict:
    """What the last ``predict_proba`` of ``estimator`` ran on.

    Returns
    -------
    dict
        ``{'requested': str, 'used': 'sklearn' | 'compiled', 'reason': str}`` (``reason``
        explains a fallback, empty otherwise); ``used`` is None before the first prediction.
    """
    rt = estimator.__dict__.get("_engine_runtime")
    return dict(rt.last) if rt is not None else {"requested": None, "used": None, "reason": ""}


# -- model identity ----------------------------------------------------------------------------
def model_hash(estimator) -> str:
    """SHA-256 of everything a fitted classifier's predictions depend on.

    The tree arrays of a random forest field by field (skops output and the record padding are
    not byte-stable), or XGBoost's UBJSON model bytes, plus the classes.

    Returns
    -------
    str
        64 hex digits.
    """
    h = hashlib.sha256()
    h.update(f"{estimator.kind}:{_BUILD_VERSION}:".encode())
    h.update(np.asarray(estimator.classes_, dtype=np.int64).tobytes())
    forest = getattr(estimator, "estimator_", None)
    if forest is not None:
        for tree in forest.estimators_:
            state = tree.tree_.__getstate__()
            nodes = state["nodes"]
            for name in nodes.dtype.names:
                h.update(np.ascontiguousarray(nodes[name]).tobytes())
            h.update(np.ascontiguousarray(state["values"]).tobytes())
    else:
        h.update(bytes(estimator.booster_.save_raw(raw_format="ubj")))
    return h.hexdigest()


def _wants_compiled(estimator, rt: _Runtime, engine: str) -> bool:
    """Whether ``engine`` asks for the compiled forest for this model: 'compiled' always, 'auto'
    for forests no deeper than :data:`AUTO_MAX_DEPTH` (the library's predictor is faster for deep ones)."""
    if engine == "compiled":
        return True
    if engine != "auto":
        return False
    if rt.size is None:
        rt.size = _forest_size(estimator)
    return rt.size[1] <= AUTO_MAX_DEPTH


def _forest_size(estimator) -> tuple[int, int]:
    """(total nodes, deepest tree) of a fitted classifier."""
    forest = getattr(estimator, "estimator_", None)
    if forest is not None:
        trees = [t.tree_ for t in forest.estimators_]
        return sum(int(t.node_count) for t in trees), max(int(t.max_depth) for t in trees)
    nodes = depth = 0
    for dump in estimator.booster_.get_dump():  # one line per node, indented by its depth
        lines = dump.splitlines()
        nodes += len(lines)
        depth = max(depth, max(len(line) - len(line.lstrip("\t")) for line in lines))
    return nodes, depth


# -- native (library) predictor ------------------------------------------------------------------
def native_proba(estimator, X: np.ndarray) -> np.ndarray:
    """Probabilities from the library's own predictor, (n, K) float32 (threads capped by
    :func:`predict_threads`)."""
    cap = _thread_cap()
    if estimator.kind == "rf":
        forest = estimator.estimator_
        if cap is not None and cap != forest.n_jobs:
            forest = _capped_model(estimator, cap)
        return forest.predict_proba(X).astype(np.float32, copy=False)
    booster = estimator.booster_ if cap is None else _capped_model(estimator, cap)
    p = np.asarray(booster.inplace_predict(X), dtype=np.float32)
    if estimator.classes_.size == 2 and p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    return p


def early_exit_proba(estimator, X: np.ndarray) -> np.ndarray:
    """Class probabilities of a random forest with early exit for confident rows (approximate).

    The trees vote in the checkpoints of :data:`EARLY_EXIT_STAGES`: the first quarter of the
    trees (25 of the default 100) vote on every row, and a row whose two largest averaged
    probabilities differ by at least 0.7 keeps that vote; the other rows get the next quarter,
    and keep the vote of half the forest if its margin is at least 0.3; the rest are evaluated
    by every tree and get the probabilities of the whole forest (up to float summation order).
    This is instance-based ensemble pruning (Hernandez-Lobato, Martinez-Munoz & Suarez,
    "Statistical instance-based pruning in ensembles of independent classifiers", IEEE TPAMI
    31(2), 2009): the trees of a random forest are independent given the training set, so when
    a random part of them agrees clearly the rest almost never overturn the vote (>= 99.994 %
    of the exact labels on every shared set at 0.24-0.44 of the forest work, measured by
    ``benchmarks/bench_apply.py --early-exit``; ``docs/apply_speed.md``). Probabilities of
    early-exit rows are those of the trees that voted.

    Used by the ``'coarse-to-fine'`` prediction mode of
    :class:`~napari_vitseg.pipeline.Segmenter`; the ``'exact'`` mode uses :func:`predict_proba`.
    XGBoost models (boosted trees add up: no early vote), forests of fewer than
    :data:`EARLY_EXIT_MIN_TREES` trees and forests predicted by the compiled engine get
    :func:`predict_proba` unchanged.

    Parameters
    ----------
    estimator : RandomForestPixelClassifier or XGBoostPixelClassifier
        Fitted.
    X : ndarray, (n, F) float32
        Already checked (``_check_X``).

    Returns
    -------
    ndarray, (n, K) float32
        Columns in ``classes_`` order.
    """
    if getattr(estimator, "kind", None) != "rf" or X.shape[0] == 0 or estimator.classes_.size < 2:
        return predict_proba(estimator, X)
    n = len(estimator.estimator_.estimators_)
    engine = requested_engine(estimator)
    rt = _runtime(estimator)
    if n < EARLY_EXIT_MIN_TREES or _wants_compiled(estimator, rt, engine):
        return predict_proba(estimator, X)
    rt.last = {"requested": engine, "used": "sklearn", "reason": "early exit of confident rows"}
    out = np.empty((X.shape[0], estimator.classes_.size), np.float32)
    rows = np.arange(X.shape[0])
    total, done = None, 0  # sum of the probabilities of trees [0, done) over the open rows
    for frac, margin in (*EARLY_EXIT_STAGES, (1.0, 0.0)):
        t = n if frac >= 1.0 else max(done + 1, min(n, round(n * frac)))
        part = _trees_proba(estimator, done, t, X if total is None else X[rows]) * np.float32(t - done)
        total = part if total is None else total + part
        done = t
        p = total / np.float32(done)
        if done == n:
            out[rows] = p
            break
        top = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]  # second largest, largest
        sure = top[:, 1] - top[:, 0] >= margin
        out[rows[sure]] = p[sure]
        rows, total = rows[~sure], total[~sure]
        if rows.size == 0:
            break
    return out


def _trees_proba(estimator, a: int, b: int, X: np.ndarray) -> np.ndarray:
    """Mean probabilities (n, K) float32 of trees ``a .. b - 1`` of a fitted random forest:
    tree by tree in this thread for small inputs or a one-thread cap, else scikit-learn's
    ``predict_proba`` of a shallow copy holding those trees (threads as :func:`native_proba`)."""
    forest = estimator.estimator_
    cap = _thread_cap()
    if X.shape[0] < _SMALL_ROWS or cap == 1:
        trees = forest.estimators_[a:b]
        p = trees[0].predict_proba(X, check_input=False)
        for tree in trees[1:]:
            p += tree.predict_proba(X, check_input=False)
        return (p / len(trees)).astype(np.float32)
    return _capped_model(estimator, cap, trees=(a, b)).predict_proba(X).astype(np.float32, copy=False)


def _capped_model(estimator, cap: int | None, trees: tuple[int, int] | None = None):
    """The fitted model with at most ``cap`` threads (None: its own setting), made once per
    classifier: a shallow copy of the random forest sharing its trees (own ``n_jobs``; with
    ``trees = (a, b)`` only trees ``a .. b - 1``), or a copy of the XGBoost booster with its own
    ``nthread`` (``xgboost.config_context(nthread=...)`` would also set OpenMP's thread count of
    the calling thread for good, which later TL2cgen calls refuse)."""
    rt = _runtime(estimator)
    with rt.lock:
        model = rt.capped.get(("library", cap, trees))
        if model is None:
            if estimator.kind == "rf":
                model = copy.copy(estimator.estimator_)
                if cap is not None:
                    model.n_jobs = cap
                if trees is not None:
                    model.estimators_ = model.estimators_[trees[0]:trees[1]]
                    model.n_estimators = trees[1] - trees[0]
            else:
                model = copy.copy(estimator.booster_)  # XGBoost copies the model (bytes)
                model.set_param({"nthread": cap})
            rt.capped[("library", cap, trees)] = model
    return model


# -- compiled engine -------------------------------------------------------------------------
def compiled_cache_dir() -> Path:
    """Per-user folder of compiled forests (``$VITSEG_ENGINE_CACHE`` or the platform's user cache)."""
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
        return Path(env)
    try:
        import platformdirs

        base = Path(platformdirs.user_cache_dir("napari-vitseg"))
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-vitseg"
    return base / "compiled"


def _compiler() -> str | None:
    for cc in ("gcc", "clang"):
        if shutil.which(cc):
            return cc
    return None


def _compiled_available() -> str | None:
    """None when the compiled engine can run here, else why not."""
    try:
        import tl2cgen  # noqa: F401
        import treelite  # noqa: F401
    except ImportError as e:
        return f"treelite / tl2cgen are not installed ({e.name})"
    if sys.platform == "win32":
        return "the compiled engine is not supported on Windows"
    if _compiler() is None:
        return "no C compiler (gcc or clang) on PATH"
    return None


def _library_name(estimator) -> str:
    import tl2cgen
    import treelite

    cc = _compiler() or ""
    h = hashlib.sha256()
    h.update(model_hash(estimator).encode())
    h.update(f"{treelite.__version__}:{tl2cgen.__version__}:{cc}:{shutil.which(cc)}:{sys.platform}".encode())
    return h.hexdigest()[:40] + ".so"


def _check_private(path: Path, is_dir: bool) -> None:
    """Refuse a cache entry another user could have written."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise VitsegError(f"{str(path)!r} is not owned by the current user; refusing to load it.")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise VitsegError(f"{str(path)!r} is writable by other users; refusing to load it.")
    if is_dir != stat.S_ISDIR(st.st_mode):
        raise VitsegError(f"{str(path)!r} is not a {'folder' if is_dir else 'regular file'}.")


def _treelite_model(estimator):
    import treelite
    import treelite.frontend
    import treelite.sklearn

    if estimator.kind == "rf":
        return treelite.sklearn.import_model(estimator.estimator_)
    return treelite.frontend.from_xgboost(estimator.booster_)


def _build(estimator, path: Path, nthread: int) -> None:
    """Compile the forest into ``path`` (written under a temporary name, then renamed)."""
    import tl2cgen

    model = _treelite_model(estimator)
    folder = path.parent
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    try:
        lib = tmp / path.name
        tl2cgen.export_lib(model, toolchain=_compiler(), libpath=str(lib),
                           params={"parallel_comp": max(2, nthread * 2)}, nthread=nthread)
        os.chmod(lib, 0o700)
        os.replace(lib, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clean_stale(folder: Path, max_age_s: float = 3600.0) -> None:
    now = time.time()
    for p in folder.glob(".build-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _n_threads(estimator) -> int:
    n = getattr(estimator, "n_jobs", -1) or -1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        cores = os.cpu_count() or 1
    return cores if n < 0 else max(1, min(n, cores))


def _load_compiled(estimator, *, build: bool, name: str | None = None):
    """A TL2cgen predictor for ``estimator``: from the per-user cache, built first when
    ``build``; None when not cached and not built. ``name``: its :func:`_library_name`."""
    import tl2cgen

    folder = compiled_cache_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_private(folder, True)
    path = folder / (name or _library_name(estimator))
    nthread = _n_threads(estimator)
    if not path.exists():
        if not build:
            return None
        _clean_stale(folder)
        t0 = time.perf_counter()
        _build(estimator, path, nthread)
        log.info("compiled the forest into %s in %.1f s", path, time.perf_counter() - t0)
    _check_private(path, False)
    try:
        pred = tl2cgen.Predictor(str(path), nthread=nthread)
        pred.vitseg_libpath = path  # for copies with fewer threads (_capped_predictor)
        return pred
    except Exception:  # noqa: BLE001 - a damaged cache entry: rebuild it once
        if not build:
            return None
        path.unlink(missing_ok=True)
        _build(estimator, path, nthread)
        _check_private(path, False)
        pred = tl2cgen.Predictor(str(path), nthread=nthread)
        pred.vitseg_libpath = path
        return pred


def _compiled_proba(estimator, predictor, X: np.ndarray) -> np.ndarray:
    import tl2cgen

    p = np.asarray(predictor.predict(tl2cgen.DMatrix(X, dtype="float32")))
    p = p.reshape(X.shape[0], -1).astype(np.float32, copy=False)
    k = estimator.classes_.size
    if p.shape[1] == 1 and k == 2:
        p = np.concatenate([1.0 - p, p], axis=1)
    if p.shape[1] != k:
        raise VitsegError(f"The compiled forest returned {p.shape[1]} columns for {k} classes.")
    return p


def _capped_predictor(rt: _Runtime, predictor):
    """``predictor``, or one of the same library with at most :func:`predict_threads` threads."""
    import tl2cgen

    cap = _thread_cap()
    path = getattr(predictor, "vitseg_libpath", None)
    if cap is None or path is None:
        return predictor
    with rt.lock:
        pred = rt.capped.get(("compiled", cap, str(path)))
        if pred is None:  # the same already-checked library of the cache, fewer threads
            _check_private(path, False)
            pred = tl2cgen.Predictor(str(path), nthread=cap)
            rt.capped[("compiled", cap, str(path))] = pred
    return pred


def _fix_ties(estimator, p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Recompute the rows whose top-2 margin is below :data:`TIE_MARGIN` with the library."""
    if p.shape[0] == 0:
        return p
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    close = np.flatnonzero(top2[:, 1] - top2[:, 0] < TIE_MARGIN)
    if close.size:
        p[close] = native_proba(estimator, X[close])
    return p


def _start_background_build(estimator, rt: _Runtime) -> None:
    rt.building = True

    def work():
        try:
            pred = _load_compiled(estimator, build=True)
            with rt.lock:
                rt.predictor = pred
        except Exception as e:  # noqa: BLE001 - auto falls back silently, recording why
            with rt.lock:
                rt.unavailable = f"compiling failed: {e}"
            log.info("auto engine: %s", rt.unavailable)
        finally:
            rt.building = False

    threading.Thread(target=work, name="vitseg-compile", daemon=True).start()


def _compiled_predictor(estimator, rt: _Runtime, engine: str, n_rows: int):
    """The compiled predictor to use now, or None (then ``rt.last['reason']`` says why)."""
    with rt.lock:
        if rt.predictor is not None:
            return rt.predictor
        if rt.unavailable:
            return None
        if rt.building:
            rt.last["reason"] = "compiling in the background; using the library's predictor meanwhile"
            return None
    if rt.size is None:
        rt.size = _forest_size(estimator)
    nodes, depth = rt.size
    why = _compiled_available()
    if why is None and nodes > COMPILE_MAX_NODES:
        why = f"the forest has {nodes} nodes, more than the {COMPILE_MAX_NODES} the compiled engine accepts"
    if why is not None:
        rt.unavailable = why
        return None
    if not _wants_compiled(estimator, rt, engine):  # a choice, not a failure: 'compiled' still works
        rt.last["reason"] = (f"trees of depth {depth} > {AUTO_MAX_DEPTH}: the library's predictor is faster "
                             "for deep forests (set the engine to 'compiled' to force it)")
        return None
    if engine == "compiled":
        try:
            rt.predictor = _load_compiled(estimator, build=True)
        except Exception as e:  # noqa: BLE001 - reported as a fallback
            rt.unavailable = f"compiling failed: {e}"
            return None
        return rt.predictor
    # auto: a cached library at once; build one only for batch-sized work
    try:
        if rt.libname is None:
            rt.libname = _library_name(estimator)
        rt.predictor = _load_compiled(estimator, build=False, name=rt.libname)
    except Exception as e:  # noqa: BLE001
        rt.unavailable = f"the compiled cache is unusable: {e}"
        return None
    if rt.predictor is None:
        if rt.rows + n_rows >= AUTO_COMPILE_AFTER_ROWS:
            _start_background_build(estimator, rt)
            rt.last["reason"] = "compiling in the background; using the library's predictor meanwhile"
        else:
            rt.last["reason"] = "not compiled yet (compiled after batch-sized work)"
    return rt.predictor


def predict_proba(estimator, X: np.ndarray) -> np.ndarray:
    """Class probabilities of a fitted pixel classifier with the engine it asks for.

    Parameters
    ----------
    estimator : RandomForestPixelClassifier or XGBoostPixelClassifier
        Fitted.
    X : ndarray, (n, F) float32
        Already checked (``_check_X``).

    Returns
    -------
    ndarray, (n, K) float32
        Columns in ``classes_`` order; equal to :func:`native_proba` to float tolerance,
        with the same argmax.

    Raises
    ------
    VitsegError
        Unknown engine name (setting or ``VITSEG_ENGINE``).
    """
    engine = requested_engine(estimator)
    rt = _runtime(estimator)
    rt.last = {"requested": engine, "used": "sklearn", "reason": ""}
    predictor = None
    if engine != "sklearn" and getattr(estimator, "kind", None) in ("rf", "xgb") and (
            getattr(estimator, "device", "cpu") == "cpu"):
        predictor = _compiled_predictor(estimator, rt, engine, X.shape[0])
        if predictor is None and rt.unavailable:
            rt.last["reason"] = rt.unavailable
            if engine == "compiled" and not rt.warned:
                rt.warned = True
                warnings.warn(f"The compiled inference engine is not available ({rt.unavailable}); using the "
                              "library's own predictor (same results, slower).", VitsegWarning, stacklevel=3)
    rt.rows += X.shape[0]
    if predictor is not None:
        try:
            p = _compiled_proba(estimator, _capped_predictor(rt, predictor), X)
        except Exception as e:  # noqa: BLE001 - never fail a prediction the library can make
            rt.unavailable = f"the compiled forest failed: {e}"
            rt.predictor = None
            rt.last["reason"] = rt.unavailable
            warnings.warn(f"{rt.unavailable}; using the library's own predictor.", VitsegWarning, stacklevel=3)
        else:
            rt.last["used"] = "compiled"
            return _fix_ties(estimator, p, X)
    return native_proba(estimator, X)
