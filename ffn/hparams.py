"""HParams session records written into a run's own event file.

Only the session start (hyperparameters) and end (status) records: no experiment record, so the
HParams dashboard infers its columns from every run under the logdir, and sweeps that varied
different keys still line up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from ffn.run_record import STATUSES

HParamValue = bool | int | float | str

# ffn's run statuses -> the dashboard's session status (the table is ffn.run_record's).
_SESSION_STATUS = {name: getattr(api_pb2, hp) for name, (_, hp) in STATUSES.items()}


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    content = SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()
    )
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
    data = plugin_data_pb2.HParamsPluginData(
        session_start_info=info, version=metadata.PLUGIN_DATA_VERSION
    )
    return _summary(metadata.SESSION_START_INFO_TAG, data)


def session_end_summary(status: str) -> Summary:
    """The run's end, with the dashboard status matching ffn's `status`."""
    info = plugin_data_pb2.SessionEndInfo(
        status=_SESSION_STATUS.get(status, api_pb2.STATUS_UNKNOWN), end_time_secs=time.time()
    )
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=info, version=metadata.PLUGIN_DATA_VERSION
    )
    return _summary(metadata.SESSION_END_INFO_TAG, data)


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
