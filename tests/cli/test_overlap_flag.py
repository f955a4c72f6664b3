"""``vitseg apply --overlap / --no-overlap``: same labels, and the flag reaches the pipeline."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_vitseg.cli import main
from napari_vitseg.pipeline import batch


def test_overlap_flag_gives_identical_labels_and_is_passed_on(tmp_path, shared_data, monkeypatch):
    d = shared_data("tem_nanoparticles")
    img, scr = tifffile.imread(d / "image.tif"), tifffile.imread(d / "scribbles.tif")
    tifffile.imwrite(tmp_path / "img.tif", img)
    tifffile.imwrite(tmp_path / "scr.tif", scr)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([img[:256, :256], img[256:512, 200:456]]))
    model = tmp_path / "m.vitseg"
    assert main(["train", str(tmp_path / "img.tif"), "--scribbles", str(tmp_path / "scr.tif"), "-o", str(model),
                 "--n-estimators", "8", "--quiet"]) == 0
    seen = []
    real = batch.iter_plane_probabilities

    def spy(seg, planes, *, overlap=None, where=None):
        seen.append(overlap)
        return real(seg, planes, overlap=overlap, where=where)

    monkeypatch.setattr(batch, "iter_plane_probabilities", spy)
    monkeypatch.delenv(batch.OVERLAP_ENV, raising=False)
    labels = {}
    for flag in ("--overlap", "--no-overlap"):
        out = tmp_path / f"lab{flag}.tif"
        assert main(["apply", str(model), str(tmp_path / "stack.tif"), "-o", str(out), "--quiet", flag]) == 0
        labels[flag] = tifffile.imread(out)
    assert seen and set(seen) == {True, False}
    assert labels["--overlap"].shape == (2, 256, 256)
    np.testing.assert_array_equal(labels["--overlap"], labels["--no-overlap"])
