"""Coarse-to-fine prediction (napari_vitseg.pipeline._coarse): >= 99.5 % label agreement with
the exact per-pixel prediction on every shared set with ground truth (FIB-SEM membranes two
pixels wide included), exact probabilities wherever it classified, fewer pixels classified than
the single-level scheme 1; the multi-level scheme against a plain reference implementation of
its definition; thin curved lines surviving; the Segmenter's default (coarse-to-fine) against
its ``exact`` setting, row bands equal to whole planes (every level, odd sizes, stride-4
edges), the CLI's ``--exact``, ``$VITSEG_PREDICTION``, and the setting never stored.

Real data: ../shared/data/{tem_nanoparticles, flyem_medulla_fibsem, bbbc039_u2os_nuclei,
sandstone_xrm, dsb2018_histology}."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_vitseg._validation import VitsegError
from napari_vitseg.cli import main
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter
from napari_vitseg.pipeline._boundary import boundary_band
from napari_vitseg.pipeline._coarse import (
    DEFAULT_LEVELS,
    SCHEME_VERSION,
    coarse_rows_needed,
    coarse_to_fine_proba,
    coarse_to_fine_rows,
)
from napari_vitseg.pipeline._distributed import classifier_payload

RELEASE = Path(__file__).resolve().parents[1] / "data"
NANO = Path(__file__).resolve().parents[2] / "sample_data" / "tem_nanoparticles"

SETS = {"tem_nanoparticles": None, "flyem_medulla_fibsem": None, "bbbc039_u2os_nuclei": None,
        "sandstone_xrm": None, "dsb2018_histology": -1}
SCHEME_1 = {"levels": 1, "grow": 0, "rule": "3x3", "margin": 0.2}  # the single stride-2 level


def _iou(a, b, c):
    union = np.count_nonzero((a == c) | (b == c))
    return np.count_nonzero((a == c) & (b == c)) / union if union else 1.0


@pytest.mark.parametrize("name", list(SETS))
def test_agreement_with_exact_prediction(shared_data, name, monkeypatch):
    monkeypatch.delenv("VITSEG_PREDICTION", raising=False)
    d = shared_data(name)
    img, scr = tifffile.imread(d / "image.tif"), tifffile.imread(d / "scribbles.tif")
    cax = SETS[name]
    seg = Segmenter(classifier_params={"n_estimators": 30}).fit(img, scr, channel_axis=cax)
    clf = seg.classifier_
    planes = [img] if (img.ndim == 2 or cax is not None) else list(img[::3])
    exact, coarse, fractions = [], [], []
    for p in planes:
        f = seg.plane_features(p)
        ref = clf.predict_proba(f.reshape(-1, f.shape[-1])).reshape(*f.shape[:2], -1)
        got, frac = coarse_to_fine_proba(clf.predict_proba, f, return_fraction=True)
        assert got.shape == (len(clf.classes_), *f.shape[:2]) and got.dtype == np.float32
        step = 2 ** DEFAULT_LEVELS  # the coarsest grid is classified exactly
        np.testing.assert_array_equal(got[:, ::step, ::step], np.moveaxis(ref[::step, ::step], -1, 0))
        exact.append(ref.argmax(-1))
        coarse.append(got.argmax(0))
        fractions.append((frac, coarse_to_fine_proba(clf.predict_proba, f, return_fraction=True, **SCHEME_1)[1]))
    exact, coarse = np.stack(exact), np.stack(coarse)
    assert np.mean(exact == coarse) >= 0.995
    frac, frac_1 = np.mean(fractions, axis=0)
    assert frac < 0.5  # the point of it: most pixels are not classified
    assert frac < 0.85 * frac_1  # and clearly fewer than with the single stride-2 level
    for c in np.unique(exact):  # every class survives, thin membranes included
        assert _iou(exact, coarse, c) >= 0.99
    # through the Segmenter: its default (coarse-to-fine, in row bands) against its exact setting
    plane = planes[0][:384, :384]
    seg.featurizer.strip_bytes = 96 * plane.shape[1] * seg.featurizer.n_features(seg.n_channels_) * 4  # 4 bands
    assert seg.prediction is None and seg.prediction_mode == "coarse-to-fine"
    default = seg.predict_plane(plane, use_cache=False)
    seg.prediction = "exact"
    ref = seg.predict_plane(plane, use_cache=False)
    lab_d, lab_e = seg.labels_from_proba(default), seg.labels_from_proba(ref)
    assert np.mean(lab_d == lab_e) >= 0.995
    for c in np.unique(lab_e):
        assert _iou(lab_e, lab_d, c) >= 0.98
    seg.prediction = None
    # bands give the whole plane's coarse-to-fine prediction (the coarse grid is the plane's); banded
    # features differ from whole-plane ones by float32 rounding, which moves a vote of a few pixels
    whole = seg.predict_plane(plane, use_cache=True)
    assert np.mean(np.isclose(default, whole, atol=1e-6, rtol=0).all(0)) >= 0.9995
    assert np.mean(seg.labels_from_proba(whole) == lab_d) >= 0.9995


def _line_proba(x):
    """Three classes from two features: background 0.5, a line where feature 0 is high, a blob
    where feature 1 is."""
    s = np.stack([np.full(len(x), 0.5, np.float32), x[:, 0], x[:, 1]], axis=1)
    e = np.exp(8 * s)
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("x0", [40, 41, 42, 43])
def test_refined_pixels_are_exact_and_a_slanted_line_is_followed(x0):
    """A sharp line two pixels wide crossing settled ground at a slant (a step right every 4 rows,
    at every offset to the stride-4 grid) is found where a grid touches it and followed from
    there (surprise growing reaches ``grow`` cells): every label equals the exact one, except
    at most the line's last pixels past the stride-4 grid's last row (the plane's edge: no grid
    row beyond to touch the line again), and most pixels are not classified. The single stride-2
    level keeps all of it, exactly."""
    f = np.random.default_rng(0).normal(0, 0.01, (64, 80, 3)).astype(np.float32)
    yy, xx = np.mgrid[:64, :80]
    on_line = np.abs(xx - x0 - yy // 4) < 1  # one pixel wide
    on_line |= np.roll(on_line, 1, axis=1)  # two pixels wide
    f[on_line, 0] += 1.0
    f[20:40, 10:30, 1] += 1.0
    ref = _line_proba(f.reshape(-1, 3)).reshape(64, 80, 3)
    got, frac = coarse_to_fine_proba(_line_proba, f, return_fraction=True)
    wrong = got.argmax(0) != ref.argmax(-1)
    assert not wrong[:61].any()  # rows 61-63 lie past the stride-4 grid's last row (60)
    assert np.count_nonzero(wrong) <= 4
    assert frac < 0.3
    got, frac = coarse_to_fine_proba(_line_proba, f, return_fraction=True, **SCHEME_1)
    np.testing.assert_array_equal(got.argmax(0), ref.argmax(-1))
    assert np.all(np.isclose(np.moveaxis(got, 0, -1), ref), axis=-1)[on_line].all()  # classified exactly
    assert frac < 0.5


def test_an_axis_parallel_line_between_coarse_grid_lines():
    """The limit of a coarse grid: a sharp straight line two pixels wide, parallel to the grid
    and between two stride-4 grid columns, with confident ground on both sides, is sampled by the
    stride-2 grid (``levels=1``: always kept) but by no cell of the stride-4 grid (the default
    loses it). Real features are smooth (Gaussian scales >= 0.5 px, the image's own blur), so
    curved and slanted thin structures survive (previous test, FIB-SEM membranes, the next test)."""
    f = np.random.default_rng(0).normal(0, 0.01, (64, 80, 3)).astype(np.float32)
    f[:, 41:43, 0] += 1.0  # columns 41-42: between the stride-4 grid columns 40 and 44
    ref = _line_proba(f.reshape(-1, 3)).reshape(64, 80, 3).argmax(-1)
    for kw in (SCHEME_1, {"levels": 1}):
        np.testing.assert_array_equal(coarse_to_fine_proba(_line_proba, f, **kw).argmax(0), ref, err_msg=str(kw))
    assert not np.array_equal(coarse_to_fine_proba(_line_proba, f).argmax(0), ref)  # documented limit


@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_thin_curved_lines_survive_with_real_features(blur):
    """Circles and waves one and two pixels wide (sharp, or blurred like a microscope's point
    spread), default features, a random forest trained on scribbles: coarse-to-fine keeps the
    lines (IoU with the exact prediction's line class >= 0.99) while classifying < 40 % of the
    pixels."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    n = 160
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    line = np.zeros((n, n), bool)
    for cy, cx, r, w in ((50, 60, 30, 1), (100, 100, 22, 2), (120, 40, 12, 1), (45, 120, 9, 2)):
        line |= np.abs(np.hypot(yy - cy, xx - cx) - r) < w / 2
    for y0, a, w in ((20, 6, 1), (140, 4, 2)):
        line |= np.abs(yy - (y0 + a * np.sin(xx / 13))) < w / 2
    img = np.where(line, 0.8, 0.3).astype(np.float32)
    if blur:
        img = ndi.gaussian_filter(img, blur)
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    scr = np.zeros(img.shape, np.uint8)
    scr[line & (rng.random(line.shape) < 0.3)] = 2
    scr[~ndi.binary_dilation(line, iterations=3) & (rng.random(line.shape) < 0.05)] = 1
    seg = Segmenter(classifier_params={"n_estimators": 30}).fit(img, scr)
    f = seg.plane_features(img)
    ref = seg.classifier_.predict_proba(f.reshape(-1, f.shape[-1])).argmax(1).reshape(n, n)
    got, frac = coarse_to_fine_proba(seg.classifier_.predict_proba, f, return_fraction=True)
    lab = got.argmax(0)
    assert np.count_nonzero(ref == 1) > 0.8 * np.count_nonzero(line)  # the forest does see the lines
    assert _iou(ref, lab, 1) >= 0.99
    assert np.mean(lab == ref) >= 0.999
    assert frac < 0.4


def _reference(proba, f, *, stride=2, levels=DEFAULT_LEVELS, margin=0.3, halo=0, grow=None, rule="auto"):
    """The scheme as its docstring defines it, one point at a time (small planes only)."""
    ny, nx, _ = f.shape
    if grow is None:  # 2 rounds after every step but the last
        grow = (2,) * (levels - 1) + (0,)
    elif isinstance(grow, int):
        grow = (grow,) * levels

    def grid(step):
        return -(-ny // step), -(-nx // step)

    def unsure(v):
        top = np.sort(v)[-2:]
        return len(v) > 1 and top[1] - top[0] < margin

    step = stride ** levels
    cy, cx = grid(step)
    val = {(i, j): proba(f[i * step, j * step][None])[0].astype(np.float32) for i in range(cy) for j in range(cx)}
    exact = dict.fromkeys(val, True)
    for lev in range(levels - 1, -1, -1):
        up, up_val, up_exact, (uy, ux) = step, val, exact, grid(step)
        step = stride ** lev
        cy, cx = grid(step)
        lab = {k: int(np.argmax(v)) for k, v in up_val.items()}

        def cells(i0, i1, j0, j1, uy=uy, ux=ux):  # coarser cells in a box, clipped
            return [(i, j) for i in range(max(0, i0), min(uy - 1, i1) + 1) for j in range(max(0, j0), min(ux - 1, j1) + 1)]

        def unsettled(c, cells=cells, lab=lab, up_val=up_val):  # 3x3 rule, one coarser cell
            return any(len({lab[d] for d in cells(e[0] - 1, e[0] + 1, e[1] - 1, e[1] + 1)}) > 1 or unsure(up_val[e])
                       for e in cells(c[0] - halo, c[0] + halo, c[1] - halo, c[1] + halo))

        val, exact, todo = {}, {}, []
        for i in range(cy):
            for j in range(cx):
                y, x = i * step, j * step
                par = (min((y + up // 2) // up, uy - 1), min((x + up // 2) // up, ux - 1))
                val[i, j] = up_val[par].copy()
                exact[i, j] = up_exact[par] and y % up == 0 and x % up == 0
                if lev == 0 and rule == "auto":  # enclosing cells, halo wider
                    q0, c0 = y // up, x // up
                    box = cells(q0 - halo, q0 + (y % up > 0) + halo, c0 - halo, c0 + (x % up > 0) + halo)
                    refine = len({lab[d] for d in box}) > 1 or any(unsure(up_val[d]) for d in box)
                else:
                    refine = unsettled(par)
                if refine and not exact[i, j]:
                    todo.append((i, j))
        rounds = grow[levels - 1 - lev]
        for round_ in range(rounds + 1):
            surprises = []
            for i, j in todo:
                before = int(np.argmax(val[i, j]))
                val[i, j] = proba(f[i * step, j * step][None])[0].astype(np.float32)
                exact[i, j] = True
                if int(np.argmax(val[i, j])) != before:
                    surprises.append((i, j))
            if round_ == rounds:
                break
            todo = sorted({(a, b) for i, j in surprises for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
                           if 0 <= a < cy and 0 <= b < cx and not exact[a, b]})
    out = np.stack([np.stack([val[i, j] for j in range(nx)]) for i in range(ny)])
    return np.moveaxis(out, -1, 0), np.mean([exact[i, j] for i in range(ny) for j in range(nx)])


@pytest.mark.parametrize("kw", [{}, SCHEME_1, {"levels": 3}, {"halo": 1}, {"grow": 0}, {"grow": 2}, {"rule": "3x3"},
                                {"grow": [0, 3]}, {"stride": 3, "levels": 2, "margin": 0.1},
                                {"levels": 1, "halo": 1, "grow": 1}])
def test_matches_a_plain_reference_implementation(kw):
    """Every level, rule, halo and growing round as defined, point by point (odd plane sizes,
    grids that end short of the plane's edges)."""
    rng = np.random.default_rng(3)
    f = rng.normal(0, 0.3, (29, 23, 3)).astype(np.float32)
    f[:, 11:13, 0] += 1
    f[17:19, :, 1] += 1
    want, want_frac = _reference(_line_proba, f, **kw)
    got, frac = coarse_to_fine_proba(_line_proba, f, return_fraction=True, **kw)
    np.testing.assert_array_equal(got, want)
    assert frac == pytest.approx(want_frac)


def test_scheme_constants():
    assert DEFAULT_LEVELS == 2 and SCHEME_VERSION == 2  # bump SCHEME_VERSION when the defaults' labels change


def test_bad_input():
    f = np.zeros((8, 8, 2), np.float32)
    for kw, match in (({"stride": 1}, "stride"), ({"margin": 2}, "margin"), ({"margin": "x"}, "margin"),
                      ({"halo": -1}, "halo"), ({"levels": 0}, "levels"), ({"levels": 1.5}, "levels"),
                      ({"grow": -1}, "grow"), ({"grow": (1, 2, 3)}, "grow"), ({"grow": "2"}, "grow"),
                      ({"rule": "nearest"}, "rule")):
        with pytest.raises(VitsegError, match=match):
            coarse_to_fine_proba(lambda x: x, f, **kw)
    with pytest.raises(VitsegError, match="features"):
        coarse_to_fine_proba(lambda x: x, f[..., 0])
    with pytest.raises(VitsegError, match="levels"):
        coarse_rows_needed((0, 4), 8, levels=0)
    with pytest.raises(VitsegError, match="rows"):
        coarse_to_fine_rows(lambda x: x, f, offset=0, n_rows=8, rows=(4, 4))


@pytest.mark.parametrize("kw", [{}, SCHEME_1, {"levels": 3}, {"halo": 1}, {"levels": 1, "halo": 1},
                                {"stride": 3}, {"grow": 4, "rule": "3x3"}, {"grow": (1, 3), "halo": 1}])
def test_rows_of_a_band_equal_the_whole_plane(kw):
    """coarse_to_fine_rows on a band widened by coarse_rows_needed gives exactly the whole
    plane's rows, for any band (every offset, one row, the plane's edges), odd sizes and
    planes whose stride-4 and stride-8 grids end short of the last row."""
    rng = np.random.default_rng(1)

    def proba(x):
        s = np.stack([np.full(len(x), 0.5, np.float32), x[:, 0], x[:, 1]], axis=1)
        e = np.exp(4 * s)
        return e / e.sum(1, keepdims=True)

    for ny, nx in ((37, 41), (64, 50), (30, 17)):
        f = rng.normal(0, 0.3, (ny, nx, 3)).astype(np.float32)
        f[:, 20 % nx:22 % nx, 0] += 1
        f[ny // 2:ny // 2 + 2, :, 1] += 1
        whole = coarse_to_fine_proba(proba, f, **kw)
        opts = {k: v for k, v in kw.items() if k in ("stride", "halo", "levels", "grow")}
        for a in range(ny):
            for b in {a + 1, a + 2, a + 5, a + 11, ny}:
                if b <= ny:
                    f0, f1 = coarse_rows_needed((a, b), ny, **opts)
                    got = coarse_to_fine_rows(proba, f[f0:f1], offset=f0, n_rows=ny, rows=(a, b), **kw)
                    np.testing.assert_array_equal(got, whole[:, a:b], err_msg=f"{ny} {a} {b}")
    f0, f1 = coarse_rows_needed((10, 20), ny, **opts)
    with pytest.raises(VitsegError, match="do not cover"):
        coarse_to_fine_rows(proba, f[f0 + 1:f1], offset=f0 + 1, n_rows=ny, rows=(10, 20), **kw)


@pytest.fixture(scope="module")
def nano():
    img = tifffile.imread(NANO / "image.tif")[:200, :160]
    scr = tifffile.imread(NANO / "scribbles.tif")[:200, :160]
    return img, scr


@pytest.mark.parametrize("stages", [1, 2])
def test_exact_setting_is_todays_path_and_rows_equal_the_plane(nano, stages):
    """``prediction='exact'`` is the per-pixel path bit for bit; under each setting
    predict_rows (the live overlay) equals the rows of predict_plane, auto-context included."""
    img, scr = nano
    seg = Segmenter(FeatureConfig(sigmas=(1, 4)), "rf", {"n_estimators": 10}, autocontext_stages=stages,
                    prediction="exact").fit(img, scr)
    exact = seg.predict_plane(img, use_cache=False)
    if stages == 1:
        f = seg.featurizer.compute(img)
        ref = seg.classifier_.predict_proba(f.reshape(-1, f.shape[-1])).T.reshape(exact.shape).astype(np.float32)
        # boundary refinement: the fine-scale classifier's probabilities near the label boundaries
        near = boundary_band(np.argmax(ref, 0), seg.boundary_refinement, seg.boundary_majority_)
        ref[:, near] = seg.boundary_classifier_.predict_proba(f[near][:, seg.boundary_columns_]).T
        np.testing.assert_array_equal(exact, ref)
    for mode in ("exact", "coarse-to-fine"):
        seg.prediction = mode
        whole = seg.predict_plane(img, use_cache=False)
        for rows in ((0, 30), (61, 98), (170, 200)):
            # a band's features equal the plane's up to float32 rounding (OpenCV's SIMD paths
            # differ by ~1e-4 on a band): a pixel whose feature sits on a split threshold may
            # take the other leaf of one tree, so allow a few such pixels, nothing more
            part = seg.predict_rows(img, rows, use_cache=False)
            off = np.abs(part - whole[:, rows[0]:rows[1]]).max(axis=0) > 1e-5
            assert off.mean() <= 0.002, (mode, rows, int(off.sum()))
            assert np.abs(part - whole[:, rows[0]:rows[1]]).max() <= 2 / 10 + 1e-6  # <= one tree of 10 changed
    coarse = whole
    assert np.mean(seg.labels_from_proba(coarse) == seg.labels_from_proba(exact)) >= 0.995
    assert not np.array_equal(coarse, exact)  # it did approximate somewhere


def test_release_files_predict_identically_with_exact(monkeypatch):
    """Files of napari-vitseg 0.1.0 give that release's labels and probabilities bit for bit
    with the exact setting (keyword or environment) and by default (format-1 files stay exact),
    and >= 99.5 % of its labels when coarse-to-fine is asked for."""
    expected = np.load(RELEASE / "v0.1.0_expected.npz")
    seg = Segmenter.load(RELEASE / "v0.1.0_rf.vitseg", prediction="exact")
    assert seg.prediction == "exact"
    result = seg.segment(expected["image"])
    np.testing.assert_array_equal(result.labels, expected["rf_labels"])
    np.testing.assert_array_equal(result.probabilities, expected["rf_probabilities"])
    seg.prediction = None
    monkeypatch.setenv("VITSEG_PREDICTION", "exact")
    np.testing.assert_array_equal(seg.predict(expected["image"]), expected["rf_labels"])
    monkeypatch.delenv("VITSEG_PREDICTION")
    assert seg.prediction_mode == "exact"
    np.testing.assert_array_equal(seg.predict(expected["image"]), expected["rf_labels"])
    seg.prediction = "coarse-to-fine"
    assert np.mean(seg.predict(expected["image"]) == expected["rf_labels"]) >= 0.995
    fresh = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3})
    assert fresh.prediction_mode == "coarse-to-fine"  # new models default to coarse-to-fine


def test_setting_validation_and_not_stored(nano, tmp_path, monkeypatch):
    img, scr = nano
    with pytest.raises(VitsegError, match="prediction"):
        Segmenter(prediction="fast")
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3}, prediction="exact").fit(img, scr)
    assert classifier_payload(seg)[2]["prediction"] == "exact"  # dask workers load it with the setting
    seg.save(tmp_path / "e.vitseg")
    seg.prediction = None
    seg.save(tmp_path / "d.vitseg")
    with zipfile.ZipFile(tmp_path / "e.vitseg") as zf:
        meta = zf.read("metadata.json").decode()
    assert "prediction" not in meta and "coarse" not in meta
    with zipfile.ZipFile(tmp_path / "d.vitseg") as zf:
        assert json.loads(zf.read("metadata.json")).keys() == json.loads(meta).keys()
    assert Segmenter.load(tmp_path / "e.vitseg").prediction is None
    monkeypatch.setenv("VITSEG_PREDICTION", "exact")
    assert Segmenter.load(tmp_path / "e.vitseg").prediction_mode == "exact"
    monkeypatch.setenv("VITSEG_PREDICTION", "sometimes")
    with pytest.raises(VitsegError, match="VITSEG_PREDICTION"):
        seg.predict(img)


def test_cli_apply_exact_and_default(nano, tmp_path, monkeypatch):
    """`vitseg apply --exact` gives the exact labels; the default run gives >= 99.5 % of them."""
    monkeypatch.delenv("VITSEG_PREDICTION", raising=False)
    img, scr = nano
    tifffile.imwrite(tmp_path / "in.tif", img)
    seg = Segmenter(FeatureConfig(sigmas=(1, 4)), "rf", {"n_estimators": 10}).fit(img, scr)
    seg.save(tmp_path / "m.vitseg")
    assert main(["apply", str(tmp_path / "m.vitseg"), str(tmp_path / "in.tif"), "-o", str(tmp_path / "e.tif"),
                 "--exact", "--quiet"]) == 0
    assert main(["apply", str(tmp_path / "m.vitseg"), str(tmp_path / "in.tif"), "-o", str(tmp_path / "d.tif"),
                 "--quiet"]) == 0
    seg.prediction = "exact"
    exact = seg.predict(img)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "e.tif"), exact)
    default = tifffile.imread(tmp_path / "d.tif")
    assert np.mean(default == exact) >= 0.995
    seg.prediction = "coarse-to-fine"
    np.testing.assert_array_equal(default, seg.predict(img))
