"""Benchmark: apply (featurise + predict) throughput of each inference engine.

Run ``python benchmarks/bench_apply.py [--quick] [--kinds rf xgb] [--engines sklearn compiled]
[--predictions exact coarse-to-fine] [--overlap off on] [--exact-stack-planes 20]``, or pick
the runs with ``--methods rf:sklearn.exact rf:sklearn.coarse-to-fine.on ...``.

What is measured, end to end through the real :class:`~napari_vitseg.pipeline.Segmenter`
(``predict_plane(plane, use_cache=False)``: the row-strip batch path ``vitseg apply`` uses;
classical features with their defaults, the default classifier of each kind):

- a 1024^2 plane, a 2048^2 plane, and a stack of 1024^2 planes (200; ``--quick``: 8), all cut
  from the real TEM nanoparticle image (``shared/data/tem_nanoparticles``, 518^2, mirrored
  to size; the stack's planes are shifted / flipped copies, so no two are equal);
- the classifier is trained once on that image's real scribbles (seeded) and saved; every
  engine's subprocess loads that file, as ``vitseg apply`` does;
- each (classifier kind, engine, prediction) runs in its own subprocess, so that its peak RSS
  (``ru_maxrss``) is its own; the engine's one-off cost (compiling the forest, then kept in a
  per-user cache) is timed separately and reported, not counted in Mpx/s;
- throughput = pixels / wall seconds; CPU seconds (user + sys of all threads) are reported
  too, as wall time on a shared machine depends on the other processes;
- prediction: ``exact`` (every pixel) or ``coarse-to-fine`` (the Segmenter's default: a
  stride-2 grid, then only pixels near label boundaries or uncertain ones;
  ``napari_vitseg.pipeline._coarse``), set with ``Segmenter.load(..., prediction=...)``;
- labels of every row are compared with the ``'sklearn'`` engine (the library's own
  predictor: scikit-learn ``predict_proba`` for the forest, XGBoost ``inplace_predict``) with
  ``exact`` prediction of the same kind in the same run: agreement (fraction of equal labels)
  and mIoU;
- the ratio columns are Mpx/s (wall, and per CPU-second) / those of sklearn + exact of the same
  kind, same run (> 1: faster);
- overlap: ``off`` predicts plane after plane (``iter_plane_probabilities(overlap=False)``,
  i.e. ``Segmenter.predict_plane``), ``on`` featurises the next band / plane in a second thread
  while the current one is predicted (``napari_vitseg.pipeline.batch.iter_plane_probabilities``,
  the path of ``vitseg apply``; threads split between the two, no more than the cores); both
  make each plane in the timed loop (the stack's planes are computed from the image, as a
  reader would deliver them);
- ``--exact-stack-planes N``: the sklearn + exact baseline runs the stack case on its first N
  planes only (the 200-plane stack at exact speed takes long); its Mpx/s is still a rate, and
  agreement / mIoU of the other rows are computed on those N planes;
- the load average (1 min) before and after each run is recorded: the machine is shared.

ISB (tldr-group/interactive-seg-backend) is not on PyPI and cannot be installed here, so it
is not in the run (the script says so in its output).

``--predict-only`` times the predict step alone on the 1024^2 plane's real features for every
candidate engine, including the ones not wired in (Treelite GTIL, ONNX Runtime TreeEnsemble
via skl2onnx), with build / compile time, agreement and max |probability difference|.

``--coarse`` measures coarse-to-fine prediction (``napari_vitseg.pipeline._coarse``) on whole
planes against the exact prediction on every shared set with ground truth: fraction of pixels
classified, label agreement, worst per-class IoU vs exact, mIoU vs ground truth, and the
predict step alone (exact and coarse-to-fine on the same features, same run), then the predict
step alone on a 1024^2 tiled TEM plane; ``--coarse-schemes v1 default L3 ...`` picks the schemes
(``COARSE_SCHEMES``: v1 = the single stride-2 level of scheme 1), ``--coarse-sets`` the sets.

Results go to ``benchmarks/results/bench_apply_<timestamp>.json`` (``bench_apply_predict_*``
for ``--predict-only``, ``bench_apply_coarse_*`` for ``--coarse``).
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
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("VITSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SET = DATA / "tem_nanoparticles"


def plane(size: int, i: int = 0) -> np.ndarray:
    import tifffile

    img = tifffile.imread(SET / "image.tif")
    reps = -(-size // img.shape[0]) + 1
    big = np.pad(img, ((0, img.shape[0] * reps), (0, img.shape[1] * reps)), mode="symmetric")
    y0, x0 = (37 * i) % img.shape[0], (53 * i) % img.shape[1]
    out = big[y0:y0 + size, x0:x0 + size]
    if i % 2:
        out = out[::-1]
    if i % 4 >= 2:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(kind: str, method: str, cases: list, out_dir: Path) -> dict:
    """Load the classifier, warm the engine up, apply every case; save labels to ``out_dir``.
    ``method`` is ``'<engine>.<prediction>.<overlap>'`` (overlap: on / off)."""
    from napari_vitseg.classifiers._engines import engine_info, model_hash
    from napari_vitseg.pipeline import Segmenter
    from napari_vitseg.pipeline.batch import iter_plane_probabilities, overlap_threads

    engine, prediction, overlap = method.split(".")
    # trained once by the parent: one model for all engines and prediction settings
    seg = Segmenter.load(out_dir / f"{kind}.vitseg", prediction=prediction)
    clf = seg.classifier_.set_engine(engine)
    forest = getattr(clf, "estimator_", None)
    info = {"kind": kind, "engine": engine, "prediction": seg.prediction_mode, "model_sha256": model_hash(clf),
            "overlap": overlap, "threads": overlap_threads(overlap == "on"), "load_before": os.getloadavg()[0]}
    if forest is not None:
        info["trees"] = len(forest.estimators_)
        info["max_depth"] = int(max(t.tree_.max_depth for t in forest.estimators_))
        info["leaves"] = int(sum(t.tree_.n_leaves for t in forest.estimators_))
    t0 = time.perf_counter()
    seg.predict_plane(plane(256), use_cache=False)  # builds (or loads) a compiled forest
    info["warmup_s"] = round(time.perf_counter() - t0, 2)
    info["engine_used"] = engine_info(clf)["used"]
    info["engine_reason"] = engine_info(clf)["reason"]
    rows = []
    for name, size, n in cases:
        labels = np.lib.format.open_memmap(out_dir / f"{kind}_{method}_{name}.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, size, size))
        w0, c0 = time.perf_counter(), cpu_s()
        for i, p in iter_plane_probabilities(seg, ((i, lambda i=i, s=size: plane(s, i)) for i in range(n)),
                                             overlap=overlap == "on"):
            labels[i] = seg.labels_from_proba(p)
        wall, cpu = time.perf_counter() - w0, cpu_s() - c0
        labels.flush()
        mpx = n * size * size / 1e6
        rows.append({"case": name, "size": size, "planes": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                     "mpx_per_s": round(mpx / wall, 3), "mpx_per_cpu_s": round(mpx / cpu, 3)})
        print(f"  {kind:4s} {engine:9s} {prediction:14s} overlap {overlap:3s} {name:14s} {mpx / wall:6.2f} Mpx/s "
              f"{mpx / cpu:6.2f} Mpx/cpu-s load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    info["engine_used_after"] = engine_info(clf)["used"]
    info["rows"] = rows
    info["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    info["load_after"] = os.getloadavg()[0]
    return info


def _predict_only_kind(kind: str, rows: int, img: np.ndarray, scr: np.ndarray) -> list[dict]:
    from napari_vitseg.pipeline import Segmenter

    seg = Segmenter(classifier=kind).fit(img, scr)
    feats = seg.featurizer.compute(plane(1024))
    X = np.ascontiguousarray(feats.reshape(-1, feats.shape[-1])[:rows])
    clf = seg.classifier_
    ncores = len(os.sched_getaffinity(0))

    def timed(fn):
        fn(X[:1000])
        w0, c0 = time.perf_counter(), cpu_s()
        p = fn(X)
        return time.perf_counter() - w0, cpu_s() - c0, np.asarray(p, dtype=np.float64).reshape(len(X), -1)

    wall, cpu, ref = timed(lambda x: clf.set_engine("sklearn").predict_proba(x))
    cands = {}
    try:
        import tl2cgen
        import treelite
        import treelite.frontend
        import treelite.gtil
        import treelite.sklearn

        model = (treelite.sklearn.import_model(clf.estimator_) if kind == "rf"
                 else treelite.frontend.from_xgboost(clf.booster_))
        cands["treelite GTIL"] = (0.0, lambda x: treelite.gtil.predict(model, x, nthread=ncores))
        lib = Path(tempfile.mkdtemp()) / "forest.so"
        t0 = time.perf_counter()
        tl2cgen.export_lib(model, toolchain="gcc", libpath=str(lib), params={"parallel_comp": 2 * ncores},
                           nthread=ncores)
        build = time.perf_counter() - t0
        pred = tl2cgen.Predictor(str(lib), nthread=ncores)
        cands["tl2cgen compiled"] = (build, lambda x: pred.predict(tl2cgen.DMatrix(x, dtype="float32")))
    except ImportError as e:
        print(f"treelite / tl2cgen not installed ({e}); skipped", file=sys.stderr)
    if kind == "rf":
        try:
            import onnxruntime as ort
            from skl2onnx import to_onnx

            t0 = time.perf_counter()
            onx = to_onnx(clf.estimator_, X[:1], options={id(clf.estimator_): {"zipmap": False}},
                          target_opset={"": 17, "ai.onnx.ml": 3})
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = ncores, 1
            sess = ort.InferenceSession(onx.SerializeToString(), so, providers=["CPUExecutionProvider"])
            build = time.perf_counter() - t0
            name_in = sess.get_inputs()[0].name
            cands["onnxruntime"] = (build, lambda x: sess.run(["probabilities"], {name_in: x})[0])
        except ImportError as e:
            print(f"onnxruntime / skl2onnx not installed ({e}); skipped", file=sys.stderr)
    rows_out = [{"kind": kind, "engine": "library (sklearn / xgboost)", "rows": len(X), "wall_s": wall,
                 "cpu_s": cpu, "build_s": 0.0, "agreement": 1.0, "max_abs_diff": 0.0}]
    for name, (build, fn) in cands.items():
        w, c, p = timed(fn)
        if p.shape[1] == 1:
            p = np.concatenate([1 - p, p], axis=1)
        rows_out.append({"kind": kind, "engine": name, "rows": len(X), "wall_s": w, "cpu_s": c, "build_s": build,
                         "agreement": float(np.mean(p.argmax(1) == ref.argmax(1))),
                         "max_abs_diff": float(np.abs(p - ref).max())})
    forest = getattr(clf, "estimator_", None)
    if forest is not None:
        print(f"rf forest: {len(forest.estimators_)} trees, max depth "
              f"{max(t.tree_.max_depth for t in forest.estimators_)}, "
              f"{sum(t.tree_.n_leaves for t in forest.estimators_)} leaves")
    return rows_out


def predict_only(rows: int) -> list[dict]:
    """Predict step alone on real features (the 1024^2 plane): every candidate engine, all cores.

    Candidates: the library's predictor, Treelite GTIL, TL2cgen-compiled (compile time
    reported), ONNX Runtime's TreeEnsemble via skl2onnx (random forest only). Each is timed
    once after a warm-up; wall and CPU seconds; label agreement and max |dp| against the library.
    """
    import tifffile


    img, scr = tifffile.imread(SET / "image.tif"), tifffile.imread(SET / "scribbles.tif")
    out = []
    for kind in ("rf", "xgb"):
        out += _predict_only_kind(kind, rows, img, scr)
    print(f"\npredict only ({rows} rows of real features, {len(os.sched_getaffinity(0))} threads)")
    print(f"{'kind':4s} {'engine':28s} {'Mpx/s':>7s} {'Mpx/cpu-s':>9s} {'build s':>8s} {'agree':>8s} {'max|dp|':>8s}")
    for r in out:
        r["mpx_per_s"] = r["rows"] / r["wall_s"] / 1e6
        r["mpx_per_cpu_s"] = r["rows"] / r["cpu_s"] / 1e6
        print(f"{r['kind']:4s} {r['engine']:28s} {r['mpx_per_s']:7.2f} {r['mpx_per_cpu_s']:9.2f} {r['build_s']:8.1f} "
              f"{r['agreement']:8.5f} {r['max_abs_diff']:8.1e}")
    return out


GT_SETS = {"tem_nanoparticles": None, "flyem_medulla_fibsem": None, "bbbc039_u2os_nuclei": None,
           "sandstone_xrm": None, "dsb2018_histology": -1}


#: coarse-to-fine schemes of ``--coarse`` (keyword arguments of ``coarse_to_fine_proba``)
COARSE_SCHEMES = {
    "v1": {"levels": 1, "grow": 0, "rule": "3x3", "margin": 0.2},  # single stride-2 level (scheme 1)
    "default": {},  # the Segmenter's: _coarse's defaults (scheme 2: stride 4 -> 2 -> 1)
    "v1-halo1": {"levels": 1, "grow": 0, "rule": "3x3", "margin": 0.2, "halo": 1},
    "L2-margin0.2": {"margin": 0.2},
    "L2-grow0": {"grow": 0},
    "L2-grow2,0": {"grow": (2, 0)},
    "L2-grow1,0": {"grow": (1, 0)},
    "L2-grow2": {"grow": 2},
    "L2-halo1": {"halo": 1},
    "L3": {"levels": 3},
}


def _fitted_sets(sets=None):
    """Per shared set with ground truth (or only ``sets``): its name, the default Segmenter
    trained on its scribbles, that classifier on the sklearn engine, its planes, ground truth."""
    import tifffile

    from napari_vitseg.pipeline import Segmenter

    for name, cax in GT_SETS.items():
        if sets and name not in sets:
            continue
        d = DATA / name
        img, scr = tifffile.imread(d / "image.tif"), tifffile.imread(d / "scribbles.tif")
        seg = Segmenter().fit(img, scr, channel_axis=cax)
        planes = [img] if (img.ndim == 2 or cax is not None) else list(img)
        yield name, seg, seg.classifier_.set_engine("sklearn"), planes, tifffile.imread(d / "ground_truth.tif")


def early_exit(sets=None) -> dict:
    """Early exit of the default random forest (``early_exit_proba``) vs every tree, on every plane
    of every shared set with ground truth: label agreement and worst per-class IoU vs exact, the
    fraction of tree evaluations made, mIoU vs ground truth, and the predict step alone (wall / CPU
    seconds, same features, same run); then the same with coarse-to-fine (the Segmenter's default
    prediction: both) against coarse-to-fine alone."""

    from napari_vitseg.classifiers import _engines
    from napari_vitseg.pipeline._coarse import coarse_to_fine_proba

    work = []
    trees_proba = _engines._trees_proba

    def counted(estimator, a, b, X):
        work.append((b - a) * len(X))
        return trees_proba(estimator, a, b, X)

    _engines._trees_proba = counted

    def timed(fn):
        w0, c0 = time.perf_counter(), cpu_s()
        r = fn()
        return r, time.perf_counter() - w0, cpu_s() - c0

    out = {}
    print("\nearly exit vs every tree, default random forest (100 trees), sklearn engine; times: predict step")
    print(f"{'set':22s} {'mode':16s} {'tree work':>9s} {'agreement':>9s} {'worst IoU':>9s} {'mIoU all':>8s} "
          f"{'mIoU early':>10s} {'all s':>6s} {'early s':>7s} {'CPU ratio':>9s}")
    try:
        for name, seg, clf, planes, gt in _fitted_sets(sets):
            n_trees = len(clf.estimator_.estimators_)
            cls = seg.classes_.astype(np.uint8)
            feats = [seg.plane_features(p) for p in planes]
            X = [f.reshape(-1, f.shape[-1]) for f in feats]
            clf.predict_proba(X[0][:64])  # warm up
            gt = gt.reshape((len(feats),) + feats[0].shape[:2])
            ks = np.unique(gt)
            def per_pixel(predict, X=X):
                return [predict(x) for x in X]

            def c2f(predict, feats=feats):
                return [coarse_to_fine_proba(predict, f) for f in feats]

            modes = {
                "per pixel": (partial(per_pixel, clf.predict_proba), partial(per_pixel, clf.predict_proba_early_exit),
                              lambda p: p.argmax(1)),
                "coarse-to-fine": (partial(c2f, clf.predict_proba), partial(c2f, clf.predict_proba_early_exit),
                                   lambda p: p.argmax(0).ravel()),
            }
            for mode, (full_fn, fast_fn, lab) in modes.items():
                full, t_f, c_f = timed(full_fn)
                work.clear()
                fast, t_e, c_e = timed(fast_fn)
                a = np.stack([cls[lab(p)].reshape(gt.shape[1:]) for p in full])
                b = np.stack([cls[lab(p)].reshape(gt.shape[1:]) for p in fast])
                n_rows = sum(x.shape[0] for x in X) if mode == "per pixel" else None
                frac = sum(work) / (n_trees * n_rows) if n_rows else None
                row = {"tree_work": frac, "agreement": float(np.mean(a == b)),
                       "worst_class_iou_vs_all_trees": float(min(_iou(b, a, k) for k in np.unique(a))),
                       "miou_all_trees": float(np.mean([_iou(a, gt, k) for k in ks])),
                       "miou_early_exit": float(np.mean([_iou(b, gt, k) for k in ks])),
                       "all_trees_wall_s": t_f, "all_trees_cpu_s": c_f, "early_wall_s": t_e, "early_cpu_s": c_e,
                       "pixels": int(a.size)}
                out[f"{name}/{mode}"] = row
                fr = f"{frac:9.3f}" if frac is not None else f"{'-':>9s}"
                print(f"{name:22s} {mode:16s} {fr} {row['agreement']:9.5f} {row['worst_class_iou_vs_all_trees']:9.4f} "
                      f"{row['miou_all_trees']:8.4f} {row['miou_early_exit']:10.4f} {t_f:6.2f} {t_e:7.2f} "
                      f"{c_f / max(c_e, 1e-9):9.2f}", flush=True)
    finally:
        _engines._trees_proba = trees_proba
    return out


def coarse(schemes=("v1", "default"), sets=None, plane_size: int = 1024) -> dict:
    """Coarse-to-fine vs exact on every plane of every shared set with ground truth, per scheme:
    fraction of pixels classified, label agreement and worst per-class IoU vs exact, mIoU of both
    vs ground truth, and the predict step alone (wall and CPU seconds, exact and coarse-to-fine,
    same features, same run); then the predict step alone on a ``plane_size``^2 tiled TEM plane."""
    import tifffile

    from napari_vitseg.pipeline import Segmenter
    from napari_vitseg.pipeline._coarse import coarse_to_fine_proba

    def timed(fn, *args, **kwargs):
        w0, c0 = time.perf_counter(), cpu_s()
        r = fn(*args, **kwargs)
        return r, time.perf_counter() - w0, cpu_s() - c0

    def exact_all(clf, feats):
        return [clf.predict_proba(f.reshape(-1, f.shape[-1])) for f in feats]

    def c2f_all(clf, feats, kw):
        return [coarse_to_fine_proba(clf.predict_proba, f, return_fraction=True, **kw) for f in feats]

    out = {}
    print("\ncoarse-to-fine vs exact, default random forest, sklearn engine; times: predict step alone")
    print(f"{'set':22s} {'scheme':13s} {'classified':>10s} {'agreement':>9s} {'worst IoU':>9s} {'mIoU exact':>10s} "
          f"{'mIoU c2f':>8s} {'exact s':>8s} {'c2f s':>7s} {'CPU ratio':>9s}")
    for name, seg, clf, planes, gt in _fitted_sets(sets):
        cls = seg.classes_.astype(np.uint8)
        feats = [seg.plane_features(p) for p in planes]
        clf.predict_proba(feats[0][:8, :8].reshape(-1, feats[0].shape[-1]))  # warm up
        probs, t_ex, c_ex = timed(exact_all, clf, feats)
        exact = np.stack([cls[p.argmax(1)].reshape(f.shape[:2]) for p, f in zip(probs, feats, strict=True)])
        gt = gt.reshape(exact.shape)
        ks = np.unique(gt)
        miou_exact = float(np.mean([_iou(exact, gt, k) for k in ks]))
        for scheme in schemes:
            kw = COARSE_SCHEMES[scheme]
            res, t_c, c_c = timed(c2f_all, clf, feats, kw)
            c2f = np.stack([cls[p.argmax(0)] for p, _ in res])
            ious = [_iou(c2f, exact, k) for k in np.unique(exact)]
            row = {"scheme": kw, "classified": float(np.mean([fr for _, fr in res])),
                   "agreement": float(np.mean(c2f == exact)), "worst_class_iou_vs_exact": float(min(ious)),
                   "miou_exact_vs_gt": miou_exact, "miou_c2f_vs_gt": float(np.mean([_iou(c2f, gt, k) for k in ks])),
                   "predict_exact_wall_s": t_ex, "predict_exact_cpu_s": c_ex,
                   "predict_c2f_wall_s": t_c, "predict_c2f_cpu_s": c_c, "pixels": int(exact.size)}
            out[f"{name}/{scheme}"] = row
            print(f"{name:22s} {scheme:13s} {row['classified']:10.3f} {row['agreement']:9.5f} "
                  f"{row['worst_class_iou_vs_exact']:9.4f} {miou_exact:10.4f} {row['miou_c2f_vs_gt']:8.4f} "
                  f"{t_ex:8.2f} {t_c:7.2f} {c_ex / max(c_c, 1e-9):9.2f}", flush=True)
    if plane_size:
        name = f"plane_{plane_size}"
        seg = Segmenter().fit(tifffile.imread(SET / "image.tif"), tifffile.imread(SET / "scribbles.tif"))
        clf = seg.classifier_.set_engine("sklearn")
        f = seg.featurizer.compute(plane(plane_size))
        clf.predict_proba(f[:8, :8].reshape(-1, f.shape[-1]))
        (ref,), t_ex, c_ex = timed(exact_all, clf, [f])
        ref = ref.argmax(1).reshape(f.shape[:2])
        mpx = f.shape[0] * f.shape[1] / 1e6
        print(f"\npredict step alone, {plane_size}^2 TEM plane: exact {t_ex:.2f} s wall ({mpx / t_ex:.2f} Mpx/s), "
              f"{c_ex:.2f} CPU-s")
        for scheme in schemes:
            kw = COARSE_SCHEMES[scheme]
            ((p, fr),), t_c, c_c = timed(c2f_all, clf, [f], kw)
            row = {"scheme": kw, "classified": fr, "agreement": float(np.mean(p.argmax(0) == ref)),
                   "predict_exact_wall_s": t_ex, "predict_exact_cpu_s": c_ex,
                   "predict_c2f_wall_s": t_c, "predict_c2f_cpu_s": c_c, "pixels": int(ref.size)}
            out[f"{name}/{scheme}"] = row
            print(f"  {scheme:13s} classified {fr:.3f}, agreement {row['agreement']:.5f}: {t_c:.2f} s wall "
                  f"({mpx / t_c:.2f} Mpx/s, {t_ex / t_c:.2f}x), {c_c:.2f} CPU-s ({c_ex / max(c_c, 1e-9):.2f}x)",
                  flush=True)
        out.update(_coarse_end_to_end(seg, plane(plane_size), schemes, timed))
    return out


def _coarse_end_to_end(seg, img: np.ndarray, schemes, timed, repeats: int = 2) -> dict:
    """``Segmenter.predict_plane(use_cache=False)`` (featurise + predict, row strips) with the exact
    setting and with coarse-to-fine under each scheme (the Segmenter's calls into ``_coarse`` given
    the scheme's keywords for the run), best of ``repeats``; sklearn engine."""
    import functools

    from napari_vitseg.pipeline import _coarse, segmenter

    mpx, out, ref = img.size / 1e6, {}, None
    print(f"\nend to end, Segmenter.predict_plane on the {img.shape[0]}x{img.shape[1]} TEM plane (best of {repeats})")
    for scheme in ["exact", *schemes]:
        kw = COARSE_SCHEMES.get(scheme, {})
        rows_kw = {k: v for k, v in kw.items() if k in ("stride", "halo", "levels", "grow")}
        seg.prediction = "exact" if scheme == "exact" else "coarse-to-fine"
        segmenter.coarse_to_fine_rows = functools.partial(_coarse.coarse_to_fine_rows, **kw)
        segmenter.coarse_rows_needed = functools.partial(_coarse.coarse_rows_needed, **rows_kw)
        try:
            runs = [timed(seg.predict_plane, img, use_cache=False) for _ in range(repeats)]
        finally:
            segmenter.coarse_to_fine_rows, segmenter.coarse_rows_needed = (_coarse.coarse_to_fine_rows,
                                                                           _coarse.coarse_rows_needed)
            seg.prediction = None
        proba, wall, cpu = min(runs, key=lambda r: r[1])
        lab = proba.argmax(0)
        ref = lab if ref is None else ref
        row = {"wall_s": wall, "cpu_s": cpu, "mpx_per_s": mpx / wall, "agreement_vs_exact": float(np.mean(lab == ref))}
        out[f"end_to_end_{img.shape[0]}/{scheme}"] = row
        print(f"  {scheme:13s} {wall:.2f} s wall ({row['mpx_per_s']:.2f} Mpx/s), {cpu:.2f} CPU-s "
              f"({mpx / cpu:.2f} Mpx per CPU-s), agreement {row['agreement_vs_exact']:.5f}", flush=True)
    return out


def _iou(a, b, c) -> float:
    union = np.count_nonzero((a == c) | (b == c))
    return np.count_nonzero((a == c) & (b == c)) / union if union else 1.0


def miou(a: np.ndarray, b: np.ndarray) -> float:
    ious = []
    for c in np.union1d(np.unique(a), np.unique(b)):
        inter = np.count_nonzero((a == c) & (b == c))
        union = np.count_nonzero((a == c) | (b == c))
        ious.append(inter / union if union else 1.0)
    return float(np.mean(ious))


def _save_results(results, kind: str, out=None) -> int:
    """Write a side mode's results (``--early-exit``, ``--coarse``, ``--predict-only``) as JSON."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out else REPO / "benchmarks" / "results" / f"bench_apply_{kind}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"machine": platform.platform(), "cpus": os.cpu_count(),
                                        "load_avg_at_end": os.getloadavg()}, "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 stack planes instead of 200")
    ap.add_argument("--kinds", nargs="+", default=["rf", "xgb"], choices=["rf", "xgb"])
    ap.add_argument("--engines", nargs="+", default=["sklearn", "compiled", "auto"],
                    choices=["sklearn", "compiled", "auto"])
    ap.add_argument("--predictions", nargs="+", default=["exact", "coarse-to-fine"],
                    choices=["exact", "coarse-to-fine"], help="Segmenter prediction settings to run")
    ap.add_argument("--overlap", nargs="+", default=["off", "on"], choices=["off", "on"],
                    help="sequential planes (off) and / or featurise-while-predict (on)")
    ap.add_argument("--boundary-refinement", type=int, default=None, metavar="PX",
                    help="train the stack runs' classifiers with this boundary refinement (0 = off; default: "
                         "the library's)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="explicit runs kind:engine.prediction.overlap (e.g. rf:sklearn.coarse-to-fine.on); "
                         "rf:sklearn.exact.off is always added as the baseline of each kind")
    ap.add_argument("--stack-planes", type=int, default=None, help="planes of the stack case (0: no stack)")
    ap.add_argument("--exact-stack-planes", type=int, default=None,
                    help="planes of the stack case for the sklearn + exact baseline (default: all)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--predict-only", action="store_true",
                    help="time the predict step alone for every candidate engine (GTIL, TL2cgen, ONNX Runtime)")
    ap.add_argument("--coarse", action="store_true",
                    help="coarse-to-fine agreement and work on the shared sets with ground truth")
    ap.add_argument("--coarse-schemes", nargs="+", default=["v1", "default"], choices=list(COARSE_SCHEMES),
                    help="coarse-to-fine schemes for --coarse (v1: single stride-2 level; default: the Segmenter's)")
    ap.add_argument("--coarse-sets", nargs="+", default=None, choices=list(GT_SETS),
                    help="sets for --coarse / --early-exit")
    ap.add_argument("--early-exit", action="store_true",
                    help="early exit of the random forest vs every tree on every shared set with ground truth")
    ap.add_argument("--coarse-plane", type=int, default=1024,
                    help="side of the tiled TEM plane timed by --coarse (0: none)")
    ap.add_argument("--rows", type=int, default=2**20, help="rows for --predict-only (default 1024^2)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n_stack = args.stack_planes if args.stack_planes is not None else (8 if args.quick else 200)
    cases = [("plane_1024", 1024, 1), ("plane_2048", 2048, 1)] + (
        [(f"stack_{n_stack}x1024", 1024, n_stack)] if n_stack > 0 else [])
    if args.worker:
        kind, method, out_dir = args.worker
        print(json.dumps(worker(kind, method, cases, Path(out_dir))))
        return 0
    if args.early_exit:
        return _save_results(early_exit(args.coarse_sets), "early_exit", args.out)
    if args.coarse:
        return _save_results(coarse(args.coarse_schemes, args.coarse_sets, args.coarse_plane), "coarse", args.out)
    if args.predict_only:
        return _save_results(predict_only(args.rows), "predict", args.out)
    engines = ["sklearn"] + [e for e in args.engines if e != "sklearn"]
    base_method = "sklearn.exact.off"
    if args.methods:
        runs = []
        for m in args.methods:
            kind, _, method = m.partition(":")
            if kind not in ("rf", "xgb") or len(method.split(".")) != 3:
                ap.error(f"--methods takes kind:engine.prediction.overlap, e.g. rf:sklearn.exact.off; got {m!r}")
            runs.append((kind, method))
        kinds = list(dict.fromkeys(k for k, _ in runs))
        runs = [(k, base_method) for k in kinds] + [r for r in runs if r[1] != base_method]
    else:
        kinds = args.kinds
        runs = [(k, base_method) for k in kinds] + [
            (k, f"{e}.{p}.{o}") for k in kinds for e in engines for p in args.predictions for o in args.overlap
            if f"{e}.{p}.{o}" != base_method]
    n_exact = n_stack if args.exact_stack_planes is None else min(n_stack, args.exact_stack_planes)
    print("ISB (interactive-seg-backend) is not on PyPI and not installable here: not in this run.")
    print(f"load average at start: {os.getloadavg()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_apply_") as tmp:
        import tifffile

        from napari_vitseg.pipeline import Segmenter

        img, scr = tifffile.imread(SET / "image.tif"), tifffile.imread(SET / "scribbles.tif")
        for kind in kinds:
            seg_kw = {} if args.boundary_refinement is None else {"boundary_refinement": args.boundary_refinement}
            Segmenter(classifier=kind, **seg_kw).fit(img, scr).save(Path(tmp) / f"{kind}.vitseg")
            for method in [m for k, m in runs if k == kind]:
                cmd = [sys.executable, __file__, "--worker", kind, method, tmp]
                cmd += ["--stack-planes", str(n_exact if method == base_method else n_stack)]
                r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
                info = json.loads(r.stdout.strip().splitlines()[-1])
                for row in info["rows"]:
                    lab = np.load(Path(tmp) / f"{kind}_{method}_{row['case']}.npy", mmap_mode="r")
                    ref_case = row["case"] if row["planes"] <= n_exact else f"stack_{n_exact}x1024"
                    ref = np.load(Path(tmp) / f"{kind}_{base_method}_{ref_case}.npy", mmap_mode="r")
                    lab = lab[:len(ref)]
                    row["compared_planes"] = len(ref)
                    row["agreement"] = float(np.mean(lab == ref))
                    row["miou_vs_sklearn"] = miou(np.asarray(lab), np.asarray(ref))
                results.append(info)
    base_rows = [r for r in results if r["engine"] == "sklearn" and r["prediction"] == "exact"
                 and r["overlap"] == "off"]
    # the stack case of the baseline may have fewer planes (--exact-stack-planes): matched by size
    base = {(r["kind"], row["case"].split("_")[0] + str(row["size"])): row["mpx_per_s"]
            for r in base_rows for row in r["rows"]}
    base_cpu = {(r["kind"], row["case"].split("_")[0] + str(row["size"])): row["mpx_per_cpu_s"]
                for r in base_rows for row in r["rows"]}
    print(f"\n{'kind':4s} {'engine':9s} {'used':9s} {'prediction':14s} {'ovl':3s} {'case':15s} {'Mpx/s':>7s} "
          f"{'ratio':>6s} {'Mpx/cpu-s':>9s} {'cpu ratio':>9s} {'agree':>8s} {'mIoU':>6s} {'RSS MiB':>8s} "
          f"{'warm-up s':>9s} {'load':>9s}")
    for r in results:
        for row in r["rows"]:
            key = (r["kind"], row["case"].split("_")[0] + str(row["size"]))
            row["ratio_vs_sklearn"] = round(row["mpx_per_s"] / base[key], 3)
            row["cpu_ratio_vs_sklearn"] = round(row["mpx_per_cpu_s"] / base_cpu[key], 3)
            print(f"{r['kind']:4s} {r['engine']:9s} {r['engine_used_after']:9s} {r['prediction']:14s} "
                  f"{r['overlap']:3s} {row['case']:15s} "
                  f"{row['mpx_per_s']:7.2f} {row['ratio_vs_sklearn']:6.2f} {row['mpx_per_cpu_s']:9.2f} "
                  f"{row['cpu_ratio_vs_sklearn']:9.2f} {row['agreement']:8.5f} {row['miou_vs_sklearn']:6.4f} "
                  f"{r['peak_rss_mib']:8.0f} {r['warmup_s']:9.1f} {r['load_before']:4.1f}-{r['load_after']:4.1f}")
    for r in {r["kind"]: r for r in results if "max_depth" in r}.values():
        print(f"{r['kind']} forest: {r['trees']} trees, max depth {r['max_depth']}, {r['leaves']} leaves")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"bench_apply_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
            "python": sys.version.split()[0], "quick": args.quick, "stack_planes": n_stack,
            "exact_stack_planes": n_exact, "isb": "not installable (not on PyPI)",
            "boundary_refinement": args.boundary_refinement}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
