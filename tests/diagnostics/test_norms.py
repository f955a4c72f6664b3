"""Token norms, high-norm flags, SINDER angles and defects."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _diag_helpers import noise_image, seeded

from napari_vitseg._progress import run
from napari_vitseg._validation import VitsegError
from napari_vitseg.diagnostics import (
    angle_between,
    angle_map,
    empirical_direction,
    flag_high_norm,
    iter_token_norms,
    norm_histogram,
    prepare_image,
    sinder_defects,
    token_norms,
)

SIDE = 140  # 10 x 10 tokens


@pytest.fixture(scope="module")
def vits():
    return seeded("dinov2_vits14", 4)


def test_flag_high_norm_synthetic():
    n = np.ones((3, 4, 5), np.float32)
    n[1, 2, 3] = 10.0
    mask, share = flag_high_norm(n)
    assert mask.shape == n.shape and mask.sum() == 1 and mask[1, 2, 3]
    np.testing.assert_allclose(share, [0, 1 / 20, 0])
    mask, share = flag_high_norm(n, rel_threshold=20)
    assert not mask.any() and share.sum() == 0
    m2, s2 = flag_high_norm(n[1])
    assert m2[2, 3] and s2 == pytest.approx(0.05)
    with pytest.raises(VitsegError, match="rel_threshold"):
        flag_high_norm(n, 0)


def _plant_hook(block_out_token: int, vector: torch.Tensor):
    def hook(_mod, _inp, out):
        out = out.clone()
        out[:, block_out_token] += vector
        return out
    return hook


def test_planted_high_norm_token_is_flagged_at_its_position(vits):
    img = noise_image(SIDE, seed=3)
    clean = token_norms(vits, img)
    assert clean.shape == (12, 10, 10) and clean.dtype == np.float32
    _, share_clean = flag_high_norm(clean)
    assert share_clean.max() == 0.0  # a model without a high-norm token flags nothing

    k, (i, j) = 5, (3, 7)
    t = vits.num_prefix_tokens + i * 10 + j
    big = torch.zeros(384)
    big[:20] = 50.0  # norm ~224, vs ~10-20 for ordinary tokens
    handle = vits.model.blocks[k].register_forward_hook(_plant_hook(t, big))
    try:
        planted = token_norms(vits, img)
    finally:
        handle.remove()
    mask, share = flag_high_norm(planted)
    np.testing.assert_array_equal(share[:k], 0.0)
    for layer in range(k, 12):  # the residual stream carries it on through later blocks
        assert mask[layer, i, j], layer
        assert share[layer] == pytest.approx(1 / 100)
    np.testing.assert_allclose(planted[:k], clean[:k], rtol=1e-5)  # earlier blocks untouched


def test_angle_map_and_empirical_direction():
    rng = np.random.default_rng(0)
    d = rng.normal(size=16)
    tok = rng.normal(size=(16, 4, 4))
    tok[:, 0, 0] = 3 * d
    tok[:, 1, 1] = -2 * d  # sign-free: anti-parallel is also 0 degrees
    orth = rng.normal(size=16)
    orth -= orth @ d / (d @ d) * d
    tok[:, 2, 2] = orth
    a = angle_map(tok, d)
    assert a.shape == (4, 4) and a.dtype == np.float32
    assert a[0, 0] == pytest.approx(0, abs=0.1) and a[1, 1] == pytest.approx(0, abs=0.1)
    assert a[2, 2] == pytest.approx(90, abs=0.1)
    assert 0 <= a.min() and a.max() <= 90
    a4 = angle_map(np.stack([tok, tok]), np.stack([d, orth]))
    assert a4.shape == (2, 4, 4) and a4[1, 2, 2] == pytest.approx(0, abs=0.1)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True
    assert angle_between(empirical_direction(tok, mask), d) == pytest.approx(0, abs=1e-3)
    assert empirical_direction(tok, np.zeros((4, 4), bool)) is None
    with pytest.raises(VitsegError, match="direction"):
        angle_map(np.stack([tok, tok]), np.stack([d, d, d]))


def test_sinder_defects_rule():
    rng = np.random.default_rng(1)
    d = rng.normal(size=32).astype(np.float32)
    tok = rng.normal(size=(2, 32, 12, 12)).astype(np.float32)
    for (i, j) in [(3, 3), (5, 8), (9, 2), (0, 5)]:  # (0, 5) is on the border: never flagged
        tok[0, :, i, j] = 5 * d
    tok[1, :, 4, 4] = 5 * d  # a single aligned token: below the >= 3 rule
    mask, counts = sinder_defects(tok, np.stack([d, d]))
    assert mask.shape == (2, 12, 12)
    assert mask[0, 3, 3] and mask[0, 5, 8] and mask[0, 9, 2] and not mask[0, 0, 5]
    assert counts[0] == 3 and mask[0].sum() == 3
    assert counts[1] == 1 and not mask[1].any()


def test_norm_histogram():
    rng = np.random.default_rng(2)
    a = rng.uniform(1, 100, size=(3, 5, 6))
    b = rng.uniform(1, 100, size=(3, 4, 4))
    counts, edges = norm_histogram([a, b], bins=10)
    assert counts.shape == (3, 10) and edges.shape == (11,)
    np.testing.assert_array_equal(counts.sum(1), 30 + 16)
    assert np.all(np.diff(np.log(edges)) > 0)
    np.testing.assert_allclose(np.diff(np.log(edges)), np.diff(np.log(edges))[0])
    c2, _ = norm_histogram(a, edges=edges)
    assert c2.sum() == a.size


def test_token_norm_diagnostics_job_with_given_directions(vits):
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(12, 384)).astype(np.float32)
    res = run(iter_token_norms(vits, [noise_image(SIDE), noise_image(112, 1)], directions=dirs,
                                     rel_threshold=2.5, names=["a", "b"]))
    assert res.layers[0] == "block0" and len(res.layers) == 12
    assert res.share.shape == (2, 12) and res.max.shape == (2, 12)
    assert res.has_directions
    p = res.per_image[1]
    assert p["norms"].shape == (12, 8, 8) and p["angles"].shape == (12, 8, 8) and p["defects"].dtype == bool
    assert res.hist_counts.sum() == 12 * (100 + 64)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["rel_threshold"] == 2.5 and len(d["per_image"]) == 2 and "min_angle_deg" in d["per_image"][0]
    # without directions
    res2 = run(iter_token_norms(vits, noise_image(SIDE), directions=None))
    assert not res2.has_directions and res2.per_image[0]["angles"] is None


@pytest.mark.slow
def test_sinder_directions_are_used_when_available(vits):
    pytest.importorskip("napari_vitseg.backbones.sinder")
    res = run(iter_token_norms(vits, prepare_image(noise_image(SIDE))))
    assert res.has_directions
    a = res.per_image[0]["angles"]
    assert a.shape == (12, 10, 10) and np.isfinite(a).all()
