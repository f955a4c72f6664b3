"""Helpers for the backbone tests: random models (LayerScale 1, see methods.md), checkpoints
fabricated in every published key layout, and a tiny ViT with a planted singular defect."""

from __future__ import annotations

import copy

import torch

from napari_vitseg.backbones import BackboneCfg, ViTBackbone, create_backbone, get_backbone_cfg


def seeded_backbone(name: str, seed: int = 0) -> ViTBackbone:
    return create_backbone(name, pretrained=False, init_values=1.0, seed=seed)


def with_cfg(backbone: ViTBackbone, name: str) -> ViTBackbone:
    """A copy of ``backbone``'s weights under another registry entry (no new timm init)."""
    cfg = get_backbone_cfg(name)
    model = copy.deepcopy(backbone.model)
    if cfg.position != "learned":
        model.pos_embed = None
    return ViTBackbone(cfg, model, pretrained=False).eval()


def timm_state_dict(backbone: ViTBackbone) -> dict:
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


def to_facebookresearch(sd: dict) -> dict:
    """timm DINOv2 names -> the original facebookresearch layout (inverse of timm's filter)."""
    out = {}
    sd = dict(sd)
    if "reg_token" in sd:
        # timm folds the CLS position into cls_token and drops it from pos_embed
        pos = sd.pop("pos_embed")
        p0 = torch.randn(1, 1, pos.shape[-1], generator=torch.Generator().manual_seed(7)) * 0.1
        out["pos_embed"] = torch.cat([p0, pos], dim=1)
        out["cls_token"] = sd.pop("cls_token") - p0
        out["register_tokens"] = sd.pop("reg_token")
    for k, v in sd.items():
        out[k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3") if ".mlp." in k and _swiglu(sd) else k] = v
    out["mask_token"] = torch.zeros(1, out["cls_token"].shape[-1])
    return out


def _swiglu(sd: dict) -> bool:
    w1 = sd.get("blocks.0.mlp.fc1.weight")
    w2 = sd.get("blocks.0.mlp.fc2.weight")
    return w1 is not None and w2 is not None and w1.shape[0] == 2 * w2.shape[1]


def to_dinosaw(sd: dict, *, prefix: str = "model.", zero_pos_embed: bool = True, slopes: bool = True,
               head: bool = True, num_heads: int = 6) -> dict:
    """timm ALiBi names -> a dino-saw checkpoint (prefix, zeroed pos_embed, slope buffers, head)."""
    d = sd["cls_token"].shape[-1]
    out = {}
    if zero_pos_embed:
        out["pos_embed"] = torch.zeros(1, 1369, d)
    for k, v in sd.items():
        out[k] = v
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    if slopes:
        for i in range(depth):
            out[f"blocks.{i}.attn.m"] = torch.ones(num_heads, 1, 1)
    if head:
        out["head.weight"] = torch.zeros(1000, d)
        out["head.bias"] = torch.zeros(1000)
    out["mask_token"] = torch.zeros(1, d)
    return {prefix + k: v for k, v in out.items()}


def lazy_zeros_state_dict(cfg: BackboneCfg) -> dict:
    """A full-size state dict of zeros that costs no memory (expanded scalars; .pth only)."""
    from napari_vitseg.backbones._base import build_timm_model

    meta = build_timm_model(cfg, device="meta").state_dict()
    return {k: torch.zeros(1).expand(v.shape) for k, v in meta.items()}


# --------------------------------------------------------------------------------------------
# a tiny ViT with a planted singular defect
# --------------------------------------------------------------------------------------------
PLANT = {"dim": 96, "depth": 4, "block": 2, "heads": 4, "a": 4.0, "t": 1.0, "c": 50.0}
PLANT_POSITIONS = [
    [(3, 4), (7, 9), (10, 2), (12, 12), (5, 13)],
    [(2, 2), (8, 8), (13, 5), (4, 11), (11, 10)],
    [(6, 3), (9, 12), (3, 9), (12, 6), (7, 7)],
    [(4, 4), (10, 10), (2, 12), (13, 2), (8, 5)],
]


def _zm_unit(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean()
    return v / v.norm()


class Planted:
    """A 4-block, 96-dim ViT-reg4 whose block 2 MLP writes a huge component along ``u`` for
    tokens that carry the input feature ``v`` (patches with a bright channel 0)."""

    def __init__(self):
        from timm.models.vision_transformer import VisionTransformer

        p = PLANT
        dim, k = p["dim"], p["block"]
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = VisionTransformer(
                img_size=224, patch_size=14, embed_dim=dim, depth=p["depth"], num_heads=p["heads"],
                init_values=1.0, reg_tokens=4, no_embed_class=True, dynamic_img_size=True, num_classes=0,
            ).eval()
        g = torch.Generator().manual_seed(1)
        v = _zm_unit(torch.randn(dim, generator=g))
        u = torch.randn(dim, generator=g)
        u = _zm_unit(u - (u @ v) * v)
        pv = torch.eye(dim) - torch.outer(v, v)
        with torch.no_grad():
            # no token carries v, except through the planted patch-embedding channel
            pe = model.patch_embed.proj
            pe.weight.copy_(torch.einsum("de,e...->d...", pv, pe.weight))
            pe.bias.copy_(pv @ pe.bias)
            for t in (model.pos_embed, model.cls_token, model.reg_token):
                t.copy_(t @ pv)
            for i in range(k + 1):
                b = model.blocks[i]
                b.attn.proj.weight.copy_(pv @ b.attn.proj.weight)
                b.attn.proj.bias.copy_(pv @ b.attn.proj.bias)
                if i < k:
                    b.mlp.fc2.weight.copy_(pv @ b.mlp.fc2.weight)
                    b.mlp.fc2.bias.copy_(pv @ b.mlp.fc2.bias)
            x = torch.randn(1, 3, 224, 224, generator=g)
            x[:, 0] = 0
            n0 = float(model.patch_embed(x).norm(dim=-1).median())
            pe.weight[:, 0] += 4 * n0 * v[:, None, None] / (14 * 14)
            b = model.blocks[k]
            b.mlp.fc1.weight[0] = p["a"] * v
            b.mlp.fc1.bias[0] = -p["a"] * p["t"]
            b.mlp.fc2.weight[:, 0] = p["c"] * u
        self.cfg = BackboneCfg(name="planted_test", timm_arch="-", timm_tag=None, embed_dim=dim,
                               depth=p["depth"], num_heads=p["heads"], num_prefix_tokens=5)
        self.model = model
        self.u, self.v = u, v
        self.images = [self.image(s, pos) for s, pos in enumerate(PLANT_POSITIONS)]

    def backbone(self) -> ViTBackbone:
        return ViTBackbone(self.cfg, copy.deepcopy(self.model), pretrained=False)

    @staticmethod
    def image(seed: int, positions, size: int = 224) -> torch.Tensor:
        x = torch.randn(3, size, size, generator=torch.Generator().manual_seed(100 + seed))
        x[0] = 0
        for r, c in positions:
            x[0, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] = 1.0
        return x
