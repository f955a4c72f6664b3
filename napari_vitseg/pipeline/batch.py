"""Applying a trained segmenter to files and folders: the one implementation.

The CLI (``vitseg apply``), the Python API (:meth:`Segmenter.iter_apply_files`) and the
napari widget (*Apply to files*) all call these generators, so input expansion, output
naming, resume and atomic writing are the same everywhere:

- inputs: files as given, folders expanded to their TIFF files (sorted);
- outputs: ``<stem><suffix>.tif`` where the stem is the input's name without its TIFF
  suffix only (``cell.day1.tif`` -> ``cell.day1_seg.tif``); two inputs that would share an
  output, or an output that is one of the inputs, are refused before anything is written;
- each output is streamed plane by plane to a temporary ``.part`` name and renamed when
  complete; a rerun skips outputs that exist (only complete files ever carry the final name).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._progress import Progress
from .._validation import VitsegError
from ..io import expand_inputs, image_stem, open_image
from .segmenter import Segmenter, as_channels_last, plane_of

__all__ = ["output_paths", "iter_apply_file", "iter_apply_files"]

#: Progress of :func:`iter_apply_files` is reported in these units for the whole run.
PROGRESS_UNITS = 1000


def _same_file(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def output_paths(inputs: Sequence, output_dir, *, suffix: str = "_seg",
                 probabilities: bool = False) -> list[tuple[Path, Path, Path | None]]:
    """Output names for input files in ``output_dir``.

    Parameters
    ----------
    inputs : sequence of str or pathlib.Path
        Input files (already expanded; see :func:`napari_vitseg.io.expand_inputs`).
    output_dir : str or pathlib.Path
    suffix : str
        Added to each input's stem: ``<stem><suffix>.tif``.
    probabilities : bool
        Also name ``<stem><suffix>_probabilities.tif``.

    Returns
    -------
    list of (input, labels output, probabilities output or None)

    Raises
    ------
    VitsegError
        Two inputs that would be written to the same output (e.g. ``a.tif`` and ``a.tiff``,
        or the same name in two folders), or an output that is one of the inputs.

    Examples
    --------
    >>> [o.name for _, o, _ in output_paths(["d/cell.day1.tif", "d/cell.day2.tif"], "out")]
    ['cell.day1_seg.tif', 'cell.day2_seg.tif']
    """
    out_dir = Path(output_dir)
    rows = []
    by_output: dict[str, Path] = {}
    for inp in map(Path, inputs):
        stem = image_stem(inp)
        out = out_dir / f"{stem}{suffix}.tif"
        probs = out_dir / f"{stem}{suffix}_probabilities.tif" if probabilities else None
        for o in (out, probs):
            if o is None:
                continue
            key = os.path.normcase(os.path.abspath(o))
            if key in by_output:
                raise VitsegError(
                    f"{str(by_output[key])!r} and {str(inp)!r} would both be written to {str(o)!r}; rename one "
                    "of them or apply them into different output folders."
                )
            by_output[key] = inp
        rows.append((inp, out, probs))
    for _, out, probs in rows:
        for o in (out, probs):
            if o is not None and any(_same_file(o, i) for i, _, _ in rows):
                raise VitsegError(f"The output {str(o)!r} is one of the inputs; choose another output folder.")
    return rows


def iter_apply_file(seg: Segmenter, input_path, output_path, *, probabilities_path=None, channel_axis=None):
    """Segment an image file plane by plane and write the labels as you go.

    Memory stays bounded by one plane's features (row strips for large planes); each output
    is written to ``<output>.part`` and renamed when complete, so an interrupted run never
    leaves a file that looks finished.

    Parameters
    ----------
    seg : Segmenter
        Fitted.
    input_path : str or pathlib.Path
        A 2D, 3D or multichannel TIFF (read lazily).
    output_path : str or pathlib.Path
        Labels TIFF, uint8, the input's spatial shape.
    probabilities_path : str or pathlib.Path, optional
        Probabilities TIFF, float16, (Z, K, Y, X) or (K, Y, X).
    channel_axis : int, optional
        Channel axis of the input; default: the TIFF's samples axis (RGB) when the
        classifier was trained on several channels.

    Yields
    ------
    Progress
        One unit per plane.

    Returns
    -------
    pathlib.Path
        ``output_path``.

    Raises
    ------
    VitsegError
        Unreadable input, channel mismatch, missing output folder, an output that is the input.
    """
    from ..io import TiffPlaneWriter

    seg._check_fitted()
    for o in (output_path, probabilities_path):
        if o is not None and _same_file(Path(o), Path(input_path)):
            raise VitsegError(f"The output {str(o)!r} is the input image; choose another output name.")
    with open_image(input_path) as lazy:
        if channel_axis is None and seg.n_channels_ > 1:
            channel_axis = lazy.channel_axis
        image, nsp, nc = as_channels_last(lazy.data, channel_axis)
        if nc != seg.n_channels_:
            raise VitsegError(
                f"{str(input_path)!r} has {nc} channel(s) (axes {lazy.axes}, channel_axis={channel_axis}); "
                f"the classifier expects {seg.n_channels_}. Pass the channel axis (CLI --channel-axis)."
            )
        spatial = tuple(image.shape[:nsp])
        nz = spatial[0] if nsp == 3 else 1
        k = len(seg.classes_)
        out_w = TiffPlaneWriter(output_path, spatial, np.uint8, n_planes=nz,
                                metadata={"axes": "ZYX" if nsp == 3 else "YX"})
        prob_w = None
        try:
            if probabilities_path is not None:
                pshape = (nz, k, *spatial[-2:]) if nsp == 3 else (k, *spatial)
                prob_w = TiffPlaneWriter(probabilities_path, pshape, np.float16, n_planes=nz,
                                         metadata={"axes": "ZCYX" if nsp == 3 else "CYX"})
            for z in range(nz):
                yield Progress(z, nz, f"{Path(input_path).name}: plane {z + 1}/{nz}")
                p = seg.predict_plane(plane_of(image, nsp, z), use_cache=False)
                out_w.write(seg.labels_from_proba(p))
                if prob_w is not None:
                    prob_w.write(p.astype(np.float16))
            out_w.close()
            if prob_w is not None:
                prob_w.close()
        except BaseException:
            out_w.abort()
            if prob_w is not None:
                prob_w.abort()
            raise
    yield Progress(nz, nz, "done")
    return Path(output_path)


def iter_apply_files(seg: Segmenter, inputs: Sequence, output_dir, *, suffix: str = "_seg",
                     probabilities: bool = False, channel_axis=None, skip_existing: bool = True):
    """Segment image files (and the TIFF files of folders) into ``output_dir``.

    Outputs are named by :func:`output_paths`; with ``skip_existing`` a rerun skips the
    outputs that exist (resume: only complete files carry the final name). A file whose
    job is closed early (Cancel, Ctrl+C) leaves no output behind.

    Parameters
    ----------
    seg : Segmenter
        Fitted.
    inputs : sequence of str or pathlib.Path
        Files and folders.
    output_dir : str or pathlib.Path
        Created if missing.
    suffix : str
        Output names are ``<stem><suffix>.tif``.
    probabilities : bool
        Also write ``<stem><suffix>_probabilities.tif`` (float16).
    channel_axis : int, optional
        See :func:`iter_apply_file`.
    skip_existing : bool
        Skip inputs whose labels output exists.

    Yields
    ------
    Progress
        Fraction of the whole run, in :data:`PROGRESS_UNITS` units.

    Returns
    -------
    list of pathlib.Path
        The labels outputs, written or already present, in input order.

    Raises
    ------
    VitsegError
        Missing inputs, empty folders, outputs that would collide or overwrite an input, and
        the errors of :func:`iter_apply_file`.
    """
    seg._check_fitted()
    files = expand_inputs(inputs)
    rows = output_paths(files, output_dir, suffix=suffix, probabilities=probabilities)
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise VitsegError(f"The output {str(out_dir)!r} exists and is not a folder; give a folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    units = PROGRESS_UNITS
    for i, (inp, out, probs) in enumerate(rows):
        if skip_existing and out.exists() and (probs is None or probs.exists()):
            yield Progress(int(units * (i + 1) / n), units, f"{inp.name}: already done")
            continue
        job = iter_apply_file(seg, inp, out, probabilities_path=probs, channel_axis=channel_axis)
        try:
            while True:
                p = next(job)
                frac = (i + (p.done / p.total if p.total else 0)) / n
                yield Progress(int(units * frac), units, f"file {i + 1}/{n}: {p.msg}")
        except StopIteration:
            pass
        finally:
            job.close()  # an early close removes the partial output
    yield Progress(units, units, f"{n} file(s) done")
    return [out for _, out, _ in rows]

