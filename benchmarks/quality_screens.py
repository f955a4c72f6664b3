"""Side screens of segmentation-quality ideas on the shared sets (issue 10), beside bench_quality.py.

Run ``python benchmarks/quality_screens.py [--screens ...] [--sets ...] [--quick]``. Each screen
asks one question about the default pipeline, always on the same footing: the default classical
features of every plane (:meth:`napari_vitseg.Segmenter.plane_features`, computed once per set),
the default random forest (:func:`napari_vitseg.classifiers.make_classifier`, classifier seeds 0,
1, 2), exact prediction of every pixel, and the project's mIoU against the dense ground truth
(every pixel, scribbled ones included, as in ``bench_quality.py``). The ``base`` column of every
screen is that default; a screen changes one thing:

- ``postprocess``: the labels from the forest's probabilities other than by the argmax:
  seeded watershed of the image's gradient magnitude (Sobel of a Gaussian, sigma 1 px) from the
  pixels whose top probability is >= 0.6 / 0.8 (``watershed_t0.6`` / ``_t0.8``); the same
  watershed re-deciding only the pixels within 1 px of a label boundary (``watershed_band1``);
  a guided filter of each probability map with the image as guide (He, Sun & Tang, ECCV 2010;
  radius 2 px, eps 1e-3 of the image's range squared: ``guided_r2``); and the class priors of
  the image estimated by classify-and-count (Forman 2008) instead of the forest's uniform ones
  (``prior_cc``).
- ``selftrain``: self-training (Yarowsky 1995; pseudo-labels): the forest labels every pixel;
  pixels it labels with probability >= t join the training set with that label, ``x`` times as
  many per class as the class has scribbled pixels (``t0.9_x1``, ``t0.9_x4``, ``t0.7_x4``;
  ``t0.9_x4_near5`` only from pixels within 5 px of a label boundary), and a second forest
  is trained on scribbles + pseudo-labels.
- ``families``: one more filter family, on the intensity (grey mean for RGB) scaled to uint8
  by its 0.5-99.5 percentiles: ``+median`` (scikit-image rank median, disks of radius 1, 2, 4,
  8), ``+entropy`` (rank entropy, radius 2, 4, 8), ``+lbp`` (uniform local binary patterns,
  8 points at radius 1, 2, 4, box-averaged), ``+local_norm`` ((G_1 - G_s) / local sd at s =
  4, 8, 16).
- ``classifiers``: the same features to scikit-learn's logistic regression (standardised,
  class-balanced), a 64-64 MLP and histogram gradient boosting (class-balanced), against the
  forest.
- ``scales``: the largest Gaussian scale kept (channels with sigma <= 1, 2, 4, 8, 16 px), with
  the stroke-grouped 3-fold cross-validation on the scribbles that a per-image choice would
  have to rely on (folds by connected stroke:
  :func:`napari_vitseg.pipeline._autocontext.stroke_folds`; balanced accuracy and log-loss of
  the out-of-fold probabilities, classifier seed 0).
- ``large_scales``: which families the 8 and 16 px scales are needed for: every channel of
  sigma <= 4 px and the bilateral ones, plus the 8 and 16 px channels of the families named.
- ``boundary``: how the boundary refinement's fine-scale forest (``napari_vitseg.pipeline.
  _boundary``: the fine channels, half the trees) enters the band within 2 px of the first
  forest's label changes: replacing the first forest's probabilities there (``replace``: the
  rule of classifier files of format 3), the same with the first labels through a 3 / 5 / 7 px
  majority filter first (``majority5`` is the default since format 4), their average, their
  product (Kittler et al., IEEE TPAMI 1998), the product with the first forest's probabilities
  to the power 0.5, and replacing only where the fine forest's top probability is >= 0.6 /
  0.7. Besides mIoU it reports the fraction of scribbled pixels labelled as painted
  (``(scribble agreement)``), also on the sets without a ground truth that ``--scribble-sets``
  names (hand-painted strokes reach boundaries; the shared sets' strokes keep away from them).

- ``corrections``: one round of a user's corrections (``bench_quality.correction_scribbles``,
  strokes on the wrong regions of the default forest's result at classifier seed 0, the same
  strokes for every variant) and the 16 px gradient and structure-tensor channels, whose values
  at pixels no scribble resembles (next to bright objects) lie far outside the scribbles' range
  (docs/quality.md Run 15): ``base``; ``-grad,struct16`` without them; ``norm16`` with them
  divided by the 16 px Gaussian (squared for the structure tensor); ``-16`` without any 16 px
  channel; each from the first scribbles and after the round (``+1``).
- ``strokebag``: trees that each see a bootstrap of whole strokes (the cluster bootstrap: 10
  forests of 10 trees, each on each class's strokes drawn with replacement) against the default
  forest, whose trees draw pixels; from the first scribbles and after one round of corrections.

Output: per screen a set x variant table of mean mIoU over the seeds (± sd) and the mean over
sets, and a JSON of every number in ``benchmarks/results/quality_screens_<time>.json``.
``--quick`` crops every set to about 256 x 256 (``bench_quality.quick_crop``) and uses one seed:
a smoke run, not the benchmark's numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_quality as bq  # noqa: E402  (the sets, the crop and the metric of the benchmark)

SCREENS = ("postprocess", "selftrain", "families", "classifiers", "scales", "large_scales", "boundary", "corrections",
           "strokebag")
SEEDS = (0, 1, 2)


# -- the shared footing -------------------------------------------------------------------------
def set_features(ds: dict) -> dict:
    """Default features of every plane of a set, its scribbles and the channels' sigmas.

    Returns
    -------
    dict
        ``F`` (Z, Y, X, C) float32 (Z = 1 for a single image), ``scr`` (Z, Y, X) uint8,
        ``sigma`` (C,) float (0 for unscaled channels), ``names`` (C channel names),
        ``planes`` (list of (Y, X[, 3]) arrays).
    """
    from napari_vitseg import Segmenter
    from napari_vitseg.pipeline.segmenter import as_channels_last, plane_of

    seg = Segmenter()
    img, nsp, nc = as_channels_last(ds["image_arr"], ds["channel_axis"])
    zs = list(range(img.shape[0])) if ds["stack"] else [None]
    planes = [np.asarray(plane_of(img, nsp, z)) for z in zs]
    F = np.stack([seg.plane_features(p) for p in planes])
    names = seg.featurizer.feature_names(nc)
    sigma = np.array([float(m.group(1)) if (m := re.search(r"_s([\d.]+)", n)) else 0.0 for n in names])
    scr = ds["scr"] if ds["stack"] else ds["scr"][None]
    return {"F": F, "scr": scr, "sigma": sigma, "names": names, "planes": planes}


def forest(seed: int):
    """The default random forest with classifier seed ``seed``."""
    from napari_vitseg.classifiers import make_classifier

    return make_classifier("rf", random_state=seed)


def fit_predict(X, y, F, seed: int, clf=None):
    """Fit on (X, y), return (probabilities (n, K), classes (K,)) of every pixel of ``F``."""
    clf = clf if clf is not None else forest(seed)
    clf.fit(X, y)
    return np.asarray(clf.predict_proba(F.reshape(-1, F.shape[-1]))), np.asarray(clf.classes_)


def miou(labels, ds, shape) -> float:
    lab = np.asarray(labels).reshape(shape)
    return bq.score(lab if ds["stack"] else lab[0], ds)["miou"]


def image_u8(planes) -> tuple[list, list]:
    """Grey planes (float32) and the same scaled to uint8 by the 0.5-99.5 percentiles of all."""
    grey = [p.astype(np.float32).mean(-1) if p.ndim == 3 else p.astype(np.float32) for p in planes]
    lo, hi = np.percentile(np.stack(grey), [0.5, 99.5])
    u8 = [(np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8) for g in grey]
    return grey, u8


# -- post-processes -----------------------------------------------------------------------------
def _gradient(g):
    from scipy import ndimage as ndi
    from skimage.filters import sobel

    return sobel(ndi.gaussian_filter(g, 1.0))


def watershed_labels(P, grey, t: float | None = None, band: int | None = None):
    """Seeded watershed of the gradient magnitude; seeds = confident pixels or pixels > ``band``
    px from a label boundary. ``P`` (Z, K, Y, X); returns class indices (Z, Y, X)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    out = []
    for p, g in zip(P, grey, strict=True):
        am = p.argmax(0)
        if band is not None:
            fp = np.ones((2 * band + 1,) * 2, bool)
            keep = ndi.maximum_filter(am, footprint=fp) == ndi.minimum_filter(am, footprint=fp)
        else:
            keep = p.max(0) >= t
        out.append(watershed(_gradient(g), np.where(keep, am + 1, 0)) - 1)
    return np.stack(out)


