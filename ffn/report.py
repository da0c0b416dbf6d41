"""Sweep summaries: one row a run, best first, as summary.csv, summary.md and summary.png.

`python -m ffn.report PATH` (or `ffn-report PATH`) finds every run folder under PATH, a sweep
folder or the whole outputs/ tree, and reads each from its metrics.json, or from its TensorBoard
event files where metrics.json is missing or never got past "running". The columns are the
overrides that differ between runs (a run that did not override a key shows the value its config
had), the final metrics, status, epochs and wall time. The sweep callback (ffn.sweep) writes the
same files at the end of every multirun.

Classification and regression runs are ranked in separate tables (their losses do not compare),
each by its task's metric unless the runs name another (`DEFAULT_METRIC`). When trainer.seed is
swept, summary_seeds.csv holds one row a configuration: mean, std (ddof=1) and n of each metric.
Warnings name swept keys that changed nothing and jobs that repeat another.
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

EVENT_GLOB = run_record.EVENT_GLOB
STATUSES = tuple(run_record.STATUSES)  # ranked in this order after the finished runs
# Scalars a run logs every epoch that are not final metrics in metrics.json.
NOT_METRICS = frozenset({"train/lr", "train/grad_norm"})
_METRIC_TAG = re.compile(r"^(train|val|test)/[^/]+$")
_MAXIMIZED = ("accuracy", "r2")
# The ranking metric of each task when the runs name none but the config's default
# (val/loss ranks classifiers by confidence, not by how many they get right).
DEFAULT_METRIC = {"classification": "val/accuracy", "regression": "val/loss", "unknown": "val/loss"}
CONFIG_DEFAULT_METRIC = "val/loss"  # conf/config.yaml's optimized_metric
SEED_KEY = "trainer.seed"


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

    @property
    def task(self) -> str:
        """classification, regression, or unknown (a run that never got to measure anything)."""
        scores = {name.rsplit("/", 1)[-1] for name in self.metrics}
        if "accuracy" in scores:
            return "classification"
        return "regression" if "r2" in scores else "unknown"

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
class ConfigRow:
    """A configuration over its seeds: mean, std (ddof=1, NaN for one run), n of each metric."""

    values: dict[str, str]  # swept key (but the seed) -> value
    runs: list[RunRow]
    stats: dict[str, tuple[float, float, int]]  # metric -> (mean, std, n)


@dataclass
class Summary:
    """Runs ranked best first, with the columns every output shares."""

    root: Path
    runs: list[RunRow]  # best first
    swept: list[str]  # override keys whose value differs between runs
    metric: str  # the metric the ranking uses
    direction: str  # minimize | maximize
    metric_names: list[str]  # every final metric, `metric` first
    task: str = "unknown"
    warnings: list[str] = field(default_factory=list)
    configs: list[ConfigRow] = field(default_factory=list)  # over seeds, when trainer.seed is swept

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
    found = {p.parent for p in root.rglob(run_record.METRICS_JSON)}
    for path in root.rglob(EVENT_GLOB):  # run/metrics/events...: the run is run/
        folder = path.parent
        in_run = folder.name in run_record.EVENT_FOLDERS and folder != root
        found.add(folder.parent if in_run else folder)
    visible = [
        d for d in found if not any(part.startswith(".") for part in _relative(d, root).parts)
    ]
    return sorted(visible, key=lambda d: natural_key(str(_relative(d, root))))


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
    path = Path(path)
    # metrics/ (the HParams session) first, then diagnostics/ (train/penalty); older runs: path
    folders = [path / name for name in run_record.EVENT_FOLDERS] + [path]
    accumulators = [_scalars_of(folder) for folder in folders if any(folder.glob(EVENT_GLOB))]
    if not accumulators:
        return None
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    metrics, epochs, times = {}, None, []
    for acc in accumulators:
        for tag in acc.Tags()["scalars"]:
            events = acc.Scalars(tag)
            if not events:
                continue
            times += [events[0].wall_time, events[-1].wall_time]
            if tag == "train/loss":
                epochs = max(e.step for e in events)
            if _METRIC_TAG.match(tag) and tag not in NOT_METRICS:
                metrics[tag] = float(events[-1].value)
    acc = accumulators[0]
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


def _scalars_of(folder: Path) -> Any:
    """TensorBoard's reader over one event folder: every scalar, one of everything else."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(
        str(folder),
        size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 1, ea.IMAGES: 1, ea.TENSORS: 1, ea.AUDIO: 1},
    )
    acc.Reload()
    return acc


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
    # Ties in a score (a small val split has few distinct accuracies) go to the lower loss.
    split, _, name = metric.rpartition("/")
    tiebreak = f"{split}/loss" if name in _MAXIMIZED else None

    def key(item: tuple[int, RunRow]) -> tuple[int, float, float, int]:
        index, run = item
        value = final_score(run, metric)
        if value is not None:
            loss = final_score(run, tiebreak) if tiebreak else None
            return (0, sign * value, loss if loss is not None else math.inf, index)
        tier = 1 + STATUSES.index(run.status) if run.status in STATUSES else len(STATUSES) + 1
        return (tier, 0.0, 0.0, index)

    return [run for _, run in sorted(enumerate(runs), key=key)]


