"""Which jobs train together (ffn.ensemble.plan): composed with Hydra's compose API."""

from __future__ import annotations

import pytest
from helpers import ROOT
from hydra import compose, initialize_config_dir

from ffn.config import register_configs
from ffn.ensemble.plan import check_config, group_key, plan
from ffn.errors import ConfigError


def configs(*jobs: list[str]):
    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return [compose("config", overrides=job) for job in jobs]


def test_numeric_hyperparameters_and_seeds_group_the_rest_splits() -> None:
    jobs = configs(
        ["optimizer.lr=0.1", "trainer.seed=0"],
        ["optimizer.lr=0.01", "trainer.seed=1", "penalty=l2", "penalty.lam=0.1"],  # other kind
        [
            "optimizer.lr=0.3",
            "trainer.seed=2",
            "+optimizer.betas=[0.8,0.9]",
            "trainer.max_epochs=3",
        ],
        ["model.hidden=[32]"],  # another architecture
        ["optimizer=lbfgs"],  # no batched step: alone
        ["+optimizer.amsgrad=true"],  # a flag the batched Adam lacks: alone
        ["optimizer=sgd", "optimizer.lr=0.2"],
        ["optimizer=sgd", "optimizer.lr=0.3", "schedule=step"],
        ["penalty=l2", "penalty.lam=0.2"],
    )
    assert group_key(jobs[4]) is None and group_key(jobs[5]) is None
    assert plan(jobs, max_members=128) == [[0, 2], [1, 8], [3], [4], [5], [6, 7]]
    assert plan(jobs, max_members=1) == [[i] for i in range(len(jobs))]


def test_max_members_caps_a_group() -> None:
    jobs = configs(*[[f"optimizer.lr={lr}"] for lr in (0.1, 0.2, 0.3, 0.4, 0.5)])
    assert plan(jobs, max_members=2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(Exception, match=r"hydra\.launcher\.max_members"):
        plan(jobs, max_members=0)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.backend=autograd", "model.backend"),
        ("trainer.compile=true", "trainer.compile"),
        ("trainer.step=autograd", "trainer.step"),
    ],
)
def test_what_no_ensemble_can_do_is_refused_naming_the_key(override: str, key: str) -> None:
    (cfg,) = configs([override])
    with pytest.raises(ConfigError) as refused:
        check_config(cfg)
    assert refused.value.key == key and "hydra/launcher=basic" in str(refused.value)
    check_config(configs([])[0])  # the defaults are fine


def test_the_hydra_record_is_what_omegaconf_writes_of_its_config(tmp_path, monkeypatch) -> None:
    """ffn.job.write_hydra_record dumps the hydra node's container without building a config
    of it (each member of an ensemble writes one): the bytes OmegaConf.to_yaml wrote."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from ffn import job

    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["optimizer.lr=0.3", "+hydra.job.env_set.A='x: y'"],
            return_hydra_config=True,
        )
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored
    HydraConfig.instance().set_config(cfg)
    hydra_cfg = HydraConfig.get()
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    job.write_hydra_record(tmp_path, task)
    expected = {
        "config.yaml": OmegaConf.to_yaml(task),
        "hydra.yaml": OmegaConf.to_yaml(
            OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)})
        ),
        "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))),
    }
    for name, text in expected.items():
        assert (tmp_path / ".hydra" / name).read_text() == text, name
