"""What a user sees of a full outputs/: `ffn-board`'s TensorBoard, headless Chromium, summaries.

One logdir for the whole module (made once): a 42-job sweep over model and trainer.seed, a sweep
over optimizer.lr (one job diverges, one is refused), and a single regression run. A real
`ffn-board` serves it on 127.0.0.1, queried over HTTP the way its dashboards do, and looked at by
Chromium (Debian's package) over the DevTools protocol. Servers and browsers are stopped at the
end whatever happens.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
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

import numpy as np
import pytest
from helpers import ROOT, TINY, ffn_env, read_rows, run_ffn

from ffn import report
from ffn.hparams import HEADLINE_TAGS, read_session_hparams
from ffn.run_record import DIAGNOSTICS_EVENTS, EVENT_FOLDERS, METRICS_EVENTS

pytestmark = pytest.mark.slow

SEEDS = 21  # x 2 models: more than the 40 runs TensorBoard's Scalars ticks by default
ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
ONE_EPOCH = [*TINY, "trainer.max_epochs=1"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Board:
    url: str
    logdir: Path
    links: dict[str, str]

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

    def experiment(self) -> dict[str, Any]:
        return self.post("/data/plugin/hparams/experiment", {"experimentName": ""})

    def sessions(self) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Session name -> (its group, the session) from the HParams table's own request."""
        body = {
            "experimentName": "",
            "allowedStatuses": ALL_STATUSES,
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 1000,
        }
        groups = self.post("/data/plugin/hparams/session_groups", body)["sessionGroups"]
        return {s["name"]: (g, s) for g in groups for s in g["sessions"]}


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def read_links(proc: subprocess.Popen[str]) -> dict[str, str]:
    """The addresses ffn-board prints before it hands over to TensorBoard."""
    links: dict[str, str] = {}
    assert proc.stdout is not None
    while "time series" not in links:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"ffn-board exited with {proc.wait()}")
        what, sep, link = line.strip().partition(": ")
        if sep and link.startswith("http"):
            links[what] = link
    return links


def wait_for(board: Board, n_runs: int, timeout: float = 120) -> None:
    """Until the HParams plugin has a session for every run."""
    deadline = time.monotonic() + timeout
    last: Exception | str = "not started"
    while time.monotonic() < deadline:
        try:
            found = len(board.sessions())
            if found >= n_runs:
                return
            last = f"{found} sessions"
        except (urllib.error.URLError, ConnectionError, OSError) as error:
            last = error
        time.sleep(1)
    raise TimeoutError(f"tensorboard never showed every run: {last}")


def run_folders(logdir: Path) -> list[Path]:
    return [p.parent for p in logdir.rglob("metrics.json") if ".hydra" not in p.parts]


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    seeds = run_ffn(
        "-m",
        *ONE_EPOCH,
        "model=relu,tanh",
        f"trainer.seed=range(0,{SEEDS})",
        f"hydra.sweep.dir={root / 'seeds'}",
        timeout=400,
    )
    assert seeds.returncode == 0, seeds.stderr[-3000:]
    assert f"ffn: job {2 * SEEDS} of {2 * SEEDS} (model=tanh trainer.seed={SEEDS - 1})" in (
        seeds.stderr
    )
    assert " left" in seeds.stderr  # the time-left estimate
    lr = run_ffn(
        "-m", *TINY, "optimizer.lr=0.05,1e30,-1", f"hydra.sweep.dir={root / 'lr'}", timeout=240
    )
    assert lr.returncode == 1, lr.stderr[-3000:]  # lr=-1 is refused
    single = run_ffn(
        *TINY, "dataset=diabetes", "model=tanh", f"hydra.run.dir={root / 'single'}", timeout=240
    )
    assert single.returncode == 0, single.stderr[-3000:]
    return root


