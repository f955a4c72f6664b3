"""Progress reporting for long jobs written as generators.

Long jobs ``yield Progress(done, total, msg)`` and finally ``return`` their result
(the stardist-napari pattern). :func:`run` consumes such a generator for the CLI and
the tests; the napari widgets wrap the same generator in ``thread_worker``.
Compute code never creates threads or touches Qt.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Progress", "JobGenerator", "run", "run_with_tqdm"]


@dataclass(frozen=True)
class Progress:
    """One progress step of a long job.

    Attributes
    ----------
    done : int
        Units of work finished so far.
    total : int
        Units of work in all (0 if unknown).
    msg : str
        Short human-readable description of the current step.
    """

    done: int
    total: int
    msg: str = ""


JobGenerator = Generator[Progress, None, T]


def run(job: JobGenerator, callback: Callable[[Progress], Any] | None = None):
    """Run a job generator to completion and return its result.

    Parameters
    ----------
    job : generator
        Yields :class:`Progress` and returns the result.
    callback : callable, optional
        Called with every :class:`Progress` (for example to update a tqdm bar).

    Returns
    -------
    object
        The generator's return value.
    """
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            return stop.value
        if callback is not None and isinstance(p, Progress):
            callback(p)


def run_with_tqdm(job: JobGenerator, desc: str = "", disable: bool | None = None):
    """Run a job generator with a tqdm progress bar on stderr (used by the CLI)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, unit="step", disable=disable, leave=False)
    try:

        def cb(p: Progress) -> None:
            if p.total and bar.total != p.total:
                bar.total = p.total
            bar.n = p.done
            if p.msg:
                bar.set_postfix_str(p.msg, refresh=False)
            bar.refresh()

        return run(job, cb)
    finally:
        bar.close()
