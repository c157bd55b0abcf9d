"""One object owns the running job: its start, its worker thread, stopping it, and shutting down.

Every piece of background work of the widget (training, prediction, export) is a
job started here, one at a time; short preparations nobody asked for (finding the
devices) run here too, beside the jobs.  The job (``jobs``) is a generator; napari's
``create_worker`` runs it in a thread and delivers its events to handlers on the
main thread.  Stopping asks
the job to end at its next step; a worker cancelled from outside (napari's
activity dock, closing the window) is closed here, so a training still keeps
its best model.  Messages of bad input are shown as they are; any other
exception is a bug and is shown with its type.
"""

from __future__ import annotations

import gc
import inspect
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any

from qtpy.QtCore import QEvent, QObject, QThreadPool, QTimer, Signal
from qtpy.QtWidgets import QApplication

from ..core.errors import UserInputError
from ..jobs import Job


# Milliseconds between the steps before a job's start (see JobRunner.start).
START_STEP_MS = 25


class JobError(Exception):
    """A ``RuntimeError`` raised by a job, under another type.

    superqt's generator worker takes a ``RuntimeError`` for a deleted worker: it only
    warns and never reports the job finished.  torch raises ``RuntimeError`` for
    out-of-memory and shape errors, which must reach the user like any other failure.
    """


