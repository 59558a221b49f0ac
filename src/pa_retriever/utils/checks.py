"""Settings checked where they are read: a bad value fails at once, naming the setting and its allowed range."""

from __future__ import annotations

import math
from typing import Any


class SettingError(ValueError):
    """A setting outside its allowed range; the message starts with `name=value`."""


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False, why: str = "") -> None:
    """`value` must be a finite number (an integer if asked) in the range; open ends exclude their bound."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        left = "" if low is None else f"{'(' if low_open else '['}{low}"
        right = "" if high is None else f"{high}{')' if high_open else ']'}"
        bounds = (f" in {left or '(-inf'}, {right or 'inf)'}" if low is not None or high is not None else "")
        raise SettingError(f"{name}={value!r} is out of range: it must be {kind}{bounds}" + (f" ({why})" if why else ""))


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise SettingError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def check_known_keys(name: str, given: Any, known: Any) -> None:
    """Every key of the mapping `name` is one of `known` (a typo would otherwise be dropped or fail as a TypeError)."""
    if unknown := set(given) - set(known):
        raise SettingError(f"{name}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")


def check_count_or_auto(name: str, value: Any, low: int = 1) -> None:
    """`auto`, or an integer of at least `low`."""
    if value != "auto":
        check_number(name, value, low=low, integer=True, why="or auto")
