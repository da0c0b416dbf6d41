"""Where this process stands in a run across processes, read from its launcher's environment.

torch-free, so that run.py, the config check and the sweep callback can ask without importing
torch. torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process
it starts; submitit (hydra/launcher=slurm with tasks_per_node > 1) starts one task per rank and
describes it in its JobEnvironment (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the job's nodes),
which is mapped onto the same five values here. Without either, a process is a world of one.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

# trainer.dist_backend: auto is nccl on CUDA, gloo on CPU (what torch.distributed recommends)
BACKENDS = ("auto", "gloo", "nccl")
SUBMITIT_PORTS = (20000, 40000)  # a job's port, from its id: tasks of one job agree, jobs differ


@dataclass(frozen=True)
class Place:
    """This process's rank in a world of `size`, and where rank 0's rendezvous store listens."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    address: str = "127.0.0.1"
    port: int = 0
    agent_store: bool = False  # torchrun's agent hosts the store: every rank is its client
    restart: int = 0  # torchrun's restart count: a restarted world starts a fresh set of keys


def place() -> Place:
    """torchrun's variables, else submitit's job environment, else a world of one."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return Place(
            rank=int(env["RANK"]),
            size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
            address=env.get("MASTER_ADDR", "127.0.0.1"),
            port=int(env.get("MASTER_PORT", "29500")),
            agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
            restart=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
        )
    if env.get("SUBMITIT_EXECUTOR"):
        return _submitit_place()
    return Place()


def _submitit_place() -> Place:
    """One submitit task of a job with several (tasks_per_node x nodes): rank 0 hosts the store."""
    try:
        import submitit

        job = submitit.JobEnvironment()
    except Exception:  # not inside a submitit job after all
        return Place()
    if job.num_tasks <= 1:
        return Place()
    low, high = SUBMITIT_PORTS
    return Place(
        rank=job.global_rank,
        size=job.num_tasks,
        local_rank=job.local_rank,
        address=job.hostnames[0],
        port=low + zlib.crc32(job.job_id.encode()) % (high - low),
    )


def is_writer() -> bool:
    """Whether this process writes the run folder, the sweep folder and the console's report."""
    return place().rank == 0
