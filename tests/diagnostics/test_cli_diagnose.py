"""``vitseg diagnose``: the report, random-weights labelling, missing weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_vitseg.cli import main

SHARED = Path(os.environ.get("VITSEG_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.fixture
def small_tif(tmp_path) -> Path:
    src = SHARED / "sem_phases" / "2_phase.tif"
    img = tifffile.imread(src)[:154, :140] if src.exists() else (
        np.random.default_rng(0).integers(0, 255, (154, 140)).astype(np.uint8))
    p = tmp_path / "in" / "2_phase_crop.tif"
    p.parent.mkdir()
    tifffile.imwrite(p, img)
    return p


FAST = ["--repeats", "1", "--no-defect-directions", "--quiet"]


def test_diagnose_random_weights_report(small_tif, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["diagnose", str(small_tif), "--backbone", "dinov2_vits14_reg", "--backbone",
               "alibi_dv2_vits14_reg", "--random-weights", "-o", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    for f in ("index.html", "report.json", "r2_bars.png", "fingerprint.png", "r2_by_layer.png", "pca.png", "norm_maps.png",
              "norms_dinov2_vits14_reg.png", "norms_alibi_dv2_vits14_reg.png",
              "maps_dinov2_vits14_reg_2_phase_crop.png", "maps_alibi_dv2_vits14_reg_2_phase_crop.png"):
        assert f in names, f
    assert not [n for n in names if ".tmp" in n]
    for png in out.glob("*.png"):
        import matplotlib.image as mpimg

        a = mpimg.imread(png)
        assert a.ndim == 3 and a.shape[0] > 200 and a.shape[1] > 300 and a[..., :3].std() > 0.05, png.name
    rep = json.loads((out / "report.json").read_text())
    assert rep["warning"] == "RANDOM WEIGHTS — not a pretrained model"
    assert [b["backbone"] for b in rep["backbones"]] == ["dinov2_vits14_reg", "alibi_dv2_vits14_reg"]
    b0 = rep["backbones"][0]
    assert b0["pretrained"] is False and b0["position"] == "learned"
    assert set(b0["probe"]["r2_final"]) == {"lr", "ud", "diag", "radial", "random", "lr+ud"}
    assert len(b0["probe"]["fingerprint_lr+ud"]["values"]) == 384
    assert len(b0["probe"]["fingerprint_lr+ud"]["values"][0]) == 13
    assert len(b0["norms"]["share_flagged_mean"]) == 12
    page = (out / "index.html").read_text()
    assert "RANDOM WEIGHTS — not a pretrained model" in page and "r2_bars.png" in page
    assert "--random-weights" in rep["command"]


def test_diagnose_missing_weights(small_tif, tmp_path, capsys):
    rc = main(["diagnose", str(small_tif), "--backbone", "dinov2_vits14_reg", "-o", str(tmp_path / "r"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("vitseg: error:") and "dinov2_vits14_reg4_pretrain.pth" in err[0]
    assert not (tmp_path / "r").exists()


def test_diagnose_reports_available_and_lists_missing(small_tif, tmp_path, capsys):
    from napari_vitseg.backbones import create_backbone

    wdir = Path(os.environ["VITSEG_WEIGHTS_DIR"])
    wdir.mkdir(parents=True, exist_ok=True)
    fake = create_backbone("dinov2_vits14", pretrained=False, init_values=1.0, seed=0)
    torch.save(fake.model.state_dict(), wdir / "dinov2_vits14_pretrain.pth")  # stands in for real weights
    out = tmp_path / "r"
    rc = main(["diagnose", str(small_tif), "--backbone", "dinov2_vits14", "--backbone", "dinov2_vits14_reg",
               "-o", str(out), "--layers", "final", *FAST])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert [b["backbone"] for b in rep["backbones"]] == ["dinov2_vits14"]
    assert rep["backbones"][0]["pretrained"] is True and "warning" not in rep
    assert "dinov2_vits14_reg4_pretrain.pth" in rep["missing_backbones"]["dinov2_vits14_reg"]
    page = (out / "index.html").read_text()
    assert "Not run" in page and "dinov2_vits14_reg" in page and "RANDOM WEIGHTS" not in page
    assert "r2_by_layer.png" not in {p.name for p in out.iterdir()}  # --layers final


@pytest.mark.parametrize("argv, msg", [
    (["--backbone", "no_such_model", "--random-weights"], "Unknown backbone"),
    (["--backbone", "dinov2_vits14", "--random-weights", "--repeats", "0"], "--repeats"),
    (["--random-weights"], "--random-weights needs"),
])
def test_diagnose_bad_input(small_tif, tmp_path, capsys, argv, msg):
    rc = main(["diagnose", str(small_tif), "-o", str(tmp_path / "r"), *argv, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and msg in err[0], err


def test_diagnose_missing_image(tmp_path, capsys):
    rc = main(["diagnose", str(tmp_path / "nope.tif"), "--backbone", "dinov2_vits14", "--random-weights",
               "-o", str(tmp_path / "r")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