def error_message(error: BaseException) -> str:
    """The user's mistake as its message; anything else as a bug, with the exception's type."""
    if isinstance(error, UserInputError | JobError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class _Current:
    """The running job, in a plain object: the widget's ``destroyed`` hook may not touch Qt objects."""

    job: Job | None = None

    def stop(self, *_: Any) -> None:
        if self.job is not None:
            self.job.stop()


class JobRunner(QObject):
    """Runs one job at a time in a worker thread.

    Handlers given to :meth:`start` run on the main thread: ``yielded(event)``,
    ``returned(result)``, ``failed(message)`` and ``aborted()`` (the worker was
    cancelled from outside; the job has been closed).  ``busy_changed`` is
    emitted when a job is started and when it has finished in every way.
    """

    busy_changed = Signal(bool)

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self.job: Job | None = None
        self.worker: Any = None
        self._generator: Generator[Any, None, Any] | None = None
        self._current = _Current()
        self._window: weakref.ref[QObject] | None = None
        self._starting = False
        self._starts_cancelled = 0  # counts shutdowns: a start staged before one does not go on
        parent.destroyed.connect(self._current.stop)  # last resort: the widget deleted without a close
        self.busy_changed.connect(_keep_full_collections_short)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    @property
    def busy(self) -> bool:
        return self._starting or self.worker is not None

    def start(
        self,
        job: Job,
        *,
        yielded: Callable[[Any], None],
        returned: Callable[[Any], None],
        failed: Callable[[str], None],
        aborted: Callable[[], None],
        before: Sequence[Callable[[], Any]] = (),
    ) -> bool:
        """Start ``job`` after the ``before`` steps, each in an event-loop turn of its own; False when busy.

        Each of those steps (adding a layer, showing the plot) takes tens of ms on the
        main thread; done in one click handler they stalled napari for 0.3-0.6 s.  They
        run before the worker starts, so they do not wait for the GIL either.
        """
        if self.busy:
            return False
        self._starting = True
        self.busy_changed.emit(True)
        steps, cancelled = list(before), self._starts_cancelled

        def next_step() -> None:
            if self._starts_cancelled != cancelled:
                return
            if steps:
                steps.pop(0)()
                QTimer.singleShot(START_STEP_MS, next_step)  # room for other events (a redraw) in between
                return
            self._starting = False
            self._run(job, yielded, returned, failed, aborted)

        QTimer.singleShot(0, next_step)
        return True

    def _run(
        self,
        job: Job,
        yielded: Callable[[Any], None],
        returned: Callable[[Any], None],
        failed: Callable[[str], None],
        aborted: Callable[[], None],
    ) -> None:
        from napari.qt.threading import create_worker

        generator = job.run()
        self.job, self._generator, self._current.job = job, generator, job
        self._aborted = aborted
        self._failed = failed
        self.worker = create_worker(
            _pass_through,
            generator,
            _connect={
                "yielded": yielded,
                "returned": returned,
                "errored": self._on_errored,
                "aborted": self._on_aborted,
                "finished": self._on_finished,
            },
            _start_thread=False,
        )
        self.worker.start()

    def run_aside(
        self, function: Callable[[], Any], *, returned: Callable[[Any], None], failed: Callable[[BaseException], None]
    ) -> None:
        """Run ``function`` in a worker thread beside the jobs, without making the runner busy.

        For short preparations the user did not ask for (finding the devices, which
        imports torch): a job may start while it runs.
        """
        from napari.qt.threading import create_worker

        create_worker(function, _connect={"returned": returned, "errored": failed})

    def stop(self) -> None:
        """Ask the job to end at its next step; a stopped training keeps its best model."""
        if self.job is not None:
            self.job.stop()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the job and wait (at most ``timeout`` s) until it has ended: closing napari or the widget.

        A job still in its ``before`` steps is not started.
        """
        self._starts_cancelled += 1
        if self._starting:
            self._starting = False
            self.busy_changed.emit(False)
        job, worker = self.job, self.worker
        if job is None or worker is None:
            return
        job.stop()
        # The job ends at its next step; its thread does not need the main thread for that.
        if not job.done.wait(timeout):
            worker.quit()
        # Let the thread deliver its last signals before Qt objects go away.
        QThreadPool.globalInstance().waitForDone(int(1000 * timeout))

    def stop_when_closed(self, window: QObject) -> None:
        """Shut down when ``window`` (napari's main window) is closed; watched weakly, once."""
        previous = self._window() if self._window is not None else None
        if window is not previous:
            if previous is not None:
                previous.removeEventFilter(self)
            window.installEventFilter(self)
            self._window = weakref.ref(window)  # holding napari's window would keep the viewer alive

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if self._window is not None and obj is self._window() and event.type() == QEvent.Type.Close and self.busy:
            # The close may still be refused (a confirm dialog): stop only once the window is gone.
            QTimer.singleShot(0, self._shutdown_if_closed)
        return False

    def _shutdown_if_closed(self) -> None:
        window = self._window() if self._window is not None else None
        if window is not None and not window.isVisible():
            self.shutdown()

    def _on_errored(self, error: BaseException) -> None:
        self._failed(error_message(error))

    def _on_aborted(self) -> None:
        # worker.quit() leaves the job at a yield: closing it ends training and keeps the best model.
        if self._generator is not None and self.job is not None:
            if inspect.getgeneratorstate(self._generator) == inspect.GEN_CREATED:
                self.job.abandon()  # cancelled before its first step: closing would not run its cleanup
            else:
                try:
                    self._generator.close()
                except ValueError:  # still running in the worker: it stops at its next step anyway
                    self.stop()
        self._aborted()

    def _on_finished(self) -> None:
        self.job = self.worker = self._generator = self._current.job = None
        self.busy_changed.emit(False)


def _keep_full_collections_short(busy: bool) -> None:
    """While a job runs, the garbage collector's full passes skip the objects that existed at its start.

    With napari and torch loaded, a full pass walks millions of objects with the GIL
    held (0.2 s on the development machine), in whichever thread's allocation
    triggers it: in a click's set-up or in the worker, the event loop stalls that
    long.  Objects made during the job are collected as usual; the frozen ones rejoin
    the collector when the job ends.
    """
    if busy:
        gc.freeze()
    else:
        gc.unfreeze()


def _pass_through(generator: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """The worker's function: the runner keeps ``generator`` to close it when the worker is cancelled."""
    try:
        return (yield from generator)
    except RuntimeError as error:
        raise JobError(f"{type(error).__name__}: {error}") from error
