"""The policy-gradient searcher: valid samples, REINFORCE learning, counting, determinism, end to end."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console

import enas4d
from enas4d.search.evolution import EvolutionConfig, run_search
from enas4d.search.policy_gradient import (Controller, ControllerConfig, Reinforce, build_subnet, reward,
                                           searchable_genes)
from enas4d.space import SearchSpace

from .test_cli import REQUIRED
from .test_evolution import ToyProblem, tight_budget


def small_space() -> SearchSpace:
    """Three searchable genes (3, 2 and 2 candidates), one fixed gene."""
    return SearchSpace(widths=(((1, 2, 3),), ((1, 2),)), kernels=(((3,),), ((3, 5),)), depths=(((1,),), ((1,),)),
                       expands=None, resolutions=(8,))


@pytest.fixture(scope="module")
def net():
    return enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=3, in_chans=3)


def trained(sizes: tuple[int, ...], pick: int, updates: int, seed: int = 0) -> Controller:
    """A controller after ``updates`` REINFORCE steps on reward 1 when gene 0 takes choice ``pick``, else 0."""
    ctrl = Controller(sizes, 16, torch.Generator().manual_seed(seed))
    learner = Reinforce(ctrl, ControllerConfig(hidden=16, lr=0.05, entropy_weight=0.0, samples=8))
    draws = 0
    for _ in range(updates):
        batch = []
        for _ in range(8):
            batch.append(ctrl.sample(torch.Generator().manual_seed(1000 * seed + draws)))
            draws += 1
        learner.update(batch, [1.0 if a[0] == pick else 0.0 for a in batch])
    return ctrl


def first_gene_probs(ctrl: Controller) -> np.ndarray:
    """Probabilities of gene 0's choices (it has no previous choice to depend on)."""
    with torch.no_grad():
        return ctrl.log_probs(torch.zeros(1, len(ctrl.sizes), dtype=torch.long))[0][0].exp().numpy()