def default_metric(runs: Sequence[RunRow], task: str) -> str:
    """The runs' optimized_metric if they chose one, else the task's (DEFAULT_METRIC)."""
    named = Counter(run.optimized_metric for run in runs if run.optimized_metric)
    chosen = named.most_common(1)[0][0] if named else CONFIG_DEFAULT_METRIC
    return chosen if chosen != CONFIG_DEFAULT_METRIC else DEFAULT_METRIC[task]


def summarize_runs(
    root: Path, runs: Sequence[RunRow], metric: str | None = None, direction: str | None = None
) -> Summary:
    """`runs` (one task) ranked by `metric`, with their seed table and warnings."""
    task = next((run.task for run in runs if run.task != "unknown"), "unknown")
    metric = metric or default_metric(runs, task)
    direction = direction or direction_for(metric)
    names = {name for run in runs for name in run.metrics}
    order = {"val": 0, "test": 1, "train": 2}
    others = sorted(names - {metric}, key=lambda n: (order.get(n.split("/")[0], 3), n))
    swept = swept_keys(runs)
    ranked = rank(runs, metric, direction)
    metric_names = [metric, *others]
    return Summary(
        root=root,
        runs=ranked,
        swept=swept,
        metric=metric,
        direction=direction,
        metric_names=metric_names,
        task=task,
        warnings=sweep_warnings(ranked, swept),
        configs=over_seeds(ranked, swept, metric_names, metric, direction),
    )


def summarize_all(
    root: Path | str, metric: str | None = None, direction: str | None = None
) -> list[Summary]:
    """Every run under `root`, one Summary a task (classification and regression apart)."""
    root = Path(root)
    runs = [load_run(d, root) for d in find_run_dirs(root)]
    tasks = list(dict.fromkeys(run.task for run in runs if run.task != "unknown")) or ["unknown"]
    by_task: dict[str, list[RunRow]] = {task: [] for task in tasks}
    for run in runs:  # runs that measured nothing (failed early) go with the first task
        by_task[run.task if run.task in by_task else tasks[0]].append(run)
    return [summarize_runs(root, group, metric, direction) for group in by_task.values() if group]


def summarize(root: Path | str, metric: str | None = None, direction: str | None = None) -> Summary:
    """Every run under `root` in one Summary: the first task's, when there are several."""
    return summarize_all(root, metric, direction)[0]


def over_seeds(
    runs: Sequence[RunRow],
    swept: Sequence[str],
    metric_names: Sequence[str],
    metric: str,
    direction: str,
) -> list[ConfigRow]:
    """One row a configuration when trainer.seed is swept, best mean first; else none."""
    if SEED_KEY not in swept:
        return []
    keys = [k for k in swept if k != SEED_KEY]
    groups: dict[tuple[str, ...], list[RunRow]] = {}
    for run in runs:
        groups.setdefault(tuple(run.value(k) for k in keys), []).append(run)
    rows = []
    for values, members in groups.items():
        stats = {}
        for name in metric_names:
            xs = [v for v in (final_score(run, name) for run in members) if v is not None]
            mean = math.fsum(xs) / len(xs) if xs else math.nan
            var = (
                math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else math.nan
            )
            stats[name] = (mean, math.sqrt(var), len(xs))
        rows.append(ConfigRow(dict(zip(keys, values, strict=True)), members, stats))
    sign = -1.0 if direction == "maximize" else 1.0

    def key(row: ConfigRow) -> tuple[bool, float]:
        mean = row.stats[metric][0]
        return (math.isnan(mean), sign * mean if not math.isnan(mean) else 0.0)

    return sorted(rows, key=key)


