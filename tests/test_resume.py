"""Checkpoints and resume, with real signals sent to real `python run.py` processes.

A run killed mid-way (SIGKILL, SIGTERM) and resumed with `trainer.resume=true` must end bitwise
where the same run left alone ends, with one clean TensorBoard curve; SIGINT/SIGTERM leave an
`interrupted` run and exit 130/143; a diverged run keeps its last finite checkpoint; a folder
that cannot be resumed is refused in one line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ROOT, ffn_env, run_ffn, run_ffn_forked
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from ffn.run_record import EVENT_FOLDERS, METRICS_EVENTS

pytestmark = pytest.mark.slow

CHECKPOINT = Path("checkpoints") / "last.pt"
MAX_EPOCHS = 200
CHECKPOINT_EVERY = 10
# Digits, the default model: about 20-50 ms an epoch, so a signal lands well inside the run
RUN = (
    "trainer.histogram_every=0",
    "trainer.figures=false",
    "trainer.device=cpu",
    f"trainer.max_epochs={MAX_EPOCHS}",
    f"trainer.checkpoint_every={CHECKPOINT_EVERY}",
)
RESUME = ("trainer.resume=true",)
# Blows up after a few finite epochs: lr 3 for plain SGD on digits
DIVERGES = (
    "optimizer=sgd",
    "optimizer.lr=3",
    "schedule=constant",
    "trainer.checkpoint_every=1",
    "trainer.max_epochs=50",
    "trainer.histogram_every=0",
    "trainer.figures=false",
    "trainer.device=cpu",
)
# metrics.json of a resumed run equals the uninterrupted run's in all of these; the one other
# field, wall_time_s, measures the machine rather than the run and naturally differs
SAME = ("status", "stop_reason", "epochs", "steps", "metrics")
TIMEOUT = 300


# ---------------------------------------------------------------- running and reading runs


def _command(folder: Path, overrides: tuple[str, ...]) -> list[str]:
    return [sys.executable, "run.py", *overrides, f"hydra.run.dir={folder}"]


def run_cli(folder: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`python run.py OVERRIDES hydra.run.dir=folder` from the repo root, to its end."""
    return run_ffn(*overrides, f"hydra.run.dir={folder}", timeout=TIMEOUT)


def metrics_json(folder: Path) -> dict[str, Any]:
    """metrics.json, refusing NaN/Infinity, which are not JSON."""
    return json.loads((folder / "metrics.json").read_text(), parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"metrics.json holds {name}")


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """The run's checkpoint, read as data only, as the issue asks."""
    return torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)


def events(folder: Path, name: str = METRICS_EVENTS) -> event_accumulator.EventAccumulator:
    """Every event file of the run's event folder `name` through TensorBoard's reader (orphans
    purged), all kept."""
    guidance = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
    acc = event_accumulator.EventAccumulator(str(folder / name), size_guidance=guidance)
    acc.Reload()
    return acc


def steps(acc: event_accumulator.EventAccumulator, tag: str) -> list[int]:
    if tag not in acc.Tags()["scalars"]:
        return []
    return [event.step for event in acc.Scalars(tag)]


def assert_clean_curves(folder: Path) -> None:
    """Every scalar curve of the run steps strictly forward: no step twice, none backwards."""
    for name in EVENT_FOLDERS:
        acc = events(folder, name)
        for tag in acc.Tags()["scalars"]:
            got = steps(acc, tag)
            assert got == sorted(set(got)), f"{tag}: {got[:5]} ... {got[-5:]}"


def session_status(acc: event_accumulator.EventAccumulator) -> int:
    """The run's status as the HParams dashboard reads it (TensorBoard keeps the first record)."""
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    return metadata.parse_session_end_info_plugin_data(
        content[metadata.SESSION_END_INFO_TAG]
    ).status


def logged_epochs(folder: Path) -> list[int]:
    """train/loss steps in the folder's event files so far (a file being written is fine)."""
    return steps(events(folder), "train/loss")