def guided_labels(P, grey, r: int = 2, eps: float = 1e-3):
    """Guided filter (He et al. 2010) of each probability map, guide = the image scaled to [0, 1]."""
    from scipy import ndimage as ndi

    def box(a):
        return ndi.uniform_filter(a, 2 * r + 1, mode="reflect")

    out = []
    for p, g in zip(P, grey, strict=True):
        lo, hi = np.percentile(g, [0.5, 99.5])
        guide = np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1)
        mi = box(guide)
        vi = box(guide * guide) - mi * mi
        q = []
        for pk in p:
            mp = box(pk)
            a = (box(guide * pk) - mi * mp) / (vi + eps)
            q.append(box(a) * guide + box(mp - a * mi))
        out.append(np.argmax(q, 0))
    return np.stack(out)


def prior_cc_labels(P):
    """Posteriors re-weighted by the classify-and-count class fractions (forest prior uniform)."""
    k = P.shape[1]
    frac = np.bincount(P.argmax(1).ravel(), minlength=k) / P[:, 0].size
    return (P * np.maximum(frac, 1e-3)[None, :, None, None]).argmax(1)


def screen_postprocess(ds, fs, seeds):
    F, scr = fs["F"], fs["scr"]
    grey, _ = image_u8(fs["planes"])
    m = scr > 0
    rows = {k: [] for k in ("base", "watershed_t0.6", "watershed_t0.8", "watershed_band1", "guided_r2",
                            "prior_cc")}
    for seed in seeds:
        proba, classes = fit_predict(F[m], scr[m], F, seed)
        P = proba.reshape(*scr.shape, -1).transpose(0, 3, 1, 2)
        variants = {
            "base": P.argmax(1),
            "watershed_t0.6": watershed_labels(P, grey, t=0.6),
            "watershed_t0.8": watershed_labels(P, grey, t=0.8),
            "watershed_band1": watershed_labels(P, grey, band=1),
            "guided_r2": guided_labels(P, grey),
            "prior_cc": prior_cc_labels(P),
        }
        for k, idx in variants.items():
            rows[k].append(miou(classes[idx], ds, scr.shape))
    return rows


