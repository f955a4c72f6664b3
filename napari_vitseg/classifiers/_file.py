"""The classifier file: one self-describing zip, never a pickle.

Layout (``*.vitseg``)::

    metadata.json        format name and version, package version, feature config and
                         feature names, backbone name and weights SHA-256, classes (ids,
                         names, colours), classifier kind and parameters, training statistics
    model.skops          random forest, in skops' code-free format   (kind 'rf')
    model.ubj            XGBoost booster in its own UBJSON format      (kind 'xgb')
    stage1.skops ...     earlier stages of an auto-context classifier (format 2), same formats
    boundary.skops       the fine-scale classifier of the boundary band (format 3+; .ubj for XGBoost)
    arrays.npz           optional numeric state (e.g. the ViT PCA basis), loaded with
                         ``allow_pickle=False``

Loading checks the zip magic first and refuses pickles, truncated files and anything that
is not a napari-vitseg classifier, with a message that names the file.

Format versions: 1 (napari-vitseg 0.1.x) holds one classifier; 2 adds the auto-context
section and the earlier stages; 3 adds the boundary-refinement classifier
(:mod:`napari_vitseg.pipeline._boundary`); 4 adds the majority filter of the first labels
before the boundary band is found (``boundary.majority``; format 3 has none). A file is written
as version 4 when it holds a boundary classifier (so that a napari-vitseg that would ignore it,
or its majority window, refuses the file instead of predicting otherwise), else as version 2;
all four are read; a file of a later version is refused with a message to upgrade.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .._validation import VitsegError
from ..io._atomic import atomic_write
from ._estimators import CLASSIFIERS, RandomForestPixelClassifier, XGBoostPixelClassifier
from ._schema import LIMITS, STAGE_FILES, validate_metadata

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save_classifier_file", "load_classifier_file", "load_classifier_stages",
           "read_metadata"]

FORMAT_NAME = "napari-vitseg classifier"
FORMAT_VERSION = 4
#: The version written for a file without a boundary classifier (readable by napari-vitseg 0.2+).
FORMAT_VERSION_NO_BOUNDARY = 2

# scikit-learn types a random-forest file may contain; anything else is refused.
_TRUSTED_SKOPS_TYPES = [
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "numpy.dtype",
    "numpy.ndarray",
    "builtins.slice",
]


def _estimator_bytes(estimator) -> tuple[str, bytes]:
    if isinstance(estimator, RandomForestPixelClassifier):
        import skops.io as sio

        return "model.skops", sio.dumps(estimator.estimator_)
    if isinstance(estimator, XGBoostPixelClassifier):
        return "model.ubj", bytes(estimator.booster_.save_raw(raw_format="ubj"))
    raise VitsegError(f"Cannot save a classifier of type {type(estimator).__name__}.")


def _section(estimator, name: str) -> dict:
    return {"kind": estimator.kind, "params": estimator.get_params(), "classes": estimator.classes_.tolist(),
            "n_features_in": int(estimator.n_features_in_), "model_file": name}


def save_classifier_file(path, estimator, metadata: dict, arrays: dict | None = None, *,
                         inputs: Iterable = (), stages: Iterable = (), boundary=None) -> Path:
    """Write a classifier file atomically (a unique temporary name, then rename).

    Parameters
    ----------
    path : str or pathlib.Path
        Destination (conventionally ``*.vitseg``).
    estimator : RandomForestPixelClassifier or XGBoostPixelClassifier
        A fitted classifier.
    metadata : dict
        JSON-serialisable metadata; the format name/version and classifier section are added.
    arrays : dict of str to ndarray, optional
        Extra numeric state, stored in ``arrays.npz``.
    inputs : iterable of path, optional
        Files the caller read (image, scribbles): the classifier file must be none of them.
    stages : iterable of estimators, optional
        The earlier stages of an auto-context classifier (stage 1 first; ``estimator`` is the
        last stage), stored as ``stage{i}.skops`` / ``.ubj`` and listed in the metadata's
        ``stages``; the metadata must then hold the ``autocontext`` section.
    boundary : estimator, optional
        The boundary-refinement classifier, stored as ``boundary.skops`` / ``.ubj`` and
        described in the metadata's ``boundary.classifier``; the metadata must then hold the
        ``boundary`` section (its ``rows``, ``columns`` and ``majority``). The file is then format 4.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    VitsegError
        ``path`` is an input, a folder or a non-regular file, or its folder is missing.
    """
    path = Path(path)
    name, blob = _estimator_bytes(estimator)
    meta = dict(metadata)
    meta["format"] = FORMAT_NAME
    meta["format_version"] = FORMAT_VERSION if boundary is not None else FORMAT_VERSION_NO_BOUNDARY
    meta["classifier"] = _section(estimator, name)
    members = [(name, blob)]
    meta["stages"] = []
    for i, st in enumerate(stages, start=1):
        ext, data = _estimator_bytes(st)
        members.append((f"stage{i}.{ext.split('.')[1]}", data))
        meta["stages"].append(_section(st, members[-1][0]))
    if boundary is not None:
        ext, data = _estimator_bytes(boundary)
        members.append((f"boundary.{ext.split('.')[1]}", data))
        meta["boundary"] = {**meta["boundary"], "classifier": _section(boundary, members[-1][0])}
    with atomic_write(path, inputs=inputs, what="classifier file") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("metadata.json", json.dumps(meta, indent=2, sort_keys=True))
            for member, data in members:
                zf.writestr(member, data)
            if arrays:
                buf = io.BytesIO()
                np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
                zf.writestr("arrays.npz", buf.getvalue())
    return path


def _check_members(zf: zipfile.ZipFile, path: Path, limits: dict[str, int], max_members: int, what: str,
                   ratio_exempt: tuple[str, ...] = ()) -> None:
    """Refuse a zip whose directory declares too many, too large or too compressed members
    (checked before anything is decompressed). Members named in ``ratio_exempt`` (sparse
    arrays that deflate by design) are bounded by their size limit only."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise VitsegError(f"{what} of {str(path)!r} has {len(infos)} members (at most {max_members}); it was not "
                          "written by napari-vitseg.")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise VitsegError(f"{what} of {str(path)!r} holds duplicate members; it was not written by napari-vitseg.")
    total = 0
    for info in infos:
        limit = limits.get(info.filename, limits.get("*", 0))
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > limit or (info.file_size > 2**20 and ratio > LIMITS["compression_ratio"]
                                      and info.filename not in ratio_exempt):
            raise VitsegError(
                f"{what} of {str(path)!r} declares a member {info.filename[:80]!r} of {info.file_size} bytes "
                f"(compressed {info.compress_size}); refusing to unpack it."
            )
    if total > limits.get("total", sum(limits.values())):
        raise VitsegError(f"{what} of {str(path)!r} declares {total} bytes in all; refusing to unpack it.")


