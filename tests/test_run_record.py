"""The run record (ffn.run_record): exclusive atomic writes, one meaning for a missing record.

Real processes write the same file at once, a real symlink is planted where a temporary file
would go, and ffn-report reads folders whose metrics.json is missing or malformed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from ffn import report, run_record

WRITES = 300


def _write_many(path: str, tag: int, errors) -> None:
    """One writer process: WRITES versions of the same file, each a whole JSON object."""
    try:
        for i in range(WRITES):
            run_record.write_json(Path(path), {"writer": tag, "i": i, "pad": "x" * 4000})
    except Exception as error:  # pragma: no cover - reported to the test
        errors.put(repr(error))


def test_concurrent_writers_never_collide_and_readers_never_see_half_a_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.json"
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    writers = [ctx.Process(target=_write_many, args=(str(path), k, errors)) for k in (1, 2)]
    for w in writers:
        w.start()
    seen = 0
    while any(w.is_alive() for w in writers):
        if path.exists():
            payload = json.loads(path.read_text())  # never a half-written file
            assert payload["writer"] in (1, 2)
            seen += 1
    for w in writers:
        w.join()
    assert errors.empty(), errors.get()
    assert all(w.exitcode == 0 for w in writers)
    assert seen > 0
    # no temporary file left behind by either writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_symlink_planted_at_the_temporary_name_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    names = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(run_record.secrets, "token_hex", lambda n: next(names))
    planted = run_dir / f".metrics.json.{os.getpid()}.aaaa.tmp"
    planted.symlink_to(victim)
    run_record.write_record(run_dir, "completed", epochs=3)
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink()  # left alone, and the next name was taken instead
    assert run_record.read_record(run_dir) == {"status": "completed", "epochs": 3}


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "metrics.json").symlink_to(victim)
    run_record.write_record(tmp_path, "failed", error="x")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "metrics.json").is_symlink()


def test_statuses_and_fields_are_checked_on_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="status"):
        run_record.write_record(tmp_path, "finished")
    with pytest.raises(ValueError, match="fields"):
        run_record.write_record(tmp_path, "completed", accuracy=1.0)
    record = run_record.write_record(tmp_path, "diverged", metrics={"train/loss": float("nan")})
    assert record["metrics"] == {"train/loss": None}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (None, None),
        ("[1, 2]", "not a mapping"),
        ("{", "unreadable"),
        ('{"status": "done"}', "status 'done'"),
        ('"completed"', "not a mapping"),
    ],
)
def test_a_missing_or_malformed_record_reads_as_running(
    tmp_path: Path, text: str | None, error: str | None
) -> None:
    if text is not None:
        (tmp_path / "metrics.json").write_text(text)
    record = run_record.read_record(tmp_path)
    assert record["status"] == run_record.UNRECORDED
    assert (error is None) == ("error" not in record)
    if error:
        assert error in record["error"]


def test_report_summarises_the_other_runs_when_a_record_is_not_a_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "0"
    good.mkdir()
    run_record.write_record(good, "completed", metrics={"val/loss": 0.5})
    bad = tmp_path / "1"
    bad.mkdir()
    (bad / "metrics.json").write_text("[1, 2, 3]\n")
    assert report.main([str(tmp_path), "--no-plot"]) == 0
    summary = report.summarize(tmp_path)
    assert [(r.name, r.status) for r in summary.runs] == [("0", "completed"), ("1", "running")]
    assert "not a mapping" in (summary.runs[1].error or "")


def _hold(folder: str, ready, release) -> None:
    with run_record.locked(Path(folder)):
        ready.set()
        release.wait(30)


def test_a_second_writer_of_a_locked_folder_is_refused(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        busy = pytest.raises(run_record.FolderBusy, match=f"pid {holder.pid}")
        with busy, run_record.locked(tmp_path):
            pass
    finally:
        release.set()
        holder.join()
    with run_record.locked(tmp_path):  # free again once the holder has gone
        pass


# ---------------------------------------------------------------------------- syncs_behind


def _held_fsyncs(monkeypatch) -> threading.Event:
    """run_record's file fsyncs wait until the returned event is set (then fsync as before)."""
    release = threading.Event()
    fsync = run_record._fsync_file

    def held(path: Path) -> None:
        assert release.wait(10), "the test never released the fsync"
        fsync(path)

    monkeypatch.setattr(run_record, "_fsync_file", held)
    return release


def _save(folder: Path, data: bytes) -> None:
    """A checkpoint's write: last.pt, the one before moved to previous.pt once it is on disk."""

    def keep_previous() -> None:
        if (folder / "last.pt").exists():
            (folder / "last.pt").replace(folder / "previous.pt")

    run_record.write_atomic(
        folder / "last.pt", lambda f: f.write(data), before_rename=keep_previous, may_wait=True
    )


