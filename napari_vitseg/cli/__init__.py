"""The ``vitseg`` command line: train, apply, info, demo, weights, repair, diagnose.

Every command exits with 0 on success and 2 with a one-line ``vitseg: error: ...`` message
on bad input; nothing is written when the input is bad (outputs are written atomically).
Subcommands live in :mod:`._segment` (train, apply, info, demo), :mod:`._weights` (weights,
repair) and :mod:`._diagnose`; each registers itself with ``add_subcommands``.
"""

from __future__ import annotations

import argparse
import logging
import signal

from .. import __version__
from .._validation import VitsegError
from ._common import fail

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (``vitseg: error: ...``, exit 2) for every subcommand."""

    def error(self, message):
        self.exit(2, f"vitseg: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``vitseg`` argument parser with every subcommand.

    Returns
    -------
    argparse.ArgumentParser
    """
    from . import _diagnose, _segment, _weights

    p = _Parser(
        prog="vitseg",
        description="Trainable segmentation of microscopy with ViT (DINOv2 / ALiBi-DINOv2 / SINDER) and "
                    "classical features.",
    )
    p.add_argument("--version", action="version", version=f"napari-vitseg {__version__}")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
        0 on success, 2 on bad input or any other error (one line on stderr; the traceback with
        ``--debug``). SIGTERM is handled like Ctrl+C: the running job cleans up and the command
        exits with 2.
    """
    args = build_parser().parse_args(argv)
    if not args.debug:
        # tifffile logs its own complaints about damaged files; the one error line says it all
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    previous = _terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except VitsegError as e:
        if args.debug:
            raise
        return fail(str(e) or type(e).__name__)
    except KeyboardInterrupt as e:
        return fail(f"interrupted{f' ({e})' if str(e) else ''}; finished outputs are kept, nothing is left "
                    "half-written under its final name")
    except (Exception, MemoryError, RecursionError) as e:  # noqa: BLE001 - the CLI's one-line promise
        if args.debug:
            raise
        return fail(f"{type(e).__name__}: {e} (unexpected; rerun with --debug for the traceback and report it)")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _terminate_as_interrupt():
    """Make SIGTERM (kill, SLURM's time limit, docker stop) clean up like Ctrl+C; returns the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)
