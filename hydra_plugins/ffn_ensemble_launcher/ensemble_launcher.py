"""The ensemble launcher: Hydra's basic launcher, with compatible jobs trained as one ensemble.

Each job's config is composed exactly as the basic launcher composes it (load_sweep_config,
hydra.job.id/num), and each job runs through Hydra's own run_job, callbacks and all. Jobs that
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

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

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
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


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
