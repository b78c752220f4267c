"""Search: the subnet and exit thresholds of best validation accuracy for a MAC budget.

- :mod:`~enas4d.search.calibrate`: exact threshold calibration from one cached validation pass.
- :mod:`~enas4d.search.evaluator`: one-pass candidate evaluation and its JSON-lines cache.
- :mod:`~enas4d.search.evolution`: evolution and random search over architectures.
- :mod:`~enas4d.search.policy_gradient`: the S2DNAS searcher, an LSTM controller trained by REINFORCE.
- :mod:`~enas4d.search.predictor`: optional MLP accuracy predictor (pre-screening, Kendall tau).
- :mod:`~enas4d.search.problems`: the two problems searched, early-exit (dynamic) and single-exit (static) subnets.
- :mod:`~enas4d.search.config`: its settings, typed and checked (:class:`~enas4d.search.config.SearchConfig`).
- :mod:`~enas4d.search.setup`: what a search builds first (supernet and data, budget, evaluator and cache).
- :mod:`~enas4d.search.run`: the search below the command line, preparation to ``result.json`` and Pareto files.
- :mod:`~enas4d.search.result`: what it writes to ``result.json`` (:class:`~enas4d.search.result.SearchResult`).
- :mod:`~enas4d.search.cli`: the ``enas4d-search`` Hydra app (:func:`~enas4d.search.cli.search`).
"""

from enas4d.search.budget import Budget, BudgetError, parse_budget
# ``calibrate`` (the function) is not re-exported here: it would shadow the submodule of that name.
from enas4d.search.calibrate import ExitTable, Policy, confidence, simulate, tradeoff
from enas4d.search.evaluator import CandidateEvaluator, EvalCache, SearchError
from enas4d.search.evolution import EvolutionConfig, run_search
from enas4d.search.policy_gradient import ControllerConfig
from enas4d.search.config import SearchConfig
from enas4d.search.result import SearchResult, load_result

__all__ = ["Budget", "BudgetError", "parse_budget", "ExitTable", "Policy", "confidence", "simulate",
           "tradeoff", "CandidateEvaluator", "EvalCache", "SearchError", "EvolutionConfig", "run_search",
           "ControllerConfig", "SearchConfig", "SearchResult", "load_result"]
