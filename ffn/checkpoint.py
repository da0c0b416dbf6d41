"""Checkpoints: everything a run needs to continue bitwise as if it had never stopped.

Written atomically (a temporary file, then a rename), loaded with ``weights_only=True``: a
checkpoint is data, never code, so RNG states are stored as tensors and lists, not pickles.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffn.errors import ConfigError

CHECKPOINT = Path("checkpoints") / "last.pt"
FORMAT = "ffn-checkpoint-1"
REQUIRED_KEYS = {"config", "model", "optimizer", "schedule", "loop", "rng", "order_gen"}


def rng_states() -> dict[str, Any]:
    """Python's, numpy's, torch's and (if any) CUDA's global generators, as plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` to run_dir/checkpoints/last.pt through a temporary file and a rename."""
    path = run_dir / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    with open(tmp, "rb") as f:  # on disk before the rename makes it the checkpoint
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(run_dir: Path, key: str = "trainer.resume") -> dict[str, Any]:
    """Read a checkpoint back as data; anything else is a ConfigError naming the file."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ConfigError(key, str(run_dir), f"a run folder holding {CHECKPOINT}")
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
