"""BNEstimationSet and BN statistics save/restore."""

from __future__ import annotations

import torch

import enas4d
from enas4d.nn.bn import reestimate_bn
from enas4d.training import BNEstimationSet, bn_buffers, load_bn_buffers


def test_reestimate_equals_reestimate_bn_and_buffers_roundtrip():
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 3, 24, 24, generator=gen), torch.zeros(6, dtype=torch.long)) for _ in range(2)]
    a = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    b = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    b.load_state_dict(a.state_dict())
    s = a.space.sample(gen).with_all_exits()
    bn_set = BNEstimationSet(batches)
    assert bn_set.num_images == 12
    bn_set.reestimate(a, s)
    b.set_subnet(s)
    reestimate_bn(b, [x for x, _ in batches])
    assert a.subnet == s
    saved = bn_buffers(a)
    for (ma, va), (mb, vb) in zip(saved, bn_buffers(b)):
        assert torch.equal(ma, mb) and torch.equal(va, vb)
    bn_set.reestimate(a, a.space.largest())  # overwrites (part of) the statistics
    assert any(not torch.equal(m0, m1) for (m0, _), (m1, _) in zip(saved, bn_buffers(a)))
    load_bn_buffers(a, saved)
    a.set_subnet(s)
    a.eval(), b.eval()
    x = batches[0][0]
    for ya, yb in zip(a(x), b(x)):
        assert torch.equal(ya, yb)
