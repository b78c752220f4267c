"""Behaviour shared by every enas4d datamodule.

A datamodule here owns four things the training, search and export code rely on:

- a deterministic train/validation split carved out of the *training* data by ``seed`` (the
  validation split is what search optimises on, so no test set is ever touched);
- normalisation statistics (``mean``/``std``, per channel, for pixels in [0, 1]) computed from the
  training split unless given, saved in and restored from checkpoints via ``state_dict``;
- cheap batched augmentation (random translate + horizontal flip) applied in
  ``on_after_batch_transfer`` while training, seeded from ``(seed, epoch, batch_idx, rank)``, and a
  train order seeded from ``(seed, epoch)``, so a resumed run sees the same batches;
- a fixed, cached BN estimation subset of the training split (no augmentation) on which BatchNorm
  statistics of a subnet are re-estimated before it is evaluated.

Every dataloader yields ``(x, y)``: x float32 (N, 3, H, W) already normalised, y int64 (N,).
Augmentation is only applied when the datamodule is handed to ``Trainer.fit(datamodule=...)``;
``train_dataloader()`` itself yields un-augmented batches.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from enas4d.data.augment import random_hflip, random_translate
from enas4d.utils.seed import make_generator

__all__ = [
    "EpochShuffleSampler",
    "ImageDataModule",
    "InMemoryImages",
    "NormalizeCollate",
    "StackedBatch",
]

# Second element of every make_generator key, so the streams of different purposes never coincide
# (e.g. the shuffle of epoch 1 and the split both hash (seed, 1) otherwise).
_SPLIT_KEY = 1
_SHUFFLE_KEY = 2
_AUGMENT_KEY = 3
_BN_KEY = 4

# Version of the dict returned by ImageDataModule.state_dict (bump on any change of its keys).
STATE_VERSION = 1

# Images per chunk when computing mean/std: bounds the float64 temporaries to ~100 MB at 32x32.
_STATS_CHUNK = 4096


@dataclass(frozen=True)
class StackedBatch:
    """A batch gathered with one indexing op: uint8 images (N, 3, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor


class InMemoryImages(Dataset):
    """A split of a dataset held as one uint8 tensor; whole batches are gathered in one op."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: Sequence[int]) -> None:
        """Wrap ``images`` (N, 3, H, W) uint8 and ``labels`` (N,) int64, restricted to ``indices``."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images  # shared, never copied per split
        self.labels = labels.long()
        self.indices = torch.as_tensor(indices, dtype=torch.long)  # (M,) rows of images

    def __len__(self) -> int:
        """Number of images in this split."""
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        """Return one (uint8 image (3, H, W), label) pair."""
        row = self.indices[position]
        return self.images[row], int(self.labels[row])

    def __getitems__(self, positions: list[int]) -> StackedBatch:
        """Return a whole batch at once (DataLoader calls this instead of N ``__getitem__``)."""
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        return StackedBatch(self.images[rows], self.labels[rows])


def collate_uint8(samples: StackedBatch | list[tuple[torch.Tensor, int]]) -> StackedBatch:
    """Stack per-image samples (or pass a pre-gathered batch through) into a ``StackedBatch``."""
    if isinstance(samples, StackedBatch):
        return samples
    images = torch.stack([image for image, _ in samples])  # (N, 3, H, W) uint8
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)  # (N,)
    return StackedBatch(images, labels)


