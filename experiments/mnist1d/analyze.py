"""Study 4, MNIST-1D: logistic regression and a 40-100-100-10 MLP against the paper's numbers.

    python experiments/mnist1d/analyze.py [SWEEP_DIR] [--out DIR]

SWEEP_DIR is a folder of `python run.py -m experiment=mnist1d` (default: the latest under
outputs/experiments/mnist1d/). Test accuracy comes from each run's metrics.json, the training
curves from its event files. hidden=[] is logistic regression whatever the activation the sweep
paired it with: one run a seed is kept (the others are the same computation). Writes the table
into DIR/README.md between the results markers, the figure into DIR (default: this folder), the
study's line into experiments/README.md when DIR is this folder, and every number into
SWEEP_DIR/analysis.json.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing import event_accumulator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NAME = HERE.name
BEGIN, END = "<!-- results: begin (written by analyze.py) -->", "<!-- results: end -->"
# Greydanus, "Scaling down deep learning with MNIST-1D" (2020/2024): test accuracy (%)
PAPER = {"logistic regression": "32", "MLP relu": "68 (paper), 65 (its notebooks)"}


# --------------------------------------------------------------------------- reading a sweep


@dataclass
class Run:
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


def load_runs(sweep: Path) -> list[Run]:
    """Every job folder of the sweep, in job order; a job without metrics.json counts as failed."""
    runs = []
    for config in sweep.glob("*/.hydra/config.yaml"):
        path = config.parents[1]
        record = {"status": "failed"}
        if (path / "metrics.json").exists():
            record = json.loads((path / "metrics.json").read_text())
        metrics = {k: math.nan if v is None else v for k, v in record.get("metrics", {}).items()}
        runs.append(Run(path, OmegaConf.load(config), record["status"], metrics, record))
    if not runs:
        raise SystemExit(f"no runs under {sweep}")
    return sorted(runs, key=lambda r: (not r.path.name.isdigit(), int("0" + r.path.name), r.path))


def scalar_curve(run_dir: Path, tag: str) -> np.ndarray:
    """A TensorBoard scalar of the run, one value per step (epoch).  -> (n_steps,)."""
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return np.array([])
    return np.array([e.value for e in acc.Scalars(tag)])


def sweep_minutes(sweep: Path) -> float:
    """Minutes from the sweep's start (its multirun.yaml) to the last file a job wrote."""
    start = (sweep / "multirun.yaml").stat().st_mtime
    jobs = [p for p in sweep.glob("*/**/*") if p.is_file() and p.parent != sweep]
    return (max(p.stat().st_mtime for p in jobs) - start) / 60


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


def write_results(out: Path, block: str, line: str) -> None:
    """The block between the markers of out/README.md; the line into experiments/README.md."""
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else f"{BEGIN}\n{END}\n"
    readme.write_text(_between(text, BEGIN, END, block))
    index = out.parent / "README.md"
    begin, end = f"<!-- {NAME}: begin -->", f"<!-- {NAME}: end -->"
    if index.exists() and begin in index.read_text():
        index.write_text(_between(index.read_text(), begin, end, line))


def _between(text: str, begin: str, end: str, body: str) -> str:
    head, rest = text.split(begin, 1)
    indent = head.rsplit("\n", 1)[-1]  # markers inside a list item: indent the body alike
    body = "\n".join(indent + row if row else row for row in body.strip("\n").split("\n"))
    return f"{head}{begin}\n{body}\n{indent}{end}{rest.split(end, 1)[1]}"


# --------------------------------------------------------------------------- the study


def model_name(cfg: DictConfig) -> str:
    if not list(cfg.model.hidden):
        return "logistic regression"
    return f"MLP {cfg.model.activation}"


def analyze(sweep: Path, out: Path) -> dict:
    runs = load_runs(sweep)
    rows, seen = [], set()
    for run in runs:
        name, seed = model_name(run.cfg), run.cfg.trainer.seed
        if (name, seed) in seen:
            continue  # logistic regression again, under another activation's name
        seen.add((name, seed))
        rows.append(
            {
                "model": name,
                "seed": seed,
                "status": run.status,
                "test_accuracy": run.metrics.get("test/accuracy", math.nan),
                "train_accuracy": run.metrics.get("train/accuracy", math.nan),
                "steps": run.record.get("steps"),
                "wall_time_s": run.record.get("wall_time_s"),
                "train_loss": scalar_curve(run.path, "train/loss").tolist(),
            }
        )
    order = ["logistic regression", "MLP relu", "MLP sigmoid", "MLP tanh"]
    models = [m for m in order if any(r["model"] == m for r in rows)]
    models += sorted({r["model"] for r in rows} - set(models))
    cfg = runs[0].cfg
    sizes = {r["steps"] for r in rows}
    n_seeds = len({r["seed"] for r in rows})
    lines = [
        f"Test accuracy (%) on {round(cfg.dataset.test_fraction * cfg.dataset.n_samples)} test "
        f"signals, Adam lr {cfg.optimizer.lr:g}, batch {cfg.trainer.batch_size}, "
        f"{', '.join(str(s) for s in sorted(sizes))} steps; mean ± std over {n_seeds} seeds "
        "(each seed generates its own data set: the paper's is one draw).",
        "",
        "| model | ffn: test accuracy | ffn: train accuracy | paper: test accuracy | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    texts = {}
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        test = [r["test_accuracy"] for r in mine]
        texts[m] = mean_std(test, "{:.1f}", 100)
        lines.append(
            f"| {m} | {mean_std(test, '{:.1f}', 100)} | "
            f"{mean_std([r['train_accuracy'] for r in mine], '{:.1f}', 100)} | "
            f"{PAPER.get(m, '—')} | {len(mine)} |"
        )
    lines += ["", f"The sweep: {len(runs)} runs in {sweep_minutes(sweep):.1f} min of wall time."]
    block = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(rows, models, out / "training_curves.png")
    line = (
        f"MNIST-1D test accuracy, ffn (mean ± std over {n_seeds} seeds) against the paper: "
        + ", ".join(f"{m} {texts[m]}%" for m in models)
        + "; paper: logistic regression 32%, MLP 68% (notebooks 65%)."
    )
    write_results(out, block, line)
    analysis = {"rows": rows, "line": line}
    (sweep / "analysis.json").write_text(json.dumps(analysis, indent=1, allow_nan=True))
    print(block + "\n\n" + line)
    return analysis


def plot_curves(rows, models, path):
    """Training loss per epoch, mean over seeds (band: min to max)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in models:
        curves = [r["train_loss"] for r in rows if r["model"] == m and r["train_loss"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        values = np.array([c[:n] for c in curves])
        x = np.arange(1, n + 1)
        ax.plot(x, values.mean(0), label=m)
        ax.fill_between(x, values.min(0), values.max(0), alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (40 steps of 100 signals)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="?", type=Path, help="the sweep folder (default: latest)")
    parser.add_argument("--out", type=Path, default=HERE, help="README and figures (default: here)")
    args = parser.parse_args(argv)
    analyze(args.sweep or latest_sweep(NAME), args.out)


if __name__ == "__main__":
    main()