def sweep_warnings(runs: Sequence[RunRow], swept: Sequence[str]) -> list[str]:
    """Swept keys that changed nothing (same metrics bit for bit), and jobs that repeat another."""
    warnings = []
    # completed runs only: every diverged run "ends alike" (NaN), whatever its settings
    finished = [run for run in runs if run.status == "completed" and run.metrics]
    for key in swept:
        others = [k for k in swept if k != key]
        groups: dict[tuple[str, ...], list[RunRow]] = {}
        for run in finished:
            groups.setdefault(tuple(run.value(k) for k in others), []).append(run)
        idle = [g for g in groups.values() if len({run.value(key) for run in g}) > 1]
        idle = [g for g in idle if len({_fingerprint(run) for run in g}) == 1]
        if not idle:
            continue
        members = [run for g in idle for run in g]
        where = [
            f"{k}={members[0].value(k)}" for k in others if len({r.value(k) for r in members}) == 1
        ]
        repeats = sum(len(g) - 1 for g in idle)
        warnings.append(
            f"{key} changed nothing{' where ' + ', '.join(where) if where else ''}: "
            f"{repeats} job(s) repeat another with the same results"
        )
    seen: dict[tuple[str, ...], RunRow] = {}
    for run in runs:
        values = tuple(run.value(k) for k in swept)
        if values in seen:
            warnings.append(f"job {run.name} is the same configuration as job {seen[values].name}")
        else:
            seen[values] = run
    return warnings


def _fingerprint(run: RunRow) -> tuple[tuple[str, float], ...]:
    """The run's results, NaN-safe, for 'the same results' (CPU runs are bitwise reproducible)."""
    return tuple(sorted((k, v if math.isfinite(v) else math.inf) for k, v in run.metrics.items()))


# ---------------------------------------------------------------------------- writing


def write_csv(summaries: Sequence[Summary], path: Path) -> None:
    """Every run, one table a task one after the other; a `task` column when there are two."""
    columns = list(dict.fromkeys(c for summary in summaries for c in _columns(summary)))
    if len(summaries) > 1:
        columns.insert(2, "task")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for summary in summaries:
            for row in summary.rows():
                row["task"] = summary.task
                writer.writerow({k: _csv_cell(row.get(k)) for k in columns})


def write_seeds_csv(summaries: Sequence[Summary], path: Path) -> bool:
    """summary_seeds.csv: one row a configuration; False (nothing written) without a seed sweep."""
    tables = [s for s in summaries if s.configs]
    if not tables:
        return False
    columns: list[str] = []
    rows = []
    for summary in tables:
        keys = [k for k in summary.swept if k != SEED_KEY]
        for rank_, config in enumerate(summary.configs, start=1):
            row: dict[str, Any] = {"rank": rank_, "task": summary.task, **config.values}
            row["runs"] = len(config.runs)
            for name, (mean, std, n) in config.stats.items():
                row.update({f"{name} mean": mean, f"{name} std": std, f"{name} n": n})
            rows.append(row)
            columns = list(dict.fromkeys([*columns, "rank", "task", *keys, "runs", *row]))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return True


def to_markdown(summaries: Summary | Sequence[Summary]) -> str:
    """The tables people read: one a task, columns that vary, floats to 4 digits, warnings."""
    if isinstance(summaries, Summary):
        summaries = [summaries]
    return "\n".join(_markdown_one(summary) for summary in summaries)


def _markdown_one(summary: Summary) -> str:
    shown = [n for n in summary.metric_names if n == summary.metric or not n.startswith("train/")]
    columns = ["rank", "job", *summary.swept, "status", *shown, "epochs", "wall_time_s", "note"]
    rows = summary.rows()
    for row in rows:
        note = row["error"] or row["stop_reason"] or ""
        row["note"] = note.splitlines()[0][:80] if note else ""
    kept = {"rank", "job", summary.metric, *summary.swept}
    constant = [
        c for c in columns if c not in kept and len({_md_cell(r.get(c)) for r in rows}) == 1
    ]
    if len(rows) < 2:
        constant = []
    columns = [c for c in columns if c not in constant]
    task = "" if summary.task == "unknown" else f"{summary.task} "
    lines = [
        f"{len(rows)} {task}runs under `{summary.root}`, best {summary.metric} "
        f"({summary.direction}) first."
    ]
    same = [f"{c}={_md_cell(rows[0].get(c))}" for c in constant if _md_cell(rows[0].get(c))]
    if same:
        lines.append(f"The same in every run: {', '.join(same)}.")
    lines += ["", *_table(columns, rows)]
    if summary.configs:
        keys = [k for k in summary.swept if k != SEED_KEY]
        lines += ["", f"Over seeds ({SEED_KEY}): mean ± std (n), best mean first.", ""]
        seed_rows = []
        for rank_, config in enumerate(summary.configs, start=1):
            row: dict[str, Any] = {"rank": rank_, **config.values, "runs": len(config.runs)}
            for name in shown:
                mean, std, n = config.stats[name]
                row[name] = "" if n == 0 else f"{_md_cell(mean)} ± {std:.2g} ({n})"
            seed_rows.append(row)
        lines += _table(["rank", *keys, "runs", *shown], seed_rows)
    if summary.warnings:
        lines += ["", *(f"Warning: {w}." for w in summary.warnings)]
    return "\n".join(lines) + "\n"


