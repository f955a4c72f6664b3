"""SINDER (Wang, Zhang and Salzmann, ECCV 2024): defect directions from the weights, defective
tokens, the repair, repair files and ``sinder_<base>`` loading.

The main check uses a tiny ViT with a planted defect (see ``_bb_helpers.Planted``): block 2's
MLP writes ``50 * GELU(4 (v.y - 1)) * u`` into the residual stream, which only tokens that
carry the feature ``v`` (5 bright patches per image) trigger. The figures are printed
(``pytest -s``) for the report.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from _bb_helpers import PLANT, PLANT_POSITIONS, Planted, timm_state_dict
from safetensors.torch import save_file
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from napari_vitseg._progress import Progress, run
from napari_vitseg._validation import VitsegError
from napari_vitseg.backbones import WeightsNotFoundError, create_backbone
from napari_vitseg.backbones.sinder import (
    RepairResult,
    _mlp_hidden,
    apply_repair,
    attention_linearisation,
    check_repair_file,
    defect_directions,
    detect_defective_tokens,
    is_repair_file,
    iter_repair,
    load_repair,
    mlp_linearisation,
    neighbourhood_target,
    prepare_images,
    save_repair,
)
from napari_vitseg.backbones.weights import file_sha256

K = PLANT["block"]


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    c = abs(float(a @ b) / float(a.norm() * b.norm()))
    return math.degrees(math.acos(min(1.0, c)))


def _planted_mask(positions, shape=(16, 16)) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    for r, c in positions:
        m[r, c] = True
    return m


@pytest.fixture(scope="module")
def planted_dirs(planted):
    return defect_directions(planted.model)


@pytest.fixture(scope="module")
def planted_repair(planted, planted_dirs):
    steps = []
    job = iter_repair(planted.backbone(), planted.images, max_steps=80, directions=planted_dirs)
    result = run(job, steps.append)
    return result, steps


# -- linearisations -------------------------------------------------------------------------
def _rand_block(dim=32, act=nn.GELU, **kw):
    torch.manual_seed(0)
    blk = Block(dim, num_heads=4, mlp_ratio=2.0, qkv_bias=True, init_values=0.5, act_layer=act, **kw)
    with torch.no_grad():
        blk.norm1.weight.uniform_(0.5, 1.5)
        blk.norm2.weight.uniform_(0.5, 1.5)
        blk.ls1.gamma.uniform_(0.1, 1.0)
        blk.ls2.gamma.uniform_(0.1, 1.0)
    return blk


def test_attention_linearisation_formula():
    blk = _rand_block()
    d = 32
    wv = blk.attn.qkv.weight[2 * d:].double()
    p = torch.eye(d, dtype=torch.float64) - torch.ones(d, d, dtype=torch.float64) / d
    expected = torch.diag(blk.ls1.gamma.double()) @ blk.attn.proj.weight.double() @ wv \
        @ torch.diag(blk.norm1.weight.double()) @ p
    torch.testing.assert_close(attention_linearisation(blk), expected.detach())


def test_mlp_linearisation_is_exact_for_a_linear_mlp():
    """With the activation replaced by the identity (and no fc1 bias) the fit is exact."""
    blk = _rand_block(act=nn.Identity)
    with torch.no_grad():
        blk.mlp.fc1.bias.zero_()
    d = 32
    p = torch.eye(d, dtype=torch.float64) - torch.ones(d, d, dtype=torch.float64) / d
    expected = torch.diag(blk.ls2.gamma.double()) @ blk.mlp.fc2.weight.double() \
        @ blk.mlp.fc1.weight.double() @ torch.diag(blk.norm2.weight.double()) @ p
    got = mlp_linearisation(blk, n_samples=2000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, expected.detach(), atol=1e-4, rtol=1e-4)


def test_swiglu_hidden_and_direction():
    """ViT-g's SwiGLU MLP (timm SwiGLUPacked: fc1 -> SiLU(x1) * x2 -> fc2) with a planted unit."""
    dim = 48
    torch.manual_seed(0)
    model = VisionTransformer(img_size=56, patch_size=14, embed_dim=dim, depth=2, num_heads=4,
                              mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU,
                              init_values=1.0, num_classes=0).eval()
    mlp = model.blocks[1].mlp
    x = torch.randn(7, dim)
    x1, x2 = mlp.fc1(x).chunk(2, dim=-1)
    torch.testing.assert_close(_mlp_hidden(mlp, x), nn.functional.silu(x1) * x2)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(dim, generator=g)
    v = (v - v.mean()) / (v - v.mean()).norm()
    u = torch.randn(dim, generator=g)
    u = (u - u.mean()) / (u - u.mean()).norm()
    hidden = mlp.fc2.weight.shape[1]
    with torch.no_grad():  # gate unit 0 fires along v; its value half is a constant 1
        mlp.fc1.weight[0] = 4.0 * v
        mlp.fc1.bias[0] = -4.0
        mlp.fc1.weight[hidden] = 0.0
        mlp.fc1.bias[hidden] = 1.0
        mlp.fc2.weight[:, 0] = 60.0 * u
    dirs = defect_directions(model, n_samples=20000)
    assert dirs.shape == (2, dim)
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(2))
    ang = _angle(dirs[1], u)
    print(f"\nSwiGLU planted direction: angle {ang:.2f} deg")
    assert ang < 10