def assert_equal_state(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_equal_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_end(run: Path, reference: Path) -> None:
    """The run ended bitwise where the uninterrupted reference run ended."""
    got, want = metrics_json(run), metrics_json(reference)
    # Only the clocks may differ: wall_time_s and timing (when the loop started, what it cost)
    assert set(got) == set(want) == {*SAME, "wall_time_s", "timing"}
    # Exact equality on purpose: the issue asks for bitwise-identical runs on CPU
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
    mine, theirs = load_checkpoint(run), load_checkpoint(reference)
    for key in ("model", "optimizer", "schedule"):
        assert_equal_state(mine[key], theirs[key], key)
    loop = {k: v for k, v in mine["loop"].items() if k != "wall_time_s"}
    assert loop == {k: v for k, v in theirs["loop"].items() if k != "wall_time_s"}


@dataclass
class Stopped:
    """A run stopped by a signal, and its folder as the stop left it (before any resume)."""

    folder: Path
    returncode: int
    stderr: str
    metrics: dict[str, Any]
    checkpoint: dict[str, Any]
    events: event_accumulator.EventAccumulator

    @property
    def epoch(self) -> int:
        """Epochs finished by the checkpoint's loop."""
        return self.checkpoint["loop"]["epoch"]


def stop_mid_run(folder: Path, signum: int, *overrides: str) -> Stopped:
    """Start the run, send `signum` between two checkpoints, and wait for the process to end.

    The signal goes once the event file holds an epoch past the last checkpoint (and well before
    the next one), so a SIGKILL leaves TensorBoard events that a resume must discard.
    """
    err = folder.with_name(folder.name + ".stderr")
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            _command(folder, (*RUN, *overrides)),
            cwd=ROOT,
            env=ffn_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        sent = False
        while proc.poll() is None and time.monotonic() < deadline:
            if (folder / CHECKPOINT).is_file():
                saved = load_checkpoint(folder)["loop"]["epoch"]
                last = max(logged_epochs(folder), default=0)
                if saved < last <= saved + CHECKPOINT_EVERY // 2:
                    proc.send_signal(signum)
                    sent = True
                    break
            time.sleep(0.01)
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sent, f"the run ended before it could be stopped: {err.read_text()[-2000:]}"
    return Stopped(
        folder,
        proc.returncode,
        err.read_text(),
        metrics_json(folder),
        load_checkpoint(folder),
        events(folder),
    )


# ---------------------------------------------------------------- the runs, made once


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resume")


def _garbage_folder(folder: Path) -> Path:
    """A run folder whose checkpoint is random bytes, and whose metrics.json says running."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / CHECKPOINT).write_bytes(os.urandom(4096))
    (folder / "metrics.json").write_text('{"status": "running"}\n')
    return folder


def _hollow_folder(folder: Path) -> Path:
    """A run folder whose checkpoint has ffn's format tag and nothing else."""
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"format": "ffn-checkpoint-1"}, folder / CHECKPOINT)
    return folder


@pytest.fixture(scope="module")
def background(base: Path) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """The runs nobody interrupts, beside the interrupted ones in the foreground."""
    runs = {
        "reference": (base / "reference", RUN),  # the interrupted runs, left alone
        "diverged": (base / "diverged", DIVERGES),
        "never_ran": (base / "never_ran", RESUME),
        "garbage": (_garbage_folder(base / "garbage"), RESUME),
        "hollow": (_hollow_folder(base / "hollow"), RESUME),
    }
    jobs = [[*o, f"hydra.run.dir={folder}"] for folder, o in runs.values()]
    # one batch: each run a process forked from one that did the imports, two at a time
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(run_ffn_forked, jobs)
        yield {name: pool.submit(lambda i=i: batch.result()[i]) for i, name in enumerate(runs)}


@pytest.fixture(scope="module")
def reference(base: Path, background) -> Path:
    """The same run as the interrupted ones, left alone."""
    proc = background["reference"].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "reference"


@pytest.fixture(scope="module")
def killed(base: Path, background) -> Stopped:
    """A run SIGKILLed between checkpoints, with events on disk past its checkpoint.

    On a busy machine the run can pass its next checkpoint between the look and the kill,
    leaving no events to discard; then the kill is tried again, in a fresh folder.
    """
    for attempt in range(3):
        stopped = stop_mid_run(base / f"killed{attempt}", signal.SIGKILL)
        if max(steps(stopped.events, "train/loss"), default=0) > stopped.epoch:
            break
    return stopped


@pytest.fixture(scope="module")
def killed_then_resumed(killed: Stopped) -> subprocess.CompletedProcess[str]:
    return run_cli(killed.folder, *RESUME)


