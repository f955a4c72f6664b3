"""DINOv2 backbones (Oquab et al., TMLR 2024, arXiv 2304.07193) with and without registers
(Darcet et al., ICLR 2024, arXiv 2309.16588), built through timm."""

from __future__ import annotations

from ._registry import TIMM_POS_EMBED_INTERP, BackboneCfg, PosEmbedInterp, register_backbone

# timm's Hugging Face repos hold the weights in timm's key layout under these names
_TIMM_HUB_FILES = {"hub_files": ("model.safetensors", "pytorch_model.bin")}

_DINOV2 = "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, arXiv 2304.07193"
_REG = "Darcet et al., Vision Transformers Need Registers, ICLR 2024, arXiv 2309.16588"

#: facebookresearch/dinov2 commit whose hub models these entries reproduce
DINOV2_COMMIT = "b8931f7bf91576930313be2c6d6af376033b35f0"
# hub models without registers: ``_make_dinov2_model(interpolate_antialias=False,
# interpolate_offset=0.1)``; register models: ``interpolate_antialias=True, interpolate_offset=0.0``
# (dinov2/hub/backbones.py), applied in ``DinoVisionTransformer.interpolate_pos_encoding``
# (dinov2/models/vision_transformer.py)
FB_POS_EMBED_INTERP = PosEmbedInterp("bicubic", antialias=False, offset=0.1)
FB_REG_POS_EMBED_INTERP = TIMM_POS_EMBED_INTERP
_FB_REF = (f"facebookresearch/dinov2@{DINOV2_COMMIT[:7]}: dinov2/hub/backbones.py {{fn}}, "
           "dinov2/models/vision_transformer.py interpolate_pos_encoding")


@register_backbone
def dinov2_vits14() -> BackboneCfg:
    return BackboneCfg(
        name="dinov2_vits14", pos_embed_interp=FB_POS_EMBED_INTERP,
        reference_code=_FB_REF.format(fn="dinov2_vits14"),
        timm_arch="vit_small_patch14_dinov2", timm_tag="lvd142m",
        embed_dim=384, depth=12, num_heads=6, num_prefix_tokens=1,
        weights_file="dinov2_vits14_pretrain.pth",
        weights_repo="timm/vit_small_patch14_dinov2.lvd142m",
        weights_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
        paper=_DINOV2, description="DINOv2 ViT-S/14 (learned position embedding)",
        extra=dict(_TIMM_HUB_FILES),
    )


@register_backbone
def dinov2_vits14_reg() -> BackboneCfg:
    return BackboneCfg(
        name="dinov2_vits14_reg", pos_embed_interp=FB_REG_POS_EMBED_INTERP,
        reference_code=_FB_REF.format(fn="dinov2_vits14_reg"),
        timm_arch="vit_small_patch14_reg4_dinov2", timm_tag="lvd142m",
        embed_dim=384, depth=12, num_heads=6, num_prefix_tokens=5,
        weights_file="dinov2_vits14_reg4_pretrain.pth",
        weights_repo="timm/vit_small_patch14_reg4_dinov2.lvd142m",
        weights_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
        paper=f"{_DINOV2}; {_REG}", description="DINOv2 ViT-S/14 with 4 registers",
        extra=dict(_TIMM_HUB_FILES),
    )


@register_backbone
def dinov2_vitb14() -> BackboneCfg:
    return BackboneCfg(
        name="dinov2_vitb14", pos_embed_interp=FB_POS_EMBED_INTERP,
        reference_code=_FB_REF.format(fn="dinov2_vitb14"),
        timm_arch="vit_base_patch14_dinov2", timm_tag="lvd142m",
        embed_dim=768, depth=12, num_heads=12, num_prefix_tokens=1,
        weights_file="dinov2_vitb14_pretrain.pth",
        weights_repo="timm/vit_base_patch14_dinov2.lvd142m",
        weights_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
        paper=_DINOV2, description="DINOv2 ViT-B/14 (learned position embedding)",
        extra=dict(_TIMM_HUB_FILES),
    )


@register_backbone
def dinov2_vitb14_reg() -> BackboneCfg:
    return BackboneCfg(
        name="dinov2_vitb14_reg", pos_embed_interp=FB_REG_POS_EMBED_INTERP,
        reference_code=_FB_REF.format(fn="dinov2_vitb14_reg"),
        timm_arch="vit_base_patch14_reg4_dinov2", timm_tag="lvd142m",
        embed_dim=768, depth=12, num_heads=12, num_prefix_tokens=5,
        weights_file="dinov2_vitb14_reg4_pretrain.pth",
        weights_repo="timm/vit_base_patch14_reg4_dinov2.lvd142m",
        weights_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
        paper=f"{_DINOV2}; {_REG}", description="DINOv2 ViT-B/14 with 4 registers",
        extra=dict(_TIMM_HUB_FILES),
    )


@register_backbone
def dinov2_vitg14() -> BackboneCfg:
    # 1.1 B parameters (4.5 GB in float32): the base of the released SINDER checkpoint.
    return BackboneCfg(
        name="dinov2_vitg14", pos_embed_interp=FB_POS_EMBED_INTERP,
        reference_code=_FB_REF.format(fn="dinov2_vitg14"),
        timm_arch="vit_giant_patch14_dinov2", timm_tag="lvd142m",
        embed_dim=1536, depth=40, num_heads=24, num_prefix_tokens=1,
        weights_file="dinov2_vitg14_pretrain.pth",
        weights_repo="timm/vit_giant_patch14_dinov2.lvd142m",
        weights_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_pretrain.pth",
        paper=_DINOV2, description="DINOv2 ViT-g/14 (SwiGLU MLP; 1.1 B parameters, GPU advised)",
        heavy=True, extra=dict(_TIMM_HUB_FILES),
    )
