"""An optional accuracy predictor: a small MLP on ``space.encode(subnet)``, trained from the cache.

It only pre-screens children (evolution proposes several per slot and evaluates the best-ranked);
real evaluation decides what is reported. Its quality is reported as Kendall's tau between
predicted and measured fitness on cached candidates held out from its training set.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import nn

from enas4d.space import SearchSpace, Subnet
from enas4d.utils.seed import derive_seed, make_generator

__all__ = ["AccuracyPredictor", "PredictorReport", "holdout_kendall_tau"]

_INIT_KEY, _SPLIT_KEY = 1, 2
_MIN_TEST = 5  # held-out architectures needed for a meaningful Kendall tau


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run tiny-MLP ops on one thread: intra-op threading only adds sync cost at this size
    (measured 20x slower with 2 threads on a busy 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class AccuracyPredictor:
    """MLP ``encode(subnet) -> fitness``, fitted full-batch with Adam on standardised targets.

    Args:
        space: the search space (fixes the encoding).
        hidden: width of the two hidden layers.
        epochs: full-batch optimisation steps.
        lr: Adam learning rate.
        seed: seeds the weight initialisation.
    """

    def __init__(self, space: SearchSpace, hidden: int = 64, epochs: int = 300, lr: float = 1e-2, seed: int = 0):
        if hidden < 1 or epochs < 1 or lr <= 0:
            raise ValueError(f"predictor: hidden ({hidden}) and epochs ({epochs}) must be >= 1 and lr ({lr}) > 0")
        self.space, self.hidden, self.epochs, self.lr, self.seed = space, hidden, epochs, lr, seed
        self.model: nn.Module | None = None
        self._mean, self._std = 0.0, 1.0

    def _x(self, archs: Sequence[Subnet]) -> torch.Tensor:
        """(B, encoding_size) float32 encodings (exits enabled: they are not architecture)."""
        return torch.tensor([self.space.encode(a.with_all_exits()) for a in archs], dtype=torch.float32)

    def fit(self, archs: Sequence[Subnet], targets: Sequence[float]) -> "AccuracyPredictor":
        """Fit on (architecture, fitness) pairs; needs at least two."""
        if len(archs) != len(targets) or len(archs) < 2:
            raise ValueError(f"predictor: needs >= 2 (architecture, fitness) pairs, got {len(archs)}/{len(targets)}")
        x = self._x(archs)
        y = torch.tensor(targets, dtype=torch.float32)
        self._mean, self._std = float(y.mean()), float(y.std().clamp_min(1e-6))
        y = (y - self._mean) / self._std
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, _INIT_KEY))
            self.model = nn.Sequential(nn.Linear(x.shape[1], self.hidden), nn.ReLU(),
                                       nn.Linear(self.hidden, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=1e-4)
        with _one_thread():
            for _ in range(self.epochs):
                opt.zero_grad()
                loss = nn.functional.mse_loss(self.model(x)[:, 0], y)
                loss.backward()
                opt.step()
        return self

    @torch.no_grad()
    def predict(self, archs: Sequence[Subnet]) -> np.ndarray:
        """(B,) predicted fitness."""
        if self.model is None:
            raise RuntimeError("predictor: call fit() first")
        with _one_thread():
            return (self.model(self._x(archs))[:, 0] * self._std + self._mean).numpy()


@dataclass(frozen=True)
class PredictorReport:
    """Held-out quality of a predictor."""

    kendall_tau: float  # rank correlation of predicted vs measured fitness on the held-out set
    n_train: int
    n_test: int


def holdout_kendall_tau(space: SearchSpace, archs: Sequence[Subnet], targets: Sequence[float], holdout: float,
                        seed: int, hidden: int = 64, epochs: int = 300, lr: float = 1e-2) -> PredictorReport | None:
    """Fit on a random ``1 - holdout`` of the pairs and report Kendall's tau on the rest.

    Returns None when there are too few pairs (fewer than 2 to train on or 5 to test on).
    """
    n = len(archs)
    n_test = int(round(holdout * n))
    if n_test < _MIN_TEST or n - n_test < 2:
        return None
    perm = torch.randperm(n, generator=make_generator(seed, _SPLIT_KEY)).tolist()
    test, train = perm[:n_test], perm[n_test:]
    pred = AccuracyPredictor(space, hidden, epochs, lr, seed).fit([archs[i] for i in train],
                                                                  [targets[i] for i in train])
    got = pred.predict([archs[i] for i in test])
    tau = kendalltau(got, [targets[i] for i in test]).statistic
    return PredictorReport(float(tau) if np.isfinite(tau) else 0.0, len(train), len(test))
