"""Smoke tests of benchmarks/quality_screens.py and benchmarks/quality_figure.py on tiny data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _loaded(name):
    """The benchmark script ``name`` as a module for the test's duration (and bench_quality, which it imports)."""
    had = "bench_quality" in sys.modules
    yield _load(name)
    sys.modules.pop(name, None)
    if not had:
        sys.modules.pop("bench_quality", None)


@pytest.fixture(scope="module")
def qs():
    yield from _loaded("quality_screens")


@pytest.fixture(scope="module")
def qf():
    yield from _loaded("quality_figure")


def _disk_set(stack=False):
    """A bright disk (class 2) on a dark ground (class 1), scribbles well inside each class."""
    yy, xx = np.mgrid[:48, :48]
    gt = np.where((yy - 24) ** 2 + (xx - 24) ** 2 < 12 ** 2, 2, 1).astype(np.uint8)
    rng = np.random.default_rng(0)
    img = (gt * 90 + rng.normal(0, 4, gt.shape)).clip(0, 255).astype(np.uint8)
    scr = np.zeros_like(gt)
    scr[20:28, 20:28], scr[2:6, 2:40] = 2, 1
    if stack:
        gt, img, scr = np.stack([gt, gt]), np.stack([img, img]), np.stack([scr, np.zeros_like(scr)])
    return {"name": "disk", "gt": gt, "scr": scr, "image_arr": img, "classes": [1, 2], "stack": stack,
            "channel_axis": None, "scribbles_made": False, "axes": "YX"}


def _proba(gt, shift=0.0):
    """(Z, K, Y, X) probabilities that say the ground truth with top probability 0.9 - shift."""
    gt = gt if gt.ndim == 3 else gt[None]
    p2 = np.where(gt == 2, 0.9 - shift, 0.1 + shift).astype(np.float32)
    return np.stack([1 - p2, p2], 1)


def test_postprocesses_keep_a_confident_correct_answer(qs):
    ds = _disk_set()
    grey, _ = qs.image_u8([ds["image_arr"]])
    P = _proba(ds["gt"])
    want = ds["gt"][None] - 1
    np.testing.assert_array_equal(qs.watershed_labels(P, grey, t=0.6), want)
    np.testing.assert_array_equal(qs.guided_labels(P, grey), want)
    np.testing.assert_array_equal(qs.prior_cc_labels(P), want)
    # the band watershed re-decides only pixels next to a label boundary, from the image's edges
    band = qs.watershed_labels(P, grey, band=1)
    assert (band != want).mean() < 0.02


def test_watershed_moves_an_uncertain_boundary_to_the_image_edge(qs):
    ds = _disk_set()
    grey, _ = qs.image_u8([ds["image_arr"]])
    P = _proba(ds["gt"])
    wrong = np.zeros_like(ds["gt"], bool)
    wrong[24, 36:40] = True  # the forest's disk spills 4 px past the true edge (radius 12) at row 24 ...
    P[0, 1][wrong], P[0, 0][wrong] = 0.55, 0.45  # ... with little confidence
    assert (P.argmax(1)[0][wrong] == 1).all()
    fixed = qs.watershed_labels(P, grey, t=0.6)[0]
    assert (fixed[wrong] == 0).all()  # flooded from the confident ground up to the real edge


def test_prior_cc_favours_the_class_the_image_has_more_of(qs):
    P = np.full((1, 2, 10, 10), 0.5, np.float32)
    P[0, 0, :8] = 0.8  # 80 % of the pixels are confidently class 0
    P[0, 1, :8] = 0.2
    P[0, 0, 8:] = 0.45  # a 45/55 split elsewhere: class 1 by the argmax
    P[0, 1, 8:] = 0.55
    assert (P.argmax(1)[0, 8:] == 1).all()
    assert (qs.prior_cc_labels(P)[0, 8:] == 0).all()  # 0.45 * 0.8 > 0.55 * 0.2


