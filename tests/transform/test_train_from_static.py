"""The S2DNAS path end to end on tiny digits: train a static network, split it, fine-tune it with
the static network as teacher, and rebuild the result from its checkpoint alone."""

from __future__ import annotations

import torch

from enas4d.checkpoint import load_supernet
from enas4d.train import train
from enas4d.transform import from_static
from tests.training.helpers import compose_train


def test_static_then_from_static(tmp_path):
    static_dir, fs_dir = tmp_path / "static", tmp_path / "fs"
    metrics, objects = train(compose_train(static_dir, "supernet=resnet20_static", "supernet.num_stages=1"))
    module = objects["module"]
    assert list(module.val_subnets) == ["max"]  # one architecture: validated once
    assert module.last_step is not None and len(module.last_step["subnets"]) == 1  # one subnet per step
    assert "val/max/exit1" in metrics
    ckpt = static_dir / "checkpoints" / "last.ckpt"

    metrics, objects = train(compose_train(fs_dir, "supernet=from_static", f"supernet.weights={ckpt}",
                                           "supernet.num_stages=3", "supernet.depths=[1,3]"))
    module = objects["module"]
    assert module.teacher_net is not None and not module.teacher_net.training
    assert not any(p.requires_grad for p in module.teacher_net.parameters())
    # The teacher is the static network it came from, unchanged by the fine-tuning.
    static, _ = load_supernet(ckpt)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(module.teacher_net(x)[-1], static(x)[-1])
    assert "val/max/exit3" in metrics and "val/min/exit1" in metrics

    # Grown instead of split: fine-tuning keeps the static stage (freeze_static defaults to true with grow).
    grow_dir = tmp_path / "grow"
    _, g_objects = train(compose_train(grow_dir, "supernet=from_static", f"supernet.weights={ckpt}",
                                       "supernet.num_stages=3", "supernet.grow=[0.5,0.25]", "supernet.depths=[1,3]"))
    grown = g_objects["module"].net
    start = from_static(static, 3, grow=(0.5, 0.25), width_mults=(0.5, 0.75, 1.0), depths=(1, 3), fixed_static=True)
    assert set(g_objects["module"].frozen) and g_objects["module"].last_step is not None
    for name, p in grown.named_parameters():
        before = dict(start.named_parameters())[name]
        if name in g_objects["module"].frozen:
            mask = g_objects["module"].frozen[name]
            assert torch.equal(p.detach()[mask], before.detach()[mask]), name  # the static stage: unchanged
    conv = "blocks.0.convs.0.weight"
    assert not torch.equal(dict(grown.named_parameters())[conv][:8], dict(start.named_parameters())[conv][:8])
    # The frozen static stage is one fixed network and training does not run it (only stages 1..K-1).
    assert g_objects["module"].train_stages == 2 and grown.spec.fixed_last
    assert grown.space.widths[-1] == ((16,), (32,), (64,))
    g_module = g_objects["module"]
    loss, _ = g_module.sandwich_loss(x, torch.tensor([0, 1]), [grown.space.largest()])
    assert len(grown(x)) == 2  # the step's forward stopped after stage 2
    rebuilt, _ = load_supernet(grow_dir / "checkpoints" / "last.ckpt")
    assert rebuilt.space == grown.space

    # The checkpoint rebuilds the transformed supernet (it has no registered name) from its NetSpec.
    net, meta = load_supernet(fs_dir / "checkpoints" / "last.ckpt")
    assert net.name == "resnet20_static-s2dnas" and net.num_stages == 3
    assert net.space == from_static(static, 3, width_mults=(0.5, 0.75, 1.0), depths=(1, 3)).space
    trained = module.net.eval()
    with torch.no_grad():
        for a, b in zip(net(x), trained(x)):
            assert torch.allclose(a, b, atol=1e-5)
