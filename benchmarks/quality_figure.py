"""Figure of the shared sets with their default segmentations (issue 10; README and docs/quality.md).

Run ``python benchmarks/quality_figure.py [--out docs/images/quality_sets.png] [--sets ...]``.
For every set with a dense ground truth (the sets of ``bench_quality.py``, same loading and
made scribbles), trains the default :class:`napari_vitseg.Segmenter` (classifier seed 0) on
the scribbles, segments the whole image or stack as shipped, and draws one row per set: the
image with the scribbles, the ground truth, our segmentation, and the wrong pixels in red
(pixels within 1 px of a ground-truth boundary in orange, the rest in red). For a stack, the
scribbled plane nearest the middle is drawn; the mIoU is over the whole stack. Titles give the
mIoU (the project's metric, as in ``bench_quality.py``) and the share of wrong pixels that lie
within 1 px of a ground-truth boundary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_quality as bq  # noqa: E402

DEFAULT_OUT = HERE.parent / "docs" / "images" / "quality_sets.png"


def boundary_band(gt: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels within ``width`` px (chessboard) of a change of ground-truth class, per plane.

    Parameters
    ----------
    gt : ndarray of int, (Y, X) or (Z, Y, X)

    Returns
    -------
    ndarray of bool, ``gt.shape``
    """
    # the library's rule, per plane
    from napari_vitseg.pipeline._boundary import boundary_band as plane_band

    if gt.ndim == 2:
        return plane_band(gt, width)
    return np.stack([plane_band(p, width) for p in gt])


def segment_set(ds: dict, seed: int = 0) -> np.ndarray:
    """The default Segmenter's labels of the whole set, trained on its scribbles."""
    from napari_vitseg import Segmenter

    seg = Segmenter.from_config(bq.build_config({}, seed))
    seg.fit(ds["image_arr"], ds["scr"], channel_axis=ds["channel_axis"])
    return seg.segment(ds["image_arr"], channel_axis=ds["channel_axis"], probabilities=False).labels


def row_of(ds: dict, labels: np.ndarray) -> dict:
    """The arrays and numbers of one figure row (mIoU over the whole set, drawn plane)."""
    miou = bq.score(labels, ds)["miou"]
    gt, scr, img = ds["gt"], ds["scr"], ds["image_arr"]
    wrong = (labels != gt) & (gt != 0)
    band = boundary_band(gt)
    z = None
    if ds["stack"]:
        scribbled = [i for i in range(gt.shape[0]) if scr[i].any()]
        z = min(scribbled, key=lambda i: abs(i - gt.shape[0] // 2))
        gt, scr, img, labels, wrong, band = gt[z], scr[z], img[z], labels[z], wrong[z], band[z]
    return {"name": ds["name"], "plane": z, "image": img, "scribbles": scr, "gt": gt, "labels": labels,
            "wrong": wrong, "band": band, "miou": miou}


def draw(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from napari_vitseg.pipeline import DEFAULT_COLORS

    cmap = ListedColormap(["none", *DEFAULT_COLORS[:9]])
    err = ListedColormap(["none", "#ff8c00", "#e00000"])
    fig, axes = plt.subplots(len(rows), 4, figsize=(13, 3.3 * len(rows)), dpi=80, squeeze=False)
    for ax_row, r in zip(axes, rows, strict=True):
        img = r["image"]
        grey = dict(cmap="gray") if img.ndim == 2 else {}
        shown = img if img.ndim == 2 else img.astype(np.float32) / max(float(img.max()), 1.0)
        plane = f", plane {r['plane']}" if r["plane"] is not None else ""
        wrong = r["wrong"]
        near = float((wrong & r["band"]).sum() / max(int(wrong.sum()), 1))
        titles = [f"{r['name']}{plane}: image + scribbles", "ground truth",
                  f"ours (default): mIoU {r['miou']:.3f}",
                  f"wrong: {wrong.mean():.1%} of pixels, {near:.0%} of them\nwithin 1 px of a true boundary (orange)"]
        layers = [r["scribbles"], r["gt"], r["labels"], None]
        for ax, title, lab in zip(ax_row, titles, layers, strict=True):
            ax.imshow(shown, **grey)
            if lab is not None:
                ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0, vmax=9, alpha=0.9 if lab is r["scribbles"]
                          else 0.45, interpolation="nearest")
            else:
                code = np.where(wrong, np.where(r["band"], 1, 2), 0)
                ax.imshow(np.ma.masked_equal(code, 0), cmap=err, vmin=0, vmax=2, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--sets", nargs="+", default=None)
    ap.add_argument("--data", type=Path, default=bq.DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=bq.DEFAULT_CACHE)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"quality_figure: no data folder {args.data} (pass --data)", file=sys.stderr)
        return 2
    rows = []
    for entry in bq.find_sets(args.data, args.cache, args.sets):
        ds = bq.load_set(entry)
        labels = segment_set(ds)
        row = row_of(ds, labels)
        print(f"  {ds['name']}: mIoU {row['miou']:.4f}", flush=True)
        rows.append(row)
    draw(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
