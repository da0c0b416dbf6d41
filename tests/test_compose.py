"""A plain run's config, composed once, is the config Hydra composes twice to get."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.hydra import Hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from ffn.compose import RUN_MODE_OVERRIDE, compose_a_run_once
from ffn.config import register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"
COMMAND_LINES = [
    [],
    ["model=tanh", "optimizer.lr=0.01", "trainer.max_epochs=3"],
    ["experiment=lasso_ridge_smoke", "hydra.run.dir=/tmp/somewhere"],
    ["+optimizer.weight_decay=0.1", "hydra.job.chdir=false"],
]


@pytest.fixture(autouse=True)
def _no_hydra_left():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def hydra_composing(monkeypatch: pytest.MonkeyPatch):
    """(Hydra's own compose_config, the run modes of every composition), Hydra patched."""
    register_configs()
    for name in ("get_mode", "compose_config"):  # put back as they were after the test
        monkeypatch.setattr(Hydra, name, getattr(Hydra, name))
    own = Hydra.compose_config
    counted = ConfigLoaderImpl.load_configuration
    calls: list[RunMode] = []

    def load_configuration(self, *args, **kwargs):
        calls.append(kwargs["run_mode"])
        return counted(self, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", load_configuration)
    compose_a_run_once()
    compose_a_run_once()  # twice: patched once
    return own, calls


def _hydra(config_dir: Path):
    initialize_config_dir(config_dir=str(config_dir), version_base="1.3")
    return GlobalHydra.instance().hydra


def _as_run(hydra: Hydra, overrides: list[str]):
    """What `_run_app` does for `python run.py OVERRIDES`: the mode, then the run's config."""
    mode = hydra.get_mode(config_name="config", overrides=list(overrides))
    assert mode is None
    return hydra.compose_config("config", [*overrides, RUN_MODE_OVERRIDE], RunMode.RUN)


@pytest.mark.parametrize("overrides", COMMAND_LINES)
def test_the_run_gets_hydras_config_from_one_composition(hydra_composing, overrides) -> None:
    own, calls = hydra_composing
    hydra = _hydra(CONF)
    expected = own(hydra, "config", [*overrides, RUN_MODE_OVERRIDE], RunMode.RUN)
    del calls[:]
    cfg = _as_run(hydra, overrides)
    assert calls == [RunMode.MULTIRUN]  # get_mode's, and no second one
    assert cfg.hydra.mode == RunMode.RUN
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(expected)
    # a later composition (a sweep's next job, another run) composes afresh
    hydra.compose_config("config", [*overrides, RUN_MODE_OVERRIDE], RunMode.RUN)
    assert calls == [RunMode.MULTIRUN, RunMode.RUN]


def test_a_sweep_value_on_a_plain_run_is_still_refused(hydra_composing) -> None:
    hydra = _hydra(CONF)
    with pytest.raises(ConfigCompositionException, match="Ambiguous value"):
        _as_run(hydra, ["optimizer.lr=0.1,0.2"])


def test_a_missing_default_is_composed_again_and_refused(hydra_composing, tmp_path) -> None:
    _, calls = hydra_composing
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "a.yaml").write_text("y: 2\n")
    (tmp_path / "config.yaml").write_text("defaults:\n  - db: ???\n  - _self_\nx: 1\n")
    with pytest.raises(ConfigCompositionException, match="You must specify 'db'"):
        _as_run(_hydra(tmp_path), [])
    assert calls == [RunMode.MULTIRUN, RunMode.RUN]
