"""ALiBi-DINOv2: DINOv2-S/14-reg4 with its learned position embedding replaced by a 2D ALiBi
attention bias (Pawlowsky et al. 2026, "What DINO saw", arXiv 2603.16840), and the
no-position-encoding (NoPE) variant from the same work.

The bias is the 2D generalisation of ALiBi (Press et al., "Train Short, Test Long: Attention
with Linear Biases Enables Input Length Extrapolation", ICLR 2022): every attention logit
between two patches is lowered in proportion to the (wrap-around, Euclidean) distance between
them. It is passed to timm's ``VisionTransformer.forward_features`` / ``forward_intermediates``
as a float ``attn_mask``, which every block adds to its attention logits before the softmax,
so no attention module is replaced (see :meth:`ViTBackbone.attn_bias`).

Layout of this file (as timm's model files): the bias, the checkpoint conversion for the
released ``rmdocherty/dino-saw`` checkpoints, then the registered variants.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._validation import VitsegError, check_option
from ._registry import BackboneCfg, register_backbone

__all__ = [
    "alibi_distance",
    "alibi_slopes",
    "alibi_bias",
    "convert_dinosaw_state_dict",
    "ALIBI_PAPER",
]

ALIBI_PAPER = (
    "Pawlowsky et al., What DINO saw: ALiBi positional encoding reduces positional bias in "
    "Vision Transformers, arXiv 2603.16840 (2026); Press et al., Train Short, Test Long: Attention "
    "with Linear Biases, ICLR 2022"
)
_METRICS = ("euclidean", "manhattan")


# --------------------------------------------------------------------------------------------
# the bias
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _distance_cached(gh: int, gw: int, wrap: bool, metric: str, normalize: bool) -> torch.Tensor:
    ii, jj = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                            torch.arange(gw, dtype=torch.float64), indexing="ij")
    coords = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=-1)  # (N, 2), row-major
    diff = (coords[:, None, :] - coords[None, :, :]).abs()  # (N, N, 2)
    if wrap:
        sizes = torch.tensor([gh, gw], dtype=torch.float64)
        diff = torch.minimum(diff, sizes - diff)
    if metric == "euclidean":
        dist = torch.sqrt((diff**2).sum(-1))
    else:
        dist = diff.sum(-1)
    if normalize:
        dmax = dist.max()
        if dmax > 0:  # a 1 x 1 grid has max distance 0
            dist = dist / dmax
    dist.requires_grad_(False)
    return dist


def alibi_distance(gh: int, gw: int, *, wrap: bool = True, metric: str = "euclidean",
                   normalize: bool = True) -> torch.Tensor:
    """Distance between every pair of patches of a ``gh x gw`` grid.

    Parameters
    ----------
    gh, gw : int
        Grid size in patches (rows, columns); patch ``(i, j)`` has flat index ``i * gw + j``.
    wrap : bool
        Per axis use ``min(|d|, n - |d|)`` (distance on a torus, the released default)
        instead of ``|d|``.
    metric : {'euclidean', 'manhattan'}
        How the two per-axis distances are combined.
    normalize : bool
        Divide by the largest distance so that values lie in [0, 1] for every grid size
        (a 1 x 1 grid gives 0).

    Returns
    -------
    torch.Tensor, (gh * gw, gh * gw) float64
        A new tensor (the cached one is copied).

    Raises
    ------
    VitsegError
        For a non-positive grid size or an unknown metric.
    """
    gh, gw = int(gh), int(gw)
    if gh < 1 or gw < 1:
        raise VitsegError(f"The ALiBi grid must be at least 1 x 1 patches; got {gh} x {gw}.")
    check_option(metric, _METRICS, "metric")
    return _distance_cached(gh, gw, bool(wrap), metric, bool(normalize)).clone()


def alibi_slopes(num_heads: int, slope: str | float | Sequence[float] = "constant") -> torch.Tensor:
    """Per-head ALiBi slopes ``m_h``.

    Parameters
    ----------
    num_heads : int
        Number of attention heads H.
    slope : {'constant', 'geometric'}, float or sequence of float
        ``'constant'``: ``m_h = 1`` for every head (the released ALiBi-DINOv2 models);
        ``'geometric'``: ``m_i = 2^(-8 (i + 1) / H)`` (Press et al.'s fixed slopes, an ablation
        in Pawlowsky et al.); a float: that constant for every head; a sequence: one per head.

    Returns
    -------
    torch.Tensor, (H,) float64
    """
    if isinstance(slope, str):
        check_option(slope, ("constant", "geometric"), "slope")
        if slope == "constant":
            return torch.ones(num_heads, dtype=torch.float64)
        return torch.tensor([2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)],
                            dtype=torch.float64)
    if isinstance(slope, (int, float)):
        return torch.full((num_heads,), float(slope), dtype=torch.float64)
    m = torch.as_tensor(list(slope), dtype=torch.float64).reshape(-1)
    if m.numel() != num_heads:
        raise VitsegError(f"ALiBi needs one slope per head ({num_heads}); got {m.numel()} slopes.")
    return m


def alibi_bias(gh: int, gw: int, num_prefix_tokens: int = 0, *, wrap: bool = True,
               metric: str = "euclidean", slope: str | float | Sequence[float] = "constant",
               num_heads: int | None = None, dtype: torch.dtype = torch.float32,
               device=None) -> torch.Tensor:
    """2D ALiBi attention bias for a ``gh x gw`` patch grid with prefix tokens.

    ``b[h, p, q] = -m_h * D[p, q]`` with ``D`` the normalised (wrap-around) distance of
    :func:`alibi_distance`; the ``num_prefix_tokens`` prefix tokens (timm order
    ``[CLS, reg x4, patches]``) get zero bias to and from every token (zero rows and columns at
    the top / left).

    Parameters
    ----------
    gh, gw : int
        Patch grid (rows, columns), e.g. ``H // 14, W // 14``.
    num_prefix_tokens : int
        CLS + register tokens in front of the patch tokens.
    wrap, metric
        See :func:`alibi_distance`.
    slope : {'constant', 'geometric'}, float or sequence of float
        See :func:`alibi_slopes`.
    num_heads : int, optional
        Needed for per-head slopes; if all slopes are equal a single matrix is returned.
    dtype, device
        Of the result.

    Returns
    -------
    torch.Tensor
        ``(N, N)`` when every head has the same slope (broadcast over batch and heads by
        SDPA), else ``(H, N, N)``; ``N = num_prefix_tokens + gh * gw``. Values lie in
        ``[-max(m), 0]``.

    Raises
    ------
    VitsegError
        For invalid sizes, metric or slopes.

    References
    ----------
    .. [1] Pawlowsky et al., "What DINO saw", arXiv 2603.16840 (2026).
    .. [2] Press, Smith and Lewis, "Train Short, Test Long: Attention with Linear Biases
       Enables Input Length Extrapolation", ICLR 2022.

    Examples
    --------
    >>> b = alibi_bias(2, 2, num_prefix_tokens=1)
    >>> b.shape
    torch.Size([5, 5])
    >>> [round(v, 4) for v in b[1].tolist()]
    [0.0, 0.0, -0.7071, -0.7071, -1.0]
    """
    if num_prefix_tokens < 0:
        raise VitsegError(f"num_prefix_tokens must be >= 0; got {num_prefix_tokens}.")
    dist = alibi_distance(gh, gw, wrap=wrap, metric=metric, normalize=True)
    if num_heads is None:
        if not isinstance(slope, (str, int, float)):
            num_heads = len(list(slope))
        else:
            num_heads = 1
    m = alibi_slopes(num_heads, slope)
    if torch.all(m == m[0]):
        bias = -m[0] * dist + 0.0  # + 0.0 turns -0.0 into 0.0
    else:
        bias = -m[:, None, None] * dist[None] + 0.0
    if num_prefix_tokens:
        p = int(num_prefix_tokens)
        bias = F.pad(bias, (p, 0, p, 0), value=0.0)
    return bias.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# checkpoint conversion (rmdocherty/dino-saw)
# --------------------------------------------------------------------------------------------
_SLOPE_KEY = re.compile(r"^blocks\.(\d+)\.attn\.(m|slope|slopes|alibi_slope|alibi_slopes)$")
_DISTANCE_KEY = re.compile(r"(^|\.)distance_matrix(\.|$)")
POS_EMBED_ZERO_ATOL = 1e-6


def convert_dinosaw_state_dict(state_dict: dict, cfg: BackboneCfg) -> tuple[dict, list[tuple[str, str]]]:
    """Convert a dino-saw ALiBi / NoPE checkpoint (prefixes already stripped) to timm names.

    The released checkpoints are timm ``VisionTransformer`` state dicts of DINOv2-S/14-reg4,
    possibly with a zeroed ``pos_embed`` of shape (1, 1369, 384), per-block slope buffers
    ``blocks.N.attn.m`` (H, 1, 1), a classifier ``head.*`` and a ``mask_token``. This drops
    ``pos_embed`` (refusing one that is not ~0: that is a DINOv2 checkpoint), ``head.*``,
    ``mask_token``, the slope buffers (refusing slopes that differ from the registry entry's)
    and distance-matrix buffers, and renames facebookresearch's ``register_tokens`` to
    ``reg_token``.

    Parameters
    ----------
    state_dict : dict of str to torch.Tensor
        With the ``model.`` / ``vit.`` prefixes removed.
    cfg : BackboneCfg
        The ALiBi (``position='alibi'``) or NoPE (``position='none'``) entry.

    Returns
    -------
    converted : dict of str to torch.Tensor
    dropped : list of (key, reason)

    Raises
    ------
    VitsegError
        Non-zero position embedding, or slopes that do not match ``cfg``.

    References
    ----------
    .. [1] Pawlowsky et al., "What DINO saw", arXiv 2603.16840 (2026).
    """
    out: dict = {}
    dropped: list[tuple[str, str]] = []
    alibi_kw = cfg.extra.get("alibi", {})
    expected = alibi_slopes(cfg.num_heads, alibi_kw.get("slope", "constant"))
    for k, v in state_dict.items():
        if k == "pos_embed":
            vmax = float(v.detach().abs().max()) if v.numel() and not v.is_meta else 0.0
            if vmax > POS_EMBED_ZERO_ATOL:
                raise VitsegError(
                    f"This checkpoint is not an {'ALiBi' if cfg.position == 'alibi' else 'NoPE'} "
                    f"checkpoint for backbone {cfg.name!r}: its position embedding {tuple(v.shape)} is not "
                    f"zero (max |pos_embed| = {vmax:.3g}); it looks like a DINOv2 checkpoint with a learned "
                    f"position embedding. Load it as a DINOv2 backbone (for example 'dinov2_vits14_reg') "
                    f"or use the ALiBi file {cfg.weights_file!r}."
                )
            dropped.append((k, "zero position embedding (not used)"))
        elif k.startswith("head.") or k == "head":
            dropped.append((k, "classifier head (not used)"))
        elif k == "mask_token":
            dropped.append((k, "mask token (training only)"))
        elif _SLOPE_KEY.match(k):
            if cfg.position == "alibi" and not v.is_meta:
                m = v.detach().double().reshape(-1).cpu()
                if m.numel() != cfg.num_heads or not torch.allclose(m, expected, atol=1e-6):
                    raise VitsegError(
                        f"The ALiBi slopes in this checkpoint ({k} = {m.tolist()}) differ from those of "
                        f"backbone {cfg.name!r} ({expected.tolist()}); it was trained with another "
                        "slope setting and would give wrong features."
                    )
            dropped.append((k, "ALiBi slope buffer (constant, rebuilt)"))
        elif _DISTANCE_KEY.search(k):
            dropped.append((k, "ALiBi distance buffer (rebuilt per grid)"))
        elif k == "register_tokens":
            out["reg_token"] = v
            dropped.append((k, "renamed to reg_token"))
        else:
            out[k] = v
    return out, dropped


# --------------------------------------------------------------------------------------------
# registered variants
# --------------------------------------------------------------------------------------------
_DINOSAW_REPO = "rmdocherty/dino-saw"
_DINOSAW_URL = "https://huggingface.co/rmdocherty/dino-saw"
_ALIBI_KW = {"wrap": True, "metric": "euclidean", "slope": "constant"}
#: tldr-group/dino-saw commit whose ALiBi / NoPE wrappers these entries reproduce
DINOSAW_COMMIT = "636424c112ead8258f0ff6baee96409eb805ab26"
_DINOSAW_REF = (f"tldr-group/dino-saw@{DINOSAW_COMMIT[:7]}: dinosaw/alibi_logic.py, "
                "dinosaw/wrappers/alibi.py")


def _dinosaw_cfg(name: str, position: str, weights_file: str, description: str) -> BackboneCfg:
    return BackboneCfg(
        name=name, timm_arch="vit_small_patch14_reg4_dinov2", timm_tag=None,
        embed_dim=384, depth=12, num_heads=6, num_prefix_tokens=5, patch_size=14,
        position=position, pos_embed_interp=None, reference_code=_DINOSAW_REF,
        weights_file=weights_file, weights_repo=_DINOSAW_REPO,
        weights_url=f"{_DINOSAW_URL}/blob/main/{weights_file}",
        license="see the model card at " + _DINOSAW_URL,
        paper=ALIBI_PAPER, description=description,
        extra={"alibi": dict(_ALIBI_KW)} if position == "alibi" else {},
    )


@register_backbone
def alibi_dv2_vits14_reg() -> BackboneCfg:
    return _dinosaw_cfg("alibi_dv2_vits14_reg", "alibi", "alibi_dv2_vits14_reg4.pth",
                        "ALiBi-DINOv2 ViT-S/14 + 4 registers (2D ALiBi, low positional bias)")


@register_backbone
def alibi_coco_dv2_vits14_reg() -> BackboneCfg:
    return _dinosaw_cfg("alibi_coco_dv2_vits14_reg", "alibi", "alibi_coco_dv2_vits14_reg4.pth",
                        "ALiBi-DINOv2 ViT-S/14 + 4 registers, retrofitted on COCO")


@register_backbone
def nope_coco_dv2_vits14_reg() -> BackboneCfg:
    return _dinosaw_cfg("nope_coco_dv2_vits14_reg", "none", "nope_coco_dv2_vits14_reg4.pth",
                        "DINOv2 ViT-S/14 + 4 registers without position encoding (NoPE), COCO")
