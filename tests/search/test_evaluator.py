"""One-pass evaluation and the JSON-lines cache: reuse, resume after a cut line, fingerprint checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import enas4d
from enas4d.search.calibrate import confidence
from enas4d.search.evaluator import CacheRecord, CandidateEvaluator, EvalCache, SearchError
from enas4d.nn.bn import BNEstimationSet

FP = {"checkpoint_sha256": "abc", "confidence": "max_softmax"}


def record(K: int, N: int, seed: int) -> CacheRecord:
    rng = np.random.default_rng(seed)
    return CacheRecord(rng.integers(0, 10, (K, N)), rng.random((K, N)).astype(np.float32), 0.5)


def test_cache_roundtrip_and_reuse(tmp_path):
    labels = np.arange(12) % 10
    path = tmp_path / "c.jsonl"
    cache = EvalCache(path, FP, labels)
    r = record(3, 12, 0)
    cache.put("a", r)
    again = EvalCache(path, FP, labels)
    assert len(again) == 1 and "a" in again
    got = again.get("a")
    assert np.array_equal(got.pred, r.pred) and np.array_equal(got.conf, r.conf)
    assert np.array_equal(again.labels, labels)


def test_cut_last_line_is_dropped_and_file_repaired(tmp_path):
    labels = np.arange(8)
    path = tmp_path / "c.jsonl"
    cache = EvalCache(path, FP, labels)
    cache.put("a", record(2, 8, 1))
    cache.put("b", record(2, 8, 2))
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # a killed process cut the last record
    again = EvalCache(path, FP, labels)
    assert list(again.keys()) == ["a"]
    assert all(json.loads(line) for line in path.read_text().splitlines())  # every line parses again
    again.put("c", record(2, 8, 3))
    assert list(EvalCache(path, FP, labels).keys()) == ["a", "c"]


def test_other_fingerprint_is_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    EvalCache(path, FP, np.arange(4))
    with pytest.raises(SearchError, match="another checkpoint"):
        EvalCache(path, {**FP, "confidence": "entropy"}, np.arange(4))


def test_evaluator_matches_direct_forward_and_caches(tmp_path):
    torch.manual_seed(0)
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2, in_chans=3)
    x = torch.randn(24, 3, 8, 8)
    y = torch.randint(0, 10, (24,))
    bn_set = BNEstimationSet([torch.randn(16, 3, 8, 8), torch.randn(16, 3, 8, 8)])
    val = [(x[:10], y[:10]), (x[10:], y[10:])]
    path = tmp_path / "c.jsonl"
    # An exit disabled, so that the key's independence of exits below is really exercised.
    arch = dataclasses.replace(net.space.sample(torch.Generator().manual_seed(1)), exits=(False, True))
    ev = CandidateEvaluator(net, bn_set, val, "max_softmax", EvalCache(path, FP, y.numpy()))
    table = ev.table(arch)
    assert (ev.misses, ev.hits) == (1, 0) and table.correct.shape == (2, 24)

    # The same numbers by hand: re-estimate BN for the subnet, eval mode, all exits.
    bn_set.reestimate(net, arch.with_all_exits())
    net.eval()
    with torch.no_grad():
        outs = net(x)
    for k, out in enumerate(outs):
        pred, conf = confidence(out, "max_softmax")
        assert np.array_equal(table.correct[k], (pred == y).numpy())
        np.testing.assert_allclose(table.conf[k], conf.numpy(), rtol=1e-5, atol=1e-6)

    ev.table(arch.with_all_exits())  # exits do not change the key
    assert (ev.misses, ev.hits) == (1, 1)
    # MACs: those of the supernet, computed once per architecture whatever its exits.
    assert ev.stage_macs(arch) == net.stage_macs(arch.with_all_exits())
    assert ev.stage_macs(arch) is ev.stage_macs(arch.with_all_exits())
    ev2 = CandidateEvaluator(net, bn_set, val, "max_softmax", EvalCache(path, FP, y.numpy()))
    assert ev2.is_cached(arch)
    assert np.array_equal(ev2.table(arch).conf, table.conf) and ev2.misses == 0


def test_empty_validation_split_is_refused():
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2, in_chans=3)
    with pytest.raises(SearchError, match="validation split is empty"):
        CandidateEvaluator(net, BNEstimationSet([torch.randn(4, 3, 8, 8)]), [], "max_softmax", None)
