"""SINDER: singular defect directions of DINOv2 and their repair
(Wang, Zhang and Salzmann, "SINDER: Repairing the Singular Defects of DINOv2", ECCV 2024,
arXiv 2407.16826).

High-norm "defect" tokens of DINOv2 point along the leading left singular vector of the
network's linearised blocks. This module

* computes that *defect direction* for every block from the weights alone
  (:func:`defect_directions`), for ``fc1 -> GELU -> fc2`` (ViT-S/B/L) and SwiGLU (ViT-g) MLPs;
* flags the tokens of an image that are aligned with it (:func:`detect_defective_tokens`);
* repairs a backbone by training only offsets ``eps`` of the singular values of its linear
  layers so that defective tokens look like their neighbours (:func:`iter_repair`, a generator
  that yields :class:`~napari_vitseg._progress.Progress`), saves the offsets as a small
  safetensors file with JSON metadata (:func:`save_repair`) and applies them to the base
  weights when a ``sinder_<base>`` backbone is loaded (:func:`apply_repair`).

Everything works on block outputs before the final LayerNorm, prefix tokens dropped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._progress import JobGenerator, Progress
from .._validation import VitsegError
from . import dinov2 as _dinov2  # noqa: F401  (the bases must be registered first)
from ._base import ViTBackbone, build_timm_model
from ._input import scale_intensity
from ._registry import BackboneCfg, PosEmbedInterp, get_backbone_cfg, register_backbone

__all__ = [
    "SINDER_PAPER",
    "REPAIR_FORMAT",
    "attention_linearisation",
    "mlp_linearisation",
    "defect_directions",
    "defect_scores",
    "detect_defective_tokens",
    "neighbourhood_target",
    "prepare_images",
    "REPAIR_PRESETS",
    "repair_preset",
    "RepairResult",
    "iter_repair",
    "save_repair",
    "load_repair",
    "is_repair_file",
    "check_repair_file",
    "apply_repair",
]

SINDER_PAPER = (
    "Wang, Zhang and Salzmann, SINDER: Repairing the Singular Defects of DINOv2, ECCV 2024, "
    "arXiv 2407.16826"
)
REPAIR_FORMAT = "vitseg-sinder-repair"
REPAIR_VERSION = 1
_FIT_CHUNK = 4096  # samples per chunk of the MLP least-squares fit
_GAUSS3 = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0

#: Repair schedules: ``'fast'`` (default; minutes on a CPU) and ``'reference'``, the schedule of
#: SINDER's ``main.py`` (haoqiwang/sinder ``d5f13fa``): 518-px images (shorter side resized
#: with bicubic antialiasing, centre crop, ``sinder/data.py`` ``make_transform``), up to
#: 30,000 steps (``--max_iter``), a stopping window of 1,000 images pre-filled with "defect"
#: (``skip_history = [False] * 1000``), 10 trained blocks (``--limit_layers``) and 100,000
#: Gaussian samples per MLP linearisation (``sinder/singular_defect.py``). ``size`` and
#: ``resize`` are :func:`prepare_images` arguments, the others :func:`iter_repair` ones;
#: ``None`` means the rule given there.
REPAIR_PRESETS = {
    "fast": {"size": 224, "resize": False, "max_steps": 150, "stop_window": None,
             "prefill_stop_window": False, "layer_window": None, "n_samples": 20_000},
    "reference": {"size": 518, "resize": True, "max_steps": 30_000, "stop_window": 1000,
                  "prefill_stop_window": True, "layer_window": 10, "n_samples": 100_000},
}


def repair_preset(name: str) -> dict:
    """The settings of a repair preset (a copy of :data:`REPAIR_PRESETS` ``[name]``).

    Raises
    ------
    VitsegError
        An unknown preset name.

    Examples
    --------
    >>> repair_preset("reference")["max_steps"], repair_preset("fast")["n_samples"]
    (30000, 20000)
    """
    try:
        return dict(REPAIR_PRESETS[name])
    except (KeyError, TypeError):
        raise VitsegError(f"Unknown repair preset {name!r}; choose one of {sorted(REPAIR_PRESETS)}.") from None


def _timm(model) -> nn.Module:
    return model.model if isinstance(model, ViTBackbone) else model


def _num_prefix(model) -> int:
    return int(getattr(_timm(model), "num_prefix_tokens", 1))


def _ls_gamma(ls: nn.Module, dim: int, like: torch.Tensor) -> torch.Tensor:
    g = getattr(ls, "gamma", None)
    if g is None:  # nn.Identity: LayerScale off
        return torch.ones(dim, dtype=torch.float64, device=like.device)
    return g.detach().double()


def _ln_weight(norm: nn.Module, dim: int, like: torch.Tensor) -> torch.Tensor:
    w = getattr(norm, "weight", None)
    if w is None:
        return torch.ones(dim, dtype=torch.float64, device=like.device)
    return w.detach().double()


def _center_cols(m: torch.Tensor) -> torch.Tensor:
    """``m @ P`` with ``P = I - 11^T / D`` (LayerNorm's centring)."""
    return m - m.mean(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------
# defect directions
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def attention_linearisation(block: nn.Module) -> torch.Tensor:
    """Linear map of a block's attention branch with the softmax taken as the identity.

    ``A = diag(ls1.gamma) W_proj W_v diag(norm1.weight) P`` with ``W_v`` the last third of
    ``qkv.weight`` and ``P = I - 11^T / D``; biases and LayerNorm's ``1/sigma`` are dropped.

    Parameters
    ----------
    block : timm ``Block``

    Returns
    -------
    torch.Tensor, (D, D) float64

    References
    ----------
    .. [1] Wang, Zhang and Salzmann, "SINDER", ECCV 2024, arXiv 2407.16826, Sec. 3.
    """
    qkv = block.attn.qkv.weight.detach()
    dim = qkv.shape[1]
    w_v = qkv[2 * (qkv.shape[0] // 3):].double()
    w_proj = block.attn.proj.weight.detach().double()
    a = _ls_gamma(block.ls1, dim, qkv)[:, None] * (w_proj @ w_v)
    a = a * _ln_weight(block.norm1, dim, qkv)[None, :]
    return _center_cols(a)


def _mlp_hidden(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of ``mlp.fc2`` for input ``x`` (``act(fc1(x))`` or the SwiGLU gate product)."""
    captured = {}

    def hook(_mod, args):
        captured["h"] = args[0]
        raise _StopForward

    handle = mlp.fc2.register_forward_pre_hook(hook)
    try:
        mlp(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["h"]


class _StopForward(Exception):
    pass


@torch.no_grad()
def mlp_linearisation(block: nn.Module, n_samples: int = 20000,
                      generator: torch.Generator | None = None,
                      samples: torch.Tensor | None = None) -> torch.Tensor:
    """Linear map of a block's MLP branch, fitted by least squares on Gaussian inputs.

    ``A_hat`` is the least-squares (no intercept) fit of ``x -> h(x)`` for ``x ~ N(0, I)``, with
    ``h`` the input of ``fc2`` (``GELU(fc1(x))``, or ``SiLU(x1) * x2`` for SwiGLU); then
    ``C = diag(ls2.gamma) W_fc2 A_hat diag(norm2.weight) P``.

    Parameters
    ----------
    block : timm ``Block``
    n_samples : int
        Gaussian samples (the reference uses 100 000; 20 000 is close).
    generator : torch.Generator, optional
        For reproducible samples.
    samples : torch.Tensor, (n, D), optional
        Use these samples instead of drawing new ones.

    Returns
    -------
    torch.Tensor, (D, D) float64

    References
    ----------
    .. [1] Wang, Zhang and Salzmann, "SINDER", ECCV 2024, arXiv 2407.16826, Sec. 3.
    """
    w_fc2 = block.mlp.fc2.weight.detach()
    dim = block.mlp.fc1.weight.shape[1]
    x = samples
    if x is None:
        x = torch.randn(n_samples, dim, generator=generator, dtype=torch.float32)
    x = x.to(device=w_fc2.device, dtype=w_fc2.dtype)
    # normal equations A_hat^T = (X^T X)^-1 X^T H, accumulated over chunks of samples so that
    # the (n, M) hidden activations never exist at once (products in float32, solve in float64)
    xtx = torch.zeros(dim, dim, dtype=torch.float64, device=x.device)
    xth = None
    for i in range(0, x.shape[0], _FIT_CHUNK):
        xc = x[i:i + _FIT_CHUNK]
        hc = _mlp_hidden(block.mlp, xc)
        xtx += (xc.T @ xc).double()
        xth = (xc.T @ hc).double() if xth is None else xth + (xc.T @ hc).double()
    a_hat = torch.linalg.solve(xtx, xth).T  # (M, D)
    c = _ls_gamma(block.ls2, dim, w_fc2)[:, None] * (w_fc2.double() @ a_hat)
    c = c * _ln_weight(block.norm2, dim, w_fc2)[None, :]
    return _center_cols(c)


def _top_left_singular(g: torch.Tensor) -> torch.Tensor:
    """First left singular vector of ``g`` (top eigenvector of ``g g^T``; cheaper than an SVD)."""
    _w, v = torch.linalg.eigh(g @ g.T)
    return v[:, -1]


def _fix_sign(v: torch.Tensor) -> torch.Tensor:
    i = torch.argmax(v.abs())
    return v if v[i] >= 0 else -v


@torch.no_grad()
def defect_directions(backbone, n_samples: int = 20000, seed: int = 0) -> torch.Tensor:
    """Singular defect direction of every block, from the weights alone.

    ``E_i = (I + C_i)(I + A_i)`` (:func:`mlp_linearisation`, :func:`attention_linearisation`),
    ``G_i = E_i E_{i-1} ... E_0``, and ``nu_i`` is the first left singular vector of ``G_i``.

    Parameters
    ----------
    backbone : ViTBackbone or timm VisionTransformer
    n_samples : int
        Gaussian samples for each MLP fit.
    seed : int
        Seed of those samples.

    Returns
    -------
    torch.Tensor, (depth, D) float32
        Unit vectors on the model's device; the sign is fixed so that the largest-magnitude
        entry is positive.

    References
    ----------
    .. [1] Wang, Zhang and Salzmann, "SINDER: Repairing the Singular Defects of DINOv2",
       ECCV 2024, arXiv 2407.16826.
    """
    model = _timm(backbone)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    g = None
    for blk in model.blocks:
        a = attention_linearisation(blk)
        c = mlp_linearisation(blk, n_samples=n_samples, generator=gen)
        eye = torch.eye(a.shape[0], dtype=torch.float64, device=a.device)
        e = (eye + c) @ (eye + a)
        g = e if g is None else e @ g
        g = g / g.norm()  # scale does not change singular vectors; avoids overflow in deep nets
        out.append(_fix_sign(_top_left_singular(g)))
    return torch.stack(out).float()


# --------------------------------------------------------------------------------------------
# detection and targets
# --------------------------------------------------------------------------------------------
def defect_scores(tokens: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``l_t = -|cos(x_t, nu)|`` for every token.

    Parameters
    ----------
    tokens : torch.Tensor, (D, gh, gw) or (B, D, gh, gw)
        Block outputs before the final LayerNorm, prefix tokens dropped.
    direction : torch.Tensor, (D,)

    Returns
    -------
    torch.Tensor, (gh, gw) or (B, gh, gw)
        In [-1, 0]; defect-aligned tokens are near -1.
    """
    single = tokens.ndim == 3
    t = tokens[None] if single else tokens
    d = direction.to(device=t.device, dtype=t.dtype).reshape(1, -1, 1, 1)
    cos = (t * d).sum(1) / (t.norm(dim=1) * d.norm()).clamp_min(1e-12)
    s = -cos.abs()
    return s[0] if single else s


def detect_defective_tokens(tokens: torch.Tensor, direction: torch.Tensor, *, sigma: float = 4.0,
                            min_tokens: int = 3, border: int = 1) -> torch.Tensor:
    """Tokens aligned with the defect direction (SINDER's 4-sigma rule).

    Token ``t`` is defective if ``l_t < mean(l) - sigma * std(l)`` with ``l`` from
    :func:`defect_scores`; mean and (unbiased) standard deviation are taken over all tokens of
    the image, as in the reference code, and the ``border``-token frame is never flagged (the
    3 x 3 neighbourhood target needs all neighbours). An image with fewer than ``min_tokens``
    flagged tokens does not count: its mask is cleared.

    Parameters
    ----------
    tokens : torch.Tensor, (D, gh, gw) or (B, D, gh, gw)
    direction : torch.Tensor, (D,)
    sigma : float
        Threshold in standard deviations (4 in SINDER).
    min_tokens : int
        Minimum flagged tokens for the layer to count (3 in SINDER); 1 gives the raw mask.
    border : int
        Width of the excluded frame.

    Returns
    -------
    torch.Tensor of bool, (gh, gw) or (B, gh, gw)

    References
    ----------
    .. [1] Wang, Zhang and Salzmann, "SINDER", ECCV 2024, arXiv 2407.16826.
    """
    single = tokens.ndim == 3
    s = defect_scores(tokens, direction)
    s = s[None] if single else s
    flat = s.reshape(s.shape[0], -1)
    thr = flat.mean(1) - sigma * flat.std(1)
    mask = s < thr[:, None, None]
    if border > 0:
        mask[:, :border, :] = False
        mask[:, -border:, :] = False
        mask[:, :, :border] = False
        mask[:, :, -border:] = False
    few = mask.reshape(mask.shape[0], -1).sum(1) < min_tokens
    mask[few] = False
    return mask[0] if single else mask


def neighbourhood_target(tokens: torch.Tensor, scores: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Repair target of every interior token: its 3 x 3 neighbourhood, defect-weighted.

    Weights: the Gaussian kernel ``[[1,2,1],[2,4,2],[1,2,1]] / 16`` times ``exp(l / tau)``,
    renormalised, so that defect-aligned neighbours (``l ~ -1``) count for almost nothing.

    Parameters
    ----------
    tokens : torch.Tensor, (D, gh, gw)
    scores : torch.Tensor, (gh, gw)
        ``l`` from :func:`defect_scores`.
    tau : float
        Temperature (0.1 in SINDER).

    Returns
    -------
    torch.Tensor, (D, gh - 2, gw - 2)
        Target of token ``(i, j)`` at ``[:, i - 1, j - 1]``.
    """
    d, gh, gw = tokens.shape
    w = torch.exp(scores / tau)[None, None]  # (1, 1, gh, gw)
    w = F.unfold(w, 3)  # (1, 9, L)
    w = w * _GAUSS3.to(w).reshape(1, 9, 1)
    w = w / w.sum(1, keepdim=True).clamp_min(1e-30)
    x = F.unfold(tokens[None], 3).reshape(d, 9, -1)  # (D, 9, L)
    t = (x * w).sum(1)
    return t.reshape(d, gh - 2, gw - 2)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def prepare_images(images: Iterable, *, size: int | None = None, patch_size: int = 14,
                   mean: Sequence[float] = (0.485, 0.456, 0.406),
                   std: Sequence[float] = (0.229, 0.224, 0.225),
                   intensity: str = "reference", resize: bool | None = None,
                   preset: str = "fast") -> list[torch.Tensor]:
    """Turn images into normalised RGB tensors for the repair.

    Parameters
    ----------
    images : iterable of array-like
        Each (Y, X) greyscale or (Y, X, 3|4) RGB(A), any real dtype, scaled to [0, 1] by
        the same rule as the segmentation features (:func:`._input.scale_intensity`).
    intensity : {'reference', 'percentile'}
        ``'reference'``: uint8 / 255 (as SINDER's ``ToTensor``), other integers by their
        dtype range, floats as given; ``'percentile'``: each image's 0.5 / 99.5
        percentiles to 0 / 1. Use the setting of the classifiers that will use the repair.
    size : int, optional
        Side of the centre crop, rounded down to a multiple of ``patch_size``; smaller images
        give the largest multiple of ``patch_size`` that fits. Default: the preset's (224
        for ``'fast'``, 518 for ``'reference'``).
    resize : bool, optional
        First resize each image so that its shorter side is ``size`` (bicubic with
        antialiasing, on the [0, 1]-scaled image, clipped back to [0, 1] when it was in
        it), as SINDER's ``Resize(518)`` + ``CenterCrop(518)``; SINDER resizes the 8-bit
        PIL image, so values differ by its rounding. Default: the preset's (``False`` for
        ``'fast'``: crops at the native pixel size).
    preset : {'fast', 'reference'}
        Supplies ``size`` and ``resize`` when they are not given (:data:`REPAIR_PRESETS`).
    patch_size : int
    mean, std : sequence of float
        Normalisation (ImageNet by default).

    Returns
    -------
    list of torch.Tensor, each (3, S, S') float32

    Raises
    ------
    VitsegError
        An image smaller than 3 x 3 patches, or with an unsupported shape, or an unknown preset.
    """
    pre = repair_preset(preset)
    size = pre["size"] if size is None else int(size)
    resize = pre["resize"] if resize is None else bool(resize)
    out = []
    m = torch.tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(3, 1, 1)
    for k, img in enumerate(images):
        if isinstance(img, torch.Tensor):
            img = img.detach().cpu().numpy()
        a = np.asarray(img)
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = a[..., :3]
        elif a.ndim != 2:
            raise VitsegError(
                f"image {k} has shape {a.shape}; the repair needs (Y, X) or (Y, X, 3) images "
                "(split stacks into planes first)."
            )
        a = scale_intensity(np.asarray(a, dtype=np.float32), intensity=intensity, dtype=a.dtype)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        if resize:
            a = _resize_shorter_side(a, size)
        h = min(size, a.shape[0]) // patch_size * patch_size
        w = min(size, a.shape[1]) // patch_size * patch_size
        if h < 3 * patch_size or w < 3 * patch_size:
            raise VitsegError(
                f"image {k} is {a.shape[0]} x {a.shape[1]} px; the repair needs at least "
                f"{3 * patch_size} x {3 * patch_size} px (3 x 3 patches)."
            )
        y0, x0 = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
        crop = np.ascontiguousarray(a[y0:y0 + h, x0:x0 + w].transpose(2, 0, 1), dtype=np.float32)
        out.append((torch.from_numpy(crop) - m) / s)
    return out


def _resize_shorter_side(a: np.ndarray, size: int) -> np.ndarray:
    """(Y, X, 3) float32 resized so that min(Y, X) == size (torchvision ``Resize(size)``
    rounding: the longer side is ``int(size * long / short)``), bicubic with antialiasing."""
    h, w = a.shape[:2]
    if min(h, w) == size:
        return a
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
    r = F.interpolate(t, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
    if a.min() >= 0.0 and a.max() <= 1.0:  # PIL clips its 8-bit result
        r = r.clamp_(0.0, 1.0)
    return r.numpy().transpose(1, 2, 0)


# --------------------------------------------------------------------------------------------
# the repair
# --------------------------------------------------------------------------------------------
class _SVDOffsetLinear(nn.Module):
    """``nn.Linear`` whose weight is ``U diag(S + eps) V^T`` with only ``eps`` trainable.

    Written as ``W0 + U diag(eps) V^T`` (identical, and exactly ``W0`` at ``eps = 0``). For a
    ``qkv`` layer only the value block (last third of the rows) gets an offset.
    """

    def __init__(self, linear: nn.Linear, value_only: bool = False):
        super().__init__()
        w0 = linear.weight.detach()
        self.register_buffer("w0", w0.clone())
        self.register_buffer("b0", None if linear.bias is None else linear.bias.detach().clone())
        self.row0 = 2 * (w0.shape[0] // 3) if value_only else 0
        u, s, vt = torch.linalg.svd(w0[self.row0:].double(), full_matrices=False)
        self.register_buffer("u", u.to(w0.dtype))
        self.register_buffer("vt", vt.to(w0.dtype))
        self.epsilon = nn.Parameter(torch.zeros(s.shape[0], dtype=w0.dtype, device=w0.device))
        self.value_only = value_only
        self._cache: tuple[int, torch.Tensor] | None = None

    def weight(self) -> torch.Tensor:
        delta = self.u @ (self.epsilon[:, None] * self.vt)
        if self.row0:
            delta = F.pad(delta, (0, 0, self.row0, 0))
        return self.w0 + delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            w = self.weight()
        else:
            ver = self.epsilon._version
            if self._cache is None or self._cache[0] != ver:
                with torch.no_grad():
                    self._cache = (ver, self.weight())
            w = self._cache[1]
        return F.linear(x, w, self.b0)


def _wrap_block(block: nn.Module, prefix: str) -> dict[str, _SVDOffsetLinear]:
    targets = [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Linear)]
    out = {}
    for n, lin in targets:
        parent = block.get_submodule(n.rsplit(".", 1)[0]) if "." in n else block
        wrapped = _SVDOffsetLinear(lin, value_only=n.endswith("attn.qkv"))
        setattr(parent, n.rsplit(".", 1)[-1], wrapped)
        out[f"{prefix}.{n}"] = wrapped
    return out


def _eps_key(layer: str, value_only: bool) -> str:
    return f"{layer}.epsilon_v" if value_only else f"{layer}.epsilon"


@dataclass
class RepairResult:
    """Outcome of :func:`iter_repair`.

    Attributes
    ----------
    epsilons : dict of str to torch.Tensor
        Singular-value offsets, keyed ``'blocks.N.attn.qkv.epsilon_v'`` (value block of qkv)
        or ``'blocks.N.<layer>.epsilon'``; only layers that changed. Empty when no defect
        was found (the repair then correctly does nothing).
    metadata : dict
        Base name and weights SHA-256, layers, steps, images, settings (saved as JSON).
    history : list of dict
        Per step: ``step``, ``image``, ``layer`` (None: no defect), ``n_defective``, ``loss``.
    directions : torch.Tensor, (depth, D)
        The defect directions used.
    converged : bool
        True if it stopped because enough recent images showed no defect.
    """

    epsilons: dict
    metadata: dict
    history: list = field(default_factory=list)
    directions: torch.Tensor | None = None
    converged: bool = False

    @property
    def steps(self) -> int:
        return len(self.history)


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def _patch_grid(x: torch.Tensor, p: int, gh: int, gw: int) -> torch.Tensor:
    """(1, P + N, D) tokens -> (D, gh, gw) patch tokens."""
    return x[0, p:].T.reshape(-1, gh, gw)


def iter_repair(backbone: ViTBackbone, images: Sequence[torch.Tensor], *, max_steps: int | None = None,
               lr: float = 5e-3, momentum: float = 0.9, tau: float = 0.1, sigma: float = 4.0,
               min_tokens: int = 3, layer_window: int | None = None, stop_fraction: float = 0.75,
               stop_window: int | None = None, directions: torch.Tensor | None = None,
               n_samples: int | None = None, seed: int = 0, max_time_s: float | None = None,
               image_names: Sequence[str] | None = None, prefill_stop_window: bool | None = None,
               preset: str = "fast") -> JobGenerator[RepairResult]:
    """Repair the singular defects of a backbone (a generator job).

    Every linear layer of the blocks becomes ``U diag(S + eps) V^T`` with ``U, S, V`` frozen
    and ``eps`` trainable (init 0; in ``qkv`` only the value block). Per image (batch 1) the
    blocks run in order; at the first block with at least ``min_tokens`` defective tokens
    (:func:`detect_defective_tokens`) the loss is
    ``mean_t ||x_t - T_t||_2 / alpha`` over the defective tokens, with ``T`` the
    :func:`neighbourhood_target` and ``alpha`` the mean norm of the interior tokens (both
    detached). Only the ``layer_window`` blocks ending at that block get gradients. SGD
    (``lr``, ``momentum``); steps with a non-finite loss or gradient are skipped. Stops when at
    least ``stop_fraction`` of the last ``stop_window`` images showed no defect, after
    ``max_steps`` images, or (optionally) after ``max_time_s`` seconds. ``preset`` supplies
    every schedule argument left at ``None`` (:data:`REPAIR_PRESETS`): ``'fast'`` (default)
    or ``'reference'``, SINDER's own schedule (pair it with ``prepare_images(...,
    preset='reference')``).

    Parameters
    ----------
    backbone : ViTBackbone
        Not modified (the job works on a copy).
    images : sequence of torch.Tensor, each (3, H, W) float32
        Normalised RGB with H, W multiples of the patch size and at least 3 patches each
        (see :func:`prepare_images`); cycled through in order.
    max_steps : int, optional
        Step cap (one image per step). ``'fast'``: 150, which keeps a ViT-S/14 repair on
        224 px images under 10 minutes on a 2-core CPU even when every step back-propagates
        (``benchmarks/bench_repair.py``); ``'reference'``: 30,000 (SINDER's ``max_iter``).
    lr, momentum : float
        SGD settings (5e-3, 0.9 in SINDER).
    tau : float
        Temperature of the neighbourhood target (0.1).
    sigma : float
        Detection threshold in standard deviations (4).
    min_tokens : int
        A block counts only with at least this many defective tokens (3).
    layer_window : int, optional
        Blocks that get gradients, ending at the defective one. ``'fast'``:
        ``round(depth / 4)`` (3 of 12 for ViT-S/B, 10 of 40 for ViT-g); ``'reference'``: 10
        for every depth (SINDER's ``limit_layers``).
    stop_fraction : float
        Fraction of recent defect-free images that stops the repair (0.75).
    stop_window : int, optional
        Number of recent images considered. ``'fast'``: ``min(max(len(images), 4), 100)``;
        ``'reference'``: 1000.
    prefill_stop_window : bool, optional
        Start the window full of "defect" entries, as SINDER's ``skip_history = [False] *
        1000`` (so the repair runs at least ``stop_fraction * stop_window`` steps);
        otherwise the rule applies once ``stop_window`` images were seen. ``'fast'``:
        ``False``; ``'reference'``: ``True``.
    directions : torch.Tensor, (depth, D), optional
        Precomputed :func:`defect_directions`.
    n_samples : int, optional
        Gaussian samples per MLP linearisation (:func:`defect_directions`). ``'fast'``:
        20,000; ``'reference'``: 100,000 (SINDER's; about half the seed-to-seed angle of
        the defect direction at 20,000).
    seed : int
        For :func:`defect_directions`.
    max_time_s : float, optional
        Stop after this many seconds (the result is then machine-dependent; the metadata's
        ``stopped`` says why the repair ended).
    image_names : sequence of str, optional
        Recorded in the metadata.
    preset : {'fast', 'reference'}
        Supplies ``max_steps``, ``layer_window``, ``stop_window``, ``prefill_stop_window``
        and ``n_samples`` when they are ``None``.

    Yields
    ------
    Progress
        ``Progress(step, max_steps, msg)``.

    Returns
    -------
    RepairResult

    Raises
    ------
    VitsegError
        No images, images of the wrong shape, or a backbone that is already a repair.

    References
    ----------
    .. [1] Wang, Zhang and Salzmann, "SINDER: Repairing the Singular Defects of DINOv2",
       ECCV 2024, arXiv 2407.16826.
    """
    t_start = time.monotonic()
    pre = repair_preset(preset)
    max_steps = pre["max_steps"] if max_steps is None else max_steps
    n_samples = pre["n_samples"] if n_samples is None else n_samples
    layer_window = pre["layer_window"] if layer_window is None else layer_window
    stop_window = pre["stop_window"] if stop_window is None else stop_window
    prefill = pre["prefill_stop_window"] if prefill_stop_window is None else bool(prefill_stop_window)
    images = list(images)
    if not images:
        raise VitsegError("The repair needs at least one image; got none.")
    if max_steps < 1:
        raise VitsegError(f"max_steps must be >= 1; got {max_steps}.")
    cfg = backbone.cfg
    if cfg.name.startswith("sinder_"):
        raise VitsegError(f"Backbone {cfg.name!r} is already a SINDER repair; repair its base {cfg.base!r}.")
    p = backbone.patch_size
    dev = backbone.device
    for k, im in enumerate(images):
        if im.ndim == 4 and im.shape[0] == 1:
            images[k] = im = im[0]
        if im.ndim != 3 or im.shape[0] != 3 or im.shape[1] % p or im.shape[2] % p \
                or im.shape[1] < 3 * p or im.shape[2] < 3 * p:
            raise VitsegError(
                f"image {k} has shape {tuple(im.shape)}; the repair needs (3, H, W) tensors with H, W "
                f"multiples of {p} and at least {3 * p} (use prepare_images)."
            )
    depth = backbone.depth
    window = int(layer_window) if layer_window else max(1, round(depth / 4))
    swin = int(stop_window) if stop_window else min(max(len(images), 4), 100)

    if directions is None:
        yield Progress(0, max_steps, "computing defect directions")
        directions = defect_directions(backbone, n_samples=n_samples, seed=seed)
    directions = directions.to(dev)

    model = copy.deepcopy(backbone.model).to(dev)
    model.eval()  # no dropout; the reference trains with drop rates of 0 as well
    for prm in model.parameters():
        prm.requires_grad_(False)
    wrapped: dict[str, _SVDOffsetLinear] = {}
    wrapped_blocks: set[int] = set()
    opt: torch.optim.Optimizer | None = None

    def ensure_wrapped(i: int) -> None:
        nonlocal opt
        if i in wrapped_blocks:
            return
        new = _wrap_block(model.blocks[i], f"blocks.{i}")
        wrapped.update(new)
        wrapped_blocks.add(i)
        params = [m.epsilon for m in new.values()]
        if opt is None:
            opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
        else:
            opt.add_param_group({"params": params})

    history: list[dict] = []
    recent: deque = deque([False] * swin if prefill else [], maxlen=swin)
    converged = False
    stopped = "max_steps"
    nprefix = _num_prefix(model)
    for step in range(max_steps):
        k = step % len(images)
        img = images[k].to(dev)[None]
        gh, gw = img.shape[-2] // p, img.shape[-1] // p
        mask_bias = backbone.attn_bias(gh, gw, device=dev, dtype=img.dtype)
        layer, mask, states = None, None, []
        with torch.no_grad():
            x = _embed(model, img)
            for i, blk in enumerate(model.blocks):
                states.append(x)
                x = blk(x, attn_mask=mask_bias) if mask_bias is not None else blk(x)
                tok = _patch_grid(x, nprefix, gh, gw)
                m = detect_defective_tokens(tok, directions[i], sigma=sigma, min_tokens=min_tokens)
                if m.any():
                    layer, mask, tok_det = i, m, tok
                    break
        entry = {"step": step, "image": k, "layer": layer, "n_defective": 0, "loss": None}
        if layer is None:
            recent.append(True)
            history.append(entry)
            msg = "no defect"
        else:
            recent.append(False)
            start = max(0, layer - window + 1)
            for i in range(start, layer + 1):
                ensure_wrapped(i)
            scores = defect_scores(tok_det, directions[layer])
            target = neighbourhood_target(tok_det, scores, tau=tau)
            alpha = tok_det[:, 1:-1, 1:-1].norm(dim=0).mean()
            rows, cols = torch.nonzero(mask, as_tuple=True)
            with torch.enable_grad():
                x = states[start]
                for i in range(start, layer + 1):
                    blk = model.blocks[i]
                    x = blk(x, attn_mask=mask_bias) if mask_bias is not None else blk(x)
                tok = _patch_grid(x, nprefix, gh, gw)
                diff = tok[:, rows, cols] - target[:, rows - 1, cols - 1]
                loss = diff.norm(dim=0).mean() / alpha
                opt.zero_grad(set_to_none=True)
                ok = bool(torch.isfinite(loss))
                if ok:
                    loss.backward()
                    ok = all(m_.epsilon.grad is None or bool(torch.isfinite(m_.epsilon.grad).all())
                             for m_ in wrapped.values())
                if ok:
                    opt.step()
            entry.update(n_defective=int(rows.numel()), loss=float(loss.detach()) if ok else float("nan"))
            history.append(entry)
            msg = f"block {layer}: {rows.numel()} defective tokens, loss {entry['loss']:.3f}"
            if not ok:
                msg += " (non-finite, skipped)"
        yield Progress(step + 1, max_steps, msg)
        if len(recent) == swin and sum(recent) >= stop_fraction * swin:
            converged, stopped = True, "converged"
            break
        if max_time_s is not None and time.monotonic() - t_start > max_time_s and step + 1 < max_steps:
            stopped = "time_limit"
            break

    eps = {}
    for name, mod in wrapped.items():
        e = mod.epsilon.detach().cpu().clone()
        if torch.any(e != 0):
            eps[_eps_key(name, mod.value_only)] = e
    meta = {
        "format": REPAIR_FORMAT,
        "version": REPAIR_VERSION,
        "base": cfg.name,
        "base_sha256": backbone.weights_sha256,
        "timm_arch": cfg.timm_arch,
        "embed_dim": cfg.embed_dim,
        "depth": depth,
        "layers": sorted({k_.rsplit(".", 1)[0] for k_ in eps}, key=_layer_sort_key),
        "steps": len(history),
        "steps_with_defect": sum(1 for h in history if h["layer"] is not None),
        "converged": converged,
        "stopped": stopped,
        "seconds": round(time.monotonic() - t_start, 1),
        "n_images": len(images),
        "images": list(image_names) if image_names is not None else [f"image_{i}" for i in range(len(images))],
        "image_shapes": [list(im.shape[-2:]) for im in images],
        "settings": {"lr": lr, "momentum": momentum, "tau": tau, "sigma": sigma,
                     "min_tokens": min_tokens, "layer_window": window, "stop_fraction": stop_fraction,
                     "stop_window": swin, "max_steps": max_steps, "max_time_s": max_time_s,
                     "n_samples": n_samples, "seed": seed, "prefill_stop_window": prefill,
                     "preset": preset},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": _package_version(),
        "paper": SINDER_PAPER,
    }
    return RepairResult(epsilons=eps, metadata=meta, history=history,
                        directions=directions.detach().cpu(), converged=converged)


def _layer_sort_key(name: str):
    m = re.match(r"blocks\.(\d+)\.(.*)", name)
    return (int(m.group(1)), m.group(2)) if m else (math.inf, name)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-vitseg")
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------------------------
# repair files
# --------------------------------------------------------------------------------------------
def save_repair(result: RepairResult, path: str | os.PathLike) -> Path:
    """Save a repair as safetensors: the ``eps`` offsets plus JSON metadata.

    The file is written under a temporary name and renamed, so it is never half-written.

    Parameters
    ----------
    result : RepairResult
    path : str or pathlib.Path
        Should end in ``.safetensors``.

    Returns
    -------
    pathlib.Path
    """
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise VitsegError(f"A repair file must end in .safetensors; got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in result.epsilons.items()}
    tmp = path.with_name(f".{path.name}.part")
    save_file(tensors, str(tmp), metadata={"vitseg": json.dumps(result.metadata)})
    os.replace(tmp, path)
    return path


def is_repair_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a napari-vitseg SINDER repair file (reads the header only)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get("vitseg", "{}")).get("format") == REPAIR_FORMAT
    except Exception:
        return False


def load_repair(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a repair file.

    Returns
    -------
    epsilons : dict of str to torch.Tensor
    metadata : dict

    Raises
    ------
    VitsegError
        Not a repair file, or unreadable.
    """
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vitseg", "{}"))
            eps = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise VitsegError(f"Could not read repair file {p}: {type(e).__name__}: {e}") from e
    if meta.get("format") != REPAIR_FORMAT:
        raise VitsegError(f"{p} is not a SINDER repair file made by napari-vitseg (no '{REPAIR_FORMAT}' metadata).")
    if int(meta.get("version", 0)) > REPAIR_VERSION:
        raise VitsegError(f"{p} has repair-file version {meta.get('version')}; upgrade napari-vitseg to read it.")
    return eps, meta


def _resolve_layer(model: nn.Module, key: str) -> tuple[str, nn.Module, bool]:
    if key.endswith(".epsilon_v"):
        layer, value_only = key[: -len(".epsilon_v")], True
    elif key.endswith(".epsilon"):
        layer, value_only = key[: -len(".epsilon")], False
    else:
        raise VitsegError(f"Unexpected tensor {key!r} in a repair file.")
    try:
        mod = model.get_submodule(layer)
    except AttributeError:
        raise VitsegError(f"The repair file names layer {layer!r}, which this model does not have.") from None
    if not isinstance(mod, nn.Linear):
        raise VitsegError(f"The repair file names {layer!r}, which is not a linear layer.")
    return layer, mod, value_only


def _check_eps_shapes(model: nn.Module, eps: dict, source: str) -> None:
    for key, e in eps.items():
        layer, mod, value_only = _resolve_layer(model, key)
        rows, cols = mod.weight.shape
        if value_only:
            rows = rows - 2 * (rows // 3)
        if e.ndim != 1 or e.shape[0] != min(rows, cols):
            raise VitsegError(
                f"{source}: offsets for {layer} have shape {tuple(e.shape)}, but the layer has "
                f"{min(rows, cols)} singular values; the repair was made for another architecture."
            )


def check_repair_file(path: str | os.PathLike, base: str | None = None) -> dict:
    """Validate a repair file against its base architecture (no weights needed).

    Parameters
    ----------
    path : str or pathlib.Path
    base : str, optional
        The base the file must be for.

    Returns
    -------
    dict
        Its metadata.

    Raises
    ------
    VitsegError
        Wrong base, unknown base, or offsets that do not fit the base's layers.
    """
    eps, meta = load_repair(path)
    if base is not None and meta.get("base") != base:
        raise VitsegError(
            f"{path} is a repair of {meta.get('base')!r}, not of {base!r}; import it as "
            f"'sinder_{meta.get('base')}'."
        )
    cfg = get_backbone_cfg(meta.get("base"))
    _check_eps_shapes(build_timm_model(cfg, device="meta"), eps, str(path))
    return meta


@torch.no_grad()
def apply_repair(model, repair, *, base: str | None = None, base_sha256: str | None = None) -> dict:
    """Apply SINDER singular-value offsets to a model in place.

    ``W <- U diag(S + eps) V^T = W + U diag(eps) V^T`` with ``U, S, V`` the SVD of the
    current (base) weight; for ``qkv`` only the value block.

    Parameters
    ----------
    model : ViTBackbone or timm VisionTransformer
        Holding the base weights the repair was made from.
    repair : str, pathlib.Path, RepairResult or (dict, dict)
        A repair file, a result, or ``(epsilons, metadata)``.
    base : str, optional
        Refuse a repair made for another base backbone.
    base_sha256 : str, optional
        SHA-256 of the loaded base weights; refuse a repair made from other weights.

    Returns
    -------
    dict
        ``{'base', 'layers', 'steps', 'converged'}`` from the metadata.

    Raises
    ------
    VitsegError
        Mismatched base name, base weights or layer shapes.

    References
    ----------
    .. [1] Wang, Zhang and Salzmann, "SINDER", ECCV 2024, arXiv 2407.16826.
    """
    if isinstance(repair, RepairResult):
        eps, meta, source = repair.epsilons, repair.metadata, "repair result"
    elif isinstance(repair, tuple):
        (eps, meta), source = repair, "repair"
    else:
        eps, meta = load_repair(repair)
        source = str(repair)
    if base is not None and meta.get("base") != base:
        raise VitsegError(
            f"{source} is a repair of {meta.get('base')!r}, but the base here is {base!r}; use "
            f"the backbone 'sinder_{meta.get('base')}'."
        )
    made_from = meta.get("base_sha256")
    if base_sha256 is not None and made_from and made_from != base_sha256:
        raise VitsegError(
            f"{source} was made from other weights of {meta.get('base')!r} (SHA-256 {made_from[:12]}...) "
            f"than the ones loaded ({base_sha256[:12]}...); the offsets only fit the weights they "
            f"were trained on. Run `vitseg repair --backbone {meta.get('base')}` again with these weights."
        )
    tm = _timm(model)
    _check_eps_shapes(tm, eps, source)
    for key, e in eps.items():
        _layer, mod, value_only = _resolve_layer(tm, key)
        w = mod.weight
        row0 = 2 * (w.shape[0] // 3) if value_only else 0
        u, _s, vt = torch.linalg.svd(w[row0:].double(), full_matrices=False)
        delta = u @ (e.to(device=w.device, dtype=torch.float64)[:, None] * vt)
        w[row0:] += delta.to(w.dtype)
    return {"base": meta.get("base"), "layers": meta.get("layers", []),
            "steps": meta.get("steps"), "converged": meta.get("converged")}


# --------------------------------------------------------------------------------------------
# registered variants
# --------------------------------------------------------------------------------------------
#: haoqiwang/sinder commit whose model loading these entries reproduce
SINDER_COMMIT = "3b5cd452dffe5cd9410b198444de718921cc58f2"
_SINDER_REF = (f"haoqiwang/sinder@{SINDER_COMMIT[:7]}: sinder/utils.py load_model "
               "(interpolate_antialias=True), sinder/hub/backbones.py {fn}")


def _sinder_interp(b: BackboneCfg) -> PosEmbedInterp:
    """SINDER's ``load_model`` switches antialiasing on and keeps the hub model's offset
    (0.1 without registers, 0 with them)."""
    return dataclasses.replace(b.pos_embed_interp, antialias=True)


def _sinder_cfg(base: str) -> BackboneCfg:
    b = get_backbone_cfg(base)
    return dataclasses.replace(
        b, name=f"sinder_{base}", timm_tag=None, base=base,
        pos_embed_interp=_sinder_interp(b), reference_code=_SINDER_REF.format(fn=base),
        weights_file=f"sinder_{base}.safetensors", weights_repo=None, weights_url=None, sha256=None,
        paper=f"{SINDER_PAPER}; {b.paper}",
        description=f"{b.description}, SINDER-repaired (repair file made with `vitseg repair`)",
        extra={},
    )


@register_backbone
def sinder_dinov2_vits14() -> BackboneCfg:
    return _sinder_cfg("dinov2_vits14")


@register_backbone
def sinder_dinov2_vits14_reg() -> BackboneCfg:
    return _sinder_cfg("dinov2_vits14_reg")


@register_backbone
def sinder_dinov2_vitb14() -> BackboneCfg:
    return _sinder_cfg("dinov2_vitb14")


@register_backbone
def sinder_dinov2_vitb14_reg() -> BackboneCfg:
    return _sinder_cfg("dinov2_vitb14_reg")


@register_backbone
def sinder_dinov2_vitg14() -> BackboneCfg:
    # the released full checkpoint (facebookresearch key names, SwiGLU w12 / w3)
    b = get_backbone_cfg("dinov2_vitg14")
    return dataclasses.replace(
        b, name="sinder_dinov2_vitg14", timm_tag=None, base="dinov2_vitg14",
        pos_embed_interp=_sinder_interp(b), reference_code=_SINDER_REF.format(fn="dinov2_vitg14"),
        weights_file="dinov2g_sinder.pth", weights_repo="haoqiwang/sinder",
        weights_url="https://huggingface.co/haoqiwang/sinder", sha256=None,
        paper=f"{SINDER_PAPER}; {b.paper}",
        description="DINOv2 ViT-g/14 repaired by SINDER (released checkpoint; 1.1 B parameters)",
        heavy=True, extra={"full_checkpoint": True},
    )
