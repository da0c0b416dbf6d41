"""Python's cyclic garbage collector, kept off the objects that the imports make.

Importing torch, Hydra and TensorBoard makes millions of objects that live as long as the
process; every full collection walks all of them (70-240 ms each on a 2-core machine, four of
them in a default run, and 50 younger ones: 0.8-0.9 s of a 5-10 s run, measured with
gc.callbacks). So `python run.py` pauses the collector while it imports (`pause`), and the
first run of the process freezes what the imports made (gc.freeze: never scanned again, never
freed before the exit, which frees them anyway) and resumes collecting (`imports_done`): the
loop's own garbage is collected as before, and a full collection walks the run's objects only.
A process that did not call `pause` (tests, the estimators, a notebook) is left as it is.

At the end (`end_process`), the interpreter's teardown would free every object one by one
(0.1-0.7 s after a run's last record, measured): `python run.py` ends as the interpreter's
exit begins, joining threads and running the atexit handlers (logging's flush among them),
and then leaves the freeing to the operating system.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

_PAUSED = False  # whether `pause` turned the collector off (and nobody has turned it back on)


def pause() -> None:
    """Stop collecting cycles until `imports_done` (only if collecting is on)."""
    global _PAUSED
    if gc.isenabled():
        gc.disable()
        _PAUSED = True


def imports_done() -> None:
    """After `pause`: freeze every object alive now, and collect again. Otherwise nothing."""
    global _PAUSED
    if not _PAUSED:
        return
    _PAUSED = False
    gc.freeze()
    gc.enable()


def end_process(script: str) -> None:
    """The end of `python SCRIPT`: what the interpreter's exit does first, then the exit itself
    without tearing down every object. Run another way (runpy, a test, `python -c`), the
    caller's code may go on: then only freeze, so the final collections skip everything."""
    gc.freeze()
    if not _runs_as(script) or not hasattr(threading, "_shutdown"):
        return  # (an interpreter without threading's exit step ends the usual way)
    _exit_now()


def _runs_as(script: str) -> bool:
    """Whether the interpreter was started as `python [options] SCRIPT ...`."""
    args = iter(getattr(sys, "orig_argv", [])[1:])
    for arg in args:
        if arg in ("-c", "-m"):
            return False
        if arg in ("-X", "-W"):  # an option whose value is the next word
            next(args, None)
        elif not arg.startswith("-"):
            return Path(arg).resolve() == Path(script).resolve()
    return False


def _exit_now() -> NoReturn:
    threading._shutdown()  # type: ignore[attr-defined]  # the interpreter's first exit step
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or a pipe gone
            stream.flush()
    os._exit(0)
