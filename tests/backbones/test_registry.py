"""The backbone registry: required entries, consistent fields, architecture on the meta device."""

from __future__ import annotations

import pytest
import timm
import torch
from _bb_helpers import seeded_backbone

from napari_vitseg._validation import VitsegError
from napari_vitseg.backbones import BackboneCfg, create_backbone, get_backbone_cfg, list_backbones
from napari_vitseg.backbones._base import build_timm_model
from napari_vitseg.backbones.weights import is_repair_entry

REQUIRED = [
    "dinov2_vits14", "dinov2_vits14_reg", "dinov2_vitb14", "dinov2_vitb14_reg",
    "alibi_dv2_vits14_reg", "alibi_coco_dv2_vits14_reg", "nope_coco_dv2_vits14_reg",
    "sinder_dinov2_vits14", "sinder_dinov2_vits14_reg", "sinder_dinov2_vitb14",
    "sinder_dinov2_vitb14_reg", "sinder_dinov2_vitg14",
]


def test_required_entries_present():
    assert set(REQUIRED) <= set(list_backbones())
    assert list_backbones("alibi_*") == ["alibi_coco_dv2_vits14_reg", "alibi_dv2_vits14_reg"]
    assert list_backbones("sinder_*") == sorted(n for n in REQUIRED if n.startswith("sinder_"))


@pytest.mark.parametrize("name", list_backbones())
def test_entry_fields_and_architecture(name):
    cfg = get_backbone_cfg(name)
    assert isinstance(cfg, BackboneCfg) and cfg.name == name
    assert cfg.position in ("learned", "alibi", "none")
    assert cfg.weights_file and cfg.patch_size == 14 and cfg.paper and cfg.description
    assert cfg.sha256 is None or len(cfg.sha256) == 64
    if is_repair_entry(cfg):
        assert cfg.base in list_backbones() and cfg.weights_file == f"{name}.safetensors"
        assert cfg.weights_repo is None  # made locally by `vitseg repair`
        assert "2407.16826" in cfg.paper
    else:
        assert cfg.weights_repo and cfg.weights_url
    if cfg.position == "alibi":
        assert cfg.extra["alibi"] == {"wrap": True, "metric": "euclidean", "slope": "constant"}
        assert "2603.16840" in cfg.paper and cfg.weights_repo == "rmdocherty/dino-saw"
    assert timm.is_model(cfg.timm_arch)
    model = build_timm_model(cfg, device="meta")  # no memory, even for ViT-g
    assert model.embed_dim == cfg.embed_dim and len(model.blocks) == cfg.depth
    assert model.blocks[0].attn.num_heads == cfg.num_heads
    assert model.num_prefix_tokens == cfg.num_prefix_tokens
    assert model.patch_embed.patch_size == (cfg.patch_size, cfg.patch_size)
    assert (model.pos_embed is None) == (cfg.position != "learned")


def test_published_names():
    assert get_backbone_cfg("alibi_dv2_vits14_reg").weights_file == "alibi_dv2_vits14_reg4.pth"
    assert get_backbone_cfg("alibi_coco_dv2_vits14_reg").weights_file == "alibi_coco_dv2_vits14_reg4.pth"
    assert get_backbone_cfg("nope_coco_dv2_vits14_reg").position == "none"
    g = get_backbone_cfg("sinder_dinov2_vitg14")
    assert g.weights_file == "dinov2g_sinder.pth" and g.weights_repo == "haoqiwang/sinder"
    assert g.extra["full_checkpoint"] and g.embed_dim == 1536 and g.depth == 40
    assert get_backbone_cfg("dinov2_vits14_reg").num_prefix_tokens == 5
    assert get_backbone_cfg("dinov2_vitb14").embed_dim == 768


def test_heavy_is_a_field():
    heavy = {n for n in list_backbones() if get_backbone_cfg(n).heavy}
    assert heavy == {"dinov2_vitg14", "sinder_dinov2_vitg14"}
    assert not any("heavy" in get_backbone_cfg(n).extra for n in list_backbones())


def test_unknown_name():
    with pytest.raises(VitsegError, match="Unknown backbone 'dinov3'.*alibi_dv2_vits14_reg.*'none'"):
        get_backbone_cfg("dinov3")


@pytest.mark.parametrize("name", ["dinov2_vits14", "alibi_dv2_vits14_reg", "sinder_dinov2_vits14_reg"])
def test_random_forward(name):
    b = seeded_backbone(name)
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        f = b.forward_features(x)
        blocks = b.forward_blocks(x, [0, -1], return_prefix_tokens=True)
    assert f.shape == (1, b.embed_dim, 2, 3) and torch.isfinite(f).all()
    assert [t[1].shape[1] for t in blocks] == [b.cfg.num_prefix_tokens] * 2
    assert b.weights_sha256 == "random" and not b.pretrained


def _weights(b) -> dict:
    return {k: v.clone() for k, v in b.model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seeded_random_weights_are_reproducible_and_leave_the_global_rng():
    name = "dinov2_vits14_reg"
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    a = _weights(create_backbone(name, pretrained=False, seed=0))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert _same(a, _weights(create_backbone(name, pretrained=False, seed=0)))
    assert not _same(a, _weights(create_backbone(name, pretrained=False, seed=1)))
    # the same weights as the recipe it replaces (seed inside fork_rng, then build)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        old = _weights(create_backbone(name, pretrained=False))
    assert _same(a, old)
    # timm's default LayerScale unless init_values is given
    b = create_backbone(name, pretrained=False, seed=0, init_values=1.0)
    assert torch.all(b.model.blocks[0].ls1.gamma == 1.0)
    assert torch.all(a["blocks.0.ls1.gamma"] == 1e-5)


def test_seed_with_pretrained_is_an_error():
    with pytest.raises(VitsegError, match="pretrained=False"):
        create_backbone("dinov2_vits14_reg", seed=0)
