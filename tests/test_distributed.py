"""One run across processes: real torchrun worlds of two ranks on gloo, against one process.

The worlds are started as a user starts them (`python -m torch.distributed.run`, this venv's
torch), each on a free port so that parallel test workers do not collide; the single-process
references run in this process. float64 throughout, so "equal" means within 1e-6.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, ffn_env
from test_config import compose_config

from ffn import distributed, run_record
from ffn.config import register_configs
from ffn.distributed import World
from ffn.errors import ConfigError
from ffn.launch_env import Place

OPTIMIZERS = ("gd", "sgd", "adam")
# iris's 98 training rows in minibatches of 7: two ranks take 3 and 4 rows of each
SMALL = [
    "dataset=iris",
    "model.hidden=[8]",
    "trainer.dtype=float64",
    "trainer.batch_size=7",
    "trainer.histogram_every=0",
    "trainer.figures=false",
    "trainer.progress=false",
]
LONG = [*SMALL, "optimizer=gd", "trainer.max_epochs=200", "trainer.checkpoint_every=5"]
TOLERANCE = 1e-6

register_configs()  # compose_config's schema


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        str(ROOT / "run.py"),
        *args,
    ]


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    command = torchrun_command(*args)
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ffn_env()
    )


def single_process(overrides: list[str], run_dir: Path) -> tuple[dict, dict]:
    """The same config trained here, in one process: (final metrics, parameters)."""
    from ffn.train import train

    threads = torch.get_num_threads()
    try:
        result = train(compose_config(overrides), run_dir)
    finally:
        torch.set_num_threads(threads)
    payload = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return result.metrics, payload["model"]


def read_run(run_dir: Path) -> tuple[dict, dict]:
    record = json.loads((run_dir / "metrics.json").read_text())
    payload = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return record, payload


def assert_close(metrics: dict, expected: dict, params: dict, expected_params: dict) -> None:
    for key, value in expected.items():
        assert abs(metrics[key] - value) <= TOLERANCE, key
    for name, tensor in expected_params.items():
        assert torch.allclose(params[name], tensor, rtol=0, atol=TOLERANCE), name


@pytest.fixture(scope="module")
def world_sweep(tmp_path_factory: pytest.TempPathFactory):
    """`torchrun --nproc_per_node=2 run.py -m optimizer=gd,sgd,adam`: each job a world of two."""
    folder = tmp_path_factory.mktemp("world") / "sweep"
    sweep = ",".join(OPTIMIZERS)
    done = torchrun(
        "-m", *SMALL, "trainer.max_epochs=4", f"optimizer={sweep}", f"hydra.sweep.dir={folder}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("job", range(len(OPTIMIZERS)))
def test_two_ranks_train_as_one_process(world_sweep: Path, tmp_path: Path, job: int) -> None:
    """gd, minibatch SGD and Adam: the same parameters and metrics as one process (odd batch)."""
    overrides = [*SMALL, "trainer.max_epochs=4", f"optimizer={OPTIMIZERS[job]}"]
    expected, expected_params = single_process(overrides, tmp_path)
    record, payload = read_run(world_sweep / str(job))
    assert record["status"] == "completed"
    assert OPTIMIZERS[job] in (world_sweep / str(job) / ".hydra" / "overrides.yaml").read_text()
    assert_close(record["metrics"], expected, payload["model"], expected_params)
    if job == 0:  # the single process just trained here: a world of one, no store, no group
        world = distributed.world()
        assert (world.size, world.store, world.backend) == (1, None, None)


@pytest.mark.slow
def test_only_rank_zero_writes(world_sweep: Path) -> None:
    """Every file that names its writer names one process; each run has one of each file."""
    pids = set()
    for job in range(len(OPTIMIZERS)):
        run_dir = world_sweep / str(job)
        events = run_record.event_files(run_dir)
        assert events  # a second rank's SummaryWriters would add their own, with their pid
        pids.update(e.name.split(".")[-2] for e in events)  # events.out.tfevents.T.HOST.PID.N
        pids.add((run_dir / ".ffn.lock").read_text().split()[1])  # "pid N"
        names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
        expected = {
            ".ffn.lock",
            "metrics.json",
            "run.log",
            "checkpoints/last.pt",
            ".hydra/config.yaml",
            ".hydra/hydra.yaml",
            ".hydra/overrides.yaml",
        }
        assert names - {e.relative_to(run_dir).as_posix() for e in events} == expected
    assert len(pids) == 1, pids
    summary = (world_sweep / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(OPTIMIZERS)  # written once, by rank 0


def rank_pids(parent: int) -> dict[int, int]:
    """torchrun's workers: rank -> pid, read from each child's environment."""
    ranks = {}
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0][5:])] = int(child)
    return ranks


@pytest.mark.slow
def test_sigterm_to_one_rank_ends_the_world_and_resume_ends_as_one_run(tmp_path: Path) -> None:
    """SIGTERM to rank 1: one checkpoint, every rank 143; resuming ends where one run ends."""
    run_dir = tmp_path / "run"
    world = subprocess.Popen(
        torchrun_command(*LONG, f"hydra.run.dir={run_dir}"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ffn_env(),
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(rank_pids(world.pid)[1], signal.SIGTERM)
        output, _ = world.communicate(timeout=120)
    finally:
        world.kill()
    assert world.returncode != 0  # torchrun reports its workers' failures
    assert output.count("exitcode  : 143") == 2, output[-3000:]
    record, payload = read_run(run_dir)
    assert record["status"] == "interrupted" and record["stop_reason"] == "SIGTERM"
    assert 5 <= record["epochs"] < 200 and payload["loop"]["epoch"] == record["epochs"]

    resumed = torchrun(*LONG, f"hydra.run.dir={run_dir}", "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record, payload = read_run(run_dir)
    assert record["status"] == "completed" and record["epochs"] == 200
    expected, expected_params = single_process(LONG, tmp_path / "single")
    assert_close(record["metrics"], expected, payload["model"], expected_params)


def by_hand(*args: str, nproc: int = 2) -> list[subprocess.CompletedProcess[str]]:
    """`python run.py` once per rank with RANK, WORLD_SIZE, ... set, as submitit's tasks are
    mapped (no torchrun agent: rank 0 hosts the rendezvous store)."""
    port = str(free_port())
    ranks = []
    for rank in range(nproc):
        env = {
            **ffn_env(),
            "RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        ranks.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), *args],
                cwd=ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    done = []
    for p in ranks:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


@pytest.mark.slow
def test_world_larger_than_the_batch_is_refused_in_one_line(tmp_path: Path) -> None:
    """One line from rank 0, exit 2 from every rank, no folder (a world started by hand)."""
    run_dir = tmp_path / "run"
    ranks = by_hand(*SMALL, "trainer.batch_size=1", f"hydra.run.dir={run_dir}")
    assert [r.returncode for r in ranks] == [2, 2]
    assert ranks[0].stderr.strip().splitlines() == [
        "ffn: error: invalid value for WORLD_SIZE: 2 (allowed: at most 1, the global batch "
        "(trainer.batch_size, or the 98 training rows with trainer.full_batch): every rank "
        "takes a shard of each minibatch)"
    ]
    assert ranks[1].stderr.strip() == ""
    assert not run_dir.exists()


# ---------------------------------------------------------------------------- no processes


def test_shards_cover_every_row_once() -> None:
    for n in (1, 2, 7, 98):
        for size in (1, 2, 3, 4):
            shards = [World(Place(rank=r, size=size)).rows(n) for r in range(size)]
            assert [s.start for s in shards] == [0] + [s.stop for s in shards[:-1]]
            assert shards[-1].stop == n
            assert (
                max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1
            )


def test_a_device_a_rank_lacks_and_a_backend_that_cannot_run_are_refused() -> None:
    from ffn.train import resolve_device

    world = World(Place(rank=1, size=2, local_rank=1))
    with pytest.raises(ConfigError, match=r"trainer\.device.*each rank takes cuda:LOCAL_RANK"):
        world.rank_device("cuda:0", resolve_device)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"trainer\.device: 'cuda'.*no CUDA"):
            world.rank_device("cuda", resolve_device)
    elif torch.cuda.device_count() < 2:
        with pytest.raises(ConfigError, match="a GPU for every rank"):
            world.rank_device("cuda", resolve_device)
    with pytest.raises(ConfigError, match=r"trainer\.dist_backend: 'nccl'"):
        world.check_backend("nccl", torch.device("cpu"))
    assert world.check_backend("auto", torch.device("cpu")) == "gloo"


def test_a_backend_that_does_not_exist_is_refused_before_anything_runs() -> None:
    from ffn.config import validate

    with pytest.raises(ConfigError, match=r"trainer.dist_backend: 'mpi2' \(allowed: auto"):
        validate(compose_config(["trainer.dist_backend=mpi2"]))
