"""File names and inputs: which suffixes are images, stems, input expansion, sample data.

One copy of each rule: the CLI, the batch runner, the napari reader and the widgets all take
their suffixes, stems and input lists from here. Three kinds of input name one image:

- a file (TIFF / BigTIFF / OME-TIFF, or PNG / JPEG / BMP for small images);
- a zarr store: a folder named ``*.zarr`` / ``*.ome.zarr``, or any folder holding zarr
  metadata (``zarr.json``, ``.zgroup``, ``.zarray``), see :func:`is_zarr`;
- a glob pattern naming a stack of 2D TIFF slices (``"slices/*.tif"``), see :func:`is_pattern`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from .._validation import VitsegError

__all__ = [
    "TIFF_SUFFIXES",
    "ZARR_SUFFIXES",
    "STACK_SUFFIXES",
    "IMAGE_SUFFIXES",
    "ZARR_METADATA",
    "image_stem",
    "is_tiff",
    "is_zarr",
    "is_pattern",
    "pattern_files",
    "expand_inputs",
    "sample_data_dir",
]

#: Suffixes of TIFF files, longest first (``.ome.tif`` before ``.tif``), lower case.
TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".tf8")
#: Suffixes of zarr stores (folders), longest first, lower case.
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
#: What :func:`napari_vitseg.io.open_image` opens lazily by name: TIFF files and zarr folders.
STACK_SUFFIXES = TIFF_SUFFIXES + ZARR_SUFFIXES
#: Every image suffix :func:`napari_vitseg.io.read_image` reads (TIFF via tifffile, zarr via
#: zarr / ome-zarr, the rest via imageio), lower case.
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".png", ".jpg", ".jpeg", ".bmp") + ZARR_SUFFIXES
#: Files whose presence makes a folder a zarr store (zarr v3, v2 group, v2 array).
ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray")

_GLOB_MAGIC = "*?["


def _suffix_of(name: str, suffixes: Iterable[str]) -> str | None:
    low = name.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s) and len(name) > len(s):
            return name[len(name) - len(s):]
    return None


def is_tiff(path) -> bool:
    """Whether ``path``'s name ends in a TIFF suffix (case-insensitive)."""
    return _suffix_of(Path(path).name, TIFF_SUFFIXES) is not None


def is_zarr(path) -> bool:
    """Whether ``path`` names a zarr store.

    A zarr store is a folder named ``*.zarr`` / ``*.ome.zarr`` (case-insensitive; by name
    only, as :func:`is_tiff`), or an existing folder that holds zarr metadata
    (:data:`ZARR_METADATA`) whatever its name.

    Examples
    --------
    >>> is_zarr("data/cells.ome.zarr"), is_zarr("a.ZARR/"), is_zarr("a.tif"), is_zarr(".zarr")
    (True, True, False, False)
    """
    p = Path(path)
    if _suffix_of(p.name, ZARR_SUFFIXES) is not None:
        return True
    return p.is_dir() and any((p / m).is_file() for m in ZARR_METADATA)


def is_pattern(path) -> bool:
    """Whether ``path`` is a glob pattern (``*``, ``?``, ``[``) rather than an existing path.

    A path that exists is never a pattern, even if its name holds ``[`` or ``*``.

    Examples
    --------
    >>> is_pattern("slices/*.tif"), is_pattern("slices/z_??.tif"), is_pattern("a.tif")
    (True, True, False)
    """
    s = os.fspath(path)
    return any(c in s for c in _GLOB_MAGIC) and not os.path.lexists(os.path.expanduser(s))


def pattern_files(pattern) -> list[str]:
    """The regular files a glob pattern matches, in natural order (as FIJI / ilastik sequences).

    Natural order sorts the numbers in names by value (``z2.tif`` before ``z10.tif``), the
    order of tifffile's ``TiffSequence``.

    Parameters
    ----------
    pattern : str or pathlib.Path
        A glob pattern; ``~`` is expanded.

    Returns
    -------
    list of str
        Possibly empty.
    """
    from tifffile import natural_sorted

    found = glob.glob(os.path.expanduser(os.fspath(pattern)))
    return natural_sorted(f for f in found if os.path.isfile(f))