def open_zip_file(path: Path, *, noun: str, save_hint: str) -> zipfile.ZipFile:
    """A napari-vitseg zip file (a classifier or project file), opened after the checks that
    decompress nothing: it exists, is a regular file, is not a pickle and is a zip archive.

    Parameters
    ----------
    path : pathlib.Path
    noun : str
        What the file is, for messages (``'classifier file'``, ``'project file'``).
    save_hint : str
        What to do instead of loading a pickle (``'retrain and save the classifier'``).

    Returns
    -------
    zipfile.ZipFile
        Open; the caller checks its members (:func:`_check_members`) and closes it.

    Raises
    ------
    VitsegError
        Missing, a folder, not a regular file, a pickle, not a zip, or a damaged zip directory.
    """
    if not path.exists():
        raise VitsegError(f"{noun.capitalize()} {str(path)!r} does not exist.")
    if path.is_dir():
        raise VitsegError(f"{str(path)!r} is a folder, not a {noun}.")
    if not path.is_file():
        raise VitsegError(f"{str(path)!r} is not a regular file (a device, pipe or socket); give a {noun}.")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"cc"):
        raise VitsegError(
            f"{str(path)!r} looks like a Python pickle. napari-vitseg never loads pickles (they can run "
            f"arbitrary code); {save_hint} with napari-vitseg."
        )
    if head != b"PK\x03\x04":
        raise VitsegError(f"{str(path)!r} is not a napari-vitseg {noun} (not a zip archive).")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise VitsegError(f"{noun.capitalize()} {str(path)!r} is damaged or truncated ({str(e)[:100]}); "
                          "save it again.") from None


