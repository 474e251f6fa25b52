"""Stopping a step cleanly when it is asked to (SIGTERM, SIGINT).

A step's process (``python -m hepml_steps.<step>``, :func:`hepml_steps.cli.run`)
is stopped by ``scancel``, a cluster's time limit or Snakemake cancelling its
jobs (SIGTERM), or by Ctrl-C (SIGINT). Killed on the spot, it would leave its
temporary outputs (``io.atomic_path``) and scratch directories (XGBoost's disk
cache: gigabytes at 10⁸ events) behind. Inside :func:`stoppable` the signal
raises :class:`Terminated` where the step is instead, so its ``with`` blocks
unwind; the step then exits with 128 + the signal's number, as a killed
process.

Python runs a signal handler between bytecodes of the main thread, after the
C call running at the time. When that C call calls back into Python
(XGBoost's ``DataIter`` while it builds a matrix), an exception raised in the
callback is lost in ctypes, and XGBoost goes on with an undefined return value
(seen: a crash, or the signal ignored). So code around such a call holds the
stop (:func:`deferred`): the handler only records it, :func:`pending` lets the
callback end early, and leaving the block raises it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

#: the signals that stop a step cleanly
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_depth = 0  # how many deferred() blocks are open
_pending: int | None = None  # a signal received inside one of them


class Terminated(BaseException):
    """A step's process was asked to stop (SIGTERM or SIGINT). A BaseException, as
    KeyboardInterrupt, so no ``except Exception`` takes it for a failure to handle."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = int(signum)


@contextlib.contextmanager
def stoppable(own_process: bool) -> Iterator[None]:
    """Inside the block SIGTERM and SIGINT raise :class:`Terminated` (held inside
    :func:`deferred`), in a step's own process (``own_process``) and on the main
    thread; elsewhere (a caller's process, tests) nothing is changed, nor is a
    signal the process was started ignoring (``SIG_IGN``, e.g. SIGINT of a
    background job). A second signal, of either kind, while the first unwinds
    kills (the default action). SIGKILL, which follows when a job outlives the
    scheduler's grace period (SLURM's ``KillWait``, 30 s by default), cannot be
    caught."""
    global _pending
    if not own_process or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        global _pending
        for s in previous:
            signal.signal(s, signal.SIG_DFL)
        if _depth:
            _pending = signum
            return
        raise Terminated(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    previous = {s: h for s, h in previous.items() if h is not signal.SIG_IGN}
    for s in previous:
        signal.signal(s, stop)
    try:
        yield
    finally:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, previous)  # none lands between the restores
        try:
            for s, handler in previous.items():
                signal.signal(s, handler)
            _pending = None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop while the block runs (C code that calls back into Python); raise
    :class:`Terminated` on leaving it when one came, also over an exception the
    block raised meanwhile (chained)."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            raise Terminated(signum)


def pending() -> bool:
    """Whether a stop is being held (:func:`deferred`): a callback should end its work."""
    return _pending is not None