# -- self-training ------------------------------------------------------------------------------
SELFTRAIN = {"t0.9_x1": (0.9, 1, None), "t0.9_x4": (0.9, 4, None), "t0.7_x4": (0.7, 4, None),
             "t0.9_x4_near5": (0.9, 4, 5)}


def pseudo_labels(proba, classes, scr, y, t, mult, near, rng):
    """Indices (into the flattened pixels) and labels of the self-training pixels."""
    from scipy import ndimage as ndi

    lab = classes[proba.argmax(1)]
    cand = (proba.max(1) >= t) & (scr.ravel() == 0)
    if near:
        L = lab.reshape(scr.shape)
        close = np.stack([ndi.distance_transform_edt(ndi.maximum_filter(p, 3) == ndi.minimum_filter(p, 3)) <= near
                          for p in L])
        cand &= close.ravel()
    idx = []
    for k in classes:
        pool = np.flatnonzero(cand & (lab == k))
        idx.append(rng.choice(pool, min(pool.size, mult * int((y == k).sum())), replace=False))
    idx = np.concatenate(idx)
    return idx, lab[idx]


def screen_selftrain(ds, fs, seeds):
    F, scr = fs["F"], fs["scr"]
    m = scr > 0
    X, y = F[m], scr[m]
    flat = F.reshape(-1, F.shape[-1])
    rows = {k: [] for k in ("base", *SELFTRAIN)}
    for seed in seeds:
        proba, classes = fit_predict(X, y, F, seed)
        rows["base"].append(miou(classes[proba.argmax(1)], ds, scr.shape))
        for k, (t, mult, near) in SELFTRAIN.items():
            idx, lab = pseudo_labels(proba, classes, scr, y, t, mult, near, np.random.default_rng(seed))
            p2, c2 = fit_predict(np.concatenate([X, flat[idx]]), np.concatenate([y, lab]), F, seed)
            rows[k].append(miou(c2[p2.argmax(1)], ds, scr.shape))
    return rows


