"""Independent re-statements of the reference implementations' documented behaviour, for the
fidelity tests (``test_fidelity.py``). Written from the references' code, not from ours; they
take the checkpoint's tensors in the *released* key layout and share nothing with
``napari_vitseg`` (not even timm modules):

* facebookresearch/dinov2 @ b8931f7 (``dinov2/hub/backbones.py``,
  ``dinov2/models/vision_transformer.py``): ``ToTensor`` (uint8 / 255), ImageNet mean/std,
  ``prepare_tokens_with_masks`` (CLS, then ``interpolate_pos_encoding``, then the registers
  inserted after CLS), pre-norm blocks with LayerScale, ``x_norm_patchtokens`` = final
  LayerNorm output without CLS and registers. ``interpolate_pos_encoding``: nothing on the
  37 x 37 grid; else bicubic with the hub model's ``interpolate_antialias`` and, when
  ``interpolate_offset`` is non-zero, ``scale_factor=((h0 + off) / M, (w0 + off) / M)``.
* haoqiwang/sinder @ 3b5cd45 (``sinder/utils.py`` ``load_model``): the same model with
  ``interpolate_antialias = True`` set after loading (offset kept).
* ViT-g (``dinov2_vitg14``, ``dinov2g_sinder.pth``): ``SwiGLUFFNFused`` MLP with ``w12``
  (both halves) and ``w3``: ``w3(silu(x1) * x2)`` with ``x1, x2 = w12(x).chunk(2)``
  (``dinov2/layers/swiglu_ffn.py``).
* tldr-group/dino-saw @ 636424c (``dinosaw/alibi_logic.py``): no position embedding;
  ``get_distance_matrix`` (per-axis ``min(d, n - d)`` wrap, Euclidean, ``D /= D.max()``,
  negated, zero-padded for CLS + 4 registers at the top / left) times the per-head slope
  (``'constant'``: 1) added to the attention logits of every block.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

#: (interpolate_antialias, interpolate_offset) of each reference model
FB_HUB = {"dinov2_vits14": (False, 0.1), "dinov2_vitb14": (False, 0.1), "dinov2_vitg14": (False, 0.1),
          "dinov2_vits14_reg": (True, 0.0), "dinov2_vitb14_reg": (True, 0.0)}
SINDER = {f"sinder_{k}": (True, off) for k, (_aa, off) in FB_HUB.items()}


def to_tensor_uint8(img: np.ndarray) -> torch.Tensor:
    """torchvision ``ToTensor`` + ``Normalize`` of an (H, W) or (H, W, 3) uint8 image -> (1, 3, H, W)."""
    assert img.dtype == np.uint8
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)  # PIL convert('RGB') of an 'L' image
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div(255)
    m = torch.tensor(MEAN).view(3, 1, 1)
    s = torch.tensor(STD).view(3, 1, 1)
    return ((x - m) / s)[None]


def fb_interpolate_pos_encoding(pos_embed: torch.Tensor, h: int, w: int, patch: int, antialias: bool,
                                offset: float) -> torch.Tensor:
    """``DinoVisionTransformer.interpolate_pos_encoding`` for an (h, w) px input, (1, 1 + N, D)."""
    npatch = (h // patch) * (w // patch)
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    h0, w0 = h // patch, w // patch
    m = int(math.sqrt(n))
    kwargs = {}
    if offset:
        kwargs["scale_factor"] = (float(h0 + offset) / m, float(w0 + offset) / m)
    else:
        kwargs["size"] = (h0, w0)
    patch_pos_embed = F.interpolate(patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                                    antialias=antialias, **kwargs)
    assert (h0, w0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def dinosaw_bias(gh: int, gw: int, n_prefix: int) -> torch.Tensor:
    """dino-saw ``get_distance_matrix(wrap=True, normalize=True)`` with constant slope 1."""
    coords = torch.stack(torch.meshgrid(torch.arange(gh, dtype=torch.float32),
                                        torch.arange(gw, dtype=torch.float32), indexing="ij"), -1).reshape(-1, 2)
    diff = (coords[:, None] - coords[None]).abs()
    diff[..., 0] = torch.minimum(diff[..., 0], gh - diff[..., 0])
    diff[..., 1] = torch.minimum(diff[..., 1], gw - diff[..., 1])
    d = torch.sqrt((diff ** 2).sum(-1))
    d = d / d.max()
    d = -d
    return F.pad(d, (n_prefix, 0, n_prefix, 0))


def _ln(x, sd, k):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{k}.weight"], sd[f"{k}.bias"], eps=1e-6)


def _block(x, sd, i, heads, bias):
    k = f"blocks.{i}"
    b, n, d = x.shape
    h = _ln(x, sd, f"{k}.norm1")
    qkv = F.linear(h, sd[f"{k}.attn.qkv.weight"], sd[f"{k}.attn.qkv.bias"])
    q, kk, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    logits = (q * (d // heads) ** -0.5) @ kk.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    a = logits.softmax(-1) @ v
    a = F.linear(a.transpose(1, 2).reshape(b, n, d), sd[f"{k}.attn.proj.weight"], sd[f"{k}.attn.proj.bias"])
    x = x + sd[f"{k}.ls1.gamma"] * a
    h = _ln(x, sd, f"{k}.norm2")
    if f"{k}.mlp.w12.weight" in sd:  # ViT-g: dinov2/layers/swiglu_ffn.py SwiGLUFFN.forward
        x1, x2 = F.linear(h, sd[f"{k}.mlp.w12.weight"], sd[f"{k}.mlp.w12.bias"]).chunk(2, dim=-1)
        h = F.linear(F.silu(x1) * x2, sd[f"{k}.mlp.w3.weight"], sd[f"{k}.mlp.w3.bias"])
    else:  # Mlp: fc1, GELU, fc2
        h = F.linear(F.gelu(F.linear(h, sd[f"{k}.mlp.fc1.weight"], sd[f"{k}.mlp.fc1.bias"])),
                     sd[f"{k}.mlp.fc2.weight"], sd[f"{k}.mlp.fc2.bias"])
    return x + sd[f"{k}.ls2.gamma"] * h


def _strip(sd: dict) -> dict:
    """Drop dino-saw's ``model.`` / ``vit.model.`` prefixes (the reference wrappers hold a timm ViT)."""
    out = {}
    for k, v in sd.items():
        for pre in ("vit.model.", "model.", "vit."):
            if k.startswith(pre):
                k = k[len(pre):]
                break
        out[k] = v
    return out


