"""File names and inputs: which suffixes are images, stems, folder expansion, sample data.

One copy of each rule: the CLI, the batch runner, the napari reader and the widgets all take
their suffixes, stems and input lists from here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .._validation import VitsegError

__all__ = ["TIFF_SUFFIXES", "IMAGE_SUFFIXES", "image_stem", "is_tiff", "expand_inputs", "sample_data_dir"]

#: Suffixes of TIFF files, longest first (``.ome.tif`` before ``.tif``), lower case.
TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".tf8")
#: Every image suffix :func:`napari_vitseg.io.read_image` reads (TIFF via tifffile, the rest
#: via imageio), lower case.
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".png", ".jpg", ".jpeg", ".bmp")


def _suffix_of(name: str, suffixes: Iterable[str]) -> str | None:
    low = name.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s) and len(name) > len(s):
            return name[len(name) - len(s):]
    return None


def is_tiff(path) -> bool:
    """Whether ``path``'s name ends in a TIFF suffix (case-insensitive)."""
    return _suffix_of(Path(path).name, TIFF_SUFFIXES) is not None


def image_stem(path) -> str:
    """The file name without its image suffix, and only that suffix.

    Unlike ``name.split('.')[0]``, dots inside the name are kept, so that ``cell.day1.tif``
    and ``cell.day2.tif`` keep distinct stems; ``.ome.tif`` counts as one suffix.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    str

    Examples
    --------
    >>> image_stem("data/cell.day1.tif"), image_stem("a.OME.TIFF"), image_stem("notes.v2.txt")
    ('cell.day1', 'a', 'notes.v2')
    """
    name = Path(path).name
    suffix = _suffix_of(name, IMAGE_SUFFIXES)
    if suffix is not None:
        return name[: -len(suffix)]
    return Path(name).stem


def expand_inputs(paths: Iterable, *, suffixes: tuple[str, ...] = TIFF_SUFFIXES, what: str = "TIFF") -> list[Path]:
    """Expand folders to the files they hold (sorted by name); keep files as given.

    Parameters
    ----------
    paths : iterable of str or pathlib.Path
        Files and folders, in the order the user gave them.
    suffixes : tuple of str
        File suffixes (lower case) taken from folders; files named explicitly are kept
        whatever their suffix (the reader then says whether it can read them).
    what : str
        Name of the file kind, for messages (``'TIFF'``, ``'image'``).

    Returns
    -------
    list of pathlib.Path
        Regular files only; a file given twice is kept once.

    Raises
    ------
    VitsegError
        A path that does not exist, is neither a file nor a folder, a folder with no
        matching file, or nothing to process at all.
    """
    out: list[Path] = []
    given = [Path(p).expanduser() for p in paths]
    for p in given:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and _suffix_of(f.name, suffixes) is not None)
            if not found:
                raise VitsegError(
                    f"Folder {str(p)!r} contains no {what} files ({', '.join(suffixes)}); pick the folder "
                    "that holds them."
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