@pytest.fixture(scope="module")
def terminated(base: Path, background) -> Stopped:
    return stop_mid_run(base / "terminated", signal.SIGTERM)


@pytest.fixture(scope="module")
def terminated_then_resumed(terminated: Stopped) -> subprocess.CompletedProcess[str]:
    return run_cli(terminated.folder, *RESUME)


# ---------------------------------------------------------------- SIGKILL, then resume


def test_sigkill_really_stops_the_run_mid_way(killed: Stopped) -> None:
    assert killed.returncode == -signal.SIGKILL
    assert killed.metrics == {"status": "running"}
    assert 0 < killed.epoch < MAX_EPOCHS
    assert killed.epoch % CHECKPOINT_EVERY == 0
    # The killed session logged epochs past its checkpoint: the resume must drop them
    assert max(steps(killed.events, "train/loss")) > killed.epoch


def test_resume_after_sigkill_ends_bitwise_like_the_run_left_alone(
    killed: Stopped, killed_then_resumed, reference: Path
) -> None:
    assert killed_then_resumed.returncode == 0, killed_then_resumed.stderr[-3000:]
    assert metrics_json(killed.folder)["status"] == "completed"
    assert_same_end(killed.folder, reference)


def test_tensorboard_after_sigkill_and_resume_shows_one_clean_curve(
    killed: Stopped, killed_then_resumed, reference: Path
) -> None:
    assert killed_then_resumed.returncode == 0, killed_then_resumed.stderr[-3000:]
    for name in EVENT_FOLDERS:  # one file per session in each
        assert len(list((killed.folder / name).glob("events.out.tfevents.*"))) == 2, name
    resumed = events(killed.folder)
    assert steps(resumed, "train/loss") == list(range(1, MAX_EPOCHS + 1))
    assert session_status(resumed) == api_pb2.STATUS_SUCCESS
    # Every curve, not only the loss: same steps and the very same values as the lone run
    for name in EVENT_FOLDERS:
        resumed, alone = events(killed.folder, name), events(reference, name)
        tags = alone.Tags()["scalars"]
        assert sorted(resumed.Tags()["scalars"]) == sorted(tags)
        for tag in tags:
            got = [(e.step, e.value) for e in resumed.Scalars(tag)]
            assert got == [(e.step, e.value) for e in alone.Scalars(tag)], tag


# ---------------------------------------------------------------- SIGTERM and SIGINT


def test_sigterm_saves_closes_and_exits_143(terminated: Stopped) -> None:
    assert terminated.returncode == 143, terminated.stderr[-3000:]
    assert "Traceback" not in terminated.stderr
    metrics, loop = terminated.metrics, terminated.checkpoint["loop"]
    assert (metrics["status"], metrics["stop_reason"]) == ("interrupted", "SIGTERM")
    assert 0 < terminated.epoch < MAX_EPOCHS
    assert (metrics["epochs"], metrics["steps"]) == (loop["epoch"], loop["steps"])
    # The writer was flushed and closed: every finished epoch is in the file, and so are the
    # test scalars written after the loop
    assert steps(terminated.events, "train/loss") == list(range(1, terminated.epoch + 1))
    # the test scalars wait for the session that finishes the run: no stray point mid-curve
    assert steps(terminated.events, "test/loss") == []


def test_resume_after_sigterm_ends_bitwise_like_the_run_left_alone(
    terminated: Stopped, terminated_then_resumed, reference: Path
) -> None:
    assert terminated_then_resumed.returncode == 0, terminated_then_resumed.stderr[-3000:]
    assert_same_end(terminated.folder, reference)
    acc = events(terminated.folder)
    assert steps(acc, "train/loss") == list(range(1, MAX_EPOCHS + 1))
    assert_clean_curves(terminated.folder)


def test_hparams_dashboard_shows_a_run_resumed_after_sigterm_as_completed(
    terminated: Stopped, terminated_then_resumed
) -> None:
    assert terminated_then_resumed.returncode == 0, terminated_then_resumed.stderr[-3000:]
    assert session_status(events(terminated.folder)) == api_pb2.STATUS_SUCCESS


