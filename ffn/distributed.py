"""One run across processes (torchrun), data parallel: the world, its shards, its reductions.

Every rank builds the same model from the same seed and draws the same permutation each epoch;
rank r takes its contiguous shard of every global minibatch (no padding). The hand-written
gradients are all-reduced in buckets, each rank's shard mean weighted by its rows, so that every
rank holds the global-batch mean gradient and steps its optimizer to the same parameters as a
single process would. Evaluation reduces sums (losses, correct answers), stopping decisions and
signals are agreed by an all-reduce, so no rank trains on or waits alone.

Two channels: the rendezvous store carries the job's control messages (rank 0's decision to
train or to refuse, each rank's readiness, the end), waited on with signals checked; the process
group (gloo on CPU, nccl on CUDA) carries the tensors. A world of one never touches either:
`World.size == 1` and the runner takes its ordinary path.
"""

from __future__ import annotations

import contextlib
import io
import math
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ffn import interrupt, launch_env
from ffn.errors import ConfigError
from ffn.interrupt import StopFlag
from ffn.launch_env import Place
from ffn.metrics import epoch_scalars, metric_name

BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size: a few all-reduces for a large net
STORE_TIMEOUT = timedelta(minutes=30)  # connecting, and the process group's collectives
POLL_S = 0.02  # how often a rank waiting on the store looks for its key and for a signal
# How long rank 0, hosting the store (no torchrun agent: submitit, a world started by hand),
# waits at a job's end for the other ranks to have read it: the store ends with its process.
LEAVE_TIMEOUT_S = 60.0
# The stopping rules of Run.should_stop, in the order of the per-epoch agreement's code
STOPPING_RULES = ("grad_tol", "converged", "early_stopping")
SIGNALS = interrupt.SIGNALS


class AgreedStop(StopFlag):
    """The signal any rank received, once a reduction has carried it to every rank."""

    def __init__(self, local: StopFlag) -> None:
        super().__init__()
        self.local = local

    def slots(self, like: Tensor) -> Tensor:
        """1 where this rank received the signal: (len(SIGNALS),), summed over the ranks."""
        return torch.tensor([float(self.local.signum == s) for s in SIGNALS]).to(like)

    def update(self, counts: list[float]) -> None:
        for signum, count in zip(SIGNALS, counts, strict=True):
            if count > 0:  # SIGTERM over SIGINT where both came: the larger exit status
                self.signum = max(self.signum or 0, int(signum))


