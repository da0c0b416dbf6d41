"""Sweep summaries: one row a run, best first, as summary.csv, summary.md and summary.png.

`python -m ffn.report PATH` (or `ffn-report PATH`) finds every run folder under PATH, a sweep
folder or the whole outputs/ tree, and reads each from its metrics.json, or from its TensorBoard
event files where metrics.json is missing or never got past "running". The columns are the
overrides that differ between runs (a run that did not override a key shows the value its config
had), the final metrics, status, epochs and wall time. The sweep callback (ffn.sweep) writes the
same files at the end of every multirun.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ffn import run_record

EVENT_GLOB = "events.out.tfevents.*"
STATUSES = tuple(run_record.STATUSES)  # ranked in this order after the finished runs
# Scalars a run logs every epoch that are not final metrics in metrics.json.
NOT_METRICS = frozenset({"train/lr", "train/grad_norm"})
_METRIC_TAG = re.compile(r"^(train|val|test)/[^/]+$")
_MAXIMIZED = ("accuracy", "r2")


@dataclass
class RunRow:
    """One run folder as the summary sees it; metrics are floats, NaN where not finite."""

    path: Path
    name: str  # the folder relative to the summarised root ("." for the root itself)
    status: str
    stop_reason: str | None = None
    error: str | None = None
    epochs: int | None = None
    wall_time_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)  # key -> value, as typed
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option
    config: dict[str, Any] = field(default_factory=dict)  # the job's resolved config
    optimized_metric: str | None = None

    def value(self, key: str) -> str:
        """The run's value for an override key: as overridden, else its group choice or config."""
        if key in self.overrides:
            return self.overrides[key]
        if key in self.choices:
            return self.choices[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return ""
            node = node[part]
        return _format_value(node)


@dataclass
class Summary:
    """Runs ranked best first, with the columns every output shares."""

    root: Path
    runs: list[RunRow]  # best first
    swept: list[str]  # override keys whose value differs between runs
    metric: str  # the metric the ranking uses
    direction: str  # minimize | maximize
    metric_names: list[str]  # every final metric, `metric` first

    def rows(self) -> list[dict[str, Any]]:
        """One dict a run, in rank order, with the CSV's columns as keys."""
        rows = []
        for rank, run in enumerate(self.runs, start=1):
            row: dict[str, Any] = {"rank": rank, "job": run.name}
            row.update({key: run.value(key) for key in self.swept})
            row["status"] = run.status
            row.update({name: run.metrics.get(name) for name in self.metric_names})
            row["epochs"] = run.epochs
            row["wall_time_s"] = run.wall_time_s
            row["stop_reason"] = run.stop_reason
            row["error"] = run.error
            rows.append(row)
        return rows

    @property
    def failed(self) -> list[RunRow]:
        """Runs that raised, or died before recording how they ended."""
        return [run for run in self.runs if run.status in ("failed", run_record.UNRECORDED)]


# ---------------------------------------------------------------------------- reading runs


def find_run_dirs(root: Path) -> list[Path]:
    """Folders under `root` (itself included) holding a metrics.json or event files.

    Hidden folders (.hydra, .submitit) are skipped; job numbers sort as numbers.
    """
    root = Path(root)
    patterns = (run_record.METRICS_JSON, EVENT_GLOB)
    found = {p.parent for pattern in patterns for p in root.rglob(pattern)}
    visible = [
        d for d in found if not any(part.startswith(".") for part in _relative(d, root).parts)
    ]
    return sorted(visible, key=lambda d: _natural_key(str(_relative(d, root))))


def load_run(path: Path, root: Path) -> RunRow:
    """A run from its metrics.json, or its event files where that is missing or still running."""
    path = Path(path)
    record = run_record.read_record(path)  # no readable end recorded: `running`
    if record["status"] == run_record.UNRECORDED:
        from_events = read_event_files(path)
        if from_events is not None and from_events["status"] != run_record.UNRECORDED:
            record = {**from_events, "error": record.get("error")}
    hydra_dir = path / ".hydra"
    overrides = _read_yaml(hydra_dir / "overrides.yaml") or []
    hydra_cfg = (_read_yaml(hydra_dir / "hydra.yaml") or {}).get("hydra", {})
    config = _read_yaml(hydra_dir / "config.yaml") or {}
    choices = hydra_cfg.get("runtime", {}).get("choices", {}) or {}
    return RunRow(
        path=path,
        name=str(_relative(path, root)),
        status=record["status"],
        stop_reason=record.get("stop_reason"),
        error=record.get("error"),
        epochs=record.get("epochs"),
        wall_time_s=record.get("wall_time_s"),
        metrics={k: _as_float(v) for k, v in (record.get("metrics") or {}).items()},
        overrides=dict(_split_override(o) for o in overrides if isinstance(o, str)),
        choices={str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra/")},
        config=config,
        optimized_metric=config.get("optimized_metric"),
    )


def read_event_files(path: Path) -> dict[str, Any] | None:
    """A metrics.json-like record from a run's TensorBoard event files (None if there are none).

    Metrics are the last value of each train/val/test scalar; the status comes from the HParams
    session end (a failure whose last loss is not finite is `diverged`), `running` without one.
    """
    if not any(Path(path).glob(EVENT_GLOB)):
        return None
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    acc = ea.EventAccumulator(
        str(path),
        size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 1, ea.IMAGES: 1, ea.TENSORS: 1, ea.AUDIO: 1},
    )
    acc.Reload()
    metrics, epochs, times = {}, None, []
    for tag in acc.Tags()[ea.SCALARS]:
        events = acc.Scalars(tag)
        if not events:
            continue
        times += [events[0].wall_time, events[-1].wall_time]
        if tag == "train/loss":
            epochs = max(e.step for e in events)
        if _METRIC_TAG.match(tag) and tag not in NOT_METRICS:
            metrics[tag] = float(events[-1].value)
    status = "running"
    try:
        end = acc.PluginTagToContent(metadata.PLUGIN_NAME).get(metadata.SESSION_END_INFO_TAG)
    except KeyError:  # no HParams records at all
        end = None
    if end is not None:
        info = plugin_data_pb2.HParamsPluginData.FromString(end).session_end_info
        if info.status == api_pb2.STATUS_SUCCESS:
            status = "completed"
        elif info.status == api_pb2.STATUS_FAILURE:
            loss = metrics.get("train/loss", 0.0)
            status = "diverged" if not math.isfinite(loss) else "failed"
    return {
        "status": status,
        "epochs": epochs,
        "wall_time_s": round(max(times) - min(times), 3) if times else None,
        "metrics": metrics,
    }


# ---------------------------------------------------------------------------- ranking


def direction_for(metric: str) -> str:
    """`maximize` for scores (accuracy, r2), `minimize` for losses and objectives."""
    return "maximize" if metric.rsplit("/", 1)[-1] in _MAXIMIZED else "minimize"


def swept_keys(runs: Sequence[RunRow]) -> list[str]:
    """Override keys whose value differs between runs; every override key if none differs."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys]
    varying = [k for k in keys if len({run.value(k) for run in runs}) > 1]
    return varying if varying or len(runs) > 1 else keys


def rank(runs: Sequence[RunRow], metric: str, direction: str) -> list[RunRow]:
    """Completed runs with a finite metric first, best first; then the rest, in folder order."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(item: tuple[int, RunRow]) -> tuple[int, float, int]:
        index, run = item
        value = _score(run, metric)
        if value is not None:
            return (0, sign * value, index)
        tier = 1 + STATUSES.index(run.status) if run.status in STATUSES else len(STATUSES) + 1
        return (tier, 0.0, index)

    return [run for _, run in sorted(enumerate(runs), key=key)]


def summarize(root: Path | str, metric: str | None = None, direction: str | None = None) -> Summary:
    """Every run under `root`, ranked by `metric` (default: the runs' own optimized_metric)."""
    root = Path(root)
    runs = [load_run(d, root) for d in find_run_dirs(root)]
    if metric is None:
        named = Counter(run.optimized_metric for run in runs if run.optimized_metric)
        metric = named.most_common(1)[0][0] if named else "val/loss"
    direction = direction or direction_for(metric)
    names = {name for run in runs for name in run.metrics}
    order = {"val": 0, "test": 1, "train": 2}
    others = sorted(names - {metric}, key=lambda n: (order.get(n.split("/")[0], 3), n))
    return Summary(
        root=root,
        runs=rank(runs, metric, direction),
        swept=swept_keys(runs),
        metric=metric,
        direction=direction,
        metric_names=[metric, *others],
    )


# ---------------------------------------------------------------------------- writing


def write_csv(summary: Summary, path: Path) -> None:
    rows = summary.rows()
    columns = _columns(summary)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row[k]) for k in columns})


