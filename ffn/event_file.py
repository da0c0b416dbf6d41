"""TensorBoard event files, written as torch's SummaryWriter writes them, in the calling thread.

An event file is a sequence of records (TFRecord: the length, its masked CRC-32C, the
serialized `Event`, its masked CRC-32C), starting with an `Event` that names the format. torch's
SummaryWriter writes exactly that through TensorBoard's EventFileWriter, whose import pulls in
TensorBoard's TensorFlow stub (fsspec, absl, the graph protos: ~0.1 s of every run), and whose
writer thread checksums every record in pure Python while holding the GIL (0.25 us a byte: a
histogram record costs more than the step it follows). Here a record is checksummed by Google's
CRC-32C in C (`google-crc32c`, 0.1 us a record) or, where its C build is missing, by numpy
(`crc32c`, 7-20x faster than TensorBoard's) and goes to the file in one unbuffered write (a few
microseconds): on disk at once, for a TensorBoard watching the run and for a resume after a
SIGKILL. The same records, apart from wall times and the writer's name in the first
(tests/test_event_file.py reads both back with TensorBoard's own reader).
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event, SessionLog, SourceMetadata
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

FILE_VERSION = "brain.Event:2"  # the first event of every event file names the format
WRITER = "ffn.event_file"  # ... and the writer (TensorBoard's: its event_file_writer module)
_UIDS = itertools.count()  # SummaryWriter numbers its files per process too

# --------------------------------------------------------------------------- CRC-32C

try:  # the CRC instructions of the CPU, through Google's C library (wheels for most platforms)
    import google_crc32c

    # (without its C build google_crc32c falls back to pure Python: numpy's is faster then)
    _C_CRC32C = google_crc32c.value if google_crc32c.implementation == "c" else None
except ImportError:
    _C_CRC32C = None

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), bit-reflected, as TFRecord uses it
_BLOCK = 64  # bytes folded together by numpy; the rest of a record byte by byte


def _byte_table() -> np.ndarray:
    """table[b]: the CRC state after feeding byte b to state 0 (the classic byte table)."""
    table = np.zeros(256, np.uint32)
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        table[b] = c
    return table


def _advance(byte: np.ndarray, state: np.ndarray, zero_bytes: int) -> np.ndarray:
    """CRC states fed `zero_bytes` zero bytes (the CRC is linear: this is how bytes move)."""
    for _ in range(zero_bytes):
        state = byte[state & 0xFF] ^ (state >> 8)
    return state


@functools.cache
def _tables() -> tuple[list[int], np.ndarray, np.ndarray, list[list[int]]]:
    """numpy's tables, built at the first record that needs them (7 ms of an import otherwise):
    the byte table, [k * 256 + b] what byte b at position k of a block adds to the block's CRC
    from 0, the positions' offsets, and [j][b] byte j (value b) of the running state carried
    over a block of bytes."""
    byte = _byte_table()
    positions = [byte]  # the last position: one table step
    for _ in range(_BLOCK - 1):
        positions.append(_advance(byte, positions[-1], 1))  # one position earlier: one more step
    carry = [
        _advance(byte, np.arange(256, dtype=np.uint32) << np.uint32(8 * j), _BLOCK).tolist()
        for j in range(4)
    ]
    offsets = np.arange(_BLOCK, dtype=np.intp) * 256
    return byte.tolist(), np.concatenate(positions[::-1]), offsets, carry


def crc32c(data: bytes) -> int:
    """CRC-32C of `data`: in C where google-crc32c's C build is installed, else `numpy_crc32c`."""
    if _C_CRC32C is not None:
        return _C_CRC32C(data)
    return numpy_crc32c(data)


