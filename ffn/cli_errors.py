"""One line for a bad command line: Hydra's composition errors, restated like ConfigError's.

Hydra prints composition errors over several lines with its own hints; ffn's users get
``ffn: error: invalid value for KEY: VALUE (allowed: ...)`` and exit status 2 instead. Anything
that is not a configuration error keeps Hydra's own report (HYDRA_FULL_ERROR=1 still works).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import hydra._internal.utils as hydra_utils
from hydra.errors import CompactHydraException, MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from ffn import launch_env
from ffn.errors import ConfigError

EXIT_BAD_CONFIG = 2
OPEN_GROUPS = ("optimizer", "schedule")  # as open as their _target_ (ffn/targets.py)

# Hydra plugin config groups -> the extra of pyproject.toml that installs their choices.
PLUGIN_EXTRAS = {
    "hydra/launcher": {
        "joblib": "parallel",
        "slurm": "slurm",
        "submitit_slurm": "slurm",
        "submitit_local": "slurm",
    },
    "hydra/sweeper": {"optuna": "optuna"},
    "hydra/sweeper/sampler": {"*": "optuna"},
}
_CANNOT_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)

_TYPE_WORDS = {
    "Float": "a number",
    "Integer": "an integer",
    "Boolean": "true or false",
    "String": "a string",
}


def describe(error: BaseException) -> str | None:
    """The one-line message for a configuration error, or None if it is something else."""
    if isinstance(error, ConfigError):
        return str(error)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, choice = str(error.missing_cfg_file).rpartition("/")
        if group:
            return str(ConfigError(group.replace("/", "."), choice, _allowed_choices(error)))
        return f"no config named {choice!r}"
    if isinstance(error, (FileExistsError, NotADirectoryError)) and error.filename:
        # Hydra could not make the run folder: a file stands where it (or a parent) should be.
        allowed = "a folder ffn can create (a file is in the way)"
        return str(ConfigError("hydra.run.dir/hydra.sweep.dir", str(error.filename), allowed))
    if isinstance(error, OSError) and error.errno in _CANNOT_WRITE:
        # A read-only, full or forbidden output folder, before any job ran
        return f"cannot write {error.filename or 'the output folder'}: {error.strerror}"
    cause = error.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        parent = cause.parent_node
        keys = ", ".join(sorted(str(k) for k in parent)) if parent is not None else "?"
        section = cause.full_key.rpartition(".")[0] or "the top level"
        if section in OPEN_GROUPS:  # any keyword of the target, added with +
            keys += f", or a keyword of its _target_ added with +{cause.full_key}=..."
        return f"invalid key {cause.full_key}: not in {section} (allowed: {keys})"
    if isinstance(cause, ValidationError) and cause.full_key:
        first = cause.msg.splitlines()[0] if cause.msg else ""
        converted = re.search(r"converted to (\w+)", first)
        if converted:
            allowed = _TYPE_WORDS.get(converted.group(1), converted.group(1))
        elif "is not a ListConfig" in first:
            allowed = "a list, e.g. [64, 64]"
        else:
            allowed = first
        return str(ConfigError(cause.full_key, cause.value, allowed))
    if isinstance(error, CompactHydraException):
        # Any other composition error: Hydra's text, joined into one line.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return " ".join(lines)
    return None


def install_hint(group: str, choice: str) -> str | None:
    """`pip install -e ".[parallel]"` for a plugin choice whose extra is not installed."""
    extras = PLUGIN_EXTRAS.get(group, {})
    extra = extras.get(choice) or extras.get("*")
    return f'the {extra} extra: pip install -e ".[{extra}]"' if extra else None


def _allowed_choices(error: MissingConfigException) -> str:
    group, _, choice = str(error.missing_cfg_file).rpartition("/")
    options = ", ".join(error.options or [])
    hint = install_hint(group, choice)
    if hint:
        return f"one of {options}, or install {hint}" if options else f"install {hint}"
    return f"one of {options}" if options else f"no {group} choices are installed"


def report_and_exit(line: str) -> NoReturn:
    if launch_env.is_writer():  # under torchrun every rank composes; rank 0 says it once
        print(f"ffn: error: {line}", file=sys.stderr)
    sys.exit(EXIT_BAD_CONFIG)


def install() -> None:
    """Route Hydra's error reporting through `describe`."""
    original = hydra_utils.run_and_report
    if getattr(original, "_ffn", False):
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            if "ffn.sweep" in sys.modules:  # a sweeper raised: summarise what ran first
                sys.modules["ffn.sweep"].end_after_sweeper_error(error)
            line = describe(error)
            if line is None:
                return original(lambda e=error: _reraise(e))
            report_and_exit(line)

    run_and_report._ffn = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report


def _reraise(error: BaseException) -> NoReturn:
    raise error
