"""Progress reporting for long jobs written as generators.

Long jobs ``yield Progress(done, total, msg)`` and finally ``return`` their result
(the stardist-napari pattern). :func:`run` consumes such a generator for the CLI and
the tests; the napari widgets wrap the same generator in ``thread_worker``.
Compute code never creates threads or touches Qt.

:func:`run_with_tqdm` is what the CLI shows: a tqdm bar on a terminal, and on anything else
(a log file under nohup, cron or SLURM) one plain line every :data:`PROGRESS_INTERVAL_ENV`
seconds with done/total, the rate and the ETA (:class:`ProgressLog`).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "DEFAULT_PROGRESS_INTERVAL",
    "PROGRESS_INTERVAL_ENV",
    "JobGenerator",
    "Progress",
    "ProgressLog",
    "progress_interval",
    "run",
    "run_with_tqdm",
]

#: Environment variable: seconds between two progress lines when stderr is not a terminal.
PROGRESS_INTERVAL_ENV = "VITSEG_PROGRESS_INTERVAL"
#: Seconds between two progress lines when :data:`PROGRESS_INTERVAL_ENV` is not set.
DEFAULT_PROGRESS_INTERVAL = 30.0


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
    unit : str
        What one unit is (``'plane'``), for rates in logs; ``''`` when the units are abstract.
        Not compared (``Progress(1, 2, 'x', unit='plane') == Progress(1, 2, 'x')``).
    count : tuple of (int, int) or None
        The same progress in countable ``unit`` s, ``(done, total)``, when ``done`` / ``total``
        are a fraction of the run (e.g. 1000ths of a batch of files); not compared.
    """

    done: int
    total: int
    msg: str = ""
    unit: str = field(default="", compare=False)
    count: tuple[int, int] | None = field(default=None, compare=False)


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


def progress_interval() -> float:
    """Seconds between progress lines: ``$VITSEG_PROGRESS_INTERVAL`` or 30 (invalid values: 30)."""
    text = os.environ.get(PROGRESS_INTERVAL_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_PROGRESS_INTERVAL
    except ValueError:
        return DEFAULT_PROGRESS_INTERVAL
    return value if value >= 0 else DEFAULT_PROGRESS_INTERVAL


def _hms(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressLog:
    """Plain progress lines for logs (no terminal): one line every ``interval`` seconds.

    Each line gives done/total, the percentage, the rate in units per second (``unit`` of the
    :class:`Progress`, e.g. planes/s; measured over the last 10 lines, so a resumed run's jump
    at the start soon leaves the window), the ETA, the elapsed time and the job's message.
    The first step is printed at once; :meth:`finish` prints a closing line.

    Parameters
    ----------
    desc : str
        Prefix of every line (the command, e.g. ``'apply'``).
    stream : file-like
        Where to print (``sys.stderr`` in the CLI).
    interval : float, optional
        Seconds between lines; default :func:`progress_interval`.
    clock : callable
        Monotonic clock (tests pass a fake one).

    Examples
    --------
    >>> import io
    >>> out, now = io.StringIO(), [0.0]
    >>> log = ProgressLog("apply", out, interval=30, clock=lambda: now[0])
    >>> for t, done in ((0, 0), (10, 5), (30, 15)):
    ...     now[0] = t
    ...     log(Progress(done, 20, f"plane {done + 1}/20", unit="plane"))
    >>> print(out.getvalue().strip().splitlines()[-1])
    apply: 15/20 planes (75.0%) | 0.50 planes/s | ETA 0:00:10 | elapsed 0:00:30 | plane 16/20
    """

    def __init__(self, desc: str, stream, interval: float | None = None, clock=time.monotonic):
        self.desc = desc
        self.stream = stream
        self.interval = progress_interval() if interval is None else float(interval)
        self.clock = clock
        self._t0: float | None = None
        self._last_line = -float("inf")
        self._history: deque = deque(maxlen=11)
        self._latest: Progress | None = None

    @staticmethod
    def _counts(p: Progress) -> tuple[int, int]:
        return p.count if p.count is not None else (p.done, p.total)

    def __call__(self, p: Progress) -> None:
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        self._latest = p
        if now - self._last_line >= self.interval:
            self._history.append((now, self._counts(p)[0]))
            self._print(self._line(p, now))
            self._last_line = now

    def _rate(self) -> float | None:
        if len(self._history) < 2:
            return None
        (t0, n0), (t1, n1) = self._history[0], self._history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def _line(self, p: Progress, now: float) -> str:
        done, total = self._counts(p)
        units = f" {p.unit}s" if p.unit else ""
        parts = [f"{done}/{total}{units} ({100.0 * done / total:.1f}%)" if total else f"{done}{units}"]
        rate = self._rate()
        if rate is None:
            parts += ["rate -", "ETA -"]
        else:
            parts.append(f"{rate:.2f}{units}/s")
            parts.append(f"ETA {_hms((total - done) / rate)}" if total and rate > 0 else "ETA -")
        parts.append(f"elapsed {_hms(now - self._t0)}")
        if p.msg:
            parts.append(p.msg)
        return f"{self.desc}: " + " | ".join(parts) if self.desc else " | ".join(parts)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def finish(self) -> None:
        """Print the closing line (done/total, elapsed time, mean rate)."""
        if self._latest is None:
            return
        now = self.clock()
        done, total = self._counts(self._latest)
        units = f" {self._latest.unit}s" if self._latest.unit else ""
        elapsed = now - self._t0
        mean = f", {done / elapsed:.2f}{units}/s" if elapsed > 0 else ""
        head = f"{self.desc}: " if self.desc else ""
        self._print(f"{head}done: {done}/{total}{units} in {_hms(elapsed)}{mean}")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def run_with_tqdm(job: JobGenerator, desc: str = "", disable: bool | None = None, *, file=None,
                  interval: float | None = None):
    """Run a job generator with progress on stderr (used by the CLI through ``run_job``).

    On a terminal: a tqdm bar. Otherwise (a log file, a pipe: nohup, cron, SLURM): one plain
    line every ``interval`` seconds (:class:`ProgressLog`) and a closing line.

    Parameters
    ----------
    job : generator
        Yields :class:`Progress` and returns the result.
    desc : str
        Label of the bar / prefix of the lines.
    disable : bool, optional
        ``True``: no progress output at all.
    file : file-like, optional
        Where progress goes; default ``sys.stderr`` at call time.
    interval : float, optional
        Seconds between plain lines; default ``$VITSEG_PROGRESS_INTERVAL`` or 30.

    Returns
    -------
    object
        The generator's return value.
    """
    stream = sys.stderr if file is None else file
    if disable:
        return run(job)
    if not _isatty(stream):
        log = ProgressLog(desc, stream, interval)
        result = run(job, log)
        log.finish()
        return result

    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, unit="step", file=stream, leave=False)
    try:

        def cb(p: Progress) -> None:
            if p.unit and bar.unit != p.unit:
                bar.unit = p.unit
            if p.total and bar.total != p.total:
                bar.total = p.total
            bar.n = p.done
            if p.msg:
                bar.set_postfix_str(p.msg, refresh=False)
            bar.refresh()

        return run(job, cb)
    finally:
        bar.close()
