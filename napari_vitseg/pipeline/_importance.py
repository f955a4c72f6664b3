"""Feature importances of a trained segmenter, grouped by feature family and scale.

:meth:`Segmenter.feature_importances <napari_vitseg.pipeline.Segmenter.feature_importances>`
returns a :class:`FeatureImportances`: one share per feature channel of one classifier stage
and the same shares summed into groups (feature family x Gaussian scale, per image channel; the
ViT channels as one group; the previous stage's context maps per class and scale), each summing
to 1. It also gives the family x scale grid the napari panel draws and a one-line summary in
plain language.

How the shares are measured (``method``):

``'mdi'`` (random forest)
    Mean decrease in impurity (Breiman 2001; scikit-learn's ``feature_importances_``): the
    class-weighted Gini decrease of every split on a feature, summed over a tree, normalised
    per tree and averaged over the forest. Free (read from the trees) but biased: features
    with many distinct values (every continuous filter response here) and features the trees
    can use interchangeably get credit for splits that fit noise in the training pixels
    (Strobl et al. 2007), and correlated features (neighbouring scales, the two Hessian
    eigenvalues) share the credit of what either alone would carry.
``'gain'`` (XGBoost)
    Total gain (``Booster.get_score(importance_type='total_gain')``): the loss reduction of
    every split on a feature, summed over all trees and classes, then normalised. XGBoost's
    ``'gain'`` is the *average* gain per split, which cannot be summed over the channels of a
    group; ``'total_gain'`` can, and is to boosting what MDI is to a forest.
``'permutation'``
    Permutation importance (Breiman 2001; :func:`sklearn.inspection.permutation_importance`)
    of stage 1 on the scribbled pixels: the drop of balanced accuracy when one feature's
    column is shuffled, averaged over ``n_repeats`` shuffles, on a class-balanced sample of at
    most ``max_pixels`` labelled pixels. Not biased towards continuous features, but it
    measures reliance on the pixels the model was trained on, and shuffling one of two
    correlated features costs little (each covers for the other). Drops below zero (noise)
    count as 0 before the shares are normalised. Costs ``F * n_repeats`` predictions of the
    sample (a few seconds for the 40 default features on 5000 pixels: 4-5 s on a busy 2-core machine).

References
----------
.. [1] Breiman, L. (2001). Random forests. Machine Learning 45, 5-32.
   :DOI:`10.1023/A:1010933404324`
.. [2] Strobl, C., Boulesteix, A.-L., Zeileis, A. & Hothorn, T. (2007). Bias in random forest
   variable importance measures. BMC Bioinformatics 8, 25. :DOI:`10.1186/1471-2105-8-25`
.. [3] Chen, T. & Guestrin, C. (2016). XGBoost: a scalable tree boosting system. KDD.
   :DOI:`10.1145/2939672.2939785`
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .._validation import VitsegError, check_finite, check_number, check_option

__all__ = ["FAMILY_LABELS", "FAMILY_WORDS", "IMPORTANCE_METHODS", "FeatureImportances", "feature_importances",
           "parse_feature_name"]

#: Accepted ``method`` values of :func:`feature_importances`.
IMPORTANCE_METHODS = ("auto", "mdi", "gain", "permutation")

#: Short row labels of the families (family key -> label), in the order rows are shown.
FAMILY_LABELS = {
    "intensity": "raw intensity",
    "gaussian": "Gaussian",
    "gradient": "edges (gradient)",
    "laplacian": "blobs (LoG)",
    "hessian": "ridges (Hessian)",
    "structure": "structure tensor",
    "dog": "band-pass (DoG)",
    "variance": "local std",
    "membrane": "membrane",
    "context": "wide context",
    "bilateral": "bilateral",
    "vit": "ViT",
    "autocontext": "previous stage",
    "other": "other",
}
#: The same families in words for the one-line summary.
FAMILY_WORDS = {
    "intensity": "raw intensity",
    "gaussian": "smoothed intensity",
    "gradient": "edges",
    "laplacian": "blobs",
    "hessian": "ridges and curvature",
    "structure": "texture",
    "dog": "band-pass detail",
    "variance": "local contrast",
    "membrane": "thin lines",
    "context": "wide context",
    "bilateral": "edge-preserving smoothing",
    "vit": "ViT features",
    "autocontext": "the previous stage's output",
    "other": "other features",
}
#: Families that describe brightness itself (the summary says when they matter little).
BRIGHTNESS_FAMILIES = ("intensity", "gaussian", "bilateral")

_SCALED = re.compile(r"^(gaussian|gradient|laplacian|stddev|bilateral)_s([0-9.e+-]+)$")
_PAIRED = re.compile(r"^(hessian|structure)_(?:max|min)_s([0-9.e+-]+)$")
_DOG = re.compile(r"^dog_s[0-9.e+-]+-s([0-9.e+-]+)$")
_CONTEXT = re.compile(r"^context_(?:mean|diff|std)_s([0-9.e+-]+)$")
_AUTOCONTEXT = re.compile(r"^context_c(\d+)_(?:[a-z_]+)_s([0-9.e+-]+)$")
_CHANNEL = re.compile(r"^ch(\d+):(.*)$")
_VIT = re.compile(r"_(?:pc)?\d{3,}$")


def parse_feature_name(name: str, vit_prefix: str | None = None) -> tuple[str, float | None, int | None, int | None]:
    """Family, scale, image channel and context class of one feature channel name.

    Parameters
    ----------
    name : str
        A name of :meth:`Featurizer.feature_names <napari_vitseg.features.stack.Featurizer.feature_names>`
        (``'hessian_max_s2'``, ``'ch1:dog_s2-s4'``, ``'dinov2_vits14_reg_pc003'``) or of
        :func:`~napari_vitseg.pipeline._autocontext.context_feature_names`
        (``'context_c2_gaussian_s8'``).
    vit_prefix : str, optional
        The backbone name: names starting with ``vit_prefix + '_'`` are ViT channels.

    Returns
    -------
    family : str
        A key of :data:`FAMILY_LABELS` (``'stddev'`` is the ``'variance'`` family; ``'other'``
        for a name this function does not know).
    sigma : float or None
        The Gaussian scale in px (the larger one of a DoG, the spatial sigma of a bilateral
        filter); ``None`` for scale-free channels (intensity, membrane, ViT).
    channel : int or None
        The image channel of a multichannel image's classical feature.
    context_class : int or None
        The class whose probability map an auto-context channel filters.

    Examples
    --------
    >>> parse_feature_name("ch1:hessian_min_s4")
    ('hessian', 4.0, 1, None)
    >>> parse_feature_name("dog_s2-s4"), parse_feature_name("context_c2_gaussian_s8")
    (('dog', 4.0, None, None), ('autocontext', 8.0, None, 2))
    >>> parse_feature_name("dinov2_vits14_reg_pc003", "dinov2_vits14_reg")
    ('vit', None, None, None)
    """
    name = str(name)
    if vit_prefix and name.startswith(f"{vit_prefix}_"):
        return "vit", None, None, None
    m = _AUTOCONTEXT.match(name)
    if m:
        return "autocontext", float(m.group(2)), None, int(m.group(1))
    channel = None
    m = _CHANNEL.match(name)
    if m:
        channel, name = int(m.group(1)), m.group(2)
    if name == "intensity":
        return "intensity", None, channel, None
    if name.startswith("membrane_"):
        return "membrane", None, channel, None
    for pattern, family in ((_SCALED, None), (_PAIRED, None), (_DOG, "dog"), (_CONTEXT, "context")):
        m = pattern.match(name)
        if m:
            fam = family or m.group(1)
            return ("variance" if fam == "stddev" else fam), float(m.groups()[-1]), channel, None
    if channel is None and _VIT.search(name):
        return "vit", None, None, None
    return "other", None, channel, None


def _normalised(values) -> np.ndarray:
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, None)
    total = v.sum()
    return v / total if total > 0 else v


def _fmt_pct(share: float) -> str:
    pct = 100 * share
    return f"{pct:.0f} %" if pct >= 1 or pct == 0 else "<1 %"


def _scale_kind(lo: float, hi: float) -> str:
    def cat(s):
        return 0 if s <= 2 else (1 if s < 8 else 2)

    a, b = cat(lo), cat(hi)
    names = ("fine-scale", "mid-scale", "large-scale")
    if a == b:
        return names[a]
    return "fine-to-mid-scale" if (a, b) == (0, 1) else ("mid-to-large-scale" if (a, b) == (1, 2) else "all-scale")


@dataclass(frozen=True)
class FeatureImportances:
    """Importances of one classifier stage, per feature channel and grouped.

    Attributes
    ----------
    feature_names : tuple of str, (F,)
        The stage's input channels in order (the featurizer's names, then the context
        channels of a stage > 1).
    feature_importance : ndarray of float64, (F,)
        Share of each channel, summing to 1 (all 0 when the classifier made no split).
    names : tuple of str, (G,)
        A label per group: family and scale (``'structure tensor σ8'``), prefixed
        ``'ch1: '`` for a channel of a multichannel image; ``'ViT (dinov2_vits14_reg)'`` for
        all ViT channels together; ``'previous stage, class 2 σ8'`` for context channels.
    family : tuple of str, (G,)
        Key of :data:`FAMILY_LABELS` of each group.
    sigma : tuple of float or None, (G,)
        Scale in px of each group (``None``: scale-free).
    channel : tuple of int or None, (G,)
        Image channel of each group (``None``: one-channel image, ViT, context).
    context_class : tuple of int or None, (G,)
        Class of an auto-context group.
    importance : ndarray of float64, (G,)
        Share of each group (the sum of its channels' shares), summing to 1.
    stage, n_stages : int
        Which stage these are (1-based) and how many the model has.
    method : {'mdi', 'gain', 'permutation'}
    classifier : {'rf', 'xgb'}
    """

    feature_names: tuple[str, ...]
    feature_importance: np.ndarray
    names: tuple[str, ...]
    family: tuple[str, ...]
    sigma: tuple[float | None, ...]
    channel: tuple[int | None, ...]
    context_class: tuple[int | None, ...]
    importance: np.ndarray
    stage: int
    n_stages: int
    method: str
    classifier: str

    @classmethod
    def from_features(cls, feature_names, values, *, vit_prefix: str | None = None, stage: int = 1,
                      n_stages: int = 1, method: str = "mdi", classifier: str = "rf") -> FeatureImportances:
        """Group per-channel importances (any non-negative scores; normalised here)."""
        names = tuple(str(n) for n in feature_names)
        values = _normalised(values)
        if values.shape != (len(names),):
            raise VitsegError(f"{values.shape[0] if values.ndim else 0} importances for {len(names)} feature names.")
        groups: dict[tuple, float] = {}
        for name, v in zip(names, values, strict=True):
            key = parse_feature_name(name, vit_prefix)
            groups[key] = groups.get(key, 0.0) + float(v)
        labels = []
        for fam, sigma, ch, k in groups:
            if fam == "vit":
                label = f"ViT ({vit_prefix})" if vit_prefix else "ViT"
            elif fam == "autocontext":
                label = f"previous stage, class {k}"
            else:
                label = FAMILY_LABELS[fam]
            if sigma is not None:
                label += f" σ{sigma:g}"
            if ch is not None:
                label = f"ch{ch}: {label}"
            labels.append(label)
        keys = list(groups)
        return cls(names, values, tuple(labels), tuple(k[0] for k in keys), tuple(k[1] for k in keys),
                   tuple(k[2] for k in keys), tuple(k[3] for k in keys),
                   np.array([groups[k] for k in keys], dtype=np.float64), int(stage), int(n_stages), method,
                   classifier)

    def by_family(self) -> dict[str, float]:
        """Share of each family (summed over scales, channels and classes), in row order."""
        out: dict[str, float] = {}
        for fam in FAMILY_LABELS:
            sel = [i for i, f in enumerate(self.family) if f == fam]
            if sel:
                out[fam] = float(self.importance[sel].sum())
        return out

    def by_channel(self) -> dict[int, float]:
        """Share of each image channel of a multichannel image (empty for one channel)."""
        out: dict[int, float] = {}
        for ch, v in zip(self.channel, self.importance, strict=True):
            if ch is not None:
                out[ch] = out.get(ch, 0.0) + float(v)
        return dict(sorted(out.items()))

    def grid(self) -> tuple[list[str], list[float | None], np.ndarray]:
        """The family x scale table (summed over image channels and context classes).

        Returns
        -------
        families : list of str
            Row keys (:data:`FAMILY_LABELS` order, only families present).
        scales : list of float or None
            Column scales in px, ascending, then ``None`` (scale-free) if any family has no scale.
        shares : ndarray of float64, (len(families), len(scales))
            ``NaN`` where a family has no channel at that scale (a DoG at the first scale,
            intensity at any scale); the finite cells sum to 1.
        """
        families = list(self.by_family())
        scales: list[float | None] = sorted({s for s in self.sigma if s is not None})
        if any(s is None for s in self.sigma):
            scales.append(None)
        shares = np.full((len(families), len(scales)), np.nan)
        for fam, s, v in zip(self.family, self.sigma, self.importance, strict=True):
            i, j = families.index(fam), scales.index(s)
            shares[i, j] = v if np.isnan(shares[i, j]) else shares[i, j] + v
        return families, scales, shares

    def summary(self) -> str:
        """One sentence in plain language: what the classifier relies on most and least.

        E.g. ``'Mostly large-scale features (σ 8-16 px): texture 41 %, edges 22 %; raw and
        smoothed intensity matter little (4 %).'``; prefixed with the stage of an
        auto-context model.
        """
        head = f"Stage {self.stage} of {self.n_stages}: " if self.n_stages > 1 else ""
        fam = self.by_family()
        if not fam or sum(fam.values()) <= 0:
            return head + "The classifier made no split: no feature helps to tell the scribbled classes apart."
        ordered = sorted(fam.items(), key=lambda kv: -kv[1])
        top, cum = [], 0.0
        for f, v in ordered:
            if len(top) == 3 or (top and (cum >= 0.6 or v < 0.1)):
                break
            top.append((f, v))
            cum += v
        words = ", ".join(f"{FAMILY_WORDS[f]} {_fmt_pct(v)}" for f, v in top)
        scaled: dict[float, float] = {}
        for s, v in zip(self.sigma, self.importance, strict=True):
            if s is not None:
                scaled[s] = scaled.get(s, 0.0) + float(v)
        total_scaled = sum(scaled.values())
        if total_scaled >= 0.5 and len(scaled) > 1:
            sig = sorted(scaled)
            prof = np.array([scaled[s] for s in sig])
            best = None  # the narrowest run of consecutive scales holding >= 60 % of the scaled share
            for width in range(1, len(sig) + 1):
                for a in range(len(sig) - width + 1):
                    mass = prof[a:a + width].sum()
                    if mass >= 0.6 * total_scaled and (best is None or mass > best[2]):
                        best = (a, a + width - 1, mass)
                if best is not None:
                    break
            lo, hi = sig[best[0]], sig[best[1]]
            span = f"σ {lo:g} px" if lo == hi else f"σ {lo:g}-{hi:g} px"
            text = f"Mostly {_scale_kind(lo, hi)} features ({span}): {words}"
        else:
            text = f"Mostly {words}"
        top_keys = {f for f, _ in top}
        bright = {f: v for f, v in fam.items() if f in BRIGHTNESS_FAMILIES}
        bright_share = sum(bright.values())
        if bright and not (top_keys & set(bright)) and bright_share < 0.1:
            what = "raw and smoothed intensity matter" if len(bright) > 1 else f"{FAMILY_WORDS[next(iter(bright))]} matters"
            text += f"; {what} little ({_fmt_pct(bright_share)})"
        elif len(ordered) > len(top):
            f, v = ordered[-1]
            text += f"; {FAMILY_WORDS[f]} matter{'' if f in ('vit', 'other') or FAMILY_WORDS[f].endswith('s') else 's'} " \
                    f"least ({_fmt_pct(v)})"
        channels = self.by_channel()
        if len(channels) > 1:
            ch, v = max(channels.items(), key=lambda kv: kv[1])
            text += f"; channel {ch} carries {_fmt_pct(v)}"
        return head + text + "."


def _stage_names(seg, clf, stage: int) -> list[str]:
    """Input channel names of a stage model (as stored with it, else from the featurizer)."""
    names = getattr(clf, "feature_names_in_", None)
    if names is not None and len(names) == clf.n_features_in_:
        return [str(n) for n in names]
    from ._autocontext import context_feature_names

    names = seg.featurizer.feature_names(seg.n_channels_)
    if stage > 1:
        names = names + context_feature_names(seg.classes_)
    if len(names) != clf.n_features_in_:
        raise VitsegError(f"The classifier of stage {stage} has {clf.n_features_in_} inputs but its feature "
                          f"configuration names {len(names)}; the classifier file may be damaged.")
    return names


def _tree_importances(clf) -> tuple[np.ndarray, str]:
    """MDI of a forest or total gain of a booster, one value per input channel."""
    n = int(clf.n_features_in_)
    if hasattr(clf, "estimator_"):
        return np.asarray(clf.estimator_.feature_importances_, dtype=np.float64), "mdi"
    booster = clf.booster_
    scores = booster.get_score(importance_type="total_gain")
    names = list(booster.feature_names or [])
    out = np.zeros(n, np.float64)
    for key, value in scores.items():
        if names and key in names:
            i = names.index(key)
        elif key.startswith("f") and key[1:].isdigit():
            i = int(key[1:])
        else:
            continue
        if 0 <= i < n:
            out[i] += float(value)
    return out, "gain"


def _scribbled_sample(seg, image, scribbles, channel_axis, max_pixels: int, seed: int):
    """Stage-1 features and labels of a class-balanced sample of the scribbled pixels."""
    from .scribbles import ScribbleIndex
    from .segmenter import as_channels_last, plane_of

    image, nsp, nc = as_channels_last(image, channel_axis)
    spatial = tuple(image.shape[:nsp])
    index = scribbles if isinstance(scribbles, ScribbleIndex) else ScribbleIndex.from_array(scribbles, spatial)
    if index.shape != spatial:
        raise VitsegError(f"The scribbles have shape {index.shape} but the image's spatial shape is {spatial}; "
                          "give the scribbles painted on this image.")
    if nc != seg.n_channels_:
        raise VitsegError(f"The classifier was trained on images with {seg.n_channels_} channel(s); this image "
                          f"has {nc}. Give the training image (and its channel_axis).")
    index.check_trainable()
    rng = np.random.default_rng(seed)
    counts = index.class_counts()
    per_class = max(1, int(max_pixels) // max(1, len(counts)))
    xs, ys = [], []
    for z in index.planes:
        rows, cols, lab = index.plane(z)
        keep = np.zeros(len(lab), bool)
        for c, n in counts.items():
            idx = np.flatnonzero(lab == c)
            if idx.size:  # each plane gives its part of the class's quota
                k = min(idx.size, int(np.ceil(per_class * idx.size / n)))
                keep[rng.choice(idx, size=k, replace=False)] = True
        if not keep.any():
            continue
        plane = plane_of(image, nsp, z)
        check_finite(plane, "image")
        feats = seg.plane_features(plane)
        xs.append(np.asarray(feats[rows[keep], cols[keep]], dtype=np.float32))
        ys.append(lab[keep])
    return np.concatenate(xs), np.concatenate(ys)


def feature_importances(seg, stage: int = 1, *, method: str = "auto", image=None, scribbles=None,
                        channel_axis: int | None = None, max_pixels: int = 5000, n_repeats: int = 3,
                        random_state: int = 0) -> FeatureImportances:
    """Importances of one stage of a fitted segmenter; see :meth:`Segmenter.feature_importances
    <napari_vitseg.pipeline.Segmenter.feature_importances>` (the parameters, the methods in
    this module's docstring)."""
    seg._check_fitted()
    check_option(method, IMPORTANCE_METHODS, "method")
    chain = seg._stages()
    check_number(stage, "stage", kind="int", low=1, high=len(chain), owner="feature_importances")
    stage = int(stage)
    clf = chain[stage - 1]
    kind = "rf" if hasattr(clf, "estimator_") else "xgb"
    names = _stage_names(seg, clf, stage)
    vit = seg.feature_config.backbone
    if method == "permutation":
        if stage != 1:
            raise VitsegError("Permutation importance is offered for stage 1 only (later stages also need the "
                              "previous stage's predictions); use method='auto' for the other stages.")
        if image is None or scribbles is None:
            raise VitsegError("Permutation importance needs the training image and its scribbles: pass image= "
                              "and scribbles= (and channel_axis= for a multichannel image).")
        check_number(max_pixels, "max_pixels", kind="int", low=10, high=10**7, owner="feature_importances")
        check_number(n_repeats, "n_repeats", kind="int", low=1, high=100, owner="feature_importances")
        from sklearn.inspection import permutation_importance

        X, y = _scribbled_sample(seg, image, scribbles, channel_axis, max_pixels, random_state)
        result = permutation_importance(clf, X, y, scoring="balanced_accuracy", n_repeats=int(n_repeats),
                                        random_state=random_state)
        values = result.importances_mean
    else:
        if image is not None or scribbles is not None:
            raise VitsegError("image= and scribbles= are used by method='permutation' only; drop them or ask for "
                              "method='permutation'.")
        values, measured = _tree_importances(clf)
        if method not in ("auto", measured):
            raise VitsegError(f"method={method!r} does not apply to a {'random forest' if kind == 'rf' else 'XGBoost'} "
                              f"classifier: use 'auto' ({measured!r}) or 'permutation'.")
        method = measured
    return FeatureImportances.from_features(names, values, vit_prefix=vit, stage=stage, n_stages=len(chain),
                                            method=method, classifier=kind)