def test_pseudo_labels_are_confident_unscribbled_and_counted(qs):
    ds = _disk_set()
    scr = ds["scr"][None]
    P = _proba(ds["gt"])
    proba = P.transpose(0, 2, 3, 1).reshape(-1, 2)
    proba[:48] = 0.5  # row 0 is unsure
    y = scr[scr > 0]
    idx, lab = qs.pseudo_labels(proba, np.array([1, 2]), scr, y, 0.9 - 1e-6, 2, None, np.random.default_rng(0))
    assert (scr.ravel()[idx] == 0).all() and (idx >= 48).all()
    np.testing.assert_array_equal(lab, ds["gt"].ravel()[idx])
    for k in (1, 2):
        assert (lab == k).sum() == min(2 * (y == k).sum(), ((ds["gt"].ravel() == k) & (scr.ravel() == 0)).sum())
    near, _ = qs.pseudo_labels(proba, np.array([1, 2]), scr, y, 0.5, 10, 2, np.random.default_rng(0))
    r, c = np.unravel_index(near, ds["gt"].shape)
    assert (np.abs(np.hypot(r - 24, c - 24) - 12) < 4).all()  # only near the disk's edge


def test_extra_families_have_the_plane_shape(qs):
    ds = _disk_set()
    grey, u8 = qs.image_u8([ds["image_arr"]])
    for name, n in (("+median", 4), ("+entropy", 3), ("+lbp", 3), ("+local_norm", 3)):
        ch = qs.extra_channels(name, grey[0], u8[0])
        assert len(ch) == n and all(c.shape == (48, 48) and np.isfinite(c).all() for c in ch)
    with pytest.raises(ValueError):
        qs.extra_channels("+nothing", grey[0], u8[0])


@pytest.mark.parametrize("screen", ["postprocess", "selftrain", "families", "classifiers", "scales", "large_scales",
                                    "boundary", "corrections", "strokebag"])
def test_every_screen_runs_on_a_stack(qs, screen):
    ds = _disk_set(stack=True)
    fs = qs.set_features(ds)
    assert fs["F"].shape[:3] == (2, 48, 48) and fs["sigma"].max() == 16.0
    rows = qs.SCREEN_FUNCS[screen](ds, fs, (0,))
    assert "base" in rows and all(len(v) == 1 for v in rows.values())
    assert rows["base"][0] > 0.9  # the disk is easy
    text = qs.table(screen, {"disk": rows})
    assert text.startswith(f"### {screen}") and "**mean**" in text


def test_boundary_variants_change_only_the_band(qs):
    """Left half class 0, right half class 1 for the first forest; the fine one says class 1 from
    column 9 on (one column earlier) and has a 1 px speck of class 1 at (3, 3)."""
    P1 = np.zeros((1, 12, 20, 2), np.float32)
    P1[..., :10, 0], P1[..., 10:, 1] = 0.8, 0.8
    P1[..., :10, 1], P1[..., 10:, 0] = 0.2, 0.2
    P1[0, 3, 3] = (0.4, 0.6)  # a speck of the first labels: in the plain band, not after a majority filter
    P2 = P1.copy()
    P2[..., 9, :] = (0.1, 0.9)
    v = qs.boundary_variants(P1, P2)
    far = np.zeros((12, 20), bool)
    far[:, 13:] = far[:, :1] = True
    for name, P in v.items():
        np.testing.assert_array_equal(P[0][far], P1[0][far], err_msg=name)
    assert (v["replace"][0, :, 9].argmax(-1) == 1).all() and (v["base"][0, :, 9].argmax(-1) == 0).all()
    assert (v["majority5"][0, :, 9].argmax(-1) == 1).all()
    np.testing.assert_allclose(v["average"][0, 0, 9], (0.45, 0.55))
    np.testing.assert_allclose(v["product"][0, 0, 9], np.array([0.08, 0.18]) / 0.26, rtol=1e-6)


def test_boundary_screen_reports_agreement_without_a_ground_truth(qs):
    ds = _disk_set()
    ds.pop("gt")
    fs = qs.set_features({**ds, "stack": False})
    rows = qs.screen_boundary(ds, fs, (0,))
    assert np.isnan(rows["replace"][0]) and 0.9 < rows["replace (scribble agreement)"][0] <= 1.0
    assert "nan" not in qs.table("boundary", {"disk": rows}).split("(scribble agreement)")[-1]


