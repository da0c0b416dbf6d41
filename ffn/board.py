"""`ffn-board [PATH]`: TensorBoard on the newest sweep (or PATH), runs named by their swept values.

TensorBoard is pointed at a view folder (a temporary folder, removed at exit) that holds, per
run, a link named by the values that vary between the runs shown (`lr=0.01,penalty=l1`) to the
run's metrics/ event folder, and `diagnostics/<name>` to its diagnostics/ (ffn/run_logger.py's
layout), and the one HParams experiment record of those runs (ffn/hparams.py says why it cannot
live in the runs): the keys the user chose as columns, varying ones first, and the headline
metrics in reading order (val/ first). Nothing is written into the run folders.

TensorBoard's Scalars, Images and Histograms tabs tick no run when there are more than 40; the
links printed at start tick every run (`runSelectionState` in the page's address).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ffn import run_record
from ffn.hparams import HParamValue, experiment_summary, headline_metrics, read_session_hparams
from ffn.report import find_run_dirs, load_run

# The curves that matter, for the Scalars link (per-layer diagnostics stay one click away).
SCALARS_FILTER = r"^(train|val|test)/(loss|accuracy|r2|objective)$"
MAX_NAME = 200  # bytes a file name may hold, with room to spare
DIAGNOSTICS_RUNS = "diagnostics"  # the view's folder of the runs' diagnostics/ links


@dataclass
class BoardRun:
    """One run of the view: its folder, its name in TensorBoard, its hyperparameters."""

    path: Path
    name: str
    hparams: dict[str, HParamValue]


def newest_sweep(outputs: Path) -> Path:
    """The newest sweep under `outputs` (Hydra leaves a multirun.yaml in each), else outputs."""
    sweeps = [p.parent for p in Path(outputs).rglob("multirun.yaml")]
    return max(sweeps, key=lambda p: p.stat().st_mtime) if sweeps else Path(outputs)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """`optimizer.lr` -> `lr` where the last part is unambiguous among `keys`."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}


def format_value(value: HParamValue) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def name_runs(paths: Sequence[Path], root: Path) -> list[BoardRun]:
    """Each run named by the values that vary across `paths`, plus its folder where not unique."""
    sessions = []
    for path in paths:
        hparams = read_session_hparams(path)
        if hparams is None:  # a run from before HParams records: its overrides
            hparams = dict(load_run(path, root).overrides)
        sessions.append(hparams)
    keys = sorted({k for h in sessions for k in h})
    varying = [
        k for k in keys if len({format_value(h[k]) if k in h else None for h in sessions}) > 1
    ]
    short = short_names(varying)
    names = []
    for path, hparams in zip(paths, sessions, strict=True):
        parts = [f"{short[k]}={format_value(hparams[k])}" for k in varying if k in hparams]
        names.append(_file_name(",".join(parts)) or _file_name(_relative(path, root)))
    counts = {n: names.count(n) for n in names}
    runs = []
    for path, hparams, name in zip(paths, sessions, names, strict=True):
        # the same values twice (a duplicate job), or the name of the diagnostics' folder
        if counts[name] > 1 or name == DIAGNOSTICS_RUNS:
            name = _file_name(f"{name} [{_relative(path, root)}]")
        runs.append(BoardRun(path, name, hparams))
    return runs


def build_view(root: Path, view: Path) -> list[BoardRun]:
    """Links to every run under `root` in `view`, and the experiment record beside them."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    root = Path(root).resolve()
    runs = name_runs(find_run_dirs(root), root)
    for run in runs:
        for name, folder in event_folders(run).items():
            (view / name).parent.mkdir(exist_ok=True)
            (view / name).symlink_to(folder, target_is_directory=True)
    tags = set()
    for run in runs:
        record = load_run(run.path, root)
        tags |= set(record.metrics) | ({"epochs"} if record.epochs is not None else set())
    writer = EventFileWriter(str(view))
    summary = experiment_summary([run.hparams for run in runs], headline_metrics(tags))
    writer.add_event(Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()
    return runs


def event_folders(run: BoardRun) -> dict[str, Path]:
    """The view's TensorBoard runs of `run` -> the event folders they link to."""
    metrics, diagnostics = (run.path / name for name in run_record.EVENT_FOLDERS)
    if not metrics.is_dir():  # a run from before the two folders: its events are in itself
        return {run.name: run.path}
    folders = {run.name: metrics}
    if diagnostics.is_dir():
        folders[f"{DIAGNOSTICS_RUNS}/{run.name}"] = diagnostics
    return folders


def links(url: str, runs: Sequence[BoardRun]) -> dict[str, str]:
    """Page addresses: HParams, and Scalars with every run ticked and the headline tags."""
    # the dashboard keeps the run selection in its address as base64 of a JSON object
    names = [name for run in runs for name in event_folders(run)]
    selection = json.dumps(dict.fromkeys(names, True), separators=(",", ":"))
    selection = base64.b64encode(selection.encode()).decode()
    scalars = "#scalars&" + urllib.parse.urlencode(
        {"tagFilter": SCALARS_FILTER, "runSelectionState": selection},
        quote_via=urllib.parse.quote,
    )
    return {"hparams": f"{url}/#hparams", "scalars": f"{url}/{scalars}", "time series": url}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ffn-board",
        description="TensorBoard on the newest sweep under outputs/, or on PATH (a sweep, a run, "
        "or a tree of them), with runs named by their swept values.",
    )
    parser.add_argument("path", nargs="?", type=Path, help="default: the newest sweep in outputs/")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6006)
    args = parser.parse_args(argv)
    root = args.path if args.path is not None else newest_sweep(args.outputs)
    if not root.is_dir():
        print(
            f"ffn: error: invalid value for path: {root} (allowed: a folder of runs)",
            file=sys.stderr,
        )
        return 2
    view = Path(tempfile.mkdtemp(prefix="ffn-board-"))
    try:
        runs = build_view(root, view)
        if not runs:
            print(
                f"ffn: error: invalid value for path: {root} (allowed: a folder of runs)",
                file=sys.stderr,
            )
            return 2
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(view)]
        command += ["--host", args.host, "--port", str(args.port)]
        board = subprocess.Popen(command, start_new_session=True)
        url = f"http://{args.host}:{args.port}"
        print(f"ffn-board: {len(runs)} runs of {root}")
        for what, link in links(url, runs).items():
            print(f"  {what}: {link}")
        _wait(board)
    finally:
        shutil.rmtree(view, ignore_errors=True)
    return 0


def _wait(board: subprocess.Popen[bytes]) -> None:
    """Until TensorBoard exits; Ctrl-C or SIGTERM stop it (and its data server) first."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        board.wait()
    except KeyboardInterrupt:
        if board.poll() is None:
            os.killpg(board.pid, signal.SIGTERM)
            try:
                board.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(board.pid, signal.SIGKILL)
                board.wait()


def _relative(path: Path, root: Path) -> str:
    text = str(Path(path).resolve().relative_to(Path(root).resolve()))
    return Path(root).resolve().name if text == "." else text


def _file_name(text: str) -> str:
    """A name TensorBoard can show and a folder can hold: no '/', not too long."""
    text = re.sub(r"\s+", " ", text.replace("/", "|")).strip()
    return text.encode()[:MAX_NAME].decode(errors="ignore")


if __name__ == "__main__":
    sys.exit(main())
