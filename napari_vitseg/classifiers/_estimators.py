"""Pixel classifiers: random forest (scikit-learn) and gradient-boosted trees (XGBoost)
behind one scikit-learn-style interface.

Both follow scikit-learn's conventions: ``__init__`` only stores parameters, ``fit``
validates and returns ``self``, fitted state ends in ``_`` (``classes_``, ``n_features_in_``),
and ``predict_proba`` columns follow ``classes_``. Label 0 means *unlabelled* and is never
a class: pixels labelled 0 are dropped in ``fit``. Training is class-balanced.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import check_is_fitted

from .._validation import VitsegError, check_number, check_option

__all__ = ["RandomForestPixelClassifier", "XGBoostPixelClassifier", "make_classifier", "CLASSIFIERS"]


#: Target seconds between two progress steps of ``iter_fit`` (what makes Cancel fast).
FIT_CHUNK_SECONDS = 0.4


def _run_fit(job):
    """Run an ``iter_fit`` generator to the end and return its result (the fitted estimator)."""
    from .._progress import run

    return run(job)


def _iter_in_thread(fn, poll: float, progress):
    """Run ``fn()`` in a daemon thread, yielding ``progress()`` every ``poll`` seconds until it ends.

    Closing the generator returns at once: the thread is abandoned and finishes its call in the
    background (its result is dropped). Returns ``fn()``'s result; re-raises its exception.
    """
    import threading

    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="vitseg-fit", daemon=True)
    thread.start()
    while True:
        thread.join(poll)
        if not thread.is_alive():
            break
        yield progress()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _n_threads(n_jobs) -> int:
    """Threads a forest fit with ``n_jobs`` uses (joblib's rule: -1 = all cores)."""
    from joblib import effective_n_jobs

    return max(1, int(effective_n_jobs(n_jobs)))


def _prepare_xy(X, y, max_samples_per_class, random_state):
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).ravel()
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise VitsegError(f"X must be (n_pixels, n_features) matching y (n_pixels,); got {X.shape} and {y.shape}.")
    if not np.all(np.isfinite(X)):
        raise VitsegError("The features contain NaN or infinite values; check the input image.")
    keep = y != 0
    X, y = X[keep], y[keep]
    classes = np.unique(y)
    if classes.size < 2:
        raise VitsegError(
            f"Training needs labelled pixels of at least two classes; got classes {classes.tolist()}."
        )
    if max_samples_per_class:
        rng = np.random.default_rng(random_state)
        idx = []
        for c in classes:
            ic = np.flatnonzero(y == c)
            if ic.size > max_samples_per_class:
                ic = rng.choice(ic, max_samples_per_class, replace=False)
            idx.append(ic)
        idx = np.sort(np.concatenate(idx))
        X, y = X[idx], y[idx]
    return X, y, classes


