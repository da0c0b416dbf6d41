"""The run record: what a run folder says about its run, and how it is written and read.

One torch-free home, shared by every writer (ffn.job, ffn.checkpoint, ffn.sweep) and every
reader (ffn.report, ffn.hparams, experiments/common.py), for

- the statuses a run can have (STATUSES) and the keys of metrics.json (FIELDS);
- the one meaning of a folder whose metrics.json is missing, unreadable or not a mapping: no end
  was recorded, so it reads as `running` (still running, or killed before it could say so);
- atomic, exclusive writes: a temporary file created with O_EXCL and O_NOFOLLOW under a unique
  name in the target's own folder, fsynced, then renamed over the target. Two writers never
  share a temporary file, a symlink planted in the folder is never followed, and a reader sees
  the old file or the new one, never half of one;
- the run folder's lock (LOCK), held while a process writes the folder;
- where its TensorBoard event files lie (EVENT_FOLDERS, `event_files`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

METRICS_JSON = "metrics.json"
HYDRA_RECORD = ".hydra"  # config.yaml, hydra.yaml, overrides.yaml: how the run was configured
LOCK = ".ffn.lock"  # held (flock) by the process writing the folder; holds its pid
CHECKPOINT = Path("checkpoints") / "last.pt"  # written by ffn.checkpoint
PREVIOUS = Path("checkpoints") / "previous.pt"  # the checkpoint before last.pt

# TensorBoard event folders of a run, siblings so that the HParams dashboard takes only the
# headline curves as metrics (ffn/run_logger.py says why): the HParams session, the headline
# scalars, figures and the config in METRICS_EVENTS; the rest (learning rate, gradient norm,
# per-layer diagnostics, histograms) in DIAGNOSTICS_EVENTS. Runs from before this layout have
# their event files in the run folder itself.
METRICS_EVENTS = "metrics"
DIAGNOSTICS_EVENTS = "diagnostics"
EVENT_FOLDERS = (METRICS_EVENTS, DIAGNOSTICS_EVENTS)
EVENT_GLOB = "events.out.tfevents.*"

# status -> (what it means, the HParams dashboard's session status). Ranked in this order.
STATUSES: dict[str, tuple[str, str]] = {
    "completed": ("a stopping rule ended it (stop_reason says which)", "STATUS_SUCCESS"),
    "diverged": (
        "a non-finite loss or gradient; the last finite checkpoint is kept",
        "STATUS_FAILURE",
    ),
    "interrupted": (
        "SIGINT/SIGTERM, after a checkpoint: trainer.resume continues it",
        "STATUS_UNKNOWN",
    ),
    "failed": ("it raised once started (error says why)", "STATUS_FAILURE"),
    "running": (
        "no end recorded: still running, or killed (SIGKILL, power loss)",
        "STATUS_UNKNOWN",
    ),
}
ENDED = ("completed", "diverged")  # nothing is left to resume
UNRECORDED = "running"  # how a folder without a readable record reads

# metrics.json's keys -> what each holds. Only `status` is always there.
FIELDS: dict[str, str] = {
    "status": "one of STATUSES",
    "stop_reason": "max_epochs | grad_tol | converged | early_stopping | diverged | SIGINT | ...",
    "error": "failed: the one-line reason; unreadable records: why",
    "epochs": "epochs finished",
    "steps": "optimizer steps taken",
    "wall_time_s": "seconds spent training, over every session of the run",
    "timing": "this session: where the time went (seconds)",
    "metrics": "split/name -> final value; null where not finite or undefined",
    "undefined": "split/name -> why the metric is undefined for this data",
    "continuations": "resumes that raised a stopping rule: [{epoch, changed: {key: [old, new]}}]",
}


def event_files(run_dir: Path) -> list[Path]:
    """The run's TensorBoard event files: in its event folders (and in itself, older runs)."""
    run_dir = Path(run_dir)
    folders = [run_dir, *(run_dir / name for name in EVENT_FOLDERS)]
    return [path for folder in folders for path in sorted(folder.glob(EVENT_GLOB))]