@pytest.fixture(scope="session")
def board(logdir: Path) -> Iterator[Board]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ffn.board", str(logdir), "--port", str(port)],
        cwd=ROOT,
        env=ffn_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: TensorBoard and its data server too
    )
    try:
        board = Board(f"http://127.0.0.1:{port}", logdir, read_links(proc))
        wait_for(board, len(run_folders(logdir)))
        yield board
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def plain(logdir: Path) -> Iterator[Board]:
    """`tensorboard --logdir LOGDIR`, no ffn-board: what a user gets who never heard of it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=ffn_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        board = Board(url, logdir, {"hparams": f"{url}/#hparams"})
        wait_for(board, len(run_folders(logdir)))
        yield board
    finally:
        stop(proc)


def varying_keys(logdir: Path) -> set[str]:
    """The chosen keys with more than one value across the runs (as the HParams plugin counts:
    runs without the key are not counted)."""
    sessions = [read_session_hparams(folder) or {} for folder in run_folders(logdir)]
    keys = {key for hparams in sessions for key in hparams}
    return {k for k in keys if len({h[k] for h in sessions if k in h}) > 1}


# ---------------------------------------------------------------------------- HTTP API


def test_plain_tensorboard_takes_only_the_headline_metrics(plain: Board) -> None:
    experiment = plain.experiment()
    infos = experiment["hparamInfos"]
    # the chosen keys of both sweeps and the single run; those that vary first
    varying = varying_keys(plain.logdir)
    assert {"model", "trainer.seed", "optimizer.lr", "dataset"} <= varying
    assert [i["name"] for i in infos if i.get("differs")] == sorted(varying)
    differs = [bool(info.get("differs")) for info in infos]
    assert differs == sorted(differs, reverse=True)
    # every metric from a session's own folder (no group), the headline ones of both tasks
    metrics = [(m["name"].get("group", ""), m["name"]["tag"]) for m in experiment["metricInfos"]]
    assert len(metrics) <= 12
    assert {group for group, _ in metrics} == {""}
    assert {tag for _, tag in metrics} == set(HEADLINE_TAGS)
    # and the rows hold them
    session = "seeds/3/" + METRICS_EVENTS
    _, row = plain.sessions()[session]
    record = json.loads((plain.logdir / "seeds" / "3" / "metrics.json").read_text())
    shown = {m["name"]["tag"]: m["value"] for m in row["metricValues"]}
    assert shown["val/loss"] == pytest.approx(record["metrics"]["val/loss"], rel=1e-6)


def test_plain_tensorboard_scalars_still_show_the_diagnostics(plain: Board) -> None:
    tags = plain.get("/data/plugin/scalars/tags")
    headline, beside = (tags[f"seeds/3/{name}"] for name in EVENT_FOLDERS)
    assert set(headline) <= set(HEADLINE_TAGS) and "val/loss" in headline
    assert {"dead/layer_0", "grad_norm/layer_1", "train/lr", "train/penalty"} <= set(beside)
    assert "saturated/layer_0" in tags["single/" + DIAGNOSTICS_EVENTS]  # tanh


def test_run_names_read_as_the_swept_values(board: Board) -> None:
    runs = set(board.get("/data/runs")) - {"."}  # ".": the view's experiment record
    headline = {run for run in runs if not run.startswith("diagnostics/")}
    assert len(headline) == len(run_folders(board.logdir)) == 2 * SEEDS + 4
    # the keys that vary across the runs shown, in alphabetical order of the full key
    assert "dataset=iris,model=relu,max_epochs=1,seed=3" in headline
    assert "dataset=iris,model=relu,lr=0.05,max_epochs=2" in headline
    assert "dataset=diabetes,model=tanh,max_epochs=2" in headline
    # and each run's diagnostics under the same name (the refused lr=-1 job trained nothing)
    assert runs - headline == {f"diagnostics/{run}" for run in headline if "lr=-1" not in run}
    tags = board.get("/data/plugin/scalars/tags")
    assert "dead/layer_0" in tags["diagnostics/dataset=iris,model=relu,max_epochs=1,seed=3"]


def test_hparams_columns_are_the_chosen_keys(board: Board) -> None:
    experiment = board.experiment()
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    for key in ("model", "trainer.seed", "optimizer.lr", "dataset"):
        assert infos[key]["differs"] is True, key
    # the group choices, and what was typed; nothing that says the same thing twice
    assert set(infos) <= {"dataset", "model", "penalty", "optimizer", "schedule"} | {
        "trainer.seed",
        "optimizer.lr",
        "trainer.max_epochs",
    }
    # varying keys first: the dashboard ticks the first five
    differs = [info["differs"] for info in experiment["hparamInfos"]]
    assert differs == sorted(differs, reverse=True)

    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert len(metrics) <= 12
    assert metrics[:4] == ["val/loss", "val/accuracy", "val/r2", "test/loss"]
    assert {"train/objective", "train/sparsity", "epochs"} <= set(metrics)
    assert set(metrics) <= set(HEADLINE_TAGS)  # no layer_, lr, grad_norm, penalty


def test_hparams_rows_have_values_metrics_and_status(board: Board) -> None:
    sessions = board.sessions()
    statuses = {"completed": "STATUS_SUCCESS", "diverged": "STATUS_FAILURE"}
    statuses["failed"] = "STATUS_FAILURE"
    for folder in run_folders(board.logdir):
        record = json.loads((folder / "metrics.json").read_text())
        overrides = (folder / ".hydra" / "overrides.yaml").read_text()
        wanted = [n for n, (g, _) in sessions.items() if _same_run(g["hparams"], overrides)]
        assert len(wanted) == 1, (folder, wanted)
        _, session = sessions[wanted[0]]
        assert session["status"] == statuses[record["status"]], folder
        shown = {m["name"]["tag"]: m["value"] for m in session.get("metricValues", [])}
        if record["status"] == "completed":
            for tag in ("val/loss", "test/loss", "train/sparsity"):
                assert shown[tag] == pytest.approx(record["metrics"][tag], rel=1e-6), tag
            assert shown["epochs"] == record["epochs"]
        elif record["status"] == "diverged":
            assert shown["val/loss"] == "NaN" or math.isnan(float(shown["val/loss"]))
        else:
            assert shown == {}


def _same_run(hparams: dict[str, Any], overrides_yaml: str) -> bool:
    """The session whose chosen values are the run's overrides (seed, lr, model, dataset)."""
    import yaml

    typed = dict(o.split("=", 1) for o in yaml.safe_load(overrides_yaml))  # the last one wins
    for key, value in typed.items():
        if key in ("model", "dataset", "trainer.seed", "optimizer.lr"):
            shown = hparams.get(key)
            if isinstance(shown, float):
                if not math.isclose(shown, float(value)):
                    return False
            elif shown != value:
                return False
    return True