def _open_zip(path: Path) -> zipfile.ZipFile:
    zf = open_zip_file(path, noun="classifier file", save_hint="retrain and save the classifier")
    try:
        _check_members(zf, path, {"metadata.json": LIMITS["metadata_bytes"], "model.skops": LIMITS["model_bytes"],
                                  "model.ubj": LIMITS["model_bytes"], "arrays.npz": LIMITS["arrays_bytes"],
                                  **{f: LIMITS["model_bytes"] for f in STAGE_FILES},
                                  "boundary.skops": LIMITS["model_bytes"], "boundary.ubj": LIMITS["model_bytes"],
                                  "*": 0, "total": LIMITS["model_bytes"] + LIMITS["arrays_bytes"]
                                  + LIMITS["metadata_bytes"]},
                       LIMITS["members"], "The zip")
    except BaseException:
        zf.close()
        raise
    return zf


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """One member's bytes (its declared size was checked); CRC and truncation errors -> VitsegError."""
    try:
        return zf.read(name)
    except KeyError:
        raise VitsegError(f"{str(path)!r} lacks its member {name!r}; save the classifier again.") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
        raise VitsegError(f"Classifier file {str(path)!r} is damaged ({name}: {str(e)[:100]}); save it again.") from None


def read_metadata(path) -> dict:
    """Read and validate only the JSON metadata of a classifier file.

    Returns
    -------
    dict
        Checked by :func:`~napari_vitseg.classifiers._schema.validate_metadata`.

    Raises
    ------
    VitsegError
        Missing file, not a regular file, pickle, not a zip, truncated, over the size limits,
        invalid metadata, or a format newer than this napari-vitseg.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        if "metadata.json" not in zf.namelist():
            raise VitsegError(f"{str(path)!r} has no metadata.json: not a napari-vitseg classifier.")
        raw = _read_member(zf, "metadata.json", path)
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise VitsegError(f"The metadata of {str(path)!r} is not valid JSON ({str(e)[:100]}).") from None
    if isinstance(meta, dict) and isinstance(meta.get("format_version"), int) and meta["format_version"] > FORMAT_VERSION:
        raise VitsegError(
            f"{str(path)!r} uses classifier format {meta['format_version']}, newer than this napari-vitseg "
            f"supports ({FORMAT_VERSION}); upgrade napari-vitseg."
        )
    return validate_metadata(meta, path)


def _read_npz(data: bytes, path: Path) -> dict[str, np.ndarray]:
    """Numeric arrays of ``arrays.npz``; declared shapes are checked before any array is read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            _check_members(inner, path, {"*": LIMITS["arrays_bytes"], "total": LIMITS["arrays_bytes"]}, 64,
                           "arrays.npz")
            out = {}
            for info in inner.infolist():
                if not info.filename.endswith(".npy"):
                    raise VitsegError(f"arrays.npz of {str(path)!r} holds {info.filename[:80]!r}, not an array.")
                with inner.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise VitsegError(f"arrays.npz of {str(path)!r} uses .npy format {version}; refusing it.")
                    shape, fortran, dtype = read_header(f)  # the header only: shape and dtype
                    if dtype.hasobject or dtype.kind not in "biuf":
                        raise VitsegError(f"arrays.npz of {str(path)!r} holds a non-numeric array; refusing it.")
                    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if nbytes > info.file_size:
                        raise VitsegError(f"arrays.npz of {str(path)!r} declares an array larger than its data.")
                    data = f.read(nbytes)
                    if len(data) != nbytes:
                        raise VitsegError(f"arrays.npz of {str(path)!r} is truncated; save the classifier again.")
                    arr = np.frombuffer(data, dtype=dtype).copy()
                    out[info.filename[:-4]] = (arr.reshape(shape[::-1]).transpose() if fortran
                                               else arr.reshape(shape))
            return out
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        if isinstance(e, VitsegError):
            raise
        raise VitsegError(f"arrays.npz of {str(path)!r} is damaged ({str(e)[:100]}); save the classifier again.") from None