# -- extra filter families -----------------------------------------------------------------------
def extra_channels(name, g, b):
    """One family's channels of a grey plane ``g`` (float32) / ``b`` (uint8): list of (Y, X)."""
    from scipy import ndimage as ndi
    from skimage.feature import local_binary_pattern
    from skimage.filters import rank
    from skimage.morphology import disk

    if name == "+median":
        return [rank.median(b, disk(r)).astype(np.float32) for r in (1, 2, 4, 8)]
    if name == "+entropy":
        return [rank.entropy(b, disk(r)).astype(np.float32) for r in (2, 4, 8)]
    if name == "+lbp":
        return [ndi.uniform_filter(local_binary_pattern(b, 8, r, "uniform").astype(np.float32), 2 * r + 1)
                for r in (1, 2, 4)]
    if name == "+local_norm":
        g1, out = ndi.gaussian_filter(g, 1.0), []
        for s in (4, 8, 16):
            mean = ndi.gaussian_filter(g, s)
            var = np.maximum(ndi.gaussian_filter(g * g, s) - mean * mean, 0)
            out.append((g1 - mean) / np.sqrt(var + 1e-3 * float(g.var()) + 1e-12))
        return out
    raise ValueError(name)


def screen_families(ds, fs, seeds):
    F, scr = fs["F"], fs["scr"]
    grey, u8 = image_u8(fs["planes"])
    m = scr > 0
    rows = {"base": []}
    for seed in seeds:
        proba, classes = fit_predict(F[m], scr[m], F, seed)
        rows["base"].append(miou(classes[proba.argmax(1)], ds, scr.shape))
    for name in ("+median", "+entropy", "+lbp", "+local_norm"):
        E = np.stack([np.stack(extra_channels(name, g, b), -1) for g, b in zip(grey, u8, strict=True)])
        FF = np.concatenate([F, E], -1)
        rows[name] = []
        for seed in seeds:
            proba, classes = fit_predict(FF[m], scr[m], FF, seed)
            rows[name].append(miou(classes[proba.argmax(1)], ds, scr.shape))
    return rows


# -- other classifiers ---------------------------------------------------------------------------
def other_classifier(name, seed):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    if name == "mlp_64_64":
        return make_pipeline(StandardScaler(), MLPClassifier((64, 64), alpha=1e-3, max_iter=300, random_state=seed))
    if name == "hist_gbdt":
        return HistGradientBoostingClassifier(class_weight="balanced", random_state=seed)
    raise ValueError(name)


def screen_classifiers(ds, fs, seeds):
    F, scr = fs["F"], fs["scr"]
    m = scr > 0
    rows = {k: [] for k in ("base", "logistic", "mlp_64_64", "hist_gbdt")}
    for seed in seeds:
        for k in rows:
            clf = None if k == "base" else other_classifier(k, seed)
            proba, classes = fit_predict(F[m], scr[m], F, seed, clf)
            rows[k].append(miou(classes[proba.argmax(1)], ds, scr.shape))
    return rows


# -- largest scale, and what stroke cross-validation says about it ---------------------------------
def stroke_cv(X, y, folds, seed=0):
    """Out-of-fold (balanced accuracy, log-loss) of the default forest, folds by stroke."""
    from sklearn.metrics import balanced_accuracy_score, log_loss

    classes = np.unique(y)
    oof = np.zeros((len(y), len(classes)))
    for f in np.unique(folds):
        clf = forest(seed).fit(X[folds != f], y[folds != f])
        oof[folds == f] = clf.predict_proba(X[folds == f])
    oof = np.clip(oof, 1e-3, 1)
    oof /= oof.sum(1, keepdims=True)
    return float(balanced_accuracy_score(y, classes[oof.argmax(1)])), float(log_loss(y, oof, labels=classes))


