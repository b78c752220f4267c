"""Tests of the behaviour every datamodule shares (split, order, augmentation, BN estimation subset, state).

Run on DigitsDataModule: it is bundled with scikit-learn and loads in a fraction of a second.
"""

import pytest
import pytorch_lightning as pl
import torch

from enas4d.data import DigitsDataModule
from enas4d.data.base import STATE_VERSION


def _digits(**kwargs):
    dm = DigitsDataModule(batch_size=32, **kwargs)
    dm.setup("fit")
    return dm


def _split(dm):
    return dm.train_dataloader().dataset.indices.tolist(), dm.val_dataloader().dataset.indices.tolist()


def test_split_is_deterministic_disjoint_and_complete():
    train, val = _split(_digits(seed=0))
    assert (train, val) == _split(_digits(seed=0))
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(1797))
    assert _split(_digits(seed=1))[1] != val


def test_val_size_overrides_val_fraction():
    assert len(_split(_digits(val_size=100, val_fraction=0.5))[1]) == 100


def test_train_order_depends_only_on_seed_and_epoch():
    dm = _digits()
    loader = dm.train_dataloader()
    first = [y for _, y in loader]
    assert [torch.equal(a, b) for a, b in zip(first, [y for _, y in loader])] == [True] * len(first)
    dm.set_epoch(1)
    second = [y for _, y in loader]
    assert not all(torch.equal(a, b) for a, b in zip(first, second))
    # A fresh datamodule (e.g. a resumed run) sees the same order for the same epoch.
    resumed = _digits()
    resumed_loader = resumed.train_dataloader()
    resumed.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(second, (y for _, y in resumed_loader)))


def test_augmentation_is_deterministic_per_batch():
    dm = _digits()
    x, _ = next(iter(dm.val_dataloader()))
    a = dm.augment_batch(x, epoch=2, batch_idx=5)
    assert a.shape == x.shape and not torch.equal(a, x)
    assert torch.equal(a, _digits().augment_batch(x, epoch=2, batch_idx=5))
    assert not torch.equal(a, dm.augment_batch(x, epoch=2, batch_idx=6))
    assert not torch.equal(a, dm.augment_batch(x, epoch=3, batch_idx=5))
    assert not torch.equal(a, dm.augment_batch(x, epoch=2, batch_idx=5, rank=1))
    assert not torch.equal(a, _digits(seed=1).augment_batch(x, epoch=2, batch_idx=5))


def test_augmentation_border_is_black():
    dm = _digits(crop_padding=4)
    x = torch.full((64, 3, 32, 32), 9.0)  # no real pixel has this value
    out = dm.augment_batch(x, epoch=0, batch_idx=0)
    black = (0.0 - dm.mean[0]) / dm.std[0]
    border = out[out != 9.0]
    assert border.numel() > 0 and torch.allclose(border, torch.full_like(border, black))


def test_no_augmentation_without_a_training_trainer():
    dm = _digits()
    batch = next(iter(dm.train_dataloader()))
    assert dm.on_after_batch_transfer(batch, 0) is batch


def test_augmentation_needs_only_the_trainers_public_attributes():
    """The batch index the augmentation is seeded with is counted by the datamodule (issue 11: nothing
    reads Lightning's private loop state such as ``fit_loop.epoch_loop.batch_idx``): a stand-in
    trainer with only ``training``, ``current_epoch`` and ``global_rank`` is enough. The count
    restarts in every epoch and with every train_dataloader() (a new fit)."""
    from types import SimpleNamespace

    dm = _digits()
    loader = dm.train_dataloader()
    batches = [b for _, b in zip(range(3), loader)]
    dm.trainer = SimpleNamespace(training=True, current_epoch=4, global_rank=1)
    seen = [dm.on_after_batch_transfer((x.clone(), y), 0)[0] for x, y in batches]
    for i, (x, _) in enumerate(batches):
        assert torch.equal(seen[i], dm.augment_batch(x, epoch=4, batch_idx=i, rank=1))
    dm.trainer.current_epoch = 5  # a new epoch starts at 0
    assert torch.equal(dm.on_after_batch_transfer(batches[0], 0)[0], dm.augment_batch(batches[0][0], 5, 0, 1))
    dm.train_dataloader()  # a new fit, even in the same epoch, starts at 0
    assert torch.equal(dm.on_after_batch_transfer(batches[1], 0)[0], dm.augment_batch(batches[1][0], 5, 0, 1))


def test_bn_loader_is_fixed_and_from_train_split():
    dm = _digits()
    first = [x for x, _ in dm.bn_dataloader(num_images=100, batch_size=40)]
    again = [x for x, _ in dm.bn_dataloader(num_images=100, batch_size=40)]
    other = [x for x, _ in _digits().bn_dataloader(num_images=100, batch_size=40)]
    assert [len(x) for x in first] == [40, 40, 20]
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(first, again, other))
    bn_subset = dm.bn_dataloader(num_images=100).dataset
    assert bn_subset.dataset is dm.train_dataloader().dataset  # a subset of the train split
    assert len(set(bn_subset.indices)) == 100


def test_state_dict_round_trip():
    dm = _digits()
    state = dm.state_dict()
    assert state["version"] == STATE_VERSION and state["mean"] == dm.mean and state["num_classes"] == 10
    restored = DigitsDataModule(batch_size=32)
    restored.load_state_dict({**state, "mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]})
    restored.setup()  # restored statistics are kept, not recomputed
    assert restored.mean == [0.1, 0.2, 0.3] and restored.std == [1.0, 2.0, 3.0]
    x, _ = next(iter(restored.val_dataloader()))
    assert x.max() < 1.0  # (pixel - 0.1) / 1 on channel 0


def test_load_state_dict_rejects_other_datasets_and_versions():
    dm = _digits()
    with pytest.raises(ValueError, match="classes"):
        dm.load_state_dict({**dm.state_dict(), "num_classes": 100})
    with pytest.raises(ValueError, match="version"):
        dm.load_state_dict({**dm.state_dict(), "version": STATE_VERSION + 1})


class _Recorder(pl.LightningModule):
    """Records every batch the Trainer hands to training_step / validation_step."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_batches: list[tuple[int, int, torch.Tensor]] = []
        self.val_batches: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, _ = batch
        self.train_batches.append((self.current_epoch, batch_idx, x.clone()))
        return (self.weight * x.mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.val_batches.append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_applies_seeded_augmentation_and_saves_state(tmp_path):
    dm = DigitsDataModule(batch_size=32)
    model = _Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)

    # What the model saw equals the un-augmented batch augmented with (seed, epoch, batch_idx).
    reference = _digits()
    loader = reference.train_dataloader()
    assert [(e, i) for e, i, _ in model.train_batches] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        for batch_idx, (x, _) in zip(range(3), loader):
            seen = model.train_batches[3 * epoch + batch_idx][2]
            assert torch.equal(seen, reference.augment_batch(x, epoch, batch_idx))
    # Validation batches are not augmented.
    assert torch.equal(model.val_batches[0], next(iter(reference.val_dataloader()))[0])

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["DigitsDataModule"]["mean"] == dm.mean