def test_sigint_saves_and_exits_130(base: Path, background) -> None:
    stopped = stop_mid_run(base / "sigint", signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    metrics = stopped.metrics
    assert (metrics["status"], metrics["stop_reason"]) == ("interrupted", "SIGINT")
    assert 0 < stopped.epoch < MAX_EPOCHS
    assert metrics["epochs"] == stopped.epoch


# ---------------------------------------------------------------- the checkpoint itself


def test_checkpoint_is_plain_data_with_everything_a_resume_needs(reference: Path) -> None:
    payload = load_checkpoint(reference)  # weights_only=True: no code runs on loading
    assert {"model", "optimizer", "schedule", "loop", "rng", "config"} <= set(payload)
    loop = payload["loop"]
    assert loop["epoch"] == MAX_EPOCHS
    assert loop["batch"] == 0
    assert loop["steps"] == metrics_json(reference)["steps"]
    assert "best_val_loss" in loop
    assert {"python", "numpy", "torch"} <= set(payload["rng"])
    assert f"max_epochs: {MAX_EPOCHS}" in payload["config"]
    assert payload["model"] and all(isinstance(t, torch.Tensor) for t in payload["model"].values())
    # Written through a temporary file and a rename: none is left behind; the one before is kept
    kept = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert kept == ["last.pt", "previous.pt"]


@pytest.fixture(scope="module")
def completed_again(base: Path, reference: Path) -> Path:
    """A copy of the finished reference run, resumed."""
    folder = base / "completed_again"
    shutil.copytree(reference, folder)
    proc = run_cli(folder, *RESUME)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_resuming_a_completed_run_changes_nothing(completed_again: Path, reference: Path) -> None:
    assert_same_end(completed_again, reference)
    assert steps(events(completed_again), "train/loss") == list(range(1, MAX_EPOCHS + 1))


def test_resuming_a_completed_run_adds_no_tensorboard_points(completed_again: Path) -> None:
    assert_clean_curves(completed_again)


# ---------------------------------------------------------------- divergence


def test_divergence_stops_and_keeps_the_last_finite_checkpoint(base: Path, background) -> None:
    proc = background["diverged"].result()
    folder = base / "diverged"
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = metrics_json(folder)  # no NaN in the file: non-finite metrics are null
    assert (metrics["status"], metrics["stop_reason"]) == ("diverged", "diverged")
    assert 1 < metrics["epochs"] < 50  # some finite epochs, then the blow-up
    assert metrics["metrics"]["train/loss"] is None
    payload = load_checkpoint(folder)
    # Checkpointed every epoch, the checkpoint is the epoch just before the non-finite one
    assert payload["loop"]["epoch"] == metrics["epochs"] - 1
    for name, tensor in payload["model"].items():
        assert torch.isfinite(tensor).all(), name
    assert math.isfinite(payload["loop"]["previous_objective"])


# ---------------------------------------------------------------- folders that cannot be resumed


def assert_refused_in_one_line(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ffn: error:")
    for word in words:
        assert word in lines[0]


def test_resume_without_a_checkpoint_is_refused(base: Path, background) -> None:
    folder = base / "never_ran"
    assert_refused_in_one_line(background["never_ran"].result(), "trainer.resume", str(folder))
    assert not (folder / "metrics.json").exists()


def test_resume_from_garbage_bytes_is_refused(base: Path, background) -> None:
    folder = base / "garbage"
    proc = background["garbage"].result()
    assert_refused_in_one_line(proc, "trainer.resume", str(folder / CHECKPOINT))
    assert metrics_json(folder)["status"] == "running"  # a refusal leaves the record as it was


def test_resume_from_a_checkpoint_missing_its_keys_is_refused(base: Path, background) -> None:
    proc = background["hollow"].result()
    assert_refused_in_one_line(proc, "trainer.resume", str(base / "hollow" / CHECKPOINT))


def test_rng_states_round_trip_exactly_in_the_compact_and_the_old_form(tmp_path: Path) -> None:
    """checkpoint.rng_states through a file (weights_only) and back: the next draws of Python's,
    numpy's and torch's generators are the same; Python's state as the list older checkpoints
    hold is still set exactly."""
    import random

    import numpy as np

    from ffn import checkpoint

    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    states = checkpoint.rng_states()
    assert isinstance(states["python"][1], torch.Tensor)  # one tensor, not 625 pickled ints

    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), torch.rand(()).item()

    expected = draws()
    torch.save(states, tmp_path / "rng.pt")
    checkpoint.set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected
    version, internal, gauss_next = states["python"]
    checkpoint.set_rng_states({**states, "python": [version, internal.tolist(), gauss_next]})
    assert draws() == expected
