"""Positional-bias linear probe (Pawlowsky et al. 2026, "What DINO saw", arXiv 2603.16840).

How well can a linear map from a backbone's patch features predict *where* a patch is? On a
homogeneous image (noise, a texture, a microstructure with no preferred direction) nothing in
the content says where a patch sits, so a high R² means the features carry positional bias.

Protocol (methods.md section 5): targets on the gh x gw token grid (``lr``, ``ud``, ``diag``,
``radial`` and a ``random`` noise control); a random ~1/36 of the tokens (uniform, without
replacement) trains ``StandardScaler`` then ``Ridge(alpha=1)``; R² is scored on the *held-out*
tokens (the reference code scores all tokens, training ones included). ``lr+ud`` is the mean of
the ``lr`` and ``ud`` R² on the same split, which equals the R² (uniform average) of the 2-output
ridge the reference fits, since ridge fits each output independently. Per-channel R² (one
single-channel fit per channel) for every block gives the channels x layers "fingerprint".
Everything is averaged over images and repeats (fresh split and fresh noise target per repeat).

Reading the ``random`` control: held-out R² of a target that no feature can predict is <= 0;
with ``alpha=1`` and fewer training tokens than channels the ridge nearly interpolates, so its
held-out R² for the noise target falls to about ``-(variance of the interpolated noise)``: near 0
for features without spatial structure, down to about -1 for smooth (strongly positional)
features. That value is the probe's chance floor for that backbone. ``alpha='cv'`` picks alpha
by leave-one-out cross-validation on the training tokens instead, which brings the control to ~0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._progress import Progress
from .._validation import VitsegError
from ._common import PreparedImage, TokenMaps, extract_tokens, prepare_image

__all__ = [
    "FIT_TARGETS",
    "TARGETS",
    "CV_ALPHAS",
    "ProbeResult",
    "probe_targets",
    "split_tokens",
    "linear_probe_r2",
    "channel_probe_r2",
    "probe_token_maps",
    "iter_positional_probe",
    "layer_labels",
]

#: Targets fitted directly, in this order.
FIT_TARGETS: tuple[str, ...] = ("lr", "ud", "diag", "radial", "random")
#: Targets reported: the fitted ones plus ``lr+ud`` (mean of ``lr`` and ``ud``).
TARGETS: tuple[str, ...] = FIT_TARGETS + ("lr+ud",)
#: Alpha grid searched by ``alpha='cv'`` (efficient leave-one-out, :class:`sklearn.linear_model.RidgeCV`).
CV_ALPHAS = np.logspace(-2, 8, 21)


def probe_targets(gh: int, gw: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Regression targets on a gh x gw token grid.

    Parameters
    ----------
    gh, gw : int
        Token grid size (rows, columns).
    rng : numpy.random.Generator, optional
        Source of the ``random`` control (default: a fresh unseeded generator).

    Returns
    -------
    dict of str -> (gh, gw) ndarray of float64
        ``lr``: 0 -> 1 along columns (left to right); ``ud``: 0 -> 1 along rows (top to
        bottom); ``diag`` = (lr + ud) / 2; ``radial`` = 1 - r / r_max with r the distance to
        the grid centre ((gh - 1) / 2, (gw - 1) / 2); ``random``: uniform noise in [0, 1).

    References
    ----------
    Pawlowsky et al., "What DINO saw", arXiv 2603.16840 (2026).
    """
    if gh < 1 or gw < 1:
        raise VitsegError(f"the token grid must be at least 1 x 1; got {gh} x {gw}.")
    rng = np.random.default_rng() if rng is None else rng
    ud, lr = np.meshgrid(np.linspace(0.0, 1.0, gh), np.linspace(0.0, 1.0, gw), indexing="ij")
    r = np.hypot(np.arange(gh)[:, None] - (gh - 1) / 2.0, np.arange(gw)[None, :] - (gw - 1) / 2.0)
    rmax = r.max()
    radial = 1.0 - r / rmax if rmax > 0 else np.ones_like(r)
    return {"lr": lr, "ud": ud, "diag": (lr + ud) / 2.0, "radial": radial,
            "random": rng.random((gh, gw))}


