"""Benchmark: ``vitseg repair`` (SINDER) on ViT-S/14 with 10 images of 224 px, on this CPU.

No real DINOv2 weights can be downloaded here, so the base is a *random* ViT-S/14-reg4 with
LayerScale 1 (``init_values=1.0``, see methods.md), saved as a timm-layout checkpoint in a
temporary weights folder and loaded through the normal path. The 10 images are 224 x 224
centre crops of the real images in ../shared/data.

Scenarios, each in a fresh subprocess (so peak memory is per scenario):

* ``directions``: :func:`defect_directions` alone (20 000 Gaussian samples per block);
* ``cli``: the full ``vitseg repair`` flow with the defaults (4-sigma rule, step cap 150);
  with random weights it may find no defect and stop early;
* ``worst``: an upper bound of the time for real weights: the same job (through the Python API)
  with the defect directions of blocks 0-10 set to zero (never flagged) and a 2-sigma rule at
  the last block, so that every step runs all 12 blocks, then back-propagates through the
  3-block window 9-11, and the run goes to the step cap.

Usage: ``python benchmarks/bench_repair.py [--max-steps 150] [--scenarios directions,cli,worst]``.
No peer is measured: the SINDER reference code needs its own DINOv2 hub code and a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("VITSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCES = [
    ("tem_nanoparticles/image.tif", None), ("tem_cells_stack/image.tif", 0),
    ("sofc_sem_biased/image.tif", None), ("cast_iron_optical/image.tif", None),
    ("maize_confocal/image.tif", None), ("nuclei_fluorescence/image.tif", None),
    ("sem_phases/2_phase.tif", None), ("sem_phases/3_phase.tif", None),
    ("sem_phases/4_phase.tif", None), ("blobs/image.tif", None),
]


def make_inputs(root: Path, size: int = 224) -> tuple[Path, Path]:
    import tifffile
    import torch
    from safetensors.torch import save_file

    from napari_vitseg.backbones import create_backbone

    img_dir = root / "images"
    img_dir.mkdir()
    for k, (rel, plane) in enumerate(SOURCES):
        a = tifffile.imread(DATA / rel)
        if plane is not None:
            a = a[plane]
        y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
        tifffile.imwrite(img_dir / f"{k:02d}_{rel.split('/')[0]}.tif", a[y0:y0 + size, x0:x0 + size])
    wdir = root / "weights"
    wdir.mkdir()
    torch.manual_seed(0)
    b = create_backbone("dinov2_vits14_reg", pretrained=False, init_values=1.0)
    save_file({k: v.contiguous() for k, v in b.model.state_dict().items()},
              str(wdir / "dinov2_vits14_reg.safetensors"))
    return img_dir, wdir


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_scenario(name: str, img_dir: Path, out: Path, max_steps: int) -> dict:
    import torch

    from napari_vitseg.backbones import create_backbone, defect_directions
    from napari_vitseg.cli import main as vitseg

    res = {"scenario": name, "threads": torch.get_num_threads()}
    if name == "worst":
        from napari_vitseg import run
        from napari_vitseg.backbones.sinder import iter_repair, prepare_images
        from napari_vitseg.cli._weights import read_repair_images

        t0 = time.perf_counter()
        b = create_backbone("dinov2_vits14_reg")
        arrays, names = read_repair_images(img_dir)
        images = prepare_images(arrays, size=224)
        d = defect_directions(b, n_samples=20000)
        d[:-1] = 0  # only the last block can be flagged
        result = run(iter_repair(b, images, max_steps=max_steps, sigma=2.0, directions=d, image_names=names))
        res["wall_s"] = time.perf_counter() - t0
        res.update(steps=result.steps, steps_with_defect=result.metadata["steps_with_defect"],
                   converged=result.converged, layers=len(result.metadata["layers"]),
                   flagged_blocks=sorted({h["layer"] for h in result.history if h["layer"] is not None}))
    elif name == "directions":
        b = create_backbone("dinov2_vits14_reg")
        t0 = time.perf_counter()
        d = defect_directions(b, n_samples=20000)
        res["wall_s"] = time.perf_counter() - t0
        res["shape"] = list(d.shape)
    else:
        argv = ["repair", "--backbone", "dinov2_vits14_reg", "--images", str(img_dir), "-o", str(out),
                "--max-steps", str(max_steps), "--force", "--quiet"]
        t0 = time.perf_counter()
        rc = vitseg(argv)
        res["wall_s"] = time.perf_counter() - t0
        res["rc"] = rc
        from napari_vitseg.backbones.sinder import load_repair

        eps, meta = load_repair(out)
        res.update(steps=meta["steps"], steps_with_defect=meta["steps_with_defect"],
                   converged=meta["converged"], layers=len(meta["layers"]),
                   file_kb=round(out.stat().st_size / 1024, 1))
    res["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--scenarios", default="directions,cli,worst")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_root", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        root = Path(a._root)
        os.environ["VITSEG_WEIGHTS_DIR"] = str(root / "weights")
        res = run_scenario(a._child, root / "images", root / f"{a._child}.safetensors", a.max_steps)
        print("RESULT " + json.dumps(res))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["VITSEG_WEIGHTS_DIR"] = str(root / "weights")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        make_inputs(root)
        print(f"inputs: 10 crops of 224 x 224 px from {DATA}; random ViT-S/14-reg4, LayerScale 1; "
              f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for name in a.scenarios.split(","):
            cmd = [sys.executable, __file__, "--_child", name, "--_root", str(root),
                   "--max-steps", str(a.max_steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{name}: failed\n{proc.stdout}\n{proc.stderr}")
                continue
            res = json.loads(line[-1][7:])
            res["load_avg_end"] = round(os.getloadavg()[0], 1)
            print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