# -- planted defect: direction and detection --------------------------------------------------
def test_direction_finds_the_planted_defect(planted, planted_dirs):
    assert planted_dirs.shape == (PLANT["depth"], PLANT["dim"])
    angles = [_angle(d, planted.u) for d in planted_dirs]
    print(f"\nangle(nu_i, planted u) per block: {[round(a, 2) for a in angles]} deg")
    assert angles[K] < 10
    assert all(a < 10 for a in angles[K:])


def test_directions_are_reproducible(planted):
    d1 = defect_directions(planted.model, n_samples=4000, seed=3)
    d2 = defect_directions(planted.model, n_samples=4000, seed=3)
    torch.testing.assert_close(d1, d2)


def test_defective_tokens_detected(planted, planted_dirs):
    bb = planted.backbone()
    for img, pos in zip(planted.images, PLANT_POSITIONS, strict=True):
        with torch.no_grad():
            outs = bb.forward_blocks(img[None])
        for i, o in enumerate(outs):
            m = detect_defective_tokens(o[0], planted_dirs[i])
            if i < K:
                assert not m.any()
            else:
                assert torch.equal(m, _planted_mask(pos)), (i, torch.nonzero(m).tolist())
        # batched input gives the same masks
        mb = detect_defective_tokens(outs[K], planted_dirs[K])
        assert mb.shape == (1, 16, 16) and torch.equal(mb[0], _planted_mask(pos))
    print(f"\ndetected {len(PLANT_POSITIONS[0])}/{len(PLANT_POSITIONS[0])} planted tokens per image "
          f"at blocks {K}..{PLANT['depth'] - 1}, none elsewhere")


def test_detection_rules(planted, planted_dirs):
    bb = planted.backbone()

    def mask(positions):
        with torch.no_grad():
            o = bb.forward_blocks(Planted.image(9, positions)[None], [K])[0][0]
        return detect_defective_tokens(o, planted_dirs[K])

    assert not mask([]).any()  # nothing planted
    assert not mask([(4, 4), (9, 9)]).any()  # 2 tokens: the layer does not count (>= 3)
    m = mask([(0, 5), (4, 4), (9, 9), (12, 3)])  # one on the border
    assert torch.equal(m, _planted_mask([(4, 4), (9, 9), (12, 3)]))


def test_neighbourhood_target():
    tokens = torch.ones(4, 5, 6) * torch.arange(4.0)[:, None, None]
    scores = torch.zeros(5, 6)
    t = neighbourhood_target(tokens, scores)
    assert t.shape == (4, 3, 4)
    torch.testing.assert_close(t, tokens[:, 1:-1, 1:-1])
    # a defect-aligned centre (l = -1) gets weight exp(-10) relative: the target ignores it
    tokens = torch.zeros(2, 3, 3)
    tokens[:, 1, 1] = 100.0
    tokens[0, 0, 1] = 8.0  # an edge neighbour, Gaussian weight 2/12 among the non-centre ones
    scores = torch.zeros(3, 3)
    scores[1, 1] = -1.0
    t = neighbourhood_target(tokens, scores, tau=0.1)
    w_c = 4 * math.exp(-10) / (12 + 4 * math.exp(-10))
    assert t[0, 0, 0].item() == pytest.approx(8 * 2 / (12 + 4 * math.exp(-10)) + 100 * w_c, rel=1e-5)
    assert t[1, 0, 0].item() == pytest.approx(100 * w_c, rel=1e-5)


