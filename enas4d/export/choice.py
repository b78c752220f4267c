"""What an export reads from a search ``result.json``: the subnet, its exit thresholds, the search's
numbers worth keeping and its latency prediction (:class:`SearchChoice`), checked against the supernet."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from enas4d.export.early_exit import CONFIDENCES
from enas4d.export.errors import ExportError
from enas4d.models.supernet import MultiStageSupernet
from enas4d.search import result as search_result
from enas4d.search.result import ResultError, SearchResult
from enas4d.space import InvalidSubnetError, Subnet


@dataclass(frozen=True)
class SearchChoice:
    """The subnet and thresholds read from a search ``result.json``."""

    subnet: Subnet
    thresholds: list[float]  # one per enabled exit; the last is 0.0 (always accepts)
    confidence: str  # confidence measure the thresholds apply to
    info: dict[str, Any]  # search numbers worth keeping (val_accuracy, expected_macs, budget, ...)
    latency: dict[str, Any] | None = None  # the search's latency prediction (see latency_info), if any


def check_thresholds(values: Sequence[Any]) -> list[float]:
    """``values`` as floats, each a number in [0, 1] (where every confidence measure lies).

    Raises ExportError naming the entry for a string, a bool, NaN or a value outside [0, 1]
    (the rule of :func:`enas4d.search.result.check_thresholds`).
    """
    return search_result.check_thresholds(values, ExportError)


def exit_thresholds(subnet: Subnet, values: Sequence[float]) -> list[float]:
    """Thresholds of the enabled exits from one value per stage (K) or per enabled exit (E).

    Values of disabled exits are dropped; the last exit's value is replaced by 0.0 since the last
    exit always accepts. Raises ExportError for a wrong count or a value :func:`check_thresholds`
    refuses (every given value is checked, dropped ones too).
    """
    K, enabled = subnet.num_stages, [k for k, on in enumerate(subnet.exits) if on]
    vals = list(values) if isinstance(values, (list, tuple)) else None
    if vals is None or len(vals) not in (K, len(enabled)):
        got = len(vals) if vals is not None else type(values).__name__
        raise ExportError(f"thresholds: expected {K} values (one per stage) or {len(enabled)} (one per "
                          f"enabled exit), got {got}")
    nums = check_thresholds(vals)
    if len(nums) == K:
        nums = [nums[k] for k in enabled]
    return nums[:-1] + [0.0]


def load_result(path: str | os.PathLike) -> SearchResult:
    """The search result in the file ``path`` (:func:`enas4d.search.result.load_result`), ExportError if wrong."""
    try:
        return search_result.load_result(path)
    except ResultError as e:
        raise ExportError(str(e)) from None


def read_result(path: str | os.PathLike, net: MultiStageSupernet, res: SearchResult | None = None) -> SearchChoice:
    """Read a search ``result.json`` and check its subnet belongs to ``net``'s search space.

    ``res``: the file's content when already read by :func:`load_result` (the file is not read again).
    """
    path = os.fspath(path)
    if res is None:
        res = load_result(path)
    try:
        subnet = net.space.from_dict(res.subnet)
    except (InvalidSubnetError, KeyError, TypeError, ValueError) as e:
        raise ExportError(f"result: the subnet in {path!r} does not belong to the search space of supernet "
                          f"{net.name!r} ({net.num_stages} stages): {e}") from e
    if res.exit_stages is not None and res.exit_stages != [k for k, on in enumerate(subnet.exits) if on]:
        raise ExportError(f"result: exit_stages {res.exit_stages} disagree with the subnet's exits "
                          f"{list(subnet.exits)} in {path!r}")
    if res.confidence not in CONFIDENCES:
        raise ExportError(f"result: confidence {res.confidence!r} is not supported; allowed values: "
                          f"{list(CONFIDENCES)}")
    keep = ("val_accuracy", "expected_macs", "budget", "budget_unit", "expected_latency", "exit_rates", "exit_macs",
            "num_val_images", "bn")
    data = res.to_dict()
    return SearchChoice(subnet, exit_thresholds(subnet, res.thresholds), res.confidence,
                        {k: data[k] for k in keep if k in data}, latency_info(res, sum(subnet.exits), path))


def latency_info(res: SearchResult, num_exits: int, path: str = "result.json") -> dict[str, Any] | None:
    """The search's latency prediction (None when it searched without a device profile), as
    ``subnet.json`` records it under ``latency``.

    Keys: ``budget_unit`` (``"seconds"``: a latency budget; ``"macs"``: a MAC budget with a profile),
    ``budget`` (seconds per image, None for a MAC budget), ``expected`` (predicted average seconds per
    image at the search's exit rates), ``exit_latency`` (predicted cumulative seconds per image of
    each enabled exit when every image of the batch leaves there), ``exit_call_latency`` (its per-call
    part: the stages' per-call costs divided by the batch size, paid once per batch up to the deepest
    exit taken; None from a search before the per-call model), ``call_fit`` (the profiled batch sizes
    it was fitted from, and a note when that was a fallback), ``batch_size`` (the profile's batch size
    the prediction is for),
    ``device_profile`` and ``device_profile_sha256`` (the profile file and its content hash), and
    the profile's ``machine``, ``torch``, ``threads``, ``clock`` and ``runtime``. The block's values
    are checked when the result is read (:class:`~enas4d.search.result.LatencyPrediction`); here,
    ExportError when its per-exit lists do not have one entry per enabled exit of the subnet.
    """
    lat = res.latency
    if lat is None:
        return None

    def bad(field: str, allowed: str) -> ExportError:
        return ExportError(f"result: latency.{field}={getattr(lat, field)!r} in {path!r} is not allowed; "
                           f"allowed values: {allowed}")

    if len(lat.exit_latency) != num_exits:
        raise bad("exit_latency", f"{num_exits} cumulative seconds per image > 0, one per enabled exit")
    calls = lat.exit_call_latency
    if calls is not None and (len(calls) != num_exits or any(c > t for c, t in zip(calls, lat.exit_latency))):
        raise bad("exit_call_latency", f"{num_exits} seconds per image >= 0, each at most its exit_latency, or null")
    unit = res.budget_unit or ("seconds" if lat.budget is not None else "macs")
    return {"budget_unit": unit, "budget": lat.budget, "expected": lat.expected,
            "exit_latency": list(lat.exit_latency), "exit_call_latency": None if calls is None else list(calls),
            "call_fit": lat.call_fit, "batch_size": lat.batch_size,
            "device_profile": lat.device_profile, "device_profile_sha256": lat.device_profile_sha256,
            "machine": lat.machine, "torch": lat.torch, "threads": lat.threads, "clock": lat.clock,
            "runtime": lat.runtime}

