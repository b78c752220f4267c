"""Policy-gradient search (S2DNAS): an LSTM controller trained by REINFORCE.

The controller emits one architecture gene at a time, in the order of :attr:`SearchSpace.genes`
(exit genes and genes with a single candidate are not searched: the threshold calibration picks
the exits, as for evolution). Each step's input is the embedding of the previous choice, so later
genes are conditioned on earlier ones. Its output layers start at zero, so the first samples are
uniform: before any update the search is random search.

Reward of a sampled architecture (the MnasNet/S2DNAS soft constraint)::

    R = fitness * (cost / budget) ** w        (w < 0: cheaper architectures earn a bonus)

where fitness and cost are what the problem scores (accuracy and expected MACs of the calibrated
policy for the dynamic search). An infeasible sample (not even its first exit fits the budget) gets
R = 0 without touching the network. After every ``samples`` draws the controller takes one Adam
step on ``-mean((R - b) * log p(arch)) - entropy_weight * mean(entropy)``, where ``b`` is an
exponential moving average of the batch-mean rewards (started at the first batch's mean).

Evaluations are counted like evolution's: distinct architectures scored, through the same
:class:`~enas4d.search.evolution.Ledger`. Re-drawing an architecture already scored reuses its
score for free; ``max_tries`` draws in a row that score nothing new end the search with a message.
The controller lives on the CPU in float64 and every draw uses ``make_generator(seed, stream, ...)``,
so a search is a pure function of its seed (and restarts find their evaluations in the cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from enas4d.search.evolution import EvolutionConfig, Ledger, Problem
from enas4d.space import SearchSpace, Subnet
from enas4d.utils.seed import make_generator

__all__ = ["ControllerConfig", "Controller", "Reinforce", "searchable_genes", "build_subnet", "reward",
           "run_policy_gradient"]

_INIT_KEY, _SAMPLE_KEY = 11, 12


@dataclass(frozen=True)
class ControllerConfig:
    """Settings of the policy-gradient controller (see conf/search.yaml ``controller``)."""

    hidden: int = 64  # LSTM hidden size, also the size of the choice embeddings
    lr: float = 0.01  # Adam learning rate
    entropy_weight: float = 0.01  # weight of the entropy bonus (summed over genes; keeps sampling diverse)
    baseline_decay: float = 0.9  # exponential moving-average decay of the reward baseline
    cost_exponent: float = -0.07  # w in R = fitness * (cost / budget) ** w
    samples: int = 4  # architectures drawn per controller update

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"controller.hidden: must be >= 1, got {self.hidden}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"controller.lr: must be a positive number, got {self.lr}")
        if not (math.isfinite(self.entropy_weight) and self.entropy_weight >= 0):
            raise ValueError(f"controller.entropy_weight: must be >= 0, got {self.entropy_weight}")
        if not 0 <= self.baseline_decay < 1:
            raise ValueError(f"controller.baseline_decay: must be in [0, 1), got {self.baseline_decay}")
        if not (math.isfinite(self.cost_exponent) and self.cost_exponent <= 0):
            raise ValueError(f"controller.cost_exponent: must be <= 0 (a cost penalty), got {self.cost_exponent}")
        if self.samples < 1:
            raise ValueError(f"controller.samples: must be >= 1, got {self.samples}")


def searchable_genes(space: SearchSpace) -> list[int]:
    """Indices into ``space.genes`` of the genes the controller decides (not exits, > 1 candidate)."""
    return [i for i, g in enumerate(space.genes) if g.field != "exits" and len(g.choices) > 1]


def build_subnet(space: SearchSpace, actions: Sequence[int]) -> Subnet:
    """The architecture (every exit enabled) whose searchable genes take choices ``actions``."""
    genes = space.genes
    picked = dict(zip(searchable_genes(space), actions))
    values = [True if g.field == "exits" else g.choices[picked.get(i, 0)] for i, g in enumerate(genes)]
    return space.validate(space._from_genome(values))  # the space's own genome -> Subnet mapping


class Controller(nn.Module):
    """LSTM that emits one choice per gene; ``sizes[t]`` is the number of candidates of gene t."""

    def __init__(self, sizes: Sequence[int], hidden: int, generator: torch.Generator):
        super().__init__()
        if not sizes or min(sizes) < 1:
            raise ValueError(f"controller: needs at least one gene with candidates, got sizes {list(sizes)}")
        self.sizes = tuple(int(n) for n in sizes)
        self.start = nn.Parameter(torch.empty(hidden, dtype=torch.float64))  # input of the first step
        self.embed = nn.ModuleList(nn.Embedding(n, hidden, dtype=torch.float64) for n in self.sizes[:-1])
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True, dtype=torch.float64)
        self.heads = nn.ModuleList(nn.Linear(hidden, n, dtype=torch.float64) for n in self.sizes)
        with torch.no_grad():
            for p in self.parameters():  # the global RNG is neither used nor advanced
                p.uniform_(-0.1, 0.1, generator=generator)
            for head in self.heads:  # uniform first samples: the search starts as random search
                head.weight.zero_()
                head.bias.zero_()

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> list[int]:
        """One architecture: a choice index per gene, drawn step by step."""
        x, state, out = self.start.view(1, 1, -1), None, []
        for t, head in enumerate(self.heads):
            h, state = self.lstm(x, state)  # (1, 1, hidden)
            probs = head(h[0, 0]).softmax(-1)
            a = int(torch.multinomial(probs, 1, generator=generator))
            out.append(a)
            if t + 1 < len(self.heads):
                x = self.embed[t](torch.tensor([[a]]))
        return out

    def log_probs(self, actions: Tensor) -> list[Tensor]:
        """Per gene t, the (B, sizes[t]) log-probabilities given the previous choices of ``actions`` (B, T)."""
        b = actions.shape[0]
        steps = [self.start.expand(b, 1, -1)] + [self.embed[t](actions[:, t:t + 1]) for t in range(len(self.sizes) - 1)]
        h, _ = self.lstm(torch.cat(steps, dim=1))  # (B, T, hidden)
        return [head(h[:, t]).log_softmax(-1) for t, head in enumerate(self.heads)]

    def score(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) log-probability of each action sequence and (B,) entropy of its step distributions."""
        lps = self.log_probs(actions)
        logp = torch.stack([lp.gather(1, actions[:, t:t + 1])[:, 0] for t, lp in enumerate(lps)]).sum(0)
        entropy = torch.stack([-(lp.exp() * lp).sum(-1) for lp in lps]).sum(0)
        return logp, entropy