def _check_forest(model, n_features: int, classes: np.ndarray, path: Path) -> None:
    """Check every tree of a loaded random forest before it is used.

    scikit-learn's prediction trusts the tree arrays: a child index outside the tree or a
    feature index >= n_features reads outside memory (a crash, not an exception). A valid tree
    built by scikit-learn numbers nodes depth-first, so each internal node's children come after
    it; leaves have both children -1.
    """
    from sklearn.tree import DecisionTreeClassifier

    k = len(classes)
    estimators = getattr(model, "estimators_", None)
    if not isinstance(estimators, list) or not estimators or len(estimators) > 10_000:
        raise VitsegError(f"The random forest in {str(path)!r} has no valid list of trees.")
    if getattr(model, "n_features_in_", None) != n_features or getattr(model, "n_outputs_", None) != 1:
        raise VitsegError(f"The random forest in {str(path)!r} does not take {n_features} features; refusing it.")
    if not np.array_equal(np.asarray(getattr(model, "classes_", [])), classes):
        raise VitsegError(f"The random forest in {str(path)!r} predicts other classes than its metadata says.")
    for t, est in enumerate(estimators):
        bad = f"Tree {t} of the random forest in {str(path)!r}"
        if type(est) is not DecisionTreeClassifier or getattr(est, "n_outputs_", None) != 1:
            raise VitsegError(f"{bad} is not a single-output decision tree; refusing the file.")
        if getattr(est, "n_classes_", None) != k or getattr(est, "n_features_in_", None) != n_features:
            raise VitsegError(f"{bad} does not match the forest's classes or features; refusing the file.")
        tree = est.tree_
        n = int(tree.node_count)
        left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
        feature, threshold = np.asarray(tree.feature), np.asarray(tree.threshold)
        value = np.asarray(tree.value)
        if (n < 1 or tree.n_features != n_features or tree.n_outputs != 1 or list(tree.n_classes) != [k]
                or left.shape != (n,) or right.shape != (n,) or feature.shape != (n,) or threshold.shape != (n,)
                or value.shape != (n, 1, k)):
            raise VitsegError(f"{bad} has arrays of inconsistent shapes; refusing the file.")
        idx = np.arange(n)
        leaf = left == -1
        internal = ~leaf
        if (np.any(right[leaf] != -1) or np.any(left[internal] <= idx[internal])
                or np.any(right[internal] <= idx[internal]) or np.any(left[internal] >= n)
                or np.any(right[internal] >= n)):
            raise VitsegError(f"{bad} has child indices outside the tree; refusing the file.")
        if np.any(feature[internal] < 0) or np.any(feature[internal] >= n_features):
            raise VitsegError(f"{bad} splits on features outside 0..{n_features - 1}; refusing the file.")
        if not np.all(np.isfinite(threshold[internal])) or not np.all(np.isfinite(value)):
            raise VitsegError(f"{bad} holds non-finite thresholds or values; refusing the file.")


def load_classifier_file(path):
    """Load a classifier file without executing code from it.

    Everything is checked before use: the zip directory's declared sizes (before any member is
    decompressed), the metadata schema, the classifier's parameters, the types inside the skops
    model (scikit-learn trees and numpy arrays only), every tree's arrays (children and
    features in range, finite thresholds, value shapes matching the classes), XGBoost's feature
    and class counts, and the shapes of ``arrays.npz``.

    Returns
    -------
    estimator : RandomForestPixelClassifier or XGBoostPixelClassifier
    metadata : dict
    arrays : dict of str to ndarray

    Raises
    ------
    VitsegError
        Missing, pickled, truncated, oversized or foreign files; invalid metadata; untrusted
        types or out-of-range trees inside the model.
    """
    ests, meta, arrays = _load(path, stages=False)
    return ests[-1], meta, arrays


def load_classifier_stages(path):
    """Load every stage of a classifier file, with the checks of :func:`load_classifier_file`.

    Returns
    -------
    estimators : list of RandomForestPixelClassifier or XGBoostPixelClassifier
        Stage 1 first, the last stage last (one estimator for a file without auto-context).
    metadata : dict
        With the boundary-refinement classifier (format 3) under ``metadata['boundary']['estimator']``.
    arrays : dict of str to ndarray
    """
    return _load(path, stages=True)