# ---------------------------------------------------------------------------- a real browser


def chromium_executable() -> str:
    names = ("chromium", "chromium-browser", "google-chrome")
    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None:
        pytest.skip("no chromium: apt-get update && apt-get install -y chromium (.ci/run does)")
    return found


def screenshots_module() -> Any:
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts/screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    shots = screenshots_module()
    chromium = shots.Chromium(chromium_executable(), str(tmp_path_factory.mktemp("profile")))
    try:
        yield shots, chromium
    finally:
        chromium.close()


def coloured_pixels(png: Path, left: int = 420, top: int = 120) -> int:
    """Pixels of the chart area (right of the run list, below the header) that are coloured:
    curves, not the grey and white of empty charts."""
    import matplotlib.image

    image = matplotlib.image.imread(str(png))[top:, left:, :3]
    spread = image.max(axis=2) - image.min(axis=2)
    return int((spread > 0.25).sum())


def test_browser_hparams_table(board: Board, browser: Any, tmp_path: Path) -> None:
    shots, chromium = browser
    text = shots.take_hparams(chromium, board.links["hparams"], tmp_path / "hparams.png")
    assert (tmp_path / "hparams.png").stat().st_size > 10_000
    for column in ("model", "trainer.seed", "optimizer.lr", "val/loss", "val/accuracy"):
        assert column in text, column
    assert "layer_0" not in text
    assert "dataset=iris,model=tanh,max_epochs=1,seed=7" in text  # a row, named by its values
    # the experiment record's reading order: val/ first among the five metrics ticked
    ticked = chromium.evaluate(shots.TICKED_JS)
    assert ticked["metrics"] == ["val/loss", "val/accuracy", "val/r2", "test/loss", "test/accuracy"]
    assert set(ticked["hparams"]) == varying_keys(board.logdir)


