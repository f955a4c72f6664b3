"""Token norms, high-norm ("artifact") tokens and SINDER defect angles, per block.

Large DINOv2 models write a few tokens with ~10x the usual norm into redundant background
patches (Darcet et al., ICLR 2024); SINDER (Wang et al., ECCV 2024) traces them to the leading
singular direction ν_i of the linearised blocks. This module measures, on the raw residual
stream (block outputs *before* the final LayerNorm, prefix tokens dropped):

- per-layer token norms, their histogram (log-spaced bins, for log-count plots), median and max;
- flagged high-norm tokens with a relative threshold (``norm > rel_threshold x`` the layer's
  median, default 3) and the share of flagged tokens per layer;
- when defect directions are available (:func:`napari_vitseg.backbones.sinder.defect_directions`),
  the angle map ``arccos |cos(x_t, ν_i)|`` (degrees; 0 = along the defect direction), SINDER's
  defective-token rule, and the angle between ν_i and the empirical direction of the flagged
  tokens (top singular vector).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .._progress import Progress
from .._validation import VitsegError
from ._common import PreparedImage, TokenMaps, extract_tokens
from .positional import _prepare_all, image_info

__all__ = [
    "NormResult",
    "block_token_norms",
    "token_norms",
    "flag_high_norm",
    "norm_histogram",
    "angle_map",
    "sinder_defects",
    "empirical_direction",
    "angle_between",
    "defect_directions_or_none",
    "analyse_tokens",
    "iter_token_norms",
]

def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().float().numpy()
    return np.asarray(a)


def block_token_norms(blocks) -> np.ndarray:
    """L2 norm of every patch token of every block.

    Parameters
    ----------
    blocks : (L, D, gh, gw) or (D, gh, gw) tensor or ndarray
        Block outputs before the final LayerNorm, channels first.

    Returns
    -------
    (L, gh, gw) or (gh, gw) ndarray of float32
    """
    if isinstance(blocks, torch.Tensor):
        return torch.linalg.vector_norm(blocks.float(), dim=-3).cpu().numpy().astype(np.float32)
    return np.linalg.norm(np.asarray(blocks, dtype=np.float32), axis=-3).astype(np.float32)


def token_norms(backbone, image, *, channel_axis: int | None = None, max_side: int | None = None,
                intensity: str = "reference") -> np.ndarray:
    """Per-block norms of the patch tokens of one image, before the final LayerNorm.

    Parameters
    ----------
    backbone : ViTBackbone
    image : (Y, X) or (Y, X, 3) array_like, or PreparedImage
        Cropped (not padded) to whole patches.
    channel_axis, max_side, intensity :
        See :func:`~._common.prepare_image`.

    Returns
    -------
    (L, gh, gw) ndarray of float32
        L = number of blocks.

    References
    ----------
    Darcet et al., "Vision Transformers Need Registers", ICLR 2024, arXiv 2309.16588.
    """
    (p,) = _prepare_all([image], None, channel_axis, backbone.patch_size, max_side, intensity)
    return block_token_norms(extract_tokens(backbone, p).blocks)


def flag_high_norm(norms, rel_threshold: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Flag high-norm tokens: norm > ``rel_threshold`` x the median of their layer.

    Parameters
    ----------
    norms : (L, gh, gw) or (gh, gw) array_like
        Token norms (:func:`token_norms`).
    rel_threshold : float
        Multiple of the layer median (default 3; Darcet et al. use an absolute 150 for ViT-g,
        which does not transfer to S/B models).

    Returns
    -------
    mask : bool ndarray, same shape as ``norms``
    share : (L,) ndarray of float64, or a float for a 2-D input
        Fraction of flagged tokens per layer.

    Raises
    ------
    VitsegError
        For a threshold <= 0.

    References
    ----------
    Darcet et al., "Vision Transformers Need Registers", ICLR 2024, arXiv 2309.16588.
    """
    if not rel_threshold > 0:
        raise VitsegError(f"rel_threshold must be > 0; got {rel_threshold!r}.")
    n = np.asarray(norms, dtype=np.float32)
    flat = n.reshape(-1, n.shape[-2] * n.shape[-1])
    med = np.median(flat, axis=1)
    mask = flat > rel_threshold * med[:, None]
    share = mask.mean(1)
    mask = mask.reshape(n.shape)
    return (mask, share) if n.ndim == 3 else (mask, float(share[0]))


