"""Accuracy predictor: learns a ranking, reports held-out Kendall tau, deterministic."""

import numpy as np
import torch

import enas4d
from enas4d.search.predictor import AccuracyPredictor, holdout_kendall_tau


def data(n: int, seed: int):
    space = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2, in_chans=3).space
    gen = torch.Generator().manual_seed(seed)
    archs = [space.sample(gen) for _ in range(n)]
    w = np.linspace(1.0, 2.0, space.encoding_size)
    targets = [float(np.dot(w, space.encode(a.with_all_exits()))) for a in archs]  # a learnable ranking
    return space, archs, targets


def test_holdout_tau_is_high_on_a_learnable_target():
    space, archs, targets = data(60, 0)
    rep = holdout_kendall_tau(space, archs, targets, holdout=0.25, seed=0, epochs=200)
    assert rep.n_train == 45 and rep.n_test == 15
    assert rep.kendall_tau > 0.6


def test_too_few_candidates_gives_no_report():
    space, archs, targets = data(8, 1)
    assert holdout_kendall_tau(space, archs, targets, holdout=0.2, seed=0) is None


def test_fit_is_deterministic_and_restores_threads():
    space, archs, targets = data(20, 2)
    threads = torch.get_num_threads()
    a = AccuracyPredictor(space, epochs=50, seed=3).fit(archs, targets).predict(archs[:5])
    b = AccuracyPredictor(space, epochs=50, seed=3).fit(archs, targets).predict(archs[:5])
    assert np.array_equal(a, b)
    assert torch.get_num_threads() == threads
