"""The model: features + pixel classifier, fitted on scribbles, predicting planes and stacks.

A :class:`Segmenter` couples a :class:`~napari_vitseg.features.config.FeatureConfig` (what
features) with a pixel classifier (random forest or XGBoost); everything that describes it is
one frozen :class:`SegmenterConfig`, stored in the classifier file and held by the widget. It
trains on the labelled pixels of scribbles and predicts 2D planes, 3D stacks (plane by plane)
and multichannel images (explicit ``channel_axis``). Applying a classifier to files is
:mod:`napari_vitseg.pipeline.batch`; the classifier file is :mod:`napari_vitseg.pipeline._persist`.

Long operations are generators (``iter_*``) that yield
:class:`~napari_vitseg._progress.Progress` and return their result; the plain methods
(:meth:`Segmenter.fit`, :meth:`Segmenter.segment`, ...) run them to completion.

Examples
--------
>>> import numpy as np
>>> from napari_vitseg.pipeline import Segmenter
>>> from napari_vitseg.features import FeatureConfig
>>> rng = np.random.default_rng(0)
>>> image = rng.normal(size=(64, 64)).astype(np.float32)
>>> image[:, 32:] += 4
>>> scribbles = np.zeros((64, 64), np.uint8)
>>> scribbles[10:50, 5:10] = 1
>>> scribbles[10:50, 50:55] = 2
>>> seg = Segmenter(FeatureConfig(sigmas=(1, 2)), classifier_params={"n_estimators": 20})
>>> seg = seg.fit(image, scribbles)
>>> result = seg.segment(image)
>>> result.labels.shape, result.labels.dtype, result.probabilities.shape
((64, 64), dtype('uint8'), (2, 64, 64))
>>> float((result.labels[:, 40:] == 2).mean()) > 0.95
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._progress import Progress, run
from .._validation import (
    VitsegError,
    check_channel_axis,
    check_dtype,
    check_finite,
    check_ndim,
    check_number,
    check_option,
)
from ..classifiers import CLASSIFIERS, make_classifier
from ..classifiers._engines import EARLY_EXIT_VERSION
from ..classifiers._estimators import _iter_in_thread
from ..features.cache import FeatureCache
from ..features.config import FeatureConfig
from ..features.stack import Featurizer
from ._autocontext import (
    N_FOLDS,
    context_feature_names,
    context_features,
    context_halo,
    expand_proba,
    stroke_folds,
)
from ._boundary import DEFAULT_ROWS as BOUNDARY_ROWS
from ._boundary import LABEL_MAJORITY, boundary_band, boundary_params, context_rows, fine_columns
from ._coarse import SCHEME_VERSION as COARSE_SCHEME_VERSION
from ._coarse import coarse_rows_needed, coarse_to_fine_rows
from .scribbles import ScribbleIndex

#: Ways to predict full-resolution planes (:attr:`Segmenter.prediction`).
PREDICTION_MODES = ("coarse-to-fine", "exact")
#: Environment variable giving the prediction mode when none was set on the segmenter.
PREDICTION_ENV = "VITSEG_PREDICTION"

__all__ = [
    "DEFAULT_COLORS",
    "SegmentationResult",
    "Segmenter",
    "SegmenterConfig",
    "as_channels_last",
    "uncertainty",
]

#: Default class colours (napari-like, colour-blind friendly), class 1 first.
DEFAULT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf")


def default_class_name(class_id: int) -> str:
    """Name of class ``class_id`` when the user gave none (``'class 3'``)."""
    return f"class {int(class_id)}"


def default_class_color(class_id: int) -> str:
    """Colour of class ``class_id`` (1-based) when the user gave none."""
    return DEFAULT_COLORS[(int(class_id) - 1) % len(DEFAULT_COLORS)]


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything that describes a segmenter before it is trained.

    Stored in the classifier file (feature config, classifier kind and parameters, class
    table) and held by the napari widget; :meth:`Segmenter.from_config` builds the model.

    Parameters
    ----------
    features : FeatureConfig
        The per-pixel features (default: classical filters only).
    classifier : {'rf', 'xgb'}
        Random forest (scikit-learn) or XGBoost.
    classifier_params : dict
        Constructor parameters of the classifier (see :mod:`napari_vitseg.classifiers`).
    class_names : tuple of str or None
        Names of classes 1..K (default ``'class k'``).
    class_colors : tuple of str or None
        Colours of classes 1..K, stored as ``'#rrggbb'`` (any matplotlib colour is accepted;
        default :data:`DEFAULT_COLORS`).
    autocontext_stages : int
        Classifier stages (1..4): 1 = one classifier on the image features; ``s > 1`` adds
        auto-context stages, each trained on the image features plus filtered class
        probabilities of the stage before (:mod:`napari_vitseg.pipeline._autocontext`).
    boundary_refinement : int
        Half-width in px of the band around the label boundaries that a second classifier on
        the fine channels re-decides (:mod:`napari_vitseg.pipeline._boundary`; default
        :data:`~napari_vitseg.pipeline._boundary.DEFAULT_ROWS`); 0 turns it off. Classifier
        files without it (format <= 2) load with 0.

    Raises
    ------
    VitsegError
        Unknown classifier kind or parameter, a parameter out of range, names longer than 200
        characters, colours that are not colours, stages or boundary band out of range.

    Examples
    --------
    >>> cfg = SegmenterConfig(classifier="xgb", class_names=("pore", "solid"))
    >>> cfg.replace(classifier_params={"n_estimators": 50}).classifier_params
    {'n_estimators': 50}
    >>> cfg.class_name(2), cfg.class_color(3)
    ('solid', '#2ca02c')
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    classifier: str = "rf"
    classifier_params: dict = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None
    class_colors: tuple[str, ...] | None = None
    autocontext_stages: int = 1
    boundary_refinement: int = BOUNDARY_ROWS

    def __post_init__(self):
        from ._autocontext import MAX_STAGES
        from ._boundary import MAX_ROWS

        check_number(self.autocontext_stages, "autocontext_stages", kind="int", low=1, high=MAX_STAGES,
                     owner="SegmenterConfig")
        object.__setattr__(self, "autocontext_stages", int(self.autocontext_stages))
        check_number(self.boundary_refinement, "boundary_refinement", kind="int", low=0, high=MAX_ROWS,
                     owner="SegmenterConfig")
        object.__setattr__(self, "boundary_refinement", int(self.boundary_refinement))
        if not isinstance(self.features, FeatureConfig):
            raise VitsegError(f"features must be a FeatureConfig; got {type(self.features).__name__}.")
        check_option(self.classifier, CLASSIFIERS, "classifier")
        params = self.classifier_params
        if params is not None and (not isinstance(params, dict) or not all(isinstance(k, str) for k in params)):
            raise VitsegError(f"classifier_params must be a dict of parameter names to values; got {params!r}.")
        object.__setattr__(self, "classifier_params", dict(params or {}))
        for name in ("class_names", "class_colors"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__")):
                raise VitsegError(f"{name} must be a list (one entry per class, class 1 first) or None; "
                                  f"got {value!r}.")
        if self.class_names is not None:
            names = tuple(str(x) for x in self.class_names)
            if len(names) > 255 or any(len(n) > 200 for n in names):
                raise VitsegError("Give at most 255 class names of at most 200 characters each.")
            object.__setattr__(self, "class_names", names)
        if self.class_colors is not None:
            from matplotlib.colors import to_hex

            try:
                colors = tuple(to_hex(c) for c in self.class_colors)
            except (ValueError, TypeError) as e:
                raise VitsegError(f"Class colours must be colour names or '#rrggbb' ({e}).") from None
            object.__setattr__(self, "class_colors", colors)
        make_classifier(self.classifier, **self.classifier_params)  # unknown parameters fail here

    def replace(self, **changes) -> SegmenterConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def class_name(self, class_id: int) -> str:
        """Name of class ``class_id`` (1-based)."""
        i = int(class_id) - 1
        names = self.class_names or ()
        return names[i] if 0 <= i < len(names) else default_class_name(class_id)

    def class_color(self, class_id: int) -> str:
        """Hex colour of class ``class_id`` (1-based)."""
        i = int(class_id) - 1
        colors = self.class_colors or ()
        return colors[i] if 0 <= i < len(colors) else default_class_color(class_id)


def uncertainty(proba: np.ndarray) -> np.ndarray:
    """Uncertainty of a prediction: 1 - the largest class probability.

    Parameters
    ----------
    proba : ndarray, (K, ...) float
        Class probabilities, classes first.

    Returns
    -------
    ndarray, (...) of ``proba``'s float dtype
        0 where one class has all the probability, up to 1 - 1/K where all are equal.
    """
    return 1.0 - proba.max(axis=0)


@dataclass
class SegmentationResult:
    """Output of :meth:`Segmenter.segment`.

    Attributes
    ----------
    labels : ndarray of uint8, spatial shape (Y, X) or (Z, Y, X)
        Class ids 1..K.
    probabilities : ndarray of float16, (K, *spatial) or None
        Per-class probabilities, in ``classes`` order.
    uncertainty : ndarray of float32, spatial shape
        1 - max probability (:func:`uncertainty`).
    classes : ndarray of int
        The class id of each probability channel.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    uncertainty: np.ndarray
    classes: np.ndarray