def split_tokens(n_tokens: int, train_fraction: float = 1 / 36,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random train / held-out split of token indices (uniform, without replacement).

    Parameters
    ----------
    n_tokens : int
        Number of tokens (gh * gw).
    train_fraction : float
        Share of tokens used for training; at least 2 tokens train and 2 are held out.
    rng : numpy.random.Generator, optional

    Returns
    -------
    train, test : ndarray of int64
        Disjoint index arrays covering all tokens.

    Raises
    ------
    VitsegError
        For fewer than 4 tokens or a fraction outside (0, 1).
    """
    if not 0.0 < train_fraction < 1.0:
        raise VitsegError(f"train_fraction must be in (0, 1); got {train_fraction!r}.")
    if n_tokens < 4:
        raise VitsegError(f"the probe needs at least 4 tokens (2 to train, 2 to score); got {n_tokens}.")
    rng = np.random.default_rng() if rng is None else rng
    n_train = int(min(max(2, round(n_tokens * train_fraction)), n_tokens - 2))
    perm = rng.permutation(n_tokens)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def _as_tokens(features) -> np.ndarray:
    f = np.asarray(features)
    if f.ndim == 3:  # (gh, gw, C)
        f = f.reshape(-1, f.shape[-1])
    if f.ndim != 2:
        raise VitsegError(f"features must be (N, C) or (gh, gw, C); got shape {np.shape(features)}.")
    return f


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Column-wise R² (1 - SSE / SST about the held-out mean); NaN where SST is 0."""
    sse = ((y_true - y_pred) ** 2).sum(0)
    sst = ((y_true - y_true.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def linear_probe_r2(features, target, *, train_idx=None, test_idx=None, train_fraction: float = 1 / 36,
                    alpha: float | str = 1.0, rng: np.random.Generator | None = None):
    """Held-out R² of ``StandardScaler`` + ``Ridge`` from all channels to a target.

    Parameters
    ----------
    features : (N, C) or (gh, gw, C) array_like
        Token features, channels last.
    target : (N,), (N, k), (gh, gw) or (gh, gw, k) array_like
        One or k targets per token.
    train_idx, test_idx : array_like of int, optional
        A fixed split (both or neither); otherwise :func:`split_tokens` draws one.
    train_fraction : float
        Share of training tokens when the split is drawn (default 1/36).
    alpha : float or 'cv'
        Ridge penalty (1.0 as in the paper), or ``'cv'`` to choose it per target from
        :data:`CV_ALPHAS` by leave-one-out on the training tokens.
    rng : numpy.random.Generator, optional

    Returns
    -------
    float or (k,) ndarray
        R² on the held-out tokens (can be negative: worse than predicting their mean).

    References
    ----------
    Pawlowsky et al., "What DINO saw", arXiv 2603.16840 (2026).
    """
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.preprocessing import StandardScaler

    X = _as_tokens(features).astype(np.float64, copy=False)
    y = np.asarray(target, dtype=np.float64)
    single = y.ndim in (1, 2) and y.size == X.shape[0]
    y = y.reshape(X.shape[0], -1)
    if (train_idx is None) != (test_idx is None):
        raise VitsegError("pass both train_idx and test_idx, or neither.")
    if train_idx is None:
        train_idx, test_idx = split_tokens(X.shape[0], train_fraction, rng)
    scaler = StandardScaler().fit(X[train_idx])
    Xtr, Xte = scaler.transform(X[train_idx]), scaler.transform(X[test_idx])
    if isinstance(alpha, str):
        if alpha != "cv":
            raise VitsegError(f"alpha must be a positive float or 'cv'; got {alpha!r}.")
        model = RidgeCV(alphas=CV_ALPHAS, alpha_per_target=y.shape[1] > 1)
    else:
        model = Ridge(alpha=float(alpha))
    model.fit(Xtr, y[train_idx] if y.shape[1] > 1 else y[train_idx, 0])
    pred = model.predict(Xte).reshape(len(test_idx), -1)
    r2 = _r2(y[test_idx], pred)
    return float(r2[0]) if single else r2


def channel_probe_r2(features, targets, train_idx, test_idx, alpha: float = 1.0) -> np.ndarray:
    """Held-out R² of one single-channel ``StandardScaler`` + ``Ridge`` fit per channel.

    Vectorised closed form: with z the channel standardised on the training tokens (mean 0,
    ``sum z² = n``), the ridge slope is ``w = sum z (t - t̄) / (sum z² + alpha)`` and the
    intercept is the training mean t̄ — exactly what scikit-learn's pipeline computes
    (a constant channel gets slope 0, as ``StandardScaler`` leaves its scale at 1).

    Parameters
    ----------
    features : (N, C) or (gh, gw, C) array_like
    targets : (N, T) or (gh, gw, T) array_like
        T targets, fitted independently.
    train_idx, test_idx : array_like of int
    alpha : float
        Ridge penalty.

    Returns
    -------
    (T, C) ndarray of float64
        R² of channel c for target t on the held-out tokens.

    References
    ----------
    Pawlowsky et al., "What DINO saw", arXiv 2603.16840 (2026).
    """
    X = _as_tokens(features).astype(np.float64, copy=False)
    Y = np.asarray(targets, dtype=np.float64).reshape(X.shape[0], -1)
    Xtr, Xte = X[train_idx], X[test_idx]
    mu = Xtr.mean(0)
    sd = Xtr.std(0)
    sd = np.where(sd < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mu), 1.0), 1.0, sd)
    Ztr = (Xtr - mu) / sd
    Zte = (Xte - mu) / sd
    ybar = Y[train_idx].mean(0)                      # (T,)
    W = (Ztr.T @ (Y[train_idx] - ybar)) / ((Ztr**2).sum(0) + alpha)[:, None]  # (C, T)
    R = Y[test_idx] - ybar                           # residual of the intercept-only model
    sse = (R**2).sum(0)[None, :] - 2.0 * W * (Zte.T @ R) + W**2 * (Zte**2).sum(0)[:, None]
    sst = ((Y[test_idx] - Y[test_idx].mean(0)) ** 2).sum(0)  # (T,)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)
    return r2.T


def layer_labels(n_blocks: int, layers: str = "all") -> tuple[str, ...]:
    """Labels of the probed layers: ``block0 ... block{L-1}`` then ``final``, or just ``final``."""
    if layers == "final":
        return ("final",)
    return tuple(f"block{i}" for i in range(n_blocks)) + ("final",)


def probe_token_maps(maps: Sequence, *, repeats: int = 3, train_fraction: float = 1 / 36,
                     alpha: float | str = 1.0, per_channel: bool = True,
                     rng: np.random.Generator | None = None):
    """Run the probe on the feature maps of one image.

    Parameters
    ----------
    maps : sequence of L arrays (C, gh, gw), or an (L, C, gh, gw) array / tensor
        Feature maps of the probed layers (channels first, same grid).
    repeats : int
        Number of random splits (each with a fresh ``random`` target).
    train_fraction, alpha :
        As in :func:`linear_probe_r2`; the per-channel fits use ``alpha=1.0`` when
        ``alpha='cv'`` (with a single channel the penalty hardly matters).
    per_channel : bool
        Also compute per-channel R².
    rng : numpy.random.Generator, optional

    Returns
    -------
    r2 : (T, L, repeats) ndarray of float64
        All-channel R² for :data:`TARGETS` (``lr+ud`` last).
    r2_channel : (T, L, C, repeats) ndarray of float32 or None
    """
    rng = np.random.default_rng() if rng is None else rng
    if repeats < 1:
        raise VitsegError(f"repeats must be >= 1; got {repeats!r}.")
    maps = [np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m, dtype=np.float32) for m in maps]
    C, gh, gw = maps[0].shape
    L, T = len(maps), len(TARGETS)
    tokens = [m.reshape(C, -1).T for m in maps]      # (N, C) each
    r2 = np.empty((T, L, repeats))
    r2c = np.empty((T, L, C, repeats), dtype=np.float32) if per_channel else None
    ch_alpha = 1.0 if isinstance(alpha, str) else float(alpha)
    i_lr, i_ud = FIT_TARGETS.index("lr"), FIT_TARGETS.index("ud")
    for r in range(repeats):
        tg = probe_targets(gh, gw, rng)
        Y = np.stack([tg[k].ravel() for k in FIT_TARGETS], axis=1)
        tr, te = split_tokens(gh * gw, train_fraction, rng)
        for li, X in enumerate(tokens):
            vals = linear_probe_r2(X, Y, train_idx=tr, test_idx=te, alpha=alpha)
            r2[:-1, li, r] = vals
            r2[-1, li, r] = 0.5 * (vals[i_lr] + vals[i_ud])
            if per_channel:
                vc = channel_probe_r2(X, Y, tr, te, alpha=ch_alpha)  # (5, C)
                r2c[:-1, li, :, r] = vc
                r2c[-1, li, :, r] = 0.5 * (vc[i_lr] + vc[i_ud])
    return r2, r2c


