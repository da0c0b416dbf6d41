"""Faults a run must survive without losing or misreporting a result (README, "Faults").

Real `python run.py` processes: two at once, a second writer of a locked folder, planted
symlinks, a resume with changed overrides or changed data, a crafted checkpoint, a corrupt
last.pt, a full filesystem (a small tmpfs, where this machine lets the test mount one).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, ffn_env, run_ffn

from ffn import report
from ffn.run_record import METRICS_EVENTS

pytestmark = pytest.mark.slow


def run_in(folder: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_ffn(*TINY, *overrides, f"hydra.run.dir={folder}", timeout=timeout)


def record(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under the folder -> its SHA-256; the lock and Hydra's log (appended) aside."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (".ffn.lock", "run.log")
    }


def one_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("ffn:")]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def done(base: Path) -> Path:
    """A finished two-epoch run with model=tanh, checkpointed every epoch."""
    folder = base / "done"
    proc = run_in(folder, "model=tanh", "trainer.checkpoint_every=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


# ---------------------------------------------------------------- run folders


def test_two_runs_started_at_once_get_two_folders(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "run.py"), *TINY]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, env=ffn_env(), stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    folders = sorted(p.parent for p in (tmp_path / "outputs").rglob("metrics.json"))
    assert len(folders) == 2
    for folder in folders:
        assert record(folder)["status"] == "completed"
        assert len(list((folder / METRICS_EVENTS).glob("events.out.tfevents.*"))) == 1
    day = folders[0].parent.name
    assert len(day) == 10 and day[4] == day[7] == "-"  # outputs/YYYY-MM-DD/HH-MM-SS-micro


def test_a_new_run_in_a_folder_holding_one_is_refused_and_changes_nothing(done: Path) -> None:
    before = snapshot(done)
    proc = run_in(done, "model=relu")
    one_line(proc, 2, str(done), "trainer.resume")
    assert snapshot(done) == before


def test_a_second_writer_of_a_folder_gets_one_line(base: Path) -> None:
    folder = base / "busy"
    first = subprocess.Popen(
        [sys.executable, "run.py", *TINY, "dataset=digits", "trainer.max_epochs=400",
         f"hydra.run.dir={folder}"],
        cwd=ROOT, env=ffn_env(), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (folder / "metrics.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended too soon"
        second = run_in(folder, "trainer.resume=true")
        one_line(second, 2, str(folder), "no other ffn process", f"pid {first.pid}")
    finally:
        first.kill()
        first.wait()


def test_a_second_sweep_into_a_sweep_folder_is_refused(base: Path) -> None:
    sweep = base / "sweep_twice"
    first = run_ffn("-m", *TINY, "trainer.seed=0,1", f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(sweep)
    second = run_ffn("-m", *TINY, "trainer.seed=5,6", f"hydra.sweep.dir={sweep}")
    one_line(second, 2, str(sweep), "trainer.resume=auto")
    assert snapshot(sweep) == before


def test_symlinks_planted_at_temporary_names_are_not_followed(base: Path) -> None:
    folder = base / "planted"
    (folder / "checkpoints").mkdir(parents=True)
    victims = []
    for name in ("metrics.json.tmp", "checkpoints/last.pt.tmp", ".metrics.json.tmp"):
        victim = base / f"victim-{len(victims)}"
        victim.write_text("precious\n")
        (folder / name).symlink_to(victim)
        victims.append(victim)
    proc = run_in(folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert record(folder)["status"] == "completed"
    assert [v.read_text() for v in victims] == ["precious\n"] * 3


def test_a_refused_command_leaves_no_run_folder(base: Path) -> None:
    folder = base / "refused"
    proc = run_in(folder, "optimizer.lr=-1")
    one_line(proc, 2, "optimizer.lr")
    assert not folder.exists()


# ---------------------------------------------------------------- resume tells the truth


def test_a_resume_never_rewrites_the_run_s_record(done: Path) -> None:
    before = (done / ".hydra" / "config.yaml").read_text()
    assert "activation: tanh" in before
    proc = run_in(done, "trainer.resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (done / ".hydra" / "config.yaml").read_text() == before


def test_overrides_on_resume_are_refused_naming_them(done: Path) -> None:
    before = snapshot(done)
    proc = run_in(done, "trainer.resume=true", "optimizer.lr=0.5", "model=relu")
    one_line(proc, 2, "optimizer.lr=0.5", "model=relu", "trainer.max_epochs")
    assert snapshot(done) == before


@pytest.fixture(scope="module")
def continued(base: Path, done: Path) -> Path:
    """A copy of the finished run, trained on to 4 epochs."""
    folder = base / "continued"
    subprocess.run(["cp", "-a", str(done), str(folder)], check=True)
    proc = run_in(folder, "trainer.resume=true", "trainer.max_epochs=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_raising_max_epochs_continues_and_is_recorded(continued: Path, done: Path) -> None:
    result = record(continued)
    assert (result["status"], result["epochs"]) == ("completed", 4)
    assert result["continuations"] == [{"epoch": 2, "changed": {"trainer.max_epochs": [2, 4]}}]
    assert (continued / ".hydra" / "config.yaml").read_text() == (
        done / ".hydra" / "config.yaml"
    ).read_text()


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous(base: Path, done: Path) -> None:
    folder = base / "corrupt"
    subprocess.run(["cp", "-a", str(done), str(folder)], check=True)
    (folder / "checkpoints" / "last.pt").write_bytes(os.urandom(3000))
    proc = run_in(folder, "trainer.resume=true", "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "previous.pt" in proc.stdout + proc.stderr  # the warning names the one used
    assert record(folder)["epochs"] == 3
    assert record(folder)["continuations"][0]["epoch"] == 1  # from previous.pt, epoch 1


def test_a_crafted_target_in_a_checkpoint_is_never_imported(base: Path, done: Path) -> None:
    folder = base / "crafted"
    subprocess.run(["cp", "-a", str(done), str(folder)], check=True)
    probe = base / "probe_pkg"
    probe.mkdir()
    touched = base / "imported"
    (probe / "ffn_probe.py").write_text(
        f"open({str(touched)!r}, 'w').write('imported')\nclass Optimizer: pass\n"
    )
    path = folder / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=True)
    payload["config"] = payload["config"].replace("torch.optim.Adam", "ffn_probe.Optimizer")
    torch.save(payload, path)
    status = record(folder) | {"status": "interrupted"}
    (folder / "metrics.json").write_text(json.dumps(status))
    env = ffn_env() | {"PYTHONPATH": str(probe)}
    proc = subprocess.run(
        [sys.executable, "run.py", *TINY, "trainer.resume=true", f"hydra.run.dir={folder}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    one_line(proc, 2, "optimizer._target_")
    assert not touched.exists()


def test_resume_auto_starts_continues_or_keeps(base: Path, done: Path) -> None:
    fresh = base / "auto_fresh"
    proc = run_in(fresh, "trainer.resume=auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert record(fresh)["status"] == "completed"
    before = snapshot(done)
    proc = run_in(done, "trainer.resume=auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert snapshot(done) == before  # finished: kept as it is


def _write_csv(path: Path, rows: list[list[float]], header: str = "a,b,y") -> None:
    path.write_text(header + "\n" + "\n".join(",".join(f"{v:g}" for v in r) for r in rows) + "\n")


def test_changed_data_on_resume_is_refused(base: Path) -> None:
    data = base / "data.csv"
    rows = [[i % 7, (i * 3) % 5, i % 2] for i in range(60)]
    _write_csv(data, rows)
    folder = base / "data_run"
    file_data = ("dataset=file", f"dataset.path={data}", "dataset.target=y")
    proc = run_in(folder, *file_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _write_csv(data, rows[::-1])  # the same rows, shuffled
    before = snapshot(folder)
    proc = run_in(folder, *file_data, "trainer.resume=true", "trainer.max_epochs=4")
    one_line(proc, 2, "dataset", "the data the run trained on")
    _write_csv(data, [[*r, 1.0] for r in rows], header="a,b,y,c")  # an extra column
    proc = run_in(folder, *file_data, "trainer.resume=true", "trainer.max_epochs=4")
    one_line(proc, 2, "dataset", "shapes")
    assert snapshot(folder) == before


def test_a_refused_resume_leaves_the_record_and_then_a_resume_agrees_everywhere(
    base: Path, done: Path
) -> None:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    folder = base / "failed_then_ok"
    subprocess.run(["cp", "-a", str(done), str(folder)], check=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "interrupted", "epochs": 2}))
    refused = run_in(folder, "trainer.resume=true", "model=relu")
    one_line(refused, 2, "model=relu")
    assert record(folder)["status"] == "interrupted"  # a refusal does not rewrite the record
    ok = run_in(folder, "trainer.resume=true", "trainer.max_epochs=3")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert record(folder)["status"] == "completed"
    acc = event_accumulator.EventAccumulator(str(folder / METRICS_EVENTS))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_END_INFO_TAG]
    status = metadata.parse_session_end_info_plugin_data(content).status
    assert status == api_pb2.STATUS_SUCCESS
    assert [r.status for r in report.summarize(folder).runs] == ["completed"]


def test_r2_of_a_constant_target_is_undefined_not_a_divergence(base: Path) -> None:
    data = base / "constant.csv"
    _write_csv(data, [[i % 7, (i * 3) % 5, 1.0] for i in range(60)])
    folder = base / "constant"
    proc = run_in(
        folder, "dataset=file", f"dataset.path={data}", "dataset.target=y",
        "dataset.task=regression",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = record(folder)
    assert (result["status"], result["stop_reason"]) == ("completed", "max_epochs")
    assert result["metrics"]["test/r2"] is None
    assert "constant" in result["undefined"]["test/r2"]


# ---------------------------------------------------------------- a full filesystem


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount = tmp_path / "full"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_output_folder_gets_one_line_and_keeps_the_last_checkpoint(small_tmpfs: Path):
    folder = small_tmpfs / "run"
    # 64-512-10 on digits: ~460 kB a checkpoint (weights, Adam's two moments): the first fits
    # in the 600 kB filesystem, the second cannot be written beside it
    proc = run_ffn(
        *TINY, "dataset=digits", "model.hidden=[512]", "trainer.max_epochs=5",
        "trainer.checkpoint_every=1", f"hydra.run.dir={folder}",
    )  # fmt: skip
    one_line(proc, 1, "No space left on device", "is kept")
    payload = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert payload["loop"]["epoch"] >= 1


def test_a_read_only_output_folder_gets_one_line(tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        one_line(run_in(mount / "run"), 2, str(mount / "run"), "Read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# --- a signal before the training loop ------------------------------------------------------------


def _torch_loaded(pid: int) -> bool:
    try:
        return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see torch load")
@pytest.mark.parametrize(("phase", "signum", "code"), [("imports", 2, 130), ("data", 15, 143)])
def test_a_signal_before_training_is_one_line_and_leaves_no_run(
    base: Path, phase: str, signum: int, code: int
) -> None:
    """Ctrl-C during the imports, SIGTERM while 3 million rows are drawn: one line, 130 / 143.

    "data" waits until torch's library is mapped (the job's imports are under way or done) and
    a second more, inside the drawing of a dataset that takes several seconds to make.
    """
    folder = base / f"early-{phase}"
    command = [sys.executable, "run.py", f"hydra.run.dir={folder}", "dataset=regression"]
    command += ["dataset.n_samples=3000000", "trainer.max_epochs=1"]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=ffn_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if phase == "imports":
        time.sleep(0.3)
    else:
        deadline = time.time() + 60
        while not _torch_loaded(proc.pid) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
    assert proc.poll() is None, "the job ended before the signal"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    one_line(subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), code)
    assert "before training started" in stderr
    left = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    assert left == []  # no metrics.json that says "running" forever, no half a run