def screen_scales(ds, fs, seeds):
    from napari_vitseg.pipeline._autocontext import stroke_folds

    F, scr, sigma = fs["F"], fs["scr"], fs["sigma"]
    planes = []
    for p in scr:
        r, c = np.nonzero(p)
        planes.append((r, c, p[r, c], p.shape))
    folds = np.concatenate(stroke_folds(planes))
    X = np.concatenate([F[z][r, c] for z, (r, c, _, _) in enumerate(planes)])
    y = np.concatenate([lab for _, _, lab, _ in planes])
    rows = {}
    for top in (1, 2, 4, 8, 16):
        cols = sigma <= top
        key = "base" if cols.all() else f"sigma<={top}"
        rows[key] = []
        for seed in seeds:
            proba, classes = fit_predict(X[:, cols], y, F[..., cols], seed)
            rows[key].append(miou(classes[proba.argmax(1)], ds, scr.shape))
        ba, ll = stroke_cv(X[:, cols], y, folds)
        rows[f"{key} (stroke-CV balanced acc.)"] = [ba]
        rows[f"{key} (stroke-CV log-loss)"] = [ll]
    return rows


# -- which families the large scales (8, 16 px) are needed for ------------------------------------
LARGE_SCALE_KEPT = {
    "sigma<=4": (),
    "+gaussian": ("gaussian",),
    "+gaussian,gradient": ("gaussian", "gradient"),
    "+structure": ("structure",),
    "+hessian": ("hessian",),
    "+gaussian,structure": ("gaussian", "structure"),
    "+gaussian,hessian": ("gaussian", "hessian"),
}


def channel_families(names) -> np.ndarray:
    """The filter family of each channel name (``'gaussian_s8'`` -> ``'gaussian'``; RGB
    ``'ch0:gaussian_s8'`` -> ``'gaussian'``)."""
    return np.array([n.split(":")[-1].split("_")[0] for n in names])


def large_scale_columns(names, sigma, kept) -> np.ndarray:
    """Mask of the channels with sigma <= 4 px, the bilateral ones and those of the families ``kept``.

    ``names`` as :meth:`Featurizer.feature_names` gives them (``'gaussian_s8'``; RGB:
    ``'ch0:gaussian_s8'``), ``sigma`` the scale of each (0 if none)."""
    family = channel_families(names)
    return (np.asarray(sigma) <= 4) | (family == "bilateral") | np.isin(family, list(kept))


def screen_large_scales(ds, fs, seeds):
    """Every channel of sigma <= 4 px (and the bilateral ones) plus the 8 and 16 px channels of
    the families named (``+gaussian`` keeps ``gaussian_s8`` and ``gaussian_s16``)."""
    F, scr = fs["F"], fs["scr"]
    m = scr > 0
    rows = {"base": []}
    for seed in seeds:
        proba, classes = fit_predict(F[m], scr[m], F, seed)
        rows["base"].append(miou(classes[proba.argmax(1)], ds, scr.shape))
    for key, kept in LARGE_SCALE_KEPT.items():
        cols = large_scale_columns(fs["names"], fs["sigma"], kept)
        rows[key] = []
        for seed in seeds:
            proba, classes = fit_predict(F[m][:, cols], scr[m], F[..., cols], seed)
            rows[key].append(miou(classes[proba.argmax(1)], ds, scr.shape))
    return rows


# -- how the boundary classifier's probabilities enter the band ----------------------------------
def _normalised(p):
    return p / np.maximum(p.sum(-1, keepdims=True), 1e-12)


def boundary_variants(P1, P2, rows: int = 2) -> dict:
    """Probabilities (Z, Y, X, K) of each way to use the fine-scale classifier ``P2`` in the
    boundary band of the first one's ``P1`` (same shape): the library's rule without / with
    the majority filter of the first labels, and combinations of the two classifiers there."""
    from napari_vitseg.pipeline._boundary import boundary_band

    def band(majority):
        return np.stack([boundary_band(lab.astype(np.uint8), rows, majority) for lab in P1.argmax(-1)])[..., None]

    b = band(1)
    conf = P2.max(-1, keepdims=True)
    out = {"base": P1, "replace": np.where(b, P2, P1)}
    for size in (3, 5, 7):
        out[f"majority{size}"] = np.where(band(size), P2, P1)
    out.update({"average": np.where(b, (P1 + P2) / 2, P1), "product": np.where(b, _normalised(P1 * P2), P1),
                "product_w0.5": np.where(b, _normalised(np.sqrt(P1) * P2), P1),
                "fine_conf>=0.6": np.where(b & (conf >= 0.6), P2, P1),
                "fine_conf>=0.7": np.where(b & (conf >= 0.7), P2, P1)})
    return out


