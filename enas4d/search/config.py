"""The settings of ``enas4d-search``, typed and checked once: :class:`SearchConfig`.

conf/search.yaml is the one place of their defaults and meaning; :meth:`SearchConfig.from_cfg`
turns the composed Hydra config into this dataclass, checking every key (a one-line error naming
the key and its allowed values), and the search below the command line takes only the dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from enas4d.export.early_exit import CONFIDENCES
from enas4d.search.budget import BUDGET_HELP, Budget, BudgetError, parse_budget
from enas4d.search.evaluator import SearchError
from enas4d.search.evolution import EvolutionConfig
from enas4d.search.latency import LatencyError
from enas4d.search.policy_gradient import ControllerConfig
from enas4d.utils.device import resolve_device
from enas4d.utils.typed import read, rule

__all__ = ["BNConfig", "PredictorConfig", "SearchConfig", "NO_PROFILE"]

NO_PROFILE = ("device_profile: missing; budget={budget} is a latency, which needs a profile of this supernet on "
              "the target machine: run enas4d-profile ckpt=... and pass device_profile=PATH/profile.json")


def _device(value: Any) -> str:
    """``device``, checked by the one resolver (SearchError naming it)."""
    resolve_device(value, SearchError)
    return str(value)


@dataclass(frozen=True)
class BNConfig:
    """BatchNorm re-estimation subset of the training split (``bn``)."""

    images: int = rule(min=1)
    batch_size: int = rule(min=1)


@dataclass(frozen=True)
class PredictorConfig:
    """The optional accuracy predictor (``predictor``)."""

    enabled: bool
    screen_factor: int = rule(min=1)
    min_train: int = rule(min=2)
    hidden: int = rule(min=1)
    epochs: int = rule(min=1)
    lr: float = rule()
    holdout: float = rule(check=(lambda h: 0 <= h < 1, "numbers in [0, 1) (0 = no report)"))


@dataclass(frozen=True)
class SearchConfig:
    """conf/search.yaml, typed (see there for each key)."""

    ckpt: str
    budget: Any  # as given (2.5M, 0.5x, 2.5ms, a number): see budget_spec
    device_profile: str | None
    latency_batch_size: int | None = rule(min=1)
    algorithm: str
    evaluations: int = rule(min=1)
    static_evaluations: int = rule(min=0)
    population: int = rule(min=2)
    parents: float
    mutation_prob: float
    crossover_prob: float
    seed_largest: bool
    max_tries: int = rule(min=1)
    seed: int
    controller: ControllerConfig
    confidence: str = rule(check=(lambda c: c in CONFIDENCES, str(list(CONFIDENCES))))
    bn: BNConfig
    eval_batch_size: int = rule(min=1)
    calibration_grid: int | None = rule(min=2)
    front_levels: int = rule(min=1)
    cache_dir: str
    predictor: PredictorConfig
    data_overrides: dict[str, Any] | None  # null: none
    progress: bool
    device: str = rule(parse=lambda v: _device(v))
    threads: int | None = rule(min=1)

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> SearchConfig:
        """The settings of a composed conf/search.yaml, checked: SearchError, BudgetError or LatencyError
        (one line naming the key and what is allowed) on the first wrong one."""
        if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt is None or not str(cfg.ckpt).strip():
            raise SearchError("ckpt: missing; give the training checkpoint to search, "
                              "e.g. ckpt=outputs/demo/train/checkpoints/last.ckpt")
        if OmegaConf.is_missing(cfg, "budget") or cfg.budget is None:
            raise BudgetError(f"budget: missing; {BUDGET_HELP}")
        profile = cfg.get("device_profile")
        if profile is not None and (not isinstance(profile, str) or not profile.strip()):
            raise LatencyError(f"device_profile: {profile!r} not allowed; allowed values: the path of an "
                               "enas4d-profile profile.json, or null")
        data = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(data.get("ckpt"), str):  # ckpt=123: a file name all the same
            data["ckpt"] = str(data["ckpt"])
        try:
            config = read(cls, data)
        except ValueError as e:  # FieldError, or controller's own checks
            raise SearchError(str(e)) from None
        spec = parse_budget(config.budget)
        if spec.latency and config.device_profile is None:  # before the (slow) checkpoint load
            raise LatencyError(NO_PROFILE.format(budget=config.budget))
        try:
            config.evolution(config.evaluations)
        except ValueError as e:
            raise SearchError(str(e)) from None
        return config

    @property
    def budget_spec(self) -> Budget:
        """The budget, parsed (checked by :meth:`from_cfg`)."""
        return parse_budget(self.budget)

    def evolution(self, evaluations: int, stream: int = 0) -> EvolutionConfig:
        """The outer search's settings for ``evaluations`` architectures (ValueError names the bad key)."""
        return EvolutionConfig(algorithm=self.algorithm, evaluations=evaluations, population=self.population,
                               parents=self.parents, mutation_prob=self.mutation_prob,
                               crossover_prob=self.crossover_prob, seed=self.seed, max_tries=self.max_tries,
                               stream=stream, seed_largest=self.seed_largest)
