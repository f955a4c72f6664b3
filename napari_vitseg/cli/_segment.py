"""``vitseg train``, ``vitseg apply``, ``vitseg info`` and ``vitseg demo``.

Handlers return 0 on success and raise :class:`~napari_vitseg._validation.VitsegError` for bad
input (:func:`napari_vitseg.cli.main` turns it into exit 2 and one line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .._validation import VitsegError
from ..classifiers import CLASSIFIERS, RandomForestPixelClassifier
from ..features import UPSAMPLERS, FeatureConfig
from ._common import floats, ints, resolve_backbone_name, run_job

__all__ = ["add_subcommands", "cmd_train", "cmd_apply", "cmd_info", "cmd_demo"]

_FEATURE_DEFAULTS = FeatureConfig()


def _check_output_folder(path: Path) -> None:
    if not path.parent.exists():
        raise VitsegError(f"Output folder {str(path.parent)!r} does not exist; create it first.")


def cmd_train(args) -> int:
    """Train a classifier from an image and its scribbles and save it."""
    from contextlib import ExitStack

    from ..io import open_image

    out = Path(args.output)
    _check_output_folder(out)
    with ExitStack() as files:
        # both read lazily: the scribbles are indexed plane by plane and only the image planes
        # that hold scribbles are read
        image = files.enter_context(open_image(args.image))
        scribbles = files.enter_context(open_image(args.scribbles))
        channel_axis = args.channel_axis if args.channel_axis is not None else image.channel_axis
        return _train(args, out, image.data, scribbles.data, channel_axis)


def _train(args, out: Path, image, scribbles, channel_axis) -> int:
    from ..backbones import create_backbone
    from ..pipeline import Segmenter

    backbone_name = resolve_backbone_name(args.backbone)
    cfg_kwargs = dict(backbone=backbone_name, upsample=args.upsample, vit_pca=args.vit_pca or None,
                      classical=not args.no_classical)
    if args.sigmas is not None:
        cfg_kwargs["sigmas"] = args.sigmas
    if args.vit_channels is not None:
        cfg_kwargs["vit_channels"] = args.vit_channels
    config = FeatureConfig(**cfg_kwargs)
    backbone = None
    if args.random_weights and backbone_name:
        backbone = create_backbone(backbone_name, pretrained=False, seed=0, device=args.device or "cpu")
    params = {k: v for k, v in (("n_estimators", args.n_estimators), ("max_depth", args.max_depth)) if v is not None}
    names = args.class_names.split(",") if args.class_names else None
    seg = Segmenter(config, args.classifier, params, class_names=names, backbone=backbone, device=args.device)
    run_job(seg.iter_fit(image, scribbles, channel_axis=channel_axis), desc="train", quiet=args.quiet)
    seg.save(out)
    if not args.quiet:
        counts = seg.training_stats_["labelled_pixels"]
        print(f"saved {out} ({len(seg.classes_)} classes, {seg.featurizer.n_features(seg.n_channels_)} features, "
              f"labelled pixels per class {counts}, backbone {backbone_name or 'none'})")
    return 0


def cmd_apply(args) -> int:
    """Apply a saved classifier to one file (``-o`` a file) or to files and folders (``-o`` a folder)."""
    from ..io import expand_inputs
    from ..pipeline import Segmenter

    files = expand_inputs(args.inputs)
    seg = Segmenter.load(args.model, device=args.device, allow_random_weights=args.random_weights)
    out = Path(args.output)
    if len(files) == 1 and not out.is_dir() and not str(args.output).endswith(("/", "\\")):
        _check_output_folder(out)
        run_job(seg.iter_apply_file(files[0], out, probabilities_path=args.probabilities,
                                    channel_axis=args.channel_axis), desc="apply", quiet=args.quiet)
        written = [out]
    else:
        if args.probabilities and not Path(args.probabilities).is_dir():
            raise VitsegError("With several inputs, -o and --probabilities must be folders.")
        written = run_job(seg.iter_apply_files(files, out, probabilities=bool(args.probabilities),
                                               channel_axis=args.channel_axis), desc="apply", quiet=args.quiet)
    if not args.quiet:
        for w in written:
            print(f"wrote {w}")
    return 0


def cmd_info(args) -> int:
    """Print a classifier file's metadata as JSON."""
    from ..classifiers import read_metadata

    print(json.dumps(read_metadata(args.model), indent=2, sort_keys=True))
    return 0