@dataclass
class ProbeResult:
    """Result of :func:`iter_positional_probe` for one backbone.

    Attributes
    ----------
    backbone : str
        Backbone name.
    pretrained : bool
        ``False`` for random weights (tests and method checks only).
    targets : tuple of str
        :data:`TARGETS`.
    layers : tuple of str
        Probed layers (``block0 ... final`` or ``final``).
    r2 : (T, L, I, R) ndarray of float64
        All-channel held-out R² per target, layer, image and repeat.
    r2_channel : (T, L, C, I, R) ndarray of float32 or None
        Per-channel R² (``None`` when ``per_channel=False``).
    images : list of dict
        ``name``, ``shape`` (source Y, X), ``grid`` (gh, gw) and ``offset`` of each image.
    settings : dict
        ``train_fraction``, ``alpha``, ``repeats``, ``seed``, ``scoring``.
    """

    backbone: str
    pretrained: bool
    targets: tuple[str, ...]
    layers: tuple[str, ...]
    r2: np.ndarray
    r2_channel: np.ndarray | None
    images: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def _t(self, target: str) -> int:
        try:
            return self.targets.index(target)
        except ValueError:
            raise VitsegError(f"target must be one of {list(self.targets)}; got {target!r}.") from None

    def _l(self, layer: str | int) -> int:
        if isinstance(layer, (int, np.integer)):
            return int(layer)
        try:
            return self.layers.index(layer)
        except ValueError:
            raise VitsegError(f"layer must be one of {list(self.layers)}; got {layer!r}.") from None

    @property
    def r2_mean(self) -> np.ndarray:
        """(T, L) mean all-channel R² over images and repeats."""
        return self.r2.reshape(*self.r2.shape[:2], -1).mean(-1)

    @property
    def r2_std(self) -> np.ndarray:
        """(T, L) standard deviation over images and repeats."""
        return self.r2.reshape(*self.r2.shape[:2], -1).std(-1)

    def mean(self, target: str = "lr+ud", layer: str | int = "final") -> float:
        """Mean all-channel R² of ``target`` at ``layer``."""
        return float(self.r2_mean[self._t(target), self._l(layer)])

    def std(self, target: str = "lr+ud", layer: str | int = "final") -> float:
        """Standard deviation (over images and repeats) of ``target`` at ``layer``."""
        return float(self.r2_std[self._t(target), self._l(layer)])

    def channel_mean(self, target: str = "lr+ud") -> np.ndarray | None:
        """(C, L) mean per-channel R² of ``target``, or ``None``."""
        if self.r2_channel is None:
            return None
        rc = self.r2_channel[self._t(target)]
        return rc.reshape(*rc.shape[:2], -1).mean(-1).T

    @property
    def fingerprint(self) -> np.ndarray | None:
        """(C, L) positional fingerprint: mean per-channel R² of ``lr+ud`` per channel and layer."""
        return self.channel_mean("lr+ud")

    def to_dict(self) -> dict:
        """Plain-JSON summary: mean/std per target and layer, per-image means, fingerprint."""
        out = {
            "backbone": self.backbone,
            "pretrained": self.pretrained,
            "targets": list(self.targets),
            "layers": list(self.layers),
            "images": self.images,
            "settings": self.settings,
            "r2_mean": {t: _clean(self.r2_mean[i]) for i, t in enumerate(self.targets)},
            "r2_std": {t: _clean(self.r2_std[i]) for i, t in enumerate(self.targets)},
            "r2_final": {t: {"mean": self.mean(t), "std": self.std(t)} for t in self.targets},
            "r2_per_image_final": {
                t: _clean(self.r2[i, -1].mean(-1)) for i, t in enumerate(self.targets)
            },
        }
        if self.r2_channel is not None:
            fp = self.fingerprint
            out["fingerprint_lr+ud"] = {
                "shape": list(fp.shape), "axes": ["channel", "layer"],
                "values": np.round(fp, 4).tolist(),
            }
            out["channel_r2_final_mean"] = {
                t: {"max": float(np.nanmax(self.channel_mean(t)[:, -1])),
                    "mean": float(np.nanmean(self.channel_mean(t)[:, -1]))}
                for t in self.targets
            }
        return out