def numpy_crc32c(data: bytes) -> int:
    """CRC-32C of `data`: each 64-byte block's share computed at once (a table per position),
    then the blocks chained through the running state, 4 lookups a block."""
    byte, positions, offsets, (c0, c1, c2, c3) = _tables()
    crc = 0xFFFFFFFF
    whole = len(data) // _BLOCK * _BLOCK if len(data) >= 2 * _BLOCK else 0
    if whole:
        blocks = np.frombuffer(data, np.uint8, whole).reshape(-1, _BLOCK)
        shares = np.bitwise_xor.reduce(positions[offsets + blocks], axis=1).tolist()
        for share in shares:
            crc = c0[crc & 0xFF] ^ c1[(crc >> 8) & 0xFF] ^ c2[(crc >> 16) & 0xFF] ^ c3[crc >> 24]
            crc ^= share
    for b in data[whole:]:
        crc = byte[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotated right by 15 bits, plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC (little-endian)."""
    header = struct.pack("<Q", len(data))
    header_crc, data_crc = masked_crc32c(header), masked_crc32c(data)
    return b"".join((header, struct.pack("<I", header_crc), data, struct.pack("<I", data_crc)))


# --------------------------------------------------------------------------- scalar events


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint; a negative int64 as its 64-bit two's complement."""
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@functools.lru_cache(maxsize=4096)
def _value_prefix(tag: str) -> bytes:
    """A Summary's `value` entry up to its float: field 1 (a Summary.Value, its length), in it
    field 1 (tag: length, UTF-8) and the key of field 2 (simple_value, a fixed32)."""
    name = tag.encode("utf-8")
    body = b"\x0a" + _varint(len(name)) + name + b"\x15"
    return b"\x0a" + _varint(len(body) + 4) + body


@functools.lru_cache(maxsize=256)
def _summary_layout(tags: tuple[str, ...]) -> tuple[struct.Struct, tuple[bytes, ...], bytes]:
    """A Summary of these tags' simple values: its struct (each value's prefix, then its
    float32), the prefixes, and the Event's field 5 key with the Summary's length."""
    prefixes = tuple(_value_prefix(tag) for tag in tags)
    layout = struct.Struct("<" + "".join(f"{len(prefix)}sf" for prefix in prefixes))
    return layout, prefixes, b"\x2a" + _varint(layout.size)


def scalar_event(values: Sequence[tuple[str, float]], step: int, wall_time: float) -> bytes:
    """Event(wall_time=..., step=..., summary=Summary(value=[Summary.Value(tag, simple_value)
    ...])).SerializeToString(), byte for byte, written out directly: fields in number order,
    Event's proto3 step and wall_time left out when zero, each float rounded to float32 as
    protobuf rounds it (overflow to inf, NaN kept). tests/test_event_file.py compares it with
    protobuf's serializer for every kind of tag, value and step."""
    layout, prefixes, summary_key = _summary_layout(tuple([tag for tag, _ in values]))
    fields: list[bytes | float] = []
    for prefix, (_, value) in zip(prefixes, values, strict=True):
        fields += (prefix, value)
    try:  # struct rounds to float32 as numpy and protobuf do (one pack: 2.5 us for 15, not 7)
        summary = layout.pack(*fields)
    except OverflowError:  # beyond float32, which struct refuses: inf, as protobuf stores it
        with np.errstate(over="ignore"):
            floats = np.array([v for _, v in values], np.float64).astype(np.float32).tobytes()
        summary = b"".join(p + floats[4 * i : 4 * i + 4] for i, p in enumerate(prefixes))
    time_bits = struct.pack("<d", wall_time)
    head = b"\x09" + time_bits if time_bits != bytes(8) else b""  # field 1, double
    if step:
        head += b"\x10" + _varint(step)  # field 2, int64
    return head + summary_key + summary  # field 5, the Summary


# --------------------------------------------------------------------------- the file


def text_summary(tag: str, text: str) -> Summary:
    """What SummaryWriter.add_text records (torch.utils.tensorboard.summary.text)."""
    content = TextPluginData(version=0).SerializeToString()
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name="text", content=content)
    )
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[text.encode("utf_8")],
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
    )
    value = Summary.Value(tag=tag + "/text_summary", metadata=metadata, tensor=tensor)
    return Summary(value=[value])


class EventFile:
    """A new event file in `log_dir`, named as SummaryWriter names it; `purge_step` as its:
    TensorBoard then hides the events of earlier sessions from that step on (a resume)."""

    def __init__(self, log_dir: Path | str, purge_step: int | None = None) -> None:
        os.makedirs(log_dir, exist_ok=True)
        host, pid = socket.gethostname(), os.getpid()
        name = f"events.out.tfevents.{int(time.time()):010d}.{host}.{pid}.{next(_UIDS)}"
        self.path = Path(log_dir) / name
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115  # open until close()
        first = Event(wall_time=time.time(), file_version=FILE_VERSION)
        first.source_metadata.CopyFrom(SourceMetadata(writer=WRITER))
        self._write(first)
        if purge_step is not None:
            self.add_event(Event(step=purge_step, file_version=FILE_VERSION))
            self.add_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def add_summary(self, summary: Summary, step: int | None = None) -> None:
        """An event holding `summary` at `step` (0 when None, as SummaryWriter writes it)."""
        self.add_event(Event(summary=summary), step)

    def add_event(self, event: Event, step: int | None = None) -> None:
        event.wall_time = time.time()
        if step is not None:
            event.step = int(step)
        self._write(event)

    def add_scalars(self, values: Sequence[tuple[str, float]], step: int) -> None:
        """An event holding one simple_value a tag, at `step`: `add_summary`'s record for
        Summary(value=[Summary.Value(tag=..., simple_value=...), ...]), encoded by
        `scalar_event` (the same bytes in a fifth of the time: an epoch's 20 scalars)."""
        self._write_bytes(scalar_event(values, step, time.time()))

    def _write(self, event: Event) -> None:
        self._write_bytes(event.SerializeToString())

    def _write_bytes(self, event: bytes) -> None:
        data = memoryview(record(event))
        while data:  # unbuffered: one write(2), unless the disk takes less (then ENOSPC next)
            data = data[self._file.write(data) :]

    def close(self) -> None:
        self._file.close()