class Reinforce:
    """REINFORCE with an exponential moving-average baseline and an entropy bonus."""

    def __init__(self, controller: Controller, cfg: ControllerConfig):
        self.controller, self.cfg = controller, cfg
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=cfg.lr)
        self.baseline: float | None = None  # None until the first batch
        self.updates = 0

    def update(self, actions: Sequence[Sequence[int]], rewards: Sequence[float]) -> float:
        """One Adam step on a batch of sampled architectures and their rewards; returns the loss."""
        r = torch.tensor(list(rewards), dtype=torch.float64)  # (B,)
        if self.baseline is None:
            self.baseline = float(r.mean())
        logp, entropy = self.controller.score(torch.tensor([list(a) for a in actions], dtype=torch.long))
        loss = -((r - self.baseline) * logp).mean() - self.cfg.entropy_weight * entropy.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        d = self.cfg.baseline_decay
        self.baseline = d * self.baseline + (1 - d) * float(r.mean())
        self.updates += 1
        return float(loss.detach())


def reward(fitness: float, cost: float, budget: float, exponent: float) -> float:
    """``fitness * (cost / budget) ** exponent`` (the soft cost constraint)."""
    return fitness * (max(cost, 1e-12) / budget) ** exponent


def run_policy_gradient(space: SearchSpace, problem: Problem, cfg: EvolutionConfig, ctrl_cfg: ControllerConfig,
                        ledger: Ledger, log: Callable[[str], None] = print) -> Reinforce | None:
    """Score up to ``cfg.evaluations`` distinct architectures into ``ledger``; returns the trained controller.

    None when the space has nothing to decide (its one architecture is scored if feasible).
    """
    genes = space.genes
    idx = searchable_genes(space)
    if not idx:
        only = build_subnet(space, [])
        if problem.feasible(only):
            ledger.evaluate(only)
        return None
    controller = Controller([len(genes[i].choices) for i in idx], ctrl_cfg.hidden,
                            make_generator(cfg.seed, cfg.stream, _INIT_KEY))
    learner = Reinforce(controller, ctrl_cfg)
    drawn, idle = 0, 0  # samples drawn; consecutive samples that scored nothing new
    while len(ledger) < cfg.evaluations:
        batch: list[list[int]] = []
        rewards: list[float] = []
        while len(batch) < ctrl_cfg.samples and len(ledger) < cfg.evaluations and idle < cfg.max_tries:
            actions = controller.sample(make_generator(cfg.seed, cfg.stream, _SAMPLE_KEY, drawn))
            drawn += 1
            arch = build_subnet(space, actions)
            if problem.feasible(arch):
                new = arch not in ledger
                s = ledger.evaluate(arch)
                idle = 0 if new else idle + 1
                r = reward(s.fitness, s.cost, problem.budget, ctrl_cfg.cost_exponent)
            else:
                idle, r = idle + 1, 0.0  # over budget even at its first exit: not evaluated
            batch.append(actions)
            rewards.append(r)
        if idle >= cfg.max_tries:
            log(f"search: no new feasible architecture in {cfg.max_tries} samples; "
                f"stopping after {len(ledger)} evaluations")
            break
        if len(ledger) < cfg.evaluations:
            learner.update(batch, rewards)
    return learner
