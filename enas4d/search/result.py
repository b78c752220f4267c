"""What ``enas4d-search`` writes to ``result.json`` and what reads it: :class:`SearchResult`.

The search writes it (:meth:`SearchResult.write`, atomically, last); ``enas4d-export`` and anything
else read it through :func:`load_result` / :meth:`SearchResult.from_dict`, which check every key's
type and range with a one-line :class:`ResultError` naming the key.

Versions: files written before the result had a version (no ``version`` key) are version 1. They
are read when they hold what a reader needs (``subnet``, ``thresholds``, ``confidence``); keys added
later are then None. Version 2 (``RESULT_VERSION``) files must hold every key the search writes.
The JSON keys are those of version 1, plus ``version``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from enas4d.utils.files import read_json, write_json
from enas4d.utils.typed import FieldError, read, rule

__all__ = ["RESULT_VERSION", "READ_VERSIONS", "ResultError", "SearchResult", "StaticBest", "CrossFitted",
           "Calibration", "BNSettings", "SearchRun", "PredictorReport", "LatencyPrediction", "check_thresholds",
           "load_result"]

RESULT_VERSION = 2
READ_VERSIONS = (1, 2)
BUDGET_UNITS = ("macs", "seconds")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ResultError(ValueError):
    """A ``result.json`` that cannot be read (one line naming the key)."""


def check_thresholds(values: Any, error: type[Exception] = ResultError) -> list[float]:
    """``values`` as floats, each a number in [0, 1] (where every confidence measure lies).

    Raises ``error`` naming the entry for a string, a bool, NaN or a value outside [0, 1].
    """
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise error(f"thresholds={values!r} is not allowed; allowed values: a list of numbers in [0, 1]")
    out = []
    for i, v in enumerate(values):
        try:
            f = float(v) if not isinstance(v, (bool, str, bytes)) else math.nan
        except (TypeError, ValueError):
            f = math.nan
        if not 0.0 <= f <= 1.0:  # False for NaN
            raise error(f"thresholds[{i}]={v!r} is not allowed; allowed values: numbers in [0, 1]")
        out.append(f)
    return out


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _v2(nullable: bool = False) -> Any:
    """A key every version-2 result has (None when a version-1 file lacks it); null only if ``nullable``."""
    return rule(since=2, nullable=nullable, default=None)


@dataclass(frozen=True, kw_only=True)
class StaticBest:
    """The best static (single-exit) subnet within the budget."""

    subnet: dict[str, Any]  # only its last exit enabled
    val_accuracy: float
    macs: int  # per image
    latency: float | None = None  # predicted seconds per image (searches with a device profile only)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d if self.latency is not None else {k: v for k, v in d.items() if k != "latency"}


@dataclass(frozen=True, kw_only=True)
class CrossFitted:
    """The chosen architecture's thresholds fitted on one half of the validation images and scored on
    the other (both ways): its accuracy without the optimism of fitting on it, and its cost."""

    val_accuracy: float
    expected_macs: float | None = None  # a MAC budget
    expected_latency: float | None = None  # a latency budget: predicted seconds per image

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """How exact the threshold calibration was."""

    exact: bool
    gap_bound: float  # proven bound on the accuracy the threshold grid can lose


@dataclass(frozen=True, kw_only=True)
class BNSettings:
    """The BatchNorm re-estimation the scores depend on (export repeats it)."""

    images: int = rule(min=1)
    batch_size: int = rule(min=1)


@dataclass(frozen=True, kw_only=True)
class SearchRun:
    """How the search ran."""

    algorithm: str
    evaluations: int  # distinct architectures scored by the dynamic search
    static_evaluations: int
    distinct_architectures: int
    seed: int
    budget_above_largest: bool
    network_evaluations: int
    cache_hits: int
    cache: str
    network_seconds: float
    device: str | None = None  # absent in the first version-1 files
    controller: dict[str, Any] | None = None  # policy_gradient's controller settings (else null)
    seconds: float


@dataclass(frozen=True, kw_only=True)
class PredictorReport:
    """Kendall tau of the accuracy predictor on held-out architectures."""

    kendall_tau: float
    n_train: int
    n_test: int
    used_for_screening: bool


@dataclass(frozen=True, kw_only=True)
class LatencyPrediction:
    """The chosen policy's latency predicted by the device profile (seconds per image)."""

    device_profile: str | None = None
    device_profile_sha256: str | None = None
    batch_size: int = rule(min=1)
    expected: float = rule(check=(_positive, "seconds per image > 0"))  # at the search's exit rates
    # cumulative, per enabled exit, every image of the batch leaving there
    exit_latency: list[float] = rule(check=(lambda v: all(_positive(x) for x in v),
                                            "cumulative seconds per image > 0, one per enabled exit"))
    # its per-call part, paid once per batch up to the deepest exit taken (null: before the per-call model)
    exit_call_latency: list[float] | None = rule(
        default=None, check=(lambda v: all(math.isfinite(x) and x >= 0 for x in v), "seconds per image >= 0, or null"))
    call_fit: dict[str, Any] | None = None  # batch sizes of the per-call fit, and a note if a fallback
    budget: float | None = rule(check=(_positive, "seconds per image > 0, or null"))  # a latency budget, else null
    largest: float | None = None  # the largest subnet's last exit
    fit: dict[str, Any] | None = None  # the profile's fit quality at batch_size
    # the profile's machine, torch version, threads, clock and runtime
    machine: dict[str, Any] | None = None
    torch: str | None = None
    threads: int | None = None
    clock: str | None = None
    runtime: str | None = None


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """The content of ``result.json``: the chosen subnet, its exit thresholds and how it was found.

    Costs are per image; ``budget`` is in ``budget_unit`` (``"macs"``, or ``"seconds"`` for a latency
    budget predicted by ``latency.device_profile``). Lists with one entry per enabled exit:
    ``thresholds`` (the last 0.0), ``exit_stages`` (0-based stage), ``exit_rates``, ``exit_macs``
    (cumulative). Fields other than subnet, thresholds and confidence are None only in a version-1
    file that lacks them.
    """

    version: int = RESULT_VERSION
    subnet: dict[str, Any]
    thresholds: list[float] = rule(parse=check_thresholds)
    exit_stages: list[int] | None = _v2()
    confidence: str
    val_accuracy: float | None = _v2()
    expected_macs: float | None = _v2()
    budget: float | None = _v2()
    budget_unit: str | None = rule(since=2, nullable=False, default=None,
                                   check=(lambda u: u in BUDGET_UNITS, str(list(BUDGET_UNITS))))
    expected_latency: float | None = _v2(nullable=True)  # predicted seconds per image (with a profile)
    exit_rates: list[float] | None = _v2()
    exit_macs: list[int] | None = _v2()
    checkpoint: str | None = _v2()  # the checkpoint searched (absolute path)
    checkpoint_sha256: str | None = rule(  # of its bytes: export refuses other weights at the same path
        since=2, nullable=False, default=None,
        check=(lambda s: _SHA256.fullmatch(s) is not None,
               "a sha256 digest of 64 lowercase hex digits (as enas4d-search writes it)"))
    static_best: StaticBest | None = _v2(nullable=True)  # null: no static subnet fits
    cross_fitted: CrossFitted | None = _v2(nullable=True)  # null: too few images to split
    num_val_images: int | None = _v2()
    largest_macs: int | None = _v2()
    smallest_macs: int | None = _v2()
    calibration: Calibration | None = _v2()
    bn: BNSettings | None = _v2()
    search: SearchRun | None = _v2()
    predictor: PredictorReport | None = _v2(nullable=True)  # null: no hold-out report
    latency: LatencyPrediction | None = _v2(nullable=True)  # null: searched without a device profile

    @classmethod
    def from_dict(cls, data: Any, source: str = "result.json") -> SearchResult:
        """Read a ``result.json`` object; ResultError naming the key (and ``source``) when it is wrong."""
        if not isinstance(data, dict):
            raise ResultError(f"result: {source!r} is not a JSON object (got {type(data).__name__})")
        version = data.get("version", 1)
        if isinstance(version, bool) or version not in READ_VERSIONS:
            raise ResultError(f"result: {source!r} has version {version!r}; this enas4d reads {list(READ_VERSIONS)}")
        try:
            return read(cls, {**data, "version": version}, version=version)
        except FieldError as e:
            if e.missing:
                raise ResultError(f"result: {source!r} has no key {e.name!r}, which a version-{version} result "
                                  f"needs ({e.allowed})") from None
            value = repr(e.value)
            value = value if len(value) <= 80 else value[:77] + "..."
            raise ResultError(f"result: {e.name}={value} in {source!r} is not allowed; allowed values: "
                              f"{e.allowed}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (keys a version-1 file lacked are left out, or null where null is allowed)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and (f.metadata.get("since") or 0) > self.version and not f.metadata["nullable"]:
                continue  # absent from the version-1 file read (a nullable key is written as null)
            if hasattr(value, "to_dict"):
                value = value.to_dict()
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = value
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as standard JSON text (NaN refused)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` atomically."""
        write_json(path, self.to_dict())


def load_result(path: str | os.PathLike) -> SearchResult:
    """The :class:`SearchResult` in the file ``path``; ResultError (one line) when there is none or it is wrong."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ResultError(f"result: no result file at {path!r}")
    try:
        data = read_json(path)
    except ValueError as e:
        raise ResultError(f"result: {e}") from e
    return SearchResult.from_dict(data, path)
