"""Parsing of budgets: MACs (``2500000``, ``2.5e6``, ``2.5M``, also ``K``, ``G``, or ``0.5x``) or a
latency per image (``2.5ms``, ``2500us``, ``0.0025s``; needs a device profile, see search/latency.py)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["BUDGET_HELP", "BudgetError", "Budget", "parse_budget", "format_macs", "format_seconds", "format_cost"]

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGxX]?)\s*$")
_TIME_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|\u00b5s|\u03bcs|ns)\s*$")
_TIME_SUFFIX = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ns": 1e-9}
BUDGET_HELP = ("use average MACs per image, e.g. 2500000, 2.5e6, 2.5M, 900K, 1.2G, or 0.5x (of the largest subnet), "
               "or an average latency per image with device_profile=PATH, e.g. 2.5ms, 2500us, 0.0025s")


class BudgetError(ValueError):
    """A budget that is not a positive number of MACs."""


@dataclass(frozen=True)
class Budget:
    """A parsed budget: absolute MACs per image, a fraction of the largest subnet's cost, or seconds per image."""

    value: float  # MACs per image, the fraction when ``relative``, or seconds per image when ``latency``
    relative: bool  # True for the ``0.5x`` form
    latency: bool = False  # True for a time (``2.5ms``): average seconds per image on a profiled device

    @property
    def unit(self) -> str:
        """What :meth:`resolve` returns: ``"macs"`` or ``"seconds"`` (per image)."""
        return "seconds" if self.latency else "macs"

    def resolve(self, largest_macs: int) -> float:
        """Absolute MACs per image, given the largest subnet's cost (for the ``x`` form)."""
        return self.value * largest_macs if self.relative else self.value


def parse_budget(text: object) -> Budget:
    """Parse a budget from a config value (int, float or string); BudgetError on anything else."""
    if isinstance(text, bool) or text is None:
        raise BudgetError(f"budget: {text!r} is not a number; {BUDGET_HELP}")
    if isinstance(text, (int, float)):
        value, relative = float(text), False
    else:
        t = _TIME_PATTERN.match(str(text))
        if t is not None:
            value = float(t.group(1)) * _TIME_SUFFIX[t.group(2)]
            if not math.isfinite(value) or value <= 0:
                raise BudgetError(f"budget: {text!r} must be a positive, finite time; {BUDGET_HELP}")
            return Budget(value, False, latency=True)
        m = _PATTERN.match(str(text))
        if m is None:
            raise BudgetError(f"budget: {str(text)!r} is not a number; {BUDGET_HELP}")
        suffix = m.group(2).upper()
        relative = suffix == "X"
        value = float(m.group(1)) * (1.0 if relative else _SUFFIX[suffix])
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"budget: {text!r} must be a positive, finite number; {BUDGET_HELP}")
    return Budget(value, relative)


def format_seconds(seconds: float) -> str:
    """Human-readable time, e.g. ``2.50ms``, ``850us``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g}{unit}"
    return f"{seconds * 1e9:.3g}ns"


def format_cost(value: float, unit: str) -> str:
    """``value`` in ``unit`` (``"macs"`` or ``"seconds"``) made readable: ``2.5M`` MACs or ``2.5ms``."""
    return format_seconds(value) if unit == "seconds" else format_macs(value)


def format_macs(macs: float) -> str:
    """Human-readable MACs, e.g. ``2.50M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(macs) >= scale:
            return f"{macs / scale:.3g}{unit}"
    return f"{macs:.0f}"
