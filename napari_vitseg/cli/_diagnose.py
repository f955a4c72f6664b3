"""``vitseg diagnose``: positional-bias probe, token norms / defects and PCA views as a report.

::

    vitseg diagnose IMAGES... --backbone A [--backbone B ...] -o REPORT_DIR

writes PNG figures, ``report.json`` (every number) and ``index.html`` (the page that shows them)
into ``REPORT_DIR``. :func:`add_subcommands` registers the subcommand on the main parser's
subparsers (see :mod:`napari_vitseg.cli`); the handler returns 0 on success and raises
:class:`~napari_vitseg._validation.VitsegError` for bad input (exit 2, one line).
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys

import numpy as np

from .._validation import VitsegError
from ..features.config import INTENSITY_MODES, FeatureConfig
from ._common import run_job

__all__ = ["add_subcommands", "cmd_diagnose", "read_diagnose_images"]

_GENERIC_STEMS = {"image", "img", "data", "raw"}
#: Options written back into the report's command line when they differ from the parser's defaults.
_REPORTED_OPTIONS = ("layers", "repeats", "train_fraction", "alpha", "seed", "threshold", "max_side",
                     "channel_axis", "plane", "device")
_REPORTED_FLAGS = ("no_defect_directions", "pca_per_image", "no_image_maps", "random_weights")


def _alpha(text: str):
    if text.lower() == "cv":
        return "cv"
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'cv', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"alpha must be > 0, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            v = float(a) / float(b)
        else:
            v = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a fraction such as 1/36 or 0.03, got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"the training fraction must be in (0, 1), got {text!r}")
    return v


def read_diagnose_images(paths, *, plane: int | None = None,
                         channel_axis: int | None = None) -> tuple[list[np.ndarray], list[str], int | None]:
    """Read the images given on the command line as 2-D planes.

    Parameters
    ----------
    paths : sequence of str or pathlib.Path
        Image files (TIFF, PNG, JPEG, BMP) or folders of them.
    plane : int, optional
        For (Z, Y, X) stacks, the plane to use (default: the middle one).
    channel_axis : int, optional
        Channel axis of the files; (Y, X, 3|4) files are taken as RGB(A) when not given.

    Returns
    -------
    images : list of ndarray
    names : list of str
        File stems (the folder name for generic stems like ``image``), made unique.
    channel_axis : int or None
        The channel axis to pass on (-1 for RGB files).

    Raises
    ------
    VitsegError
        Missing or unreadable files, an empty folder, a plane out of range.
    """
    from ..io import IMAGE_SUFFIXES, expand_inputs, image_stem, read_image

    files = expand_inputs(paths, suffixes=IMAGE_SUFFIXES, what="image")
    images, names = [], []
    ca_out = channel_axis
    for f in files:
        a = read_image(f)
        if channel_axis is None and a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:
            ca_out = -1
        elif a.ndim == 3 and channel_axis is None:  # (Z, Y, X) stack
            z = a.shape[0] // 2 if plane is None else plane
            if not -a.shape[0] <= z < a.shape[0]:
                raise VitsegError(f"--plane {plane} is out of range for {str(f)!r} with {a.shape[0]} planes.")
            a = a[z]
        stem = image_stem(f)
        stem = stem if stem.lower() not in _GENERIC_STEMS else f.parent.name or stem
        name, k = stem, 2
        while name in names:
            name, k = f"{stem}_{k}", k + 1
        images.append(a)
        names.append(name)
    if any(a.ndim == 3 for a in images) and any(a.ndim == 2 for a in images) and ca_out is not None:
        # mixed greyscale and RGB files: make the greyscale ones RGB so one channel axis fits all
        images = [np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a for a in images]
    return images, names, ca_out


def _strip_segmentation_hint(msg: str) -> str:
    """Drop the segmentation-only "--backbone none" hint of the missing-weights message."""
    return msg.replace(" Or choose `--backbone none` for classical features only.", "")


def cmd_diagnose(args, *, defaults: dict | None = None) -> int:
    """Handler of ``vitseg diagnose``.

    Parameters
    ----------
    args : argparse.Namespace
    defaults : dict, optional
        The parser's defaults of :data:`_REPORTED_OPTIONS` (for the report's command line).
    """
    from ..diagnostics import iter_diagnose
    from ..diagnostics.report import write_report

    if args.max_side is not None and args.max_side <= 0:
        args.max_side = None
    if args.repeats < 1:
        raise VitsegError(f"--repeats must be >= 1; got {args.repeats}.")
    if not args.threshold > 0:
        raise VitsegError(f"--threshold must be > 0; got {args.threshold}.")
    try:
        images, names, channel_axis = read_diagnose_images(args.images, plane=args.plane,
                                                            channel_axis=args.channel_axis)
        backbones = list(dict.fromkeys(args.backbone or []))
        if not backbones:
            if args.random_weights:
                raise VitsegError("--random-weights needs at least one --backbone.")
            from ..backbones import available_backbones

            backbones = available_backbones()
            if not backbones:
                raise VitsegError("no backbone weights are on this machine; add some (see `vitseg weights "
                                  "list`) or name backbones with --backbone.")
        job = iter_diagnose(backbones, images, names=names, channel_axis=channel_axis, max_side=args.max_side,
                       layers=args.layers, repeats=args.repeats, train_fraction=args.train_fraction,
                       alpha=args.alpha, seed=args.seed, rel_threshold=args.threshold,
                       directions=None if args.no_defect_directions else "auto",
                       pca_shared=not args.pca_per_image, random_weights=args.random_weights,
                       device=args.device, intensity=args.intensity)
        try:
            result = run_job(job, desc="diagnose", quiet=args.quiet)
        except VitsegError as e:
            if str(e).startswith("none of the requested backbones"):
                lines = [ln.strip() for ln in str(e).splitlines()[1:]]
                more = f" ({len(lines) - 1} more backbone(s) missing)" if len(lines) > 1 else ""
                raise VitsegError(f"no requested backbone could be built: {lines[0]}{more}") from None
            raise
        paths = write_report(result, args.output, command=_command_line(args, defaults or {}),
                             image_maps=not args.no_image_maps)
    except VitsegError as e:
        raise VitsegError(_strip_segmentation_hint(str(e))) from None
    if not args.quiet:
        if result.random_weights:
            print("RANDOM WEIGHTS — not a pretrained model (test / method check only)")
        for bd in result.results:
            p = bd.probe
            print(f"{bd.backbone:<28} lr+ud R² {p.mean('lr+ud'):+.3f} ± {p.std('lr+ud'):.3f}   "
                  f"random {p.mean('random'):+.3f}   max flagged {100 * bd.norms.share.mean(0).max():.2f}%")
        for name, why in result.missing.items():
            print(f"not run: {name}: {_strip_segmentation_hint(why.splitlines()[0])}", file=sys.stderr)
        print(f"report: {paths['html']}")
    return 0


def add_subcommands(subparsers) -> None:
    """Register ``diagnose`` on the main parser's subparsers."""
    d = subparsers.add_parser(
        "diagnose",
        help="positional-bias probe, token norms and PCA views of backbones, as an HTML/PNG/JSON report",
        description="Diagnose what ViT backbones do to your images: a linear probe of position "
                    "(Pawlowsky et al. 2026), high-norm tokens per block (Darcet et al. 2024), "
                    "angles to SINDER's defect direction (Wang et al. 2024) and PCA-RGB views. "
                    "Use homogeneous images (no preferred direction) for the probe.",
    )
    d.add_argument("images", nargs="+", help="image files (TIFF, PNG, JPEG) or folders of them")
    d.add_argument("--backbone", action="append", metavar="NAME",
                   help="backbone to diagnose; repeat for several (default: every backbone whose weights "
                        "are on this machine)")
    d.add_argument("-o", "--output", required=True, metavar="REPORT_DIR",
                   help="folder for the report (created; files of the same names are replaced)")
    d.add_argument("--layers", choices=("all", "final"), default="all",
                   help="probe every block plus the final features (fingerprint), or the final features only")
    d.add_argument("--repeats", type=int, default=3, help="random train/test splits per image (default 3)")
    d.add_argument("--train-fraction", type=_fraction, default=1 / 36, metavar="F",
                   help="share of tokens that train the probe (default 1/36)")
    d.add_argument("--alpha", type=_alpha, default=1.0,
                   help="ridge penalty (default 1.0, as in the paper), or 'cv' for leave-one-out choice")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threshold", type=float, default=3.0, metavar="X",
                   help="flag tokens with norm > X times the layer median (default 3)")
    d.add_argument("--no-defect-directions", action="store_true",
                   help="skip the SINDER defect-direction angle maps (saves a few seconds per backbone)")
    d.add_argument("--max-side", type=int, default=1008, metavar="PX",
                   help="crop images to at most PX x PX around the centre (default 1008; 0 = no limit)")
    d.add_argument("--channel-axis", type=int, default=None, help="channel axis of the images (RGB: -1)")
    d.add_argument("--plane", type=int, default=None, help="plane of (Z, Y, X) stacks (default: middle)")
    d.add_argument("--pca-per-image", action="store_true", help="one PCA basis per image instead of a shared one")
    d.add_argument("--no-image-maps", action="store_true",
                   help="skip the per-image, per-backbone map figures (the overview grids are always written)")
    d.add_argument("--intensity", choices=INTENSITY_MODES, default=FeatureConfig().intensity,
                   help="how intensities are scaled before the ViT, as FeatureConfig.intensity (default: %(default)s)")
    d.add_argument("--device", default="cpu")
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    d.set_defaults(func=functools.partial(cmd_diagnose, defaults={k: d.get_default(k) for k in _REPORTED_OPTIONS}))


def _command_line(args, defaults: dict) -> str:
    """The equivalent ``vitseg diagnose`` command: options that differ from the parser's defaults."""
    parts = ["vitseg", "diagnose", *map(str, args.images)]
    for b in args.backbone or []:
        parts += ["--backbone", b]
    parts += ["-o", str(args.output)]
    for k in _REPORTED_OPTIONS:
        val = getattr(args, k)
        if k == "max_side" and val is None:
            val = 0  # set from --max-side 0 (no limit)
        if k in defaults and val != defaults[k]:
            parts += [f"--{k.replace('_', '-')}", str(val)]
    for flag in _REPORTED_FLAGS:
        if getattr(args, flag):
            parts.append(f"--{flag.replace('_', '-')}")
    return " ".join(shlex.quote(x) for x in parts)
