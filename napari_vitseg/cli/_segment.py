"""``vitseg train``, ``vitseg apply``, ``vitseg info`` and ``vitseg demo``.

Handlers return 0 on success and raise :class:`~napari_vitseg._validation.VitsegError` for bad
input (:func:`napari_vitseg.cli.main` turns it into exit 2 and one line).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .._validation import VitsegError
from ..classifiers import CLASSIFIERS, RandomForestPixelClassifier
from ..features import UPSAMPLERS, FeatureConfig
from ..features.config import INTENSITY_MODES, SPATIAL_MODES, TILING_MODES
from ..pipeline.segmenter import SegmenterConfig
from ._common import floats, ints, resolve_backbone_name, run_job

__all__ = ["add_subcommands", "cmd_train", "cmd_apply", "cmd_info", "cmd_demo"]

_FEATURE_DEFAULTS = FeatureConfig()
_SEGMENTER_DEFAULTS = SegmenterConfig()


def _check_output_folder(path: Path) -> None:
    if not path.parent.exists():
        raise VitsegError(f"Output folder {str(path.parent)!r} does not exist; create it first.")


def cmd_train(args) -> int:
    """Train a classifier from an image and its scribbles and save it."""
    from contextlib import ExitStack

    from ..io import open_image
    from ..io._atomic import check_output_path

    out = check_output_path(args.output, inputs=[args.image, args.scribbles], what="-o")
    with ExitStack() as files:
        # both read lazily: the scribbles are indexed plane by plane and only the image planes
        # that hold scribbles are read
        image = files.enter_context(open_image(args.image))
        scribbles = files.enter_context(open_image(args.scribbles))
        channel_axis = args.channel_axis if args.channel_axis is not None else image.channel_axis
        return _train(args, out, image.data, scribbles.data, channel_axis, image.z_step)


#: `vitseg train` flags of the segmenter and classifier parameters (their errors name the flag).
_MODEL_FLAGS = {"n_estimators": "--n-estimators", "max_depth": "--max-depth",
                "autocontext_stages": "--autocontext-stages", "boundary_refinement": "--boundary-refinement",
                "z_anisotropy": "--z-anisotropy"}


def _flag_error(e: VitsegError) -> VitsegError:
    """The error of an out-of-range parameter, naming its ``vitseg train`` flag (others unchanged)."""
    import re

    m = re.match(r"The '(\w+)' parameter of \w+ (must .*)", str(e))
    if m is None or m.group(1) not in _MODEL_FLAGS:
        return e
    return VitsegError(f"{_MODEL_FLAGS[m.group(1)]} {m.group(2)}")


def _model_params(args) -> dict:
    """The classifier parameters of ``vitseg train``, checked with the segmenter's flags before
    anything is read or looked up; an out-of-range value names its flag."""
    params = {k: v for k, v in (("n_estimators", args.n_estimators), ("max_depth", args.max_depth)) if v is not None}
    try:
        SegmenterConfig(classifier=args.classifier, classifier_params=params,
                        autocontext_stages=args.autocontext_stages, boundary_refinement=args.boundary_refinement)
    except VitsegError as e:
        raise _flag_error(e) from None
    return params


def _train(args, out: Path, image, scribbles, channel_axis, z_step: float | None = None) -> int:
    from ..backbones import create_backbone
    from ..pipeline import Segmenter

    params = _model_params(args)
    backbone_name = resolve_backbone_name(args.backbone)
    cfg_kwargs = dict(backbone=backbone_name, upsample=args.upsample, vit_pca=args.vit_pca or None,
                      classical=not args.no_classical, intensity=args.intensity, vit_tiling=args.vit_tiling,
                      vit_budget_mib=args.vit_budget_mib, pyramid=not args.no_pyramid, spatial=args.spatial,
                      z_anisotropy=args.z_anisotropy)
    if args.sigmas is not None:
        cfg_kwargs["sigmas"] = args.sigmas
    if args.vit_channels is not None:
        cfg_kwargs["vit_channels"] = args.vit_channels
    try:
        config = FeatureConfig(**cfg_kwargs)
    except VitsegError as e:
        raise _flag_error(e) from None
    if z_step is not None and config.spatial == "auto":  # the file's voxel size decides, not the pixels
        from ..features.volume import resolve_spatial

        config = resolve_spatial(config, image, image.ndim - (channel_axis is not None), z_step=z_step)
    backbone = None
    if args.random_weights and backbone_name:
        backbone = create_backbone(backbone_name, pretrained=False, seed=0, device=args.device or "cpu")
    names = args.class_names.split(",") if args.class_names else None
    seg = Segmenter(config, args.classifier, params, class_names=names, backbone=backbone, device=args.device,
                    autocontext_stages=args.autocontext_stages, boundary_refinement=args.boundary_refinement)
    run_job(seg.iter_fit(image, scribbles, channel_axis=channel_axis), desc="train", quiet=args.quiet)
    seg.save(out, inputs=[args.image, args.scribbles])
    if not args.quiet:
        counts = seg.training_stats_["labelled_pixels"]
        fc = seg.feature_config
        planes = ""
        if len(seg.training_stats_["image_shape"]) - (channel_axis is not None) == 3 and fc.classical:
            from ..features.volume import describe_spatial

            planes = ", " + describe_spatial(fc, args.spatial == "auto",
                                             "the file's voxel size" if z_step is not None else "the stack")
        print(f"saved {out} ({len(seg.classes_)} classes, {seg.featurizer.n_features(seg.n_channels_)} features, "
              f"labelled pixels per class {counts}, backbone {backbone_name or 'none'}{planes})")
    return 0


def _plane_slice(text: str) -> slice:
    """argparse type: ``START:STOP[:STEP]`` (Python slice, 0-based) or one plane index."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            i = int(parts[0])
            return slice(i, i + 1 if i != -1 else None)
        if len(parts) > 3:
            raise ValueError
        return slice(*(int(p) if p.strip() else None for p in parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP[:STEP] or a plane index, got {text!r}") from None


def cmd_apply(args) -> int:
    """Apply a saved classifier to one file (``-o`` a file) or to files and folders (``-o`` a folder)."""
    from ..io import expand_inputs
    from ..io._atomic import same_file
    from ..io._writers import output_kind, staging_path
    from ..pipeline import Segmenter
    from ..pipeline._distributed import dask_client
    from ..pipeline.batch import iter_apply_file, iter_apply_files, output_paths

    if args.workers is not None and args.scheduler:
        raise VitsegError("Give --workers or --scheduler, not both.")
    files = expand_inputs(args.inputs)
    model = Path(args.model)
    seg = Segmenter.load(model, device=args.device, allow_random_weights=args.random_weights)
    if getattr(args, "engine", None):
        seg.classifier_.set_engine(args.engine)
        if args.workers is not None:  # local worker processes inherit the environment
            os.environ["VITSEG_ENGINE"] = args.engine
    if getattr(args, "exact", False):
        seg.prediction = "exact"  # dask workers get it through the classifier payload's load keywords
    out = Path(args.output)
    text = str(args.output)
    single = len(files) == 1 and not text.endswith(("/", "\\")) and (
        text.lower().rstrip("/").endswith(".zarr") or not out.is_dir())
    if single:
        _check_output_folder(out)
        outputs = [out] + ([Path(args.probabilities)] if args.probabilities else [])
        if args.format is not None and output_kind(out) != args.format:
            raise VitsegError(f"--format {args.format} contradicts the output name {text!r}; for one input the "
                              "output name sets the format.")
    else:
        if args.probabilities and not Path(args.probabilities).is_dir():
            raise VitsegError("With several inputs, -o and --probabilities must be folders.")
        rows = output_paths(files, out, probabilities=bool(args.probabilities), output_format=args.format or "tiff")
        outputs = [o for _, lab, prob in rows for o in (lab, prob) if o is not None]
    for o in outputs:
        if same_file(o, model) or os.path.abspath(o) == os.path.abspath(model):
            raise VitsegError(f"The output {str(o)!r} is the classifier file; choose another output name.")
    try:  # SIGTERM arrives as KeyboardInterrupt too (napari_vitseg.cli.main)
        with dask_client(args.workers, args.scheduler) as client:
            if single:
                run_job(iter_apply_file(seg, files[0], out, probabilities_path=args.probabilities,
                                        channel_axis=args.channel_axis, planes=args.planes, client=client,
                                        overlap=args.overlap),
                        desc="apply", quiet=args.quiet)
                written = [out]
            else:
                written = run_job(iter_apply_files(seg, files, out, probabilities=bool(args.probabilities),
                                                   channel_axis=args.channel_axis, output_format=args.format or "tiff",
                                                   planes=args.planes, client=client, overlap=args.overlap),
                                  desc="apply", quiet=args.quiet)
    except KeyboardInterrupt as e:
        kept = [str(staging_path(o)) for o in outputs if staging_path(o).is_dir()]
        where = f"; finished planes are kept in {', '.join(kept)}: run the same command again to resume" if kept else ""
        raise VitsegError(f"interrupted{f' ({e})' if str(e) else ''}{where}.") from None
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
    t.add_argument("--no-pyramid", action="store_true",
                   help="compute every classical scale at full resolution (default: scales of 8 px and more on a "
                        "scale-space pyramid, ~0.6x the featurising time; docs/features.md)")
    t.add_argument("--spatial", choices=SPATIAL_MODES, default=_FEATURE_DEFAULTS.spatial,
                   help="how the filters of a (Z, Y, X) stack treat its planes: '3d' computes the fine scales "
                        "(<= 2 px) of the Gaussian, gradient, Hessian and structure-tensor filters across planes, as "
                        "ilastik's 3D filters (FIB-SEM stack: mIoU 0.593 -> 0.607, ~5x the featurising time of a "
                        "plane; docs/features.md); '2d': every filter per plane; "
                        f"default {_FEATURE_DEFAULTS.spatial!r}: 3D with the z step estimated from the pixels when "
                        "neighbouring planes are as alike as pixels at most 2 px apart (a volume), else 2D (time "
                        "series, unrelated planes, thick sections); the choice is printed and stored in the file")
    t.add_argument("--z-anisotropy", type=float, default=_FEATURE_DEFAULTS.z_anisotropy, metavar="R",
                   help="with --spatial 3d: z step / pixel size of the stack (default 1: isotropic voxels; "
                        "--spatial auto estimates it)")
    t.add_argument("--upsample", choices=UPSAMPLERS, default=_FEATURE_DEFAULTS.upsample,
                   help=f"ViT feature upsampling (default {_FEATURE_DEFAULTS.upsample})")
    t.add_argument("--vit-pca", type=int, default=_FEATURE_DEFAULTS.vit_pca or 0,
                   help=f"reduce ViT channels to N principal components (default {_FEATURE_DEFAULTS.vit_pca}; "
                        "0 keeps all)")
    t.add_argument("--intensity", choices=INTENSITY_MODES, default=_FEATURE_DEFAULTS.intensity,
                   help="how image values are scaled for the ViT: 'reference' as the papers' code (uint8 / 255, "
                        "uint16 / 65535, floats as given), 'percentile' stretches each plane's 0.5-99.5 "
                        f"percentiles (for data using a fraction of their dtype's range; default "
                        f"{_FEATURE_DEFAULTS.intensity})")
    t.add_argument("--vit-tiling", choices=TILING_MODES, default=_FEATURE_DEFAULTS.vit_tiling,
                   help="'auto': the whole image in one ViT pass when it fits --vit-budget-mib, 518-px tiles "
                        f"above; 'always': tiles (default {_FEATURE_DEFAULTS.vit_tiling})")
    t.add_argument("--vit-budget-mib", type=int, default=_FEATURE_DEFAULTS.vit_budget_mib, metavar="MIB",
                   help="memory budget of whole-image ViT inference, attention of one block "
                        f"(default {_FEATURE_DEFAULTS.vit_budget_mib})")
    t.add_argument("--autocontext-stages", type=int, default=_SEGMENTER_DEFAULTS.autocontext_stages, metavar="N",
                   help="auto-context (Tu & Bai 2010): N classifier stages, each also fed the previous stage's "
                        "smoothed class probabilities; 1 = off (default "
                        f"{_SEGMENTER_DEFAULTS.autocontext_stages}; see docs/autocontext.md)")
    t.add_argument("--boundary-refinement", type=int, default=_SEGMENTER_DEFAULTS.boundary_refinement, metavar="PX",
                   help="a second classifier on the fine scales (<= 2 px) re-decides the pixels within PX of a "
                        "label boundary (edge focusing); 0 = off (default "
                        f"{_SEGMENTER_DEFAULTS.boundary_refinement}; see docs/quality.md)")
    t.add_argument("--class-names", default=None, help="comma-separated names of classes 1..K")
    t.add_argument("--device", default=None, help="torch device for the ViT (default: cuda if available)")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)

    a = subparsers.add_parser(
        "apply", help="apply a saved classifier to image files or folders (resumable; optionally on a dask cluster)")
    a.add_argument("model", help="classifier file (*.vitseg)")
    a.add_argument("inputs", nargs="+", help="input TIFF files or folders")
    a.add_argument("-o", "--output", required=True,
                   help="output labels (one input): .tif/.tiff (tiled, compressed TIFF) or .zarr/.ome.zarr (OME-Zarr); "
                        "or a folder")
    a.add_argument("--probabilities", default=None,
                   help="also write per-class probabilities (float16): a path (one input; format by name), or a "
                        "folder with several inputs")
    a.add_argument("--format", choices=["tiff", "ome-zarr"], default=None,
                   help="format of the outputs in a folder: tiff (<stem>_seg.tif; default) or ome-zarr "
                        "(<stem>_seg.ome.zarr); for one input the output name sets the format")
    a.add_argument("--planes", type=_plane_slice, default=None, metavar="START:STOP[:STEP]",
                   help="only these planes of each stack (0-based, Python slice); the output holds only them")
    a.add_argument("--workers", type=int, default=None, metavar="N",
                   help="predict on N local worker processes (dask.distributed LocalCluster, one thread each)")
    a.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="predict on a running dask.distributed cluster (e.g. tcp://host:8786; SLURM via "
                        "dask-jobqueue, Kubernetes); the inputs must be on a filesystem the workers share")
    a.add_argument("--channel-axis", type=int, default=None)
    a.add_argument("--engine", choices=["auto", "sklearn", "compiled"], default=None,
                   help="how the trees are evaluated (same labels): auto (default, or $VITSEG_ENGINE), sklearn "
                        "(the library's own predictor) or compiled (C code built locally on first use)")
    a.add_argument("--exact", action="store_true",
                   help="classify every pixel with every tree (default: coarse-to-fine in pixels and trees, "
                        "0.2-0.4 of the forest work, >= 99.9%% of the labels; or $VITSEG_PREDICTION=exact)")
    a.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="featurise the next row band while this one is predicted, the cores split between the "
                        "two (same labels; 1.3-1.5x the throughput on 2 cores; default on, --no-overlap or "
                        "$VITSEG_OVERLAP=0 turn it off; see docs/apply_speed.md)")
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
