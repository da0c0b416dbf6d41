"""SIGINT and SIGTERM become a flag the training loop checks between steps.

A scheduler sends SIGTERM before preempting a job; Ctrl-C sends SIGINT. Either way the loop
finishes the step it is in, saves a checkpoint, closes the TensorBoard writer and exits with
128 + the signal number (130, 143), as shells expect.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopFlag:
    """Which signal asked the run to stop, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Within the block, SIGINT/SIGTERM set the flag instead of killing the process."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals can only be caught in the main thread (e.g. a joblib worker thread)
        return

    def handle(signum: int, frame: object) -> None:
        flag.signum = signum

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