def _clean(a) -> list:
    return [None if not np.isfinite(v) else round(float(v), 6) for v in np.ravel(a)]


def _prepare_all(images, names, channel_axis, patch_size, max_side,
                 intensity: str = "reference") -> list[PreparedImage]:
    if isinstance(images, (np.ndarray, PreparedImage)) or hasattr(images, "__array__"):
        images = [images]
    out = []
    for i, im in enumerate(images):
        if isinstance(im, PreparedImage):
            out.append(im)
            continue
        name = names[i] if names is not None else f"image{i}"
        out.append(prepare_image(im, channel_axis=channel_axis, patch_size=patch_size,
                                 max_side=max_side, name=name, intensity=intensity))
    if not out:
        raise VitsegError("no images given; pass at least one 2-D image.")
    return out


def image_info(p: PreparedImage) -> dict:
    """JSON-friendly description of a prepared image."""
    return {"name": p.name, "shape": list(p.source_shape), "grid": list(p.grid),
            "offset": list(p.offset), "patch_size": p.patch_size}


def probe_result_from(backbone_name: str, pretrained: bool, per_image: list, layers: tuple[str, ...],
                      infos: list, settings: dict) -> ProbeResult:
    """Assemble a :class:`ProbeResult` from :func:`probe_token_maps` outputs of several images."""
    r2 = np.stack([p[0] for p in per_image], axis=2)            # (T, L, I, R)
    r2c = None
    if per_image[0][1] is not None:
        r2c = np.stack([p[1] for p in per_image], axis=3)       # (T, L, C, I, R)
    return ProbeResult(backbone_name, pretrained, TARGETS, layers, r2, r2c, infos, settings)


