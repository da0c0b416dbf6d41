"""One Hydra composition per group of a sweep: a job that differs only in plain values is derived.

Jobs of one ensemble differ in numbers (optimizer.lr=0.01, trainer.seed=3) and agree on every
config group choice. Composing each costs 0.3 s on a 2-core machine (the defaults list, every
YAML file, the schema merge), while what Hydra does with a value override is one step of that
composition (`ConfigLoaderImpl._apply_overrides_to_config`) followed by two bookkeeping fields
(`hydra.overrides.task`, `hydra.job.override_dirname`). So the first job of each shape is
composed by Hydra, and a job whose overrides differ from it only in the values of plain `key=value`
overrides is a copy of it with those same Hydra steps re-run on its own overrides: the config
Hydra would have composed (tests/test_ensemble_launcher.py compares the .hydra/ files).
"""

from __future__ import annotations

from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf

from ffn.compose import copy_of, pickled_config

SCALARS = (bool, int, float, str, type(None))


def compose_by_template(loader: Any) -> None:
    """Wrap `loader.load_sweep_config`: jobs differing from a composed one in values only are
    derived from it (the wrapped loader still composes every other job)."""
    if getattr(loader.load_sweep_config, "derives_values", False):
        return
    compose = loader.load_sweep_config
    parser = OverridesParser.create()
    templates: dict[tuple[int, tuple[str, ...]], _Template] = {}
    # (The basic sweeper's second load of a job, the launcher's after its validation's, never
    # reaches here: ffn.sweep.compose_each_job_once, wrapped around this, answers it.)

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        parsed = parser.parse_overrides(list(sweep_overrides))
        plain = [_plain_value(o, loader) for o in parsed]
        shape = (id(master_config), _shape(parsed, plain))
        template = templates.get(shape)
        if template is not None and _derivable(template.overrides, parsed, template.config):
            return _derive(template.copy(), master_config, parsed, plain)
        config = compose(master_config=master_config, sweep_overrides=sweep_overrides)
        if template is None:
            templates[shape] = _Template(config, parsed)
        return config

    load_sweep_config.derives_values = True  # type: ignore[attr-defined]
    loader.load_sweep_config = load_sweep_config


class _Template:
    """A composed config, as composed (its caller may change its own), and its overrides;
    pickled once, so that a copy is one pickle.loads (0.95 ms: see config_copy)."""

    def __init__(self, config: DictConfig, overrides: list[Override]) -> None:
        self.pickled = pickled_config(config)
        self.config: DictConfig = self._copy(config)  # read by _derivable only
        self.overrides = overrides

    def _copy(self, config: DictConfig) -> DictConfig:
        return copy_of(config, self.pickled)

    def copy(self) -> DictConfig:
        return self._copy(self.config)


def _shape(parsed: list[Override], plain: list[bool]) -> tuple[str, ...]:
    """The overrides with the values of plain value changes left out."""
    return tuple(
        o.key_or_group if p else str(o.input_line) for o, p in zip(parsed, plain, strict=True)
    )


def _plain_value(o: Override, loader: Any) -> bool:
    """`key=scalar` on the task's config: no group choice, no +/++/~, no hydra.* key."""
    return (
        o.type == OverrideType.CHANGE
        and o.package is None
        and not o.is_hydra_override()
        and "/" not in o.key_or_group
        and isinstance(o.value(), SCALARS)
        and not loader.repository.group_exists(o.key_or_group.replace(".", "/"))
    )


_ABSENT = object()


def _derivable(template: list[Override], parsed: list[Override], composed: DictConfig) -> bool:
    """Every override that differs from the template's sets an existing scalar of its config."""
    for mine, theirs in zip(parsed, template, strict=True):
        if mine.input_line != theirs.input_line:
            try:
                node = OmegaConf.select(composed, mine.key_or_group, default=_ABSENT)
            except Exception:  # an interpolation that resolves only in the job: let Hydra
                return False
            if node is _ABSENT or not isinstance(node, SCALARS):
                return False
    return True


def _derive(
    config: DictConfig, master: DictConfig, parsed: list[Override], plain: list[bool]
) -> DictConfig:
    """A copy of the template with this job's value overrides applied as Hydra applies them."""
    values = [o for o, p in zip(parsed, plain, strict=True) if p]
    ConfigLoaderImpl._apply_overrides_to_config(values, config)
    app = [o for o in parsed if not o.is_hydra_override()]
    config.hydra.overrides.task = [o.input_line for o in app]
    dirname = config.hydra.job.config.override_dirname
    config.hydra.job.override_dirname = get_overrides_dirname(
        overrides=app,
        kv_sep=dirname.kv_sep,
        item_sep=dirname.item_sep,
        exclude_keys=dirname.exclude_keys,
    )
    OmegaConf.copy_cache(from_config=master, to_config=config)
    return config
