"""Make the classifier files of ``tests/data`` with a released napari-vitseg (kept for the record).

The files ``v0.1.0_rf.vitseg``, ``v0.1.0_xgb.vitseg`` and ``v0.1.0_vit_random.vitseg`` and their
expected predictions ``v0.1.0_expected.npz`` were written by this script at commit c797e53
(napari-vitseg 0.1.0, classifier format 1). ``tests/test_release_files.py`` checks that the
current code loads them and predicts exactly the same labels and probabilities.

Run from the repository root: ``python tests/data/make_release_files.py``.
"""

from pathlib import Path

import numpy as np
import tifffile

from napari_vitseg.cli import random_backbone
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter

HERE = Path(__file__).parent
SAMPLE = HERE.parent.parent / "sample_data" / "tem_nanoparticles"


def main() -> None:
    image = tifffile.imread(SAMPLE / "image.tif")[:160, :160]
    scribbles = tifffile.imread(SAMPLE / "scribbles.tif")[:160, :160]
    expected = {"image": image, "scribbles": scribbles}
    models = {
        "rf": Segmenter(FeatureConfig(sigmas=(1, 2, 4)), "rf", {"n_estimators": 8},
                        class_names=["particle", "background"]),
        "xgb": Segmenter(FeatureConfig(sigmas=(1, 2, 4)), "xgb", {"n_estimators": 8},
                         class_names=["particle", "background"], class_colors=["#ff0000", "#00ff00"]),
        "vit_random": Segmenter(FeatureConfig(backbone="dinov2_vits14_reg", sigmas=(1, 2), vit_pca=8),
                                "rf", {"n_estimators": 8},
                                backbone=random_backbone("dinov2_vits14_reg")),
    }
    for name, seg in models.items():
        seg.fit(image, scribbles)
        seg.save(HERE / f"v0.1.0_{name}.vitseg")
        res = seg.segment(image)
        expected[f"{name}_labels"] = res.labels
        expected[f"{name}_probabilities"] = res.probabilities
    np.savez_compressed(HERE / "v0.1.0_expected.npz", **expected)


if __name__ == "__main__":
    main()
