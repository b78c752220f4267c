"""result.json as a typed, versioned SearchResult: round trip, version-1 files, one-line errors naming the key."""

from __future__ import annotations

import json

import pytest

from enas4d.search.result import (RESULT_VERSION, BNSettings, Calibration, CrossFitted, LatencyPrediction,
                                  PredictorReport, ResultError, SearchResult, SearchRun, StaticBest, load_result)

SUBNET = {"resolution": 8, "width": [[4, 8]], "kernel": [[3, 3]], "depth": [[1, 1]], "expand": None,
          "exits": [True, True]}


def full_result(**changes) -> SearchResult:
    """A version-2 result of a latency-budget search, every block filled."""
    fields = dict(
        subnet=SUBNET, thresholds=[0.8, 0.0], exit_stages=[0, 1], confidence="max_softmax", val_accuracy=0.9,
        expected_macs=1.5e6, budget=3e-5, budget_unit="seconds", expected_latency=2.5e-5, exit_rates=[0.5, 0.5],
        exit_macs=[1_000_000, 2_000_000], checkpoint="/runs/last.ckpt", checkpoint_sha256="a" * 64,
        static_best=StaticBest(subnet={**SUBNET, "exits": [False, True]}, val_accuracy=0.85, macs=2_000_000,
                               latency=4e-5),
        cross_fitted=CrossFitted(val_accuracy=0.88, expected_latency=2.6e-5),
        num_val_images=40, largest_macs=9_000_000, smallest_macs=500_000,
        calibration=Calibration(exact=True, gap_bound=0.0), bn=BNSettings(images=48, batch_size=24),
        search=SearchRun(algorithm="evolution", evaluations=3, static_evaluations=2, distinct_architectures=4, seed=0,
                         budget_above_largest=False, network_evaluations=4, cache_hits=1, cache="/cache/x.jsonl",
                         network_seconds=1.25, device="cpu", controller=None, seconds=3.5),
        predictor=PredictorReport(kendall_tau=0.5, n_train=8, n_test=2, used_for_screening=False),
        latency=LatencyPrediction(device_profile="/p/profile.json", device_profile_sha256="b" * 64, batch_size=8,
                                  expected=2.5e-5, exit_latency=[1e-5, 4e-5], exit_call_latency=[1e-6, 2e-6],
                                  call_fit={"batch_sizes": [1, 8], "note": None}, budget=3e-5, largest=9e-5,
                                  fit=None, machine={"hostname": "vm"}, torch="2.x", threads=1, clock="cpu",
                                  runtime="torchscript"))
    return SearchResult(**{**fields, **changes})


def test_round_trip_through_dict_json_and_file(tmp_path):
    res = full_result()
    data = res.to_dict()
    assert data["version"] == RESULT_VERSION == 2
    assert SearchResult.from_dict(data) == res
    assert SearchResult.from_dict(json.loads(res.to_json())) == res
    res.write(tmp_path / "result.json")
    assert load_result(tmp_path / "result.json") == res
    # The JSON keys are those enas4d-search wrote before results had a version (plus "version").
    assert list(data) == ["version", "subnet", "thresholds", "exit_stages", "confidence", "val_accuracy",
                          "expected_macs", "budget", "budget_unit", "expected_latency", "exit_rates", "exit_macs",
                          "checkpoint", "checkpoint_sha256", "static_best", "cross_fitted", "num_val_images",
                          "largest_macs", "smallest_macs", "calibration", "bn", "search", "predictor", "latency"]
    assert data["cross_fitted"] == {"val_accuracy": 0.88, "expected_latency": 2.6e-5}
    # A MAC-budget search without a profile: no latency in static_best, nulls where allowed.
    mac = full_result(budget_unit="macs", budget=2e6, expected_latency=None, latency=None, predictor=None,
                      static_best=StaticBest(subnet=SUBNET, val_accuracy=0.8, macs=10),
                      cross_fitted=CrossFitted(val_accuracy=0.8, expected_macs=1.4e6))
    data = mac.to_dict()
    assert "latency" not in data["static_best"] and data["latency"] is None and data["expected_latency"] is None
    assert SearchResult.from_dict(data) == mac


