"""The end figures drawn in a process of its own, which imports matplotlib while the run trains.

Importing matplotlib takes half a second, a tenth of a default run, which then waits for it
after its last epoch. A run that will draw figures starts this worker first (`start`): a
torch-free Python that imports ffn.figures on the machine's other core, then runs what it is
sent, in order (TASKS: an end figure's PNG, a sweep's summary.png), and answers. The drawing
code is the same, so a figure is byte for byte the one the run would draw itself; if the worker
cannot be started or fails a task, the run does it itself. One worker a process: a sweep's jobs
share it, and its summary plot finds matplotlib loaded. It is ended when the process ends (or,
if that is killed, at the end of its stdin), and, in its own session, a Ctrl-C to the run's
terminal never reaches it.

    python -m ffn.figure_worker   # reads (task, args) pickles on stdin, writes (ok, result)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import pickle
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Rendered:
    """A figure as TensorBoard and the run folder store it: PNG bytes and its size in pixels.

    Defined here, matplotlib-free: the run unpickles the worker's answers without importing it.
    """

    png: bytes
    width: int
    height: int


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # the worker imports this very ffn
# The worker imports at a lower priority: on a machine whose cores are busy it takes no CPU from
# the run's loop, and a run that finds it not ready yet draws itself
NICENESS = 10
_worker: subprocess.Popen[bytes] | None = None
_ready = False  # the worker said it has imported what it draws with
_drew_here = False  # this process has drawn itself (matplotlib loaded): no worker gains more


def start() -> None:
    """Start this process's worker, unless it runs already (in a sweep: from an earlier job) or
    this process has drawn itself (matplotlib is loaded here: a worker gains nothing)."""
    global _worker, _ready
    if (_worker is not None and _worker.poll() is None) or _drew_here:
        return
    _ready = False
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    try:
        _worker = subprocess.Popen(
            [sys.executable, "-m", "ffn.figure_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # the terminal's Ctrl-C is the run's to handle
        )
    except OSError:
        _worker = None  # the run draws its figures itself
        return
    atexit.register(stop)


def running() -> bool:
    """Whether this process has a worker (started, and not failed since)."""
    return _worker is not None and _worker.poll() is None


def ready(timeout: float = 0.0) -> bool:
    """Whether the worker has its imports done (waiting up to `timeout` seconds to hear so)."""
    global _ready
    if _ready or not running():
        return _ready and running()
    assert _worker is not None and _worker.stdout is not None
    with contextlib.suppress(OSError, ValueError):
        if select.select([_worker.stdout], [], [], timeout)[0]:
            with contextlib.suppress(EOFError, pickle.PickleError):
                _ready = pickle.load(_worker.stdout) == "ready"
    return _ready


def render(name: str, arrays: dict[str, np.ndarray]) -> Rendered:
    """ffn.figures.render(name, arrays): by the worker if there is one, else in this process."""
    return _run("render", name, arrays)


def save_summary_plot(summary: Any, path: Path) -> None:
    """ffn.summary_plot.save_plot(summary, path), by the worker if there is one."""
    _run("summary_plot", summary, path)


# What the worker does, by name: "module:function", imported where it runs
TASKS = {"render": "ffn.figures:render", "summary_plot": "ffn.summary_plot:save_plot"}


def _task(name: str) -> Any:
    module, _, function = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def _run(task: str, *args: Any) -> Any:
    if _worker is not None and not ready():
        stop()  # still importing (the machine is busy): this process is faster
    if _worker is not None:
        try:
            ok, result = _ask(_worker, (task, args))
        except (OSError, EOFError, pickle.PickleError, TypeError, ValueError):
            ok, result = False, None  # a worker gone, or an answer that is none
        if ok:
            return result
        stop()  # it failed: this process does it from now on, and raises what doing it raises
    global _drew_here
    _drew_here = True
    return _task(task)(*args)


def _ask(worker: subprocess.Popen[bytes], request: Any) -> Any:
    assert worker.stdin is not None and worker.stdout is not None
    pickle.dump(request, worker.stdin, protocol=pickle.HIGHEST_PROTOCOL)
    worker.stdin.flush()
    return pickle.load(worker.stdout)


def stop() -> None:
    """End the worker now, and reap it."""
    global _worker, _ready
    worker, _worker, _ready = _worker, None, False
    if worker is None:
        return
    for stream in (worker.stdin, worker.stdout):
        with contextlib.suppress(OSError):  # a worker that died leaves a broken pipe
            if stream is not None:
                stream.close()
    # Every request was answered: nothing is lost, and one still importing need not finish
    worker.kill()
    worker.wait()


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Run each (task, args) read from `requests` and write (True, its result), or (False, the
    error's text) if it raised, to `replies`, until `requests` ends."""
    importlib.import_module("ffn.figures")  # the import this process exists for, made first
    pickle.dump("ready", replies)
    replies.flush()
    while True:
        try:
            task, args = pickle.load(requests)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, _task(task)(*args))
        except Exception as error:  # the run does it again itself, and reports what it raises
            reply = (False, f"{type(error).__name__}: {error}")
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run ends it, by closing its stdin
    if hasattr(os, "nice"):
        os.nice(NICENESS)
    # The answers get stdout's pipe to themselves: anything printed meanwhile, by Python or C,
    # goes to stderr (/dev/null) instead of into a pickle
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)
