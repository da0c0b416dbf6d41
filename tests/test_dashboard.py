"""One TensorBoard over two sweeps that varied different keys: every run, tag and HParams row.

A real `tensorboard` on 127.0.0.1 and a free port, queried over HTTP the way its dashboards do:
`/data/runs`, the scalar tags, and the HParams plugin's experiment and session groups. The server
is stopped at the end whatever happens.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import TINY, run_ffn

# run name -> (swept values, status in metrics.json, session status in the dashboard)
EXPECTED = {
    "a/0": ({"model": "relu"}, "completed", "STATUS_SUCCESS"),
    "a/1": ({"model": "tanh"}, "completed", "STATUS_SUCCESS"),
    "b/0": ({"optimizer.lr": 0.05}, "completed", "STATUS_SUCCESS"),
    "b/1": ({"optimizer.lr": 1e30}, "diverged", "STATUS_FAILURE"),
    "b/2": ({"optimizer.lr": -1.0}, "failed", "STATUS_FAILURE"),
}
ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Board:
    url: str
    logdir: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def session_groups(self) -> list[dict[str, Any]]:
        body = {
            "experimentName": "",
            "allowedStatuses": ALL_STATUSES,
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 1000,
        }
        return self.post("/data/plugin/hparams/session_groups", body)["sessionGroups"]


def start_tensorboard(logdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the data server goes with it
    )
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def wait_for(board: Board, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Until the server answers and its HParams plugin has loaded every run."""
    deadline = time.monotonic() + timeout
    last: Exception | str = "not started"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tensorboard exited with {proc.returncode}")
        try:
            groups = board.session_groups()
            names = {s["name"] for g in groups for s in g["sessions"]}
            if names >= set(EXPECTED):
                return
            last = f"sessions so far: {sorted(names)}"
        except (urllib.error.URLError, ConnectionError, OSError) as error:
            last = error
        time.sleep(1)
    raise TimeoutError(f"tensorboard never showed every run: {last}")


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    logdir = tmp_path_factory.mktemp("outputs")
    first = run_ffn("-m", *TINY, "model=relu,tanh", f"hydra.sweep.dir={logdir / 'a'}", timeout=240)
    assert first.returncode == 0, first.stderr  # a sweep without failures exits 0
    second = run_ffn(
        "-m", *TINY, "optimizer.lr=0.05,1e30,-1", f"hydra.sweep.dir={logdir / 'b'}", timeout=240
    )
    assert second.returncode == 1, second.stderr
    proc, url = start_tensorboard(logdir)
    try:
        board = Board(url, logdir)
        wait_for(board, proc)
        yield board
    finally:
        stop(proc)


def metrics_json(board: Board, run: str) -> dict[str, Any]:
    return json.loads((board.logdir / run / "metrics.json").read_text())


def test_every_job_is_a_run(board: Board) -> None:
    assert set(board.get("/data/runs")) == set(EXPECTED)
    for run, (_, status, _) in EXPECTED.items():
        assert metrics_json(board, run)["status"] == status


def test_scalar_tags(board: Board) -> None:
    tags = board.get("/data/plugin/scalars/tags")
    for run, (_, status, _) in EXPECTED.items():
        if status == "failed":
            continue  # refused before its first epoch: HParams only
        wanted = {"train/loss", "train/lr", "val/loss", "val/accuracy", "test/accuracy"}
        assert wanted <= set(tags[run]), (run, sorted(tags[run]))


def test_hparams_columns_line_up_across_sweeps(board: Board) -> None:
    experiment = board.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    assert infos["model"]["differs"] is True
    assert infos["optimizer.lr"]["differs"] is True
    assert {"dataset", "penalty.lam", "trainer.max_epochs", "optimized_metric"} <= set(infos)
    metric_tags = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"val/loss", "val/accuracy", "test/accuracy"} <= metric_tags

    # Each sweep varied one key; every run still has a value in both columns
    for group in board.session_groups():
        assert {"model", "optimizer.lr", "dataset", "penalty.lam"} <= set(group["hparams"])


def test_hparams_rows_have_values_metrics_and_status(board: Board) -> None:
    sessions = {s["name"]: (g, s) for g in board.session_groups() for s in g["sessions"]}
    assert set(sessions) == set(EXPECTED)
    for run, (swept, status, session_status) in EXPECTED.items():
        group, session = sessions[run]
        assert session["status"] == session_status, run
        hparams = group["hparams"]
        assert hparams["dataset"] == "iris"
        for key, value in swept.items():
            assert hparams[key] == value, (run, key)
        shown = {m["name"]["tag"]: m["value"] for m in session.get("metricValues", [])}
        record = metrics_json(board, run)
        if status == "completed":
            for tag in ("val/loss", "val/accuracy", "test/accuracy", "test/loss"):
                assert shown[tag] == pytest.approx(record["metrics"][tag], rel=1e-6), (run, tag)
        elif status == "diverged":
            assert shown["val/loss"] == "NaN" or math.isnan(float(shown["val/loss"]))
        else:
            assert shown == {}