class _PixelClassifierMixin:
    feature_names_in_: np.ndarray
    #: name -> (kind, low, high, allow_none) for numeric parameters
    _numeric_params: dict = {}

    def validate_params(self) -> None:
        """Check every parameter against its declared range (called by ``fit`` and on loading).

        Raises
        ------
        VitsegError
            Names the parameter, the allowed values and the value received.
        """
        owner = type(self).__name__
        for name, (kind, low, high, allow_none) in self._numeric_params.items():
            check_number(getattr(self, name), name, kind=kind, low=low, high=high, allow_none=allow_none,
                         owner=owner)
        if self.n_jobs == 0:
            raise VitsegError(f"The 'n_jobs' parameter of {owner} must be -1 (all cores) or >= 1; got 0 instead.")

    def _set_feature_names(self, feature_names, n_features):
        if feature_names is not None:
            feature_names = np.asarray(list(feature_names), dtype=object)
            if feature_names.shape[0] != n_features:
                raise VitsegError(f"{feature_names.shape[0]} feature names for {n_features} features.")
            self.feature_names_in_ = feature_names

    def _check_X(self, X):
        check_is_fitted(self, "classes_")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise VitsegError(
                f"The classifier was trained on {self.n_features_in_} features but got "
                f"{X.shape[-1] if X.ndim else 0}; maybe the feature configuration (backbone, scales, "
                "channels) differs from the one used for training."
            )
        return X

    def predict(self, X):
        """Class ids (from ``classes_``) of shape (n_pixels,)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def predict_proba_early_exit(self, X):
        """Class probabilities, (n_pixels, K) float32, with early exit for the rows a quarter
        of a random forest's trees already classify confidently (approximate: >= 99.997 % of
        the labels of :meth:`predict_proba` on the shared sets; XGBoost: exactly
        :meth:`predict_proba`). See :func:`napari_vitseg.classifiers._engines.early_exit_proba`."""
        from ._engines import early_exit_proba

        return early_exit_proba(self, self._check_X(X))

    #: Inference engine ('auto', 'sklearn', 'compiled'; see ``napari_vitseg.classifiers._engines``) or
    #: None (``$VITSEG_ENGINE``, else 'auto'). Not a constructor parameter: never saved in the file.
    engine = None

    def set_engine(self, engine):
        """Choose how ``predict_proba`` evaluates the trees (same results, different speed).

        Parameters
        ----------
        engine : {'auto', 'sklearn', 'compiled'} or None
            None: the environment variable ``VITSEG_ENGINE``, else ``'auto'``.

        Returns
        -------
        self

        Raises
        ------
        VitsegError
            Unknown engine.
        """
        from ._engines import check_engine

        self.engine = None if engine is None else check_engine(engine)
        return self

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_engine_runtime", None)  # threads / loaded libraries: rebuilt on demand
        return state


class RandomForestPixelClassifier(_PixelClassifierMixin, ClassifierMixin, BaseEstimator):
    """Class-balanced random forest on labelled pixels (Breiman 2001; scikit-learn).

    Parameters
    ----------
    n_estimators : int
        Number of trees.
    max_depth : int or None
        Maximum tree depth (``None``: grow until leaves are pure or ``min_samples_leaf``).
    min_samples_leaf : int
        Minimum labelled pixels per leaf. The default 3 (scikit-learn's is 1) raised the mean
        mIoU over the shared sets with ground truth by 0.004 without losing on any set beyond
        seed noise, and makes smaller, faster trees (``docs/quality.md``, run 4). Files saved
        with another value keep it.
    max_features : {'sqrt', 'log2'} or float
        Features tried per split.
    max_samples : float in (0, 1] or None
        Fraction of the training pixels each tree's bootstrap sample draws (scikit-learn's
        ``max_samples``; ``None``: as many as there are pixels, Breiman's bootstrap). The default
        0.5 (subbagging: Bühlmann & Yu, Annals of Statistics 2002, "Analyzing bagging") gives the
        same mIoU from the first scribbles (shared sets, three users' scribbles) in about 25 %
        less training time, and a forest that a few correction strokes upset less often: with
        the same strokes on BBBC039, whole nuclei flipped at 1 classifier seed of 3 instead of
        3 of 3 (``docs/quality.md``, run 15). Files saved without this parameter (before 0.5
        was the default) keep ``None``.
    max_samples_per_class : int or None
        Randomly subsample each class to at most this many pixels before fitting (keeps
        live retraining fast on large scribbles); ``None`` uses every labelled pixel.
    n_jobs : int
        Parallel jobs (-1: all cores).
    random_state : int
        Seed for the trees and the subsampling.

    Attributes
    ----------
    classes_ : ndarray of int, shape (K,)
        Class ids seen in ``fit``, sorted; the order of ``predict_proba`` columns.
    n_features_in_ : int
    estimator_ : sklearn.ensemble.RandomForestClassifier
    """

    kind = "rf"
    _numeric_params = {
        "n_estimators": ("int", 1, 10_000, False),
        "max_depth": ("int", 1, 1000, True),
        "min_samples_leaf": ("int", 1, 10**9, False),
        "max_samples_per_class": ("int", 1, 10**9, True),
        "n_jobs": ("int", -1, 1024, False),
        "random_state": ("int", 0, 2**32 - 1, True),
    }

    def validate_params(self) -> None:
        super().validate_params()
        mf = self.max_features
        if isinstance(mf, str):
            check_option(mf, ("sqrt", "log2"), "max_features")
        else:
            check_number(mf, "max_features", kind="float", low=1e-9, high=1.0, owner=type(self).__name__)
        check_number(self.max_samples, "max_samples", kind="float", low=1e-9, high=1.0, allow_none=True,
                     owner=type(self).__name__)

    def __init__(self, n_estimators=100, max_depth=None, min_samples_leaf=3, max_features="sqrt",
                 max_samples=0.5, max_samples_per_class=20_000, n_jobs=-1, random_state=0):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.max_samples = max_samples
        self.max_samples_per_class = max_samples_per_class
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y, feature_names=None):
        """Fit on labelled pixels.

        Parameters
        ----------
        X : ndarray, (n_pixels, n_features) float32
        y : ndarray, (n_pixels,) int
            0 = unlabelled (dropped), 1..K = classes.
        feature_names : sequence of str, optional

        Returns
        -------
        self

        Raises
        ------
        VitsegError
            Fewer than two classes, shape mismatch, non-finite features.
        """
        return _run_fit(self.iter_fit(X, y, feature_names))

    def iter_fit(self, X, y, feature_names=None, *, chunk_seconds: float = FIT_CHUNK_SECONDS):
        """Fit on labelled pixels, growing the forest in chunks of trees (generator form of :meth:`fit`).

        The forest grows with scikit-learn's ``warm_start``: each chunk adds trees seeded from
        the same random stream as a one-shot fit, so the trees (and the probabilities) are
        identical to ``fit`` with the same ``random_state`` whatever the chunk sizes. The first
        chunk has one tree per thread; later chunks are sized from the measured time per tree
        to take about ``chunk_seconds``. Each chunk runs in a worker thread and a
        :class:`~napari_vitseg._progress.Progress` comes at least every ``chunk_seconds`` even
        while one slow tree grows, so a caller that closes the generator (the widget's Cancel)
        gets control back at once; the abandoned chunk (at most one tree per thread) finishes
        in the background and is dropped.

        Parameters
        ----------
        X, y, feature_names
            As for :meth:`fit`.
        chunk_seconds : float
            Target wall time between two yields.

        Yields
        ------
        Progress
            ``done`` / ``total`` in trees, message ``'training rf: 40/100 trees'``.

        Returns
        -------
        self
        """
        import time
        import warnings

        from sklearn.ensemble import RandomForestClassifier

        from .._progress import Progress

        self.validate_params()
        X, y, classes = _prepare_xy(X, y, self.max_samples_per_class, self.random_state)
        total = int(self.n_estimators)
        yield Progress(0, total, f"training rf: 0/{total} trees on {len(y)} pixels", unit="tree")
        est = RandomForestClassifier(
            n_estimators=1, max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf, max_features=self.max_features,
            max_samples=None if self.max_samples is None else float(self.max_samples),
            class_weight="balanced", n_jobs=self.n_jobs, random_state=self.random_state, warm_start=True,
        )
        threads = _n_threads(self.n_jobs)
        done, chunk = 0, min(total, threads)

        def grow():
            with warnings.catch_warnings():
                # 'balanced' weights are recomputed from the same y at every chunk: no difference
                warnings.filterwarnings("ignore", message="class_weight presets", category=UserWarning)
                est.fit(X, y)

        while done < total:
            t0 = time.perf_counter()
            est.set_params(n_estimators=done + chunk)
            msg = f"training rf: {done}/{total} trees"
            yield from _iter_in_thread(grow, max(chunk_seconds, 0.05),
                                       lambda msg=msg, d=done: Progress(d, total, msg, unit="tree"))
            per_tree = max(time.perf_counter() - t0, 1e-4) / chunk
            done += chunk
            yield Progress(done, total, f"training rf: {done}/{total} trees", unit="tree")
            # whole rounds of one tree per thread: a chunk of `threads` trees takes about one tree's time
            chunk = max(1, int(chunk_seconds * threads / per_tree) // threads) * threads
            chunk = min(chunk, total - done)
        est.set_params(warm_start=False)  # the stored model as a one-shot fit would leave it
        self.estimator_ = est
        self.classes_ = est.classes_.astype(np.int64)
        self.n_features_in_ = X.shape[1]
        self._set_feature_names(feature_names, X.shape[1])
        return self

    def predict_proba(self, X):
        """Class probabilities, (n_pixels, K) float32, columns in ``classes_`` order."""
        from ._engines import predict_proba

        return predict_proba(self, self._check_X(X))


class XGBoostPixelClassifier(_PixelClassifierMixin, ClassifierMixin, BaseEstimator):
    """Class-balanced gradient-boosted trees (Chen & Guestrin, KDD 2016; XGBoost ``hist``).

    Labels 1..K are remapped to 0..K-1 for XGBoost and back in :meth:`predict`.

    Parameters
    ----------
    n_estimators : int
        Boosting rounds.
    max_depth : int
        Maximum tree depth.
    learning_rate : float
        Shrinkage.
    max_samples_per_class : int or None
        As for :class:`RandomForestPixelClassifier`.
    n_jobs : int
        Threads (-1: all cores).
    random_state : int
    device : {'cpu', 'cuda'}
        Where XGBoost trains and predicts.

    Attributes
    ----------
    classes_ : ndarray of int, shape (K,)
    n_features_in_ : int
    booster_ : xgboost.Booster
    """

    kind = "xgb"
    _numeric_params = {
        "n_estimators": ("int", 1, 10_000, False),
        "max_depth": ("int", 1, 64, False),
        "learning_rate": ("float", 1e-6, 10.0, False),
        "max_samples_per_class": ("int", 1, 10**9, True),
        "n_jobs": ("int", -1, 1024, False),
        "random_state": ("int", 0, 2**31 - 1, False),
    }

    def validate_params(self) -> None:
        super().validate_params()
        if not isinstance(self.device, str) or not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise VitsegError(f"The 'device' parameter of XGBoostPixelClassifier must be 'cpu' or 'cuda[:N]'; "
                              f"got {self.device!r} instead.")

    def __init__(self, n_estimators=100, max_depth=6, learning_rate=0.3, max_samples_per_class=20_000,
                 n_jobs=-1, random_state=0, device="cpu"):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.max_samples_per_class = max_samples_per_class
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.device = device

    def _params(self, n_classes):
        import os

        n_jobs = self.n_jobs if self.n_jobs and self.n_jobs > 0 else (os.cpu_count() or 1)
        p = dict(max_depth=self.max_depth, eta=self.learning_rate, tree_method="hist",
                 nthread=n_jobs, seed=self.random_state, device=self.device)
        if n_classes == 2:
            p.update(objective="binary:logistic")
        else:
            p.update(objective="multi:softprob", num_class=n_classes)
        return p

    def fit(self, X, y, feature_names=None):
        """Fit on labelled pixels; same contract as :meth:`RandomForestPixelClassifier.fit`."""
        return _run_fit(self.iter_fit(X, y, feature_names))

    def iter_fit(self, X, y, feature_names=None, *, chunk_seconds: float = FIT_CHUNK_SECONDS):
        """Fit round by round (generator form of :meth:`fit`).

        The booster is built and updated one boosting round at a time, as ``xgboost.train``
        does internally, so the model is byte-identical to ``fit``; a
        :class:`~napari_vitseg._progress.Progress` comes whenever ``chunk_seconds`` have passed
        since the last one (a caller that closes the generator stops training there).

        Yields
        ------
        Progress
            ``done`` / ``total`` in boosting rounds (``'training xgb: 40/100 rounds'``).

        Returns
        -------
        self
        """
        import time

        import xgboost as xgb

        from .._progress import Progress

        self.validate_params()
        X, y, classes = _prepare_xy(X, y, self.max_samples_per_class, self.random_state)
        y_idx = np.searchsorted(classes, y)
        w = compute_sample_weight("balanced", y_idx)
        dtrain = xgb.DMatrix(X, label=y_idx, weight=w)
        total = int(self.n_estimators)
        yield Progress(0, total, f"training xgb: 0/{total} rounds on {len(y)} pixels", unit="round")
        booster = xgb.Booster(self._params(classes.size), [dtrain])
        last = time.perf_counter()
        for i in range(total):
            booster.update(dtrain, iteration=i)
            if time.perf_counter() - last >= chunk_seconds or i + 1 == total:
                yield Progress(i + 1, total, f"training xgb: {i + 1}/{total} rounds", unit="round")
                last = time.perf_counter()
        self.booster_ = booster
        self.classes_ = classes.astype(np.int64)
        self.n_features_in_ = X.shape[1]
        self._set_feature_names(feature_names, X.shape[1])
        return self

    def predict_proba(self, X):
        """Class probabilities, (n_pixels, K) float32, columns in ``classes_`` order."""
        from ._engines import predict_proba

        return predict_proba(self, self._check_X(X))



CLASSIFIERS = {"rf": RandomForestPixelClassifier, "xgb": XGBoostPixelClassifier}


def make_classifier(kind: str = "rf", **params):
    """Create an unfitted pixel classifier.

    Parameters
    ----------
    kind : {'rf', 'xgb'}
        Random forest or XGBoost.
    **params
        Constructor parameters of the chosen class.

    Raises
    ------
    VitsegError
        Unknown kind or parameter, or a parameter out of its range.
    """
    if kind not in CLASSIFIERS:
        raise VitsegError(f"The 'classifier' parameter must be one of {sorted(CLASSIFIERS)}; got {kind!r} instead.")
    cls = CLASSIFIERS[kind]
    try:
        est = cls(**params)
    except TypeError as e:
        raise VitsegError(f"Bad parameter for classifier {kind!r}: {e}") from None
    est.validate_params()
    return est
