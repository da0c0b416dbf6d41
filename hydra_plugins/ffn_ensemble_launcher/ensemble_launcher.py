"""The ensemble launcher: Hydra's basic launcher, with compatible jobs trained as one ensemble.

Each job's config is composed exactly as the basic launcher composes it (load_sweep_config,
hydra.job.id/num), and each job runs as Hydra's own run_job runs it, callbacks and all
(`run_job` here: Hydra's, with its config copies made by pickle and once, not by deepcopy and
twice). Jobs that
ffn.ensemble.plan puts in one group train side by side (ffn.ensemble.group); a job that fits
no group runs alone, as the basic launcher would run it. Discovered by Hydra in the
`hydra_plugins` namespace; chosen with `hydra/launcher=ensemble` (conf/hydra/launcher/).
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where a dataclass with string annotations cannot resolve them.
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
from hydra import version
from hydra.core import utils as hydra_utils
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    env_override,
    filter_overrides,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class EnsembleLauncherConf:
    _target_: str = "hydra_plugins.ffn_ensemble_launcher.ensemble_launcher.EnsembleLauncher"
    max_members: int = 128  # the most jobs one ensemble trains at once (memory: E copies)


ConfigStore.instance().store(
    group="hydra/launcher", name="ffn_ensemble", node=EnsembleLauncherConf, provider="ffn"
)


class EnsembleLauncher(Launcher):
    def __init__(self, max_members: int = 128) -> None:
        super().__init__()
        self.max_members = max_members
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from ffn.ensemble.compose import compose_by_template

        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        _refuse_unless_fit(config)
        # One composition per group: members that differ in values only are derived from it
        compose_by_template(hydra_context.config_loader)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from ffn.ensemble.plan import plan

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            _refuse_unless_fit(config)
            configs.append(config)
        groups = plan(configs, self.max_members)
        log.info(
            "Launching %d jobs locally, as %d ensembles and %d single jobs",
            len(configs),
            sum(len(g) > 1 for g in groups),
            sum(len(g) == 1 for g in groups),
        )
        returns: list[Optional[JobReturn]] = [None] * len(configs)
        for group in groups:
            for i in group:
                lst = " ".join(filter_overrides(job_overrides[i]))
                log.info("\t#%d : %s%s", initial_job_idx + i, lst, " (ensemble)" * (len(group) > 1))
            if len(group) == 1:
                returns[group[0]] = self._run(configs[group[0]])
            else:
                from ffn import figure_worker
                from ffn.ensemble.group import Group

                if any(configs[i].trainer.figures for i in group):
                    # Its members' figures are most of the group's end, drawn while it waits:
                    # the worker gets the machine's share a run gets, not a background one, and
                    # a helper on another core, where there is one, draws every other figure
                    figure_worker.start(niceness=0, helpers=int((os.cpu_count() or 1) > 1))
                launches = [lambda c=configs[i]: self._run(c) for i in group]
                for i, ret in zip(group, Group().run(launches), strict=True):
                    returns[i] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _run(self, config: DictConfig) -> JobReturn:
        """One job as the basic launcher runs it (run_job sets Hydra's config for the job)."""
        job = run_job if hydra.__version__ in TRANSCRIBED else hydra_utils.run_job
        return job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


# The Hydra releases whose core/utils.py run_job `run_job` transcribes (others run Hydra's own)
TRANSCRIBED = ("1.3.2", "1.3.8")


def run_job(
    task_function: TaskFunction,
    config: DictConfig,
    job_dir_key: str,
    job_subdir_key: Optional[str],
    hydra_context: HydraContext,
    configure_logging: bool = True,
) -> JobReturn:
    """hydra.core.utils.run_job, step for step, less the cost of its copies of the config.

    Hydra deep-copies the job's config once (the task's) and its hydra node three times
    (HydraConfig.set_config, called before and after hydra.runtime.output_dir is set, copies it
    each time, and the JobReturn's hydra_cfg): 41% of what each of the 32 members of the digits
    sweep paid before its first step (cProfile). Here Hydra's config is set once and given the
    output folder in both places the second call would have put it, and the task's config and
    the JobReturn's hydra_cfg are copied by pickle (ffn.compose.config_copy: the same
    tree at half the cost): the 32 digits members' set-up (first Run built to the last) 1.14 ->
    0.84 s (AMD EPYC, load 0.5). tests/test_ensemble_run_job.py holds it to Hydra's run_job.
    """
    from ffn.compose import config_copy

    if config.hydra.job.chdir is None and not version.base_at_least("1.2"):
        # Hydra warns and changes folder (version_base below 1.2): its own run_job does that
        return hydra_utils.run_job(
            task_function, config, job_dir_key, job_subdir_key, hydra_context, configure_logging
        )
    hydra_utils._check_hydra_context(hydra_context)
    callbacks = hydra_context.callbacks

    old_cwd = os.getcwd()
    orig_hydra_cfg = HydraConfig.instance().cfg

    # init Hydra config for config evaluation
    HydraConfig.instance().set_config(config)
    hydra_view = HydraConfig.instance().cfg  # the hydra node's copy (parent: config)

    output_dir = str(OmegaConf.select(config, job_dir_key))
    if job_subdir_key is not None:
        subdir = str(OmegaConf.select(config, job_subdir_key))
        output_dir = os.path.join(output_dir, subdir)

    # Hydra's second set_config, as the copy it would make: the output folder in both
    for runtime in (config.hydra.runtime, hydra_view.hydra.runtime):
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = os.path.abspath(output_dir)
    _chdir = None
    try:
        ret = JobReturn()
        task_cfg = config_copy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]

        ret.cfg = task_cfg
        hydra_cfg = _masked_copy(hydra_view)
        assert isinstance(hydra_cfg, DictConfig)
        ret.hydra_cfg = hydra_cfg
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        ret.overrides = overrides
        # handle output directories here
        Path(str(output_dir)).mkdir(parents=True, exist_ok=True)

        _chdir = hydra_cfg.hydra.job.chdir
        if _chdir is None:  # (version_base >= 1.2 here: see above)
            _chdir = False

        if _chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()

        if configure_logging:
            configure_log(config.hydra.job_logging, config.hydra.verbose)

        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / Path(config.hydra.output_subdir)
            hydra_utils._save_config(task_cfg, "config.yaml", hydra_output)
            hydra_utils._save_config(hydra_cfg, "hydra.yaml", hydra_output)
            hydra_utils._save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)

        with env_override(hydra_cfg.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:
                ret.return_value = e
                ret.status = JobStatus.FAILED

        ret.task_name = JobRuntime.instance().get("name")

        hydra_utils._flush_loggers()

        callbacks.on_job_end(config=config, job_return=ret)

        return ret
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if _chdir:
            os.chdir(old_cwd)


def _masked_copy(view: DictConfig) -> DictConfig:
    """copy.deepcopy of HydraConfig's `{hydra: node}` view, whose node's parent is the job's
    config: deepcopy re-parents the node's copy to the view's copy, and so does this pickle
    (the node is pickled with the view as its parent, not the whole config)."""
    from ffn.compose import config_copy

    node = view._get_node("hydra")
    parent = node._get_parent()
    node._set_parent(view)
    try:
        return config_copy(view)
    finally:
        node._set_parent(parent)


def _refuse_unless_fit(config: DictConfig) -> None:
    """What no ensemble can train: one line and exit 2, before any job has run (the sweep
    callback has claimed the sweep folder already, so this is not left to Hydra's report)."""
    from ffn.ensemble.plan import check_config
    from ffn.errors import ConfigError

    try:
        check_config(config)
    except ConfigError as error:
        print(f"ffn: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
