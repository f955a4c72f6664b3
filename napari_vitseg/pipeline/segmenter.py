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
    check_option,
)
from ..classifiers import CLASSIFIERS, make_classifier
from ..features.cache import FeatureCache, content_digest
from ..features.config import FeatureConfig
from ..features.stack import Featurizer
from .scribbles import ScribbleIndex

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

    Raises
    ------
    VitsegError
        Unknown classifier kind or parameter, a parameter out of range, names longer than 200
        characters, colours that are not colours.

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

    def __post_init__(self):
        if not isinstance(self.features, FeatureConfig):
            raise VitsegError(f"features must be a FeatureConfig; got {type(self.features).__name__}.")
        check_option(self.classifier, CLASSIFIERS, "classifier")
        object.__setattr__(self, "classifier_params", dict(self.classifier_params or {}))
        if self.class_names is not None:
            names = tuple(str(x) for x in self.class_names)
            if len(names) > 255 or any(len(n) > 200 for n in names):
                raise VitsegError("Give at most 255 class names of at most 200 characters each.")
            object.__setattr__(self, "class_names", names)
        if self.class_colors is not None:
            from matplotlib.colors import to_hex

            try:
                colors = tuple(to_hex(c) for c in self.class_colors)
            except ValueError as e:
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
    if not hasattr(image, "ndim") or not hasattr(image, "dtype"):
        image = np.asarray(image)
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


