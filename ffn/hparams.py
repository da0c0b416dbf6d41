"""HParams records: what a run's session holds, and the one experiment record of a dashboard.

TensorBoard's HParams plugin (backend_context.py) takes the first experiment record it finds
under the logdir for its columns; without one it takes every session's hyperparameters as columns
(marking `differs` from their values, and listing those that differ first) and every scalar tag
under a session's folder, subfolders included, as a metric. So a run writes no experiment record
(two sweeps that swept different keys would each hide the other's columns); its session holds
only the keys the user chose (`chosen_hparams`), and it sits in the run's metrics/ event folder
with the headline scalars (HEADLINE_TAGS) alone, the rest in the sibling diagnostics/
(ffn/run_logger.py). Plain `tensorboard --logdir outputs` then shows the chosen keys, those
that vary first, and the headline metrics. Its page ticks the first five of each, whatever the
data say (tf-hparams-query-pane: `Math.min(5, ...)`): with more than five varying keys the rest
start unticked, and metrics come in name order (epochs, test/..., train/..., val/...).
`ffn-board` (ffn/board.py) writes one experiment record, over exactly the runs it shows
(`experiment_summary`), for the headline metrics in reading order, val/ first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from ffn.run_record import STATUSES, event_files

HParamValue = bool | int | float | str

# tensorboard.plugins.hparams.metadata's names, written out: importing that module imports
# TensorBoard's TensorFlow stub and graph protos (0.1 s of every run, before torch's import);
# tests/test_event_file.py checks that they are its values.
PLUGIN_NAME = "hparams"
PLUGIN_DATA_VERSION = 0
EXPERIMENT_TAG = "_hparams_/experiment"
SESSION_START_INFO_TAG = "_hparams_/session_start_info"
SESSION_END_INFO_TAG = "_hparams_/session_end_info"

# ffn's run statuses -> the dashboard's session status (the table is ffn.run_record's).
_SESSION_STATUS = {name: getattr(api_pb2, hp) for name, (_, hp) in STATUSES.items()}


# Config groups whose choice is a hyperparameter (trainer has one option; hydra/* are machinery).
HPARAM_GROUPS = ("dataset", "model", "penalty", "optimizer", "schedule", "experiment")
# Keys that never are hyperparameters (how a run is started, shown or logged), even when typed.
NOT_HPARAMS = (
    "hydra.",
    "trainer.resume",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.figures",
    "trainer.histogram_every",
    "trainer.checkpoint_every",
)
# The HParams metric columns, in reading order: "{score}" is accuracy or r2, by task. Both
# tasks in one logdir make 12. train/penalty is train/objective - train/loss: a Scalars curve
# (diagnostics/), not a column; per-layer diagnostics, train/lr and train/grad_norm neither.
HEADLINE_METRICS = (
    "val/loss",
    "val/{score}",
    "test/loss",
    "test/{score}",
    "train/loss",
    "train/{score}",
    "train/objective",
    "train/sparsity",
    "epochs",
)
MAX_METRICS = 12  # more columns than a table can show side by side
SCORES = ("accuracy", "r2")
# Every headline tag of either task, in reading order: what a run logs beside its HParams
# session (ffn/run_logger.py), so that TensorBoard alone finds no other metric.
HEADLINE_TAGS = tuple(dict.fromkeys(m.format(score=s) for m in HEADLINE_METRICS for s in SCORES))


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    content = SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=data.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=content))])


def session_start_summary(hparams: Mapping[str, HParamValue]) -> Summary:
    """The run's hyperparameters: bools, numbers and strings (flatten anything else first)."""
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[name].number_value = value
        else:
            info.hparams[name].string_value = str(value)
    data = plugin_data_pb2.HParamsPluginData(session_start_info=info, version=PLUGIN_DATA_VERSION)
    return _summary(SESSION_START_INFO_TAG, data)


def session_end_summary(status: str) -> Summary:
    """The run's end, with the dashboard status matching ffn's `status`."""
    info = plugin_data_pb2.SessionEndInfo(
        status=_SESSION_STATUS.get(status, api_pb2.STATUS_UNKNOWN), end_time_secs=time.time()
    )
    data = plugin_data_pb2.HParamsPluginData(session_end_info=info, version=PLUGIN_DATA_VERSION)
    return _summary(SESSION_END_INFO_TAG, data)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, HParamValue]:
    """{"model": {"hidden": [64]}} -> {"model.hidden": "[64]"}; None values are left out.

    Left out rather than written as "null": a column must keep one type across runs, and a key
    that is a number in one run and unset in another would otherwise mix numbers and text.
    """
    flat: dict[str, HParamValue] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif value is None:
            continue
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(list(value)) if isinstance(value, (list, tuple)) else str(value)
    return flat


