"""Parsing of MAC budgets: ``2500000``, ``2.5e6``, ``2.5M`` (also ``K``, ``G``) or ``0.5x``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["BUDGET_HELP", "BudgetError", "Budget", "parse_budget", "format_macs"]

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGxX]?)\s*$")
BUDGET_HELP = "use average MACs per image, e.g. 2500000, 2.5e6, 2.5M, 900K, 1.2G, or 0.5x (of the largest subnet)"


class BudgetError(ValueError):
    """A budget that is not a positive number of MACs."""


@dataclass(frozen=True)
class Budget:
    """A parsed budget: absolute MACs per image, or a fraction of the largest subnet's cost."""

    value: float  # MACs per image, or the fraction when ``relative``
    relative: bool  # True for the ``0.5x`` form

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
        m = _PATTERN.match(str(text))
        if m is None:
            raise BudgetError(f"budget: {str(text)!r} is not a number; {BUDGET_HELP}")
        suffix = m.group(2).upper()
        relative = suffix == "X"
        value = float(m.group(1)) * (1.0 if relative else _SUFFIX[suffix])
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"budget: {text!r} must be a positive, finite number; {BUDGET_HELP}")
    return Budget(value, relative)


def format_macs(macs: float) -> str:
    """Human-readable MACs, e.g. ``2.50M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(macs) >= scale:
            return f"{macs / scale:.3g}{unit}"
    return f"{macs:.0f}"