# -- the repair ---------------------------------------------------------------------------------
def _final_norms(backbone, img):
    with torch.no_grad():
        return backbone.forward_blocks(img[None], [PLANT["depth"] - 1])[0][0]


def test_repair_removes_the_planted_defect(planted, planted_repair):
    result, steps = planted_repair
    assert all(isinstance(p, Progress) for p in steps) and steps[-1].done == result.steps
    assert result.converged and result.steps < 80 and result.metadata["stopped"] == "converged"
    assert result.metadata["steps_with_defect"] >= 1
    assert set(result.metadata["layers"]) <= {f"blocks.{K}.attn.qkv", f"blocks.{K}.attn.proj",
                                             f"blocks.{K}.mlp.fc1", f"blocks.{K}.mlp.fc2"}
    assert all(k.startswith(f"blocks.{K}.") for k in result.epsilons)  # window = depth / 4 = 1
    repaired = planted.backbone()
    apply_repair(repaired, result)
    base = planted.backbone()
    lines = []
    for img, pos in zip(planted.images, PLANT_POSITIONS, strict=True):
        m = _planted_mask(pos)
        f0, f1 = _final_norms(base, img), _final_norms(repaired, img)
        n0, n1 = f0.norm(dim=0), f1.norm(dim=0)
        excess0 = float((n0[m] - n0[~m].median()).mean())
        excess1 = float((n1[m] - n1[~m].median()).mean())
        rel = ((f1 - f0).norm(dim=0) / n0)[~m]
        lines.append(f"norm excess {excess0:.1f} -> {excess1:.1f} ({100 * (1 - excess1 / excess0):.1f}% less); "
                     f"non-defective tokens: median relative change {float(rel.median()):.4f}, "
                     f"max {float(rel.max()):.4f}")
        assert excess1 <= 0.5 * excess0
        assert float(rel.max()) < 0.02
    print(f"\nrepair: {result.steps} steps ({result.metadata['steps_with_defect']} with defects), "
          f"layers {result.metadata['layers']}\n" + "\n".join(lines))


def test_repair_file_roundtrip(planted, planted_repair, tmp_path):
    result, _ = planted_repair
    p = save_repair(result, tmp_path / "planted.safetensors")
    assert is_repair_file(p) and p.stat().st_size < 20000
    eps, meta = load_repair(p)
    assert set(eps) == set(result.epsilons) and meta["base"] == "planted_test"
    assert meta["base_sha256"] == "random" and meta["n_images"] == 4 and meta["steps"] == result.steps
    assert meta["settings"]["tau"] == 0.1 and meta["settings"]["layer_window"] == 1
    a, b = planted.backbone(), planted.backbone()
    apply_repair(a, result)
    apply_repair(b, p, base="planted_test", base_sha256="random")
    for (n1, t1), (_, t2) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        torch.testing.assert_close(t1, t2, msg=n1)
    with pytest.raises(VitsegError, match="repair of 'planted_test'"):
        apply_repair(planted.backbone(), p, base="dinov2_vits14")
    with pytest.raises(VitsegError, match="made from other weights"):
        apply_repair(planted.backbone(), p, base_sha256="0" * 64)
    with pytest.raises(VitsegError, match="singular values"):
        apply_repair(planted.backbone(), ({"blocks.0.mlp.fc1.epsilon": torch.zeros(5)}, meta))
    with pytest.raises(VitsegError, match="does not have"):
        apply_repair(planted.backbone(), ({"blocks.9.mlp.fc1.epsilon": torch.zeros(96)}, meta))