def _load(path, stages: bool):
    path = Path(path)
    meta = read_metadata(path)
    sections = (list(meta.get("stages") or []) if stages else []) + [meta["classifier"]]
    boundary = (meta.get("boundary") or {}).get("classifier") if stages else None
    with _open_zip(path) as zf:
        blobs = [_read_member(zf, c["model_file"], path) for c in sections]
        arrays = _read_npz(_read_member(zf, "arrays.npz", path), path) if "arrays.npz" in zf.namelist() else {}
        boundary_blob = _read_member(zf, boundary["model_file"], path) if boundary else None
    ests = []
    for i, (c, blob) in enumerate(zip(sections, blobs, strict=True)):
        last = i == len(sections) - 1
        names = meta.get("feature_names")
        if not last and names is not None:
            names = names[: int(c["n_features_in"])] if i == 0 else names
        ests.append(_load_estimator(c, blob, names, path))
    if boundary:
        names = meta.get("feature_names")
        cols = meta["boundary"]["columns"]
        meta["boundary"]["estimator"] = _load_estimator(boundary, boundary_blob,
                                                        [names[i] for i in cols] if names else None, path)
    return ests, meta, arrays


def _load_estimator(c: dict, blob: bytes, feature_names, path: Path):
    kind = c["kind"]
    params = dict(c.get("params", {}))
    if kind == "rf":  # saved before max_samples existed: Breiman's bootstrap, kept for a refit
        params.setdefault("max_samples", None)
    try:
        est = CLASSIFIERS[kind](**params)
        est.validate_params()
    except TypeError as e:
        raise VitsegError(f"{str(path)!r} holds unknown classifier parameters ({e}); save it again.") from None
    except VitsegError as e:
        raise VitsegError(f"{str(path)!r} holds invalid classifier parameters: {e}") from None
    classes = np.asarray(c["classes"], dtype=np.int64)
    n_features = int(c["n_features_in"])
    if kind == "rf":
        model = _load_skops(blob, path)
        _check_forest(model, n_features, classes, path)
        model.n_jobs, model.verbose = est.n_jobs, 0  # never the file's thread count
        est.estimator_ = model
    else:
        est.booster_ = _load_xgboost(blob, path, n_features, len(classes))
    est.classes_ = classes
    est.n_features_in_ = n_features
    if feature_names is not None:
        est.feature_names_in_ = np.asarray(feature_names, dtype=object)
    return est


def _load_skops(blob: bytes, path: Path):
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as inner:
            _check_members(inner, path, {"*": LIMITS["model_bytes"], "total": LIMITS["model_bytes"]},
                           LIMITS["skops_members"], "The skops model")
        untrusted = [t for t in sio.get_untrusted_types(data=blob) if t not in _TRUSTED_SKOPS_TYPES]
    except VitsegError:
        raise
    except Exception as e:  # noqa: BLE001 - a pickle or garbage instead of a skops zip
        raise VitsegError(f"The model in {str(path)!r} is not a skops file ({type(e).__name__}); refusing it.") from None
    if untrusted:
        raise VitsegError(f"{str(path)!r} contains untrusted types {untrusted[:5]}; refusing to load it.")
    try:
        model = sio.loads(blob, trusted=_TRUSTED_SKOPS_TYPES)
    except Exception as e:  # noqa: BLE001 - skops raises several types for malformed or untrusted content
        raise VitsegError(f"The model in {str(path)!r} cannot be loaded safely ({type(e).__name__}: "
                          f"{str(e)[:100]}).") from None
    if type(model) is not RandomForestClassifier:
        raise VitsegError(f"{str(path)!r} holds a {type(model).__name__}, not a random forest; refusing to use it.")
    return model


