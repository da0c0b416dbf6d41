"""The ensemble launcher's run_job against Hydra's own: what the task sees and what it returns.

The launcher copies the job's config by pickle and sets Hydra's config once
(hydra_plugins.ffn_ensemble_launcher.ensemble_launcher.run_job); a job must not be able to tell.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT
from hydra._internal.callbacks import Callbacks
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.core.utils import run_job as hydra_run_job
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.ffn_ensemble_launcher.ensemble_launcher import run_job as ensemble_run_job


def _jobs(tmp_path: Path, overrides: list[str], chdir: bool) -> tuple[Any, DictConfig, DictConfig]:
    """The loader and two configs of one job, composed as the basic sweeper composes them."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ffn.config import register_configs

    register_configs()
    sweep = [f"hydra.sweep.dir={tmp_path}/${{hydra.job.name}}", f"hydra.job.chdir={chdir}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", sweep + overrides, run_mode=RunMode.MULTIRUN)
        # ${now:...} resolved once, as a sweep does before its jobs: each job copies the cache
        assert master.hydra.run.dir and master.hydra.sweep.dir
        configs = []
        for _ in range(2):
            config = loader.load_sweep_config(master, overrides)
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = 3
            configs.append(config)
    return loader, configs[0], configs[1]


def _run(run_job: Any, loader: Any, config: DictConfig, fail: bool) -> tuple[Any, dict]:
    seen: dict[str, Any] = {}

    def task(cfg: DictConfig) -> float:
        hydra_view = HydraConfig.get()
        seen.update(
            cfg=OmegaConf.to_yaml(cfg),
            cfg_type=(type(cfg), OmegaConf.get_type(cfg), OmegaConf.is_struct(cfg)),
            hydra=OmegaConf.to_yaml(HydraConfig.instance().cfg),
            hydra_resolved=OmegaConf.to_container(hydra_view, resolve=True),
            parent_is_config=hydra_view._get_parent() is config,
            readonly=OmegaConf.is_readonly(hydra_view),
            cwd=os.getcwd(),
        )
        cfg.optimizer.lr = 123.0  # the task's copy: the job's config keeps its own
        if fail:
            raise ValueError("refused")
        return 0.25

    before = HydraConfig.instance().cfg
    ret = run_job(
        task_function=task,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
        hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(None)),
    )
    assert HydraConfig.instance().cfg is before  # restored
    seen["config_after"] = OmegaConf.to_yaml(config)
    return ret, seen


@pytest.mark.parametrize("chdir", [False, True])
@pytest.mark.parametrize("fail", [False, True])
def test_a_job_sees_and_returns_what_hydras_run_job_gives(
    tmp_path: Path, chdir: bool, fail: bool
) -> None:
    overrides = ["optimizer.lr=0.01", "trainer.seed=3"]
    loader, theirs_config, mine_config = _jobs(tmp_path, overrides, chdir)
    cwd = os.getcwd()
    theirs, seen_theirs = _run(hydra_run_job, loader, theirs_config, fail)
    assert os.getcwd() == cwd
    mine, seen_mine = _run(ensemble_run_job, loader, mine_config, fail)
    assert os.getcwd() == cwd
    assert seen_mine == seen_theirs
    assert seen_mine["parent_is_config"] and seen_mine["readonly"]
    assert seen_mine["cwd"] == (str(tmp_path / "app" / "3") if chdir else cwd)
    assert OmegaConf.to_yaml(mine.cfg) == OmegaConf.to_yaml(theirs.cfg)
    assert OmegaConf.to_yaml(mine.hydra_cfg) == OmegaConf.to_yaml(theirs.hydra_cfg)
    assert mine.hydra_cfg.hydra._get_parent() is mine.hydra_cfg  # as deepcopy re-parents it
    assert OmegaConf.is_readonly(mine.hydra_cfg.hydra) == OmegaConf.is_readonly(
        theirs.hydra_cfg.hydra
    )
    assert mine.hydra_cfg.hydra.runtime.output_dir == str(tmp_path / "app" / "3")
    assert (mine.overrides, mine.working_dir, mine.task_name) == (
        theirs.overrides,
        theirs.working_dir,
        theirs.task_name,
    )
    assert mine.status == theirs.status == (JobStatus.FAILED if fail else JobStatus.COMPLETED)
    if fail:
        assert repr(mine._return_value) == repr(theirs._return_value)
    else:
        assert mine.return_value == theirs.return_value == 0.25


@dataclass
class _Conf:
    lr: float = 0.1


def test_a_config_pickle_refuses_is_deep_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema class that is no longer the one its module names (Hydra's plugin scan imports
    joblib's launcher config twice): pickle refuses the config, and config_copy deep-copies it
    instead, class and all."""
    from ffn.compose import config_copy, pickled_config

    config = OmegaConf.create({"launcher": OmegaConf.structured(_Conf), "n": 1})
    assert pickled_config(config) is not None
    monkeypatch.setattr(sys.modules[__name__], "_Conf", make_dataclass("_Conf", ["lr"]))
    assert pickled_config(config) is None
    copied = config_copy(config)
    assert copied == config and copied is not config
    assert OmegaConf.get_type(copied, "launcher") is OmegaConf.get_type(config, "launcher")