@torch.no_grad()
def reference_features(sd: dict, img: np.ndarray, *, kind: str, heads: int, antialias: bool = False,
                       offset: float = 0.0, patch: int = 14) -> torch.Tensor:
    """Final normalised patch features (D, gh, gw) of a uint8 image, as the reference computes them.

    kind : 'fb' (facebookresearch layout: pos_embed with CLS position, register_tokens) or
        'dinosaw' (timm layout with prefixes; no position embedding; ``alibi`` bias) or
        'nope' (dino-saw layout without position encoding and without bias).
    """
    x = to_tensor_uint8(img)
    h, w = x.shape[-2:]
    gh, gw = h // patch, w // patch
    if kind != "fb":
        sd = _strip(sd)
    sd = {k: v.float() for k, v in sd.items()}
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)  # (1, N, D)
    bias = None
    if kind == "fb":
        t = torch.cat([sd["cls_token"].expand(1, -1, -1), t], dim=1)
        t = t + fb_interpolate_pos_encoding(sd["pos_embed"], h, w, patch, antialias, offset)
        reg = sd.get("register_tokens")
        if reg is not None:
            t = torch.cat([t[:, :1], reg.expand(1, -1, -1), t[:, 1:]], dim=1)
        n_prefix = 1 + (0 if reg is None else reg.shape[1])
    else:  # dino-saw: timm ViT with pos_embed removed, [CLS, reg x4, patches]
        t = torch.cat([sd["cls_token"], sd["reg_token"], t], dim=1)
        n_prefix = 1 + sd["reg_token"].shape[1]
        if kind == "dinosaw":
            bias = dinosaw_bias(gh, gw, n_prefix)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        t = _block(t, sd, i, heads, bias)
    t = _ln(t, sd, "norm")
    return t[0, n_prefix:].T.reshape(-1, gh, gw)
