"""Benchmark: tiled ViT patch features and their upsampling to the pixel grid, on the CPU.

Run ``python benchmarks/bench_vit.py [--sizes 512 1024] [--quick]``.

Model: ``dinov2_vits14_reg`` with RANDOM weights (``pretrained=False``; no download). The
architecture, token count and so the FLOPs and memory are those of the real model; only the
feature values differ (irrelevant for timing).

Input: the real 3-phase SEM slice (``shared/data/sem_phases/3_phase.tif``, uint8), cropped
or mirror-extended to size x size (a synthetic texture if the file is missing).

Every row runs in a fresh subprocess (``python bench_vit.py --child ...``), so that its peak
memory is its own: one warm-up call on a 64 x 64 image (the same code paths), then one timed
call at full size. Reported:

- wall: ``time.perf_counter`` of the timed call; cpu: ``time.process_time`` (all threads of
  the process; on a shared machine wall time also counts waiting for a core);
- peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end minus its value before
  the timed call. ``ru_maxrss`` is the resident-set high-water mark of the whole process, so
  it sees torch's allocator and OpenCV's buffers, which ``tracemalloc`` does not; it is a
  peak, not a sum, and includes the returned array (4 * D bytes per pixel).

Rows:

- ``forward``: ``backbone.forward_features`` on a batch of 518 x 518 tiles (37 x 37 tokens),
  per tile, at batch 1 and 4;
- ``vit_features``: tokens (``vit_patch_features``, default 518 px tiles, 112 px overlap)
  then bilinear or guided (r = 8, eps = 1e-3) upsampling of all 384 channels, as
  ``vit_features`` does; "single-pass" runs the whole padded image as one window
  (``tile_size`` >= the image), the untiled peer of the tiled rows;
- ``upsample``: the upsamplers alone on random (74, 74, 384 or 32) tokens to 1024 x 1024
  (grey guide, and a colour guide), i.e. the cost without the ViT; 32 channels is what a
  token-level PCA (``vit_features(..., pca=PCAReducer(32))``) leaves to upsample.

Ratios: guided / bilinear (same size, same run), tiled / single-pass, 384 / 32 channels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("VITSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
IMAGE = DATA / "sem_phases" / "3_phase.tif"
BACKBONE = "dinov2_vits14_reg"


def load_plane(size: int) -> np.ndarray:
    """The SEM slice cropped (or mirror-extended) to size x size, uint8."""
    try:
        import tifffile

        img = tifffile.imread(IMAGE)
        if img.ndim == 3:
            img = img[..., 0]
    except Exception:  # noqa: BLE001 - any failure: use a synthetic texture
        yy, xx = np.mgrid[:751, :751]
        img = (127 + 60 * np.sin(yy / 7) * np.cos(xx / 11)).astype(np.uint8)
    ny, nx = img.shape
    if size > min(ny, nx):
        img = np.pad(img, ((0, max(0, size - ny)), (0, max(0, size - nx))), mode="symmetric")
    return np.ascontiguousarray(img[:size, :size])


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# -- child: one measurement ---------------------------------------------------------------
def child(spec: dict) -> dict:
    import torch

    from napari_vitseg.backbones import create_backbone
    from napari_vitseg.features.upsample import upsample_bilinear, upsample_guided
    from napari_vitseg.features.vit import to_rgb01, vit_patch_features

    torch.manual_seed(0)
    kind = spec["kind"]
    res: dict = {}

    if kind == "forward":
        bb = create_backbone(BACKBONE, pretrained=False)
        b = spec["batch"]
        x = torch.randn(b, 3, 518, 518)
        with torch.inference_mode():
            bb.forward_features(x[:, :, :56, :56])
            base = _maxrss_mib()
            t, c = time.perf_counter(), time.process_time()
            bb.forward_features(x)
            res.update(wall=time.perf_counter() - t, cpu=time.process_time() - c)
        res["peak_mib"] = _maxrss_mib() - base
        res["per_tile"] = res["wall"] / b
        return res

    if kind == "vit":
        bb = create_backbone(BACKBONE, pretrained=False)
        size, up, tile = spec["size"], spec["upsample"], spec["tile"]
        overlap = 112 if tile <= 518 else 0

        def run(img):
            t0, c0 = time.perf_counter(), time.process_time()
            tok = vit_patch_features(img, bb, tile_size=tile, tile_overlap=overlap, batch_size=4,
                                     tiling="always")  # (gh, gw, D)
            t1, c1 = time.perf_counter(), time.process_time()
            if up == "bilinear":
                out = upsample_bilinear(tok, img.shape, patch_size=14)
            else:
                out = upsample_guided(tok, to_rgb01(img)[..., 0], radius=8, eps=1e-3, patch_size=14)
            t2, c2 = time.perf_counter(), time.process_time()
            return out, (t1 - t0, t2 - t1, c1 - c0, c2 - c1)

        run(load_plane(64))
        img = load_plane(size)
        base = _maxrss_mib()
        out, (tv, tu, cv, cu) = run(img)
        res.update(wall=tv + tu, cpu=cv + cu, vit_wall=tv, up_wall=tu, vit_cpu=cv, up_cpu=cu,
                   peak_mib=_maxrss_mib() - base, out_mib=out.nbytes / 2**20)
        return res

    if kind == "upsample":
        d, size, how = spec["channels"], spec["size"], spec["how"]
        g = -(-size // 14)
        rng = np.random.default_rng(0)
        tok = rng.standard_normal((g, g, d)).astype(np.float32)  # (h, w, D), as vit_patch_features returns
        guide = load_plane(size).astype(np.float32) / 255
        if how == "guided_colour":
            guide = np.repeat(guide[..., None], 3, axis=2)
            guide[..., 1] = guide[..., 1] ** 2

        def run(t, gd):
            if how == "bilinear":
                return upsample_bilinear(t, gd.shape[:2], patch_size=14)
            return upsample_guided(t, gd, radius=8, eps=1e-3, patch_size=14)

        run(tok[:5, :5], guide[:64, :64])
        base = _maxrss_mib()
        t, c = time.perf_counter(), time.process_time()
        out = run(tok, guide)
        res.update(wall=time.perf_counter() - t, cpu=time.process_time() - c,
                   peak_mib=_maxrss_mib() - base, out_mib=out.nbytes / 2**20)
        return res
    raise ValueError(kind)


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise RuntimeError(f"child failed: {spec}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- parent: table ----------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--quick", action="store_true", help="skip the single-pass and colour-guide rows")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    import cv2
    import timm
    import torch

    print(f"# bench_vit: {BACKBONE} (random weights, same FLOPs as the real model), CPU")
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"timm {timm.__version__}, OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.1f}")
    print()
    rows = []

    def row(name, spec, extra=""):
        r = measure(spec)
        rows.append((name, r, extra))
        print(f"  {name}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s cpu, peak +{r['peak_mib']:.0f} MiB", file=sys.stderr)
        return r

    fw = {b: row(f"forward 518² x{b}", {"kind": "forward", "batch": b}) for b in (1, 4)}
    vit = {}
    for s in args.sizes:
        for up in ("bilinear", "guided"):
            vit[s, up, "tiled"] = row(f"vit_features {s}² {up}, tiled 518/112", {"kind": "vit", "size": s, "upsample": up, "tile": 518})
        if not args.quick and -(-s // 14) * 14 > 518:
            vit[s, "bilinear", "single"] = row(f"vit_features {s}² bilinear, single pass",
                                               {"kind": "vit", "size": s, "upsample": "bilinear", "tile": 10_000})
    ups = {}
    for d in (384, 32):
        for how in ("bilinear", "guided", "guided_colour"):
            if how == "guided_colour" and (args.quick or d != 384):
                continue
            ups[d, how] = row(f"upsample {d} ch → 1024² {how}", {"kind": "upsample", "channels": d, "size": 1024, "how": how})

    print("| measurement | wall s | cpu s | ViT s | upsample s | peak RSS +MiB | output MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r, _ in rows:
        vs = f"{r['vit_wall']:.2f}" if "vit_wall" in r else ""
        us = f"{r['up_wall']:.2f}" if "up_wall" in r else ""
        om = f"{r['out_mib']:.0f}" if "out_mib" in r else ""
        print(f"| {name} | {r['wall']:.2f} | {r['cpu']:.2f} | {vs} | {us} | {r['peak_mib']:.0f} | {om} |")
    print()
    print("| ratio | value |")
    print("|---|---:|")
    print(f"| forward: per-tile time, batch 4 / batch 1 | {fw[4]['per_tile'] / fw[1]['per_tile']:.2f} |")
    for s in args.sizes:
        b, g = vit[s, "bilinear", "tiled"], vit[s, "guided", "tiled"]
        print(f"| {s}²: guided / bilinear, upsampling only | {g['up_wall'] / b['up_wall']:.2f} |")
        print(f"| {s}²: guided / bilinear, end to end | {g['wall'] / b['wall']:.2f} |")
        print(f"| {s}²: upsampling share of guided end to end | {g['up_wall'] / g['wall']:.2f} |")
        if (s, "bilinear", "single") in vit:
            one = vit[s, "bilinear", "single"]
            print(f"| {s}²: ViT tiled / single pass (wall) | {b['vit_wall'] / one['vit_wall']:.2f} |")
            print(f"| {s}²: peak RSS tiled / single pass | {b['peak_mib'] / max(one['peak_mib'], 1):.2f} |")
    print(f"| upsample 1024²: guided / bilinear, 384 ch | {ups[384, 'guided']['wall'] / ups[384, 'bilinear']['wall']:.2f} |")
    if (384, "guided_colour") in ups:
        print(f"| upsample 1024²: colour / grey guide, 384 ch | {ups[384, 'guided_colour']['wall'] / ups[384, 'guided']['wall']:.2f} |")
    print(f"| upsample 1024² guided: 384 / 32 channels (token PCA) | {ups[384, 'guided']['wall'] / ups[32, 'guided']['wall']:.2f} |")


if __name__ == "__main__":
    main()
