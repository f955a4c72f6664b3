"""Saving and loading a :class:`~napari_vitseg.pipeline.segmenter.Segmenter` as one classifier file.

The zip layout and its safety checks (no pickles, trusted types only) are
:mod:`napari_vitseg.classifiers._file`; this module maps a segmenter to that file's metadata
and back: the :class:`~napari_vitseg.pipeline.segmenter.SegmenterConfig` (feature config,
classifier kind and parameters, class table), the feature names, the backbone's identity and
the ViT PCA basis. Loading refuses files made for another feature config, features that this
version computes differently, or backbone weights other than those the classifier was
trained with.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from .. import __version__
from .._validation import VitsegError
from ..classifiers import save_classifier_file
from ..classifiers._file import load_classifier_stages
from ..features.config import FeatureConfig
from .segmenter import Segmenter, SegmenterConfig, default_class_color, default_class_name

__all__ = ["segmenter_metadata", "save_segmenter", "load_segmenter", "config_from_metadata"]


def segmenter_metadata(seg: Segmenter) -> dict:
    """The JSON metadata written to the classifier file of a fitted segmenter.

    Returns
    -------
    dict
        package and version, creation time, feature config and names, channels, backbone
        identity, class table and training statistics (the classifier section is added by
        :func:`napari_vitseg.classifiers.save_classifier_file`).

    Raises
    ------
    VitsegError
        If ``seg`` is not fitted.
    """
    table = seg.class_table()
    meta = {
        "package": "napari-vitseg",
        "package_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "feature_config": seg.feature_config.to_dict(),
        "feature_names": seg.featurizer.feature_names(seg.n_channels_),
        "n_channels": int(seg.n_channels_),
        "backbone": seg.featurizer.backbone_identity,
        "classes": table,
        "training": seg.training_stats_,
    }
    if seg.n_stages > 1:
        from ._autocontext import CONTEXT_FAMILIES, CONTEXT_SIGMAS, N_FOLDS, context_feature_names

        ctx = context_feature_names(seg.classes_)
        meta["feature_names"] = meta["feature_names"] + ctx  # those of the last stage
        meta["autocontext"] = {"stages": seg.n_stages, "folds": N_FOLDS, "context_sigmas": list(CONTEXT_SIGMAS),
                               "context_families": list(CONTEXT_FAMILIES), "context_names": ctx}
    if seg._refine_rows:
        from ._boundary import FINE_MAX_SIGMA

        meta["boundary"] = {"rows": seg.boundary_refinement, "max_sigma": FINE_MAX_SIGMA,
                            "columns": [int(c) for c in seg.boundary_columns_],
                            "majority": int(seg.boundary_majority_)}
    return meta


def save_segmenter(seg: Segmenter, path, *, inputs=()) -> Path:
    """Save a fitted segmenter as one classifier file (zip of JSON metadata + skops / XGBoost model).

    Written under a temporary name and renamed when complete.

    Parameters
    ----------
    seg : Segmenter
        Fitted.
    path : str or pathlib.Path
        Destination, conventionally ``*.vitseg``.
    inputs : iterable of path, optional
        Files the classifier was trained from: never overwritten.

    Returns
    -------
    pathlib.Path
    """
    meta = segmenter_metadata(seg)
    arrays = seg.featurizer.pca_.to_arrays() if seg.featurizer.pca_ is not None else None
    chain = seg._stages()
    return save_classifier_file(path, chain[-1], meta, arrays=arrays, inputs=inputs, stages=chain[:-1],
                                boundary=seg.boundary_classifier_ if seg._refine_rows else None)


def config_from_metadata(meta: dict, estimator, path) -> SegmenterConfig:
    """The :class:`SegmenterConfig` stored in a classifier file's metadata.

    Class ids missing from the class table get the default name and colour.

    Raises
    ------
    VitsegError
        No valid feature config.
    """
    try:
        features = FeatureConfig.from_dict(meta["feature_config"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, VitsegError):
            raise VitsegError(f"{str(path)!r}: {e}") from None
        raise VitsegError(f"{str(path)!r} has no valid feature config ({type(e).__name__}: {str(e)[:100]}); "
                          "save the classifier again.") from None
    if features.spatial == "auto":  # a trained model always stores what 'auto' chose
        raise VitsegError(f"{str(path)!r} has feature config spatial 'auto', which no trained model stores (the file "
                          "was edited or damaged); train and save the classifier again.")
    table = {c["id"]: c for c in meta.get("classes", [])}
    n = max(table, default=0)
    names = tuple(table[i]["name"] if i in table else default_class_name(i) for i in range(1, n + 1))
    colors = tuple(table[i]["color"] if i in table else default_class_color(i) for i in range(1, n + 1))
    ac = meta.get("autocontext") or {}
    boundary = meta.get("boundary") or {}  # files without it (format <= 2) predict as they always did
    return SegmenterConfig(features, estimator.kind, estimator.get_params(), names or None, colors or None,
                           int(ac.get("stages", 1)), int(boundary.get("rows", 0)))


def _random_weights_backbone(meta: dict, path, allow: bool, device):
    stored = meta.get("backbone") or {}
    if not stored or stored.get("pretrained", True):
        return None
    if not allow:
        raise VitsegError(
            f"{str(path)!r} was trained on a backbone with random weights (testing only); retrain it with "
            "pretrained weights."
        )
    from ..backbones import create_backbone

    return create_backbone(stored["name"], pretrained=False, seed=0, device=device or "cpu")


def load_segmenter(path, *, backbone=None, device=None, expected_config: FeatureConfig | None = None,
                   cache=None, cache_bytes: int = 4 * 2**30, allow_random_weights: bool = False) -> Segmenter:
    """Load a classifier file as a fitted :class:`Segmenter`.

    Parameters
    ----------
    path : str or pathlib.Path
    backbone : ViTBackbone, optional
        Use this backbone instead of loading its pretrained weights (tests).
    device : str, optional
        torch device for the ViT.
    expected_config : FeatureConfig, optional
        Refuse the file unless it was made with exactly this feature config.
    cache : FeatureCache, optional
        A feature cache to share (the napari widget's).
    cache_bytes : int
        Byte budget of a new cache when ``cache`` is not given.
    allow_random_weights : bool
        Accept a classifier trained on a random-weights backbone (tests and method checks
        only) and rebuild that backbone with the same seed.

    Returns
    -------
    Segmenter

    Raises
    ------
    VitsegError
        Pickles, truncated or foreign files, a feature config other than ``expected_config``,
        feature names that this version computes differently, backbone weights whose SHA-256
        differs from those the classifier was trained with, or random-weights classifiers
        without ``allow_random_weights``.
    """
    chain, meta, arrays = load_classifier_stages(path)
    est = chain[-1]
    config = config_from_metadata(meta, est, path)
    if expected_config is not None and expected_config != config.features:
        a, b = expected_config.to_dict(), config.features.to_dict()
        diff = {k: (a[k], b[k]) for k in a if a[k] != b.get(k)}
        raise VitsegError(
            f"{str(path)!r} was made for another feature config; differences (expected, file): {diff}."
        )
    if backbone is None:
        backbone = _random_weights_backbone(meta, path, allow_random_weights, device)
    seg = Segmenter.from_config(config, backbone=backbone, device=device, cache=cache, cache_bytes=cache_bytes)
    seg.n_channels_ = int(meta.get("n_channels", 1))
    want = meta.get("feature_names")
    have = seg.featurizer.feature_names(seg.n_channels_)
    ac = meta.get("autocontext")
    if ac is not None:
        from ._autocontext import CONTEXT_FAMILIES, CONTEXT_SIGMAS, context_feature_names

        ctx = context_feature_names(est.classes_)
        if (list(ac["context_names"]) != ctx or tuple(ac["context_sigmas"]) != CONTEXT_SIGMAS
                or tuple(ac["context_families"]) != CONTEXT_FAMILIES):
            raise VitsegError(
                f"{str(path)!r} was trained on auto-context features this napari-vitseg computes differently "
                f"(sigmas {ac['context_sigmas']}, families {ac['context_families']}); retrain the classifier."
            )
        have = have + ctx
    if want is not None and list(want) != have:
        missing = sorted(set(want) - set(have))[:5]
        extra = sorted(set(have) - set(want))[:5]
        raise VitsegError(
            f"{str(path)!r} was trained on features this napari-vitseg computes differently "
            f"(in the file only: {missing}; computed only here: {extra}); retrain the classifier."
        )
    stored = meta.get("backbone")
    if stored is not None:
        have_id = seg.featurizer.backbone_identity
        if stored.get("weights_sha256") != have_id["weights_sha256"]:
            raise VitsegError(
                f"{str(path)!r} was trained with {stored.get('name')} weights of SHA-256 "
                f"{stored.get('weights_sha256')}, but the weights found here have {have_id['weights_sha256']}; "
                "use the same weights file (vitseg weights list) or retrain."
            )
    if arrays:
        from ..features.vit import PCAReducer

        seg.featurizer.pca_ = PCAReducer.from_arrays(arrays)
    boundary = meta.get("boundary")
    if boundary is not None:
        from ._boundary import FINE_MAX_SIGMA, fine_columns

        cols = fine_columns(have[: len(have) - len(ctx) if ac is not None else len(have)], boundary["max_sigma"])
        if boundary["max_sigma"] != FINE_MAX_SIGMA or list(cols) != list(boundary["columns"]):
            raise VitsegError(
                f"{str(path)!r} refines boundaries with feature columns this napari-vitseg chooses differently "
                f"(fine scales up to {boundary['max_sigma']} px); retrain the classifier."
            )
    seg.boundary_classifier_ = boundary["estimator"] if boundary is not None else None
    seg.boundary_columns_ = np.asarray(boundary["columns"] if boundary is not None else [], dtype=np.int64)
    # format 3 (no majority filter) predicts as it did
    seg.boundary_majority_ = int(boundary.get("majority") or 1) if boundary is not None else 1
    seg.classifier_ = est
    seg.stage_classifiers_ = chain
    seg.classes_ = est.classes_
    seg.training_stats_ = meta.get("training", {})
    # files of format 1 (napari-vitseg 0.1) were applied pixel by pixel: they keep predicting exactly as
    # they did unless coarse-to-fine is asked for (Segmenter.prediction / $VITSEG_PREDICTION)
    seg.default_prediction_ = "exact" if int(meta.get("format_version", 1)) < 2 else "coarse-to-fine"
    return seg

