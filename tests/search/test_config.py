"""conf/search.yaml read once into a typed SearchConfig, checked with one-line errors naming the key."""

from __future__ import annotations

import pytest

from enas4d.search.budget import BudgetError
from enas4d.search.config import BNConfig, PredictorConfig, SearchConfig
from enas4d.search.evaluator import SearchError
from enas4d.search.latency import LatencyError
from enas4d.search.policy_gradient import ControllerConfig


def test_settings_are_typed_once(make_cfg):
    cfg = SearchConfig.from_cfg(make_cfg("ckpt=x.ckpt", "budget=0.5x", "parents=1", "calibration_grid=null",
                                         "+data_overrides.num_workers=2"))
    assert cfg.ckpt == "x.ckpt" and cfg.budget_spec.relative and cfg.budget_spec.value == 0.5
    assert isinstance(cfg.bn, BNConfig) and cfg.bn == BNConfig(images=48, batch_size=24)
    assert isinstance(cfg.predictor, PredictorConfig) and cfg.predictor.holdout == 0.0
    assert cfg.controller == ControllerConfig()  # conf/search.yaml's controller is the dataclass's default
    assert isinstance(cfg.parents, float) and cfg.parents == 1.0  # an int given for a number
    assert cfg.calibration_grid is None and cfg.threads == 1 and cfg.data_overrides == {"num_workers": 2}
    evo = cfg.evolution(cfg.static_evaluations, stream=1)
    assert (evo.evaluations, evo.stream, evo.population, evo.parents) == (2, 1, 2, 1.0)


@pytest.mark.parametrize("override, err, match", [
    ("predictor.holdout=1.5", SearchError, r"^predictor.holdout: 1.5 not allowed; allowed values: numbers in \[0, 1\)"),
    ("confidence=top5", SearchError, r"^confidence: 'top5' not allowed; allowed values: \['max_softmax', 'margin', "
                                     r"'entropy'\]$"),
    ("calibration_grid=1", SearchError, r"^calibration_grid: 1 is too small; allowed values: integers >= 2 or null$"),
    ("predictor.enabled=yes", SearchError, r"^predictor.enabled: 'yes' is not a boolean; allowed values: true, false$"),
    ("cache_dir=null", SearchError, r"^cache_dir: None is not a string; allowed values: strings$"),
    ("controller.hidden=0", SearchError, r"^controller.hidden: must be >= 1"),
    ("parents=2", SearchError, r"^parents: must be in \(0, 1\]"),
    ("budget=lots", BudgetError, r"^budget: 'lots' is not a number"),
    ("budget=2.5ms", LatencyError, r"^device_profile: missing; budget=2.5ms is a latency"),
])
def test_a_bad_value_is_refused_naming_its_key(make_cfg, override, err, match):
    with pytest.raises(err, match=match) as e:
        SearchConfig.from_cfg(make_cfg("ckpt=x.ckpt", "budget=2.5M", override))
    assert "\n" not in str(e.value)
