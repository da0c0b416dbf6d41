"""ffn's main job: `python run.py [group=choice ...] [key=value ...]`, or `-m` for sweeps."""

from ffn import collector, interrupt

collector.pause()  # no cycle collection while importing: the first run freezes what was made
interrupt.catch_early()  # Ctrl-C or SIGTERM from here on: one line and 130/143, no traceback

# After the signals: these imports take a second, the job's (torch) several
import os  # noqa: E402
import sys  # noqa: E402

if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: one clock, one folder, one writer
    from ffn.distributed import join_before_hydra

    join_before_hydra(sys.argv)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ffn import cli_errors  # noqa: E402
from ffn.compose import compose_a_run_once  # noqa: E402
from ffn.config import register_configs  # noqa: E402

register_configs()
cli_errors.install()
compose_a_run_once()  # Hydra composes a plain run's config twice; once is enough


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # Imported here: torch and friends take seconds, which --help and a typo should not cost.
    from ffn.job import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
    # The process ends here: everything it made is freed by the exit anyway. Frozen, the
    # interpreter's final garbage collections skip torch's, Hydra's and the run's millions of
    # objects (measured: 1-2 s of a 5 s run on a 2-core machine); and `python run.py` skips the
    # interpreter's teardown, once atexit handlers (logging's flush included) have run.
    collector.end_process(__file__)
