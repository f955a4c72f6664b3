"""``vitseg weights list|import|download`` and ``vitseg repair``: backbone weights from the
command line.

:func:`add_subcommands` registers the subcommands on the main parser's subparsers (see
:mod:`napari_vitseg.cli`). Handlers return 0 on success and raise
:class:`~napari_vitseg._validation.VitsegError` for bad input (exit 2, one line).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .._validation import VitsegError
from ..backbones._input import INTENSITY_MODES
from ..backbones.sinder import REPAIR_PRESETS, iter_repair, prepare_images, repair_preset
from ._common import library_default, run_job

__all__ = [
    "add_subcommands",
    "cmd_weights_list",
    "cmd_weights_import",
    "cmd_weights_download",
    "cmd_repair",
    "read_repair_images",
]


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


# -- weights ----------------------------------------------------------------------------------
def cmd_weights_list(args) -> int:
    """Print every registered backbone with found / missing, path and size."""
    from ..backbones import list_weights, weights_dir

    rows = list_weights()
    print(f"weights folder: {weights_dir()}  (set VITSEG_WEIGHTS_DIR to change it)")
    w = max(len(r.name) for r in rows)
    print(f"{'name':<{w}}  {'status':<20}  {'size':>9}  path / source")
    for r in rows:
        if r.found and r.base_found is False:
            status = "found (base missing)"
        else:
            status = "found" if r.found else "missing"
        where = str(r.path) if r.path is not None else r.source
        print(f"{r.name:<{w}}  {status:<20}  {_size(r.size):>9}  {where}")
    return 0


def cmd_weights_import(args) -> int:
    """Check a checkpoint's layout against a backbone and copy it into the weights folder."""
    from ..backbones import import_weights

    dest, sha = import_weights(args.file, args.name, overwrite=args.force)
    print(f"imported {args.file} as {args.name}: {dest}")
    print(f"sha256 {sha}")
    return 0


def cmd_weights_download(args) -> int:
    """Download a backbone's published weights (online only)."""
    from ..backbones import download_weights

    path = download_weights(args.name, force=args.force)
    print(f"{args.name}: {path}")
    return 0