def to_markdown(summary: Summary) -> str:
    """The table people read: train/ metrics and error text left to the CSV."""
    shown = [n for n in summary.metric_names if n == summary.metric or not n.startswith("train/")]
    columns = ["rank", "job", *summary.swept, "status", *shown, "epochs", "wall_time_s", "note"]
    lines = [
        f"Runs under `{summary.root}`, best {summary.metric} ({summary.direction}) first.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if c in ("rank", "epochs") else "---" for c in columns) + "|",
    ]
    for row in summary.rows():
        note = row["error"] or row["stop_reason"] or ""
        row["note"] = note.splitlines()[0][:80] if note else ""
        cells = [_md_cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_plot(summary: Summary, path: Path) -> None:
    """The ranking metric against each swept key; runs without a finite value as red x on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    keys = summary.swept or ["job"]
    cols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys, strict=False):
        labels = [run.name if key == "job" else run.value(key) for run in summary.runs]
        numbers = [_as_number(v) for v in labels]
        numeric = key != "job" and all(n is not None for n in numbers)
        if numeric:
            xs = [float(n) for n in numbers]
            positive = [x for x in xs if x > 0]
            if len(positive) == len(xs) and max(xs) / min(xs) >= 100:
                ax.set_xscale("log")
        else:
            categories = sorted(set(labels), key=_natural_key)
            xs = [float(categories.index(v)) for v in labels]
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        values = [_score(run, summary.metric) for run in summary.runs]
        ok = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        bad = [x for x, v in zip(xs, values, strict=True) if v is None]
        if ok:
            ax.plot(*zip(*ok, strict=True), "o", color="tab:blue", alpha=0.7, label="finished")
        if bad:
            top = blended_transform_factory(ax.transData, ax.transAxes)
            ax.plot(bad, [0.97] * len(bad), "x", color="tab:red", transform=top, clip_on=False)
            ax.plot([], [], "x", color="tab:red", label="diverged / failed")
        ax.set_xlabel(key)
        ax.set_ylabel(summary.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{summary.metric} ({summary.direction})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    root: Path | str,
    out: Path | str | None = None,
    metric: str | None = None,
    direction: str | None = None,
    plot: bool = True,
) -> Summary:
    """summary.csv, summary.md (and summary.png) for the runs under `root`, written into `out`."""
    summary = summarize(root, metric, direction)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(summary, out / "summary.csv")
    (out / "summary.md").write_text(to_markdown(summary))
    if plot and summary.runs:
        save_plot(summary, out / "summary.png")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ffn-report",
        description="Summarise the runs under PATH (a sweep folder or outputs/): "
        "summary.csv, summary.md and summary.png, best first.",
    )
    parser.add_argument("path", type=Path, help="a sweep folder, or a tree of them")
    parser.add_argument(
        "--metric", help="rank by this metric (default: the runs' optimized_metric)"
    )
    parser.add_argument("--direction", choices=("minimize", "maximize"))
    parser.add_argument("--out", type=Path, help="where to write (default: PATH)")
    parser.add_argument("--no-plot", action="store_true", help="skip summary.png")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        parser.error(f"not a folder: {args.path}")
    summary = write_report(args.path, args.out, args.metric, args.direction, not args.no_plot)
    if not summary.runs:
        print(f"ffn-report: no runs under {args.path}", file=sys.stderr)
        return 1
    print(to_markdown(summary), end="")
    written = ["summary.csv", "summary.md"] + ([] if args.no_plot else ["summary.png"])
    print(f"written to {args.out or args.path}: {', '.join(written)}")
    return 0


# ---------------------------------------------------------------------------- helpers


def _columns(summary: Summary) -> list[str]:
    return [
        "rank",
        "job",
        *summary.swept,
        "status",
        *summary.metric_names,
        "epochs",
        "wall_time_s",
        "stop_reason",
        "error",
    ]


def _score(run: RunRow, metric: str) -> float | None:
    """The run's `metric` if it completed with a finite one, else None."""
    value = run.metrics.get(metric, math.nan)
    return value if run.status == "completed" and math.isfinite(value) else None


def _relative(path: Path, root: Path) -> Path:
    return Path(path).resolve().relative_to(Path(root).resolve())


def _natural_key(text: str) -> list[Any]:
    """'job/10' after 'job/9'."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


def _split_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def _read_yaml(path: Path) -> Any:
    try:
        with open(path) as f:
            return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return None


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _as_number(text: str) -> float | None:
    if text.lower() in ("true", "false", "nan", "inf", "-inf", ""):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else str(value)
    return value


def _md_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


if __name__ == "__main__":
    sys.exit(main())