def norm_histogram(norms, bins: int = 60, edges=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer histogram of token norms on shared log-spaced bins.

    Parameters
    ----------
    norms : (L, gh, gw) array_like, or a sequence of them (several images, same L)
    bins : int
        Number of bins when ``edges`` is not given.
    edges : (bins + 1,) array_like, optional
        Bin edges (e.g. shared across backbones).

    Returns
    -------
    counts : (L, bins) ndarray of int64
    edges : (bins + 1,) ndarray of float64
        Log-spaced between the smallest and largest positive norm.
    """
    arrs = [np.asarray(a, dtype=np.float64) for a in (norms if isinstance(norms, (list, tuple)) else [norms])]
    arrs = [a.reshape(a.shape[0], -1) if a.ndim == 3 else a.reshape(1, -1) for a in arrs]
    allv = np.concatenate(arrs, axis=1)
    if edges is None:
        pos = allv[allv > 0]
        lo, hi = (pos.min(), pos.max()) if pos.size else (1e-3, 1.0)
        if hi <= lo:
            lo, hi = lo * 0.9, hi * 1.1 + 1e-12
        edges = np.geomspace(lo, hi * (1 + 1e-9), bins + 1)
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.stack([np.histogram(row, bins=edges)[0] for row in allv]).astype(np.int64)
    return counts, edges


def angle_map(tokens, direction) -> np.ndarray:
    """Angle between each token and a (sign-free) defect direction, ``arccos |cos|`` in degrees.

    Parameters
    ----------
    tokens : (D, gh, gw) or (L, D, gh, gw) tensor or ndarray
        Block outputs before the final LayerNorm.
    direction : (D,) or (L, D) array_like
        Defect direction ν (one per layer for 4-D ``tokens``).

    Returns
    -------
    (gh, gw) or (L, gh, gw) ndarray of float32
        In [0, 90]; 0 = parallel to ν (a defect-like token).

    References
    ----------
    Wang, Zhang, Salzmann, "SINDER: Repairing the Singular Defects of DINOv2", ECCV 2024,
    arXiv 2407.16826.
    """
    t = torch.as_tensor(_np(tokens), dtype=torch.float32)
    d = torch.as_tensor(_np(direction), dtype=torch.float32)
    if t.ndim == 3:
        t, d = t[None], d.reshape(1, -1)
    if d.ndim == 1:
        d = d[None].expand(t.shape[0], -1)
    if d.shape != t.shape[:2]:
        raise VitsegError(f"direction has shape {tuple(d.shape)}; expected ({t.shape[0]}, {t.shape[1]}) "
                          "(one D-vector per layer).")
    cos = torch.einsum("ldhw,ld->lhw", t, d) / (
        torch.linalg.vector_norm(t, dim=1) * torch.linalg.vector_norm(d, dim=1)[:, None, None] + 1e-12)
    ang = torch.rad2deg(torch.arccos(cos.abs().clamp(0, 1))).numpy().astype(np.float32)
    return ang if _np(tokens).ndim == 4 else ang[0]


def sinder_defects(tokens, directions, sigma: float = 4.0, min_count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """SINDER's defective-token rule, per layer.

    With ``l_t = -|cos(x_t, ν_i)|``, token t is defective if ``l_t < mean(l) - sigma std(l)``
    over the image (as in the reference code); the one-token border is never flagged, and a
    layer counts only with at least ``min_count`` defective tokens. Delegates to
    :func:`napari_vitseg.backbones.sinder.detect_defective_tokens`.

    Parameters
    ----------
    tokens : (L, D, gh, gw) tensor or ndarray
        Block outputs before the final LayerNorm.
    directions : (L, D) array_like
        Defect direction of each layer.
    sigma : float
        Threshold in standard deviations (4 in the paper).
    min_count : int
        Minimum number of defective tokens for a layer to count (3 in the paper).

    Returns
    -------
    mask : (L, gh, gw) ndarray of bool
        All False in layers with fewer than ``min_count`` defective tokens.
    counts : (L,) ndarray of int64
        Defective tokens per layer before the ``min_count`` rule.

    References
    ----------
    Wang, Zhang, Salzmann, "SINDER: Repairing the Singular Defects of DINOv2", ECCV 2024,
    arXiv 2407.16826.
    """
    from ..backbones.sinder import detect_defective_tokens

    t = torch.as_tensor(_np(tokens), dtype=torch.float32)
    d = torch.as_tensor(_np(directions), dtype=torch.float32)
    if t.ndim != 4 or d.shape != t.shape[:2]:
        raise VitsegError(f"tokens must be (L, D, gh, gw) and directions (L, D); got {tuple(t.shape)} "
                          f"and {tuple(d.shape)}.")
    raw = torch.stack([detect_defective_tokens(t[i], d[i], sigma=sigma, min_tokens=1) for i in range(len(t))])
    mask = raw.numpy().astype(bool)
    counts = mask.reshape(len(mask), -1).sum(1).astype(np.int64)
    mask[counts < min_count] = False
    return mask, counts


def empirical_direction(tokens, mask) -> np.ndarray | None:
    """Top right-singular vector of the flagged tokens (the direction they share).

    Parameters
    ----------
    tokens : (D, gh, gw) tensor or ndarray
    mask : (gh, gw) bool array_like

    Returns
    -------
    (D,) ndarray of float64, or None when no token is flagged.
    """
    t = _np(tokens).astype(np.float64)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    X = t.reshape(t.shape[0], -1)[:, m.ravel()].T  # (n, D)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    return vt[0]


def angle_between(u, v) -> float:
    """Angle in degrees between two sign-free directions, ``arccos |cos(u, v)|`` in [0, 90]."""
    u, v = np.ravel(_np(u)).astype(np.float64), np.ravel(_np(v)).astype(np.float64)
    c = abs(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-300)
    return float(np.degrees(np.arccos(min(1.0, c))))


_DIR_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def defect_directions_or_none(backbone, n_samples: int = 20000, seed: int = 0) -> np.ndarray | None:
    """SINDER defect directions ν_i of every block, or ``None`` where they cannot be computed.

    Uses :func:`napari_vitseg.backbones.sinder.defect_directions` (``None`` where it raises
    ``NotImplementedError``); results are cached per backbone object.

    Returns
    -------
    (L, D) ndarray of float32 or None
    """
    key = (n_samples, seed)
    cached = _DIR_CACHE.get(backbone, {})
    if key in cached:
        return cached[key]
    from ..backbones.sinder import defect_directions

    try:
        dirs = defect_directions(backbone, n_samples=n_samples, seed=seed)
    except NotImplementedError:
        return None
    dirs = _np(dirs).astype(np.float32)
    _DIR_CACHE.setdefault(backbone, {})[key] = dirs
    return dirs


def analyse_tokens(tokens: TokenMaps, *, rel_threshold: float = 3.0, directions=None) -> dict:
    """Norm and defect analysis of one image's block tokens.

    Parameters
    ----------
    tokens : TokenMaps
        From :func:`~._common.extract_tokens`.
    rel_threshold : float
        See :func:`flag_high_norm`.
    directions : (L, D) array_like, optional
        Defect directions; without them the angle outputs are ``None`` / NaN.

    Returns
    -------
    dict
        ``norms`` (L, gh, gw) float32, ``flagged`` (L, gh, gw) bool, ``share`` (L,),
        ``median`` (L,), ``max`` (L,), ``angles`` (L, gh, gw) float32 or None,
        ``defects`` (L, gh, gw) bool or None, ``defect_counts`` (L,) or None,
        ``nu_vs_empirical`` (L,) degrees (NaN where no token is flagged or no direction).
    """
    norms = block_token_norms(tokens.blocks)
    flagged, share = flag_high_norm(norms, rel_threshold)
    L = norms.shape[0]
    flat = norms.reshape(L, -1)
    out = {"norms": norms, "flagged": flagged, "share": share,
           "median": np.median(flat, 1), "max": flat.max(1),
           "angles": None, "defects": None, "defect_counts": None,
           "nu_vs_empirical": np.full(L, np.nan)}
    if directions is not None:
        d = _np(directions)
        angles = angle_map(tokens.blocks, d)
        defects, counts = sinder_defects(tokens.blocks, d)
        out.update(angles=angles, defects=defects, defect_counts=counts)
        for i in range(L):
            e = empirical_direction(tokens.blocks[i], flagged[i])
            if e is not None:
                out["nu_vs_empirical"][i] = angle_between(e, d[i])
    return out


@dataclass
class NormResult:
    """Result of :func:`iter_token_norms` for one backbone.

    Attributes
    ----------
    backbone : str
    pretrained : bool
    layers : tuple of str
        ``block0 ... block{L-1}`` (outputs before the final LayerNorm).
    rel_threshold : float
    images : list of dict
        ``name``, ``shape``, ``grid``, ``offset``, ``patch_size`` per image.
    per_image : list of dict
        :func:`analyse_tokens` output per image.
    hist_counts : (L, bins) ndarray of int64
        Norm histogram per layer, summed over images.
    hist_edges : (bins + 1,) ndarray
    has_directions : bool
        Whether SINDER defect directions were available.

    References
    ----------
    Darcet et al., ICLR 2024, arXiv 2309.16588; Wang et al., ECCV 2024, arXiv 2407.16826.
    """

    backbone: str
    pretrained: bool
    layers: tuple[str, ...]
    rel_threshold: float
    images: list
    per_image: list
    hist_counts: np.ndarray
    hist_edges: np.ndarray
    has_directions: bool = False
    settings: dict = field(default_factory=dict)

    @property
    def share(self) -> np.ndarray:
        """(I, L) share of flagged tokens per image and layer."""
        return np.stack([p["share"] for p in self.per_image])

    @property
    def median(self) -> np.ndarray:
        """(I, L) median token norm."""
        return np.stack([p["median"] for p in self.per_image])

    @property
    def max(self) -> np.ndarray:
        """(I, L) maximum token norm."""
        return np.stack([p["max"] for p in self.per_image])

    def to_dict(self) -> dict:
        """Plain-JSON summary (no maps)."""
        def lst(a):
            return [None if not np.isfinite(v) else round(float(v), 6) for v in np.ravel(a)]

        per = []
        for info, p in zip(self.images, self.per_image, strict=True):
            d = {"image": info["name"], "share_flagged": lst(p["share"]),
                 "n_flagged": [int(m.sum()) for m in p["flagged"]],
                 "median_norm": lst(p["median"]), "max_norm": lst(p["max"]),
                 "max_over_median": lst(p["max"] / np.maximum(p["median"], 1e-12))}
            if p["angles"] is not None:
                d["min_angle_deg"] = lst(p["angles"].reshape(len(p["angles"]), -1).min(1))
                d["sinder_defect_counts"] = [int(c) for c in p["defect_counts"]]
                d["nu_vs_flagged_direction_deg"] = lst(p["nu_vs_empirical"])
            per.append(d)
        return {"backbone": self.backbone, "pretrained": self.pretrained, "layers": list(self.layers),
                "rel_threshold": self.rel_threshold, "has_defect_directions": self.has_directions,
                "share_flagged_mean": lst(self.share.mean(0)),
                "median_norm_mean": lst(self.median.mean(0)), "max_norm_max": lst(self.max.max(0)),
                "histogram": {"edges": lst(self.hist_edges), "counts": self.hist_counts.tolist()},
                "images": self.images, "per_image": per, "settings": self.settings}


def norm_result_from(backbone_name: str, pretrained: bool, n_blocks: int, analyses: list, infos: list,
                     rel_threshold: float, has_directions: bool, bins: int = 60) -> NormResult:
    """Assemble a :class:`NormResult` from :func:`analyse_tokens` outputs."""
    counts, edges = norm_histogram([a["norms"] for a in analyses], bins=bins)
    return NormResult(backbone_name, pretrained, tuple(f"block{i}" for i in range(n_blocks)),
                      float(rel_threshold), infos, analyses, counts, edges, has_directions,
                      {"norms": "L2 norm of block outputs before the final LayerNorm, prefix tokens dropped",
                       "flag": f"norm > {rel_threshold} x layer median (per image)",
                       "sinder_rule": "-|cos| < mean - 4 std over interior tokens; >= 3 per layer"})


def iter_token_norms(backbone, images, *, rel_threshold: float = 3.0, directions="auto",
                           bins: int = 60, channel_axis: int | None = None, max_side: int | None = None,
                           names: Sequence[str] | None = None, intensity: str = "reference"):
    """Token-norm and defect diagnostics of a backbone on one or more images (a job generator).

    Parameters
    ----------
    backbone : ViTBackbone
    images : array_like or sequence of array_like or PreparedImage
    rel_threshold : float
        High-norm flag: norm > ``rel_threshold`` x layer median.
    directions : 'auto', None or (L, D) array_like
        Defect directions: computed with SINDER's weight-only method when available
        (``'auto'``), skipped (``None``), or given.
    bins : int
        Histogram bins.
    channel_axis, max_side, names, intensity :
        See :func:`~._common.prepare_image`.

    Yields
    ------
    Progress

    Returns
    -------
    NormResult

    References
    ----------
    Darcet et al., "Vision Transformers Need Registers", ICLR 2024, arXiv 2309.16588.
    Wang, Zhang, Salzmann, "SINDER: Repairing the Singular Defects of DINOv2", ECCV 2024,
    arXiv 2407.16826.
    """
    prepared: list[PreparedImage] = _prepare_all(images, names, channel_axis, backbone.patch_size, max_side,
                                                 intensity)
    total = len(prepared) + 1
    yield Progress(0, total, f"{backbone.name}: defect directions")
    dirs = defect_directions_or_none(backbone) if isinstance(directions, str) and directions == "auto" else (
        None if directions is None else _np(directions))
    analyses = []
    for i, p in enumerate(prepared):
        yield Progress(i + 1, total, f"{backbone.name}: token norms of {p.name}")
        analyses.append(analyse_tokens(extract_tokens(backbone, p), rel_threshold=rel_threshold, directions=dirs))
    yield Progress(total, total, f"{backbone.name}: norms done")
    return norm_result_from(backbone.name, bool(backbone.pretrained), len(backbone.model.blocks), analyses,
                            [image_info(p) for p in prepared], rel_threshold, dirs is not None, bins)