def test_files_written_behind_land_in_order_and_all_before_the_block_ends(
    tmp_path: Path, monkeypatch
) -> None:
    """Inside syncs_behind a waiting write returns before its fsync: the old file stays whole
    until the new one is on disk; the thread lands each in the order written; leaving waits."""
    (tmp_path / "last.pt").write_bytes(b"0")
    release = _held_fsyncs(monkeypatch)
    with run_record.syncs_behind():
        _save(tmp_path, b"1")  # returns although its fsync is held
        _save(tmp_path, b"2")
        assert (tmp_path / "last.pt").read_bytes() == b"0"
        assert not (tmp_path / "previous.pt").exists()
        release.set()
    assert (tmp_path / "last.pt").read_bytes() == b"2"
    assert (tmp_path / "previous.pt").read_bytes() == b"1"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_write_that_does_not_wait_lands_after_those_behind(tmp_path: Path, monkeypatch) -> None:
    """A run's end record (written at once) is never overtaken by its earlier checkpoint or
    running record: it waits for the thread to land them first."""
    release = _held_fsyncs(monkeypatch)
    with run_record.syncs_behind():
        run_record.write_record(tmp_path, "running", may_wait=True)
        _save(tmp_path, b"last")
        threading.Timer(0.2, release.set).start()
        run_record.write_record(tmp_path, "completed")  # waits for the two behind
        assert (tmp_path / "last.pt").read_bytes() == b"last"
        assert run_record.read_record(tmp_path)["status"] == "completed"
    assert run_record.read_record(tmp_path)["status"] == "completed"


def test_a_file_that_cannot_land_behind_is_an_error_of_the_run(tmp_path: Path, monkeypatch) -> None:
    """An fsync that fails in the thread (a full disk) is raised in the run's thread, by the next
    sync or on leaving, as ENOSPC; the file it would have replaced is kept, no temporary left."""
    import errno

    (tmp_path / "last.pt").write_bytes(b"kept")

    def full(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_record, "_fsync_file", full)
    with pytest.raises(OSError) as raised, run_record.syncs_behind():
        _save(tmp_path, b"lost")
        run_record.sync_waiting()
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(OSError), run_record.syncs_behind():  # not synced inside: on leaving
        _save(tmp_path, b"lost")
    assert (tmp_path / "last.pt").read_bytes() == b"kept"
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_error_inside_syncs_behind_is_raised_once_every_file_has_landed(
    tmp_path: Path, monkeypatch
) -> None:
    """The run's own exception propagates, after the files handed over are on disk."""
    release = _held_fsyncs(monkeypatch)
    threading.Timer(0.2, release.set).start()
    with pytest.raises(KeyError, match="the run's"), run_record.syncs_behind():
        _save(tmp_path, b"1")
        raise KeyError("the run's")
    assert (tmp_path / "last.pt").read_bytes() == b"1"


def test_syncs_behind_inside_a_round_leaves_the_sync_to_the_round(tmp_path: Path) -> None:
    """syncs_behind inside fsyncs_together (a caller's own round): its writes wait for that
    round, as before; and fsyncs_together inside syncs_behind leaves them to its thread."""
    with run_record.fsyncs_together():
        with run_record.syncs_behind():
            _save(tmp_path, b"member")
        assert not (tmp_path / "last.pt").exists()  # waiting for the round
        run_record.sync_waiting()
        assert (tmp_path / "last.pt").read_bytes() == b"member"
    # and train()'s fsyncs_together inside a job's syncs_behind: behind
    with run_record.syncs_behind(), run_record.fsyncs_together():
        _save(tmp_path, b"alone")
    assert (tmp_path / "last.pt").read_bytes() == b"alone"


def test_files_handed_over_while_others_land_land_together(tmp_path: Path, monkeypatch) -> None:
    """The thread takes every file waiting when it is free as one round (fsynced at once, as an
    ensemble's round is), renamed in the order written."""
    release = _held_fsyncs(monkeypatch)
    rounds = []
    in_parallel = run_record._in_parallel

    def counted(function, paths):
        if function is run_record._fsync_file:  # a round's fsyncs (not its renames, folders)
            rounds.append(len(paths))
        in_parallel(function, paths)

    monkeypatch.setattr(run_record, "_in_parallel", counted)
    folders = [tmp_path / str(i) for i in range(3)]
    for folder in folders:
        folder.mkdir()
    with run_record.syncs_behind():
        _save(tmp_path, b"first")  # held in its fsync
        deadline = time.monotonic() + 10
        while not rounds and time.monotonic() < deadline:
            time.sleep(0.01)
        for folder in folders:
            _save(folder, b"a")
        _save(folders[0], b"b")
        release.set()
    assert rounds == [1, 4]
    assert [(f / "last.pt").read_bytes() for f in folders] == [b"b", b"a", b"a"]
    assert (folders[0] / "previous.pt").read_bytes() == b"a"
