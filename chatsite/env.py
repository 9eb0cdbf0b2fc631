"""Tiny helpers that read settings from the environment.

An unset or empty variable gives the default. A value that cannot be used raises
``ImproperlyConfigured`` naming the variable and the value, so a typo fails at start-up,
not on the first request that needs the setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import overload

from django.core.exceptions import ImproperlyConfigured

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _raw(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _bad(name: str, value: str, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name}={value!r} is not valid: expected {expected}.")


@overload
def env_str(name: str, default: str) -> str: ...
@overload
def env_str(name: str, default: None = None) -> str | None: ...
def env_str(name: str, default: str | None = None) -> str | None:
    value = _raw(name)
    return default if value is None else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise _bad(name, value, "one of 1/0, true/false, yes/no, on/off")


@overload
def env_int(name: str, default: int, *, minimum: int | None = ..., maximum: int | None = ...) -> int: ...
@overload
def env_int(
    name: str, default: None, *, minimum: int | None = ..., maximum: int | None = ...
) -> int | None: ...
def env_int(
    name: str, default: int | None, *, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    value = _raw(name)
    if value is None:
        return default
    if minimum is not None and maximum is not None:
        expected = f"a whole number from {minimum} to {maximum}"
    elif minimum is not None:
        expected = f"a whole number >= {minimum}"
    elif maximum is not None:
        expected = f"a whole number <= {maximum}"
    else:
        expected = "a whole number"
    try:
        number = int(value)
    except ValueError:
        raise _bad(name, value, expected) from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise _bad(name, value, expected)
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; blanks around items and empty items are dropped."""
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


@overload
def env_path(name: str, default: Path) -> Path: ...
@overload
def env_path(name: str, default: None = None) -> Path | None: ...
def env_path(name: str, default: Path | None = None) -> Path | None:
    """A filesystem path; ``~`` is expanded and a relative path is taken from the current folder."""
    value = _raw(name)
    if value is None:
        return default
    if "\x00" in value:
        raise _bad(name, value, "a filesystem path")
    return Path(value).expanduser().absolute()