def plane_of(image, n_spatial: int, z: int | None) -> np.ndarray:
    """Plane ``z`` of a channels-last stack as numpy (the whole image for 2D, ``z`` ignored)."""
    return np.asarray(image[z]) if n_spatial == 3 else np.asarray(image)


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

    Attributes
    ----------
    config : SegmenterConfig
        Everything above that describes the model (stored in the classifier file).
    featurizer : Featurizer
    cache : FeatureCache
    classifier_ : RandomForestPixelClassifier or XGBoostPixelClassifier
        The fitted classifier.
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
                 class_colors: Sequence[str] | None = None, featurizer: Featurizer | None = None,
                 cache: FeatureCache | None = None, backbone=None, device=None,
                 cache_bytes: int = 4 * 2**30):
        config = SegmenterConfig(feature_config if feature_config is not None else FeatureConfig(),
                                 classifier, classifier_params or {}, class_names, class_colors)
        self._config = config
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
                   class_names=config.class_names, class_colors=config.class_colors, **kwargs)

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
        digest = digest or content_digest(plane)
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
        total = len(planes) + 1
        xs, ys = [], []
        # the ViT PCA basis (if any) is fitted on the first training plane and then kept, so that
        # retraining after more strokes reuses cached features; only planes with scribbles are read
        for i, z in enumerate(planes):
            yield Progress(i, total, f"features of plane {z}")
            plane = plane_of(image, nsp, z)
            check_finite(plane, "image")
            rows, cols, lab = index.plane(z)
            feats = self.plane_features(plane)
            xs.append(feats[rows, cols])
            ys.append(lab)
        X = np.concatenate(xs)
        y = np.concatenate(ys)
        yield Progress(total - 1, total, f"training {self.classifier} on {len(y)} labelled pixels")
        names = self.featurizer.feature_names(nc)
        clf = make_classifier(self.classifier, **self.classifier_params).fit(X, y, feature_names=names)
        self.classifier_ = clf
        self.classes_ = clf.classes_
        self.n_channels_ = nc
        ids, counts = np.unique(y, return_counts=True)
        self.training_stats_ = {
            "labelled_pixels": {str(int(i)): int(c) for i, c in zip(ids, counts, strict=True)},
            "image_shape": [int(s) for s in image.shape],
            "n_training_planes": len(planes),
        }
        yield Progress(total, total, "trained")
        return self

    def fit(self, image, scribbles, *, channel_axis: int | None = None) -> Segmenter:
        """Train on scribbles; see :meth:`iter_fit`. Returns ``self``."""
        return run(self.iter_fit(image, scribbles, channel_axis=channel_axis))

    # -- prediction -----------------------------------------------------------------
    def _check_fitted(self):
        if not self.is_fitted:
            raise VitsegError("The segmenter is not trained yet: paint scribbles and train it, or load a classifier.")

    def predict_plane(self, plane: np.ndarray, *, use_cache: bool = True, stride: int = 1, progress=None):
        """Probabilities of one plane.

        Parameters
        ----------
        plane : ndarray, (Y, X) or (Y, X, C)
        use_cache : bool
            Take/keep whole-plane features in the cache (live mode); otherwise the plane is
            processed in row strips with bounded memory (batch mode).
        stride : int
            Predict only every ``stride``-th pixel along rows and columns (a fast preview for
            live mode; features are still computed, or taken from the cache, at full resolution).

        Returns
        -------
        ndarray, (K, ceil(Y / stride), ceil(X / stride)) float32
        """
        self._check_fitted()
        nc = 1 if plane.ndim == 2 else plane.shape[-1]
        if nc != self.n_channels_:
            raise VitsegError(
                f"The classifier was trained on images with {self.n_channels_} channel(s); this one has {nc}. "
                "Set the channel axis (channel_axis, CLI --channel-axis) to match the training image."
            )
        check_finite(plane, "image")
        if stride > 1:
            feats = self.plane_features(plane, progress=progress)[::stride, ::stride]
            k = len(self.classes_)
            p = self.classifier_.predict_proba(feats.reshape(-1, feats.shape[-1]))
            return np.ascontiguousarray(p.T.reshape(k, *feats.shape[:2]))
        ny, nx = plane.shape[:2]
        k = len(self.classes_)
        out = np.empty((k, ny, nx), dtype=np.float32)
        nf = self.featurizer.n_features(nc)
        digest = content_digest(plane)
        cached = None
        if use_cache and ny * nx * nf * 4 <= self.cache.max_bytes:  # one lookup, computed on a miss
            cached = self.plane_features(plane, digest=digest, progress=progress)
        if cached is not None:
            bands = [(0, ny)]
        else:
            step = self.featurizer.strip_rows(plane.shape, nc)
            bands = [(y, min(ny, y + step)) for y in range(0, ny, step)]
        rows_per_chunk = max(1, (1 << 22) // max(nx, 1))  # ~4M pixels per predict call
        for y0, y1 in bands:
            feats = cached if cached is not None else self.featurizer.compute(plane, rows=(y0, y1), key=digest)
            for r0 in range(0, y1 - y0, rows_per_chunk):
                r1 = min(y1 - y0, r0 + rows_per_chunk)
                p = self.classifier_.predict_proba(feats[r0:r1].reshape(-1, nf))
                out[:, y0 + r0:y0 + r1] = p.T.reshape(k, r1 - r0, nx)
        return out

    def predict_rows(self, plane: np.ndarray, rows: tuple[int, int], *, digest: str | None = None,
                     use_cache: bool = True) -> np.ndarray:
        """Probabilities of the rows ``[y0, y1)`` of a plane (e.g. the part visible in a viewer).

        The band's features (with the halo the featurizer takes from the plane, so they equal
        the whole plane's) are cached under the plane's digest and the band.

        Parameters
        ----------
        plane : ndarray, (Y, X) or (Y, X, C)
        rows : (int, int)
            First and one-past-last row.
        digest : str, optional
            Content hash of the plane (computed when omitted).
        use_cache : bool

        Returns
        -------
        ndarray, (K, y1 - y0, X) float32
        """
        self._check_fitted()
        nc = 1 if plane.ndim == 2 else plane.shape[-1]
        if nc != self.n_channels_:
            return self.predict_plane(plane)  # raises the channel-count message
        check_finite(plane, "image")
        y0, y1 = (int(r) for r in rows)
        digest = digest or content_digest(plane)
        key = (("rows", digest, y0, y1), self.featurizer.state_key)
        feats = self.cache.get(key) if use_cache else None
        if feats is None:
            feats = self.featurizer.compute(plane, rows=(y0, y1), key=digest)
            if use_cache:
                self.cache.put(key, feats)
        p = self.classifier_.predict_proba(feats.reshape(-1, feats.shape[-1]))
        return np.ascontiguousarray(p.T.reshape(len(self.classes_), y1 - y0, plane.shape[1]), dtype=np.float32)

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
            Keep the features of each plane in the cache.

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
        for i, z in enumerate(zs):
            yield Progress(i, len(zs), f"plane {i + 1}/{len(zs)}")
            plane = plane_of(image, nsp, z)
            p = self.predict_plane(plane, use_cache=use_cache)
            sl = (slice(None),) if z is None else (z,)
            labels[sl] = self.labels_from_proba(p)
            unc[sl] = uncertainty(p)
            if proba is not None:
                proba[(slice(None),) + sl] = p
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
        """Load a classifier file; see :func:`napari_vitseg.pipeline._persist.load_segmenter`."""
        from ._persist import load_segmenter

        return load_segmenter(path, **kwargs)