# ---------------------------------------------------------------------------- writing


def write_atomic(
    path: Path,
    write: Callable[[IO[bytes]], Any],
    before_rename: Callable[[], Any] | None = None,
    may_wait: bool = False,
) -> None:
    """`write(f)` into a fresh temporary file beside `path`, then rename it over `path`.

    `before_rename` runs once the new file is complete on disk (a checkpoint moves the old one
    aside there). With `may_wait`, inside `fsyncs_together()`, the fsync and the rename wait
    for `sync_waiting()` (the file is written now); inside `syncs_behind()`, a thread of their
    own does them meanwhile. A write that does not wait syncs those waiting first, so files
    still land in the order they were written.
    """
    path = Path(path)
    waits = may_wait and (_WAITING is not None or _BEHIND is not None)
    if not waits:
        sync_waiting()
    elif _BEHIND is not None:
        _BEHIND.raise_error()  # an earlier file that could not land: say so now, as alone
    tmp, fd = _exclusive_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if waits:
                if _WAITING is not None:
                    _WAITING.append((tmp, path, before_rename))
                else:
                    _BEHIND.submit((tmp, path, before_rename))
                return
            os.fsync(f.fileno())  # on disk before the rename makes it the file
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)  # a symlink at `path` is replaced, not followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


_Waiting = tuple[Path, Path, Callable[[], Any] | None]  # (temporary, path, before_rename)
# Writes waiting for their fsync and rename (write_atomic's may_wait), in the order written
_WAITING: list[_Waiting] | None = None
# The thread landing them instead, inside `syncs_behind()`
_BEHIND: _Behind | None = None


@contextlib.contextmanager
def fsyncs_together() -> Iterator[None]:
    """Inside, write_atomic(..., may_wait=True) leaves its fsync and rename to `sync_waiting()`,
    run on leaving too: files fsynced at once share the filesystem's journal commits (32
    files: 6-15x faster here): an ensemble's members checkpoint at the same epoch. Inside
    `syncs_behind()` (a job alone) or another, it changes nothing: that one lands them."""
    global _WAITING
    outer = _WAITING is not None or _BEHIND is not None
    if outer:
        yield
        return
    _WAITING = []
    try:
        yield
    finally:
        try:
            sync_waiting()
        finally:
            _WAITING = None


def sync_waiting() -> None:
    """The waiting files on disk (fsynced at once), renamed in the order written within each
    folder tree (`_by_folder_tree`: a run's records and checkpoints), the trees side by side,
    their folders fsynced: each then stands as write_atomic alone would have left it. Inside
    `syncs_behind()`, once its thread has landed every file handed to it (its first error is
    raised here)."""
    if _BEHIND is not None:
        _BEHIND.wait()
    if not _WAITING:
        return
    waiting = list(_WAITING)
    _WAITING.clear()
    _land(waiting)


def _land(waiting: list[_Waiting]) -> None:
    """Written files on disk, then renamed in order, then their folders on disk (a file that
    did not land is unlinked)."""
    try:
        _in_parallel(_fsync_file, [tmp for tmp, _, _ in waiting])
        _in_parallel(_rename_in_order, _by_folder_tree(waiting))
    except BaseException:
        for tmp, _, _ in waiting:  # those renamed already are gone: nothing to unlink
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    _in_parallel(_fsync_folder, list(dict.fromkeys(path.parent for _, path, _ in waiting)))


