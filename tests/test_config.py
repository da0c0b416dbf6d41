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

from ffn.config import check_schema, register_configs, validate
from ffn.errors import ConfigError
from ffn.hparams import HPARAM_GROUPS
from ffn.job import CONFIG_GROUPS, hyperparameters, run_job
from ffn.penalties import Penalty
from ffn.run_record import event_files

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


@pytest.mark.slow
@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=choice_ids(OPTIONS))
def test_every_option_composes_and_trains(group: str, option: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = compose_config(option_overrides(group, option, tmp_path), output_dir=out)
    assert cfg.hydra.runtime.choices[group] == option
    job = job_config(cfg)
    validate(job)
    if group in HPARAM_GROUPS:
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
    assert event_files(out)


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


def test_refused_config_exits_2_and_leaves_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    job = job_config(compose_config(["optimizer.lr=0", *QUICK], output_dir=out))
    err = run_job_expecting_exit(job, capsys)
    assert err.startswith("ffn: error:") and "optimizer.lr" in err
    assert not (out / "metrics.json").exists()  # nothing that ffn-report would list as a run


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


@pytest.mark.slow  # loads diabetes: the task is known only from the data
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
        "trainer.max_epochs=1.5",  # bad type
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
        ("optimizer.lr", "abc"),  # an open group: typed by the target's signature, here
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
    OmegaConf.update(cfg, key, value, force_add=True)  # force_add: `+key=value` (momentum)
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        validate(cfg)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("passed", "refused"),
    [
        (3, 1.5),  # an int field: a float is refused by its type, whatever its value
        ("3", "three"),  # a string is judged by its text
        (True, 1.0),  # a bool field takes an int, never a float
    ],
)
def test_schema_check_remembers_shapes_not_verdicts(passed: object, refused: object) -> None:
    # check_schema skips the merge for a config shaped like one that passed (numbers by type):
    # a value of another type, or another string, is still held against the schema
    key = "trainer.figures" if isinstance(passed, bool) else "trainer.max_epochs"
    plain = OmegaConf.to_container(compose_config([]), resolve=False)
    for value in (passed, passed, refused):
        cfg = OmegaConf.create(plain)  # untyped: what a `+key=value` slips past Hydra
        OmegaConf.update(cfg, key, value)
        if value is refused:
            with pytest.raises(ConfigError, match=re.escape(key)):
                check_schema(cfg)
        else:
            check_schema(cfg)
    cfg = OmegaConf.create(plain)
    OmegaConf.update(cfg, "trainer.epochs", 3, force_add=True)  # an unknown key: a new shape
    with pytest.raises(ConfigError, match=re.escape("trainer.epochs")):
        check_schema(cfg)


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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- one pass of checks before anything is built -------------------------------------------

# A bad value in each group, on mnist1d (the set that takes seconds to generate): the key the
# line must name.
BAD_IN_EACH_GROUP = {
    "dataset": (["dataset.test_fraction=1.5"], "dataset.test_fraction"),
    "dataset-name": (["dataset.name=imagenet"], "dataset.name"),
    "model": (["model.activation=swish"], "model.activation"),
    "model-param": (["model=tanh", "model.activation_param=0.1"], "model.activation_param"),
    "penalty": (["penalty=l2", "penalty.lam=-1"], "penalty.lam"),
    "optimizer": (["optimizer.lr=-0.1"], "optimizer.lr"),
    "optimizer-keyword": (["+optimizer.alpah=0.9"], "optimizer.alpah"),
    "schedule": (["schedule=step", "schedule.step_size=0"], "schedule.step_size"),
    "trainer": (["trainer.batch_size=0"], "trainer.batch_size"),
    "trainer-step": (["trainer.step=backprop"], "trainer.step"),
    "optimized_metric": (["optimized_metric=val/f1"], "optimized_metric"),
}


class DataLoaded(Exception):
    """Raised by the spy standing in for every dataset loader."""