def screen_boundary(ds, fs, seeds):
    """The first forest (default features) and the fine-scale forest (the library's fine
    channels, half the trees), then :func:`boundary_variants`; mIoU (sets with a ground truth)
    and the fraction of scribbled pixels labelled as painted (every set)."""
    from napari_vitseg.pipeline._boundary import fine_columns

    F, scr = fs["F"], fs["scr"]
    m = scr > 0
    fine = fine_columns(fs["names"])
    rows: dict = {}
    for seed in seeds:
        p1, classes = fit_predict(F[m], scr[m], F, seed)
        p2, _ = fit_predict(F[m][:, fine], scr[m], F[..., fine], seed, forest(seed).set_params(n_estimators=50))
        P1, P2 = (p.reshape(*scr.shape, -1) for p in (p1, p2))
        for k, P in boundary_variants(P1, P2).items():
            lab = classes[P.argmax(-1)]
            rows.setdefault(k, []).append(miou(lab, ds, scr.shape) if "gt" in ds else float("nan"))
            rows.setdefault(f"{k} (scribble agreement)", []).append(float((lab[m] == scr[m]).mean()))
    return rows


# -- a round of corrections and the 16 px gradient / structure-tensor channels ----------------------
#: Where ``make_scribbles.py`` is (``--data``'s ``../tools``; set by :func:`main`).
TOOLS = bq.DEFAULT_DATA.parent / "tools"
#: The channels whose values at large scale extrapolate past the scribbles' range (docs/quality.md Run 15).
EXTRAPOLATING = ("gradient", "structure")


def large_scale_variants(F, names, sigma) -> dict:
    """Feature arrays of the ``corrections`` screen's variants, from the default features ``F``
    (..., C): ``base``; ``-grad,struct16`` without the 16 px gradient and structure-tensor
    channels; ``norm16`` with those channels divided by the same input channel's 16 px Gaussian
    (squared for the structure tensor: contrast relative to the local brightness); ``-16``
    without any 16 px channel."""
    family = channel_families(names)
    prefix = [n.split(":")[0] + ":" if ":" in n else "" for n in names]
    big = np.isin(family, EXTRAPOLATING) & (np.asarray(sigma) == 16)
    ratio = [F[..., j] / (np.abs(F[..., names.index(prefix[j] + "gaussian_s16")]) ** (2 if family[j] == "structure" else 1)
                          + 1e-3) for j in np.nonzero(big)[0]]
    norm = np.concatenate([F[..., ~big], np.stack(ratio, -1)], -1) if ratio else F
    return {"base": F, "-grad,struct16": F[..., ~big], "norm16": norm.astype(np.float32),
            "-16": F[..., np.asarray(sigma) != 16]}


def corrected_scribbles(ds, fs) -> np.ndarray:
    """The scribbles after one round of a user's corrections (``bench_quality.correction_scribbles``
    on the wrong regions of the default forest's result, classifier seed 0), (Z, Y, X) uint8."""
    F, scr = fs["F"], fs["scr"]
    m = scr > 0
    proba, classes = fit_predict(F[m], scr[m], F, 0)
    first = classes[proba.argmax(1)].reshape(scr.shape)
    if ds["stack"]:
        strokes = bq.correction_scribbles({"gt": ds["gt"], "scr": scr}, first, TOOLS, bq.CORRECTION_SEED)
    else:  # a single image as one (Y, X) plane: make_scribbles.py would treat (1, Y, X) as a stack
        strokes = bq.correction_scribbles({"gt": ds["gt"], "scr": scr[0]}, first[0], TOOLS, bq.CORRECTION_SEED)[None]
    return np.where(strokes > 0, strokes, scr)


