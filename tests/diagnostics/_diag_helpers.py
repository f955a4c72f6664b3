"""Random-weight test models for the diagnostics (LayerScale 1, see methods.md section 1).

``smooth_pe_backbone`` is DINOv2-S/14-reg4 whose position embedding dominates the patch
embedding *and is smooth over the grid*. A timm random ``pos_embed`` is i.i.d. noise per grid
position, which no linear probe can read on held-out tokens however much it is scaled (measured:
R² ~ -0.2 at 50x), whereas a trained DINOv2 embedding varies smoothly with position. So the
random field is low-pass filtered over the 37 x 37 grid (Gaussian, sigma 6 patches) and scaled
to std 10 (the patch embedding of a normalised noise image has std ~0.8).
The ALiBi and NoPE models share every block weight with it; only the position encoding differs.
"""

from __future__ import annotations

import copy
from functools import cache

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from napari_vitseg.backbones import ViTBackbone, create_backbone, get_backbone_cfg

NOISE_SIDE = 518  # 37 x 37 tokens: the grid DINOv2's position embedding was made for


def seeded(name: str, seed: int = 0) -> ViTBackbone:
    return create_backbone(name, pretrained=False, init_values=1.0, seed=seed)


@cache
def smooth_pe_backbone(amplitude: float = 10.0, sigma: float = 6.0) -> ViTBackbone:
    bb = seeded("dinov2_vits14_reg", 0)
    pe = bb.model.pos_embed
    g = int(round(np.sqrt(pe.shape[1])))
    field = pe[0].detach().reshape(g, g, -1).numpy()
    field = gaussian_filter(field, (sigma, sigma, 0), mode="nearest")
    field = (field - field.mean((0, 1))) / field.std() * amplitude
    with torch.no_grad():
        pe.copy_(torch.from_numpy(field.reshape(1, g * g, -1)).float())
    return bb


@cache
def same_blocks_as_smooth(name: str) -> ViTBackbone:
    """``smooth_pe_backbone``'s weights under another registry entry (ALiBi / NoPE)."""
    base = smooth_pe_backbone()
    cfg = get_backbone_cfg(name)
    model = copy.deepcopy(base.model)
    if cfg.position != "learned":
        model.pos_embed = None
    return ViTBackbone(cfg, model, pretrained=False).eval()


def noise_image(side: int = NOISE_SIDE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((side, side)).astype(np.float32)
