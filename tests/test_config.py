"""The config tree through Hydra's compose API: every option of every group composes and trains.

Also the schema's refusals at composition, `ffn.config.validate`'s range checks, and what
`python run.py --help` / `--cfg job` show.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import run_ffn
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ffn.config import register_configs, validate
from ffn.errors import ConfigError
from ffn.job import CONFIG_GROUPS, hyperparameters, run_job
from ffn.penalties import Penalty

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# The user's groups (conf/hydra/ holds options of Hydra's own groups, e.g. hydra/launcher)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
# Every file of every group, so a new file is covered without touching this test
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))]
HYDRA_OPTIONS = sorted(
    (f"hydra/{p.parent.relative_to(CONF / 'hydra').as_posix()}", p.stem)
    for p in (CONF / "hydra").rglob("*.yaml")
)
ABSENT = object()


def choice_ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{group}={option}" for group, option in pairs]


# Quick settings: small data, two epochs, no histograms or figures
QUICK = ["trainer.max_epochs=2", "trainer.histogram_every=0", "trainer.figures=false"]
SMALL_DATA = {
    "mnist1d": ["dataset.n_samples=200"],
    "regression": ["dataset.n_samples=200"],
    "moons": ["dataset.n_samples=200"],
    "spirals": ["dataset.n_samples=200"],
    "blobs": ["dataset.n_samples=200"],
}
# The other groups train on a small shipped set
BASE_DATASET = "iris"


@pytest.fixture(scope="module", autouse=True)
def _schema() -> None:
    register_configs()


@pytest.fixture(autouse=True)
def _restore_globals() -> Iterator[None]:
    """train() sets torch's thread count and HydraConfig is a singleton: put both back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    HydraConfig.instance().cfg = None


def compose_config(
    overrides: list[str], output_dir: Path | None = None, with_hydra: bool = False
) -> DictConfig:
    """conf/config.yaml with `overrides`; the hydra node too when asked or `output_dir` is given."""
    if output_dir is not None:
        overrides = [*overrides, f"hydra.runtime.output_dir={output_dir}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=overrides,
            return_hydra_config=with_hydra or output_dir is not None,
        )


def job_config(cfg: DictConfig) -> DictConfig:
    """Install cfg's hydra node as the HydraConfig; return the job's own config, as Hydra does."""
    HydraConfig.instance().set_config(cfg)
    # Hydra makes the run folder before the job starts; run_job writes into it at once
    Path(cfg.hydra.runtime.output_dir).mkdir(parents=True, exist_ok=True)
    job = copy.deepcopy(cfg)
    with read_write(job), open_dict(job):
        del job["hydra"]
    return job


