"""SIGINT and SIGTERM become flags that ffn checks at safe points, never a traceback.

A scheduler sends SIGTERM before preempting a job; Ctrl-C sends SIGINT. Inside the training loop
(`stop_on_signals`) the loop finishes the step it is in, saves a checkpoint, closes the
TensorBoard writer and exits with 128 + the signal number (130, 143), as shells expect. Before
the loop (imports, data loading, model building: `catch_early`) the signal is kept in `PENDING`
and the job ends at its next check with one line and the same exit status. In a sweep, a signal
stops the sweep: the job in progress checkpoints, the jobs not yet started are not run, and the
sweep writes its summary (ffn.sweep).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Which signal asked the run to stop, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "signal"


class Interrupted(BaseException):
    """A signal arrived before training started: the job ends with 128 + signum, in one line.

    A BaseException, like KeyboardInterrupt, so that Hydra's per-job `except Exception` does not
    record it as a failed job.
    """

    def __init__(self, flag: StopFlag) -> None:
        self.flag = flag
        super().__init__(flag.name)


PENDING = StopFlag()  # a signal that arrived outside the training loop, in this process
_forwarders: list[Callable[[int], None]] = []


def _remember(signum: int, frame: object) -> None:
    PENDING.signum = PENDING.signum or signum
    for forward in list(_forwarders):
        forward(signum)


def catch_early() -> None:
    """From now on SIGINT/SIGTERM set PENDING instead of killing the process (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in SIGNALS:
        if signal.getsignal(s) is not _remember:
            signal.signal(s, _remember)


def forward_signals(forward: Callable[[int], None]) -> None:
    """Also call `forward(signum)` on each signal (a sweep passes it on to its workers)."""
    _forwarders.append(forward)


def check() -> None:
    """Raise Interrupted if a signal is pending: a safe point before training starts."""
    if PENDING:
        raise Interrupted(PENDING)


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Within the block, SIGINT/SIGTERM set the flag instead of killing the process."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals can only be caught in the main thread (e.g. a joblib worker thread)
        return

    def handle(signum: int, frame: object) -> None:
        flag.signum = signum
        PENDING.signum = PENDING.signum or signum  # a sweep stops after this job
        for forward in list(_forwarders):
            forward(signum)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