def as_channels_last(image, channel_axis: int | None):
    """Return ``image`` with its channel axis moved last (lazy for dask/zarr input).

    Parameters
    ----------
    image : array-like
        numpy, dask or zarr array of shape (Y, X) or (Z, Y, X) plus an optional channel axis.
    channel_axis : int or None

    Returns
    -------
    array : numpy or dask array, (Y, X[, C]) or (Z, Y, X[, C])
    n_spatial : int
        2 or 3.
    n_channels : int

    Raises
    ------
    VitsegError
        Unsupported dimensionality or dtype, or a channel axis out of range.
    """
    from .._validation import as_array

    image = as_array(image, "image")
    check_dtype(image, "image")
    ca = check_channel_axis(image.ndim, channel_axis, "image")
    nsp = check_ndim(image, (2, 3), ca, "image")
    if ca is not None:
        if isinstance(image, np.ndarray):
            image = np.moveaxis(image, ca, -1)
        else:
            import dask.array as da

            image = da.moveaxis(da.asarray(image) if not hasattr(image, "map_blocks") else image, ca, -1)
        nc = image.shape[-1]
        if nc > 64:
            raise VitsegError(f"The channel axis has {nc} entries; is channel_axis={channel_axis} the right axis?")
    else:
        nc = 1
    return image, nsp, nc


def _stage_proba(clf, classes: np.ndarray, early_exit: bool = False):
    """``X -> (n, K)`` probabilities over ``classes`` of one stage model (with ``early_exit``:
    a random forest stops after a quarter of its trees for confident rows, the approximate
    ``'coarse-to-fine'`` mode; :func:`napari_vitseg.classifiers._engines.early_exit_proba`)."""
    predict = clf.predict_proba_early_exit if early_exit else clf.predict_proba

    def proba(X):
        return expand_proba(predict(X), clf.classes_, classes)

    return proba


def plane_of(image, n_spatial: int, z: int | None) -> np.ndarray:
    """Plane ``z`` of a channels-last stack as numpy (the whole image for 2D, ``z`` ignored).

    A plane of a stack is a :class:`~napari_vitseg.features.volume.StackPlane`: a numpy array
    that also knows its stack, for features with ``spatial='3d'``."""
    if n_spatial == 3:
        from ..features.volume import StackPlane

        return StackPlane(image, z)
    return np.asarray(image)


