"""Make the classifier files of ``tests/data`` with a released napari-vitseg (kept for the record).

The files ``v0.1.0_rf.vitseg``, ``v0.1.0_xgb.vitseg`` and ``v0.1.0_vit_random.vitseg`` and their
expected predictions ``v0.1.0_expected.npz`` were written by this script at commit c797e53
(napari-vitseg 0.1.0, classifier format 1). ``tests/test_release_files.py`` checks that the
current code loads them and predicts exactly the same labels and probabilities.

``v4_rf.vitseg`` and ``v4_expected.npz`` (the default features of feature config version 4, the
last before the scale-space pyramid: sigmas 0.5-16 at full resolution, bilateral from 8 px on the
reduced plane) were written by ``python tests/data/make_release_files.py v4`` with the code of
commit 941ab21; ``tests/pipeline/test_persist.py`` checks that they predict exactly as then.

Run from the repository root: ``python tests/data/make_release_files.py [v4]``.
"""

import sys
from pathlib import Path

import numpy as np
import tifffile

from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter

HERE = Path(__file__).parent
SAMPLE = HERE.parent.parent / "sample_data" / "tem_nanoparticles"


def main() -> None:
    from napari_vitseg.cli import (
        random_backbone,  # as of 0.1.0 (since moved: backbones.create_backbone)
    )

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


def v4() -> None:
    """A random forest on the default features of feature config version 4 (exact prediction)."""
    image = tifffile.imread(SAMPLE / "image.tif")[:192, :160]
    scribbles = tifffile.imread(SAMPLE / "scribbles.tif")[:192, :160]
    seg = Segmenter(FeatureConfig(), "rf", {"n_estimators": 8}, class_names=["particle", "background"])
    assert seg.feature_config.to_dict()["version"] == 4
    seg.fit(image, scribbles)
    seg.save(HERE / "v4_rf.vitseg")
    seg = Segmenter.load(HERE / "v4_rf.vitseg", prediction="exact")
    res = seg.segment(image)
    np.savez_compressed(HERE / "v4_expected.npz", image=image, labels=res.labels, probabilities=res.probabilities,
                        features=seg.featurizer.compute(image)[::8, ::8])  # every 8th pixel: a small file


if __name__ == "__main__":
    v4() if sys.argv[1:] == ["v4"] else main()
