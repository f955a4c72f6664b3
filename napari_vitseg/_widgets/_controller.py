"""Headless state and jobs of the segmentation widget (no Qt, no napari).

:class:`SegmentationController` holds what the widget's fields describe (feature config,
classifier and its parameters, class names and colours), one feature cache shared by every
classifier it trains, and the current model. Its jobs are generators, like the library's:
they yield :class:`~napari_vitseg._progress.Progress`, :class:`ModelReady` (a newly trained
or loaded model) and :class:`PlaneUpdate` (a prediction of one plane to display), and return
their result. The widget runs them in ``thread_worker`` and only draws what they yield; the
tests and ``benchmarks/bench_live.py`` can run the same jobs without a viewer.

Live mode
---------
Live retraining uses a small random forest (:data:`LIVE_PARAMS`: 16 trees of depth <= 10,
at most 1,000 labelled pixels per class, drawn at random). On a 1024 x 1024 plane with cached
classical features it fits in ~0.15-0.3 s and predicts in ~0.4-0.8 s on 2 busy CPU cores,
against ~4 s for the default 100 full-depth trees; on the TEM nanoparticle sample it scores
the same mIoU (0.94) as the full model. Planes above :data:`COARSE_PIXELS` are first predicted
on every second row and column (a quarter of the pixels) and shown upsampled at once, then
refined at full resolution. The full-quality model (the classifier fields) is trained by
*Train*, and by *Save*, *Apply to stack* and *Apply to files* when the current model is a
live preview.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._progress import Progress
from .._validation import VitsegError
from ..features.cache import content_digest
from ..features.config import FeatureConfig
from ..pipeline import DEFAULT_COLORS, Segmenter, as_channels_last, uncertainty
from ..pipeline.batch import iter_apply_files

__all__ = [
    "LIVE_PARAMS",
    "COARSE_PIXELS",
    "RANDOM_WEIGHTS_ENV",
    "ModelReady",
    "PlaneUpdate",
    "Status",
    "SegmentationController",
]

#: Classifier parameters of the live preview model, per classifier kind.
LIVE_PARAMS = {
    "rf": {"n_estimators": 16, "max_depth": 10, "max_samples_per_class": 1000},
    "xgb": {"n_estimators": 20, "max_depth": 4, "max_samples_per_class": 1000},
}
#: Live predictions of planes with more pixels than this show a stride-2 preview first.
COARSE_PIXELS = 600_000
#: Environment variable that lets the widget build backbones with random weights (testing only).
RANDOM_WEIGHTS_ENV = "VITSEG_ALLOW_RANDOM_WEIGHTS"


def random_weights_allowed() -> bool:
    """Whether ``VITSEG_ALLOW_RANDOM_WEIGHTS=1`` is set."""
    return os.environ.get(RANDOM_WEIGHTS_ENV, "") == "1"


def labelled_classes(scribbles: np.ndarray) -> list[int]:
    """Class ids (> 0) present in ``scribbles``."""
    a = np.asarray(scribbles)
    if a.dtype == np.uint8:
        counts = np.bincount(a.ravel(), minlength=256)
        return [int(i) for i in np.flatnonzero(counts[1:]) + 1]
    u = np.unique(a)
    return [int(v) for v in u if v > 0]


@dataclass
class ModelReady:
    """Yielded by a job when it has a new model (trained or loaded)."""

    segmenter: Segmenter
    live: bool
    digest: str | None
    description: str
    loaded_from: str | None = None


@dataclass
class PlaneUpdate:
    """A prediction of one plane for the widget to display.

    Attributes
    ----------
    z : int or None
        Plane index of a stack, ``None`` for a 2D image.
    labels : ndarray, (Y, X) uint8
    uncertainty : ndarray, (Y, X) float32
        1 - max probability.
    probabilities : ndarray, (K, Y, X) float32, or None
    classes : ndarray of int, (K,)
    coarse : bool
        A stride-2 preview, to be replaced by the full-resolution prediction.
    """

    z: int | None
    labels: np.ndarray
    uncertainty: np.ndarray
    probabilities: np.ndarray | None
    classes: np.ndarray
    coarse: bool = False


@dataclass
class Status:
    """A message for the widget's status line (no error)."""

    msg: str