# -- repair -----------------------------------------------------------------------------------
def read_repair_images(source: str | Path, *, max_images: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Read the images of a folder (or one file) as 2D greyscale or RGB planes.

    Stacks (Z, Y, X) give one image per plane; (Y, X, 3|4) is RGB(A). Files are found and read
    by :mod:`napari_vitseg.io` (TIFF, PNG, JPEG, BMP).

    Parameters
    ----------
    source : str or pathlib.Path
        A folder of images or one image file.
    max_images : int, optional
        Stop after this many planes.

    Returns
    -------
    images : list of numpy.ndarray
    names : list of str
        ``file`` or ``file[z]``.

    Raises
    ------
    VitsegError
        Missing folder, unreadable files, no images.
    """
    from ..io import IMAGE_SUFFIXES, expand_inputs, read_image

    files = expand_inputs([source], suffixes=IMAGE_SUFFIXES, what="image")
    images, names = [], []
    for f in files:
        a = np.squeeze(read_image(f))
        if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4):
            planes = [(a, f.name)]
        elif a.ndim == 3 or (a.ndim == 4 and a.shape[-1] in (3, 4)):
            planes = [(a[z], f"{f.name}[{z}]") for z in range(a.shape[0])]
        else:
            raise VitsegError(f"Image {f} has shape {a.shape}; the repair reads (Y, X), (Y, X, 3) or (Z, Y, X).")
        for img, name in planes:
            images.append(img)
            names.append(name)
            if max_images is not None and len(images) >= max_images:
                return images, names
    return images, names


def _default_repair_output(base: str) -> Path:
    from ..backbones import get_backbone_cfg, list_backbones, weights_dir

    name = f"sinder_{base}"
    if name in list_backbones():
        return weights_dir(create=True) / get_backbone_cfg(name).weights_file
    return Path(f"{name}.safetensors")


def cmd_repair(args) -> int:
    """Run the SINDER repair of a backbone on a folder of images and save the offsets."""
    import torch

    from ..backbones import create_backbone
    from ..backbones.sinder import save_repair

    out = Path(args.output) if args.output else _default_repair_output(args.backbone)
    if out.suffix != ".safetensors":
        raise VitsegError(f"-o {str(out)!r}: the repair file must end in .safetensors.")
    if out.exists() and not args.force:
        raise VitsegError(f"{out} already exists; pass --force to replace it.")
    t0 = time.perf_counter()
    arrays, names = read_repair_images(args.images, max_images=args.max_images)
    backbone = create_backbone(args.backbone, weights=args.weights, device=args.device or "cpu")
    cfg = backbone.cfg
    pre = repair_preset(args.preset)
    size = pre["size"] if args.size is None else args.size
    max_steps = pre["max_steps"] if args.max_steps is None else args.max_steps
    images = prepare_images(arrays, size=size, patch_size=cfg.patch_size, mean=cfg.mean, std=cfg.std,
                            intensity=args.intensity, preset=args.preset)
    if not args.quiet:
        how = "resized and cropped to" if pre["resize"] else "cropped to at most"
        print(f"repairing {cfg.name} ({args.preset} preset) on {len(images)} image(s) {how} {size} px "
              f"(at most {max_steps} steps)", file=sys.stderr)
    torch.manual_seed(args.seed)
    job = iter_repair(backbone, images, max_steps=max_steps, lr=args.lr, sigma=args.sigma,
                     layer_window=args.layer_window, seed=args.seed, image_names=names,
                     n_samples=args.fit_samples, preset=args.preset,
                     max_time_s=None if args.max_minutes is None else 60.0 * args.max_minutes)
    result = run_job(job, desc="repair", quiet=args.quiet)
    save_repair(result, out)
    dt = time.perf_counter() - t0
    meta = result.metadata
    n_def = meta["steps_with_defect"]
    how = {"converged": "converged", "max_steps": "stopped at the step cap",
           "time_limit": "stopped at the time limit"}[meta["stopped"]]
    print(f"{cfg.name}: {meta['steps']} step(s), {n_def} with defective tokens, {how}, "
          f"{len(meta['layers'])} layer(s) changed; {dt:.1f} s")
    if n_def == 0:
        print("no singular defect found: the repair file is empty and changes nothing")
    print(f"wrote {out}")
    if out.resolve() != _default_repair_output(cfg.name).resolve():
        print(f"use it with: vitseg weights import {out} --as sinder_{cfg.name}")
    else:
        print(f"use it with: --backbone sinder_{cfg.name}")
    return 0


# -- registration -----------------------------------------------------------------------------
def add_subcommands(subparsers) -> None:
    """Register ``weights`` (list / import / download) and ``repair`` on ``subparsers``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers()``.
    """
    w = subparsers.add_parser("weights", help="list, import or download backbone weights")
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True

    wl = wsub.add_parser("list", help="registered backbones: found / missing, path, size")
    wl.set_defaults(func=cmd_weights_list)

    wi = wsub.add_parser("import", help="check a checkpoint's layout and copy it into the weights folder")
    wi.add_argument("file", help="checkpoint (.pth / .safetensors) or SINDER repair file")
    wi.add_argument("--as", dest="name", required=True, metavar="NAME", help="backbone it is for")
    wi.add_argument("--force", action="store_true", help="replace an existing file")
    wi.set_defaults(func=cmd_weights_import)

    wd = wsub.add_parser("download", help="download published weights (needs internet)")
    wd.add_argument("name", metavar="NAME", help="backbone name")
    wd.add_argument("--force", action="store_true", help="download again even if cached")
    wd.set_defaults(func=cmd_weights_download)

    r = subparsers.add_parser(
        "repair", help="SINDER: repair the singular defects of a DINOv2 backbone on your images",
        description="Train SINDER singular-value offsets on a folder of images and save them as a "
                    "small .safetensors file (Wang, Zhang and Salzmann, ECCV 2024).",
    )
    r.add_argument("--backbone", required=True, help="base backbone, e.g. dinov2_vits14_reg")
    r.add_argument("--images", required=True, help="folder of images (TIFF, PNG, JPEG) or one file")
    r.add_argument("-o", "--output", default=None,
                   help="repair file (.safetensors); default: sinder_<backbone>.safetensors in the weights folder")
    fast, ref = REPAIR_PRESETS["fast"], REPAIR_PRESETS["reference"]
    r.add_argument("--preset", choices=sorted(REPAIR_PRESETS), default=library_default(iter_repair, "preset"),
                   help="schedule: 'fast' (minutes on a CPU) or 'reference', SINDER's own (518-px resize + crop, "
                        "up to 30,000 steps, stopping window 1000, 10 trained blocks, 100,000 fit samples; "
                        "hours to days on a CPU, a GPU advised; see docs/backbones.md) (default %(default)s); the "
                        "options below override it")
    r.add_argument("--max-steps", type=int, default=None,
                   help=f"step cap, one image per step (fast {fast['max_steps']}, reference {ref['max_steps']})")
    r.add_argument("--max-minutes", type=float, default=None,
                   help="also stop after this many minutes (default: no time limit)")
    r.add_argument("--size", type=int, default=None,
                   help=f"centre-crop side in px (fast {fast['size']}; reference {ref['size']}, after resizing the "
                        "shorter side to it)")
    r.add_argument("--max-images", type=int, default=None, help="use at most N images / planes")
    r.add_argument("--intensity", choices=INTENSITY_MODES, default=library_default(prepare_images, "intensity"),
                   help="intensity scaling before the ImageNet normalisation, as FeatureConfig.intensity: "
                        "'reference' (uint8 / 255, as SINDER) or 'percentile' (default %(default)s)")
    r.add_argument("--lr", type=float, default=library_default(iter_repair, "lr"),
                   help="SGD learning rate (default %(default)s)")
    r.add_argument("--layer-window", type=int, default=None,
                   help=f"blocks that get gradients (fast depth/4, reference {ref['layer_window']})")
    r.add_argument("--sigma", type=float, default=library_default(iter_repair, "sigma"),
                   help="defect threshold in standard deviations (default %(default)s, as in SINDER)")
    r.add_argument("--fit-samples", type=int, default=None,
                   help="Gaussian samples for each MLP linearisation of the defect directions "
                        f"(fast {fast['n_samples']}, reference {ref['n_samples']} as SINDER)")
    r.add_argument("--seed", type=int, default=library_default(iter_repair, "seed"))
    r.add_argument("--weights", default=None, help="explicit base weights file")
    r.add_argument("--device", default=None, help="torch device (default cpu)")
    r.add_argument("--force", action="store_true", help="replace an existing output file")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_repair)

