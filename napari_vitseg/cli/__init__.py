"""The ``vitseg`` command line: train, apply, info, demo, weights, repair, diagnose.

Every command exits with 0 on success and 2 with a one-line ``vitseg: error: ...`` message
on bad input; nothing is written when the input is bad (outputs are written atomically).
Subcommands live in :mod:`._segment` (train, apply, info, demo), :mod:`._weights` (weights,
repair) and :mod:`._diagnose`; each registers itself with ``add_subcommands``.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from .._validation import VitsegError
from ._common import fail

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``vitseg`` argument parser with every subcommand.

    Returns
    -------
    argparse.ArgumentParser
    """
    from . import _diagnose, _segment, _weights

    p = argparse.ArgumentParser(
        prog="vitseg",
        description="Trainable segmentation of microscopy with ViT (DINOv2 / ALiBi-DINOv2 / SINDER) and "
                    "classical features.",
    )
    p.add_argument("--version", action="version", version=f"napari-vitseg {__version__}")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _segment.add_subcommands(sub)
    _weights.add_subcommands(sub)
    _diagnose.add_subcommands(sub)
    return p


def main(argv=None) -> int:
    """Entry point of the ``vitseg`` command.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 on bad input (one line on stderr; the traceback with ``--debug``).
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VitsegError as e:
        if args.debug:
            raise
        return fail(str(e) or type(e).__name__)
    except KeyboardInterrupt:
        return fail("interrupted")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