@pytest.mark.parametrize("family", ["resnet_cifar", "mbv3_cifar"])
def test_sampled_genomes_are_valid_subnets(family):
    net = enas4d.create_supernet(family, num_classes=10, num_stages=3, in_chans=3)
    space = net.space
    idx = searchable_genes(space)
    genes = space.genes
    assert idx and all(genes[i].field != "exits" for i in idx)
    ctrl = Controller([len(genes[i].choices) for i in idx], 64, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(20):
        actions = ctrl.sample(torch.Generator().manual_seed(i))
        assert len(actions) == len(idx) and all(0 <= a < len(genes[j].choices) for a, j in zip(actions, idx))
        s = build_subnet(space, actions)
        assert space.validate(s) is s and all(s.exits)
        assert [space.encode(s)[j] for j in idx] == [a / (len(genes[j].choices) - 1) for a, j in zip(actions, idx)]
        seen.add(s.to_json())
    assert len(seen) == 20  # a fresh controller samples (uniformly) different architectures
    # Untrained output layers are zero: every gene is uniform, so log p = -sum log(candidates).
    logp, entropy = ctrl.score(torch.tensor([actions]))
    expected = sum(np.log(len(genes[j].choices)) for j in idx)
    assert float(-logp.detach()) == pytest.approx(expected) and float(entropy.detach()) == pytest.approx(expected)


def test_sampling_follows_the_scored_distribution():
    """What ``sample`` draws step by step matches ``log_probs`` (teacher forcing) after training."""
    ctrl = trained((3, 2, 2), pick=2, updates=10)
    counts = np.zeros(3)
    pairs = np.zeros((3, 2))
    for i in range(1500):
        a = ctrl.sample(torch.Generator().manual_seed(10**6 + i))
        counts[a[0]] += 1
        pairs[a[0], a[1]] += 1
    assert np.abs(counts / counts.sum() - first_gene_probs(ctrl)).max() < 0.04
    with torch.no_grad():  # gene 1 given gene 0 = 2
        cond = ctrl.log_probs(torch.tensor([[2, 0, 0]]))[1][0].exp().numpy()
    assert np.abs(pairs[2] / pairs[2].sum() - cond).max() < 0.05


@pytest.mark.parametrize("pick", [0, 2])
def test_reinforce_moves_probability_toward_the_rewarded_choice(pick):
    before = first_gene_probs(Controller((3, 2, 2), 16, torch.Generator().manual_seed(0)))
    assert before == pytest.approx(np.full(3, 1 / 3))
    after = first_gene_probs(trained((3, 2, 2), pick=pick, updates=25))
    assert after[pick] > 0.8
    assert after.sum() == pytest.approx(1.0)


def test_reward_is_accuracy_times_cost_ratio_power():
    assert reward(0.8, 50.0, 100.0, -0.07) == pytest.approx(0.8 * 2 ** 0.07)
    assert reward(0.8, 100.0, 100.0, -0.07) == pytest.approx(0.8)
    assert reward(0.8, 50.0, 100.0, 0.0) == pytest.approx(0.8)


def test_policy_gradient_counts_feasible_distinct_evaluations(net):
    """Same count rule as evolution/random; infeasible samples are never scored (ToyProblem asserts)."""
    prob = ToyProblem(net, tight_budget(net))
    cfg = EvolutionConfig(algorithm="policy_gradient", evaluations=14, seed=3)
    out = run_search(net.space, prob, cfg, log=lambda m: None)
    assert len(out) == 14 == prob.calls
    assert len({s.arch.to_json() for s in out}) == 14
    assert all(prob.feasible(s.arch) and all(s.arch.exits) for s in out)
    assert [s.step for s in out] == list(range(14))


def test_policy_gradient_same_seed_same_search(net):
    budget = tight_budget(net)
    ctrl = ControllerConfig(samples=3)

    def archs(seed: int) -> list:
        cfg = EvolutionConfig(algorithm="policy_gradient", evaluations=10, seed=seed)
        return [s.arch for s in run_search(net.space, ToyProblem(net, budget), cfg, controller=ctrl)]

    assert archs(1) == archs(1) != archs(2)


def test_policy_gradient_learns_a_smooth_objective(net):
    """Averaged over seeds, its last evaluations score higher than its first (uniform) ones."""
    budget = tight_budget(net)
    first, last = [], []
    for seed in range(6):
        cfg = EvolutionConfig(algorithm="policy_gradient", evaluations=48, seed=seed)
        fit = [s.fitness for s in run_search(net.space, ToyProblem(net, budget), cfg, log=lambda m: None)]
        first.append(np.mean(fit[:12]))
        last.append(np.mean(fit[-12:]))
    assert np.mean(last) > np.mean(first) + 0.02


def test_infeasible_or_exhausted_space_stops_instead_of_looping():
    space = small_space()  # 12 architectures

    class P:
        budget = 1.0

        def __init__(self, feasible):
            self.ok, self.calls = feasible, 0

        def feasible(self, arch):
            return self.ok(arch)

        def score(self, arch):
            assert self.ok(arch)
            self.calls += 1
            return float(arch.width[0][0]), 1.0

    for ok, most in ((lambda a: True, 12), (lambda a: a.width[0][0] == 1, 4), (lambda a: False, 0)):
        msgs: list[str] = []
        prob = P(ok)
        out = run_search(space, prob, EvolutionConfig(algorithm="policy_gradient", evaluations=20, max_tries=40),
                         log=msgs.append)
        assert msgs and "stopping" in msgs[0]
        assert len(out) == prob.calls <= most and len({s.arch for s in out}) == len(out)


def test_controller_config_errors_name_the_field():
    for field, value in (("hidden", 0), ("lr", 0.0), ("entropy_weight", -1.0), ("baseline_decay", 1.0),
                         ("cost_exponent", 0.5), ("samples", 0)):
        with pytest.raises(ValueError, match=f"controller.{field}"):
            ControllerConfig(**{field: value})


def test_search_end_to_end_like_evolution_and_deterministic(tiny_ckpt, make_cfg, tmp_path):
    from enas4d.search.cli import search

    def run(out: str, cache: str) -> dict:
        cfg = make_cfg(f"ckpt={tiny_ckpt}", "budget=0.5x", "algorithm=policy_gradient", "device=cpu",
                       f"cache_dir={tmp_path / cache}")
        return search(cfg, tmp_path / out, Console(file=io.StringIO()))

    res = run("a", "c1")
    assert REQUIRED <= set(res) and res["expected_macs"] <= res["budget"]
    assert json.loads((tmp_path / "a" / "result.json").read_text()) == res
    assert (tmp_path / "a" / "pareto.csv").exists() and (tmp_path / "a" / "pareto.png").exists()
    s = res["search"]
    assert s["algorithm"] == "policy_gradient" and s["evaluations"] == 3 and s["static_evaluations"] == 2
    assert s["device"] == "cpu" and s["controller"]["cost_exponent"] == -0.07
    again = run("b", "c2")  # fresh cache: the same architectures are chosen and scored again
    keys = ("subnet", "thresholds", "val_accuracy", "expected_macs", "static_best")
    assert [again[k] for k in keys] == [res[k] for k in keys]
    assert again["search"]["network_evaluations"] == res["search"]["network_evaluations"]
    resumed = run("c", "c1")  # same cache: nothing re-evaluated
    assert resumed["search"]["network_evaluations"] == 0 and resumed["subnet"] == res["subnet"]


def test_search_with_no_feasible_sample_is_a_one_line_error(tiny_ckpt, make_cfg, tmp_path):
    """At the smallest achievable budget almost no sample fits: a clear error, not a crash or a loop."""
    from enas4d.checkpoint import load_supernet
    from enas4d.search.calibrate import min_cost
    from enas4d.search.cli import search
    from enas4d.search.evaluator import SearchError

    net, _ = load_supernet(tiny_ckpt)
    smallest = min_cost(*net.stage_macs(net.space.smallest()))
    cfg = make_cfg(f"ckpt={tiny_ckpt}", f"budget={smallest}", "algorithm=policy_gradient", "max_tries=5")
    with pytest.raises(SearchError, match="policy_gradient drew no architecture that fits .* in 5 samples") as e:
        search(cfg, tmp_path / "out", Console(file=io.StringIO()))
    assert "\n" not in str(e.value) and not (tmp_path / "out" / "result.json").exists()
