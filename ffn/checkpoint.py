"""Checkpoints: everything a run needs to continue bitwise as if it had never stopped.

Written atomically and exclusively (ffn.run_record.write_atomic), loaded with
``weights_only=True``: a checkpoint is data, never code, so RNG states are stored as tensors and
lists, not pickles. The checkpoint before the last is kept as previous.pt: a last.pt that cannot
be read (a torn disk, a bad copy) falls back to it, with a warning, instead of losing the run.
"""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffn import run_record
from ffn.errors import ConfigError

log = logging.getLogger(__name__)

# The folder's names have their home in the torch-free run record (job.py reads them first)
CHECKPOINT, PREVIOUS = run_record.CHECKPOINT, run_record.PREVIOUS
BEST = Path("checkpoints") / "best.pt"  # early stopping: the weights that were best on val
FORMAT = "ffn-checkpoint-1"
BEST_FORMAT = "ffn-best-weights-1"
REQUIRED_KEYS = {"config", "model", "optimizer", "schedule", "loop", "rng", "order_gen"}


def rng_states() -> dict[str, Any]:
    """Python's, numpy's, torch's and (if any) CUDA's global generators, as plain data.

    Python's 625 words are one int64 tensor, not a list: torch.save pickles a list's every int
    as an object of its own (625 of a checkpoint's 1181: a digits run's save 0.81 -> 0.64 ms).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss_next = states["python"]
    if isinstance(internal, torch.Tensor):  # a list in checkpoints written before
        internal = internal.tolist()
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(run_dir: Path, payload: dict[str, Any]) -> Path:
    """`payload` into run_dir/checkpoints/last.pt; the last.pt before it becomes previous.pt.

    The new file is complete on disk before either rename, so a crash at any point leaves
    last.pt, or previous.pt alone, as a whole checkpoint.
    """
    path = run_dir / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, **payload}

    def keep_previous() -> None:
        if path.exists():
            os.replace(path, run_dir / PREVIOUS)

    # Serialised in memory first: a full disk is then an OSError naming its errno, not
    # torch's "unexpected pos" RuntimeError from inside its zip writer
    run_record.write_atomic(
        path, lambda f: f.write(_serialised(data)), before_rename=keep_previous, may_wait=True
    )
    return path


def _serialised(data: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def save_best(
    run_dir: Path, model: dict[str, Any], epoch: int, val_loss: float, config: str
) -> Path:
    """The best weights on val into checkpoints/best.pt (early stopping restores them)."""
    path = run_dir / BEST
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": BEST_FORMAT, "model": model, "epoch": epoch, "val_loss": val_loss}
    data["config"] = config
    run_record.write_atomic(path, lambda f: f.write(_serialised(data)))
    return path


def load(run_dir: Path, key: str = "trainer.resume") -> dict[str, Any]:
    """The newest readable checkpoint as data: last.pt, else previous.pt with a warning.

    Anything else is a ConfigError naming last.pt and why it cannot be used.
    """
    path = run_dir / CHECKPOINT
    previous = run_dir / PREVIOUS
    if not path.is_file() and not previous.is_file():
        raise ConfigError(key, str(run_dir), f"a run folder holding {CHECKPOINT}")
    try:
        return read(path, key)
    except ConfigError as error:
        if not previous.is_file():
            raise
        payload = read(previous, key)
        log.warning(
            "%s cannot be used (%s): resuming from %s (epoch %d)",
            path,
            error.allowed,
            previous,
            payload["loop"]["epoch"],
        )
        return payload


def read(path: Path, key: str = "trainer.resume") -> dict[str, Any]:
    """One checkpoint file, read as data only and checked for ffn's format and keys."""
    if not path.is_file():
        raise ConfigError(key, str(path), "an existing checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        reason = reason if len(reason) <= 120 else reason[:117].rsplit(" ", 1)[0] + " ..."
        raise ConfigError(key, str(path), f"a checkpoint written by ffn ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(key, str(path), f"a checkpoint written by ffn (format {FORMAT})")
    missing = sorted(REQUIRED_KEYS - payload.keys())
    if missing:
        raise ConfigError(key, str(path), f"a complete ffn checkpoint (missing {missing})")
    return payload