def write_csv(path: Path, n: int = 60) -> Path:
    """Two numeric features and a 3-class text label, the class readable from the features."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "label"])
        for i in range(n):
            k = i % 3
            writer.writerow([k + 0.01 * i, -k + 0.02 * (i % 7), f"class_{k}"])
    return path


def option_overrides(group: str, option: str, tmp_path: Path) -> list[str]:
    """What it takes to train `group=option` quickly."""
    if group not in CONFIG_GROUPS:  # e.g. hparams_search: it picks its own dataset
        return [f"{group}={option}", *QUICK]
    if group != "dataset":
        return [f"dataset={BASE_DATASET}", f"{group}={option}", *QUICK]
    extra = SMALL_DATA.get(option, [])
    if option == "file":
        extra = [f"dataset.path={write_csv(tmp_path / 'data.csv')}", "dataset.target=label"]
    return [f"dataset={option}", *extra, *QUICK]


def test_every_group_has_options() -> None:
    assert set(CONFIG_GROUPS) <= set(GROUPS)
    for group in GROUPS:
        assert any(o for g, o in OPTIONS if g == group), group


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=choice_ids(OPTIONS))
def test_every_option_composes_and_trains(group: str, option: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = compose_config(option_overrides(group, option, tmp_path), output_dir=out)
    assert cfg.hydra.runtime.choices[group] == option
    job = job_config(cfg)
    validate(job)
    if group in CONFIG_GROUPS:
        assert hyperparameters(job)[group] == option

    returned = run_job(job)

    result = json.loads((out / "metrics.json").read_text())
    assert result["status"] == "completed", result
    assert 1 <= result["epochs"] <= 2  # an experiment may bring its own stopping rule
    metrics = result["metrics"]
    with_val = ["val/loss"] if job.dataset.val_fraction else []  # val_fraction=0: no val part
    assert {"train/loss", "test/loss", *with_val} <= set(metrics)
    assert with_val or not [k for k in metrics if k.startswith("val/")]
    assert all(v is not None and math.isfinite(v) for v in metrics.values()), metrics
    assert returned == pytest.approx(metrics[job.optimized_metric], rel=1e-12)
    assert list(out.glob("events.out.tfevents.*"))


@pytest.mark.parametrize(("group", "option"), HYDRA_OPTIONS, ids=choice_ids(HYDRA_OPTIONS))
def test_every_hydra_option_composes(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"], with_hydra=True)
    assert cfg.hydra.runtime.choices[group] == option


SWEEP_OPTIONS = [(g, o) for g, o in OPTIONS if g not in CONFIG_GROUPS]


@pytest.mark.parametrize(("group", "option"), SWEEP_OPTIONS, ids=choice_ids(SWEEP_OPTIONS))
def test_sweep_spaces_name_real_keys(group: str, option: str) -> None:
    """Every key a search varies is a group or a config key: a typo would fail every trial."""
    cfg = compose_config([f"{group}={option}"], with_hydra=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    for key in params:
        assert key in GROUPS or OmegaConf.select(cfg, key, default=ABSENT) is not ABSENT, key


def run_job_expecting_exit(job: DictConfig, capsys: pytest.CaptureFixture[str]) -> str:
    """run_job on a config it must refuse: exit status 2 and the one line it printed."""
    with pytest.raises(SystemExit) as exit_info:
        run_job(job)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_refused_config_exits_2_and_marks_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    job = job_config(compose_config(["optimizer.lr=0", *QUICK], output_dir=out))
    err = run_job_expecting_exit(job, capsys)
    assert err.startswith("ffn: error:") and "optimizer.lr" in err
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_bad_seed_names_trainer_seed(
    seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [f"trainer.seed={seed}", *QUICK]
    job = job_config(compose_config(overrides, output_dir=tmp_path / "run"))
    assert "trainer.seed" in run_job_expecting_exit(job, capsys)


def test_plus_override_of_unknown_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `+key=value` gets past Hydra's struct mode; validate() holds it against the schema.
    job = job_config(compose_config(["+model.hiddn=[3]", *QUICK], output_dir=tmp_path / "run"))
    assert "model.hiddn" in run_job_expecting_exit(job, capsys)


def test_optimized_metric_the_task_lacks_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = ["dataset=diabetes", "optimized_metric=val/accuracy", *QUICK]
    job = job_config(compose_config(overrides, output_dir=tmp_path / "run"))
    assert "optimized_metric" in run_job_expecting_exit(job, capsys)


def test_schema_is_not_a_group_choice() -> None:
    cfg = compose_config([], with_hydra=True)
    assert "ffn_schema" not in cfg.hydra.runtime.choices.values()
    assert "ffn_schema" not in cfg.hydra.runtime.choices


@pytest.mark.parametrize(
    "override",
    [
        "optimizer.lr=abc",  # bad type
        "trainer.max_epochs=1.5",
        "model.hidden=[a]",
        "trainer.figures=maybe",
        "model.hiddn=[3]",  # unknown key
        "trainer.epochs=3",
        "dataset.nam=iris",
    ],
)
def test_schema_refuses_at_composition(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException, match=re.escape(key)):
        compose_config([override])


def test_unknown_option_is_refused() -> None:
    with pytest.raises(Exception, match="model/nope"):
        compose_config(["model=nope"])


def test_defaults_pass_validate() -> None:
    validate(compose_config([]))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optimizer.lr", 0.0),
        ("optimizer.lr", -1e-3),
        ("optimizer.lr", float("nan")),
        ("optimizer.lr", float("inf")),
        ("optimizer.momentum", -0.5),
        ("trainer.max_epochs", 0),
        ("trainer.batch_size", 0),
        ("trainer.dtype", "float16"),
        ("trainer.dtype", "double"),
        ("trainer.rel_tol", -1.0),
        ("trainer.grad_tol", float("nan")),
        ("trainer.patience", -1),
        ("trainer.early_stopping", -1),
        ("trainer.histogram_every", -1),
        ("trainer.eval_every", 0),
        ("trainer.num_threads", 0),
        ("optimized_metric", "val/f1"),
    ],
)
def test_validate_refuses(key: str, value: object) -> None:
    cfg = compose_config([])
    OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        validate(cfg)
    assert info.value.key == key


@pytest.mark.parametrize("penalty", ["l1", "l2", "elastic_net"])
def test_negative_lambda_is_refused(penalty: str) -> None:
    cfg = compose_config([f"penalty={penalty}", "penalty.lam=-0.1"])
    with pytest.raises(ConfigError, match=re.escape("penalty.lam")):
        Penalty(**OmegaConf.to_container(cfg.penalty, resolve=True))


def test_every_penalty_file_builds_a_penalty() -> None:
    for group, option in OPTIONS:
        if group == "penalty":
            cfg = compose_config([f"penalty={option}"])
            assert Penalty(**OmegaConf.to_container(cfg.penalty, resolve=True)).name == option


def test_help_lists_every_option_and_not_the_schema() -> None:
    proc = run_ffn("--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("== Configuration groups ==")[1].split("==")[0]
    listed = dict(re.findall(r"^(\w+): (.*)$", section, flags=re.M))
    assert set(listed) == set(GROUPS)
    for group in GROUPS:
        names = {name.strip() for name in listed[group].split(",")}
        assert names == {o for g, o in OPTIONS if g == group}, group
    assert "ffn_schema" not in proc.stdout


def test_cfg_job_prints_the_main_keys() -> None:
    proc = run_ffn("--cfg", "job", timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = OmegaConf.create(proc.stdout)
    for key in (
        "model.activation",
        "model.hidden",
        "penalty.lam",
        "optimizer.lr",
        "trainer.max_epochs",
        "trainer.batch_size",
        "trainer.device",
        "trainer.dtype",
        "trainer.seed",
    ):
        assert OmegaConf.select(printed, key, default="absent") != "absent", key
    assert "hydra" not in printed