def test_browser_plain_tensorboard_ticks_the_varying_keys(plain: Board, browser: Any) -> None:
    shots, chromium = browser
    ticked = shots.ticked_columns(chromium, plain.links["hparams"])
    assert ticked is not None, "the HParams page never listed its columns"
    # five vary here, and the page ticks five (its own limit): the varying keys exactly
    assert set(ticked["hparams"]) == varying_keys(plain.logdir)
    # no experiment record: metrics in name order, the first five ticked; none per layer
    assert ticked["metrics"] == sorted(HEADLINE_TAGS)[:5]


def test_browser_scalars_over_more_than_40_runs(board: Board, browser: Any, tmp_path: Path) -> None:
    shots, chromium = browser
    plain = board.url + "/#scalars&tagFilter=" + "%5E(train%7Cval)%2Floss%24"
    shots.take_scalars(chromium, plain, tmp_path / "plain.png")
    shots.take_scalars(chromium, board.links["scalars"], tmp_path / "board.png")
    ticked = coloured_pixels(tmp_path / "board.png")
    # TensorBoard's own default over > 40 runs: nothing ticked, empty charts
    assert ticked > 3000 and ticked > 5 * coloured_pixels(tmp_path / "plain.png"), ticked


# ---------------------------------------------------------------------------- summaries


def test_summary_over_seeds_equals_numpy(logdir: Path) -> None:
    sweep = logdir / "seeds"
    rows = read_rows(sweep / "summary_seeds.csv")
    assert [r["model"] for r in rows] and {r["model"] for r in rows} == {"relu", "tanh"}
    assert "trainer.seed" not in rows[0]
    for row in rows:
        jobs = [
            json.loads(p.read_text())["metrics"]
            for p in sweep.glob("*/metrics.json")
            if f"model={row['model']}" in (p.parent / ".hydra" / "overrides.yaml").read_text()
        ]
        assert len(jobs) == int(row["runs"]) == SEEDS
        for metric in ("val/accuracy", "val/loss", "test/accuracy", "train/objective"):
            values = np.array([job[metric] for job in jobs], dtype=np.float64)
            assert float(row[f"{metric} mean"]) == pytest.approx(values.mean(), rel=1e-12)
            assert float(row[f"{metric} std"]) == pytest.approx(values.std(ddof=1), rel=1e-9)
            assert int(row[f"{metric} n"]) == SEEDS
    means = [float(r["val/accuracy mean"]) for r in rows]
    assert means == sorted(means, reverse=True)  # classification: best val/accuracy first
    assert "Over seeds (trainer.seed)" in (sweep / "summary.md").read_text()


def test_report_over_outputs_keeps_tasks_apart(logdir: Path, tmp_path: Path) -> None:
    assert report.main([str(logdir), "--out", str(tmp_path), "--no-plot"]) == 0
    markdown = (tmp_path / "summary.md").read_text()
    classification, regression = markdown.split("\n1 regression runs under")
    assert classification.startswith(f"{2 * SEEDS + 3} classification runs under")
    assert "best val/accuracy (maximize) first" in classification
    assert "| single |" not in classification and "| single |" in regression
    assert "best val/loss (minimize) first" in regression
    table = next(line for line in classification.splitlines() if line.startswith("| rank |"))
    columns = [c.strip() for c in table.strip("|").split("|")]
    assert set(columns[2:6]) == {"trainer.max_epochs", "model", "trainer.seed", "optimizer.lr"}
    assert "dataset" not in columns  # iris in every classification run: not a column
    # floats rounded for reading: 4 significant digits
    cells = [c.strip() for line in markdown.splitlines() for c in line.split("|")]
    numbers = [c for c in cells if c.replace(".", "", 1).replace("-", "", 1).isdigit()]
    digits = [c.replace("-", "").replace(".", "").lstrip("0") for c in numbers]
    assert numbers and max(len(d) for d in digits) <= 4
