"""CalibrationSet and BN statistics save/restore."""

from __future__ import annotations

import torch

import enas4d
from enas4d.nn.bn import recalibrate_bn
from enas4d.training import CalibrationSet, bn_buffers, load_bn_buffers


def test_calibrate_equals_recalibrate_bn_and_buffers_roundtrip():
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 3, 24, 24, generator=gen), torch.zeros(6, dtype=torch.long)) for _ in range(2)]
    a = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    b = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    b.load_state_dict(a.state_dict())
    s = a.space.sample(gen).with_all_exits()
    calib = CalibrationSet(batches)
    assert calib.num_images == 12
    calib.calibrate(a, s)
    b.set_subnet(s)
    recalibrate_bn(b, [x for x, _ in batches])
    assert a.subnet == s
    saved = bn_buffers(a)
    for (ma, va), (mb, vb) in zip(saved, bn_buffers(b)):
        assert torch.equal(ma, mb) and torch.equal(va, vb)
    calib.calibrate(a, a.space.largest())  # overwrites (part of) the statistics
    assert any(not torch.equal(m0, m1) for (m0, _), (m1, _) in zip(saved, bn_buffers(a)))
    load_bn_buffers(a, saved)
    a.set_subnet(s)
    a.eval(), b.eval()
    x = batches[0][0]
    for ya, yb in zip(a(x), b(x)):
        assert torch.equal(ya, yb)
