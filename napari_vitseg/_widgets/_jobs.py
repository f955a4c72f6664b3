"""The one job runner of the dock widgets.

A job is a generator, like the library's long jobs (see :mod:`napari_vitseg._progress`): it
yields :class:`~napari_vitseg._progress.Progress` and other values, then returns its result.
:class:`JobRunner` runs one job at a time in napari's ``create_worker`` (a ``thread_worker``),
queues or refuses requests that arrive meanwhile, cancels, shows progress (the widget's
progress bar, and optionally a bar in napari's activity dock), reports errors, and closes the
generator when the job ends so that its cleanups run at once (a cancelled file leaves no
partial output).

The runner knows nothing about segmentation or diagnostics: what a yielded value means and
which message ends a job are callbacks given with each request, and the status line is a
callback given to the runner.

Supersede rules
---------------
``background`` kinds (the segmentation widget's ``live`` and ``predict``) are requested by
the widget itself: a newer background request cancels a running background job (its result
would be stale) and waits behind any other job. A user action cancels a running job whose
kind is in ``supersedable`` and waits for it to stop. Only the newest waiting request is kept.
Any other request while a job runs is refused with an info notification.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass, field
from typing import Any

from .._progress import Progress
from .._validation import VitsegError
from . import _notify
from ._compat import avoid_triton_crash

__all__ = ["Job", "JobError", "JobRunner", "JobTexts"]

_log = logging.getLogger(__name__)


class JobError(Exception):
    """An unexpected ``RuntimeError`` inside a job, re-raised as this type.

    superqt's generator worker takes a ``RuntimeError`` for a deleted Qt object: it warns and
    emits neither ``errored`` nor ``finished``, so the widget would wait for the job forever.
    """


@dataclass(frozen=True)
class JobTexts:
    """Status-line texts of a runner (``{kind}`` is the job's kind, ``{msg}`` a progress message)."""

    started: str = "{kind}…"
    progress: str = "{kind}: {msg}"
    cancelling: str = "Cancelling {kind}…"
    cancelled: str = "Cancelled {kind}."
    busy: str = "napari-vitseg is busy ({kind}); press Cancel first or wait for it to finish."


@dataclass(eq=False)
class Job:
    """One requested job.

    Attributes
    ----------
    kind : str
        What it does (``'train'``, ``'live'``, ``'apply'``, ``'diagnostics'``...).
    id : int
        Request number of its runner.
    factory : callable
        Makes the generator (called in the worker thread).
    on_yielded : callable ``(job, value)``, optional
        Called on the UI thread with every yielded value that is not a ``Progress``, while
        the job is current and not cancelled.
    on_returned : callable ``(job, result) -> str or None``, optional
        Called on the UI thread with the result; returns the final status message.
    napari_progress : bool
        Also show a bar in napari's activity dock.
    uses_torch : bool or callable
        The job may import torch / timm: hide triton first (see ``_compat.avoid_triton_crash``).
        A callable is asked when the job starts.
    t_request, t_start : float
        ``time.perf_counter()`` of the request (given by the caller, e.g. the brush stroke) and
        of the start.
    worker : superqt GeneratorWorker
    gen : generator
        The job's generator, once the worker made it.
    cancelled, failed : bool
    pbar : napari.utils.progress or None
    result : object
        The returned value, the exception of a failed job, or ``None`` (cancelled).
    final_msg : str or None
    notes : dict
        Free per-job state of the widget's callbacks.
    """

    kind: str
    id: int
    factory: Callable[[], Generator] = field(repr=False)
    on_yielded: Callable[[Job, Any], None] | None = field(default=None, repr=False)
    on_returned: Callable[[Job, Any], str | None] | None = field(default=None, repr=False)
    napari_progress: bool = False
    uses_torch: bool | Callable[[], bool] = field(default=False, repr=False)
    t_request: float | None = None
    t_start: float | None = None
    worker: Any = field(default=None, repr=False)
    gen: Any = field(default=None, repr=False)
    cancelled: bool = False
    failed: bool = False
    pbar: Any = field(default=None, repr=False)
    result: Any = field(default=None, repr=False)
    final_msg: str | None = None
    notes: dict = field(default_factory=dict, repr=False)

    def cancel(self) -> None:
        """Stop at the next step (the worker quits before asking the generator for more)."""
        self.cancelled = True
        if self.worker is not None:
            self.worker.quit()


class JobRunner:
    """Run a widget's jobs one at a time in a worker thread.

    Parameters
    ----------
    set_status : callable ``(msg, error)``
        Writes the widget's status line.
    progress_bar : QProgressBar, optional
        Busy while a job starts, then ``Progress.done / total``.
    cancel_button : QPushButton, optional
        Enabled while a job runs.
    background : collection of str
        Kinds whose results go stale (see the module docstring).
    supersedable : collection of str
        Kinds that a user action cancels.
    texts : JobTexts
    title : str
        Prefix of the napari activity-dock bars.
    on_busy_changed : callable ``(busy)``, optional
        Called when the runner starts working and when it becomes idle.
    """

    def __init__(self, *, set_status: Callable[[str, bool], None], progress_bar=None, cancel_button=None,
                 background: Collection[str] = (), supersedable: Collection[str] = (),
                 texts: JobTexts = JobTexts(), title: str = "napari-vitseg",
                 on_busy_changed: Callable[[bool], None] | None = None):
        self._set_status = set_status
        self._progress_bar = progress_bar
        self._cancel_button = cancel_button
        self.background = frozenset(background)
        self.supersedable = frozenset(supersedable)
        self.texts = texts
        self.title = title
        self._on_busy_changed = on_busy_changed
        self._current: Job | None = None
        self._pending: Job | None = None
        self._counter = 0
        self._last_error: str | None = None
        self._closed = False

    @property
    def current(self) -> Job | None:
        """The running job (also while it stops after a cancel)."""
        return self._current

    @property
    def busy(self) -> bool:
        """Whether a job is running or waiting."""
        return self._current is not None or self._pending is not None

    # -- requests -----------------------------------------------------------------------
    def request(self, kind: str, factory: Callable[[], Generator], *,
                on_yielded: Callable[[Job, Any], None] | None = None,
                on_returned: Callable[[Job, Any], str | None] | None = None,
                napari_progress: bool = False, uses_torch: bool | Callable[[], bool] = False,
                t_request: float | None = None) -> Job | None:
        """Start a job now, or queue it behind (or in place of) the running one.

        Returns
        -------
        Job or None
            The job when it started now; ``None`` when it waits or was refused.
        """
        if self._closed:
            return None
        self._counter += 1
        job = Job(kind, self._counter, factory, on_yielded, on_returned, napari_progress, uses_torch, t_request)
        cur = self._current
        if cur is None:
            return self._start(job)
        if kind in self.background:
            if cur.kind in self.background:
                cur.cancel()  # superseded: its result would be stale
            self._pending = job
            return None
        if cur.kind in self.supersedable:
            cur.cancel()
            self._pending = job
            return None
        _notify.show_info(self.texts.busy.format(kind=cur.kind))
        return None

    def close(self) -> None:
        """The widget is going away (its ``destroyed`` signal): cancel the running job and drop a
        queued one; from now on jobs touch no widget (a job's result, progress and errors after
        this are dropped; its generator is still closed when its worker stops, so a cancelled
        file leaves no partial output) and new requests are refused."""
        self._closed = True
        self._pending = None
        if self._current is not None:
            self._current.cancel()

    def cancel(self) -> None:
        """Cancel the running job (and any queued one)."""
        self._pending = None
        job = self._current
        if job is not None:
            job.cancel()
            self._set_status(self.texts.cancelling.format(kind=job.kind), False)

    def report_error(self, exc: BaseException, *, repeat: bool = True) -> None:
        """Show an error in the status line and as a notification.

        A :class:`~napari_vitseg._validation.VitsegError` is shown as its message (it says what
        to do); anything else as ``TypeName: message``, with the traceback logged.

        Parameters
        ----------
        exc : BaseException
        repeat : bool
            Notify even when it is the error of the last report. ``False`` for background jobs:
            a live job failing at every stroke pops up once, then only the status line says it
            (until a job succeeds or the error differs).
        """
        if isinstance(exc, VitsegError):
            msg = str(exc)
        else:
            msg = f"{type(exc).__name__}: {exc}"
            _log.error("napari-vitseg job failed", exc_info=(type(exc), exc, exc.__traceback__))
        self._set_status(msg, True)
        if repeat or msg != self._last_error:
            _notify.show_error(msg)
        self._last_error = msg

    # -- running ------------------------------------------------------------------------
    def _start(self, job: Job) -> Job:
        from napari.qt.threading import create_worker

        uses_torch = job.uses_torch() if callable(job.uses_torch) else job.uses_torch
        if uses_torch:
            avoid_triton_crash()  # before timm is first imported (by a worker) in this process
        job.t_start = time.perf_counter()

        def run_job():
            job.gen = job.factory()
            try:
                return (yield from job.gen)
            except RuntimeError as e:  # superqt swallows RuntimeErrors without `finished`
                raise JobError(f"{type(e).__name__}: {e}") from e

        worker = create_worker(run_job, _start_thread=False, _ignore_errors=True)  # errors -> _on_errored
        job.worker = worker
        worker.yielded.connect(lambda value, j=job: self._on_yielded(j, value))
        worker.returned.connect(lambda value, j=job: self._on_returned(j, value))
        worker.errored.connect(lambda exc, j=job: self._on_errored(j, exc))
        worker.finished.connect(lambda j=job: self._on_finished(j))
        if job.napari_progress:
            from napari.utils import progress

            job.pbar = progress(total=0, desc=f"{self.title}: {job.kind}")
        self._current = job
        if self._cancel_button is not None:
            self._cancel_button.setEnabled(True)
        if self._progress_bar is not None:
            self._progress_bar.setRange(0, 0)
        self._set_status(self.texts.started.format(kind=job.kind), False)
        if self._on_busy_changed is not None:
            self._on_busy_changed(True)
        worker.start()
        return job

    def _is_current(self, job: Job) -> bool:
        return job is self._current and not job.cancelled and not self._closed

    def _on_yielded(self, job: Job, value) -> None:
        if not self._is_current(job):
            return
        try:
            if isinstance(value, Progress):
                self._show_progress(job, value)
            elif job.on_yielded is not None:
                job.on_yielded(job, value)
        except Exception as e:  # noqa: BLE001 - a drawing problem must not crash the widget
            self.report_error(e)

    def _show_progress(self, job: Job, value: Progress) -> None:
        bar = self._progress_bar
        if bar is not None and value.total:
            bar.setRange(0, value.total)
            bar.setValue(min(value.done, value.total))
        if value.msg:
            self._set_status(self.texts.progress.format(kind=job.kind, msg=value.msg), False)
        if job.pbar is not None:
            # last: napari's progress widgets may process events (re-entering the widget)
            if value.total and job.pbar.total != value.total:
                job.pbar.total = value.total
            job.pbar.n = value.done
            job.pbar.set_description(f"{self.title}: {value.msg}" if value.msg else self.title)
            job.pbar.refresh()

    def _on_returned(self, job: Job, value) -> None:
        if isinstance(value, Exception):  # superqt returns RuntimeErrors instead of emitting errored
            return self._on_errored(job, value)
        job.result = value
        if not self._is_current(job):
            return
        msg = None
        if job.on_returned is not None:
            try:
                msg = job.on_returned(job, value)
            except Exception as e:  # noqa: BLE001 - drawing must never crash napari
                job.failed = True
                self.report_error(e)
                return
        job.final_msg = msg
        self._last_error = None
        if msg:
            self._set_status(msg, False)

    def _on_errored(self, job: Job, exc: BaseException) -> None:
        job.result = exc
        job.failed = True
        if self._closed or (job.cancelled and not isinstance(exc, VitsegError)):
            return
        self.report_error(exc, repeat=job.kind not in self.background)

    def _on_finished(self, job: Job) -> None:
        if job.gen is not None:
            try:
                job.gen.close()  # run the job's cleanup now (partial outputs are removed)
            except Exception:  # noqa: BLE001
                pass
        if job.pbar is not None:
            job.pbar.close()
        if self._closed:  # the widget is gone: nothing to show
            if job is self._current:
                self._current = None
            return
        if job.cancelled and job.kind not in self.background:
            self._set_status(self.texts.cancelled.format(kind=job.kind), False)
        elif job.final_msg and job is self._current:
            self._set_status(job.final_msg, False)
        if job is self._current:
            self._current = None
        if self._progress_bar is not None:
            self._progress_bar.setRange(0, 1)
            self._progress_bar.setValue(0 if job.cancelled or job.failed else 1)
        if self._cancel_button is not None:
            self._cancel_button.setEnabled(False)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._start(pending)
        elif self._current is None and self._on_busy_changed is not None:
            self._on_busy_changed(False)