class Segmenter:
    """Trainable pixel classifier over ViT + classical features.

    Parameters
    ----------
    feature_config : FeatureConfig, optional
        Default: classical features only (``FeatureConfig()``).
    classifier : {'rf', 'xgb'}
        Random forest (scikit-learn) or XGBoost.
    classifier_params : dict, optional
        Parameters of the classifier (see :mod:`napari_vitseg.classifiers`).
    class_names : sequence of str, optional
        Names of classes 1..K (default ``'class k'``).
    class_colors : sequence of str, optional
        Hex colours of classes 1..K.
    autocontext_stages : int
        1 (default: one classifier) to 4; see :class:`SegmenterConfig`.
    boundary_refinement : int
        Half-width (px) of the band re-decided by the fine-scale classifier; 0 = off. See
        :class:`SegmenterConfig` and :mod:`napari_vitseg.pipeline._boundary`.
    featurizer : Featurizer, optional
        A featurizer of exactly ``feature_config`` to share (the napari widget shares one,
        with its backbone and ViT PCA basis, between every model it trains).
    cache : FeatureCache, optional
        A per-plane feature cache to share; default a new one of ``cache_bytes``.
    backbone : ViTBackbone, optional
        A built backbone to use (for example random weights in tests); by default it is
        created with pretrained weights when first needed. Not with ``featurizer``.
    device : str, optional
        torch device for the ViT ('cpu', 'cuda'); default CUDA when available.
    cache_bytes : int
        Byte budget of a new feature cache.
    prediction : {'coarse-to-fine', 'exact'}, optional
        How full-resolution planes are predicted (an inference setting, never stored in the
        classifier file; see :attr:`prediction_mode`). Default ``None``: ``$VITSEG_PREDICTION``
        if set, else ``'coarse-to-fine'``.

    Attributes
    ----------
    config : SegmenterConfig
        Everything above that describes the model (stored in the classifier file).
    prediction : str or None
        The prediction setting (may be changed at any time).
    featurizer : Featurizer
    cache : FeatureCache
    classifier_ : RandomForestPixelClassifier or XGBoostPixelClassifier
        The fitted classifier (the last stage with auto-context).
    stage_classifiers_ : list of classifiers
        Every stage, first to last (``[classifier_]`` without auto-context).
    boundary_classifier_ : classifier or None
        The fine-scale classifier of the boundary band (``None`` when ``boundary_refinement``
        is 0 or the features have no fine channels).
    boundary_columns_ : ndarray of int
        Its feature columns (:func:`napari_vitseg.pipeline._boundary.fine_columns`).
    boundary_majority_ : int
        Side (px) of the majority filter the first labels go through before the band is found
        (:data:`~napari_vitseg.pipeline._boundary.LABEL_MAJORITY`; 1 for classifier files of
        format 3).
    classes_ : ndarray of int, (K,)
    n_channels_ : int
        Channels of the training image.
    training_stats_ : dict
        Labelled pixels per class and the training image's shape.

    Raises
    ------
    VitsegError
        Unknown classifier or parameter; a featurizer made for another feature config.
    """

    def __init__(self, feature_config: FeatureConfig | None = None, classifier: str = "rf",
                 classifier_params: dict | None = None, *, class_names: Sequence[str] | None = None,
                 class_colors: Sequence[str] | None = None, autocontext_stages: int = 1,
                 boundary_refinement: int = BOUNDARY_ROWS, featurizer: Featurizer | None = None, cache: FeatureCache | None = None, backbone=None,
                 device=None, cache_bytes: int = 4 * 2**30, prediction: str | None = None):
        self.prediction = prediction
        config = SegmenterConfig(feature_config if feature_config is not None else FeatureConfig(),
                                 classifier, classifier_params or {}, class_names, class_colors,
                                 autocontext_stages, boundary_refinement)
        self._config = config
        self._requested_features = config.features  # spatial='auto' is resolved from each training image
        self.device = device
        if featurizer is not None:
            if backbone is not None:
                raise VitsegError("Give either a featurizer or a backbone, not both.")
            if featurizer.config != config.features:
                raise VitsegError("The featurizer was made for another feature config than the segmenter's.")
            self.featurizer = featurizer
        else:
            self.featurizer = Featurizer(config.features, backbone=backbone, device=device)
        self.cache = cache if cache is not None else FeatureCache(cache_bytes)

    @classmethod
    def from_config(cls, config: SegmenterConfig, **kwargs) -> Segmenter:
        """Build an unfitted segmenter from a :class:`SegmenterConfig`.

        Parameters
        ----------
        config : SegmenterConfig
        **kwargs
            ``featurizer``, ``cache``, ``backbone``, ``device``, ``cache_bytes`` as in the
            constructor.
        """
        return cls(config.features, config.classifier, config.classifier_params,
                   class_names=config.class_names, class_colors=config.class_colors,
                   autocontext_stages=config.autocontext_stages,
                   boundary_refinement=config.boundary_refinement, **kwargs)

    # -- prediction setting (not part of the model) -------------------------------
    @property
    def prediction(self) -> str | None:
        """The prediction setting given (``None``: from the environment); see :attr:`prediction_mode`."""
        return getattr(self, "_prediction", None)

    @prediction.setter
    def prediction(self, value: str | None) -> None:
        if value is not None:
            check_option(value, PREDICTION_MODES, "prediction")
        self._prediction = value

    @property
    def prediction_key(self) -> str:
        """What a prediction's labels depend on besides the model: ``'exact'``, or
        ``'coarse-to-fine/<scheme>/early-exit-<rule>'`` naming the versions of the coarse-to-fine
        scheme (:data:`napari_vitseg.pipeline._coarse.SCHEME_VERSION`) and of the forests' early
        exit (:data:`napari_vitseg.classifiers._engines.EARLY_EXIT_VERSION`). Batch outputs record
        it, so that a resumed run never mixes planes of two schemes."""
        mode = self.prediction_mode
        return f"{mode}/{COARSE_SCHEME_VERSION}/early-exit-{EARLY_EXIT_VERSION}" if mode == "coarse-to-fine" else mode

    @property
    def prediction_mode(self) -> str:
        """How full-resolution planes are predicted now.

        ``'coarse-to-fine'`` (default): the forest classifies a stride-4 grid, refines the
        stride-2 grid near boundaries and uncertain cells (following thin structures), then full
        resolution between disagreeing stride-2 points (:mod:`napari_vitseg.pipeline._coarse`);
        15-35 % of the pixels are classified, and a random forest stops after a quarter of its
        trees where they agree (:func:`napari_vitseg.classifiers._engines.early_exit_proba`);
        >= 99.9 % of the labels of ``'exact'`` on the shared sets (``docs/apply_speed.md``).
        ``'exact'``: every pixel, every tree. Order: :attr:`prediction`, else ``$VITSEG_PREDICTION`` (read at every
        prediction, so the widget and dask workers follow it), else ``'coarse-to-fine'`` —
        except for classifier files of format 1 (napari-vitseg 0.1), which keep predicting
        exactly as they did (``'exact'``).

        Raises
        ------
        VitsegError
            ``$VITSEG_PREDICTION`` is set to something else than the two modes.
        """
        if self.prediction is not None:
            return self.prediction
        import os

        env = os.environ.get(PREDICTION_ENV, "").strip().lower()
        if not env:
            return getattr(self, "default_prediction_", "coarse-to-fine")
        if env not in PREDICTION_MODES:
            raise VitsegError(f"The environment variable {PREDICTION_ENV} must be one of "
                              f"{list(PREDICTION_MODES)}; got {env!r}. Unset it or fix its value.")
        return env

    # -- configuration ------------------------------------------------------------
    @property
    def config(self) -> SegmenterConfig:
        """The frozen description of this segmenter."""
        return self._config

    @property
    def feature_config(self) -> FeatureConfig:
        return self._config.features

    @property
    def classifier(self) -> str:
        return self._config.classifier

    @property
    def classifier_params(self) -> dict:
        return dict(self._config.classifier_params)

    @property
    def autocontext_stages(self) -> int:
        """Stages of the model (1 = no auto-context)."""
        return self._config.autocontext_stages

    @property
    def boundary_refinement(self) -> int:
        """Half-width (px) of the boundary band the fine-scale classifier re-decides (0 = off)."""
        return self._config.boundary_refinement

    @property
    def _refine_rows(self) -> int:
        """Rows of label context the fitted model's boundary refinement needs beyond a row band
        (0: none): the band's half-width and the majority window's
        (:func:`~napari_vitseg.pipeline._boundary.context_rows`)."""
        if getattr(self, "boundary_classifier_", None) is None:
            return 0
        return context_rows(self.boundary_refinement, getattr(self, "boundary_majority_", 1))

    @property
    def class_names(self) -> list[str] | None:
        names = self._config.class_names
        return list(names) if names is not None else None

    @property
    def class_colors(self) -> list[str] | None:
        colors = self._config.class_colors
        return list(colors) if colors is not None else None

    def set_classes(self, names: Sequence[str] | None, colors: Sequence[str] | None = None) -> None:
        """Rename / recolour the classes (for example after the user edited them before saving)."""
        self._config = self._config.replace(class_names=names, class_colors=colors)

    # -- features -----------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "classifier_")

    def _cache_key(self, digest: str):
        return (digest, self.featurizer.state_key)

    def plane_features(self, plane: np.ndarray, *, digest: str | None = None, progress=None) -> np.ndarray:
        """Features of one plane, from the cache when the plane was seen before.

        Parameters
        ----------
        plane : ndarray, (Y, X) or (Y, X, C)
        digest : str, optional
            Content hash of the plane (computed when omitted).

        Returns
        -------
        ndarray, (Y, X, F) float32, read-only when cached
        """
        digest = digest or self.featurizer.plane_digest(plane)
        feats = self.cache.get(self._cache_key(digest))
        if feats is None:
            feats = self.featurizer.compute(plane, key=digest, progress=progress)
            self.cache.put(self._cache_key(digest), feats)  # after compute: it may fit the PCA basis
        return feats

    # -- training -------------------------------------------------------------------
    def iter_fit(self, image, scribbles, *, channel_axis: int | None = None):
        """Train on the labelled pixels of ``scribbles`` (generator form of :meth:`fit`).

        Parameters
        ----------
        image : array-like, (Y, X) or (Z, Y, X), optional channel axis
        scribbles : array-like of int, the image's spatial shape, or ScribbleIndex
            0 = unlabelled, 1..K = classes (K <= 255). An array (numpy, dask, zarr) is indexed
            plane by plane (:class:`~napari_vitseg.pipeline.scribbles.ScribbleIndex`); only the
            image planes that hold scribbles are read.
        channel_axis : int, optional

        Yields
        ------
        Progress
            While features are computed (per plane) and while the classifier grows (every
            ~0.4 s: chunks of trees, boosting rounds; ``'training rf: 40/100 trees'``), so a
            caller that closes the generator (the widget's Cancel) stops within about a second.
            With auto-context, also per fold model and per out-of-fold plane prediction.

        Returns
        -------
        Segmenter
            ``self``, fitted.

        Raises
        ------
        VitsegError
            Bad image or scribbles (shape mismatch, < 2 classes, NaN, dtype, dimensionality).
        """
        image, nsp, nc = as_channels_last(image, channel_axis)
        spatial = tuple(image.shape[: nsp])
        if isinstance(scribbles, ScribbleIndex):
            index = scribbles
            if index.shape != spatial:
                raise VitsegError(
                    f"The scribbles have shape {index.shape} but the image's spatial shape is {spatial}; paint "
                    "the scribbles on the same image (same shape, channel axis excluded)."
                )
        else:
            index = ScribbleIndex.from_array(scribbles, spatial)
        index.check_trainable()
        planes = index.planes
        self._resolve_spatial(image, nsp, planes)
        n_stages = self.autocontext_stages
        n_fits = n_stages + (n_stages - 1) * N_FOLDS + (self.boundary_refinement > 0)
        # progress units: 1 per plane of features, 10 per classifier fit, 1 per out-of-fold plane prediction
        total = len(planes) + 10 * n_fits + (n_stages - 1) * N_FOLDS * len(planes)
        xs, ys, pix = [], [], []
        # the ViT PCA basis (if any) is fitted on the first training plane and then kept, so that
        # retraining after more strokes reuses cached features; only planes with scribbles are read
        for i, z in enumerate(planes):
            yield Progress(i, total, f"features of plane {z}")
            plane = plane_of(image, nsp, z)
            check_finite(plane, "image")
            rows, cols, lab = index.plane(z)
            if self.feature_config.backbone is None:
                # in a worker thread, so that closing this generator (Cancel) is not held up by a
                # large plane; an abandoned computation only fills the (thread-safe) cache.
                # Not with a ViT: its first plane may fit the featurizer's PCA basis.
                feats = yield from _iter_in_thread(lambda plane=plane: self.plane_features(plane), 0.25,
                                                   lambda i=i, z=z: Progress(i, total, f"features of plane {z}"))
            else:
                feats = self.plane_features(plane)
            xs.append(feats[rows, cols])
            ys.append(lab)
            pix.append((rows, cols, lab, tuple(plane.shape[:2])))
        X = np.concatenate(xs)
        y = np.concatenate(ys)
        names = self.featurizer.feature_names(nc)
        done = [len(planes)]
        if n_stages == 1:
            clf = yield from self._iter_fit_one(X, y, names, done, total, "")
            chain = [clf]
        else:
            chain = yield from self._iter_fit_autocontext(image, nsp, planes, pix, X, y, names, done, total)
        cols = fine_columns(names) if self.boundary_refinement > 0 else np.zeros(0, np.int64)
        boundary = None
        if 0 < len(cols) < X.shape[1]:  # nothing to refine with when every channel is fine, or none is
            boundary = yield from self._iter_fit_one(X[:, cols], y, [names[i] for i in cols], done, total,
                                                     "boundary refinement: ", boundary_params(self.classifier,
                                                                                              self.classifier_params))
        self.boundary_classifier_ = boundary
        self.boundary_columns_ = cols if boundary is not None else np.zeros(0, np.int64)
        self.boundary_majority_ = LABEL_MAJORITY if boundary is not None else 1
        self.stage_classifiers_ = chain
        self.classifier_ = chain[-1]
        self.classes_ = chain[-1].classes_
        self.n_channels_ = nc
        ids, counts = np.unique(y, return_counts=True)
        self.training_stats_ = {
            "labelled_pixels": {str(int(i)): int(c) for i, c in zip(ids, counts, strict=True)},
            "image_shape": [int(s) for s in image.shape],
            "n_training_planes": len(planes),
        }
        yield Progress(total, total, "trained")
        return self

    def _resolve_spatial(self, image, nsp: int, planes) -> None:
        """Make the requested ``spatial='auto'`` concrete for the training ``image``
        (:func:`~napari_vitseg.features.volume.resolve_spatial`, from the scribbled ``planes`` and
        their neighbours). For 3D filters a new featurizer
        (keeping the built backbone and a fitted ViT PCA basis, which do not depend on it); for
        2D the featurizer of 'auto' is kept, as it computes exactly the 2D channels."""
        requested = self._requested_features
        if requested.spatial != "auto":
            return
        from ..features.volume import resolve_spatial

        features = resolve_spatial(requested, image, nsp, planes=planes)
        if features == self.feature_config:
            return
        old = self.featurizer
        self._config = self._config.replace(features=features)
        if features.spatial == "2d" and old.config.spatial != "3d" and old.config.replace(spatial="2d") == features:
            return  # a featurizer given 'auto' computes the 2D channels: keep it (shared, with its cache keys)
        self.featurizer = Featurizer(features, backbone=old.built_backbone, device=self.device)
        self.featurizer.pca_ = old.pca_

    def _iter_fit_one(self, X, y, names, done: list, total: int, prefix: str, params: dict | None = None):
        """Fit one classifier of this segmenter's kind (``params`` over :attr:`classifier_params`),
        re-yielding its progress as 10 units of ``total``."""
        clf = make_classifier(self.classifier, **{**self.classifier_params, **(params or {})})
        job = clf.iter_fit(X, y, feature_names=names)
        base = done[0]
        while True:
            try:
                p = next(job)
            except StopIteration as stop:
                done[0] = base + 10
                return stop.value
            frac = p.done / p.total if p.total else 0.0
            yield Progress(base + int(10 * frac), total, prefix + p.msg)

    def _iter_fit_autocontext(self, image, nsp, planes, pix, X, y, names, done: list, total: int):
        """Train the auto-context chain (:mod:`napari_vitseg.pipeline._autocontext`); returns the stages."""
        n_stages = self.autocontext_stages
        folds = np.concatenate(stroke_folds(pix, N_FOLDS))
        offsets = np.cumsum([0] + [len(p[2]) for p in pix])
        classes = np.unique(y)
        ctx_names = context_feature_names(classes)
        keep = self._keep_training_internals
        if keep:
            self.training_internals_ = {"folds": folds, "context": {}, "fold_models": {}, "fold_proba": {}}
        chain, C = [], None
        prev = {}  # (fold, plane index) -> the fold chain's probabilities of that plane, (K, Y, X)
        for s in range(1, n_stages + 1):
            Xs = X if C is None else np.concatenate([X, C], axis=1)
            names_s = names if C is None else names + ctx_names
            head = f"stage {s}/{n_stages}: "
            clf = yield from self._iter_fit_one(Xs, y, names_s, done, total, head)
            chain.append(clf)
            if s == n_stages:
                break
            C = np.zeros((len(y), len(ctx_names)), np.float32)
            for f in range(N_FOLDS):
                out = folds == f
                fold_clf = yield from self._iter_fit_one(Xs[~out], y[~out], names_s, done, total,
                                                         f"{head}fold model {f + 1}/{N_FOLDS}: ")
                if hasattr(fold_clf, "set_engine"):
                    fold_clf.set_engine("sklearn")  # a throw-away model: never worth compiling
                if keep:
                    self.training_internals_["fold_models"][(s, f)] = fold_clf
                for i, z in enumerate(planes):
                    yield Progress(done[0], total, f"{head}fold model {f + 1}/{N_FOLDS}: predicting plane {z}")
                    plane = plane_of(image, nsp, z)
                    p = self._predict_stage(fold_clf, plane, prev.get((f, i)), classes,
                                            coarse=False)  # training stays exact
                    prev[(f, i)] = p
                    if keep:
                        self.training_internals_["fold_proba"][(s, f, i)] = p
                    sel = np.flatnonzero(out[offsets[i]:offsets[i + 1]])
                    if sel.size:
                        rows, cols = pix[i][0][sel], pix[i][1][sel]
                        r0, r1 = int(rows.min()), int(rows.max()) + 1
                        ctx = context_features(p, rows=(r0, r1))
                        C[offsets[i] + sel] = ctx[rows - r0, cols]
                    done[0] += 1
            if keep:
                self.training_internals_["context"][s + 1] = C
        return chain

    #: Keep the out-of-fold folds, fold models and context features in ``training_internals_``
    #: after an auto-context fit (tests).
    _keep_training_internals = False

    def fit(self, image, scribbles, *, channel_axis: int | None = None) -> Segmenter:
        """Train on scribbles; see :meth:`iter_fit`. Returns ``self``."""
        return run(self.iter_fit(image, scribbles, channel_axis=channel_axis))

    def feature_importances(self, stage: int = 1, *, method: str = "auto", image=None, scribbles=None,
                            channel_axis: int | None = None, max_pixels: int = 5000, n_repeats: int = 3,
                            random_state: int = 0):
        """What the trained classifier relies on: importances by feature family and scale.

        Parameters
        ----------
        stage : int
            Which classifier stage (1-based; default 1, the one that sees the image features
            only). Later auto-context stages also weigh the previous stage's smoothed class
            probabilities (family ``'autocontext'``).
        method : {'auto', 'mdi', 'gain', 'permutation'}
            ``'auto'``: mean decrease in impurity (MDI, Breiman 2001; scikit-learn's
            ``feature_importances_``) for a random forest, total gain for XGBoost, both read
            from the trees at no cost. MDI is biased towards features with many distinct values
            and splits credit between correlated features (neighbouring scales).
            ``'permutation'``: :func:`sklearn.inspection.permutation_importance` of stage 1 on
            a class-balanced sample of the scribbled pixels (drop in balanced accuracy; needs
            ``image`` and ``scribbles``; a few seconds for 40 features on 5000 pixels).
            :mod:`napari_vitseg.pipeline._importance` describes the methods.
        image, scribbles, channel_axis
            The training image and its scribbles, as for :meth:`fit` (``'permutation'`` only).
        max_pixels : int
            Most scribbled pixels sampled for ``'permutation'``.
        n_repeats : int
            Shuffles per feature for ``'permutation'``.
        random_state : int
            Seed of the sample and the shuffles.

        Returns
        -------
        FeatureImportances
            Per feature channel (``feature_names``, aligned with
            :meth:`Featurizer.feature_names <napari_vitseg.features.stack.Featurizer.feature_names>`)
            and per group (``names``, ``family``, ``sigma``, ``channel``, ``importance``), each
            summing to 1; ``grid()`` gives the family x scale table and ``summary()`` one
            sentence in plain language.

        Raises
        ------
        VitsegError
            The segmenter is not trained; ``stage`` out of range; a method that does not apply
            to the classifier; ``'permutation'`` without the image and scribbles, or for a
            stage > 1.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> image = rng.normal(size=(64, 64)).astype(np.float32)
        >>> image[:, 32:] += 4
        >>> scribbles = np.zeros((64, 64), np.uint8)
        >>> scribbles[10:50, 5:10], scribbles[10:50, 50:55] = 1, 2
        >>> seg = Segmenter(FeatureConfig(sigmas=(1, 2)), classifier_params={"n_estimators": 20})
        >>> imp = seg.fit(image, scribbles).feature_importances()
        >>> round(float(imp.importance.sum()), 6), imp.method, imp.names[:2]
        (1.0, 'mdi', ('raw intensity', 'Gaussian σ1'))
        """
        from ._importance import feature_importances

        return feature_importances(self, stage, method=method, image=image, scribbles=scribbles,
                                   channel_axis=channel_axis, max_pixels=max_pixels, n_repeats=n_repeats,
                                   random_state=random_state)

    # -- prediction -----------------------------------------------------------------
    def _check_fitted(self):
        if not self.is_fitted:
            raise VitsegError("The segmenter is not trained yet: paint scribbles and train it, or load a classifier.")

    @property
    def n_stages(self) -> int:
        """Stages of the fitted model (``len(stage_classifiers_)``; 1 without auto-context)."""
        self._check_fitted()
        return len(self._stages())

    def stages_used(self, stride: int = 1) -> int:
        """How many stages a prediction uses: all of them, except the stride > 1 preview of
        :meth:`predict_plane` (live mode's coarse first overlay), which is stage 1 only (its
        "fast form"). :meth:`predict_rows` always uses every stage (exact, with a halo)."""
        return 1 if stride > 1 else self.n_stages

    def _stages(self) -> list:
        return getattr(self, "stage_classifiers_", None) or [self.classifier_]

    def _check_plane(self, plane) -> int:
        nc = 1 if plane.ndim == 2 else plane.shape[-1]
        if nc != self.n_channels_:
            raise VitsegError(
                f"The classifier was trained on images with {self.n_channels_} channel(s); this one has {nc}. "
                "Set the channel axis (channel_axis, CLI --channel-axis) to match the training image."
            )
        check_finite(plane, "image")
        return nc

    def _predict_stage(self, clf, plane: np.ndarray, prev: np.ndarray | None, classes: np.ndarray,
                       feats: np.ndarray | None = None, coarse: bool | None = None,
                       refine: bool = False) -> np.ndarray:
        """Probabilities (K, Y, X) over ``classes`` of one stage model on a whole plane, in row bands.

        ``prev`` are the previous stage's probabilities of the plane (context features are made
        from them), ``None`` for stage 1; ``feats`` the plane's features when already at hand.
        Coarse-to-fine (:attr:`prediction_mode`) when ``coarse``. Each band is featurised
        (:meth:`_band_features`) then predicted (:meth:`_predict_band`); the overlapped batch
        path (:func:`napari_vitseg.pipeline.batch.iter_plane_probabilities`) runs the same two
        steps in two threads, so its results are the same. ``refine``: the last stage, whose
        boundary band the fine-scale classifier re-decides (:mod:`._boundary`).
        """
        if coarse is None:
            coarse = self.prediction_mode == "coarse-to-fine"
        ny, nx = plane.shape[:2]
        out = np.empty((len(classes), ny, nx), dtype=np.float32)
        if feats is not None:
            self._predict_band(clf, feats, 0, (0, ny), ny, classes, prev, coarse, out, refine)
            return out
        digest = self.featurizer.plane_digest(plane)
        for band in self._batch_bands(plane):
            fb, off = self._band_features(plane, band, digest, coarse)
            self._predict_band(clf, fb, off, band, ny, classes, prev, coarse, out, refine)
            del fb
        return out

    def _batch_bands(self, plane: np.ndarray) -> list[tuple[int, int]]:
        """Row bands ``[(y0, y1), ...]`` of the batch path: the featurizer's bounded-memory strips."""
        nc = 1 if plane.ndim == 2 else plane.shape[-1]
        ny = plane.shape[0]
        step = self.featurizer.strip_rows(plane.shape, nc)
        return [(y, min(ny, y + step)) for y in range(0, ny, step)]

    def _band_features(self, plane: np.ndarray, band: tuple[int, int], digest, coarse: bool, buffer=None):
        """Features of the plane rows that predicting ``band`` needs, and the plane row of the
        first: the band itself and the rows of label context the boundary refinement needs
        (:attr:`_refine_rows` on each side), widened by :func:`coarse_rows_needed` (a few rows)
        for coarse-to-fine prediction. ``(rows, X, F) float32, int``; computed into ``buffer``
        (1-D float32, see :meth:`Featurizer.compute`) when it is large enough."""
        band = self._refine_span(band, plane.shape[0])
        off, e1 = coarse_rows_needed(band, plane.shape[0]) if coarse else band
        return self.featurizer.compute(plane, rows=(off, e1), key=digest, buffer=buffer), off

    def _refine_span(self, band: tuple[int, int], ny: int) -> tuple[int, int]:
        """``band`` widened by the rows of label context the boundary refinement needs."""
        r = self._refine_rows
        return (max(0, band[0] - r), min(ny, band[1] + r)) if r else band

    def _predict_band(self, clf, fb: np.ndarray, off: int, band: tuple[int, int], ny: int, classes: np.ndarray,
                      prev: np.ndarray | None, coarse: bool, out: np.ndarray, refine: bool = False) -> None:
        """Write the probabilities of the plane rows ``band`` into ``out`` (K, ny, X), from the
        features ``fb`` of plane rows ``[off, off + len(fb))``, in chunks of ~4M pixels.
        Coarse-to-fine chunks are widened by the rows their coarse cells' neighbours need, so
        the result equals the whole plane's coarse-to-fine prediction. With ``refine`` (the last
        stage of a model with boundary refinement), the rows :attr:`_refine_rows` beyond the band
        are predicted too (``fb`` holds them: :meth:`_band_features`), and the band's pixels near
        a label boundary get the fine-scale classifier's probabilities (:meth:`_refine_band`)."""
        r = self._refine_rows if refine else 0
        if not r:
            self._stage_rows(clf, fb, off, band, ny, classes, prev, coarse, out, 0)
            return
        e0, e1 = self._refine_span(band, ny)
        ext = np.empty((len(classes), e1 - e0, fb.shape[1]), dtype=np.float32)
        self._stage_rows(clf, fb, off, (e0, e1), ny, classes, prev, coarse, ext, e0)
        y0, y1 = band
        out[:, y0:y1] = ext[:, y0 - e0:y1 - e0]
        self._refine_band(ext, e0, fb, off, band, classes, out, 0)

    def _refine_band(self, main: np.ndarray, m0: int, fb: np.ndarray, off: int, band: tuple[int, int],
                     classes: np.ndarray, out: np.ndarray, out0: int) -> None:
        """Boundary refinement of the plane rows ``band`` (:mod:`._boundary`): ``main`` (K, rows, X)
        are the last stage's probabilities of plane rows ``[m0, m0 + rows)`` (the band and
        :attr:`_refine_rows` more on each side, cut at the plane), ``fb`` the features of rows
        ``[off, ...)``; the band's pixels within :attr:`boundary_refinement` px of a change of ``main``'s
        labels are overwritten in ``out`` (K, rows, X; its first row is plane row ``out0``) by the
        fine-scale classifier's probabilities (with early exit in the coarse-to-fine mode). The
        labels go through the majority filter first (:attr:`boundary_majority_`)."""
        y0, y1 = band
        labels = np.argmax(main, axis=0).astype(np.uint8)
        near = boundary_band(labels, self.boundary_refinement, self.boundary_majority_)[y0 - m0:y1 - m0]
        if not near.any():
            return
        rr, cc = np.nonzero(near)
        clf = self.boundary_classifier_
        X = fb[(rr + (y0 - off))[:, None], cc[:, None], self.boundary_columns_]  # one gather of the fine channels
        # the approximate (coarse-to-fine) mode lets a forest stop early where its first trees agree
        fast = self.prediction_mode == "coarse-to-fine"
        p = expand_proba((clf.predict_proba_early_exit if fast else clf.predict_proba)(X), clf.classes_, classes)
        out[:, rr + (y0 - out0), cc] = p.T

    def _stage_rows(self, clf, fb: np.ndarray, off: int, band: tuple[int, int], ny: int, classes: np.ndarray,
                    prev: np.ndarray | None, coarse: bool, out: np.ndarray, out0: int) -> None:
        """One stage's probabilities of the plane rows ``band`` into ``out[:, y - out0]`` (see
        :meth:`_predict_band`)."""
        y0, y1 = band
        nx = fb.shape[1]
        rows_per_chunk = max(1, (1 << 22) // max(nx, 1))  # ~4M pixels per predict call
        if coarse:
            proba = _stage_proba(clf, classes, early_exit=True)
            for a in range(y0, y1, rows_per_chunk):
                b = min(y1, a + rows_per_chunk)
                f0, f1 = coarse_rows_needed((a, b), ny)
                X = fb[f0 - off:f1 - off]
                if prev is not None:
                    X = np.concatenate([X, context_features(prev, rows=(f0, f1))], axis=-1)
                out[:, a - out0:b - out0] = coarse_to_fine_rows(proba, X, offset=f0, n_rows=ny, rows=(a, b))
            return
        k, nf = len(classes), fb.shape[-1]
        for a in range(y0, y1, rows_per_chunk):
            b = min(y1, a + rows_per_chunk)
            Xb = fb[a - off:b - off].reshape(-1, nf)
            if prev is not None:
                ctx = context_features(prev, rows=(a, b))
                Xb = np.concatenate([Xb, ctx.reshape(Xb.shape[0], -1)], axis=1)
            p = expand_proba(clf.predict_proba(Xb), clf.classes_, classes)
            out[:, a - out0:b - out0] = p.T.reshape(k, b - a, nx)

    def predict_plane(self, plane: np.ndarray, *, use_cache: bool = True, stride: int = 1, progress=None,
                      stages: int | None = None):
        """Probabilities of one plane.

        Parameters
        ----------
        plane : ndarray, (Y, X) or (Y, X, C)
            With 3D features (``FeatureConfig(spatial='3d')``) give a plane of a stack as
            ``napari_vitseg.features.StackPlane(stack, z)``, which reads its neighbours; a plain
            array is a single image and gets 2D features.
        use_cache : bool
            Take/keep whole-plane features in the cache (live mode); otherwise the plane is
            processed in row strips with bounded memory (batch mode).
        stride : int
            Predict only every ``stride``-th pixel along rows and columns (a fast preview for
            live mode; features are still computed, or taken from the cache, at full resolution).
            The preview uses stage 1 only (:meth:`stages_used`) and no boundary refinement.
        stages : int, optional
            Use only the first ``stages`` stages of an auto-context model (default: all).

        Returns
        -------
        ndarray, (K, ceil(Y / stride), ceil(X / stride)) float32

        Notes
        -----
        With auto-context, stage 1 runs over the whole plane (in row bands), then each further
        stage in bands with context features from the previous stage's whole-plane
        probabilities (K planes held in memory). Without the cache, the plane's features are
        computed once and kept for all stages when they take at most 1 GiB, else again per
        stage in bands.
        """
        self._check_fitted()
        nc = self._check_plane(plane)
        chain = self._stages()
        n = len(chain) if stages is None else max(1, min(int(stages), len(chain)))
        k = len(self.classes_)
        if stride > 1:
            feats = self.plane_features(plane, progress=progress)[::stride, ::stride]
            fast = self.prediction_mode == "coarse-to-fine"  # the approximate mode: early exit of forests
            predict = chain[0].predict_proba_early_exit if fast else chain[0].predict_proba
            p = predict(feats.reshape(-1, feats.shape[-1]))
            return np.ascontiguousarray(p.T.reshape(k, *feats.shape[:2]))
        ny, nx = plane.shape[:2]
        nf = self.featurizer.n_features(nc)
        digest = self.featurizer.plane_digest(plane)
        feats = None
        if use_cache and ny * nx * nf * 4 <= self.cache.max_bytes:  # one lookup, computed on a miss
            feats = self.plane_features(plane, digest=digest, progress=progress)
        elif n > 1 and ny * nx * nf * 4 <= min(self.cache.max_bytes, 2**30):
            feats = self.featurizer.compute(plane, key=digest)
        p = None
        for s, clf in enumerate(chain[:n]):
            p = self._predict_stage(clf, plane, p, self.classes_, feats, refine=s == len(chain) - 1)
        return p

    def predict_rows(self, plane: np.ndarray, rows: tuple[int, int], *, digest: str | None = None,
                     use_cache: bool = True, stages: int | None = None) -> np.ndarray:
        """Probabilities of the rows ``[y0, y1)`` of a plane (e.g. the part visible in a viewer).

        The band's features (with the halo the featurizer takes from the plane, so they equal
        the whole plane's) are cached under the plane's digest and the band. With auto-context
        every stage is used and the result equals :meth:`predict_plane`'s rows (up to float32
        rounding): stage 1 is predicted over ``(stages - 1) * context_halo()`` (64) more rows
        on each side, and each later stage over 64 rows fewer.

        Parameters
        ----------
        plane : ndarray, (Y, X) or (Y, X, C)
        rows : (int, int)
            First and one-past-last row.
        digest : str, optional
            Content hash of the plane (computed when omitted).
        use_cache : bool
        stages : int, optional
            Use only the first ``stages`` stages (default: all).

        Returns
        -------
        ndarray, (K, y1 - y0, X) float32
        """
        self._check_fitted()
        nc = 1 if plane.ndim == 2 else plane.shape[-1]
        if nc != self.n_channels_:
            return self.predict_plane(plane)  # raises the channel-count message
        check_finite(plane, "image")
        chain = self._stages()
        n = len(chain) if stages is None else max(1, min(int(stages), len(chain)))
        ny, nx = plane.shape[:2]
        q0, q1 = (int(r) for r in rows)
        refine = n == len(chain) and self._refine_rows > 0
        # with boundary refinement, the last stage is predicted over the rows of label context too
        y0, y1 = self._refine_span((q0, q1), ny) if refine else (q0, q1)
        p, feats, e0 = self._rows_proba(plane, (y0, y1), chain, n, digest, use_cache)
        if not refine:
            return p
        out = np.ascontiguousarray(p[:, q0 - y0:q1 - y0])
        self._refine_band(p, y0, feats, e0, (q0, q1), self.classes_, out, q0)
        return out

    def _rows_proba(self, plane, rows, chain, n, digest, use_cache):
        """The last of ``n`` stages' probabilities of ``rows`` (see :meth:`predict_rows`), with the
        features it computed and their first plane row."""
        ny, nx = plane.shape[:2]
        y0, y1 = rows
        halo = context_halo() if n > 1 else 0
        e0, e1 = max(0, y0 - (n - 1) * halo), min(ny, y1 + (n - 1) * halo)
        coarse = self.prediction_mode == "coarse-to-fine"
        if coarse:  # rows of each stage: the next one's coarse neighbourhood, plus the context halo
            spans = [(y0, y1)]
            for _ in range(n - 1):
                f0, f1 = coarse_rows_needed(spans[0], ny)
                spans.insert(0, (max(0, f0 - halo), min(ny, f1 + halo)))
            e0, e1 = coarse_rows_needed(spans[0], ny)
        digest = digest or self.featurizer.plane_digest(plane)
        key = (("rows", digest, e0, e1), self.featurizer.state_key)
        feats = self.cache.get(key) if use_cache else None
        if feats is None:
            feats = self.featurizer.compute(plane, rows=(e0, e1), key=digest)
            if use_cache:
                self.cache.put(key, feats)
        nf = feats.shape[-1]
        k = len(self.classes_)
        if coarse:
            p, a = None, e0
            for s, clf in enumerate(chain[:n]):
                f0, f1 = coarse_rows_needed(spans[s], ny)
                X = feats[f0 - e0:f1 - e0]
                if p is not None:
                    X = np.concatenate([X, context_features(p, rows=(f0 - a, f1 - a))], axis=-1)
                p = coarse_to_fine_rows(_stage_proba(clf, self.classes_, early_exit=True), X, offset=f0, n_rows=ny,
                                        rows=spans[s])
                a = spans[s][0]
            return p, feats, e0
        p, a = None, e0  # p: the previous stage's probabilities of rows [a, a + p.shape[1])
        for s, clf in enumerate(chain[:n]):
            o0, o1 = max(0, y0 - (n - 1 - s) * halo), min(ny, y1 + (n - 1 - s) * halo)
            Xb = feats[o0 - e0:o1 - e0].reshape(-1, nf)
            if p is not None:
                ctx = context_features(p, rows=(o0 - a, o1 - a))
                Xb = np.concatenate([Xb, ctx.reshape(Xb.shape[0], -1)], axis=1)
            q = clf.predict_proba(Xb)
            p, a = np.ascontiguousarray(q.T.reshape(k, o1 - o0, nx), dtype=np.float32), o0
        return p, feats, e0

    def labels_from_proba(self, proba: np.ndarray) -> np.ndarray:
        """Class ids (uint8) from probabilities (K, ...) in ``classes_`` order."""
        return self.classes_.astype(np.uint8)[np.argmax(proba, axis=0)]

    def iter_segment(self, image, *, channel_axis: int | None = None, planes: Sequence[int] | None = None,
                     probabilities: bool = True, use_cache: bool = False):
        """Segment an image or stack plane by plane (generator form of :meth:`segment`).

        Parameters
        ----------
        image : array-like, (Y, X) or (Z, Y, X), optional channel axis
        channel_axis : int, optional
        planes : sequence of int, optional
            Only these planes of a stack (others get label 0 and probability 0).
        probabilities : bool
            Also return per-class probabilities.
        use_cache : bool
            Keep the features of each plane in the cache. Without it, planes go through
            :func:`napari_vitseg.pipeline.batch.iter_plane_probabilities`, as in ``vitseg
            apply``: the next plane (or row band) is featurised while the current one is
            predicted (same labels; ``$VITSEG_OVERLAP=0`` turns it off).

        Yields
        ------
        Progress

        Returns
        -------
        SegmentationResult
        """
        self._check_fitted()
        image, nsp, nc = as_channels_last(image, channel_axis)
        spatial = tuple(image.shape[:nsp])
        k = len(self.classes_)
        labels = np.zeros(spatial, np.uint8)
        unc = np.zeros(spatial, np.float32)
        proba = np.zeros((k, *spatial), np.float16) if probabilities else None
        zs = [None] if nsp == 2 else (list(planes) if planes is not None else list(range(spatial[0])))
        source = None
        if not use_cache:  # batch: featurise the next plane / band while this one is predicted
            from .batch import iter_plane_probabilities

            source = iter_plane_probabilities(self, ((z, lambda z=z: plane_of(image, nsp, z)) for z in zs))
        try:
            for i, z in enumerate(zs):
                yield Progress(i, len(zs), f"plane {i + 1}/{len(zs)}")
                if source is not None:
                    _, p = next(source)
                else:
                    p = self.predict_plane(plane_of(image, nsp, z), use_cache=use_cache)
                sl = (slice(None),) if z is None else (z,)
                labels[sl] = self.labels_from_proba(p)
                unc[sl] = uncertainty(p)
                if proba is not None:
                    proba[(slice(None),) + sl] = p
        finally:
            if source is not None:
                source.close()  # Cancel: stops the featurising thread
        yield Progress(len(zs), len(zs), "done")
        return SegmentationResult(labels, proba, unc, self.classes_.copy())

    def segment(self, image, *, channel_axis: int | None = None, probabilities: bool = True,
                use_cache: bool = False) -> SegmentationResult:
        """Segment an image or stack; see :meth:`iter_segment`."""
        return run(self.iter_segment(image, channel_axis=channel_axis, probabilities=probabilities,
                                     use_cache=use_cache))

    def predict(self, image, *, channel_axis: int | None = None) -> np.ndarray:
        """Class ids 1..K, uint8, spatial shape of ``image``."""
        return self.segment(image, channel_axis=channel_axis, probabilities=False).labels

    def predict_proba(self, image, *, channel_axis: int | None = None) -> np.ndarray:
        """Class probabilities, (K, *spatial) float16, in ``classes_`` order."""
        return self.segment(image, channel_axis=channel_axis).probabilities

    # -- files and persistence (implemented in batch.py and _persist.py) --------------
    def iter_apply_file(self, input_path, output_path, **kwargs):
        """Segment one image file plane by plane into a TIFF or OME-Zarr output (resumable);
        keywords and behaviour: :func:`napari_vitseg.pipeline.batch.iter_apply_file`."""
        from .batch import iter_apply_file

        return (yield from iter_apply_file(self, input_path, output_path, **kwargs))

    def iter_apply_files(self, inputs: Sequence, output_dir, **kwargs):
        """Segment files and folders into ``output_dir``; keywords and behaviour:
        :func:`napari_vitseg.pipeline.batch.iter_apply_files`."""
        from .batch import iter_apply_files

        return (yield from iter_apply_files(self, inputs, output_dir, **kwargs))

    def class_table(self) -> list[dict]:
        """Class ids of the fitted model with their names and colours (as in the classifier file).

        Returns
        -------
        list of dict
            ``{'id': int, 'name': str, 'color': '#rrggbb'}`` per class of ``classes_``.
        """
        self._check_fitted()
        return [{"id": int(c), "name": self._config.class_name(c), "color": self._config.class_color(c)}
                for c in self.classes_]

    def save(self, path, *, inputs=()):
        """Save as one classifier file; see :func:`napari_vitseg.pipeline._persist.save_segmenter`.

        Returns
        -------
        pathlib.Path
        """
        from ._persist import save_segmenter

        return save_segmenter(self, path, inputs=inputs)

    @classmethod
    def load(cls, path, **kwargs) -> Segmenter:
        """Load a classifier file; see :func:`napari_vitseg.pipeline._persist.load_segmenter`.

        ``prediction`` (keyword) sets :attr:`prediction` of the loaded segmenter (it is not in the file).
        """
        from ._persist import load_segmenter

        prediction = kwargs.pop("prediction", None)
        seg = load_segmenter(path, **kwargs)
        seg.prediction = prediction
        return seg