def test_zero_offsets_change_nothing(planted):
    bb = planted.backbone()
    before = copy.deepcopy(bb.model.state_dict())
    meta = {"format": "vitseg-sinder-repair", "version": 1, "base": "planted_test", "layers": []}
    apply_repair(bb, ({f"blocks.{K}.attn.qkv.epsilon_v": torch.zeros(96)}, meta))
    for k, v in bb.model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def test_repair_without_defects_does_nothing(planted, planted_dirs):
    clean = [Planted.image(20 + i, []) for i in range(2)]
    result = run(iter_repair(planted.backbone(), clean, max_steps=20, directions=planted_dirs))
    assert result.converged and result.epsilons == {} and result.steps == 4  # stop window of 4
    assert result.metadata["steps_with_defect"] == 0


def test_repair_time_limit(planted, planted_dirs):
    result = run(iter_repair(planted.backbone(), planted.images, max_steps=50, max_time_s=0.0,
                            directions=planted_dirs))
    assert result.steps == 1 and not result.converged and result.metadata["stopped"] == "time_limit"


def test_repair_input_checks(planted):
    bb = planted.backbone()
    with pytest.raises(VitsegError, match="at least one image"):
        run(iter_repair(bb, []))
    with pytest.raises(VitsegError, match="multiples of 14"):
        run(iter_repair(bb, [torch.zeros(3, 50, 56)]))


def test_vits_repair_job_smoke(vits_reg, vits_reg_dirs):
    """The real ViT-S/14 path: directions, a few steps, metadata (random weights)."""
    imgs = prepare_images([torch.rand(70, 84).numpy(), (torch.rand(60, 60, 3) * 255).byte().numpy()],
                          size=224)
    assert [tuple(i.shape) for i in imgs] == [(3, 70, 84), (3, 56, 56)]
    result = run(iter_repair(vits_reg, imgs, max_steps=3, directions=vits_reg_dirs, stop_window=10))
    assert result.steps == 3 and result.directions.shape == (12, 384)
    assert result.metadata["base"] == "dinov2_vits14_reg" and result.metadata["settings"]["layer_window"] == 3


def test_repair_presets():
    from napari_vitseg.backbones.sinder import REPAIR_PRESETS, repair_preset

    assert repair_preset("reference") == {"size": 518, "resize": True, "max_steps": 30_000, "stop_window": 1000,
                                          "prefill_stop_window": True, "layer_window": 10, "n_samples": 100_000}
    assert repair_preset("fast")["max_steps"] == 150 and set(REPAIR_PRESETS) == {"fast", "reference"}
    with pytest.raises(VitsegError, match="Unknown repair preset"):
        repair_preset("slow")
    with pytest.raises(VitsegError, match="Unknown repair preset"):
        prepare_images([np.zeros((60, 60), np.uint8)], preset="slow")


def test_prepare_images_reference_preset_resizes_then_crops():
    """'reference': shorter side resized to 518 (bicubic, antialiased), then a centre crop, as
    SINDER's Resize(518) + CenterCrop(518); 'fast': a 224-px crop at the native pixel size."""
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 400)).astype(np.uint8)
    (ref,) = prepare_images([img], preset="reference")
    assert ref.shape == (3, 518, 518)
    x = torch.from_numpy(img.astype(np.float32) / 255)[None, None].expand(1, 3, -1, -1)
    want = F.interpolate(x, size=(518, 690), mode="bicubic", antialias=True).clamp(0, 1)[0, :, :, 86:604]
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(ref, (want - mean) / std, atol=1e-5, rtol=0)
    (fast,) = prepare_images([img])
    assert fast.shape == (3, 224, 224)
    torch.testing.assert_close(fast[0], (torch.from_numpy(img[38:262, 88:312] / 255).float() - 0.485) / 0.229)
    big = rng.integers(0, 256, (1200, 700)).astype(np.uint8)
    assert prepare_images([big], preset="reference")[0].shape == (3, 518, 518)  # downsized: 888 x 518, cropped
    assert prepare_images([big], preset="reference", resize=False)[0].shape == (3, 518, 518)  # crop only
    assert prepare_images([img], preset="reference", size=224)[0].shape == (3, 224, 224)


