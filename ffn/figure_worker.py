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
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
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
# Requests are written and answers read by two threads, so neither this process nor the worker
# ever waits on the other's pipe: a request (a decision grid's arrays: 0.3 MB) waits in `_sending`
# while the worker draws, and the answers are kept by request number (the worker's n-th answer
# is the n-th request's) until their caller takes them
_sent = 0
_answers: dict[int, Any] = {}
_answered = threading.Condition()
_sending: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
_threads: list[threading.Thread] = []  # the current worker's writer and reader
_unread: set[int] = set()  # requests whose answers nobody waits for (`prepare`'s)
_prepared: set[tuple] = set()  # what the current worker has been asked to prepare
# Called while a request's answer has not come, instead of waiting, when set: the ensemble's
# group (ffn/ensemble/group.py) lets its other members go on meanwhile, so its members' figures
# are drawn while this process ends the others. Returns True to wait for the worker now.
WAITING: Callable[[], bool] | None = None


def start(niceness: int = NICENESS, helpers: int = 0) -> None:
    """Start this process's worker, unless it runs already (in a sweep: from an earlier job) or
    this process has drawn itself (matplotlib is loaded here: a worker gains nothing).
    `niceness`: the worker's, added to this process's (an ensemble's many figures are most of
    its end, while the run waits: it starts its worker at 0). `helpers`: processes the worker
    forks once it has imported, which draw requests that wait behind another (`serve`)."""
    global _worker, _ready, _sent, _sending
    if (_worker is not None and _worker.poll() is None) or _drew_here:
        return
    _ready, _sent = False, 0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    try:
        _worker = subprocess.Popen(
            [sys.executable, "-m", "ffn.figure_worker", str(niceness), str(helpers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # the terminal's Ctrl-C is the run's to handle
        )
    except OSError:
        _worker = None  # the run draws its figures itself
        return
    with _answered:
        _answers.clear()
        _unread.clear()
        _prepared.clear()
    _sending = queue.SimpleQueue()
    _threads[:] = [
        threading.Thread(target=target, args=(_worker,), daemon=True) for target in (_send, _listen)
    ]
    for thread in _threads:
        thread.start()
    atexit.register(stop)


def _send(worker: subprocess.Popen[bytes]) -> None:
    """Write the requests to the worker in order, until None (or the worker has gone)."""
    assert worker.stdin is not None
    sending = _sending
    while (request := sending.get()) is not None:
        try:
            worker.stdin.write(request)
            worker.stdin.flush()
        except (OSError, ValueError):  # gone: whoever waits for an answer draws itself
            with _answered:
                if worker is _worker:
                    _answers[-1] = _GONE
                _answered.notify_all()
            return


def _listen(worker: subprocess.Popen[bytes]) -> None:
    """Read the worker's answers as they come: "ready" first, then one per request."""
    global _ready
    assert worker.stdout is not None
    count = -1  # the first message is "ready"
    while True:
        try:
            answer = pickle.load(worker.stdout)
        except Exception:  # the worker ended (or was stopped): nothing more will come
            answer = _GONE
        with _answered:
            if worker is not _worker:  # stopped meanwhile: another worker's answers, or none
                _answered.notify_all()
                return
            if answer is _GONE:
                _answers[-1] = _GONE
            elif count < 0:
                _ready = answer == "ready"
            elif count in _unread:
                _unread.discard(count)
            else:
                _answers[count] = answer
            count += 1
            _answered.notify_all()
        if answer is _GONE:
            return


_GONE = object()  # in `_answers` at -1 once the worker has ended


def running() -> bool:
    """Whether this process has a worker (started, and not failed since)."""
    return _worker is not None and _worker.poll() is None


def ready(timeout: float = 0.0) -> bool:
    """Whether the worker has its imports done (waiting up to `timeout` seconds to hear so)."""
    with _answered:
        if not _ready and running() and -1 not in _answers:
            _answered.wait_for(lambda: _ready or -1 in _answers, timeout)
        return _ready and running()


def render(name: str, arrays: dict[str, np.ndarray]) -> Rendered:
    """ffn.figures.render(name, arrays): by the worker if there is one, else in this process."""
    return _run("render", name, arrays)


def prepare(name: str, arrays: dict[str, np.ndarray]) -> None:
    """Have the worker draw `name` from `arrays` once while the run trains, its answer unread:
    ffn.figures keeps the figure, so the run's own of the same axes (a confusion matrix of as
    many classes) is that figure with its data swapped, its glyphs drawn once already (~95
    against ~130 ms of the run's wait at its end). Once a kind a worker; nothing without one."""
    global _sent
    key = (name, *(a.shape for a in arrays.values()))
    if not running() or key in _prepared:
        return
    data = pickle.dumps(("render", (name, arrays)), protocol=pickle.HIGHEST_PROTOCOL)
    with _answered:
        _prepared.add(key)
        _unread.add(_sent)
        _sent += 1
        _sending.put(data)


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
    """Send the request; its answer, once the worker has drawn every earlier one."""
    global _sent
    data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
    with _answered:
        ticket, _sent = _sent, _sent + 1
        _sending.put(data)
        while ticket not in _answers:
            if worker is not _worker or -1 in _answers:
                raise EOFError("the figure worker ended before it answered")
            if WAITING is None:
                _answered.wait()
                continue
            _answered.release()  # the others go on while this waits
            try:
                wait = WAITING()
            finally:
                _answered.acquire()
            if wait and ticket not in _answers:
                _answered.wait()
        return _answers.pop(ticket)


def stop() -> None:
    """End the worker now, and reap it."""
    global _worker, _ready
    with _answered:
        worker, _worker, _ready = _worker, None, False
        _answers.clear()  # a request still waiting: its caller draws itself
        _answered.notify_all()
    if worker is None:
        return
    _sending.put(None)
    # Every request was answered: nothing is lost, and one still importing need not finish
    worker.kill()
    worker.wait()
    for thread in _threads:  # they end at the end of the pipes, now the worker is gone
        thread.join()
    _threads.clear()
    for stream in (worker.stdin, worker.stdout):
        with contextlib.suppress(OSError):  # a worker that died leaves a broken pipe
            if stream is not None:
                stream.close()


def serve(requests: IO[bytes], replies: IO[bytes], helpers: int = 0) -> None:
    """Run each (task, args) read from `requests` and write (True, its result), or (False, the
    error's text) if it raised, to `replies`, in order, until `requests` ends.

    With `helpers`, that many copies of this process, forked once the import is made and the
    first request drawn (no import of their own), draw requests that would wait behind
    another: an ensemble's members ask for their figures all at once at its end (32 confusion
    matrices, ~70 ms each), and two processes draw them in about half the time on two cores.
    A figure is the same bytes in either (ffn.figures' reuse is byte for byte)."""
    importlib.import_module("ffn.figures")  # the import this process exists for, made first
    pickle.dump("ready", replies)
    replies.flush()
    if helpers:
        # The first request (a run's `prepare`, when it has one) is drawn before the fork: the
        # helpers then start with its figure kept, as this process does
        if not _serve_alone(requests, replies, count=1):
            return
        forked = [h for h in (_fork_helper(replies) for _ in range(helpers)) if h is not None]
        if forked:
            _serve_with(forked, requests, replies)
            return
    _serve_alone(requests, replies)


def _serve_alone(requests: IO[bytes], replies: IO[bytes], count: int | None = None) -> bool:
    """Each request in turn, each answered before the next is read: `count` of them, or all.
    False at the requests' end."""
    while count is None or count > 0:
        try:
            task, args = pickle.load(requests)
        except EOFError:
            return False
        pickle.dump(_reply(task, args), replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()
        count = None if count is None else count - 1
    return True


def _reply(task: str, args: tuple) -> tuple[bool, Any]:
    try:
        return True, _task(task)(*args)
    except Exception as error:  # the run does it again itself, and reports what it raises
        return False, f"{type(error).__name__}: {error}"


def _fork_helper(replies: IO[bytes]) -> tuple[IO[bytes], IO[bytes]] | None:
    """A copy of this worker serving requests on pipes of its own: (its requests, its
    replies), or None where it cannot be forked. It ends at the end of its requests (when
    this worker ends)."""
    if not hasattr(os, "fork"):
        return None
    down, up = os.pipe(), os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (*down, *up):
            os.close(fd)
        return None
    if pid == 0:  # the helper: its own pipes only (the run's reader sees the worker end)
        os.close(down[1])
        os.close(up[0])
        os.close(replies.fileno())
        try:
            _serve_alone(os.fdopen(down[0], "rb"), os.fdopen(up[1], "wb"))
        finally:
            os._exit(0)
    os.close(down[0])
    os.close(up[1])
    return os.fdopen(down[1], "wb"), os.fdopen(up[0], "rb")


def _serve_with(
    helpers: list[tuple[IO[bytes], IO[bytes]]], requests: IO[bytes], replies: IO[bytes]
) -> None:
    """`serve` with helpers: this process draws the oldest request, each helper up to two of
    the next ones; the replies go out in the requests' order. Threads read the requests and
    the helpers' replies as they come (one queue of events), so none waits on another's pipe."""
    events: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()  # (source, message)

    def read(source: int, stream: IO[bytes]) -> None:
        while True:
            try:
                message = pickle.load(stream)
            except Exception:  # its end (or a helper gone): None
                events.put((source, None))
                return
            events.put((source, message))

    streams = [requests, *(answers for _, answers in helpers)]  # source 0: the run's requests
    for source, stream in enumerate(streams):
        threading.Thread(target=read, args=(source, stream), daemon=True).start()
    pending: deque[tuple[int, Any]] = deque()  # (ticket, request) not yet given to anyone
    given: list[deque[tuple[int, Any]] | None] = [deque() for _ in helpers]  # None: gone
    done: dict[int, tuple[bool, Any]] = {}
    received = written = 0
    ended = False  # the requests' end: what was asked is still answered
    while not (ended and written == received):
        try:  # every event that has come; wait for one only when nothing is to be drawn
            source, message = events.get(block=not pending)
        except queue.Empty:
            source = -1
        if source == 0:
            if message is None:
                ended = True
            else:
                pending.append((received, message))
                received += 1
            continue
        if source > 0:
            queue_ = given[source - 1]
            if message is None or queue_ is None:  # a helper gone: its requests drawn here
                pending.extendleft(reversed(queue_ or ()))
                given[source - 1] = None
            else:
                done[queue_.popleft()[0]] = message
        else:  # nothing has come: the helpers take the next ones, this process the oldest
            for i, queue_ in enumerate(given):
                while queue_ is not None and len(pending) > 1 and len(queue_) < 2:
                    item = _take_second(pending)
                    queue_.append(item)
                    try:
                        pickle.dump(item[1], helpers[i][0], protocol=pickle.HIGHEST_PROTOCOL)
                        helpers[i][0].flush()
                    except (OSError, ValueError):  # gone: its reader's None comes too
                        break
            ticket, (task, args) = pending.popleft()
            done[ticket] = _reply(task, args)
        while written in done:
            pickle.dump(done.pop(written), replies, protocol=pickle.HIGHEST_PROTOCOL)
            written += 1
        replies.flush()


def _take_second(pending: deque) -> Any:
    """The second oldest of `pending` (the oldest is this process's next), taken out."""
    first = pending.popleft()
    second = pending.popleft()
    pending.appendleft(first)
    return second


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run ends it, by closing its stdin
    if hasattr(os, "nice"):
        os.nice(int(sys.argv[1]) if len(sys.argv) > 1 else NICENESS)
    # The answers get stdout's pipe to themselves: anything printed meanwhile, by Python or C,
    # goes to stderr (/dev/null) instead of into a pickle
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