def _xgb_int(value, what: str, bad: str) -> int:
    """An integer that XGBoost stores as a decimal string (``"45"``) or a number."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise VitsegError(f"{bad} has no valid {what}; refusing the file.")


def _xgb_array(tree: dict, key: str, n: int, kind: str, bad: str) -> np.ndarray:
    arr = tree.get(key)
    arr = np.asarray(arr if isinstance(arr, (np.ndarray, list)) else None)
    if arr.shape != (n,) or (n and arr.dtype.kind not in ("iu" if kind == "i" else "iuf")):
        raise VitsegError(f"{bad} has a {key!r} array of the wrong length or type; refusing the file.")
    return arr.astype(np.int64 if kind == "i" else np.float64)


def _check_xgboost_model(doc, n_features: int, n_classes: int, path: Path) -> None:
    """Check a decoded XGBoost model (see :mod:`._ubjson`) before XGBoost loads it.

    XGBoost's prediction trusts the tree arrays: a child index outside the tree, a feature index
    >= the feature count or a tree's class group outside the classes reads or writes outside
    memory (a crash, not an exception). Checked: a ``gbtree`` booster of ``n_features`` features
    and the classes of the metadata; as many trees as rounds x class groups x parallel trees,
    each with a valid class group; in every tree, arrays of ``num_nodes`` entries, children in
    range or -1 (a leaf has both -1), each node the child of at most one node and never of the
    root (so the nodes reachable from the root form a tree: no cycles), numerical splits only,
    split features in ``0..n_features-1``, finite split conditions (leaf values) and weights,
    and one value per leaf. Deleted nodes (left by XGBoost's pruner) must be unreachable.
    """
    where = f"The XGBoost model in {str(path)!r}"
    try:
        learner = doc["learner"]
        param = learner["learner_model_param"]
        gb = learner["gradient_booster"]
        model = gb["model"]
        trees, tree_info = model["trees"], model["tree_info"]
        gparam = model["gbtree_model_param"]
    except (KeyError, TypeError):
        raise VitsegError(f"{where} lacks its learner, booster or trees; refusing the file.") from None
    if gb.get("name") != "gbtree":
        raise VitsegError(f"{where} is not a tree booster (gbtree); refusing the file.")
    if _xgb_int(param.get("num_feature"), "feature count", where) != n_features:
        raise VitsegError(f"{where} takes {param.get('num_feature')} features, its metadata says {n_features}; "
                          "refusing the file.")
    n_out = _xgb_int(param.get("num_class", "0"), "class count", where)
    if (n_classes == 2 and n_out not in (0, 1)) or (n_classes > 2 and n_out != n_classes):
        raise VitsegError(f"{where} predicts {n_out} classes, its metadata says {n_classes}; refusing the file.")
    if _xgb_int(param.get("num_target", "1"), "target count", where) != 1:
        raise VitsegError(f"{where} has several targets; refusing the file.")
    groups = max(n_out, 1)
    tree_info = np.asarray(tree_info if isinstance(tree_info, (list, np.ndarray)) else None)
    n_trees = _xgb_int(gparam.get("num_trees"), "tree count", where)
    parallel = _xgb_int(gparam.get("num_parallel_tree", "1"), "parallel tree count", where)
    if (not isinstance(trees, list) or len(trees) != n_trees or tree_info.shape != (n_trees,)
            or (n_trees and tree_info.dtype.kind not in "iu") or parallel < 1):
        raise VitsegError(f"{where} declares {n_trees} trees but holds another number; refusing the file.")
    if n_trees % (groups * parallel) or np.any(tree_info < 0) or np.any(tree_info >= groups):
        raise VitsegError(f"{where} does not hold one tree per round and class; refusing the file.")
    rounds = n_trees // (groups * parallel)
    if n_trees and not np.array_equal(np.bincount(tree_info.astype(np.int64), minlength=groups),
                                      np.full(groups, rounds * parallel)):
        raise VitsegError(f"{where} does not hold one tree per round and class; refusing the file.")
    indptr = model.get("iteration_indptr")
    if indptr is not None and not np.array_equal(np.asarray(indptr),
                                                 np.arange(rounds + 1) * (groups * parallel)):
        raise VitsegError(f"{where} has an inconsistent round index (iteration_indptr); refusing the file.")
    for t, tree in enumerate(trees):
        bad = f"Tree {t} of {where[4:]}"
        if not isinstance(tree, dict) or not isinstance(tree.get("tree_param"), dict):
            raise VitsegError(f"{bad} is not a tree; refusing the file.")
        tp = tree["tree_param"]
        n = _xgb_int(tp.get("num_nodes"), "node count", bad)
        if n < 1 or _xgb_int(tp.get("num_feature"), "feature count", bad) != n_features \
                or _xgb_int(tp.get("size_leaf_vector", "1"), "leaf size", bad) not in (0, 1):
            raise VitsegError(f"{bad} does not match the model's features or has vector leaves; refusing the file.")
        left = _xgb_array(tree, "left_children", n, "i", bad)
        right = _xgb_array(tree, "right_children", n, "i", bad)
        split = _xgb_array(tree, "split_indices", n, "i", bad)
        stype = _xgb_array(tree, "split_type", n, "i", bad)
        default = _xgb_array(tree, "default_left", n, "i", bad)
        values = [_xgb_array(tree, k, n, "f", bad) for k in ("split_conditions", "base_weights")]
        parents = _xgb_array(tree, "parents", n, "i", bad)
        for k in ("loss_changes", "sum_hessian"):
            _xgb_array(tree, k, n, "f", bad)
        leaf = left == -1
        internal = ~leaf
        children = np.concatenate([left[internal], right[internal]])
        if (np.any(right[leaf] != -1) or np.any(children < 1) or np.any(children >= n)
                or np.any(np.bincount(children, minlength=n) > 1)):
            raise VitsegError(f"{bad} has child indices outside the tree or shared; refusing the file.")
        # the nodes reachable from the root (the root is nobody's child and no node has two
        # parents, so a cycle cannot be reached): only they are ever visited by a prediction
        reach = np.zeros(n, bool)
        reach[0] = True
        frontier = np.array([0])
        while frontier.size:
            frontier = frontier[internal[frontier]]
            frontier = np.concatenate([left[frontier], right[frontier]])
            reach[frontier] = True
        r_int = reach & internal
        if np.any(parents[left[r_int]] != np.flatnonzero(r_int)) or np.any(parents[right[r_int]] != np.flatnonzero(r_int)):
            raise VitsegError(f"{bad} has parent indices that disagree with its children; refusing the file.")
        if np.any(split[r_int] < 0) or np.any(split[r_int] >= n_features):
            raise VitsegError(f"{bad} splits on features outside 0..{n_features - 1}; refusing the file.")
        if np.any(stype[reach] != 0) or np.any((default[reach] != 0) & (default[reach] != 1)):
            raise VitsegError(f"{bad} holds categorical splits or invalid flags; refusing the file.")
        if any(not np.all(np.isfinite(v[reach])) for v in values):
            raise VitsegError(f"{bad} holds non-finite split conditions or leaf values; refusing the file.")


def _load_xgboost(blob: bytes, path: Path, n_features: int, n_classes: int):
    import xgboost as xgb

    from ._ubjson import UBJSONError, decode

    try:  # in bounded Python first: XGBoost's own reader trusts declared lengths (abort, segfault)
        doc = decode(blob)
    except (UBJSONError, RecursionError, MemoryError) as e:
        raise VitsegError(f"The XGBoost model in {str(path)!r} is not valid UBJSON ({str(e)[:100]}); "
                          "save the classifier again.") from None
    _check_xgboost_model(doc, n_features, n_classes, path)
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(blob))
    except xgb.core.XGBoostError as e:
        raise VitsegError(f"The XGBoost model in {str(path)!r} cannot be read ({str(e).splitlines()[0][:100]}).") from None
    if booster.num_features() != n_features:
        raise VitsegError(f"The XGBoost model in {str(path)!r} takes {booster.num_features()} features, its metadata "
                          f"says {n_features}; refusing the file.")
    try:
        n_out = int(json.loads(booster.save_config())["learner"]["learner_model_param"]["num_class"])
    except (KeyError, ValueError, TypeError):
        raise VitsegError(f"The XGBoost model in {str(path)!r} has no readable class count; refusing it.") from None
    if (n_classes == 2 and n_out not in (0, 1)) or (n_classes > 2 and n_out != n_classes):
        raise VitsegError(f"The XGBoost model in {str(path)!r} predicts {n_out} classes, its metadata says "
                          f"{n_classes}; refusing the file.")
    return booster
