"""Writing files safely: never over an input or a non-regular file, never half-written.

Every file napari-vitseg writes (classifier files, label TIFFs, probabilities) goes through
:func:`check_output_path` and :func:`atomic_write`: the data is written to a unique temporary
name in the destination folder (two runs never share one) and renamed over the destination
only when complete, so an interrupted or failed write leaves the destination as it was.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .._validation import VitsegError

__all__ = ["check_output_path", "atomic_write", "same_file", "temporary_name"]


def same_file(a, b) -> bool:
    """Whether two paths name the same file (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(path, *, inputs: Iterable = (), what: str = "output") -> Path:
    """Refuse an output path that would destroy something.

    Parameters
    ----------
    path : str or pathlib.Path
        Where the output will be written (replaced if it is an existing regular file).
    inputs : iterable of str or pathlib.Path
        Files the same command reads (image, scribbles, classifier, ...); the output must be
        none of them.
    what : str
        Name of the output in messages (``'-o'``, ``'classifier file'``).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    VitsegError
        The output is one of the inputs, an existing folder or non-regular file (device, FIFO,
        socket), or its folder does not exist.
    """
    path = Path(path)
    if any(inp is not None and same_file(path, inp) for inp in inputs):
        raise VitsegError(f"The {what} {str(path)!r} is one of this command's inputs; choose another name.")
    if path.is_dir():
        raise VitsegError(f"The {what} {str(path)!r} is a folder; give a file name.")
    if os.path.lexists(path):
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            target = os.stat(path).st_mode if path.exists() else stat.S_IFREG
            mode = target
        if not stat.S_ISREG(mode):
            raise VitsegError(
                f"The {what} {str(path)!r} exists and is not a regular file (a device, pipe or socket); "
                "napari-vitseg only replaces regular files."
            )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VitsegError(f"The folder of the {what}, {str(parent)!r}, does not exist; create it first.")
    return path


def temporary_name(path) -> Path:
    """A unique hidden temporary name next to ``path`` (``.<name>.<random>.part``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


@contextmanager
def atomic_write(path, *, inputs: Iterable = (), what: str = "output") -> Iterator[Path]:
    """Write ``path`` through a unique temporary file renamed into place when the block succeeds.

    Parameters
    ----------
    path : str or pathlib.Path
    inputs, what :
        As in :func:`check_output_path` (checked before and again just before the rename).

    Yields
    ------
    pathlib.Path
        The temporary file to write.

    Raises
    ------
    VitsegError
        See :func:`check_output_path`.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with atomic_write(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> sorted(p.name for p in d.iterdir())
    ['out.txt']
    """
    inputs = list(inputs)
    path = check_output_path(path, inputs=inputs, what=what)
    tmp = temporary_name(path)
    try:
        yield tmp
        check_output_path(path, inputs=inputs, what=what)  # nothing swapped in meanwhile
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
