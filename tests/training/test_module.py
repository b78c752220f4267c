"""SupernetModule with a real Lightning Trainer on a few tiny digits batches."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import enas4d
from enas4d.checkpoint import CheckpointError, load_supernet, make_meta, read_checkpoint
from enas4d.data import DigitsDataModule, create_datamodule
from enas4d.nn.bn import BNStatsError
from enas4d.train import summary_rows
from enas4d.training import BNEstimationSet, SupernetModule, check_meta_compatible, evaluate_exits
from enas4d.training.module import SAMPLER_CKPT_KEY
from enas4d.training.optim import cosine_schedule


def _datamodule() -> DigitsDataModule:
    return DigitsDataModule(image_size=24, batch_size=8, eval_batch_size=32, val_size=32, seed=3)


def _meta(dm: DigitsDataModule) -> dict:
    cfg = {"image_size": 24, "batch_size": 8, "eval_batch_size": 32, "val_size": 32, "seed": 3,
           "mean": dm.mean, "std": dm.std}
    return {"name": dm.name, "cfg": cfg, "mean": dm.mean, "std": dm.std, "class_names": dm.class_names,
            "image_size": dm.image_size}


def _module(net, dm, **kw) -> SupernetModule:
    kw = {"bn_images": 16, **kw}
    return SupernetModule(net, functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True),
                          functools.partial(cosine_schedule), _meta(dm), **kw)


def _trainer(tmp: Path, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp, **kw)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Two steps on digits with validation, then a checkpoint."""
    tmp = tmp_path_factory.mktemp("module")
    pl.seed_everything(0)
    dm = _datamodule()
    dm.setup("fit")
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    before = {k: v.clone() for k, v in net.named_parameters()}
    module = _module(net, dm, n_random=1, weight_decay=0.0)
    trainer = _trainer(tmp, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    path = tmp / "model.ckpt"
    trainer.save_checkpoint(path)
    return {"dm": dm, "net": net, "module": module, "trainer": trainer, "before": before, "ckpt": path}


def test_every_parameter_learns(fitted):
    """The largest subnet uses every weight and all exits are trained: no parameter is left untouched."""
    unchanged = [k for k, v in fitted["net"].named_parameters() if torch.equal(v, fitted["before"][k])]
    assert unchanged == []
    assert fitted["trainer"].global_step == 2  # one optimizer step per batch


def test_validation_logs_each_exit_after_bn_reestimation(fitted):
    metrics = fitted["trainer"].callback_metrics
    for name in ("min", "mid", "max"):
        for k in (1, 2):
            assert 0.0 <= float(metrics[f"val/{name}/exit{k}"]) <= 1.0
    # The logged accuracy is the one an independent BN-re-estimated evaluation gives.
    dm, net, module = fitted["dm"], fitted["net"], fitted["module"]
    bn_set = BNEstimationSet(dm.bn_dataloader(16))
    val = [next(iter(dm.val_dataloader()))]  # limit_val_batches=1
    for name, s in module.val_subnets.items():
        accs = evaluate_exits(net, s, bn_set, val)
        assert accs == pytest.approx([float(metrics[f"val/{name}/exit{k}"]) for k in (1, 2)])
    expected = sum(float(metrics[f"val/{n}/exit2"]) for n in ("min", "mid", "max")) / 3
    assert float(metrics["val/acc"]) == pytest.approx(expected)


def test_summary_rows_pair_macs_with_logged_accuracy(fitted):
    module, metrics = fitted["module"], fitted["trainer"].callback_metrics
    rows = summary_rows(module, {k: float(v) for k, v in metrics.items()})
    assert [(name, k) for name, k, _, _ in rows] == [(n, k) for n in ("min", "mid", "max") for k in (1, 2)]
    for name, k, macs, acc in rows:
        assert macs == module.net.macs(module.val_subnets[name])[k - 1]
        assert acc == pytest.approx(float(metrics[f"val/{name}/exit{k}"]))
    macs = {name: m for name, k, m, _ in rows if k == 2}
    assert macs["min"] < macs["mid"] < macs["max"]


def test_checkpoint_rebuilds_supernet_and_data(fitted):
    ckpt, meta = read_checkpoint(fitted["ckpt"])
    assert all(k.startswith("net.") for k in ckpt["state_dict"])
    assert ckpt[SAMPLER_CKPT_KEY]["n_random"] == 1
    assert "optimizer_states" in ckpt and "lr_schedulers" in ckpt
    net, _ = load_supernet(fitted["ckpt"])
    for k, v in fitted["net"].state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    dm = create_datamodule(meta.data["name"], **meta.data["cfg"])
    dm.setup("fit")
    assert dm.mean == fitted["dm"].mean
    x0, _ = next(iter(dm.val_dataloader()))
    x1, _ = next(iter(fitted["dm"].val_dataloader()))
    assert torch.equal(x0, x1)  # the same validation split, normalised the same way


def test_checkpoint_says_whose_batchnorm_statistics_it_holds(fitted):
    """Validation leaves the largest subnet's statistics loaded; the checkpoint says so."""
    net, _ = load_supernet(fitted["ckpt"])
    space = net.space
    assert net.bn_subnet == space.largest()
    x = torch.randn(2, 3, 24, 24)
    net(x)  # load_supernet: eval mode, the largest subnet active
    net.set_subnet(space.smallest())
    with pytest.raises(BNStatsError, match="reestimate_bn"):
        net(x)


def test_a_training_step_makes_the_statistics_nobodys(tmp_path):
    dm = _datamodule()
    dm.setup("fit")
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    BNEstimationSet(dm.bn_dataloader(16)).reestimate(net, net.space.largest())
    assert net.bn_subnet == net.space.largest()
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(_module(net, dm), datamodule=dm)
    assert net.bn_subnet is None  # estimated for the weights before the step


def test_checkpoint_of_other_supernet_is_refused(fitted):
    ckpt, _ = read_checkpoint(fitted["ckpt"])
    meta = ckpt["enas4d"]
    other = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=3)
    with pytest.raises(CheckpointError, match="num_stages=2"):
        check_meta_compatible(meta, other, 10, "x.ckpt")
    same = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    check_meta_compatible(meta, same, 10, "x.ckpt")
    with pytest.raises(CheckpointError, match="10 classes"):
        check_meta_compatible(meta, same, 100, "x.ckpt")
    hundred = enas4d.create_supernet("resnet_cifar", num_classes=100, num_stages=2)
    module = _module(hundred, fitted["dm"])
    with pytest.raises(CheckpointError, match="num_classes=10"):
        module.on_load_checkpoint(ckpt)
    mb = enas4d.create_supernet("mbv3_cifar", num_classes=10, num_stages=2)
    with pytest.raises(CheckpointError, match="name='resnet_cifar'"):
        check_meta_compatible(make_meta(same, meta["data"]), mb, 10, "x.ckpt")


@pytest.mark.parametrize("kw, field", [({"exit_weights": [1.0]}, "exit_weights"),
                                       ({"label_smoothing": 1.0}, "label_smoothing"),
                                       ({"n_random": -2}, "n_random"),
                                       ({"bn_images": 0}, "bn_images"),
                                       ({"train_stages": 3}, "train_stages"),
                                       ({"train_stages": 1, "exit_weights": [0.0, 1.0]}, "train_stages")])
def test_bad_settings_name_the_field(fitted, kw, field):
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    with pytest.raises(ValueError, match=field):
        _module(net, fitted["dm"], **kw)