def chosen_hparams(
    choices: Mapping[str, str | None],
    overrides: Sequence[str],
    config: Mapping,
    experiment_keys: Iterable[str] = (),
) -> dict[str, HParamValue]:
    """The keys a user chose: group choices, then keys overridden or set by an experiment.

    `overrides` are Hydra's task overrides (`optimizer.lr=0.1`, `model=tanh`); values come from the
    resolved `config`. A key saying what its group's choice says (`dataset.name` under
    `dataset=digits`, `model.activation` under `model=relu`) is left out: one column, one meaning.
    """
    chosen: dict[str, HParamValue] = {
        group: str(choices[group]) for group in HPARAM_GROUPS if choices.get(group)
    }
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    flat = flatten(config)
    for key in [*keys, *experiment_keys]:
        if key in chosen or key in HPARAM_GROUPS or key.startswith(NOT_HPARAMS):
            continue
        group = key.split(".", 1)[0]
        for name, value in flat.items():
            if name != key and not name.startswith(key + "."):
                continue
            if group in chosen and "." in name and str(value) == chosen[group]:
                continue  # dataset.name=digits under dataset=digits
            chosen[name] = value
    return chosen


def headline_metrics(tags: Iterable[str]) -> list[str]:
    """The metric columns among `tags`, in HEADLINE_TAGS order (at most MAX_METRICS)."""
    present = set(tags)
    return [tag for tag in HEADLINE_TAGS if tag in present]


def experiment_summary(
    sessions: Iterable[Mapping[str, HParamValue]], metrics: Sequence[str]
) -> Summary:
    """One experiment record for a dashboard: the union of the sessions' keys, and `metrics`.

    `differs` marks the keys whose value varies between sessions; the dashboard ticks the first
    five columns, those that vary first.
    """
    values: dict[str, list[HParamValue]] = {}
    for hparams in sessions:
        for name, value in hparams.items():
            values.setdefault(name, []).append(value)
    infos = []
    for name, seen in sorted(values.items(), key=lambda kv: (len(set(kv[1])) < 2, kv[0])):
        info = api_pb2.HParamInfo(name=name, differs=len(set(seen)) > 1)
        if all(isinstance(v, bool) for v in seen):
            info.type = api_pb2.DATA_TYPE_BOOL
            info.domain_discrete.extend(sorted(set(seen)))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_interval.min_value = float(min(seen))
            info.domain_interval.max_value = float(max(seen))
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            info.domain_discrete.extend(sorted({str(v) for v in seen}))
        infos.append(info)
    experiment = api_pb2.Experiment(
        time_created_secs=time.time(),
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics],
    )
    data = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=PLUGIN_DATA_VERSION)
    return _summary(EXPERIMENT_TAG, data)


def read_session_hparams(run_dir: Path) -> dict[str, HParamValue] | None:
    """The hyperparameters of the run's HParams session start record (None without one)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    for path in event_files(run_dir):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag != SESSION_START_INFO_TAG:
                    continue
                content = value.metadata.plugin_data.content
                info = metadata.parse_session_start_info_plugin_data(content)
                return {name: _from_proto(v) for name, v in info.hparams.items()}
    return None


def _from_proto(value: Any) -> HParamValue:
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        return value.number_value
    return value.string_value


def experiment_keys(name: str | None, config_dirs: Iterable[Path]) -> list[str]:
    """The config keys experiment `name` sets (conf/experiment/NAME.yaml and what it extends)."""
    import yaml

    if not name:
        return []
    for folder in config_dirs:
        path = Path(folder) / "experiment" / f"{name}.yaml"
        if not path.is_file():
            continue
        tree = yaml.safe_load(path.read_text()) or {}
        keys: list[str] = []
        for entry in tree.pop("defaults", None) or []:
            if isinstance(entry, str) and entry != "_self_" and "/" not in entry:
                keys += experiment_keys(entry, [folder])  # another experiment it builds on
        tree.pop("hydra", None)
        return list(dict.fromkeys([*keys, *flatten(tree)]))
    return []
