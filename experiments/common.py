"""What every study's analyze.py shares: reading a sweep's runs, mean ± std, the README's markers.

Each `experiments/<study>/analyze.py` puts this folder on sys.path and imports from here, so the
scripts run as `python experiments/<study>/analyze.py` without the folder being a package.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing import event_accumulator

from ffn.run_record import EVENT_FOLDERS, read_record

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results: begin (written by analyze.py) -->", "<!-- results: end -->"


# --------------------------------------------------------------------------- reading a sweep


@dataclass
class SweepJob:
    """One job of the sweep: its folder, composed config and metrics.json."""

    path: Path
    cfg: DictConfig
    status: str
    metrics: dict[str, float]
    record: dict  # metrics.json as written: epochs, stop_reason, wall_time_s, ...


def latest_sweep(name: str) -> Path:
    base = ROOT / "outputs" / "experiments" / name
    sweeps = sorted(p for p in base.glob("*") if p.is_dir())
    if not sweeps:
        raise SystemExit(f"no sweep under {base}: run `python run.py -m experiment={name}` first")
    return sweeps[-1]


def load_runs(sweep: Path) -> list[SweepJob]:
    """Every job folder of the sweep, in job order; one without a readable end reads `running`."""
    runs = []
    for config in sweep.glob("*/.hydra/config.yaml"):
        path = config.parents[1]
        record = read_record(path)  # ffn.run_record: one meaning for every reader
        metrics = {k: math.nan if v is None else v for k, v in record.get("metrics", {}).items()}
        runs.append(SweepJob(path, OmegaConf.load(config), record["status"], metrics, record))
    if not runs:
        raise SystemExit(f"no runs under {sweep}")
    return sorted(runs, key=lambda r: (not r.path.name.isdigit(), int("0" + r.path.name), r.path))


def scalar_curve(run_dir: Path, tag: str) -> np.ndarray:
    """A TensorBoard scalar of the run, one value per step (epoch).  -> (n_steps,)."""
    # in one of the run's event folders, or in the run folder itself (runs before them)
    for folder in (*(run_dir / name for name in EVENT_FOLDERS), run_dir):
        acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            return np.array([e.value for e in acc.Scalars(tag)])
    return np.array([])


def sweep_minutes(sweep: Path) -> float:
    """Minutes from the sweep's start (its multirun.yaml) to the last file a job wrote."""
    start = (sweep / "multirun.yaml").stat().st_mtime
    jobs = [p for p in sweep.glob("*/**/*") if p.is_file() and p.parent != sweep]
    return (max(p.stat().st_mtime for p in jobs) - start) / 60


# --------------------------------------------------------------------------- writing the results


def mean_std(values, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    """`mean ± std` (sample std) of the finite values, with how many were not finite."""
    values = np.asarray(values, dtype=float) * scale
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "—"
    std = finite.std(ddof=1) if finite.size > 1 else 0.0
    text = f"{fmt.format(finite.mean())} ± {fmt.format(std)}"
    missing = values.size - finite.size
    return text + (f" ({missing} not finite)" if missing else "")


def save_figure(fig: plt.Figure, path: Path) -> None:
    """The figure, laid out tight, into path at 100 dpi; then closed, to free its memory."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(out: Path, study: str, block: str, line: str) -> None:
    """The block between the markers of out/README.md; the line into experiments/README.md."""
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else f"{BEGIN}\n{END}\n"
    readme.write_text(_between(text, BEGIN, END, block))
    index = out.parent / "README.md"
    begin, end = f"<!-- {study}: begin -->", f"<!-- {study}: end -->"
    if index.exists() and begin in index.read_text():
        index.write_text(_between(index.read_text(), begin, end, line))


def _between(text: str, begin: str, end: str, body: str) -> str:
    head, rest = text.split(begin, 1)
    indent = head.rsplit("\n", 1)[-1]  # markers inside a list item: indent the body alike
    body = "\n".join(indent + row if row else row for row in body.strip("\n").split("\n"))
    return f"{head}{begin}\n{body}\n{indent}{end}{rest.split(end, 1)[1]}"


# --------------------------------------------------------------------------- the command line


def command_line(analyze: Callable[[Path, Path], object], doc: str, here: Path, argv=None) -> None:
    """`analyze.py [SWEEP_DIR] [--out DIR]` of a study of one sweep, the study's folder `here`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("sweep", nargs="?", type=Path, help="the sweep folder (default: latest)")
    parser.add_argument(
        "--out", type=Path, default=here, help="README.md and figures (default: here)"
    )
    args = parser.parse_args(argv)
    analyze(args.sweep or latest_sweep(here.name), args.out)