def test_version_1_file_without_a_version_still_loads(tmp_path):
    """What export needs (subnet, thresholds, confidence) is enough; keys added later are None."""
    old = {"subnet": SUBNET, "thresholds": [0.5, 0.0], "confidence": "margin", "exit_stages": [0, 1],
           "checkpoint": "/runs/last.ckpt", "val_accuracy": 0.7, "bn": {"images": 1000, "batch_size": 200},
           "search": {"algorithm": "evolution", "evaluations": 40, "static_evaluations": 24,
                      "distinct_architectures": 50, "seed": 0, "budget_above_largest": False,
                      "network_evaluations": 50, "cache_hits": 0, "cache": "c.jsonl", "network_seconds": 9.5,
                      "seconds": 12.0}}  # before "device" and "controller"
    (tmp_path / "result.json").write_text(json.dumps(old))
    res = load_result(tmp_path / "result.json")
    assert res.version == 1 and res.confidence == "margin" and res.thresholds == [0.5, 0.0]
    assert res.bn == BNSettings(images=1000, batch_size=200) and res.search.device is None
    assert res.checkpoint_sha256 is None and res.latency is None and res.budget_unit is None
    again = res.to_dict()  # what the file had (and null for keys it lacked where null is allowed)
    assert again["search"] == {**old["search"], "device": None, "controller": None}
    assert {k: v for k, v in again.items() if v is not None and k != "search"} == {
        **{k: v for k, v in old.items() if k != "search"}, "version": 1}
    with pytest.raises(ResultError, match=r"^result: 'r.json' has no key 'confidence', which a version-1 result "
                                          r"needs") as e:
        SearchResult.from_dict({k: v for k, v in old.items() if k != "confidence"}, "r.json")
    assert "\n" not in str(e.value)
    # Version 2 files must have every key the search writes.
    new = full_result().to_dict()
    del new["bn"]
    with pytest.raises(ResultError, match=r"^result: 'r.json' has no key 'bn', which a version-2 result needs"):
        SearchResult.from_dict(new, "r.json")
    with pytest.raises(ResultError, match=r"^result: 'r.json' has version 3; this enas4d reads \[1, 2\]$"):
        SearchResult.from_dict({**old, "version": 3}, "r.json")


@pytest.mark.parametrize("key, value, message", [
    ("val_accuracy", "high", r"^result: val_accuracy='high' in 'r.json' is not allowed; allowed values: numbers"),
    ("val_accuracy", None, r"^result: val_accuracy=None in 'r.json' is not allowed; allowed values: numbers"),
    ("exit_macs", [1.5, 2], r"^result: exit_macs=\[1.5, 2\] in 'r.json' is not allowed; allowed values: lists of "
                            "integers"),
    ("subnet", [1, 2], r"^result: subnet=\[1, 2\] in 'r.json' is not allowed; allowed values: mappings"),
    ("confidence", 3, r"^result: confidence=3 in 'r.json' is not allowed; allowed values: strings"),
    ("budget_unit", "joules", r"^result: budget_unit='joules' in 'r.json' is not allowed; allowed values: "
                              r"\['macs', 'seconds'\]"),
    ("bn", {"images": 1.5, "batch_size": 24}, r"^result: bn.images=1.5 in 'r.json' is not allowed; allowed values: "
                                              "integers >= 1"),
    ("search", 7, r"^result: search=7 in 'r.json' is not allowed; allowed values: mappings of algorithm"),
    ("static_best", {"subnet": SUBNET, "val_accuracy": True, "macs": 1},
     r"^result: static_best.val_accuracy=True in 'r.json' is not allowed"),
    ("checkpoint_sha256", "abc", r"^result: checkpoint_sha256='abc' in 'r.json' is not allowed; allowed values: a "
                                 "sha256 digest"),
    ("thresholds", [0.5, "0.1"], r"^thresholds\[1\]='0.1' is not allowed; allowed values: numbers in \[0, 1\]$"),
])
def test_wrong_typed_field_is_a_one_line_error_naming_it(key, value, message):
    data = full_result().to_dict() | {key: value}
    with pytest.raises(ResultError, match=message) as e:
        SearchResult.from_dict(data, "r.json")
    assert "\n" not in str(e.value)


def test_latency_block_values_are_checked_where_the_result_is_read():
    lat = full_result().to_dict()["latency"]
    for field, value, allowed in (("expected", -1.0, "seconds per image > 0"), ("batch_size", 0, "integers >= 1"),
                                  ("exit_latency", [1e-5, 0.0], "cumulative seconds per image > 0"),
                                  ("budget", 0, "seconds per image > 0, or null")):
        with pytest.raises(ResultError, match=rf"^result: latency.{field}=.* in 'r.json' is not allowed; allowed "
                                              rf"values: {allowed}"):
            SearchResult.from_dict(full_result().to_dict() | {"latency": {**lat, field: value}}, "r.json")


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(ResultError, match="^result: no result file at"):
        load_result(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ResultError, match=r"^result: '.*bad.json' is not readable JSON") as e:
        load_result(tmp_path / "bad.json")
    assert "\n" not in str(e.value)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ResultError, match=r"^result: '.*list.json' is not a JSON object \(got list\)"):
        load_result(tmp_path / "list.json")
