"""Validation of builder parameters: each bad value is a ConfigError naming the model, the value and the fix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mammoflow.errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def branches(value: Any, model: str, levels: int = 5) -> tuple[int, ...]:
    """A non-empty set of block levels in ``1..levels``, returned sorted (Yu et al.'s [5], [4,5], ..., [1..5])."""
    items = tuple(value) if isinstance(value, Iterable) and not isinstance(value, str) else (value,)
    if not items or not all(_is_int(b) and 1 <= b <= levels for b in items) or len(set(items)) != len(items):
        raise ConfigError(f"model {model!r}: branches must be distinct block levels in 1..{levels}, got {value!r}. "
                          "Fix: e.g. branches: [4, 5] or [1, 2, 3, 4, 5]")
    return tuple(sorted(items))


def units(value: Any, what: str, model: str, length: int | None = None) -> tuple[int, ...]:
    """A non-empty tuple of positive integers (layer widths, filter counts)."""
    items = tuple(value) if isinstance(value, Iterable) and not isinstance(value, str) else (value,)
    if not items or not all(_is_int(u) and u > 0 for u in items) or (length is not None and len(items) != length):
        size = f"{length} " if length is not None else ""
        raise ConfigError(f"model {model!r}: {what} must be a list of {size}positive integers, got {value!r}")
    return items


def rate(value: Any, what: str, model: str) -> float:
    """A dropout rate in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"model {model!r}: {what} must be a number in [0, 1), got {value!r}")
    return float(value)


def count(value: Any, what: str, model: str, minimum: int = 0) -> int:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"model {model!r}: {what} must be an integer >= {minimum}, got {value!r}")
    return value


def choice(value: Any, options: tuple[str, ...], what: str, model: str) -> str:
    if value not in options:
        raise ConfigError(f"model {model!r}: {what} must be one of {list(options)}, got {value!r}")
    return value
