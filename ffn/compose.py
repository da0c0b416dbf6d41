"""A plain run's config composed once: Hydra composes it twice (0.07-0.1 s each).

`python run.py ...` (no -m) first composes the config to read `hydra.mode` (`Hydra.get_mode`,
which composes as for a multirun, leaving sweep overrides unchecked and missing defaults
skipped); finding none, it adds `hydra.mode=RUN` to the overrides and composes it all again to
run. `compose_a_run_once` keeps the first composition and hands it to the second, with
`hydra.mode=RUN` applied as that override would, once Hydra's run-mode checks pass: sweep values
on a plain run's command line are refused as before, and a composition that skipped a missing
default (`???`) is composed again, to be refused as before. Anything else composes as Hydra does.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.hydra import Hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

RUN_MODE_OVERRIDE = "hydra.mode=RUN"  # what Hydra adds when no config sets hydra.mode


def compose_a_run_once() -> None:
    """Patch Hydra so `get_mode`'s composition serves the run that follows it (idempotent)."""
    if getattr(Hydra.get_mode, "composes_once", False):
        return
    compose_config = Hydra.compose_config
    kept: dict[tuple[Any, tuple[str, ...]], DictConfig] = {}

    def get_mode_keeping(self: Hydra, config_name: str | None, overrides: list[str]) -> Any:
        kept.clear()
        try:
            cfg = compose_config(
                self,
                config_name=config_name,
                overrides=overrides,
                with_log_configuration=False,
                run_mode=RunMode.MULTIRUN,
                validate_sweep_overrides=False,
            )
        except Exception:
            return None  # as Hydra's get_mode: the run's own composition reports the error
        choices = cfg.hydra.runtime.choices
        if not any(OmegaConf.is_missing(choices, group) for group in choices):
            kept[(config_name, tuple(overrides))] = cfg
        return cfg.hydra.mode

    def compose_reusing(
        self: Hydra,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        with_log_configuration: bool = False,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        cfg = None
        if run_mode == RunMode.RUN and overrides[-1:] == [RUN_MODE_OVERRIDE]:
            cfg = kept.pop((config_name, tuple(overrides[:-1])), None)
        kept.clear()  # used once: a later composition (a sweep's job) composes afresh
        if cfg is None:
            return compose_config(
                self,
                config_name=config_name,
                overrides=overrides,
                run_mode=run_mode,
                with_log_configuration=with_log_configuration,
                from_shell=from_shell,
                validate_sweep_overrides=validate_sweep_overrides,
            )
        if validate_sweep_overrides:  # "Ambiguous value for argument ...", as Hydra says it
            parsed = OverridesParser.create().parse_overrides(overrides=overrides)
            ConfigLoaderImpl.validate_sweep_overrides_legal(parsed, run_mode, from_shell)
        cfg.hydra.mode = RunMode.RUN  # the override, applied as Hydra applies it
        cfg.hydra.overrides.hydra.append(RUN_MODE_OVERRIDE)
        if with_log_configuration:  # what compose_config does after loading
            from hydra._internal import hydra as hydra_module

            hydra_module.configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
            hydra_module.log = hydra_module.logging.getLogger(hydra_module.__name__)
            self._print_debug_info(config_name, overrides, run_mode)
        return cfg

    get_mode_keeping.composes_once = True  # type: ignore[attr-defined]
    Hydra.get_mode = get_mode_keeping  # type: ignore[method-assign]
    Hydra.compose_config = compose_reusing  # type: ignore[method-assign]
