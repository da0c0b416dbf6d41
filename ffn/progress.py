"""A run's clocks and its progress bar: where the time goes, and what a user watches meanwhile."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

# metrics.json `timing`, in the order a run goes through them (seconds, this session only)
TIMING_PHASES = {
    "imports": "process start to this run: interpreter, imports, Hydra (0 in a sweep's later jobs)",
    "validate": "checking the config before anything runs (it builds the optimizer once)",
    "data": "loading, splitting and scaling the dataset (0 when a sweep reuses it)",
    "build": "model, penalty, optimizer and schedule",
    "loop": "the training loop, all of it: steps, evaluation, logging and checkpoints",
    "steps": "the minibatch steps alone",
    "evaluation": "per-epoch evaluation of train and val, penalty, gradient and layer norms",
    "logging": "writing to TensorBoard: scalars, histograms, config text, HParams, flushing",
    "checkpoints": "writing checkpoints",
    "final_evaluation": "the final metrics on every split",
    "figures": "the end figures: waiting for the figure worker to draw them, writing them",
}


def run_timing(clock: dict[str, float], logger: dict[str, float]) -> dict[str, float]:
    """`{phase}_s` for every phase of TIMING_PHASES, 0.0 for those this run did not go through."""
    seconds = {**clock, **logger}
    return {f"{phase}_s": seconds.get(phase, 0.0) for phase in TIMING_PHASES}


class PhaseClock:
    """Wall seconds per named phase: `with clock("data"): ...` adds the block's time to "data"."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


class SessionClock:
    """The run's wall time over all its sessions: `bank()` adds what passed since the last call."""

    def __init__(self) -> None:
        self.last = time.time()

    def bank(self) -> float:
        """Seconds since the previous bank() (or since this clock was made)."""
        now = time.time()
        elapsed, self.last = now - self.last, now
        return elapsed


class EpochBar:
    """A tqdm bar over epochs, on a terminal only, showing the last train loss and val score."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc="epochs", leave=False)

    def update(self, host: Mapping[str, float] | None, score: str) -> None:
        """One more epoch; host: its scalars (None for an epoch that was not evaluated)."""
        if self.bar is None:
            return
        self.bar.update(1)
        if host is not None:
            postfix = {"loss": f"{host['train/loss']:.4g}"}
            if f"val/{score}" in host:
                postfix["val"] = f"{host[f'val/{score}']:.4f}"
            self.bar.set_postfix(postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_FIRST_RUN_OF_PROCESS = True


def startup_seconds() -> float:
    """Seconds from this process's start to now, the first time it is asked; 0.0 afterwards.

    The first run of a process pays the interpreter, the imports and Hydra's composition; a
    sweep's later jobs in the same process pay none of it again.
    """
    global _FIRST_RUN_OF_PROCESS
    if not _FIRST_RUN_OF_PROCESS:
        return 0.0
    _FIRST_RUN_OF_PROCESS = False
    age = process_age()
    return 0.0 if age is None else age


def process_age() -> float | None:
    """Seconds since this process started (to 1/CLK_TCK s), from /proc; None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None
