"""scikit-learn's bundled 8x8 handwritten digits: the offline default dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from enas4d.data.base import ImageDataModule, InMemoryImages

__all__ = ["DigitsDataModule", "load_digits_images"]

# load_digits pixels are counts of set pixels in 4x4 blocks of a 32x32 bitmap: integers 0..16.
_DIGITS_MAX = 16.0


def load_digits_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return all 1,797 digits as uint8 images (N, 3, S, S) and int64 labels (N,).

    The 8x8 grey levels 0..16 are scaled to [0, 1], resized bilinearly to ``image_size``,
    quantised to 0..255 (so every dataset shares one uint8 pipeline) and replicated to 3 channels.
    """
    images, labels = load_digits(return_X_y=True)  # (N, 64) float 0..16, (N,) int
    grey = torch.from_numpy(images).float().view(-1, 1, 8, 8) / _DIGITS_MAX  # (N, 1, 8, 8) in [0, 1]
    grey = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    grey = grey.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)  # (N, 1, S, S)
    return grey.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels).long()


class DigitsDataModule(ImageDataModule):
    """Lightning datamodule for scikit-learn's digits (1,797 images, 10 classes), fully offline."""

    def __init__(
        self,
        image_size: int = 32,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        val_size: int | None = None,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 2,
        hflip: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        """Configure the digits data.

        Args:
            image_size: Side in pixels the 8x8 digits are resized to.
            batch_size: Training images per batch.
            eval_batch_size: Validation/BN-estimation images per batch; ``None`` means ``batch_size``.
            val_fraction: Fraction of the 1,797 images held out for validation.
            val_size: Number of validation images; overrides ``val_fraction`` when set.
            seed: Seed of split, shuffling, augmentation and BN estimation subset.
            mean: Per-channel mean of [0, 1] pixels; ``None`` computes it from the train split.
            std: Per-channel std, given together with ``mean``.
            crop_padding: Maximum random translation in pixels while training (0 disables).
            hflip: Random horizontal flips; off by default because mirrored digits change meaning.
            num_workers: DataLoader worker processes (0 is fastest for in-memory data).
            pin_memory: Pin host memory of batches for faster GPU transfer.
        """
        super().__init__(
            name="digits",
            num_classes=10,
            class_names=[str(d) for d in range(10)],
            image_size=image_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            val_size=val_size,
            seed=seed,
            mean=mean,
            std=std,
            crop_padding=crop_padding,
            hflip=hflip,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()

    def _build_splits(self) -> tuple[Dataset, Dataset]:
        """Load all digits and split them by ``seed``."""
        images, labels = load_digits_images(self.image_size)
        train_idx, val_idx = self.split_indices(len(labels))
        return InMemoryImages(images, labels, train_idx), InMemoryImages(images, labels, val_idx)
