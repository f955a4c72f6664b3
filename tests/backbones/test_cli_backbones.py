"""``vitseg weights list|import|download`` and ``vitseg repair``, called through the ``vitseg``
entry point (:func:`napari_vitseg.cli.main`)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from _bb_helpers import timm_state_dict
from safetensors.torch import save_file

from napari_vitseg.backbones.sinder import is_repair_file, load_repair
from napari_vitseg.cli import main
from napari_vitseg.cli._weights import read_repair_images


def _run(argv) -> int:
    return main(argv)


def test_weights_list(capsys, weights_folder):
    (weights_folder / "dinov2_vitb14_pretrain.pth").write_bytes(b"\0" * 2048)
    assert _run(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert str(weights_folder) in out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[2:]}
    assert "found" in lines["dinov2_vitb14"] and "2.0 KB" in lines["dinov2_vitb14"]
    assert "missing" in lines["alibi_dv2_vits14_reg"] and "huggingface.co/rmdocherty/dino-saw" in lines["alibi_dv2_vits14_reg"]
    assert "vitseg repair --backbone dinov2_vits14" in lines["sinder_dinov2_vits14"]


def test_weights_import_ok_and_refused(vits, tmp_path, weights_folder, capsys):
    good = tmp_path / "ck.pth"
    torch.save(timm_state_dict(vits), good)
    assert _run(["weights", "import", str(good), "--as", "dinov2_vits14"]) == 0
    out = capsys.readouterr().out
    assert "sha256 " in out and (weights_folder / "dinov2_vits14_pretrain.pth").exists()
    assert _run(["weights", "import", str(good), "--as", "dinov2_vits14_reg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitseg: error: ") and "register" in err and err.count("\n") == 1


def test_weights_download_offline(capsys):
    assert _run(["weights", "download", "dinov2_vits14_reg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitseg: error: ") and "offline" in err
    assert _run(["weights", "download", "no_such_backbone"]) == 2
    assert "Unknown backbone" in capsys.readouterr().err


def test_read_repair_images(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((60, 70), np.uint8))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 50, 50), np.uint16), photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((50, 60, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    imgs, names = read_repair_images(tmp_path)
    assert names == ["a.tif", "rgb.tif", "stack.tif[0]", "stack.tif[1]", "stack.tif[2]"]
    assert [i.shape for i in imgs][:2] == [(60, 70), (50, 60, 3)]
    assert len(read_repair_images(tmp_path, max_images=2)[0]) == 2


def test_repair_command(vits_reg, tmp_path, weights_folder, capsys):
    save_file(timm_state_dict(vits_reg), str(weights_folder / "dinov2_vits14_reg.safetensors"))
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        tifffile.imwrite(img_dir / f"{k}.tif", rng.integers(0, 255, (80, 90), dtype=np.uint8))
    out = tmp_path / "repair.safetensors"
    argv = ["repair", "--backbone", "dinov2_vits14_reg", "--images", str(img_dir), "-o", str(out),
            "--max-steps", "2", "--size", "56", "--fit-samples", "1000", "--quiet"]
    rc = _run(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert is_repair_file(out)
    eps, meta = load_repair(out)
    assert meta["base"] == "dinov2_vits14_reg" and meta["images"] == ["0.tif", "1.tif"]
    assert meta["image_shapes"] == [[56, 56], [56, 56]] and meta["steps"] == 2
    assert f"wrote {out}" in captured.out and "vitseg weights import" in captured.out
    # existing output needs --force; bad inputs give one-line errors
    assert _run(argv) == 2 and "--force" in capsys.readouterr().err
    assert _run(["repair", "--backbone", "dinov2_vits14", "--images", str(img_dir), "-o",
                 str(tmp_path / "r2.safetensors"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitseg: error: The weights file 'dinov2_vits14_pretrain.pth'") and err.count("\n") == 1
    assert _run(["repair", "--backbone", "dinov2_vits14_reg", "--images", str(tmp_path / "none"),
                 "-o", str(tmp_path / "r3.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _run(["repair", "--backbone", "dinov2_vits14_reg", "--images", str(img_dir),
                 "-o", str(tmp_path / "r.pth")]) == 2
    assert ".safetensors" in capsys.readouterr().err


def test_repair_default_output_goes_to_weights_folder(vits_reg, vits_reg_dirs, tmp_path, weights_folder,
                                                       capsys, monkeypatch):
    import napari_vitseg.backbones.sinder as sinder

    monkeypatch.setattr(sinder, "defect_directions", lambda *a, **k: vits_reg_dirs)  # tested elsewhere
    save_file(timm_state_dict(vits_reg), str(weights_folder / "dinov2_vits14_reg.safetensors"))
    tifffile.imwrite(tmp_path / "x.tif", np.random.default_rng(1).integers(0, 255, (42, 42), dtype=np.uint8))
    assert _run(["repair", "--backbone", "dinov2_vits14_reg", "--images", str(tmp_path / "x.tif"),
                 "--max-steps", "1", "--fit-samples", "1000", "--quiet"]) == 0
    assert is_repair_file(weights_folder / "sinder_dinov2_vits14_reg.safetensors")
    assert "--backbone sinder_dinov2_vits14_reg" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["weights"], ["repair", "--images", "x"]])
def test_missing_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as ei:
        _run(argv)
    assert ei.value.code == 2


def test_train_intensity_and_tiling_options(tmp_path, capsys):
    """`vitseg train --intensity / --vit-tiling / --vit-budget-mib` reach the stored feature config."""
    import json

    rng = np.random.default_rng(0)
    img = rng.integers(40, 181, (42, 56)).astype(np.uint8)
    scrib = np.zeros(img.shape, np.uint8)
    scrib[2:10, 2:20], scrib[30:40, 30:50] = 1, 2
    tifffile.imwrite(tmp_path / "im.tif", img)
    tifffile.imwrite(tmp_path / "sc.tif", scrib)
    common = ["train", str(tmp_path / "im.tif"), "--scribbles", str(tmp_path / "sc.tif"), "--quiet",
              "--backbone", "dinov2_vits14_reg", "--random-weights", "--no-classical", "--vit-pca", "0",
              "--upsample", "bilinear", "--n-estimators", "5"]
    for name, extra, want in [
        ("d", [], ("reference", "auto", 2048)),
        ("p", ["--intensity", "percentile", "--vit-tiling", "always", "--vit-budget-mib", "512"],
         ("percentile", "always", 512)),
    ]:
        assert _run([*common, *extra, "-o", str(tmp_path / f"{name}.vitseg")]) == 0
        capsys.readouterr()
        assert _run(["info", str(tmp_path / f"{name}.vitseg")]) == 0
        fc = json.loads(capsys.readouterr().out)["feature_config"]
        assert (fc["intensity"], fc["vit_tiling"], fc["vit_budget_mib"]) == want
    with pytest.raises(SystemExit):
        _run([*common, "--intensity", "minmax", "-o", str(tmp_path / "x.vitseg")])


def test_repair_reference_preset(vits_reg, vits_reg_dirs, tmp_path, weights_folder, capsys, monkeypatch):
    """`--preset reference` sets SINDER's schedule (resize + crop, window 1000 pre-filled, 10 blocks,
    100,000 fit samples); explicit options override it."""
    import napari_vitseg.backbones.sinder as sinder

    seen = []
    monkeypatch.setattr(sinder, "defect_directions",
                        lambda *a, **k: seen.append(k["n_samples"]) or vits_reg_dirs)  # tested elsewhere
    save_file(timm_state_dict(vits_reg), str(weights_folder / "dinov2_vits14_reg.safetensors"))
    tifffile.imwrite(tmp_path / "x.tif", np.random.default_rng(1).integers(0, 255, (60, 90), dtype=np.uint8))
    out = tmp_path / "r.safetensors"
    assert _run(["repair", "--backbone", "dinov2_vits14_reg", "--images", str(tmp_path / "x.tif"), "-o", str(out),
                 "--preset", "reference", "--max-steps", "1", "--size", "56"]) == 0
    assert "(reference preset)" in capsys.readouterr().err and seen == [100_000]
    _eps, meta = load_repair(out)
    st = meta["settings"]
    assert meta["image_shapes"] == [[56, 56]]  # 60 x 90 resized to 56 x 84, centre-cropped
    assert (st["preset"], st["layer_window"], st["stop_window"], st["prefill_stop_window"], st["n_samples"],
            st["max_steps"]) == ("reference", 10, 1000, True, 100_000, 1)
    assert _run(["repair", "--backbone", "dinov2_vits14_reg", "--images", str(tmp_path / "x.tif"), "-o",
                 str(tmp_path / "f.safetensors"), "--max-steps", "1", "--fit-samples", "500", "--quiet"]) == 0
    st = load_repair(tmp_path / "f.safetensors")[1]["settings"]
    assert (st["preset"], st["layer_window"], st["stop_window"], st["prefill_stop_window"], st["n_samples"]) == \
        ("fast", 3, 4, False, 500)