def test_large_scale_columns_read_grey_and_rgb_names(qs):
    from napari_vitseg import Segmenter

    for nc in (1, 3):
        names = Segmenter().featurizer.feature_names(nc)
        sigma = np.array([float(n.rsplit("_s", 1)[1]) if "_s" in n else 0.0 for n in names])
        small = qs.large_scale_columns(names, sigma, ())
        assert not any(n.endswith(("_s8", "_s16")) and "bilateral" not in n for n, k in zip(names, small, strict=True) if k)
        assert all(k for n, k in zip(names, small, strict=True) if "bilateral" in n or n.endswith("intensity"))
        more = qs.large_scale_columns(names, sigma, ("gaussian",))
        added = [n for n, a, b in zip(names, more, small, strict=True) if a and not b]
        assert sorted(added) == sorted(n for n in names if n.split(":")[-1] in ("gaussian_s8", "gaussian_s16"))
        assert len(added) == 2 * nc


def test_boundary_band_marks_pixels_next_to_a_class_change(qf):
    gt = np.ones((2, 6, 6), np.uint8)
    gt[0, :, 3:] = 2
    band = qf.boundary_band(gt)
    assert band[0, :, 2:4].all() and not band[0, :, [0, 1, 4, 5]].any()
    assert not band[1].any()  # planes are separate


def test_figure_rows_and_png(qf, tmp_path):
    ds = _disk_set(stack=True)
    labels = ds["gt"].copy()
    labels[0, 24, 36] = 2  # one pixel wrong, on the true boundary
    row = qf.row_of(ds, labels)
    assert row["plane"] == 0 and row["wrong"].sum() == 1 and row["band"][24, 36]
    assert 0.99 < row["miou"] < 1
    out = tmp_path / "fig.png"
    qf.draw([row, qf.row_of(_disk_set(), _disk_set()["gt"])], out)
    import imageio.v3 as iio

    img = iio.imread(out)
    assert img.shape[0] > 400 and img.shape[1] > 800


def test_large_scale_variants_drop_or_normalise_the_16px_gradient_and_structure(qs):
    names = ["gaussian_s1", "gaussian_s16", "gradient_s16", "structure_max_s16", "hessian_max_s16", "gradient_s8"]
    sigma = np.array([1, 16, 16, 16, 16, 8], float)
    F = np.stack([np.full((2, 3), v, np.float32) for v in (1, 4, 8, 32, 5, 6)], -1)
    v = qs.large_scale_variants(F, names, sigma)
    assert v["base"].shape[-1] == 6 and v["-grad,struct16"].shape[-1] == 4 and v["-16"].shape[-1] == 2
    norm = v["norm16"][0, 0]
    assert norm.shape == (6,) and list(norm[:4]) == [1, 4, 5, 6]
    np.testing.assert_allclose(norm[4:], [8 / (4 + 1e-3), 32 / (16 + 1e-3)], rtol=1e-6)  # / G16, / G16**2


def test_stroke_bags_draw_whole_strokes_and_every_class(qs):
    """Two strokes of class 1 (one touching diagonally is the same stroke), one of class 2 and one
    of class 2 in the next plane: four strokes; every bag holds whole strokes and both classes."""
    scr = np.zeros((2, 12, 12), np.uint8)
    scr[0, 1, 1:4] = 1
    scr[0, 2, 4] = 1  # 8-connected to the first
    scr[0, 8, 1:6] = 1
    scr[0, 5, 8:11] = 2
    scr[1, 5, 8:11] = 2
    ids = qs.stroke_ids(scr)
    assert ids.max() == 4 and (ids[scr == 0] == 0).all() and (ids[scr > 0] > 0).all()
    assert len(np.unique(ids[0, 1:3])) == 2  # 0 and the one stroke
    m = scr > 0
    y, strokes = scr[m], ids[m]
    bags = qs.stroke_bags(y, strokes, 50, np.random.default_rng(0))
    seen = set()
    for keep in bags:
        assert set(np.unique(y[keep])) == {1, 2}
        for k in np.unique(strokes):  # a stroke is in a bag whole or not at all
            assert keep[strokes == k].all() or not keep[strokes == k].any()
        seen.add(frozenset(np.unique(strokes[keep]).tolist()))
    assert len(seen) > 1  # the bags differ