def screen_corrections(ds, fs, seeds):
    """One round of a user's corrections (:func:`corrected_scribbles`; the same strokes for every
    variant): each variant's mIoU from the first scribbles and after the round (``... +1``)."""
    F, scr = fs["F"], fs["scr"]
    corrected = corrected_scribbles(ds, fs)
    rows = {}
    for key, FF in large_scale_variants(F, fs["names"], fs["sigma"]).items():
        for suffix, s in (("", scr), (" +1", corrected)):
            mm = s > 0
            rows[key + suffix] = []
            for seed in seeds:
                proba, classes = fit_predict(FF[mm], s[mm], FF, seed)
                rows[key + suffix].append(miou(classes[proba.argmax(1)], ds, s.shape))
    return rows


def stroke_ids(scr) -> np.ndarray:
    """Connected strokes of scribbles (Z, Y, X) uint8: per plane and class, 8-connected
    components, numbered 1.. over the whole stack (0 = unscribbled), int32 (Z, Y, X)."""
    from scipy import ndimage as ndi

    ids, n = np.zeros(scr.shape, np.int32), 0
    for z, plane in enumerate(scr):
        for c in np.unique(plane[plane > 0]):
            lab, k = ndi.label(plane == c, np.ones((3, 3), bool))
            ids[z][lab > 0] = lab[lab > 0] + n
            n += k
    return ids


def stroke_bags(y, strokes, n_bags: int, rng) -> list[np.ndarray]:
    """Masks over the training pixels: per bag, each class's strokes drawn with replacement as
    many times as the class has strokes (a bootstrap over strokes; the cluster bootstrap of
    dependent data), so every bag holds at least one stroke of every class."""
    bags = []
    for _ in range(n_bags):
        keep = np.zeros(len(y), bool)
        for c in np.unique(y):
            own = np.unique(strokes[y == c])
            keep |= np.isin(strokes, rng.choice(own, len(own), replace=True)) & (y == c)
        bags.append(keep)
    return bags


