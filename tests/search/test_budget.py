"""Budget parsing."""

import pytest

from enas4d.search.budget import BudgetError, format_macs, parse_budget


@pytest.mark.parametrize("text,value", [(2500000, 2.5e6), (2.5e6, 2.5e6), ("2500000", 2.5e6), ("2.5e6", 2.5e6),
                                        ("2.5M", 2.5e6), ("2.5m", 2.5e6), ("900K", 9e5), ("1.2G", 1.2e9),
                                        (" 3 M ", 3e6)])
def test_absolute_budgets(text, value):
    b = parse_budget(text)
    assert not b.relative and b.resolve(10**9) == pytest.approx(value)


def test_relative_budget_is_a_fraction_of_the_largest():
    b = parse_budget("0.5x")
    assert b.relative and b.resolve(8_000_000) == 4_000_000


@pytest.mark.parametrize("text", ["abc", "2.5Q", "", "-1M", "0", None, True, float("nan"), float("inf"), "1e400"])
def test_bad_budgets_fail_with_one_line(text):
    with pytest.raises(BudgetError, match="budget") as e:
        parse_budget(text)
    assert "\n" not in str(e.value)


def test_format_macs():
    assert format_macs(2_500_000) == "2.5M" and format_macs(999) == "999" and format_macs(1.5e9) == "1.5G"
