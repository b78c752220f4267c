"""Device tests (issue 11): training step, validation, search evaluation and export on another device.

Parametrised over ``meta`` (always) and ``cuda`` (when torch has it). A meta tensor has a shape and a
device but no values, and torch refuses to mix it with CPU tensors exactly as it refuses to mix CUDA
and CPU tensors, so a CPU-only machine catches a tensor created on the CPU inside a computation whose
inputs live elsewhere. What needs real values (reading a number, a data-dependent selection, a copy
back to the CPU) cannot run on meta: each test runs up to that point there, says why in a comment,
and goes on to the end on CUDA. Nothing here is timed; the networks are tiny (digits-sized 8x8
images, 2-3 stages).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch

import enas4d
from enas4d.export import jit
from enas4d.export.early_exit import build_early_exit
from enas4d.nn.bn import BNEstimationSet, reestimate_bn
from enas4d.search.evaluator import CandidateEvaluator
from enas4d.training.module import SupernetModule

DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
NETS = [("resnet_cifar", 2), ("mbv3_cifar", 3)]  # (family, num_stages)


@pytest.fixture(autouse=True)
def _one_thread():
    """The CPU parts (building the nets, the CPU batches) on one thread: the test machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batches(n: int = 2, size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` digits-sized (size, 3, 8, 8) normalised batches with labels, on the CPU (as a loader gives them)."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=gen), torch.randint(0, 10, (size,), generator=gen))
            for _ in range(n)]


def _module(family: str, stages: int, teacher: bool = False) -> SupernetModule:
    """A SupernetModule of a tiny supernet (one random subnet per step, no schedule)."""
    torch.manual_seed(0)
    net = enas4d.create_supernet(family, num_classes=10, num_stages=stages, in_chans=3)
    teacher_net = None
    if teacher:  # a frozen static network whose last output is the teacher's logits (the from_static path)
        source = enas4d.create_supernet(family, num_classes=10, num_stages=1, in_chans=3)
        source.set_subnet(source.space.largest())
        reestimate_bn(source, [x for x, _ in _batches(1, seed=7)])
        teacher_net = source.extract(source.space.largest())
    return SupernetModule(net, functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True), None,
                          {"name": "digits"}, n_random=1, teacher_net=teacher_net, bn_images=8)


def _on(device: str, tensors) -> bool:
    return all(t.device.type == device for t in tensors)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family,stages,teacher", [(*n, False) for n in NETS] + [("resnet_cifar", 2, True)])
def test_training_step_runs_on_the_device(device, family, stages, teacher, monkeypatch):
    """SupernetModule.training_step (sandwich rule: largest, smallest and a random subnet, in-place or
    teacher distillation, one backward, the optimizer step) on the module's device. The Trainer's
    services it calls (its optimizer, backward, logging) are stood in for: a Trainer cannot run on
    meta, and what is tested is the step's own tensors."""
    module = _module(family, stages, teacher).to(device)
    opt = module.configure_optimizers()  # the real parameter groups (decay / no decay)
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(module, "optimizers", lambda: opt)
    monkeypatch.setattr(module, "lr_schedulers", lambda: None)
    monkeypatch.setattr(module, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(module, "_progress", lambda: 0.0)
    monkeypatch.setattr(module, "log_dict", lambda values, **kw: logged.update(values))
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.update({name: value}))
    x, y = _batches(1)[0]
    before = [p.detach().clone() for p in module.net.parameters()] if device != "meta" else None
    total = module.training_step((x.to(device), y.to(device)), 0)
    assert total.device.type == device and total.shape == ()
    assert len(module.last_step["subnets"]) == 3 and _on(device, module.last_step["losses"])
    assert _on(device, [p.grad for p in module.net.parameters() if p.grad is not None])
    assert any(p.grad is not None for p in module.net.parameters())
    assert _on(device, module.parameters()) and _on(device, module.buffers())  # teacher included
    assert set(logged) >= {"train/loss", "train/loss_largest", "train/loss_smallest", "loss"}
    assert _on(device, logged.values())
    if device != "meta":  # meta has no values: only on a real device can the step be seen to move weights
        assert torch.isfinite(total)
        assert any(not torch.equal(a, p) for a, p in zip(before, module.net.parameters()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family,stages", NETS)
def test_validation_of_the_fixed_subnets_runs_on_the_device(device, family, stages, monkeypatch):
    """BN re-estimation of the min/mid/max subnets (CPU BN estimation batches moved to the device) and
    validation_step's eval-mode forward and accuracy update, on the module's device."""
    module = _module(family, stages).to(device)
    bn_set = BNEstimationSet([x for x, _ in _batches(2, seed=1)])  # held on the CPU, as the module keeps it
    monkeypatch.setattr(module, "bn_set", lambda: bn_set)
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(module, "log_dict", lambda values, **kw: logged.update(values))
    seen = []
    hook = module.net.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    module.eval()  # as Lightning does before validation
    module.on_validation_epoch_start()
    assert set(module._val_bn) == set(module.val_subnets)
    for name, bufs in module._val_bn.items():
        assert bufs.subnet == module.val_subnets[name] and _on(device, [t for pair in bufs for t in pair])
    seen.clear()
    for x, y in _batches(2, seed=2):
        module.validation_step((x.to(device), y.to(device)), 0)
    hook.remove()
    assert len(seen) == 2 * len(module.val_subnets)
    assert all(x.device.type == device and _on(device, out) and len(out) == stages for x, out in seen)
    if device == "meta":
        return  # computing the accuracies reads the counts (values); a meta tensor has none
    module.on_validation_epoch_end()
    assert f"val/max/exit{stages}" in logged and 0.0 <= float(logged["val/acc"]) <= 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_search_candidate_evaluation_runs_on_the_device(device):
    """CandidateEvaluator.record: BN re-estimation and the validation pass of a candidate run on the
    network's device (the CPU batches move there one at a time), the results come back to the CPU."""
    torch.manual_seed(0)
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2, in_chans=3)
    cpu_net = None
    if device != "meta":
        cpu_net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2, in_chans=3)
        cpu_net.load_state_dict(net.state_dict())
    net.to(device)
    val = _batches(3, size=8, seed=3)
    bn_set = BNEstimationSet([x for x, _ in _batches(2, seed=4)])
    ev = CandidateEvaluator(net, bn_set, val, "max_softmax", None)
    arch = net.space.smallest()
    seen = []
    hook = net.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    if device == "meta":
        # Everything runs on meta up to the copy of the predictions back to the CPU, which needs values:
        # NotImplementedError ("Cannot copy out of meta tensor"), not a RuntimeError of mixed devices.
        with pytest.raises(NotImplementedError, match="meta"):
            ev.record(arch)
    else:
        rec = ev.record(arch)
        assert rec.pred.shape == rec.conf.shape == (2, 24) and rec.pred.dtype == np.int64
        ref = CandidateEvaluator(cpu_net, bn_set, val, "max_softmax", None).record(arch)
        assert np.mean(rec.pred == ref.pred) > 0.9  # other kernels (TF32) may flip a near tie
        assert np.allclose(rec.conf, ref.conf, atol=1e-2)
    hook.remove()
    assert net.bn_subnet == arch.with_all_exits()  # the statistics were re-estimated on the device
    assert seen and all(x.device.type == device and _on(device, out) for x, out in seen)
    assert len(seen) == len(bn_set.batches) + len(val)  # BN estimation, then the whole validation split


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family,stages", NETS)
def test_extracted_subnet_and_its_export_run_on_the_device(device, family, stages):
    """A subnet extracted from the supernet (on the CPU: extraction copies weights out, which a meta
    supernet has none of) moved to the device computes every exit there, and so does its early-exit
    TorchScript model loaded onto the device as enas4d-evaluate loads it (map_location)."""
    torch.manual_seed(0)
    net = enas4d.create_supernet(family, num_classes=10, num_stages=stages, in_chans=3)
    s = net.space.sample(torch.Generator().manual_seed(5))
    net.set_subnet(s)
    reestimate_bn(net, [x for x, _ in _batches(2, seed=6)])
    net.eval()
    static = net.extract(s).eval()
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        cpu_outs = static(x)
        outs = static.to(device)(x.to(device))
    assert len(outs) == sum(s.exits) and _on(device, outs) and all(o.shape == (4, 10) for o in outs)
    assert _on(device, static.parameters()) and _on(device, static.buffers())

    ee = build_early_exit(net.extract(s).eval(), [0.5] * 3, [0.25] * 3, [0.3] * (sum(s.exits) - 1) + [0.0], 10)
    buf = io.BytesIO()
    jit.save(jit.script(ee), buf)
    buf.seek(0)
    ts = jit.load(buf, map_location=device)
    if device == "meta":
        # The input check reads the pixels' min and max, and the early exit selects images by their
        # confidence (data-dependent): no values on meta. Every exit for every image runs there.
        ts.set_input_check(False)
        exits = ts.all_exits(x.to(device))
        assert len(exits) == sum(s.exits) and _on(device, exits)
        return
    with torch.no_grad():
        for a, b in zip(ts.all_exits(x.to(device)), cpu_outs):
            assert a.device.type == device and torch.allclose(a.cpu(), b, rtol=1e-2, atol=1e-2)  # TF32, folded BN
        logits, exit_index = ts(x.to(device))
        cpu_logits, cpu_index = build_early_exit(net.extract(s).eval(), [0.5] * 3, [0.25] * 3,
                                                 [0.3] * (sum(s.exits) - 1) + [0.0], 10)(x)
    assert _on(device, [logits, exit_index]) and logits.shape == (4, 10)
    assert (exit_index.cpu() == cpu_index).float().mean() >= 0.75  # a near tie may leave at another exit
    # Extraction straight from a supernet on the device gives one network on one device (no mixing).
    net.to(device)
    on_device = net.extract(s)
    assert len({t.device for t in [*on_device.parameters(), *on_device.buffers()]}) == 1