def stroke_bagged_proba(X, y, strokes, F, seed: int, n_bags: int = 10):
    """Probabilities (n, K) and classes of ``n_bags`` default forests of ``100 / n_bags`` trees,
    each trained on one of :func:`stroke_bags`, averaged (one forest of 100 trees whose trees
    see whole strokes, not pixels, at random)."""
    from napari_vitseg.classifiers import make_classifier

    rng = np.random.default_rng(seed)
    P, classes = 0.0, None
    for b, keep in enumerate(stroke_bags(y, strokes, n_bags, rng)):
        clf = make_classifier("rf", random_state=seed * n_bags + b, n_estimators=100 // n_bags)
        clf.fit(X[keep], y[keep])
        P = P + np.asarray(clf.predict_proba(F.reshape(-1, F.shape[-1]))) / n_bags
        classes = np.asarray(clf.classes_)
    return P, classes


def screen_strokebag(ds, fs, seeds):
    """Pixels of one stroke are alike, so a forest whose trees each draw pixels still sees every
    stroke in every tree; ``strokes``: trees that each see a bootstrap of whole strokes
    (:func:`stroke_bagged_proba`), from the first scribbles and after one round of corrections
    (:func:`corrected_scribbles`, ``+1``)."""
    F = fs["F"]
    rows = {}
    for suffix, s in (("", fs["scr"]), (" +1", corrected_scribbles(ds, fs))):
        m = s > 0
        strokes = stroke_ids(s)[m]
        rows["base" + suffix], rows["strokes" + suffix] = [], []
        for seed in seeds:
            proba, classes = fit_predict(F[m], s[m], F, seed)
            rows["base" + suffix].append(miou(classes[proba.argmax(1)], ds, s.shape))
            proba, classes = stroke_bagged_proba(F[m], s[m], strokes, F, seed)
            rows["strokes" + suffix].append(miou(classes[proba.argmax(1)], ds, s.shape))
    return rows


SCREEN_FUNCS = {"postprocess": screen_postprocess, "selftrain": screen_selftrain,
                "families": screen_families, "classifiers": screen_classifiers, "scales": screen_scales,
                "large_scales": screen_large_scales, "boundary": screen_boundary, "corrections": screen_corrections,
                "strokebag": screen_strokebag}
#: Screens that also run on sets without a ground truth (``--scribble-sets``).
SCRIBBLE_ONLY_SCREENS = ("boundary",)


# -- report -------------------------------------------------------------------------------------
def table(screen: str, results: dict) -> str:
    """Markdown table: set x variant, mean ± sd over seeds, and the mean over sets."""
    sets = list(results)
    every = list(next(iter(results.values())))
    parts = [f"### {screen}"]
    # mIoU columns first; diagnostics such as 'base (stroke-CV log-loss)' in a second table
    for variants in ([v for v in every if " (" not in v], [v for v in every if " (" in v]):
        if not variants:
            continue
        lines = ["", "| set | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        for s in sets:
            if all(np.isnan(results[s][v]).all() for v in variants):
                continue  # a set without a ground truth has no mIoU row
            cells = []
            for v in variants:
                vals = results[s][v]
                cells.append(f"{np.mean(vals):.3f}" + (f"±{np.std(vals):.3f}" if len(vals) > 1 else ""))
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        # mean over the sets that have the number (sets without a ground truth have no mIoU)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column of sets without a ground truth only
            means = [np.nanmean([np.mean(results[s][v]) for s in sets]) for v in variants]
        lines.append("| **mean** | " + " | ".join(f"{x:.4f}" for x in means) + " |")
        parts.append("\n".join(lines))
    return "\n".join(parts)


def load_scribble_set(entry: dict) -> dict:
    """A set with an image and scribbles but no ground truth (the data README's conventions)."""
    import tifffile

    for key in ("image", "scribbles"):
        if not Path(entry[key]).is_file():
            raise SystemExit(f"--scribble-sets: no {Path(entry[key]).name} in {Path(entry[key]).parent}")
    image, scr = tifffile.imread(entry["image"]), tifffile.imread(entry["scribbles"])
    return {**entry, "image_arr": image, "scr": scr, "channel_axis": bq.channel_axis_of(image, scr, entry["name"]),
            "stack": scr.ndim == 3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--screens", nargs="+", choices=SCREENS, default=list(SCREENS))
    ap.add_argument("--sets", nargs="+", default=None)
    ap.add_argument("--data", type=Path, default=bq.DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=bq.DEFAULT_CACHE)
    ap.add_argument("--quick", action="store_true", help="crop to ~256 x 256, one seed (smoke run)")
    ap.add_argument("--scribble-sets", nargs="*", default=[], metavar="NAME",
                    help="folders of --data with scribbles but no ground truth, for the screens that report "
                         f"scribble agreement ({', '.join(SCRIBBLE_ONLY_SCREENS)}); e.g. tem_cells_stack blobs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"quality_screens: no data folder {args.data} (pass --data)", file=sys.stderr)
        return 2
    seeds = SEEDS[:1] if args.quick else SEEDS
    global TOOLS
    TOOLS = args.data.parent / "tools"
    t0 = time.perf_counter()
    results: dict = {s: {} for s in args.screens}
    entries = [(e, bq.load_set) for e in bq.find_sets(args.data, args.cache, args.sets)]
    entries += [({"name": n, "image": args.data / n / "image.tif", "scribbles": args.data / n / "scribbles.tif"},
                 load_scribble_set) for n in args.scribble_sets]
    for entry, load in entries:
        ds = load(entry)
        if args.quick:
            ds = bq.quick_crop(ds) if "gt" in ds else ds
        fs = set_features(ds)
        for screen in args.screens:
            if "gt" not in ds and screen not in SCRIBBLE_ONLY_SCREENS:
                continue
            t1 = time.perf_counter()
            results[screen][ds["name"]] = SCREEN_FUNCS[screen](ds, fs, seeds)
            print(f"  {ds['name']} {screen}: {time.perf_counter() - t1:.0f} s", flush=True)
    text = "\n\n".join(table(s, results[s]) for s in args.screens)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or HERE / "results" / f"quality_screens_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"screens": results, "seeds": list(seeds), "quick": args.quick, "wall_s": time.perf_counter() - t0,
              "versions": bq.versions(Path("/nonexistent")), "source_sha256": bq.source_digest(),
              "machine": bq.machine(), "tables": text}
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