@contextlib.contextmanager
def syncs_behind() -> Iterator[None]:
    """Inside, write_atomic(..., may_wait=True) returns once its file is written: a thread
    fsyncs it and renames it into place (a checkpoint's: last.pt, previous.pt before it) while
    the run goes on, in the order written, those written meanwhile together; leaving waits
    for them all.

    A run alone waited for each checkpoint's two fsyncs, ~10 ms on this VM's disk, 0.10-0.13 s
    of a default run's 1.3 s loop (its CPU: 0.02 s). A crash still leaves each file old or new,
    never half of one: only a file on disk is renamed, in order (a resume then finds the
    checkpoint before, as after a crash a moment earlier). An error fsyncing one is raised by
    the next write or sync, or on leaving. Nested in `fsyncs_together()` (an ensemble's
    members, whose group syncs its rounds itself: there a thread landing 32 members' files
    cost the sweep ~1 s of CPU, GIL and all) or in another, it changes nothing."""
    global _BEHIND
    if _WAITING is not None or _BEHIND is not None:
        yield
        return
    behind = _BEHIND = _Behind()
    try:
        yield
    except BaseException:
        _BEHIND = None
        behind.close(raising=False)  # the error on its way out is the one to report
        raise
    _BEHIND = None
    behind.close(raising=True)


class _Behind:
    """One thread landing written files (`_land`), in the order handed over: those handed over
    while it landed others, together."""

    def __init__(self) -> None:
        import queue
        import threading

        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._landed = threading.Condition()
        self._pending = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="ffn-sync-behind", daemon=True)
        self._started = False

    def submit(self, written: _Waiting) -> None:
        with self._landed:
            self._pending += 1
        if not self._started:  # a run that writes nothing starts no thread
            self._thread.start()
            self._started = True
        self._queue.put(written)

    def _work(self) -> None:
        import queue

        ending = False
        while not ending:
            # every file handed over by now lands in one round: fsynced at once (a job's first
            # records), renamed in order
            batch = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._queue.get_nowait())
            ending = batch[-1] is None
            written = [w for w in batch if w is not None]
            if not written:
                continue
            try:
                _land(written)
            except BaseException as error:  # kept for the run's thread, which raises it
                with self._landed:
                    self._error = self._error or error
            finally:
                with self._landed:
                    self._pending -= len(written)
                    self._landed.notify_all()

    def raise_error(self) -> None:
        """The first error landing a file, raised (once) in the caller's thread."""
        with self._landed:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def wait(self) -> None:
        """Until every file handed over has landed; then raise_error."""
        self._drain()
        self.raise_error()

    def close(self, raising: bool) -> None:
        self._drain()
        if self._started:
            self._queue.put(None)
            self._thread.join()
        if raising:
            self.raise_error()

    def _drain(self) -> None:
        with self._landed:
            self._landed.wait_for(lambda: self._pending == 0)


def _by_folder_tree(waiting: list[_Waiting]) -> list[list[_Waiting]]:
    """The waiting writes by the topmost of their folders at or above each one's folder, in the
    order written: a folder's files and those in folders below it are one tree, renamed in
    order (a run's metrics.json lands after the .hydra/ files and checkpoints written before
    it); other folders' (sibling runs', or a run's .hydra/ and checkpoints/ while nothing of
    its own folder waits) side by side.

    Renamed one after another, ext4 took 1.4-2.3 ms a rename over an existing file (a
    checkpoint's last.pt -> previous.pt): 32 checkpoints' two renames 89-149 ms; 3.2-4.9 ms
    side by side (AMD EPYC, load 4.6)."""
    folders = {path.parent: os.path.abspath(path.parent) for _, path, _ in waiting}
    present = set(folders.values())
    trees: dict[str, list[_Waiting]] = {}
    for entry in waiting:
        trees.setdefault(_topmost(folders[entry[1].parent], present), []).append(entry)
    return list(trees.values())


def _topmost(folder: str, folders: set[str]) -> str:
    """The topmost of `folders` at or above `folder` (an absolute path)."""
    top, above = folder, os.path.dirname(folder)
    while above != folder:  # up to the root: dirname("/") is "/"
        if above in folders:
            top = above
        folder, above = above, os.path.dirname(above)
    return top


def _rename_in_order(tree: list[_Waiting]) -> None:
    for tmp, path, before_rename in tree:
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)