class SilentLogger:
    """A rank other than 0 logs nothing: RunLogger's calls, each doing nothing."""

    seconds: dict[str, float] = {}  # noqa: RUF012 (read only)

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class World:
    """This process's rank among `size`; a world of one does no communication at all."""

    def __init__(self, place: Place) -> None:
        self.place = place
        self.rank, self.size, self.local_rank = place.rank, place.size, place.local_rank
        self.store: Any = None
        self.backend: str | None = None  # the process group's, once joined
        self.stop: AgreedStop | None = None
        self._jobs = 0  # jobs begun in this process: a sweep's jobs run in the same order
        self._announced = False

    @property
    def writes(self) -> bool:
        """Rank 0 owns the run folder: TensorBoard, metrics.json, checkpoints, .hydra/."""
        return self.rank == 0

    # --- the control plane: the rendezvous store ----------------------------------------------

    def connect(self) -> Any:
        """The rendezvous store: torchrun's agent's, or one rank 0 hosts (submitit)."""
        if self.store is None:
            p = self.place
            store = dist.TCPStore(
                p.address,
                p.port,
                None if p.agent_store else p.size,
                is_master=p.rank == 0 and not p.agent_store,
                timeout=STORE_TIMEOUT,
                wait_for_workers=False,
            )
            self.store = dist.PrefixStore(f"ffn/{p.restart}/", store)
        return self.store

    def post(self, key: str, message: dict[str, Any]) -> None:
        """A plain-data message (tensors allowed) under `key`, for the other ranks."""
        buffer = io.BytesIO()
        torch.save(message, buffer)
        self.connect().set(f"job{self._jobs}/{key}", buffer.getvalue())

    def wait(self, key: str, interruptible: bool = True) -> dict[str, Any]:
        """The message under `key` once it is posted; a signal meanwhile raises Interrupted."""
        store, full = self.connect(), f"job{self._jobs}/{key}"
        while not store.check([full]):
            if interruptible:
                interrupt.check()
            time.sleep(POLL_S)
        data = store.get(full)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def agree_start_time(self) -> datetime:
        """Rank 0's clock, so that ${now:...} names the same output folder on every rank."""
        if self.rank == 0:
            now = datetime.now()
            self.post("start_time", {"iso": now.isoformat()})
            return now
        return datetime.fromisoformat(self.wait("start_time")["iso"])

    def begin_job(self) -> None:
        """A new Hydra job: its messages get their own keys."""
        self._jobs += 1
        self._announced = False

    def announce(self, cfg: Any, payload: dict[str, Any] | None) -> None:
        """Rank 0 has checked the folder and the config: every rank trains this (resolved)."""
        if self.size == 1:
            return
        from omegaconf import OmegaConf

        config = OmegaConf.to_yaml(cfg, resolve=True)
        self.post("decision", {"kind": "train", "config": config, "payload": payload})
        self._announced = True

    def lead(self, job: Callable[[], float]) -> float:
        """Rank 0's job: however it ends, the other ranks learn it, its exit status and value."""
        code, value = 1, math.nan
        try:
            value = job()
            code = 0
            return value
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
            raise
        finally:
            with contextlib.suppress(Exception):
                if not self._announced:  # refused, already ended, interrupted before training
                    self.post("decision", {"kind": "end", "code": code, "value": value})
                self.post("end", {"code": code, "value": value})
                self.await_leaving()
            if code:
                ignore_late_sigterm()

    def leave(self) -> None:
        """A rank other than 0 has read the job's end: rank 0 may take the store away."""
        with contextlib.suppress(Exception):  # rank 0 gone already (its wait timed out)
            self.post(f"left/{self.rank}", {})

    def await_leaving(self) -> None:
        """Rank 0, if its process hosts the store: until every other rank has left the job (or
        LEAVE_TIMEOUT_S), so that none finds the store gone mid-read (a broken pipe, not its
        exit status)."""
        if self.size == 1 or self.rank != 0 or self.place.agent_store:
            return
        store = self.connect()
        keys = [f"job{self._jobs}/left/{rank}" for rank in range(1, self.size)]
        deadline = time.monotonic() + LEAVE_TIMEOUT_S
        while not store.check(keys) and time.monotonic() < deadline:
            time.sleep(POLL_S)

    def agree_ready(self, error: ConfigError | None) -> None:
        """Every rank has built its run, or the first refusal (in rank order) is every rank's.

        A rank's own refusal (a device it lacks) thus ends the world in one line from rank 0.
        """
        if self.size == 1:
            if error is not None:
                raise error
            return
        plain = error is None or isinstance(error.value, (bool, int, float, str, type(None)))
        value = None if error is None else error.value if plain else str(error.value)
        mine = None if error is None else [error.key, value, error.allowed]
        self.post(f"ready/{self.rank}", {"error": mine})
        for rank in range(self.size):
            theirs = error if rank == self.rank else self.wait(f"ready/{rank}")["error"]
            if theirs is not None:
                raise error if rank == self.rank else ConfigError(*theirs)

    # --- the data plane: the process group ----------------------------------------------------

    def check_backend(self, name: str, device: torch.device) -> str:
        """trainer.dist_backend (validate knows the names) for this device: auto is nccl on
        CUDA, gloo on CPU; nccl without CUDA is refused."""
        backend = ("nccl" if device.type == "cuda" else "gloo") if name == "auto" else name
        if backend == "nccl" and (device.type != "cuda" or not dist.is_nccl_available()):
            why = "this torch has no NCCL" if not dist.is_nccl_available() else "CPU tensors"
            raise ConfigError("trainer.dist_backend", name, f"auto or gloo ({why})")
        return backend

    def rank_device(self, name: str, resolve: Callable[[str], torch.device]) -> torch.device:
        """The device of this rank: cuda (or auto on a GPU node) is cuda:LOCAL_RANK."""
        if name.startswith("cuda:"):
            allowed = "cuda, auto or cpu under torchrun: each rank takes cuda:LOCAL_RANK"
            raise ConfigError("trainer.device", name, allowed)
        device = resolve(name)  # refuses cuda where there is none, as for one process
        if device.type != "cuda":
            return device
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise ConfigError(
                "trainer.device",
                name,
                f"a GPU for every rank: local rank {self.local_rank} needs cuda:"
                f"{self.local_rank} but this node has {count}; start at most {count} "
                "processes per node, or trainer.device=cpu",
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def join_group(self, backend: str) -> None:
        """The process group for this backend (kept for the next job of a sweep)."""
        if self.backend == backend:
            return
        if self.backend is not None:
            dist.destroy_process_group()
        store = dist.PrefixStore(f"group/{self._jobs}", self.connect())
        dist.init_process_group(
            backend, store=store, rank=self.rank, world_size=self.size, timeout=STORE_TIMEOUT
        )
        self.backend = backend

    def rows(self, n: int) -> slice:
        """This rank's contiguous shard of n rows: sizes differ by at most one, none padded."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def check_batch(self, batch: int, n_train: int) -> None:
        """A world larger than the global batch would leave a rank nothing in every step."""
        if self.size > batch:
            raise ConfigError(
                "WORLD_SIZE",
                self.size,
                f"at most {batch}, the global batch (trainer.batch_size, or the {n_train} "
                "training rows with trainer.full_batch): every rank takes a shard of each "
                "minibatch",
            )

    def watch(self, local: StopFlag) -> StopFlag:
        """The stop flag the loop checks: this rank's own, or the world's agreed one."""
        if self.size == 1:
            return local
        self.stop = AgreedStop(local)
        return self.stop

    def reduced(self, gradients: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """`gradients(model, x, y, task)` on this rank's shard, then the global-batch mean."""

        def global_gradients(model: Any, x: Tensor, y: Tensor, task: str) -> Tensor:
            rows = x.shape[0]
            params = list(model.parameters())
            if rows:
                loss = gradients(model, x, y, task)
            else:  # the last minibatch may have fewer rows than there are ranks
                for p in params:
                    p.grad = torch.zeros_like(p)
                loss = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
            return self.reduce_gradients(params, loss, rows)

        return global_gradients

    def reduce_gradients(self, params: list[Tensor], loss: Tensor, rows: int) -> Tensor:
        """p.grad <- sum_r rows_r grad_r / sum_r rows_r, in buckets; returns the global loss.

        The last bucket also carries the loss, the rows and the signal slots, so a step costs
        one all-reduce per bucket and nothing more.
        """
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        buckets, current, size = [], [], 0
        for i, g in enumerate(grads):
            if current and size + g.numel() * g.element_size() > BUCKET_BYTES:
                buckets.append(current)
                current, size = [], 0
            current.append(i)
            size += g.numel() * g.element_size()
        buckets.append(current)
        like = grads[0]
        extras = torch.cat(
            [
                torch.stack([loss.to(like) * rows, torch.tensor(float(rows)).to(like)]),
                self._signal_slots(like),
            ]
        )
        flats = [torch.cat([grads[i].reshape(-1) for i in b]).mul_(rows) for b in buckets]
        flats[-1] = torch.cat([flats[-1], extras])
        works = [dist.all_reduce(f, async_op=True) for f in flats]
        for work in works:
            work.wait()
        tail = flats[-1][flats[-1].numel() - extras.numel() :]
        host = tail.tolist()
        if self.stop is not None:
            self.stop.update(host[2:])
        total = host[1]
        for bucket, flat in zip(buckets, flats, strict=True):
            offset = 0
            for i in bucket:
                n = grads[i].numel()
                params[i].grad = flat[offset : offset + n].view_as(params[i]).div_(total)
                offset += n
        return tail[0] / total

    def _signal_slots(self, like: Tensor) -> Tensor:
        if self.stop is None:
            return torch.zeros(len(SIGNALS)).to(like)
        return self.stop.slots(like)

    def epoch_scalars(
        self,
        model: Any,
        task: str,
        penalty: Any,
        penalised: list[Tensor],
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """ffn.metrics.epoch_scalars over the world: each rank its shard, the sums reduced.

        Loss and accuracy are means, so the sum over ranks of mean x rows, over all rows, is
        the single process's value; r2 = 1 - SS_res / SS_tot follows from the reduced loss
        (SS_res = loss x rows) and SS_tot of the whole target, which every rank holds. The
        pre-activations returned (for the layer diagnostics) are this rank's shard's.
        """
        score = metric_name(task)
        splits = {"train": train} if val is None else {"train": train, "val": val}
        shards = {k: (x[self.rows(len(x))], y[self.rows(len(x))]) for k, (x, y) in splits.items()}
        scalars, preactivations = epoch_scalars(
            model, task, penalty, penalised, shards["train"], shards.get("val")
        )
        keys = [f"{split}/{name}" for split in splits for name in ("loss", score)]
        sums = []
        for key in keys:
            rows = len(shards[key.partition("/")[0]][0])
            value = scalars[key]
            sums.append(value * rows if rows else torch.zeros_like(value))
        reduced = torch.stack(sums)
        dist.all_reduce(reduced)
        for key, total in zip(keys, reduced, strict=True):
            split, _, name = key.partition("/")
            x, y = splits[split]
            if name == "r2":  # SS_res = loss x n; SS_tot of the whole target
                ss_tot = (y - y.mean(0)).square().sum()
                scalars[key] = 1 - reduced[keys.index(f"{split}/loss")] / ss_tot
            else:
                scalars[key] = total / len(x)
        scalars["train/objective"] = scalars["train/loss"] + scalars["train/penalty"]
        return scalars, preactivations

    def agree_epoch(self, diverged: bool, fired: str | None) -> tuple[bool, str | None]:
        """One small all-reduce an epoch: whether any rank diverged, fired a rule or was signalled.

        Ranks evaluate the same reduced values, so they agree anyway; the all-reduce makes
        sure of it, and carries a signal that came after the epoch's last step.
        """
        code = 0 if fired is None else STOPPING_RULES.index(fired) + 1
        like = torch.zeros((), dtype=torch.float64)
        if self.backend == "nccl":
            like = like.to(torch.device("cuda", self.local_rank))
        flags = torch.cat(
            [torch.tensor([float(diverged), float(code)]).to(like), self._signal_slots(like)]
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        host = flags.tolist()
        if self.stop is not None:
            self.stop.update(host[2:])
        code = int(host[1])
        return bool(host[0]), None if code == 0 else STOPPING_RULES[code - 1]


_WORLD: World | None = None


def ignore_late_sigterm() -> None:
    """This rank ends now with a non-zero status: torchrun's SIGTERM to the ranks still alive,
    sent once one rank has ended, must not make this one's status -15.

    Ignored, not caught: at exit the interpreter puts a Python handler back to the default (a
    SIGTERM then kills) but leaves an ignored signal ignored.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def world() -> World:
    """This process's world (from the launcher's environment), made once."""
    global _WORLD
    if _WORLD is None:
        _WORLD = World(launch_env.place())
    return _WORLD


def join_before_hydra(argv: list[str]) -> None:
    """run.py under torchrun, before Hydra composes: one clock, one folder, one writer.

    Every rank composes the config; with rank 0's start time every ${now:...} (hydra.run.dir,
    hydra.sweep.dir) names the same folder. Ranks other than 0 configure no logging, so they
    write no run.log into rank 0's folder and do not repeat its lines.
    """
    w = world()
    if w.size == 1:
        return
    try:
        start = w.agree_start_time()
    except interrupt.Interrupted as stopped:
        raise SystemExit(stopped.flag.exit_code) from None
    import hydra.core.utils as hydra_utils

    class _AgreedClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # the resolver Hydra registers calls this
            return start

    hydra_utils.datetime = _AgreedClock  # Hydra's ${now:} resolver reads this module global
    for group in ("hydra/job_logging", "hydra/hydra_logging"):  # rank 0 logs, for the world
        if not w.writes and not any(a.startswith(f"{group}=") for a in argv):
            argv.append(f"{group}=none")


def remove_if_empty(folder: Path) -> None:
    """A rank other than 0 after rank 0 refused: Hydra made the folder here too."""
    with contextlib.suppress(OSError):
        folder.rmdir()


__all__ = ["SIGNALS", "SilentLogger", "World", "join_before_hydra", "world"]