def image_stem(path) -> str:
    """The name of an image without its image suffix, and only that suffix.

    Unlike ``name.split('.')[0]``, dots inside the name are kept, so that ``cell.day1.tif``
    and ``cell.day2.tif`` keep distinct stems; ``.ome.tif`` and ``.ome.zarr`` count as one
    suffix. A glob pattern of slices is named after the folder it points into
    (``data/slices/*.tif`` -> ``slices``).

    Parameters
    ----------
    path : str or pathlib.Path
        A file, a zarr folder or a glob pattern (:func:`is_pattern`).

    Returns
    -------
    str

    Examples
    --------
    >>> image_stem("data/cell.day1.tif"), image_stem("a.OME.TIFF"), image_stem("notes.v2.txt")
    ('cell.day1', 'a', 'notes.v2')
    >>> image_stem("data/cells.ome.zarr"), image_stem("data/raw.zarr/"), image_stem("data/slices/*.tif")
    ('cells', 'raw', 'slices')
    """
    if is_pattern(path):
        parts = Path(os.path.expanduser(os.fspath(path))).absolute().parts
        first = next(i for i, part in enumerate(parts) if any(c in part for c in _GLOB_MAGIC))
        folder = parts[first - 1] if first > 0 else ""
        return folder if folder and folder != parts[0] else "stack"
    name = Path(path).name
    suffix = _suffix_of(name, IMAGE_SUFFIXES)
    if suffix is not None:
        return name[: -len(suffix)]
    return Path(name).stem


def _is_listed(f: Path, suffixes) -> bool:
    """Whether folder expansion takes ``f``: a file with one of ``suffixes``, or a folder
    with one of the zarr suffixes among ``suffixes``; never a hidden name (``.x.part.zarr``
    staging stores, macOS ``._x.tif`` resource files)."""
    suffix = _suffix_of(f.name, suffixes)
    if suffix is None or f.name.startswith("."):
        return False
    return f.is_dir() if suffix.lower() in ZARR_SUFFIXES else f.is_file()


def expand_inputs(paths: Iterable, *, suffixes: tuple[str, ...] = STACK_SUFFIXES,
                  what: str = "TIFF") -> list[Path]:
    """Expand folders to the images they hold (sorted by name); keep everything else as one input.

    - a file is kept as given (the reader then says whether it can read it);
    - a zarr store (:func:`is_zarr`: a folder named ``*.zarr`` or holding zarr metadata) is
      one input, never expanded;
    - a glob pattern (:func:`is_pattern`, e.g. ``"slices/*.tif"``) is one input: the stack of
      the slices it matches (see :func:`napari_vitseg.io.open_image`);
    - any other folder expands to its files with one of ``suffixes`` and, when ``suffixes``
      holds a zarr suffix, its ``*.zarr`` sub-folders; hidden names (``.x``) are skipped.

    Parameters
    ----------
    paths : iterable of str or pathlib.Path
        Files, folders and patterns, in the order the user gave them.
    suffixes : tuple of str
        Suffixes (lower case) taken from folders; default :data:`STACK_SUFFIXES` (TIFF
        files and zarr folders).
    what : str
        Name of the file kind, for messages (``'TIFF'``, ``'image'``).

    Returns
    -------
    list of pathlib.Path
        Files, zarr folders and patterns; an input given twice is kept once.

    Raises
    ------
    VitsegError
        A path that does not exist, is neither a file nor a folder, a folder with no
        matching file, a pattern that matches no file, or nothing to process at all.
    """
    out: list[Path] = []
    given = [Path(p).expanduser() for p in paths]
    takes_zarr = any(s in ZARR_SUFFIXES for s in suffixes)
    for p in given:
        if is_pattern(p):
            if not pattern_files(p):
                raise VitsegError(
                    f"No files match the pattern {str(p)!r}; check the folder and the pattern "
                    "(e.g. 'slices/*.tif')."
                )
            out.append(p)
        elif p.is_dir() and is_zarr(p):
            out.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.iterdir() if _is_listed(f, suffixes))
            if not found:
                kinds = f"{what} files or zarr folders" if takes_zarr else f"{what} files"
                raise VitsegError(
                    f"Folder {str(p)!r} contains no {kinds} ({', '.join(suffixes)}); pick the folder "
                    f"that holds them, or give a pattern such as '{p / '*.tif'}' for a stack of slices."
                )
            out += found
        elif not p.exists():
            raise VitsegError(f"Input {str(p)!r} does not exist; check the path.")
        elif not p.is_file():
            raise VitsegError(f"Input {str(p)!r} is not a regular file (a device, pipe or socket); give a {what} file.")
        else:
            out.append(p)
    if not out:
        raise VitsegError(f"No {what} files to process; give files or folders that hold them.")
    seen: set = set()
    unique = []
    for f in out:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def sample_data_dir() -> Path:
    """Folder of the bundled samples (``$VITSEG_SAMPLE_DATA`` or the repository's ``sample_data``).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        If the folder cannot be found.
    """
    env = os.environ.get("VITSEG_SAMPLE_DATA")
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parent.parent.parent / "sample_data")
    for c in cands:
        if (c / "tem_nanoparticles" / "image.tif").exists():
            return c
    raise FileNotFoundError(
        "Sample data not found; set VITSEG_SAMPLE_DATA to the repository's sample_data folder."
    )
