"""Benchmark: segmentation quality (mIoU) from scribbles alone, ours vs in-run baselines (issue 10).

Run ``python benchmarks/bench_quality.py [--data DIR] [--sets ...] [--methods ...] [--quick]``
(``--list`` prints the sets and methods). Every set of ``--data`` (default ``../shared/data``
next to the repository, or ``$VITSEG_SHARED_DATA``) that has a dense ``ground_truth.tif`` is
used; a set without ``scribbles.tif`` gets them from ``../tools/make_scribbles.py`` (seed 0) in
a cache folder (``--cache``), and the run says so. ``--scribble-seeds N`` runs every set with N
scribble draws (its own scribbles and ``make_scribbles.py --seed 1..N-1``, as if N users had
painted it) and adds a table over the draws: how much of a margin is the one draw's luck.

What is measured, per set and method:

- mIoU over the ground-truth classes and the IoU of each class, with
  :func:`napari_vitseg.metrics.iou_per_class` / :func:`~napari_vitseg.metrics.mean_iou` (the
  project's metric): every pixel whose ground truth is not 0 counts, *including the scribbled
  pixels* (the data README: ground truth 0 = ignore; these sets have none). A stack is scored
  over all its planes together.
- train s: wall time of training from the raw image (features of the scribbled planes +
  classifier fit); apply s: wall time of segmenting the whole image or stack from the raw
  image (features recomputed, as ``vitseg apply`` does). Single runs, on whatever else the
  machine is doing: the times are indications, the mIoU is the result.

Methods:

- ``default``: ``napari_vitseg.Segmenter()`` as shipped: default ``FeatureConfig`` (classical
  filters only: no pretrained ViT weights can be had on the benchmark machines, so no ViT
  features; this is what every user without weights gets) and the default classifier.
- candidates: the named entries of :data:`METHODS`, each a few keyword changes of
  ``Segmenter`` / ``SegmenterConfig`` / ``FeatureConfig`` (adding one is one line). An entry
  whose keyword or value the installed library does not accept is reported as "not available
  in this version", never dropped. ``smooth`` is a benchmark-side post-process (Gaussian
  smoothing of each class probability, in the plane, before the argmax), not a library option.
- in-run baselines (same images, scribbles and metric, run in the same process):

  * ``skimage_gallery``: scikit-image's documented usage, the gallery example "Trainable
    segmentation using local features and random forests" (``plot_trainable_segmentation``):
    ``multiscale_basic_features(intensity=True, edges=False, texture=True, sigma_min=1,
    sigma_max=16, channel_axis=-1 for RGB)`` + ``RandomForestClassifier(n_estimators=50,
    n_jobs=-1, max_depth=10, max_samples=0.05)`` through ``future.fit_segmenter`` /
    ``predict_segmenter``; we add ``random_state=0`` for repeatability.
  * ``skimage_rf100``: ``multiscale_basic_features`` with all its defaults (channel_axis for
    RGB) + a plain ``RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0)``.
  * ``convpaint``: napari-convpaint from PyPI, run in a child process from a separate
    ``pip install --no-deps --target`` folder (``--convpaint-path``, default
    ``/tmp/convpaint``) so this environment is never changed. Its default model (VGG16) needs
    ImageNet weights, which cannot be had here, so it runs its weight-free ``gaussian`` alias
    with every other parameter at Convpaint's defaults (CatBoost classifier). If it is not
    installed or fails, the column says why.
  * ``isb_rf`` / ``isb_xgb``: interactive-seg-backend (ISB, tldr-group; the peer whose numbers
    issue 10 quotes), run from its source (``--isb-path``, default
    ``/tmp/interactive-seg-backend``: ``git clone https://github.com/tldr-group/interactive-seg-backend``;
    not on PyPI) in a child process with this environment's packages. Its defaults:
    ``TrainingConfig(feature_config=FeatureConfig())`` (Weka-style features, sigmas 1-16,
    membrane projections; 58 channels for a grey image), ``random_forest`` (scikit-learn's
    defaults, ``class_weight='balanced'``) or ``xgb`` (XGBoost's defaults), with
    ``random_state`` = the classifier seed. One change: ISB keeps ``cpu_count() - 2`` cores for
    itself, 0 on a 2-core machine (which scikit-learn refuses), so the child sets all cores, as
    our forest and the scikit-image baselines use. Stacks: its ``get_training_data`` over the
    scribbled planes, ``apply_`` per plane.

  Stacks are segmented plane by plane (2D) by every method unless the method says 3D.

Output: a set x method mIoU table (and its mean over sets), a long table (per-class IoU,
train s, apply s), the margin of ``default`` over the best in-run baseline per set, the ISB
numbers quoted in issue 10 (for context; ``isb_rf`` / ``isb_xgb`` re-run them), peak RSS, and a JSON of everything
(machine, versions, seed, git commit) in ``benchmarks/results/bench_quality_<time>.json``.
``--quick`` crops every set to about 256 x 256 (a window whose scribbles hold every class)
for smoke runs; its numbers are not the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_vitseg.metrics import iou_per_class, mean_iou  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(os.environ.get("VITSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-vitseg" / "bench_quality"
DEFAULT_CONVPAINT = Path(os.environ.get("VITSEG_CONVPAINT_PATH", "/tmp/convpaint"))
#: interactive-seg-backend's source folder (``--isb-path`` sets it for the run).
ISB_PATH = Path(os.environ.get("VITSEG_ISB_PATH", "/tmp/interactive-seg-backend"))
SEED = 0
QUICK_SIZE = 256

#: The six classical families of napari-vitseg 0.1.0 (the default); newer families are extra.
BASE_FAMILIES = ("gaussian", "gradient", "laplacian", "hessian", "structure", "dog")

#: scikit-image's ``multiscale_basic_features`` families (intensity, edges, texture) in our names,
#: plus the edge-preserving ``bilateral`` of the current default.
LEAN_FAMILIES = ("gaussian", "gradient", "hessian", "bilateral")

#: Candidate methods: name -> changes to the default. Keys: ``classifier`` ('rf' / 'xgb'),
#: ``classifier_params`` (merged over the default), ``features`` (FeatureConfig keywords),
#: ``add_families`` (feature families added to the default's), ``config`` (other SegmenterConfig
#: fields), ``smooth`` (benchmark-side probability smoothing,
#: Gaussian sigma in px, before the argmax), ``prior`` ('em': benchmark-side prior adjustment, see
#: :func:`prior_adjusted_labels`), ``note``. An entry the installed library does not
#: accept is reported "not available in this version".
METHODS: dict[str, dict] = {
    "default": {"note": "Segmenter() as shipped"},
    "xgb": {"classifier": "xgb"},
    "rf_log2": {"classifier_params": {"max_features": "log2"}},
    "rf_mf0.3": {"classifier_params": {"max_features": 0.3}},
    "rf_leaf3": {"classifier_params": {"min_samples_leaf": 3}},
    "rf_depth16": {"classifier_params": {"max_depth": 16}},
    "rf_allpx": {"classifier_params": {"max_samples_per_class": None}},
    "rf_300": {"classifier_params": {"n_estimators": 300}},
    "rf_bootstrap": {"classifier_params": {"max_samples": None},
                     "note": "Breiman's bootstrap (as many draws as pixels): the default before max_samples=0.5 (run 15)"},
    "rf_50": {"classifier_params": {"n_estimators": 50}, "note": "half the trees: 2x faster apply (issue 13)"},
    "rf_50_depth12": {"classifier_params": {"n_estimators": 50, "max_depth": 12}},
    "smooth1": {"smooth": 1.0},
    "smooth2": {"smooth": 2.0},
    "xgb_smooth1": {"classifier": "xgb", "smooth": 1.0},
    "sigmas_to_64": {"features": {"sigmas": (1, 2, 4, 8, 16, 32, 64)}},
    "sigmas_from_0.5": {"features": {"sigmas": (0.5, 1, 2, 4, 8, 16)}, "note": "skimage's default scales"},
    "leaf3_from_0.5": {"features": {"sigmas": (0.5, 1, 2, 4, 8, 16)}, "classifier_params": {"min_samples_leaf": 3}},
    "autocontext2": {"config": {"autocontext_stages": 2}},
    "autocontext3": {"config": {"autocontext_stages": 3}},
    "families_0.1": {"features": {"families": BASE_FAMILIES}, "note": "the six families of 0.1.0"},
    "+variance": {"add_families": ("variance",)},
    "+membrane": {"add_families": ("membrane",)},
    "+context": {"add_families": ("context",)},
    "+bilateral": {"add_families": ("bilateral",)},
    "+laplacian": {"add_families": ("laplacian",), "note": "the default families + laplacian (nuclei_fluorescence draw 2, session 22)"},
    "families_all": {"features": {"families": "ALL"},
                     "note": "every family the installed library knows (none beyond the six: not available)"},
    # issue 10, nuclei_fluorescence / flyem: fewer, finer families (scikit-image's intensity + edges +
    # texture, i.e. gaussian + gradient + hessian eigenvalues, from sigma 0.5) plus bilateral
    "lean": {"features": {"families": LEAN_FAMILIES}, "note": "gaussian, gradient, hessian, bilateral"},
    "lean_from_0.5": {"features": {"families": LEAN_FAMILIES, "sigmas": (0.5, 1, 2, 4, 8, 16)},
                      "note": "gaussian, gradient, hessian, bilateral at sigmas 0.5-16"},
    "lean+structure_from_0.5": {"features": {"families": LEAN_FAMILIES + ("structure",),
                                             "sigmas": (0.5, 1, 2, 4, 8, 16)}},
    "lean+laplacian_from_0.5": {"features": {"families": LEAN_FAMILIES + ("laplacian",),
                                             "sigmas": (0.5, 1, 2, 4, 8, 16)}},
    # issue 13: version 5 computes the scales >= 8 px on a scale-space pyramid; this is version 4's way
    "no_pyramid": {"features": {"pyramid": False}, "note": "every scale at full resolution (feature config v4)"},
    # issue 10, session 19: the largest Gaussian scale kept (benchmarks/quality_screens.py --screens scales)
    "sigmas_to_4": {"features": {"sigmas": (0.5, 1, 2, 4)}, "note": "no 8 or 16 px scales"},
    "sigmas_to_8": {"features": {"sigmas": (0.5, 1, 2, 4, 8)}, "note": "no 16 px scale"},
    "sigmas_half_octave": {"features": {"sigmas": (0.5, 0.7, 1, 1.4, 2, 2.8, 4, 8, 16)},
                           "note": "half-octave steps up to 4 px (docs/quality.md Run 18)"},
    # issue 10, session 19: boundary refinement (pipeline/_boundary.py), on by default from feature file format 3
    "no_boundary": {"config": {"boundary_refinement": 0}, "note": "without boundary refinement (the default before)"},
    "boundary1": {"config": {"boundary_refinement": 1}},
    "boundary3": {"config": {"boundary_refinement": 3}},
    # session 20: the band around the unfiltered first labels, as classifier files of format 3 refine
    "no_majority": {"majority": 1, "note": "boundary band without the majority filter (format 3)"},
    "prior_em": {"prior": "em", "note": "EM prior adjustment of the class probabilities (Saerens 2002)"},
    # session 20: 3D filters for stacks (features/volume.py): the fine scales (<= 2 px) across planes;
    # the single images compute what the default does
    "features3d": {"features": {"spatial": "3d"}, "note": "fine scales across planes on stacks (FeatureConfig "
                   "spatial='3d'); single images as the default"},
    # session 21: the default spatial='auto' chooses 3D for volumes (features/volume.py resolve_spatial);
    # this is the default before it, every filter per plane
    "features2d": {"features": {"spatial": "2d"}, "note": "every filter per plane (the default before "
                   "spatial='auto')"},
}

#: Baselines run in the same process / a child process; they set the margin.
BASELINES = ("skimage_gallery", "skimage_rf100", "convpaint", "isb_rf", "isb_xgb")
#: Baselines with no classifier seed of ours (run once, whatever ``--repeats`` says).
UNSEEDED = ("convpaint",)
#: The interactive-seg-backend baselines and the ISB classifier name each runs.
ISB_CLASSIFIERS = {"isb_rf": "random_forest", "isb_xgb": "xgb"}

#: Quoted in issue 10 (interactive-seg-backend, 58 Weka-style features), for context; ``isb_rf`` /
#: ``isb_xgb`` run it in the same run.
ISB_ISSUE10 = {
    "tem_nanoparticles": {"ISB RF": 0.865, "ISB XGB": 0.901},
    "bbbc039_u2os_nuclei": {"ISB RF": 0.965, "ISB XGB": 0.953},
    "flyem_medulla_fibsem": {"ISB RF": 0.566, "ISB XGB": 0.569},
    "sandstone_xrm": {"ISB RF": 0.750, "ISB XGB": 0.816},
    "dsb2018_histology": {"ISB RF": 0.770, "ISB XGB": 0.726},
}


class NotAvailable(Exception):
    """A method the installed library (or environment) cannot run."""


# -- data ---------------------------------------------------------------------------------------
def make_scribbles(gt_path: Path, cache: Path, tools: Path, seed: int = SEED, why: str = "no scribbles in the data") -> Path:
    """Scribbles drawn from a ground truth: ``make_scribbles.py --seed seed`` (its default
    brush settings, as the shared sets' own scribbles were drawn) into ``cache``; kept there and
    reused while newer than the ground truth."""
    name = gt_path.parent.name
    out = cache / name / ("scribbles.tif" if seed == SEED else f"scribbles_seed{seed}.tif")
    if out.exists() and out.stat().st_mtime >= gt_path.stat().st_mtime:
        print(f"  {name}: {why}; using {out} (made earlier by "
              f"{tools / 'make_scribbles.py'} --seed {seed})")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(tools / "make_scribbles.py"), str(gt_path), str(out), "--seed", str(seed),
           "--stats", str(out.with_name(out.stem + "_stats.json"))]
    print(f"  {name}: {why}; made them: {' '.join(cmd)}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def find_sets(data: Path, cache: Path, names=None, scribble_seeds: int = 1) -> list[dict]:
    """Every folder of ``data`` with a ground_truth.tif (optionally only ``names``).

    With ``scribble_seeds`` > 1, each set comes once per scribble draw: draw 0 is the set's own
    ``scribbles.tif`` (or ``make_scribbles.py --seed 0`` where it has none), draw k > 0 is
    ``make_scribbles.py --seed k`` (a different user's strokes on the same image). An entry's
    ``label`` is the set's name for draw 0 and ``"<name> @s<k>"`` for draw k; ``name`` is the set.
    """
    sets = []
    for d in sorted(p for p in data.iterdir() if p.is_dir()):
        if names and d.name not in names:
            continue
        gt_path = d / "ground_truth.tif"
        if not gt_path.exists():
            continue
        scr_path = d / "scribbles.tif"
        made = False
        if not scr_path.exists():
            scr_path = make_scribbles(gt_path, cache, data.parent / "tools")
            made = True
        entry = {"name": d.name, "image": d / "image.tif", "ground_truth": gt_path}
        sets.append({**entry, "label": d.name, "draw": 0, "scribbles": scr_path, "scribbles_made": made})
        for k in range(1, scribble_seeds):
            path = make_scribbles(gt_path, cache, data.parent / "tools", seed=k, why=f"scribble draw {k}")
            sets.append({**entry, "label": f"{d.name} @s{k}", "draw": k, "scribbles": path, "scribbles_made": True})
    missing = set(names or ()) - {s["name"] for s in sets}
    if missing:
        raise SystemExit(f"--sets: no folder with a ground_truth.tif named {sorted(missing)} in {data}")
    return sets


def channel_axis_of(image: np.ndarray, labels: np.ndarray, name: str) -> int | None:
    """The image's channel axis by the data README's convention: -1 when the image has one axis
    more than its labels (RGB, 'S' last), None when the shapes are equal; else SystemExit."""
    if image.ndim == labels.ndim + 1 and image.shape[:-1] == labels.shape:
        return -1
    if image.shape == labels.shape:
        return None
    raise SystemExit(f"{name}: image {image.shape} does not match the labels {labels.shape}")


def load_set(entry: dict) -> dict:
    """Read and check one set; returns arrays and a description.

    The data README's conventions: image (Y, X), (Y, X, 3) RGB or (Z, Y, X); scribbles uint8
    0 = unlabelled; ground truth uint8 1..K with 0 = ignore. A channel axis is the image axis
    the labels lack (last, 'S' in the TIFF's axes).
    """
    with tifffile.TiffFile(entry["image"]) as tf:
        image = tf.asarray()
        axes = tf.series[0].axes
    gt = tifffile.imread(entry["ground_truth"])
    scr = tifffile.imread(entry["scribbles"])
    if gt.shape != scr.shape:
        raise SystemExit(f"{entry['name']}: ground truth {gt.shape} and scribbles {scr.shape} differ")
    channel_axis = channel_axis_of(image, gt, entry["name"])
    classes = [int(c) for c in np.unique(gt) if c != 0]
    scr_classes = [int(c) for c in np.unique(scr) if c != 0]
    if not set(scr_classes) <= set(classes):
        raise SystemExit(f"{entry['name']}: scribble classes {scr_classes} not in the ground truth's {classes}")
    return {**entry, "image_arr": image, "gt": gt, "scr": scr, "axes": axes, "channel_axis": channel_axis,
            "classes": classes, "stack": gt.ndim == 3}


def quick_crop(ds: dict, size: int = QUICK_SIZE) -> dict:
    """Crop (Y, X) to at most ``size`` x ``size``: the first of centre / corners whose scribbles hold
    every class of the whole ground truth (all planes of a stack are kept)."""
    gt, scr = ds["gt"], ds["scr"]
    ny, nx = gt.shape[-2:]
    h, w = min(size, ny), min(size, nx)
    starts = [((ny - h) // 2, (nx - w) // 2), (0, 0), (0, nx - w), (ny - h, 0), (ny - h, nx - w)]
    all_classes = set(np.unique(gt).tolist()) - {0}

    def missing(start):
        sl = (..., slice(start[0], start[0] + h), slice(start[1], start[1] + w))
        return len(all_classes - set(np.unique(scr[sl]).tolist()))

    y0, x0 = min(starts, key=missing)  # the first window with fewest unscribbled classes
    if missing((y0, x0)):
        print(f"  {ds['name']}: no {h}x{w} window has scribbles of every class; cropped where fewest lack them")
    sl = (..., slice(y0, y0 + h), slice(x0, x0 + w))
    img_sl = sl + (slice(None),) if ds["channel_axis"] is not None else sl
    out = dict(ds)
    out["image_arr"] = np.ascontiguousarray(ds["image_arr"][img_sl])
    out["gt"] = np.ascontiguousarray(gt[sl])
    out["scr"] = np.ascontiguousarray(scr[sl])
    out["classes"] = [int(c) for c in np.unique(out["gt"]) if c != 0]
    out["crop"] = [int(y0), int(x0), int(h), int(w)]
    return out


def describe(ds: dict) -> str:
    img, scr = ds["image_arr"], ds["scr"]
    cov = float((scr > 0).mean())
    extra = f", crop y0,x0,h,w={ds['crop']}" if "crop" in ds else ""
    made = f" (made by make_scribbles.py, seed {ds.get('draw', SEED)})" if ds["scribbles_made"] else ""
    return (f"{ds.get('label', ds['name'])}: image {img.shape} {img.dtype} axes {ds['axes']}, "
            f"channel_axis={ds['channel_axis']}, {'stack: 2D per plane' if ds['stack'] else '2D'}, "
            f"classes {ds['classes']} (ground truth 0 = ignore: {int((ds['gt'] == 0).sum())} px), "
            f"scribbles {cov:.2%} of pixels{made}{extra}")


# -- scoring --------------------------------------------------------------------------------
def score(pred: np.ndarray, ds: dict) -> dict:
    """mIoU and per-class IoU with the project's metric (truth 0 ignored, scribbled pixels included)."""
    per = iou_per_class(pred, ds["gt"], ds["classes"])
    return {"miou": mean_iou(pred, ds["gt"], ds["classes"]), "iou": {str(k): v for k, v in per.items()}}


def smooth_labels(proba: np.ndarray, classes: np.ndarray, sigma: float, stack: bool) -> np.ndarray:
    """Gaussian-smooth each class probability within the plane, then argmax.

    Parameters
    ----------
    proba : ndarray, (K, Y, X) or (K, Z, Y, X)
    classes : ndarray of int, (K,)
    sigma : float
        Gaussian sigma in pixels (in Y and X; 0 along Z).
    stack : bool
        Whether ``proba`` has a Z axis.

    Returns
    -------
    ndarray of uint8, spatial shape
    """
    from scipy.ndimage import gaussian_filter

    sig = (0.0, sigma, sigma) if stack else (sigma, sigma)
    sm = np.stack([gaussian_filter(p.astype(np.float32), sig) for p in proba])
    return np.asarray(classes, dtype=np.uint8)[np.argmax(sm, axis=0)]


def prior_adjusted_labels(proba: np.ndarray, classes: np.ndarray, iters: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Re-estimate the class priors of the image by EM and argmax the adjusted posteriors.

    Saerens, Latinne & Decaestecker, "Adjusting the outputs of a classifier to new a priori
    probabilities: a simple procedure", Neural Computation 14 (2002). The default forest is
    class-balanced, so its training prior is uniform; each pixel's posterior is multiplied by
    ``pi_k / (1 / K)`` and renormalised, with ``pi`` the mean adjusted posterior over the image,
    iterated to a fixed point.

    Parameters
    ----------
    proba : ndarray, (K, ...) float
        Class probabilities, class axis first (as ``SegmentationResult.probabilities``).
    classes : ndarray of int, (K,)
    iters, tol : int, float
        EM iterations at most, and the stop tolerance on the priors.

    Returns
    -------
    ndarray of uint8, ``proba.shape[1:]``
    """
    k = proba.shape[0]
    p = proba.reshape(k, -1).astype(np.float64)
    pt = np.full((k, 1), 1.0 / k)
    pi = pt.copy()
    q = p
    for _ in range(iters):
        q = p * (pi / pt)
        q /= np.maximum(q.sum(0, keepdims=True), 1e-12)
        new = q.mean(1, keepdims=True)
        done = np.abs(new - pi).max() < tol
        pi = new
        if done:
            break
    return np.asarray(classes, dtype=np.uint8)[np.argmax(q, axis=0)].reshape(proba.shape[1:])


# -- our methods ------------------------------------------------------------------------------
def build_config(spec: dict, seed: int = SEED):
    """The SegmenterConfig of a METHODS entry (classifier ``random_state=seed``), or
    :class:`NotAvailable` naming what is missing."""
    from napari_vitseg import SegmenterConfig
    from napari_vitseg._validation import VitsegError
    from napari_vitseg.features import FeatureConfig, config

    fkw = dict(spec.get("features", {}))
    if spec.get("add_families"):
        have = tuple(fkw.get("families", FeatureConfig().families))
        if set(spec["add_families"]) <= set(have):
            raise NotAvailable(f"{', '.join(spec['add_families'])} already in the default families {have}")
        fkw["families"] = have + tuple(f for f in spec["add_families"] if f not in have)
    if fkw.get("families") == "ALL":
        every = getattr(config, "ALL_FAMILIES", config.CLASSICAL_FAMILIES)
        if not set(every) - set(BASE_FAMILIES):
            raise NotAvailable(f"no feature families beyond {BASE_FAMILIES} in this version")
        fkw["families"] = tuple(every)
    try:
        features = FeatureConfig(**fkw)
    except TypeError as e:
        raise NotAvailable(f"FeatureConfig: {e}") from None
    except VitsegError as e:
        raise NotAvailable(f"FeatureConfig: {e}") from None
    base = SegmenterConfig()
    params = {**base.classifier_params, **spec.get("classifier_params", {})}
    if seed != SEED:  # SEED is the classifiers' default random_state
        params["random_state"] = seed
    try:
        return SegmenterConfig(features=features, classifier=spec.get("classifier", base.classifier),
                               classifier_params=params, **spec.get("config", {}))
    except TypeError as e:
        raise NotAvailable(f"SegmenterConfig: {e}") from None
    except VitsegError as e:
        raise NotAvailable(f"SegmenterConfig: {e}") from None


def run_ours(ds: dict, spec: dict, seed: int = SEED) -> dict:
    """Train a Segmenter from a METHODS entry on the scribbles, segment the whole image, score it."""
    from napari_vitseg import Segmenter

    cfg = build_config(spec, seed)
    seg = Segmenter.from_config(cfg)
    if seg.config != cfg:  # a config field that from_config does not pass on would be silently ignored
        raise NotAvailable("Segmenter.from_config does not keep every field of the entry's SegmenterConfig")
    ca = ds["channel_axis"]
    t0 = time.perf_counter()
    seg.fit(ds["image_arr"], ds["scr"], channel_axis=ca)
    if "majority" in spec:  # the majority window of the boundary band, as a loaded file's metadata sets it
        if not hasattr(seg, "boundary_majority_"):
            raise NotAvailable("no majority filter of the boundary band in this version")
        seg.boundary_majority_ = int(spec["majority"]) if seg.boundary_classifier_ is not None else 1
    t1 = time.perf_counter()
    sigma, prior = spec.get("smooth"), spec.get("prior")
    res = seg.segment(ds["image_arr"], channel_axis=ca, probabilities=bool(sigma or prior))
    if prior:
        labels = prior_adjusted_labels(res.probabilities, res.classes)
    else:
        labels = smooth_labels(res.probabilities, res.classes, sigma, ds["stack"]) if sigma else res.labels
    t2 = time.perf_counter()
    return {**score(labels, ds), "train_s": t1 - t0, "apply_s": t2 - t1, "labels": labels}


# -- baselines ------------------------------------------------------------------------------
def _planes(arr: np.ndarray, stack: bool):
    return list(arr) if stack else [arr]


def run_skimage(ds: dict, variant: str, seed: int = SEED) -> dict:
    """scikit-image multiscale_basic_features + scikit-learn random forest (see the module docstring)."""
    from functools import partial

    from skimage import feature, future
    from sklearn.ensemble import RandomForestClassifier

    ca = ds["channel_axis"]
    if variant == "skimage_gallery":
        feats = partial(feature.multiscale_basic_features, intensity=True, edges=False, texture=True,
                        sigma_min=1, sigma_max=16, channel_axis=ca)
        clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10, max_samples=0.05, random_state=seed)
    else:
        feats = partial(feature.multiscale_basic_features, channel_axis=ca)
        clf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed)
    images = _planes(ds["image_arr"], ds["stack"])
    scrs = _planes(ds["scr"], ds["stack"])
    t0 = time.perf_counter()
    xs, ys = [], []
    for img, s in zip(images, scrs, strict=True):
        if s.any():
            f = feats(img)
            xs.append(f[s > 0])
            ys.append(s[s > 0])
    # future.fit_segmenter is clf.fit(features[labels > 0], labels[labels > 0]); over planes:
    clf.fit(np.concatenate(xs), np.concatenate(ys))
    t1 = time.perf_counter()
    pred = np.stack([future.predict_segmenter(feats(img), clf) for img in images])
    pred = pred if ds["stack"] else pred[0]
    t2 = time.perf_counter()
    return {**score(pred.astype(np.uint8), ds), "train_s": t1 - t0, "apply_s": t2 - t1, "labels": pred}


CONVPAINT_CHILD = r"""
import json, sys, time, warnings, contextlib, io
sys.path.insert(0, sys.argv[1])
import numpy as np
warnings.filterwarnings("ignore")
with contextlib.redirect_stdout(io.StringIO()):
    from napari_convpaint.convpaint_model import ConvpaintModel
    from importlib.metadata import version
img = np.load(sys.argv[2]); scr = np.load(sys.argv[3]); rgb = sys.argv[5] == "rgb"
log = io.StringIO()
with contextlib.redirect_stdout(log):
    m = ConvpaintModel(alias="gaussian")
    if rgb:
        img = np.moveaxis(img, -1, 0)  # Convpaint wants channels first
        m.set_param("channel_mode", "rgb", ignore_warnings=True)
    t0 = time.perf_counter(); m.train(img, scr); t1 = time.perf_counter()
    seg = m.segment(img); t2 = time.perf_counter()
np.save(sys.argv[4], np.asarray(seg).astype(np.uint8))
try:
    v = version("napari-convpaint")
except Exception:
    import napari_convpaint; v = getattr(napari_convpaint, "__version__", "?")
hwm = [int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmHWM")]
print(json.dumps({"train_s": t1 - t0, "apply_s": t2 - t1, "version": v, "peak_rss_bytes": (hwm or [None])[0],
                  "fe": m.get_param("fe_name"), "scalings": list(m.get_param("fe_scalings"))}))
"""


def run_convpaint(ds: dict, path: Path) -> dict:
    """napari-convpaint's weight-free 'gaussian' model in a child process (see the module docstring)."""
    if not (path / "napari_convpaint").is_dir():
        raise NotAvailable(f"napari-convpaint is not installed in {path} (pip download napari-convpaint --no-deps; "
                           f"pip install --no-deps --target {path} <wheel> catboost einops omegaconf "
                           "'antlr4-python3-runtime==4.9.3' napari-guitils napari-annotation-project)")
    mode = "rgb" if ds["channel_axis"] is not None else "grey"
    r = run_child(ds, "napari-convpaint", CONVPAINT_CHILD, path, mode)
    return {**r, "detail": f"napari-convpaint {r['version']}, fe {r['fe']} scalings {r['scalings']}"}


def run_child(ds: dict, peer: str, script: str, path: Path, *args: str) -> dict:
    """Run a peer's ``script`` in a child process: ``python -c script path img.npy scr.npy seg.npy
    *args``; the child saves the segmentation (the ground truth's shape) to ``seg.npy`` and prints
    a JSON line with at least ``train_s`` and ``apply_s`` (and ``peak_rss_bytes``, its own
    VmHWM). Returns that JSON's fields, the score and ``labels``; a failing child or a wrong shape
    raise :class:`NotAvailable` naming ``peer``."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "img.npy", ds["image_arr"])
        np.save(tmp / "scr.npy", ds["scr"])
        r = subprocess.run([sys.executable, "-c", script, str(path), str(tmp / "img.npy"), str(tmp / "scr.npy"),
                            str(tmp / "seg.npy"), *args], capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise NotAvailable(f"{peer} failed: {last}")
        info = json.loads(r.stdout.strip().splitlines()[-1])
        pred = np.load(tmp / "seg.npy")
    if pred.shape != ds["gt"].shape:
        raise NotAvailable(f"{peer} returned shape {pred.shape} for labels {ds['gt'].shape}")
    return {**info, **score(pred, ds), "peak_rss_bytes": info.get("peak_rss_bytes"), "labels": pred}


ISB_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import interactive_seg_backend as isb
import interactive_seg_backend.core as core
import interactive_seg_backend.features.multiscale_classical_cpu as mcc
from interactive_seg_backend.core import apply_, get_model, get_training_data, shuffle_sample_training_data, train
core.N_ALLOWED_CPUS = mcc.N_ALLOWED_CPUS = os.cpu_count()  # ISB's cpu_count() - 2 is 0 on 2 cores
img, scr = np.load(sys.argv[2]), np.load(sys.argv[3])
clf, seed, stack = sys.argv[5], int(sys.argv[6]), sys.argv[7] == "stack"
np.random.seed(seed)  # ISB shuffles the training pixels with numpy's global generator
cfg = isb.TrainingConfig(feature_config=isb.FeatureConfig(), classifier=clf, classifier_params={"random_state": seed})
imgs, scrs = (list(img), list(scr)) if stack else ([img], [scr])
t0 = time.perf_counter()
feats = [isb.featurise(i, cfg) if s.any() else None for i, s in zip(imgs, scrs)]
fit, target = get_training_data([f for f in feats if f is not None], [s for s in scrs if s.any()])
fit, target = shuffle_sample_training_data(fit, target, cfg.shuffle_data, cfg.n_samples)
model = train(get_model(cfg.classifier, cfg.classifier_params, False), fit, target, None)
t1 = time.perf_counter()
classes = np.unique(target)  # apply_ gives the index of the model's class, in sorted order
seg = [classes[apply_(model, f if f is not None else isb.featurise(i, cfg))[0]] for i, f in zip(imgs, feats)]
t2 = time.perf_counter()
np.save(sys.argv[4], (np.stack(seg) if stack else seg[0]).astype(np.uint8))
hwm = [int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmHWM")]
print(json.dumps({"train_s": t1 - t0, "apply_s": t2 - t1, "n_features": int(fit.shape[1]),
                  "peak_rss_bytes": (hwm or [None])[0]}))
"""


def isb_version(path: Path) -> str | None:
    """interactive-seg-backend's version (its pyproject.toml) and git commit, if ``path`` has them."""
    import re

    toml = path / "pyproject.toml"
    if not toml.is_file():
        return None
    m = re.search(r'^version\s*=\s*"([^"]+)"', toml.read_text(), re.M)
    # only its own clone: git -C in a plain copy would walk up to an enclosing repository's commit
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True) \
        if (path / ".git").exists() else None
    return (m.group(1) if m else "?") + (f" (git {head.stdout.strip()[:12]})" if head and head.returncode == 0 else "")


def run_isb(ds: dict, name: str, path: Path, seed: int = SEED) -> dict:
    """interactive-seg-backend's defaults with its random forest (``isb_rf``) or XGBoost
    (``isb_xgb``), in a child process (see the module docstring)."""
    if not (path / "interactive_seg_backend" / "__init__.py").is_file():
        raise NotAvailable(f"interactive-seg-backend is not in {path} (git clone "
                           f"https://github.com/tldr-group/interactive-seg-backend {path}, or --isb-path)")
    clf = ISB_CLASSIFIERS[name]
    r = run_child(ds, "interactive-seg-backend", ISB_CHILD, path, clf, str(seed), "stack" if ds["stack"] else "image")
    return {**r, "detail": f"interactive-seg-backend {isb_version(path)}, {clf}, {r['n_features']} features"}


def warm_up() -> None:
    """One untimed tiny run of ours and of scikit-image (imports, thread pools, first-call costs)."""
    rng = np.random.default_rng(SEED)
    img = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    gt = np.ones((64, 64), np.uint8)
    gt[:, 32:] = 2
    scr = np.zeros_like(gt)
    scr[10:50, 5:10], scr[10:50, 50:55] = 1, 2
    ds = {"image_arr": img, "gt": gt, "scr": scr, "channel_axis": None, "stack": False, "classes": [1, 2]}
    run_ours(ds, METHODS["default"])
    run_skimage(ds, "skimage_rf100")


def run_method(ds: dict, name: str, convpaint_path: Path = DEFAULT_CONVPAINT, seed: int = SEED,
               keep_labels: bool = False) -> dict:
    """One (set, method) cell: a result dict with 'status' 'ok', 'not available' or 'error'.

    ``seed`` is the classifier's ``random_state`` (ours and scikit-learn's; Convpaint keeps its own).
    With ``keep_labels`` an 'ok' result keeps the segmentation (``'labels'``, the ground truth's shape).
    """
    try:
        if name in METHODS:
            r = run_ours(ds, METHODS[name], seed)
        elif name in ("skimage_gallery", "skimage_rf100"):
            r = run_skimage(ds, name, seed)
        elif name == "convpaint":
            r = run_convpaint(ds, convpaint_path)
        elif name in ISB_CLASSIFIERS:
            r = run_isb(ds, name, ISB_PATH, seed)
        else:
            raise KeyError(name)
        labels = r.pop("labels")
        return {"status": "ok", **r, **({"labels": labels} if keep_labels else {})}
    except NotAvailable as e:
        return {"status": "not available", "reason": str(e)}
    except Exception as e:  # keep the other cells; the error goes into the table and the JSON
        traceback.print_exc()
        return {"status": "error", "reason": f"{type(e).__name__}: {e}"}


# -- correction rounds ---------------------------------------------------------------------------
#: make_scribbles.py settings of a correction round: a finer brush (radius 1-2 px) and a third of
#: the first strokes' pixel budget (0.5 % of an annotated plane, shared by the classes present).
CORRECTION_ARGS = ("--target", "0.005", "--rmin", "1", "--rmax", "2")
#: make_scribbles.py seed of correction round r (the same for every method and set).
CORRECTION_SEED = 1000
#: A user corrects what is visibly wrong: wrong regions at least 2 * r + 1 px wide (what survives a
#: binary opening with a disk of this radius, in each plane). Slivers along the true boundaries
#: (most wrong pixels: boundary placement, 1-2 px) are left alone; painted, they teach the forest
#: that the boundary pixels of both sides belong to both classes.
CORRECTION_MIN_RADIUS = 2


def correction_scribbles(ds: dict, labels: np.ndarray, tools: Path, seed: int) -> np.ndarray:
    """The strokes a user adds after looking at ``labels``: ``make_scribbles.py`` (``seed``,
    :data:`CORRECTION_ARGS`) on the ground truth restricted to the wrongly labelled pixels that
    are not scribbled yet and lie in wrong regions at least ``2 * CORRECTION_MIN_RADIUS + 1`` px
    wide (:data:`CORRECTION_MIN_RADIUS`), i.e. careful strokes of the right class inside what is
    visibly wrong.

    Parameters
    ----------
    ds : dict
        A set (:func:`load_set`): ``gt``, ``scr``.
    labels : ndarray
        A method's segmentation, the ground truth's shape.
    tools : Path
        The folder of ``make_scribbles.py``.
    seed : int

    Returns
    -------
    ndarray of uint8
        The new strokes (0 elsewhere), only on wrongly labelled, unscribbled pixels.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    gt, scr = ds["gt"], ds["scr"]
    wrong = (np.asarray(labels) != gt) & (gt > 0)
    footprint = disk(CORRECTION_MIN_RADIUS)
    if wrong.ndim == 3:  # stacks: in each plane, as the strokes are drawn
        footprint = footprint[None]
    visible = np.zeros_like(wrong)
    for k in np.unique(gt[wrong]):
        visible |= ndi.binary_opening(wrong & (gt == k), structure=footprint)
    wrong = np.where(visible & (scr == 0), gt, 0).astype(np.uint8)
    if not wrong.any():
        return np.zeros_like(scr)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "wrong.tif", Path(tmp) / "strokes.tif"
        tifffile.imwrite(src, wrong)
        subprocess.run([sys.executable, str(tools / "make_scribbles.py"), str(src), str(dst), "--seed", str(seed),
                        *CORRECTION_ARGS], check=True, stdout=subprocess.DEVNULL)
        strokes = tifffile.imread(dst)
    return np.where(wrong > 0, strokes, 0).astype(np.uint8)


def run_corrections(ds: dict, name: str, convpaint_path: Path, rounds: int, tools: Path, seed: int = SEED,
                    first: dict | None = None) -> dict:
    """A user's correction loop (classifier seed ``seed``): segment, paint strokes where the result
    is wrong (:func:`correction_scribbles`), retrain on every stroke so far, ``rounds`` times.

    Each method is corrected where *it* is wrong, by the same procedure with the same stroke seeds,
    as a user of that tool would. ``first``: round 0's result (:func:`run_method` with
    ``keep_labels``, the same method and seed) when it is already there, so it is not run twice.
    Returns ``{'status': 'ok', 'miou': [round 0, 1, ...], 'scribble_fraction': [...]}`` (round 0
    is the set's own scribbles), or the failing round's status and reason.
    """
    cur, out = ds, {"status": "ok", "miou": [], "scribble_fraction": []}
    for r in range(rounds + 1):
        res = first if r == 0 and first is not None else run_method(cur, name, convpaint_path, seed, keep_labels=True)
        if res["status"] != "ok":
            return {"status": res["status"], "reason": f"round {r}: {res['reason']}"}
        out["miou"].append(res["miou"])
        out["scribble_fraction"].append(float((cur["scr"] > 0).mean()))
        if r < rounds:
            new = correction_scribbles(cur, res["labels"], tools, CORRECTION_SEED + r)
            cur = {**cur, "scr": np.where(new > 0, new, cur["scr"])}
    return out


def run_corrections_repeated(ds: dict, name: str, convpaint_path: Path, rounds: int, tools: Path,
                             repeats: int, firsts: list[dict] | None = None) -> dict:
    """:func:`run_corrections` with classifier seeds SEED, SEED + 1, ... (Convpaint: once): per
    round the mean mIoU and scribbled fraction over the seeds, and each seed's mIoU (``mious``).
    ``firsts``: each seed's round-0 result (:func:`run_repeated` ``keep_labels``), reused."""
    n = 1 if name in UNSEEDED else repeats
    firsts = firsts if firsts is not None and len(firsts) == n else [None] * n
    runs = [run_corrections(ds, name, convpaint_path, rounds, tools, SEED + i, first=firsts[i]) for i in range(n)]
    bad = [r for r in runs if r["status"] != "ok"]
    if bad or len(runs) == 1:
        return (bad or runs)[0]
    return {"status": "ok", "miou": np.mean([r["miou"] for r in runs], axis=0).tolist(),
            "scribble_fraction": np.mean([r["scribble_fraction"] for r in runs], axis=0).tolist(),
            "mious": [r["miou"] for r in runs], "seeds": [SEED + i for i in range(len(runs))]}


def report_corrections(corr: dict, methods: list[str]) -> str:
    """Markdown table of the correction rounds: per set, each method's mIoU at round 0, 1, ...
    (``a → b → c``), the margin of ``default`` over the best baseline at the last round and the
    scribbled fraction there, and the mean over sets."""
    rounds = max((len(r["miou"]) for row in corr.values() for r in row.values() if r["status"] == "ok"), default=1)
    lines = [f"Correction rounds (strokes added where each method is wrong, make_scribbles.py "
             f"{' '.join(CORRECTION_ARGS)}; mIoU at round 0 → ... → {rounds - 1}; with --repeats, the mean over "
             f"classifier seeds):", "",
             "| set | " + " | ".join(methods) + " | margin, last round | scribbled, last round (default) |",
             "|---|" + "---|" * (len(methods) + 2)]
    per_round: dict[str, list[list[float]]] = {m: [] for m in methods}
    margins = []
    for label, row in corr.items():
        cells = []
        for m in methods:
            r = row.get(m)
            ok = r is not None and r["status"] == "ok"
            cells.append(" → ".join(f"{v:.3f}" for v in r["miou"]) if ok else "n/a")
            if ok:
                per_round[m].append(r["miou"])
        d = row.get("default")
        base = [row[b]["miou"][-1] for b in BASELINES if b in row and row[b]["status"] == "ok"]
        if d and d["status"] == "ok" and base:
            margins.append(d["miou"][-1] - max(base))
            tail = f"{margins[-1]:+.3f} | {100 * d['scribble_fraction'][-1]:.2f} %"
        else:
            tail = "- | -"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {tail} |")
    means = [" → ".join(f"{v:.3f}" for v in np.mean(v, axis=0)) if len(v) == len(corr) else "n/a"
             for v in per_round.values()]
    lines.append("| **mean** | " + " | ".join(means) + (f" | {np.mean(margins):+.3f} | |" if margins else " | | |"))
    return "\n".join(lines)


# -- reporting --------------------------------------------------------------------------------
def run_repeated(ds: dict, name: str, convpaint_path: Path, repeats: int, keep_labels: bool = False) -> dict:
    """:func:`run_method` with classifier seeds SEED, SEED + 1, ...: mean mIoU, per-class IoU and
    times over the runs, with the standard deviation of the mIoU (``miou_sd``) and each run's mIoU.
    With ``keep_labels`` an 'ok' result also holds each run's result with its segmentation
    (``'runs'``, for :func:`run_corrections_repeated`; not for the JSON)."""
    runs = [run_method(ds, name, convpaint_path, SEED + i, keep_labels=keep_labels)
            for i in range(1 if name in UNSEEDED else repeats)]
    bad = [r for r in runs if r["status"] != "ok"]
    kept = {"runs": runs} if keep_labels and not bad else {}
    if bad or len(runs) == 1:
        return {**{k: v for k, v in (bad or runs)[0].items() if k != "labels"}, **kept}
    mious = [r["miou"] for r in runs]
    return {"status": "ok", "miou": float(np.mean(mious)), "miou_sd": float(np.std(mious, ddof=1)),
            "mious": mious, "seeds": [SEED + i for i in range(len(runs))],
            "iou": {k: float(np.mean([r["iou"][k] for r in runs])) for k in runs[0]["iou"]},
            "train_s": float(np.mean([r["train_s"] for r in runs])),
            "apply_s": float(np.mean([r["apply_s"] for r in runs])),
            **({"peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs)}  # a child process's own peak
               if all(r.get("peak_rss_bytes") for r in runs) else {}),
            **({"detail": runs[0]["detail"]} if "detail" in runs[0] else {}), **kept}


def fmt(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] == "ok":
        return f"{r['miou']:.3f}" + (f"±{r['miou_sd']:.3f}" if "miou_sd" in r else "")
    return "n/a" if r["status"] == "not available" else "error"


def best_baseline(row: dict) -> tuple[str | None, float | None]:
    ok = [(n, row[n]["miou"]) for n in BASELINES if n in row and row[n]["status"] == "ok"]
    return max(ok, key=lambda t: t[1]) if ok else (None, None)


def report(results: dict, methods: list[str]) -> str:
    """Markdown tables: mIoU per set x method + mean, margins, long table, reasons for n/a."""
    sets = list(results)
    lines = ["| set | " + " | ".join(methods) + " | ISB RF* | ISB XGB* |",
             "|---|" + "---|" * (len(methods) + 2)]
    for s in sets:
        isb = ISB_ISSUE10.get(s, {})
        lines.append(f"| {s} | " + " | ".join(fmt(results[s].get(m)) for m in methods)
                     + "".join(f" | {isb[k]:.3f}" if k in isb else " | -" for k in ("ISB RF", "ISB XGB")) + " |")
    means = []
    for m in methods:
        vals = [results[s][m]["miou"] for s in sets if results[s].get(m, {}).get("status") == "ok"]
        means.append(f"{np.mean(vals):.3f}" + ("" if len(vals) == len(sets) else f" ({len(vals)}/{len(sets)})")
                     if vals else "n/a")
    lines.append("| **mean** | " + " | ".join(means) + " | | |")
    lines.append("")
    lines.append("\\* ISB = interactive-seg-backend as quoted in issue 10 (context only; the isb_rf / isb_xgb "
                 "columns, when present, are it run here).")
    lines.append("")
    lines.append(f"Margin of `default` over the best in-run baseline ({', '.join(BASELINES)}):")
    lines.append("")
    lines.append("| set | default | best baseline | margin | >= +0.05 |")
    lines.append("|---|---|---|---|---|")
    margins = []
    for s in sets:
        d = results[s].get("default")
        bn, bv = best_baseline(results[s])
        if d and d["status"] == "ok" and bn:
            mg = d["miou"] - bv
            margins.append(mg)
            lines.append(f"| {s} | {d['miou']:.3f} | {bn} {bv:.3f} | {mg:+.3f} | {'yes' if mg >= 0.05 else 'no'} |")
        else:
            lines.append(f"| {s} | {fmt(d)} | {bn or '-'} | - | - |")
    if margins:
        lines.append(f"| **mean** | | | {np.mean(margins):+.3f} | |")
    lines.append("")
    lines.append("| set | method | mIoU | IoU per class | train s | apply s |")
    lines.append("|---|---|---|---|---|---|")
    notes = {}
    for s in sets:
        for m in methods:
            r = results[s].get(m)
            if r is None:
                continue
            if r["status"] != "ok":
                notes.setdefault((m, r["status"], r["reason"]), []).append(s)
                continue
            per = " ".join(f"{k}:{v:.3f}" for k, v in r["iou"].items())
            lines.append(f"| {s} | {m} | {fmt(r)} | {per} | {r['train_s']:.2f} | {r['apply_s']:.2f} |")
    if notes:
        lines.append("")
        for (m, status, reason), ss in notes.items():
            lines.append(f"- `{m}` {status} ({', '.join(ss)}): {reason}")
    return "\n".join(lines)


def report_draws(results: dict, set_of: dict, methods: list[str]) -> str:
    """Markdown table over scribble draws: per set, each method's mIoU averaged over the draws
    (every draw's value is the mean over classifier seeds), and the margin of ``default`` over the
    best in-run baseline *of the same draw*: its mean and its smallest value over the draws."""
    by_set: dict[str, list[str]] = {}
    for label, name in set_of.items():
        if label in results:
            by_set.setdefault(name, []).append(label)
    lines = [f"Over scribble draws (each set's own scribbles and make_scribbles.py --seed 1..; "
             f"{max(len(v) for v in by_set.values())} draws):", "",
             "| set | draws | " + " | ".join(methods) + " | margin (mean) | margin (min) |",
             "|---|---|" + "---|" * (len(methods) + 2)]
    cols: dict[str, list[float]] = {m: [] for m in methods}
    all_margins, min_margins = [], []
    for name, labels in by_set.items():
        cells = []
        for m in methods:
            vals = [results[lb][m]["miou"] for lb in labels if results[lb].get(m, {}).get("status") == "ok"]
            if len(vals) == len(labels):
                cols[m].append(float(np.mean(vals)))
                cells.append(f"{np.mean(vals):.3f}±{np.std(vals, ddof=1) if len(vals) > 1 else 0:.3f}")
            else:
                cells.append("n/a")
        margins = []
        for lb in labels:
            d = results[lb].get("default")
            _, bv = best_baseline(results[lb])
            if d and d["status"] == "ok" and bv is not None:
                margins.append(d["miou"] - bv)
        mg = (f"{np.mean(margins):+.3f} | {min(margins):+.3f}" if len(margins) == len(labels) else "- | -")
        if len(margins) == len(labels):
            all_margins.append(np.mean(margins))
            min_margins.append(min(margins))
        lines.append(f"| {name} | {len(labels)} | " + " | ".join(cells) + f" | {mg} |")
    means = [f"{np.mean(v):.3f}" if len(v) == len(by_set) else "n/a" for v in cols.values()]
    lines.append("| **mean** | | " + " | ".join(means)
                 + (f" | {np.mean(all_margins):+.3f} | {min(min_margins):+.3f} |" if all_margins else " | | |"))
    lines.append("")
    lines.append("(± = sd over the draws; the margin is taken draw by draw against that draw's best baseline.)")
    return "\n".join(lines)


def versions(convpaint_path: Path) -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("napari-vitseg", "numpy", "scipy", "scikit-image", "scikit-learn", "xgboost", "tifffile",
                "opencv-python-headless", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    for dist in sorted(convpaint_path.glob("*.dist-info")) if convpaint_path.is_dir() else []:
        name, _, ver = dist.name[: -len(".dist-info")].rpartition("-")
        out[f"{name} (in {convpaint_path})"] = ver
    out[f"interactive-seg-backend (in {ISB_PATH})"] = isb_version(ISB_PATH)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout
        out["git"] = commit.strip() + (" (with uncommitted changes)" if dirty.strip() else "")
    except OSError:
        out["git"] = None
    return out


def source_digest() -> str:
    """sha256 over napari_vitseg/**/*.py as the run starts (the tree may hold uncommitted work)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((REPO / "napari_vitseg").rglob("*.py")):
        h.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def machine() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "loadavg_at_start": load}


def main(argv=None) -> int:
    global ISB_PATH  # --isb-path: read by run_isb through run_method
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of sets (default: %(default)s)")
    p.add_argument("--sets", nargs="+", help="only these sets")
    p.add_argument("--methods", nargs="+",
                   help="only these of our methods (METHODS names; 'default' is always run) and baselines")
    p.add_argument("--no-baselines", action="store_true", help="skip the in-run baselines")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every seeded method with classifier seeds 0..N-1 and report mean ± sd (default 1)")
    p.add_argument("--scribble-seeds", type=int, default=1,
                   help="run every set with N scribble draws: its own scribbles and make_scribbles.py "
                        "--seed 1..N-1 (default 1: its own only)")
    p.add_argument("--correction-rounds", type=int, default=0,
                   help="after the main table, run every method through N rounds of a user's corrections: "
                        "strokes painted where it is wrong (make_scribbles.py on the wrong pixels), retrain "
                        "(with --repeats, for each classifier seed; default 0: none)")
    p.add_argument("--quick", action="store_true", help=f"crop every set to ~{QUICK_SIZE}^2 (smoke run)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where made scribbles go (default: %(default)s)")
    p.add_argument("--convpaint-path", type=Path, default=DEFAULT_CONVPAINT,
                   help="pip --target folder holding napari-convpaint (default: %(default)s)")
    p.add_argument("--isb-path", type=Path, default=ISB_PATH,
                   help="source folder of interactive-seg-backend (default: %(default)s)")
    p.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/bench_quality_<time>.json)")
    p.add_argument("--list", action="store_true", help="print the sets and methods and exit")
    args = p.parse_args(argv)
    ISB_PATH = args.isb_path

    if args.list:
        print("methods:", ", ".join(METHODS))
        print("baselines:", ", ".join(BASELINES))
        print("sets:", ", ".join(d.name for d in sorted(args.data.iterdir()) if (d / "ground_truth.tif").exists()))
        return 0
    if args.scribble_seeds < 1:
        p.error("--scribble-seeds must be at least 1")
    if args.correction_rounds < 0:
        p.error("--correction-rounds must be at least 0")
    known = set(METHODS) | set(BASELINES)
    if args.methods and set(args.methods) - known:
        p.error(f"unknown methods {sorted(set(args.methods) - known)}; known: {sorted(known)}")
    ours = ["default"] + [m for m in METHODS if m != "default" and (not args.methods or m in args.methods)]
    bases = [] if args.no_baselines else [b for b in BASELINES if not args.methods or b in args.methods
                                          or not (set(args.methods) & set(BASELINES))]
    methods = ours + bases

    print(f"bench_quality: data {args.data}, seed {SEED}, classifier seeds {SEED}..{SEED + args.repeats - 1}{', QUICK (cropped to ~256^2; not the benchmark)' if args.quick else ''}")
    print("features: classical only (FeatureConfig(backbone=None), the default): no pretrained ViT weights "
          "exist on this machine, so no ViT method is run")
    print("metric: napari_vitseg.metrics (mIoU over ground-truth classes, ground truth 0 ignored, "
          "scribbled pixels included)")
    src, mach = source_digest(), machine()
    sets = find_sets(args.data, args.cache, args.sets, args.scribble_seeds)
    warm_up()
    results, meta, corrections = {}, {}, {}
    t_start = time.perf_counter()
    for entry in sets:
        ds = load_set(entry)
        if args.quick:
            ds = quick_crop(ds)
        print(describe(ds))
        meta[ds["label"]] = {"set": ds["name"], "scribble_draw": ds["draw"], "shape": list(ds["image_arr"].shape), "axes": ds["axes"],
                            "channel_axis": ds["channel_axis"], "classes": ds["classes"],
                            "scribbles": str(ds["scribbles"]), "scribbles_made": ds["scribbles_made"],
                            "scribble_fraction": float((ds["scr"] > 0).mean()), "crop": ds.get("crop")}
        results[ds["label"]] = {}
        firsts = {}  # each method's round-0 runs, reused by the correction loop
        for m in methods:
            r = run_repeated(ds, m, args.convpaint_path, args.repeats, keep_labels=bool(args.correction_rounds))
            firsts[m] = r.pop("runs", None)
            results[ds["label"]][m] = r
            extra = (f"  train {r['train_s']:.2f} s  apply {r['apply_s']:.2f} s" if r["status"] == "ok"
                     else f"  ({r['reason']})")
            print(f"  {m:16s} {fmt(r):>6s}{extra}", flush=True)
        if args.correction_rounds:
            corrections[ds["label"]] = {}
            for m in methods:
                c = run_corrections_repeated(ds, m, args.convpaint_path, args.correction_rounds,
                                             args.data.parent / "tools", args.repeats, firsts[m])
                corrections[ds["label"]][m] = c
                text = " → ".join(f"{v:.3f}" for v in c["miou"]) if c["status"] == "ok" else f"({c['reason']})"
                print(f"  {m:16s} corrections: {text}", flush=True)
    table = report(results, methods)
    if args.scribble_seeds > 1:
        table += "\n\n" + report_draws(results, {e["label"]: e["name"] for e in sets}, methods)
    if corrections:
        table += "\n\n" + report_corrections(corrections, methods)
    print()
    print(table)
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # a child's own VmHWM (ru_maxrss of children counts the parent's pages at fork)
    child = {m: max((row[m].get("peak_rss_bytes") or 0 for row in results.values() if m in row), default=0)
             for m in ("convpaint", *ISB_CLASSIFIERS)}
    rss_child = child["convpaint"] or None
    rss_isb = max(child[m] for m in ISB_CLASSIFIERS) or None
    print(f"\npeak RSS: this process {rss_self / 2**20:.0f} MiB"
          + (f"; largest napari-convpaint child {rss_child / 2**20:.0f} MiB" if rss_child else "")
          + (f"; largest interactive-seg-backend child {rss_isb / 2**20:.0f} MiB" if rss_isb else "")
          + f"; total wall {time.perf_counter() - t_start:.0f} s")
    out = args.out or RESULTS / f"bench_quality_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "bench_quality", "quick": args.quick, "seed": SEED, "repeats": args.repeats,
        "scribble_seeds": args.scribble_seeds, "correction_rounds": args.correction_rounds,
        "correction_args": list(CORRECTION_ARGS), "corrections": corrections, "argv": sys.argv[1:],
        "machine": mach, "versions": {**versions(args.convpaint_path), "napari_vitseg_source_sha256": src},
        "sets": meta,
        "methods": {m: METHODS.get(m, "baseline") for m in methods}, "results": results,
        "isb_issue10_not_rerun": ISB_ISSUE10, "table_markdown": table,
        "peak_rss_bytes": {"self": rss_self, "convpaint_child": rss_child, "isb_child": rss_isb},
        "wall_s": time.perf_counter() - t_start,
    }, indent=1, default=str))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