def cmd_demo(args) -> int:
    """Run the bundled samples end to end and print the summary."""
    from ._demo import run_demo

    result = run_demo(args.output, backbone=resolve_backbone_name(args.backbone), quiet=args.quiet)
    print(json.dumps(result, indent=2))
    return 0


def add_subcommands(subparsers) -> None:
    """Register ``train``, ``apply``, ``info`` and ``demo`` on the main parser's subparsers."""
    rf = RandomForestPixelClassifier()
    t = subparsers.add_parser("train", help="train a classifier from an image and scribbles")
    t.add_argument("image", help="image TIFF: (Y, X), (Z, Y, X), optionally with a channel axis")
    t.add_argument("--scribbles", required=True, help="labels TIFF: 0 = unlabelled, 1..K = classes")
    t.add_argument("-o", "--output", required=True, help="classifier file to write (*.vitseg)")
    t.add_argument("--backbone", default="auto",
                   help="backbone name, 'none' (classical features only) or 'auto' (best with weights present; default)")
    t.add_argument("--classifier", choices=sorted(CLASSIFIERS), default="rf",
                   help="random forest or XGBoost (default rf)")
    t.add_argument("--n-estimators", type=int, default=None,
                   help=f"trees / boosting rounds (default {rf.n_estimators})")
    t.add_argument("--max-depth", type=int, default=None, help="maximum tree depth (default: the classifier's)")
    t.add_argument("--channel-axis", type=int, default=None,
                   help="channel axis of the image (default: the TIFF's samples / channel axis, e.g. RGB)")
    t.add_argument("--vit-channels", type=ints, default=None, help="1 or 3 channels fed to the ViT, e.g. 0,1,2")
    t.add_argument("--sigmas", type=floats, default=None,
                   help="classical filter scales in px (default "
                        f"{','.join(f'{s:g}' for s in _FEATURE_DEFAULTS.sigmas)})")
    t.add_argument("--no-classical", action="store_true", help="ViT features only")
    t.add_argument("--upsample", choices=UPSAMPLERS, default=_FEATURE_DEFAULTS.upsample,
                   help=f"ViT feature upsampling (default {_FEATURE_DEFAULTS.upsample})")
    t.add_argument("--vit-pca", type=int, default=_FEATURE_DEFAULTS.vit_pca or 0,
                   help=f"reduce ViT channels to N principal components (default {_FEATURE_DEFAULTS.vit_pca}; "
                        "0 keeps all)")
    t.add_argument("--class-names", default=None, help="comma-separated names of classes 1..K")
    t.add_argument("--device", default=None, help="torch device for the ViT (default: cuda if available)")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)

    a = subparsers.add_parser("apply", help="apply a saved classifier to TIFF files or folders")
    a.add_argument("model", help="classifier file (*.vitseg)")
    a.add_argument("inputs", nargs="+", help="input TIFF files or folders")
    a.add_argument("-o", "--output", required=True, help="output labels TIFF (one input) or folder")
    a.add_argument("--probabilities", default=None,
                   help="also write per-class probabilities (float16): a TIFF path, or a folder with several inputs")
    a.add_argument("--channel-axis", type=int, default=None)
    a.add_argument("--device", default=None)
    a.add_argument("--quiet", action="store_true")
    a.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    a.set_defaults(func=cmd_apply)

    i = subparsers.add_parser("info", help="print a classifier file's metadata as JSON")
    i.add_argument("model")
    i.set_defaults(func=cmd_info)

    d = subparsers.add_parser("demo", help="run the bundled real samples end to end (train, apply, mIoU, figure)")
    d.add_argument("-o", "--output", default="vitseg-demo", help="output folder (default vitseg-demo)")
    d.add_argument("--backbone", default="auto")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