def select_maps(tokens: TokenMaps, layers: str) -> list:
    """The maps probed for ``layers`` ('final' or 'all')."""
    if layers == "final":
        return [tokens.final]
    return list(tokens.blocks) + [tokens.final]


def iter_positional_probe(backbone, images, *, layers: str = "final", per_channel: bool = True,
                     repeats: int = 3, train_fraction: float = 1 / 36, alpha: float | str = 1.0,
                     seed: int = 0, channel_axis: int | None = None, max_side: int | None = None,
                     names: Sequence[str] | None = None, intensity: str = "reference"):
    """Positional-bias linear probe of a backbone on one or more homogeneous images.

    A generator (a long job): yields :class:`~napari_vitseg._progress.Progress` and returns a
    :class:`ProbeResult`; consume it with :func:`napari_vitseg._progress.run`.

    Parameters
    ----------
    backbone : ViTBackbone
    images : array_like or sequence of array_like
        2-D images (Y, X) or (Y, X, 3) (see :func:`~._common.prepare_image`), each cropped
        (not padded) to whole patches; or :class:`~._common.PreparedImage`.
    layers : {'final', 'all'}
        Probe the final features only, or every block (before the final LayerNorm) plus the
        final features (the per-layer fingerprint).
    per_channel : bool
        Also fit one probe per channel.
    repeats : int
        Random splits per image.
    train_fraction : float
        Share of tokens that train the probe (default 1/36).
    alpha : float or 'cv'
        Ridge penalty (default 1.0), or leave-one-out choice (see the module notes).
    seed : int
        Seed of the splits and of the noise target.
    channel_axis, max_side, names, intensity :
        Passed to :func:`~._common.prepare_image` (``intensity``: the segmentation
        features' rule, ``FeatureConfig.intensity``; ignored for prepared images).

    Returns
    -------
    ProbeResult

    Raises
    ------
    VitsegError
        Bad ``layers``, images that are not 2-D or too small.

    References
    ----------
    Pawlowsky et al., "What DINO saw", arXiv 2603.16840 (2026).

    Examples
    --------
    >>> import numpy as np
    >>> from napari_vitseg._progress import run
    >>> from napari_vitseg.backbones import create_backbone
    >>> bb = create_backbone("dinov2_vits14", pretrained=False, init_values=1.0)
    >>> res = run(iter_positional_probe(bb, np.random.default_rng(0).random((84, 84)), repeats=1))
    >>> res.r2.shape  # targets, layers, images, repeats
    (6, 1, 1, 1)
    """
    if layers not in ("final", "all"):
        raise VitsegError(f"layers must be 'final' or 'all'; got {layers!r}.")
    prepared = _prepare_all(images, names, channel_axis, backbone.patch_size, max_side, intensity)
    rng = np.random.default_rng(seed)
    labels = layer_labels(len(backbone.model.blocks), layers)
    total = 2 * len(prepared)
    per_image = []
    for i, p in enumerate(prepared):
        yield Progress(2 * i, total, f"{backbone.name}: features of {p.name}")
        tok = extract_tokens(backbone, p)
        yield Progress(2 * i + 1, total, f"{backbone.name}: probing {p.name}")
        per_image.append(probe_token_maps(select_maps(tok, layers), repeats=repeats,
                                          train_fraction=train_fraction, alpha=alpha,
                                          per_channel=per_channel, rng=rng))
    yield Progress(total, total, f"{backbone.name}: probe done")
    settings = {"train_fraction": train_fraction, "alpha": alpha, "repeats": repeats, "seed": seed,
                "scoring": "R² on held-out tokens", "lr+ud": "mean of lr and ud R² on the same split",
                "per_channel_alpha": 1.0 if isinstance(alpha, str) else float(alpha)}
    return probe_result_from(backbone.name, bool(backbone.pretrained), per_image, labels,
                             [image_info(p) for p in prepared], settings)