class NormalizeCollate:
    """Collate function: uint8 samples -> ``(x, y)``, x float32 normalised, y int64.

    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Store per-channel ``mean`` and ``std`` of pixels in [0, 1]."""
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, samples: StackedBatch | list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the normalised batch ``(x (N, C, H, W) float32, y (N,) int64)``."""
        batch = collate_uint8(samples)
        x = batch.images.float().div_(255.0).sub_(self.mean).div_(self.std)
        return x, batch.labels


class EpochShuffleSampler(Sampler[int]):
    """Random order of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at the start of every training epoch, so epoch e's order is the
    same whether the run started at epoch 0 or was resumed at epoch e.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        """Shuffle ``num_samples`` positions with the stream ``(seed, _SHUFFLE_KEY, epoch)``."""
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        """Yield the positions of the current epoch's permutation."""
        generator = make_generator(self.seed, _SHUFFLE_KEY, self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        """Number of positions yielded per epoch."""
        return self.num_samples


class ImageDataModule(pl.LightningDataModule, abc.ABC):
    """Base class: split, normalisation, batched augmentation, BN estimation subset and state.

    Subclasses implement :meth:`_build_splits` and set the dataset attributes in ``__init__``.

    Attributes:
        name: Registry name of the dataset (``digits``, ``cifar10``, ...).
        num_classes: Number of classes; labels are in ``[0, num_classes)``.
        class_names: Human-readable name of each class, indexed by label.
        in_chans: Channels of every batch (always 3).
        image_size: Height = width of every batch, in pixels.
        mean: Per-channel mean of training pixels in [0, 1]; ``None`` until ``setup`` or restore.
        std: Per-channel standard deviation, same convention as ``mean``.
        seed: Base seed of split, shuffling, augmentation and BN estimation subset.
    """

    in_chans: int = 3
    # Largest number of training images mean/std are computed from; None means all of them.
    # In-memory datasets use all; datasets decoded from disk cap it (see ImageFolderDataModule).
    stats_max_images: int | None = None

    def __init__(
        self,
        *,
        name: str,
        num_classes: int,
        class_names: Sequence[str],
        image_size: int,
        batch_size: int,
        eval_batch_size: int | None,
        val_fraction: float,
        val_size: int | None,
        seed: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        crop_padding: int,
        hflip: bool,
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        """Validate and store the settings shared by all datasets (see subclasses for meanings)."""
        super().__init__()
        if image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {image_size}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size must be >= 1 or null, got {eval_batch_size}")
        if val_size is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if val_size is not None and val_size < 1:
            raise ValueError(f"data.val_size must be >= 1 or null, got {val_size}")
        if (mean is None) != (std is None):
            raise ValueError("data.mean and data.std must be given together (or both null to compute them)")
        if mean is not None and std is not None:
            self._check_stats(mean, std)
        if crop_padding < 0:
            raise ValueError(f"data.crop_padding must be >= 0, got {crop_padding}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")

        self.name = name
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.val_fraction = val_fraction
        self.val_size = val_size
        self.seed = seed
        self.mean: list[float] | None = None if mean is None else [float(m) for m in mean]
        self.std: list[float] | None = None if std is None else [float(s) for s in std]
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.num_workers = num_workers
        self.pin_memory = pin_memory

        self._train: Dataset | None = None  # uint8 samples of the train split, set by setup()
        self._val: Dataset | None = None
        self._bn_positions: dict[int, list[int]] = {}  # num_images -> positions in _train
        self._train_sampler: EpochShuffleSampler | None = None
        # (epoch, index within it) of the last training batch augmented; see _next_train_batch_idx.
        self._train_batch: tuple[int, int] | None = None

    # ----------------------------------------------------------------------------------------
    # Subclass interface

    @abc.abstractmethod
    def _build_splits(self) -> tuple[Dataset, Dataset]:
        """Load the data and return the (train, val) datasets of uint8 ``(image, label)`` samples.

        In-memory datasets should return :class:`InMemoryImages`, so batches are gathered in one op.
        """

    # ----------------------------------------------------------------------------------------
    # Split and statistics

    def split_indices(self, num_images: int) -> tuple[list[int], list[int]]:
        """Return disjoint, sorted (train, val) indices of ``range(num_images)``, fixed by ``seed``.

        The validation size is ``val_size`` when set, else ``round(val_fraction * num_images)``.

        Raises:
            ValueError: If either split would be empty.
        """
        num_val = self.val_size if self.val_size is not None else round(self.val_fraction * num_images)
        if not 0 < num_val < num_images:
            setting = f"val_size={self.val_size}" if self.val_size is not None else f"val_fraction={self.val_fraction}"
            raise ValueError(
                f"data.{setting} leaves an empty train or validation split of {num_images} images "
                f"({num_images - num_val} train, {num_val} val)"
            )
        order = torch.randperm(num_images, generator=make_generator(self.seed, _SPLIT_KEY))
        # Sorted so in-memory gathers and disk reads stay in storage order.
        return sorted(order[num_val:].tolist()), sorted(order[:num_val].tolist())

    @staticmethod
    def _check_stats(mean: Sequence[float], std: Sequence[float]) -> None:
        """Raise ``ValueError`` unless ``mean``/``std`` are 3 values each and ``std > 0``."""
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"data.mean and data.std need 3 values each, got {list(mean)} and {list(std)}")
        if min(std) <= 0:
            raise ValueError(f"data.std must be > 0, got {list(std)}")

    def _compute_stats(self, train: Dataset) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of pixels in [0, 1] over the training split (or a fixed subset)."""
        if self.stats_max_images is not None and len(train) > self.stats_max_images:
            train = Subset(train, self._bn_subset(train, self.stats_max_images))
        loader = DataLoader(
            train, batch_size=_STATS_CHUNK, shuffle=False, num_workers=self.num_workers, collate_fn=collate_uint8
        )
        total = torch.zeros(3, dtype=torch.float64)
        total_sq = torch.zeros(3, dtype=torch.float64)
        count = 0
        for batch in loader:
            pixels = batch.images.to(torch.float64).div_(255.0)  # (B, 3, H, W)
            total += pixels.sum(dim=(0, 2, 3))
            total_sq += pixels.square().sum(dim=(0, 2, 3))
            count += pixels.shape[0] * pixels.shape[2] * pixels.shape[3]
        mean = total / count
        # Clamp: a constant channel (e.g. blank synthetic data) must not give std = 0.
        std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt().clamp_min(1e-3)
        return mean.tolist(), std.tolist()

    def _bn_subset(self, train: Dataset, num_images: int) -> list[int]:
        """Positions in ``train`` of a fixed random subset of ``min(num_images, len(train))`` images."""
        if num_images not in self._bn_positions:
            order = torch.randperm(len(train), generator=make_generator(self.seed, _BN_KEY))
            self._bn_positions[num_images] = order[:num_images].tolist()
        return self._bn_positions[num_images]

    # ----------------------------------------------------------------------------------------
    # Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """Load the data, build the splits and compute mean/std if not given or restored."""
        if self._train is not None:
            return  # idempotent: Lightning may call setup once per stage
        train, val = self._build_splits()
        if len(train) == 0 or len(val) == 0:
            raise ValueError(f"{self.name}: empty split ({len(train)} train, {len(val)} val images)")
        self._train, self._val = train, val
        if self.mean is None:
            self.mean, self.std = self._compute_stats(train)

    def _splits(self) -> tuple[Dataset, Dataset]:
        """Return (train, val), running ``setup`` first if needed."""
        if self._train is None or self._val is None:
            self.setup()
        assert self._train is not None and self._val is not None
        return self._train, self._val

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None, drop_last: bool) -> DataLoader:
        """A DataLoader over uint8 samples that yields normalised ``(x, y)`` batches."""
        assert self.mean is not None and self.std is not None  # set by setup() or load_state_dict()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,  # order comes from the sampler (train) or is sequential (eval)
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=NormalizeCollate(self.mean, self.std),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (order fixed by ``(seed, epoch)``), last partial batch dropped."""
        train, _ = self._splits()
        if len(train) < self.batch_size:
            raise ValueError(
                f"{self.name}: train split has {len(train)} images, fewer than data.batch_size={self.batch_size}"
            )
        self._train_sampler = EpochShuffleSampler(len(train), self.seed)
        self._train_batch = None  # a new fit (or a reloaded loader) numbers its batches afresh
        if self.trainer is not None:
            self._train_sampler.set_epoch(self.trainer.current_epoch)
        return self._loader(train, self.batch_size, self._train_sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order, without augmentation."""
        _, val = self._splits()
        return self._loader(val, self.eval_batch_size, sampler=None, drop_last=False)

    def bn_dataloader(self, num_images: int = 2000, batch_size: int | None = None) -> DataLoader:
        """Batches of a fixed, cached subset of the *training* split, without augmentation.

        Used to re-estimate BatchNorm statistics of a subnet before evaluating it. The same images,
        in the same order, are returned on every call for a given ``seed``.

        Args:
            num_images: Subset size; the whole train split is used if it is smaller.
            batch_size: Images per batch; ``None`` means ``eval_batch_size``.
        """
        if num_images < 1:
            raise ValueError(f"bn_dataloader: num_images must be >= 1, got {num_images}")
        train, _ = self._splits()
        subset = Subset(train, self._bn_subset(train, num_images))
        size = self.eval_batch_size if batch_size is None else batch_size
        return self._loader(subset, size, sampler=None, drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        """Select the train order of ``epoch`` outside a Trainer (Lightning does this itself)."""
        if self._train_sampler is not None:
            self._train_sampler.set_epoch(epoch)

    def augment_batch(self, x: torch.Tensor, epoch: int, batch_idx: int, rank: int = 0) -> torch.Tensor:
        """Augment a normalised batch, deterministically for ``(seed, epoch, batch_idx, rank)``.

        Random translate by up to ``crop_padding`` pixels (border filled with black), then a
        horizontal flip with probability 1/2 if ``hflip``.

        Args:
            x: Normalised images, (N, 3, H, W), on any device.
            epoch: Training epoch.
            batch_idx: Index of the batch within the epoch.
            rank: Global rank of the process, so DDP ranks draw different streams.

        Returns:
            Augmented images, (N, 3, H, W), same device and dtype.
        """
        assert self.mean is not None and self.std is not None
        generator = make_generator(self.seed, _AUGMENT_KEY, epoch, batch_idx, rank)
        mean = torch.tensor(self.mean)
        std = torch.tensor(self.std)
        x = random_translate(x, self.crop_padding, fill=(0.0 - mean) / std, generator=generator)
        if self.hflip:
            x = random_hflip(x, generator)
        return x

    def _next_train_batch_idx(self, epoch: int) -> int:
        """Index within ``epoch`` of the training batch being transferred to the device.

        Counted here, from the transfers themselves (Lightning hands each training batch, in loader
        order, once to ``on_after_batch_transfer``), so nothing reads Lightning's loop internals: the
        count restarts at 0 in every new epoch and with every ``train_dataloader()`` (each fit). A
        run resumed at an epoch boundary (enas4d's checkpoints) therefore numbers the batches of its
        first epoch from 0 as the uninterrupted run did; the train order restarts there too (the
        sampler depends on ``(seed, epoch)`` only). tests/data/test_datamodule_base.py checks the
        indices against a real Trainer.
        """
        last = self._train_batch
        idx = last[1] + 1 if last is not None and last[0] == epoch else 0
        self._train_batch = (epoch, idx)
        return idx

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on their device; evaluation batches pass through unchanged."""
        if self.trainer is None or not self.trainer.training:
            return batch
        x, y = batch
        epoch = self.trainer.current_epoch
        x = self.augment_batch(
            x,
            epoch=epoch,
            batch_idx=self._next_train_batch_idx(epoch),
            rank=self.trainer.global_rank,
        )
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """State saved in Lightning checkpoints: normalisation statistics and what they belong to."""
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "seed": self.seed,
            "mean": self.mean,
            "std": self.std,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore mean/std from a checkpoint, so a resumed or exported model sees the same inputs.

        Raises:
            ValueError: If the state has another version or belongs to a dataset with other classes.
        """
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(
                f"datamodule state version {state_dict.get('version')!r} is not supported (expected {STATE_VERSION})"
            )
        if state_dict["num_classes"] != self.num_classes:
            raise ValueError(
                f"checkpoint datamodule '{state_dict['name']}' has {state_dict['num_classes']} classes, "
                f"this '{self.name}' has {self.num_classes}"
            )
        if state_dict["mean"] is not None:
            self._check_stats(state_dict["mean"], state_dict["std"])
            self.mean = [float(m) for m in state_dict["mean"]]
            self.std = [float(s) for s in state_dict["std"]]
