"""What every ``vitseg`` subcommand shares: the one error line, progress bars, argument types,
defaults taken from the library, and the ``--backbone`` rule."""

from __future__ import annotations

import argparse
import inspect
import sys

from .._progress import run, run_with_tqdm

__all__ = ["fail", "run_job", "floats", "ints", "library_default", "resolve_backbone_name"]


def fail(msg: str) -> int:
    """Print ``vitseg: error: <first line of msg>`` on stderr and return exit code 2."""
    first = str(msg).strip().splitlines()[0] if str(msg).strip() else "failed"
    print(f"vitseg: error: {first}", file=sys.stderr)
    return 2


def run_job(job, *, desc: str, quiet: bool = False):
    """Run a job generator under a tqdm bar on stderr (no bar with ``quiet``); return its result."""
    return run(job) if quiet else run_with_tqdm(job, desc=desc)


def floats(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated numbers (``'1,2,4'``)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def ints(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers (``'0,1,2'``)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def library_default(func, name: str):
    """The default of parameter ``name`` of ``func`` (so that CLI defaults are not copies)."""
    return inspect.signature(func).parameters[name].default


def resolve_backbone_name(name: str | None) -> str | None:
    """Map the ``--backbone`` argument to a registry name or ``None`` (classical only).

    ``'auto'`` (the default) picks the best backbone whose weights are on disk; when there is
    none, :func:`napari_vitseg.backbones.default_backbone` logs the no-weights notice.

    Raises
    ------
    VitsegError
        An unknown backbone name.
    """
    if name is None or name.lower() == "none":
        return None
    from ..backbones import default_backbone, get_backbone_cfg

    if name == "auto":
        return default_backbone()
    get_backbone_cfg(name)
    return name
