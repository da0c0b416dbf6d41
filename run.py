"""ffn's main job: `python run.py [group=choice ...] [key=value ...]`, or `-m` for sweeps."""

import hydra
from omegaconf import DictConfig

from ffn import cli_errors
from ffn.config import register_configs

register_configs()
cli_errors.install()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # Imported here: torch and friends take seconds, which --help and a typo should not cost.
    from ffn.job import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