def _table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[str]:
    right = ("rank", "epochs", "runs")
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if c in right else "---" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def save_plot(summary: Summary, path: Path) -> None:
    from ffn import figure_worker

    # matplotlib only when a plot is asked for; in a sweep that drew figures, the figure worker
    # has it imported already (else this process draws)
    figure_worker.save_summary_plot(summary, path)


def plot_names(summaries: Sequence[Summary]) -> list[str]:
    """summary.png, or summary_TASK.png each when there are several tasks."""
    if len(summaries) == 1:
        return ["summary.png"]
    return [f"summary_{summary.task}.png" for summary in summaries]


def write_report(
    root: Path | str,
    out: Path | str | None = None,
    metric: str | None = None,
    direction: str | None = None,
    plot: bool = True,
) -> list[Summary]:
    """summary.csv, summary.md, summary.png (summary_seeds.csv) for `root`'s runs, into `out`."""
    summaries = summarize_all(root, metric, direction)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(summaries, out / "summary.csv")
    write_seeds_csv(summaries, out / "summary_seeds.csv")
    (out / "summary.md").write_text(to_markdown(summaries))
    if plot:
        for summary, name in zip(summaries, plot_names(summaries), strict=True):
            if summary.runs:
                save_plot(summary, out / name)
    return summaries


def written_files(summaries: Sequence[Summary], plot: bool) -> list[str]:
    names = ["summary.csv", "summary.md"]
    names += ["summary_seeds.csv"] if any(s.configs for s in summaries) else []
    return names + (plot_names(summaries) if plot else [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ffn-report",
        description="Summarise the runs under PATH (a sweep folder or outputs/): "
        "summary.csv, summary.md and summary.png, best first, one table a task.",
    )
    parser.add_argument("path", type=Path, help="a sweep folder, or a tree of them")
    parser.add_argument(
        "--metric",
        help="rank by this metric (default: the runs' optimized_metric if they set one, else "
        "val/accuracy for classification and val/loss for regression)",
    )
    parser.add_argument("--direction", choices=("minimize", "maximize"))
    parser.add_argument("--out", type=Path, help="where to write (default: PATH)")
    parser.add_argument("--no-plot", action="store_true", help="skip summary.png")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        parser.error(f"not a folder: {args.path}")
    if args.metric:  # a typo must not rank every run as "no value"
        known = sorted({name for run in summarize(args.path).runs for name in run.metrics})
        if known and args.metric not in known:
            allowed = "a metric the runs have: " + ", ".join(known)
            print(
                f"ffn-report: error: invalid value for --metric: {args.metric!r} "
                f"(allowed: {allowed})",
                file=sys.stderr,
            )
            return 2
    summaries = write_report(args.path, args.out, args.metric, args.direction, not args.no_plot)
    if not any(summary.runs for summary in summaries):
        print(f"ffn-report: no runs under {args.path}", file=sys.stderr)
        return 1
    print(to_markdown(summaries), end="")
    written = written_files(summaries, not args.no_plot)
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


def final_score(run: RunRow, metric: str) -> float | None:
    """The run's `metric` if it completed with a finite one, else None."""
    value = run.metrics.get(metric, math.nan)
    return value if run.status == "completed" and math.isfinite(value) else None


def _relative(path: Path, root: Path) -> Path:
    return Path(path).resolve().relative_to(Path(root).resolve())


def natural_key(text: str) -> list[Any]:
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


def as_number(text: str) -> float | None:
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