def test_reference_stop_window_is_prefilled(planted, planted_dirs):
    """SINDER starts its 1000-image history full of 'defect' entries: with no defects it stops
    after stop_fraction x window steps; without pre-filling only after a full window."""
    clean = [Planted.image(20 + i, []) for i in range(2)]
    ref = run(iter_repair(planted.backbone(), clean, preset="reference", stop_window=8, directions=planted_dirs))
    assert ref.converged and ref.steps == 6 and ref.epsilons == {}
    st = ref.metadata["settings"]
    assert (st["preset"], st["prefill_stop_window"], st["layer_window"], st["max_steps"], st["n_samples"]) == \
        ("reference", True, 10, 30_000, 100_000)
    fast = run(iter_repair(planted.backbone(), clean, stop_window=8, directions=planted_dirs))
    assert fast.converged and fast.steps == 8 and fast.metadata["settings"]["prefill_stop_window"] is False


def test_reference_preset_repairs_the_planted_defect_with_a_10_block_window(planted):
    """The 'reference' schedule (100,000-sample directions, 10 trained blocks: all 4 here) finds the
    planted direction and trains offsets on the defective steps (8 steps; its pre-filled window
    would not let it stop before 750)."""
    result = run(iter_repair(planted.backbone(), planted.images, preset="reference", max_steps=8))
    assert result.metadata["settings"]["n_samples"] == 100_000
    assert result.metadata["steps_with_defect"] >= 1 and result.epsilons
    d_ref = result.directions[K]
    d_fast = defect_directions(planted.backbone(), n_samples=20_000, seed=0)[K]
    assert float(torch.abs(d_ref @ d_fast)) > 0.99  # the same planted direction


def test_prepare_images_rejects_tiny_and_stacks():
    with pytest.raises(VitsegError, match="at least 42 x 42"):
        prepare_images([torch.rand(30, 100).numpy()])
    with pytest.raises(VitsegError, match=r"\(Y, X\)"):
        prepare_images([torch.rand(5, 60, 60).numpy()])


# -- sinder_<base> backbones ----------------------------------------------------------------
def _fake_repair(base_sha: str) -> RepairResult:
    g = torch.Generator().manual_seed(0)
    eps = {"blocks.10.attn.qkv.epsilon_v": 0.1 * torch.randn(384, generator=g),
           "blocks.11.mlp.fc1.epsilon": 0.1 * torch.randn(384, generator=g)}
    meta = {"format": "vitseg-sinder-repair", "version": 1, "base": "dinov2_vits14_reg",
            "base_sha256": base_sha, "layers": ["blocks.10.attn.qkv", "blocks.11.mlp.fc1"], "steps": 1}
    return RepairResult(epsilons=eps, metadata=meta)


def test_sinder_backbone_loads_base_plus_repair(vits_reg, weights_folder):
    base_file = weights_folder / "dinov2_vits14_reg.safetensors"
    save_file(timm_state_dict(vits_reg), str(base_file))
    with pytest.raises(WeightsNotFoundError, match="vitseg repair --backbone dinov2_vits14_reg"):
        create_backbone("sinder_dinov2_vits14_reg")
    repair = _fake_repair(file_sha256(base_file))
    rfile = save_repair(repair, weights_folder / "sinder_dinov2_vits14_reg.safetensors")
    assert check_repair_file(rfile, base="dinov2_vits14_reg")["base"] == "dinov2_vits14_reg"
    b = create_backbone("sinder_dinov2_vits14_reg")
    assert b.name == "sinder_dinov2_vits14_reg" and b.weights_sha256 == file_sha256(rfile)
    assert b.load_report.layout == "sinder-repair" and b.load_report.repair["layers"]
    ref = create_backbone("dinov2_vits14_reg")
    apply_repair(ref, repair)
    x = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        torch.testing.assert_close(b.forward_features(x), ref.forward_features(x))
        assert (b.forward_features(x) - vits_reg.forward_features(x)).abs().max() > 1e-3
    # a repair made from other base weights is refused
    save_repair(_fake_repair("f" * 64), rfile)
    with pytest.raises(VitsegError, match="made from other weights"):
        create_backbone("sinder_dinov2_vits14_reg")
    # a repair file offered as the plain base is refused
    with pytest.raises(VitsegError, match="sinder_dinov2_vits14_reg"):
        create_backbone("dinov2_vits14_reg", weights=rfile)
