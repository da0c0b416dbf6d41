"""The one exception users see for bad input: it names the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value that ffn refuses, reported in one line.

    `key` is the dotted config key a user types (``penalty.lam``), `value` what they gave and
    `allowed` a short phrase saying what would be accepted.
    """

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid value for {key}: {value!r} (allowed: {allowed})")
