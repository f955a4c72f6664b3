"""Headless end-to-end run on the bundled real samples (the README's main job).

Trains on the scribbles of ``sample_data/tem_nanoparticles`` and scores the segmentation
against its ground truth (mIoU); trains on the scribbles of the 6-plane
``sample_data/tem_cells_stack`` and streams the whole stack through ``iter_apply_file``;
writes label TIFFs, the classifier files, a PNG figure and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..features import FeatureConfig
from ..io import read_image, sample_data_dir
from ..metrics import mean_iou
from ..pipeline import DEFAULT_COLORS, Segmenter
from ._common import run_job

__all__ = ["run_demo"]


def _overlay_figure(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray | None]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["none", *DEFAULT_COLORS[:9]])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), dpi=110)
    for ax, (title, img, lab) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(img, cmap="gray")
        if lab is not None:
            ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0, vmax=9, alpha=0.45, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _train_and_apply(folder: Path, out: Path, cfg: FeatureConfig, class_names: list[str], quiet: bool):
    """Train on ``folder``'s scribbles, save the classifier and stream ``image.tif`` through it.

    Returns the image, the scribbles, the written labels and the timings (s).
    """
    image, scribbles = read_image(folder / "image.tif"), read_image(folder / "scribbles.tif")
    name = folder.name
    t0 = time.perf_counter()
    seg = Segmenter(cfg, "rf", class_names=class_names)
    run_job(seg.iter_fit(image, scribbles), desc=f"train {name}", quiet=quiet)
    t1 = time.perf_counter()
    seg.save(out / f"{name}.vitseg")
    run_job(seg.iter_apply_file(folder / "image.tif", out / f"{name}_seg.tif"), desc=f"apply {name}", quiet=quiet)
    t2 = time.perf_counter()
    labels = read_image(out / f"{name}_seg.tif")
    return image, scribbles, labels, {"train_s": round(t1 - t0, 2), "apply_s": round(t2 - t1, 2)}


def run_demo(output_dir, *, backbone: str | None = None, quiet: bool = False) -> dict:
    """Run the samples end to end.

    Parameters
    ----------
    output_dir : str or Path
        Created if missing.
    backbone : str or None
        Backbone for the ViT features (``None``: classical features only).

    Returns
    -------
    dict
        mIoU, timings and written files (also saved as ``summary.json``).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = sample_data_dir()
    cfg = FeatureConfig(backbone=backbone)
    summary: dict = {"backbone": backbone or "none (classical features only)", "feature_config": cfg.to_dict()}

    # 1. TEM nanoparticles: train on scribbles, score against ground truth.
    image, scribbles, labels, timing = _train_and_apply(data / "tem_nanoparticles", out, cfg,
                                                        ["particle", "background"], quiet)
    miou = mean_iou(labels, read_image(data / "tem_nanoparticles" / "ground_truth.tif"))
    summary["tem_nanoparticles"] = {"mIoU": round(miou, 4), **timing}

    # 2. TEM cells stack: train on scribbles of all planes, stream the stack file.
    stack, sscrib, slabels, timing = _train_and_apply(data / "tem_cells_stack", out, cfg,
                                                      ["nucleus", "cytoplasm", "background"], quiet)
    # agreement with the scribbles themselves (no ground truth exists for this stack)
    lab = sscrib != 0
    summary["tem_cells_stack"] = {
        "planes": int(stack.shape[0]), **timing,
        "scribble_agreement": round(float((slabels[lab] == sscrib[lab]).mean()), 4),
        "class_fractions": {int(c): round(float((slabels == c).mean()), 3) for c in np.unique(slabels)},
    }
    z = stack.shape[0] // 2
    _overlay_figure(out / "demo.png", [
        ("TEM nanoparticles: scribbles", image, scribbles),
        (f"segmentation, mIoU {miou:.3f} vs ground truth", image, labels),
        (f"TEM cells stack plane {z}: scribbles", stack[z], sscrib[z]),
        (f"TEM cells stack plane {z}: segmentation", stack[z], slabels[z]),
    ])
    summary["files"] = sorted(str(p) for p in out.iterdir() if p.is_file())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
