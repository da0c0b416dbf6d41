"""ffn's event files hold the records torch's SummaryWriter writes, read back by TensorBoard."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as tensorboard_crc32c
from tensorboard.plugins.hparams import metadata

from ffn import event_file, hparams
from ffn.event_file import EventFile, crc32c, numpy_crc32c, text_summary

TENSORBOARDS = "tensorboard.summary.writer.event_file_writer"  # its first event's writer


@pytest.mark.parametrize("checksum", [crc32c, numpy_crc32c])  # C where installed; numpy's
def test_crc32c_is_tensorboards_for_every_length(checksum) -> None:
    rng = random.Random(0)
    lengths = [*range(300), 511, 512, 513, 4096, 30_001]
    for n in lengths:
        data = bytes(rng.getrandbits(8) for _ in range(n))
        assert checksum(data) == tensorboard_crc32c(data), n
    assert checksum(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_scalar_events_are_protobufs_bytes() -> None:
    rng = random.Random(0)
    specials = [0.0, -0.0, 1.0, -2.5, 1e-46, 1e-40, 3.4028235e38, 3.5e38, -1e39, 1e300]
    specials += [math.inf, -math.inf, math.nan, -math.nan, 0.1, 1 / 3, 12345678.9]
    tags = ["train/loss", "val/accuracy", "dead/layer_0", "x" * 130, "ünïcode/ταγ", ""]
    for case in range(300):
        n = rng.choice([0, 1, 2, 7, 20, 40])
        values = [
            (rng.choice(tags) + str(i), rng.choice([*specials, rng.uniform(-1e6, 1e6)]))
            for i in range(n)
        ]
        step = rng.choice([0, 1, 5, 127, 128, 100_000, 2**40, -1, -(2**40)])
        wall_time = rng.choice([0.0, 1.7e9 + rng.random(), 12.5])
        summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values])
        want = Event(wall_time=wall_time, step=step, summary=summary).SerializeToString()
        assert event_file.scalar_event(values, step, wall_time) == want, case


def _records(folder: Path) -> list:
    """Every event of the folder's one event file, wall times cleared (TensorBoard's reader,
    which checks each record's CRCs)."""
    (path,) = folder.glob("events.out.tfevents.*")
    events = list(EventFileLoader(str(path)).Load())
    for event in events:
        event.wall_time = 0
    assert events[0].source_metadata.writer in (event_file.WRITER, TENSORBOARDS)
    events[0].ClearField("source_metadata")
    return events


def _write(writer_add_summary, add_text) -> None:
    scalars = [Summary.Value(tag=f"train/m{i}", simple_value=0.5 * i) for i in range(12)]
    writer_add_summary(Summary(value=scalars), 3)
    histo = HistogramProto(min=-1, max=2, num=7, sum=3, sum_squares=9, bucket_limit=[0, 1, 2])
    histo.bucket.extend([0, 3, 4])
    writer_add_summary(Summary(value=[Summary.Value(tag="weights/layer_0", histo=histo)]), 4)
    writer_add_summary(Summary(value=[Summary.Value(tag="big", simple_value=1.0)] * 500), None)
    add_text("config", "    a: 1\n    b: [2, 3]")


@pytest.mark.parametrize("purge_step", [None, 3])
def test_the_events_are_summary_writers(tmp_path: Path, purge_step: int | None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    theirs = SummaryWriter(log_dir=str(tmp_path / "torch"), purge_step=purge_step)
    _write(theirs.file_writer.add_summary, theirs.add_text)
    theirs.close()
    ours = EventFile(tmp_path / "ffn", purge_step=purge_step)
    _write(ours.add_summary, lambda tag, text: ours.add_summary(text_summary(tag, text)))
    ours.close()
    assert _records(tmp_path / "ffn") == _records(tmp_path / "torch")
    name, torch_name = ours.path.name.split("."), next((tmp_path / "torch").iterdir()).name
    assert name[:3] == torch_name.split(".")[:3] and len(name) == len(torch_name.split("."))


def test_each_event_is_on_disk_as_soon_as_it_is_written(tmp_path: Path) -> None:
    file = EventFile(tmp_path)
    assert len(_records(tmp_path)) == 1  # the version event: a readable event file at once
    file.add_summary(Summary(value=[Summary.Value(tag="a", simple_value=1.0)]), 1)
    assert [e.step for e in _records(tmp_path)] == [0, 1]  # for TensorBoard, and a SIGKILL
    file.close()
    file.close()  # twice: nothing more


def test_hparams_names_are_tensorboards() -> None:
    for name in (
        "PLUGIN_NAME",
        "PLUGIN_DATA_VERSION",
        "EXPERIMENT_TAG",
        "SESSION_START_INFO_TAG",
        "SESSION_END_INFO_TAG",
    ):
        assert getattr(hparams, name) == getattr(metadata, name), name