@dataclass
class JobInputs:
    """What a job needs from the viewer, captured on the UI thread when it starts."""

    image: object = None
    channel_axis: int | None = None
    scribbles: np.ndarray | None = None
    z: int | None = None
    probabilities: bool = False
    extra: dict = field(default_factory=dict)


class SegmentationController:
    """State of the segmentation widget and its job generators.

    Parameters
    ----------
    cache_bytes : int
        Byte budget of the feature cache shared by every model trained here.

    Attributes
    ----------
    feature_config : FeatureConfig
    classifier : {'rf', 'xgb'}
    classifier_params : dict
        Parameters of the full-quality model (*Train*).
    live_fast : bool
        Live mode trains the small :data:`LIVE_PARAMS` model (default) instead of the full one.
    class_names, class_colors : list of str
        Names and hex colours of classes 1..K.
    random_weights : bool
        Build ViT backbones with random weights (only when :func:`random_weights_allowed`).
    model : ModelReady or None
        The current model.
    n_trainings : int
        Models trained so far (live and full).
    """

    def __init__(self, cache_bytes: int = 4 * 2**30):
        from ..features.cache import FeatureCache

        self.feature_config = FeatureConfig()
        self.classifier = "rf"
        self.classifier_params: dict = {}
        self.live_fast = True
        self.class_names: list[str] = ["class 1", "class 2"]
        self.class_colors: list[str] = list(DEFAULT_COLORS[:2])
        self.random_weights = False
        self.cache = FeatureCache(cache_bytes)
        self.cache_bytes = int(cache_bytes)
        self.model: ModelReady | None = None
        self.n_trainings = 0
        self._featurizer = None
        self._backbones: dict = {}

    # -- models ---------------------------------------------------------------------
    def live_params(self) -> dict:
        """Classifier parameters of a live model."""
        if not self.live_fast:
            return dict(self.classifier_params)
        p = dict(self.classifier_params)
        p.update(LIVE_PARAMS[self.classifier])
        for key in ("n_estimators", "max_depth"):
            user = self.classifier_params.get(key)
            if user is not None and user < p[key]:
                p[key] = user
        return p

    def describe(self, live: bool) -> str:
        """Short description of the model that ``new_segmenter(live)`` builds."""
        p = self.live_params() if live else self.classifier_params
        kind = {"rf": "random forest", "xgb": "XGBoost"}[self.classifier]
        n = p.get("n_estimators", 100)
        depth = p.get("max_depth", None if self.classifier == "rf" else 6)
        what = "live preview" if live and self.live_fast else "full model"
        return f"{what}: {kind}, {n} trees, depth {depth if depth else 'unlimited'}"

    def _backbone(self, name: str):
        """A random-weights backbone (testing only), built once per name."""
        if name not in self._backbones:
            from ..backbones import create_backbone

            self._backbones[name] = create_backbone(name, pretrained=False, seed=0)
        return self._backbones[name]

    def featurizer(self, config: FeatureConfig | None = None):
        """The shared :class:`~napari_vitseg.features.stack.Featurizer` of ``config``.

        One featurizer per config is kept, so that a ViT is built once and a fitted ViT PCA
        basis stays the same for every model trained on the cached features.
        """
        from ..features.stack import Featurizer

        config = config or self.feature_config
        if self._featurizer is None or self._featurizer.config != config:
            backbone = None
            if config.backbone is not None:
                old = self._featurizer
                if self.random_weights:
                    backbone = self._backbone(config.backbone)
                elif old is not None and old.config.backbone == config.backbone and old.built_backbone is not None:
                    backbone = old.built_backbone  # reuse the ViT already built (never build it here)
            if config.backbone is not None and config.vit_pca:
                self.cache.clear()  # cached features depend on the PCA basis, which is refitted
            self._featurizer = Featurizer(config, backbone=backbone)
        return self._featurizer

    def new_segmenter(self, live: bool) -> Segmenter:
        """An unfitted :class:`Segmenter` that shares this controller's cache and featurizer."""
        params = self.live_params() if live else dict(self.classifier_params)
        return Segmenter(self.feature_config, self.classifier, params, class_names=list(self.class_names),
                         class_colors=list(self.class_colors), featurizer=self.featurizer(), cache=self.cache)

    def adopt(self, ready: ModelReady) -> None:
        """Make ``ready`` the current model (on the UI thread)."""
        self.model = ready
        seg = ready.segmenter
        if ready.loaded_from is not None:
            self.feature_config = seg.feature_config
            self.classifier = seg.classifier
            self.classifier_params = dict(seg.classifier_params)
            if seg.class_names:
                self.class_names = list(seg.class_names)
                self.class_colors = list(seg.class_colors or DEFAULT_COLORS[: len(seg.class_names)])

    # -- jobs -----------------------------------------------------------------------
    def iter_train(self, inputs: JobInputs, *, live: bool, predict: bool = True):
        """Train on the scribbles, then predict the current plane.

        Yields
        ------
        Progress, Status, ModelReady, PlaneUpdate

        Returns
        -------
        ModelReady or None
            ``None`` when a live job found nothing to do (fewer than two classes painted).

        Raises
        ------
        VitsegError
            No scribbles of two classes (full training), or the library's input errors.
        """
        scribbles = inputs.scribbles
        if scribbles is None:
            raise VitsegError("There is no scribbles layer: press 'New scribbles layer' and paint some strokes.")
        classes = labelled_classes(scribbles)
        if len(classes) < 2:
            msg = (f"Paint scribbles of at least two classes to train (found {classes or 'none'}); "
                   "pick a class in the class list and paint on the image.")
            if live:
                yield Status("Live: " + msg)
                return None
            raise VitsegError(msg)
        digest = content_digest(scribbles)
        cur = self.model
        if live and cur is not None and cur.digest == digest and cur.loaded_from is None:
            ready = cur  # nothing changed since the current model was trained (e.g. undo + redo)
        else:
            seg = self.new_segmenter(live)
            yield Progress(0, 1, "training")
            yield from seg.iter_fit(inputs.image, scribbles, channel_axis=inputs.channel_axis)
            self.n_trainings += 1
            ready = ModelReady(seg, live, digest, self.describe(live))
            yield ready
        if predict:
            yield from self.iter_predict_plane(ready.segmenter, inputs, coarse=live)
        return ready

    def iter_predict_plane(self, seg: Segmenter, inputs: JobInputs, *, coarse: bool = False):
        """Predict the current plane (``inputs.z``), a stride-2 preview first when ``coarse``.

        Yields
        ------
        Progress, PlaneUpdate
        """
        img, nsp, _ = as_channels_last(inputs.image, inputs.channel_axis)
        z = inputs.z if nsp == 3 else None
        if nsp == 3 and (z is None or not 0 <= z < img.shape[0]):
            raise VitsegError(f"Plane {z} is outside the stack of {img.shape[0]} planes.")
        plane = np.asarray(img[z]) if nsp == 3 else np.asarray(img)
        ny, nx = plane.shape[:2]
        yield Progress(0, 2, "features and prediction")
        if coarse and ny * nx > COARSE_PIXELS:
            p = seg.predict_plane(plane, stride=2)
            lab = seg.labels_from_proba(p).repeat(2, 0).repeat(2, 1)[:ny, :nx]
            unc = uncertainty(p).repeat(2, 0).repeat(2, 1)[:ny, :nx]
            prob = p.repeat(2, 1).repeat(2, 2)[:, :ny, :nx] if inputs.probabilities else None
            yield PlaneUpdate(z, lab, unc, prob, seg.classes_.copy(), coarse=True)
        yield Progress(1, 2, "predicting")
        p = seg.predict_plane(plane, use_cache=True)
        yield PlaneUpdate(z, seg.labels_from_proba(p), uncertainty(p),
                          p if inputs.probabilities else None, seg.classes_.copy())
        yield Progress(2, 2, "done")

    def _iter_full_model(self, inputs: JobInputs):
        """The current model, or a full-quality one trained first when it is a live preview."""
        cur = self.model
        if cur is not None and not cur.live:
            return cur
        if inputs.scribbles is None or len(labelled_classes(inputs.scribbles)) < 2:
            if cur is not None:
                return cur
            raise VitsegError("No classifier yet: paint scribbles of two or more classes and press Train, "
                              "or load a classifier file.")
        yield Status("training the full-quality model first")
        ready = yield from self.iter_train(inputs, live=False, predict=False)
        return ready

    def iter_apply_stack(self, inputs: JobInputs):
        """Segment every plane of the image (the current plane first).

        Yields
        ------
        Progress, Status, ModelReady, PlaneUpdate (one per plane)

        Returns
        -------
        int
            Planes segmented.
        """
        ready = yield from self._iter_full_model(inputs)
        seg = ready.segmenter
        img, nsp, _ = as_channels_last(inputs.image, inputs.channel_axis)
        if nsp == 2:
            yield from self.iter_predict_plane(seg, JobInputs(inputs.image, inputs.channel_axis,
                                                              probabilities=inputs.probabilities))
            return 1
        nz = img.shape[0]
        zs = list(range(nz))
        if inputs.z is not None and 0 <= inputs.z < nz:
            zs.remove(inputs.z)
            zs.insert(0, inputs.z)
        for i, z in enumerate(zs):
            yield Progress(i, nz, f"plane {z + 1} ({i + 1}/{nz})")
            p = seg.predict_plane(np.asarray(img[z]), use_cache=False)
            yield PlaneUpdate(z, seg.labels_from_proba(p), uncertainty(p),
                              p if inputs.probabilities else None, seg.classes_.copy())
        yield Progress(nz, nz, "done")
        return nz

    def iter_apply_files(self, inputs: JobInputs, paths: Sequence, output_dir, *, suffix: str = "_seg",
                         probabilities: bool = False, skip_existing: bool = True):
        """Segment TIFF files (or the TIFFs of folders) into ``output_dir``, plane by plane.

        :func:`napari_vitseg.pipeline.batch.iter_apply_files` (output names, resume, atomic
        writes) with the current full-quality model; a cancelled file leaves no output behind.

        Yields
        ------
        Progress
            Fraction of the whole run in 1/1000 units.

        Returns
        -------
        list of pathlib.Path
        """
        ready = yield from self._iter_full_model(inputs)
        return (yield from iter_apply_files(ready.segmenter, paths, output_dir, suffix=suffix,
                                            probabilities=probabilities, skip_existing=skip_existing))

    def iter_save(self, inputs: JobInputs, path):
        """Save the current model (a full-quality one, trained first if it is a live preview).

        Returns
        -------
        pathlib.Path
        """
        ready = yield from self._iter_full_model(inputs)
        seg = ready.segmenter
        seg.set_classes(self.class_names, self.class_colors)
        yield Status(f"saving {Path(path).name}")
        return seg.save(path)

    def iter_load(self, inputs: JobInputs, path):
        """Load a classifier file and predict the current plane with it.

        Yields
        ------
        Progress, ModelReady, PlaneUpdate

        Returns
        -------
        ModelReady
        """
        yield Progress(0, 2, f"loading {Path(path).name}")
        from ..classifiers import read_metadata

        stored = read_metadata(Path(path)).get("backbone") or {}
        backbone = None
        random = bool(stored) and not stored.get("pretrained", True)
        if random:
            if not random_weights_allowed():
                raise VitsegError(
                    f"{str(path)!r} was trained on a backbone with random weights (testing only); set "
                    f"{RANDOM_WEIGHTS_ENV}=1 to load it, or retrain with pretrained weights."
                )
            backbone = self._backbone(stored["name"])
        seg = Segmenter.load(path, backbone=backbone, cache=self.cache)
        if seg.feature_config.backbone is not None and seg.feature_config.vit_pca:
            self.cache.clear()  # cached ViT features were reduced with another PCA basis
        self._featurizer = seg.featurizer
        self.random_weights = random
        ready = ModelReady(seg, False, None, f"loaded {Path(path).name} ({seg.classifier})", loaded_from=str(path))
        yield ready
        if inputs.image is not None:
            yield from self.iter_predict_plane(seg, inputs)
        return ready