# The pool `_in_parallel` calls on, kept from one round to the next, and the process that made
# it (a forked child has its queue but none of its threads, and makes its own). A fresh pool of
# 32 threads cost 9.6 ms a call, a kept one 1.0 (32 no-op calls, AMD EPYC, load 2): a 32-job
# sweep's rounds start two each.
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_THREADS = 32
T = TypeVar("T")


def _in_parallel(function: Callable[[T], Any], items: list[T]) -> None:
    global _POOL
    if len(items) == 1:  # nothing to overlap: no hand-over to a thread
        function(items[0])
        return
    if _POOL is None or _POOL[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor  # (19 ms to import: when first used)

        _POOL = os.getpid(), ThreadPoolExecutor(_POOL_THREADS, thread_name_prefix="ffn-fsync")
    list(_POOL[1].map(function, items))  # list(): the first error is raised here


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes, may_wait: bool = False) -> None:
    """`data` into `path`, atomically and exclusively (see write_atomic)."""
    write_atomic(path, lambda f: f.write(data), may_wait=may_wait)


def write_json(path: Path, payload: Mapping[str, Any], may_wait: bool = False) -> None:
    """A JSON object into `path` atomically; NaN and inf are refused (they are not JSON)."""
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_bytes(path, text.encode(), may_wait)


def write_record(
    run_dir: Path, status: str, may_wait: bool = False, **fields: Any
) -> dict[str, Any]:
    """metrics.json of `run_dir`: the status and any FIELDS; non-finite metrics become null.
    `may_wait`: as write_atomic's."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"metrics.json has no fields {unknown}")
    record = {"status": status, **{k: v for k, v in fields.items() if v is not None}}
    if "metrics" in record:
        record["metrics"] = {k: finite_or_none(v) for k, v in sorted(record["metrics"].items())}
    write_json(Path(run_dir) / METRICS_JSON, record, may_wait)
    return record


def finite_or_none(value: Any) -> Any:
    """None for NaN and inf (JSON's null), the value otherwise."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _exclusive_temporary(path: Path) -> tuple[Path, int]:
    """A new file `.NAME.PID.RANDOM.tmp` beside `path`, created by us alone; (path, fd)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o644)
        except FileExistsError:  # someone's file (or a planted link) has that name: another
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _fsync_folder(folder: Path) -> None:
    """The rename itself on disk too (where the filesystem lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- reading


def read_record(run_dir: Path) -> dict[str, Any]:
    """metrics.json as a mapping whose `status` is one of STATUSES.

    A missing file, one that is not JSON, not a mapping, or has no known status all read as
    `running` (no end recorded); `error` says what was wrong with a file that is there.
    """
    path = Path(run_dir) / METRICS_JSON
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        return {"status": UNRECORDED}
    except (OSError, ValueError) as error:
        return {"status": UNRECORDED, "error": f"{METRICS_JSON} unreadable: {error}"}
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        return {"status": UNRECORDED, "error": f"{METRICS_JSON} is a JSON {kind}, not a mapping"}
    if payload.get("status") not in STATUSES:
        status = payload.get("status")
        return {**payload, "status": UNRECORDED, "error": f"{METRICS_JSON} status {status!r}"}
    if not isinstance(payload.get("metrics", {}), dict):
        payload = {**payload, "metrics": {}, "error": f"{METRICS_JSON} metrics not a mapping"}
    return payload


def has_record(run_dir: Path) -> bool:
    """Whether `run_dir` holds a metrics.json at all (a run started in it)."""
    return (Path(run_dir) / METRICS_JSON).exists()


# ---------------------------------------------------------------------------- the lock


class FolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder, self.holder = folder, holder
        super().__init__(f"{folder} is being written by another ffn process ({holder})")


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """Hold `folder`'s lock for the block; FolderBusy at once if another process holds it.

    flock: released by the kernel when the process ends, however it ends, so a killed run never
    leaves its folder locked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "pid unknown"
            raise FolderBusy(folder, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