@pytest.fixture
def loader_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every dataset loader replaced by one that records its call and raises DataLoaded."""
    from ffn.data import load

    calls: list[str] = []

    def spy(cfg: object, seed: int) -> None:
        calls.append(cfg.name)
        raise DataLoaded(cfg.name)

    for name in load.DATASETS:
        monkeypatch.setitem(load.DATASETS, name, spy)
    return calls


@pytest.mark.parametrize("case", list(BAD_IN_EACH_GROUP))
def test_a_bad_value_in_each_group_is_refused_before_any_data_loads(
    case: str, loader_spy: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, key = BAD_IN_EACH_GROUP[case]
    job = job_config(compose_config(["dataset=mnist1d", *overrides], output_dir=tmp_path / "r"))
    err = run_job_expecting_exit(job, capsys)
    assert err.startswith("ffn: error: invalid value for " + key), err
    assert loader_spy == []  # refused before the loader was asked for anything


def test_the_loader_spy_sees_a_good_config_load(loader_spy: list[str], tmp_path: Path) -> None:
    """The control: without a bad value the same job does reach the loader."""
    job = job_config(compose_config(["dataset=mnist1d"], output_dir=tmp_path / "r"))
    with pytest.raises(DataLoaded):
        run_job(job)
    assert loader_spy == ["mnist1d"]


@pytest.mark.slow
def test_check_validation_part_runs_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ffn.config

    calls = []
    original = ffn.config.check_validation_part
    monkeypatch.setattr(
        ffn.config, "CHECKS", tuple(c for c in ffn.config.CHECKS if c is not original)
    )

    def counted(cfg: DictConfig) -> None:
        calls.append(1)
        original(cfg)

    monkeypatch.setattr(ffn.config, "CHECKS", (*ffn.config.CHECKS, counted))
    out = tmp_path / "run"
    run_job(job_config(compose_config(["dataset=iris", *QUICK], output_dir=out)))
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"
    assert calls == [1]


# --- optimizer and schedule: as open as their _target_ ---------------------------------------


@pytest.mark.slow
def test_any_torch_optimizer_trains_with_its_own_keywords(tmp_path: Path) -> None:
    from ffn import targets

    adam_only = "~optimizer.fused"  # adam.yaml's, which RMSprop lacks
    overrides = ["optimizer._target_=torch.optim.RMSprop", adam_only, "+optimizer.alpha=0.9"]
    out = tmp_path / "run"
    job = job_config(compose_config(["dataset=iris", *overrides, *QUICK], output_dir=out))
    run_job(job)
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"
    optimizer = targets.build("optimizer", job.optimizer, [torch.zeros(1, requires_grad=True)])
    assert type(optimizer) is torch.optim.RMSprop
    assert optimizer.defaults["alpha"] == 0.9 and optimizer.defaults["lr"] == job.optimizer.lr


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["optimizer._target_=torch.optim.RMSprop", "~optimizer.fused", "+optimizer.alpah=0.9"],
         "optimizer.alpah", "a keyword of torch.optim.RMSprop: lr, alpha,"),
        (["optimizer._target_=torch.optim.RMSprop", "~optimizer.fused", "+optimizer.alpha=fast"],
         "optimizer.alpha", "a number"),
        (["optimizer._target_=torch.optim.RMSprop"], "optimizer.fused",
         "; ~optimizer.fused drops it"),  # adam.yaml's own keyword, left behind
        (["optimizer=sgd", "+optimizer.nesterov=1"], "optimizer.nesterov", "true or false"),
        (["optimizer=sgd", "+optimizer.nesterov=true"], "optimizer", "Nesterov"),  # torch's own
        (["optimizer._target_=torch.optim.Nope"], "optimizer._target_", "an importable class"),
        (["schedule=step", "+schedule.gama=0.5"], "schedule.gama", "gamma"),
        (["schedule=exponential", "schedule._target_=torch.optim.lr_scheduler.StepLR"],
         "schedule", "step_size"),  # a keyword without a default, missing
        (["schedule._target_=torch.optim.lr_scheduler.StepLR"], "schedule.T_max",
         "a keyword of torch.optim.lr_scheduler.StepLR"),  # cosine's key, left behind
    ],
)  # fmt: skip
def test_open_groups_refuse_against_the_targets_signature(
    overrides: list[str], key: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_config(overrides))
    assert info.value.key == key
    assert allowed in info.value.allowed
    assert "\n" not in str(info.value)


# --- option files state only what differs from the defaults ----------------------------------

# A file's identity may restate a default (digits.yaml says name: digits): it names the option.
IDENTITY = {"dataset": "name", "model": "activation", "penalty": "name"}


def _defaults_of(group: str, section: dict) -> dict:
    """The schema's defaults for `group`; for the open groups, the signature's of its target,
    overridden by the keys the schema itself sets (its lr stays unless a file restates it)."""
    import inspect

    from hydra.utils import get_class

    from ffn.config import Config

    schema = OmegaConf.to_container(OmegaConf.structured(Config)[group])
    if group not in ("optimizer", "schedule"):
        return schema
    parameters = inspect.signature(get_class(section["_target_"])).parameters
    return {name: p.default for name, p in parameters.items()} | schema


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g, o in OPTIONS if g in CONFIG_GROUPS],
    ids=choice_ids([(g, o) for g, o in OPTIONS if g in CONFIG_GROUPS]),
)
def test_option_files_state_only_what_differs_from_the_defaults(group: str, option: str) -> None:
    path = CONF / group / f"{option}.yaml"
    raw = OmegaConf.to_container(OmegaConf.load(path)) or {}
    sections = raw if "# @package _global_" in path.read_text() else {group: raw}
    for name, section in sections.items():
        defaults = _defaults_of(name, section)
        for key, value in section.items():
            if key in (IDENTITY.get(name), "_target_"):
                continue
            assert key in defaults, f"{name}.{key}"
            assert value != defaults[key], f"{path.name} restates {name}.{key}={value!r}"
