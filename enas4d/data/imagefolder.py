"""Any ``torchvision.datasets.ImageFolder`` tree (e.g. ImageNet), decoded from disk per image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from enas4d.data.base import ImageDataModule

__all__ = ["ImageFolderDataModule"]


def _scan_classes(root: Path) -> list[str]:
    """Class folder names under ``root``, sorted as ImageFolder labels them.

    Raises:
        FileNotFoundError: If ``root`` is missing.
        ValueError: If it has no class sub-folders.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"data.path: no ImageFolder tree at '{root}' (expected a folder of class folders)")
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError as err:  # torchvision raises this for a folder without sub-folders
        raise ValueError(f"data.path: '{root}' has no class sub-folders: {err}") from err
    return classes


def _image_folder(root: Path, transform: transforms.Compose) -> ImageFolder:
    """Build an ImageFolder, turning torchvision's error for a class without images into a clear one."""
    try:
        return ImageFolder(str(root), transform=transform)
    except FileNotFoundError as err:
        raise ValueError(f"data.path: empty split under '{root}': {err}") from err


class ImageFolderDataModule(ImageDataModule):
    """Lightning datamodule for an ImageFolder tree: ``path/train/<class>/*`` and optionally ``path/val/``.

    Images are resized (shorter side to ``image_size / crop_fraction``) and centre-cropped to
    ``image_size`` when decoded; training adds the batched random translate/flip of the base class.
    """

    # Decoding the whole train split (1.28 M images for ImageNet) just for mean/std is too slow;
    # a fixed random subset of this many training images is used instead.
    stats_max_images = 2000

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_size: int = 224,
        crop_fraction: float = 0.875,
        use_val_folder: bool = True,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.05,
        val_size: int | None = None,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 0,
        hflip: bool = True,
        num_workers: int = 2,
        pin_memory: bool = False,
    ) -> None:
        """Configure the ImageFolder data.

        Args:
            path: Root of the tree: holds ``train/`` (and optionally ``val/``) class folders, or
                is itself the folder of class folders.
            image_size: Side in pixels of every batch.
            crop_fraction: Centre crop as a fraction of the resized shorter side (0.875: 256 -> 224).
            use_val_folder: Use ``path/val`` as the validation split when it exists; set false to
                carve validation out of the training images (e.g. when ``val/`` is your test set).
            batch_size: Training images per batch.
            eval_batch_size: Validation/BN-estimation images per batch; ``None`` means ``batch_size``.
            val_fraction: Fraction of training images held out when no ``val/`` folder is used.
            val_size: Number of held-out validation images; overrides ``val_fraction`` when set.
            seed: Seed of split, shuffling, augmentation and BN estimation subset.
            mean: Per-channel mean of [0, 1] pixels; ``None`` computes it from 2,000 training images.
            std: Per-channel std, given together with ``mean``.
            crop_padding: Maximum random translation in pixels while training (0 disables).
            hflip: Random horizontal flips while training.
            num_workers: DataLoader worker processes decoding images.
            pin_memory: Pin host memory of batches for faster GPU transfer.

        Raises:
            FileNotFoundError: If ``path`` (or its ``train/``) does not exist.
            ValueError: If it has no class folders, or ``val/`` has other classes than ``train/``.
        """
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"data.crop_fraction must be in (0, 1], got {crop_fraction}")
        root = Path(path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data.path: no ImageFolder tree at '{root}' (the folder does not exist)")
        train_root = root / "train" if (root / "train").is_dir() else root
        val_root = root / "val" if use_val_folder and (root / "val").is_dir() else None
        classes = _scan_classes(train_root)
        if val_root is not None and _scan_classes(val_root) != classes:
            raise ValueError(f"data.path: class folders of '{val_root}' differ from those of '{train_root}'")
        super().__init__(
            name="imagefolder",
            num_classes=len(classes),
            class_names=classes,
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
        self.path = root
        self.train_root = train_root
        self.val_root = val_root
        self.crop_fraction = crop_fraction

    def _build_splits(self) -> tuple[Dataset, Dataset]:
        """Index the image files; split the train tree by ``seed`` unless a ``val/`` folder is used."""
        # Same decode for train and eval: augmentation happens later, batched, on tensors.
        transform = transforms.Compose(
            [
                transforms.Resize(round(self.image_size / self.crop_fraction)),  # shorter side
                transforms.CenterCrop(self.image_size),
                transforms.PILToTensor(),  # (3, S, S) uint8; ImageFolder's loader gives RGB
            ]
        )
        train = _image_folder(self.train_root, transform)
        if self.val_root is not None:
            return train, _image_folder(self.val_root, transform)
        train_idx, val_idx = self.split_indices(len(train))
        return Subset(train, train_idx), Subset(train, val_idx)
