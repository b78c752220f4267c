"""CIFAR-10 / CIFAR-100 from an ``.npz`` array file or a torchvision on-disk folder."""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset

from enas4d.data.base import ImageDataModule, InMemoryImages

__all__ = ["CIFAR10_CLASSES", "CIFAR100_CLASSES", "CIFARDataModule", "load_cifar_arrays", "resolve_cifar_path"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100 fine labels, in label order (alphabetical), as in the dataset's meta file.
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray "
    "road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle "
    "wardrobe whale willow_tree wolf woman worm"
).split()

_VARIANTS = {
    "cifar10": ("CIFAR-10", CIFAR10_CLASSES, torchvision.datasets.CIFAR10),
    "cifar100": ("CIFAR-100", CIFAR100_CLASSES, torchvision.datasets.CIFAR100),
}
_CIFAR_SIZE = 32  # CIFAR images are 32x32 by definition; other sizes are rejected, not resized

CIFARVariant = Literal["cifar10", "cifar100"]


def resolve_cifar_path(
    path: str | os.PathLike[str], variant: CIFARVariant
) -> tuple[Literal["npz", "torchvision"], Path]:
    """Find the CIFAR data at ``path``: an ``.npz`` file, a folder holding ``train.npz``, or a torchvision folder.

    Returns:
        ``("npz", file)`` or ``("torchvision", root)`` where ``root`` is what torchvision's
        ``CIFAR10(root=...)`` / ``CIFAR100(root=...)`` expects (the parent of ``cifar-10-batches-py``).

    Raises:
        FileNotFoundError: If nothing usable is there; the message lists every place looked at.
    """
    label, _, tv_class = _VARIANTS[variant]
    folder = tv_class.base_folder  # "cifar-10-batches-py" / "cifar-100-python"
    given = Path(path).expanduser()
    if given.is_file() and given.suffix == ".npz":
        return "npz", given
    if given.is_dir():
        if (given / "train.npz").is_file():
            return "npz", given / "train.npz"
        if (given / folder).is_dir():
            return "torchvision", given
        if given.name == folder:
            return "torchvision", given.parent
    looked = [f"{given} (an .npz file)", str(given / "train.npz"), f"{given / folder}/ (torchvision layout)"]
    raise FileNotFoundError(
        f"data.path: no {label} .npz or torchvision folder at '{given}' (looked for {', '.join(looked)})"
    )


def _read_npz(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``x`` and ``y`` arrays of an ``.npz`` archive, or raise one clear ``ValueError``."""
    try:
        archive = np.load(file, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an archive with keys 'x' and 'y'")
        with archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise ValueError(f"it lacks key(s) {sorted(missing)} (has {archive.files})")
            return archive["x"], archive["y"]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"data.path: cannot read '{file}' as a CIFAR .npz: {err}") from err


def load_cifar_arrays(path: str | os.PathLike[str], variant: CIFARVariant) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the CIFAR training images at ``path`` as uint8 (N, 3, 32, 32) and labels int64 (N,).

    Raises:
        FileNotFoundError: If ``path`` holds no CIFAR data (see :func:`resolve_cifar_path`).
        ValueError: If the file is unreadable or its arrays have the wrong keys, shapes or labels.
    """
    label, classes, tv_class = _VARIANTS[variant]
    kind, where = resolve_cifar_path(path, variant)
    if kind == "npz":
        x, y = _read_npz(where)
    else:
        try:
            dataset = tv_class(root=str(where), train=True, download=False)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise ValueError(f"data.path: torchvision {label} folder under '{where}' is incomplete: {err}") from err
        x, y = dataset.data, np.asarray(dataset.targets)

    source = f"{label} data at '{where}'"
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (_CIFAR_SIZE, _CIFAR_SIZE, 3):
        raise ValueError(f"{source}: x must be uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
    if y.shape != x.shape[:1] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{source}: y must be integer ({x.shape[0]},), got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"{source}: labels must be in [0, {len(classes)}), got [{y.min()}, {y.max()}]")
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # NHWC -> (N, 3, 32, 32)
    return images, torch.from_numpy(y.astype(np.int64))


class CIFARDataModule(ImageDataModule):
    """Lightning datamodule for CIFAR-10/100 training images; validation is carved out of them."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        variant: CIFARVariant = "cifar10",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        val_size: int | None = None,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 4,
        hflip: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        """Configure the CIFAR data.

        Args:
            path: An ``.npz`` with ``x`` uint8 (N, 32, 32, 3) and integer ``y`` (N,), a folder
                holding ``train.npz``, or a torchvision CIFAR folder (the one containing
                ``cifar-10-batches-py`` / ``cifar-100-python``, or that folder itself).
            variant: ``cifar10`` or ``cifar100``; sets the number of classes and their names.
            batch_size: Training images per batch.
            eval_batch_size: Validation/BN-estimation images per batch; ``None`` means ``batch_size``.
            val_fraction: Fraction of the training images held out for validation.
            val_size: Number of validation images; overrides ``val_fraction`` when set.
            seed: Seed of split, shuffling, augmentation and BN estimation subset.
            mean: Per-channel mean of [0, 1] pixels; ``None`` computes it from the train split.
            std: Per-channel std, given together with ``mean``.
            crop_padding: Padding of the standard random 32x32 crop (0 disables).
            hflip: Random horizontal flips while training.
            num_workers: DataLoader worker processes (0 is fastest for in-memory data).
            pin_memory: Pin host memory of batches for faster GPU transfer.

        Raises:
            ValueError: For an unknown ``variant``.
            FileNotFoundError: If ``path`` holds no CIFAR data (checked here, loaded in ``setup``).
        """
        if variant not in _VARIANTS:
            raise ValueError(f"data.variant must be one of {sorted(_VARIANTS)}, got {variant!r}")
        classes = _VARIANTS[variant][1]
        super().__init__(
            name=variant,
            num_classes=len(classes),
            class_names=classes,
            image_size=_CIFAR_SIZE,
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
        self.variant = variant
        self.path = Path(path)
        resolve_cifar_path(self.path, variant)  # fail at construction, not minutes later in setup

    def _build_splits(self) -> tuple[Dataset, Dataset]:
        """Load the arrays and split them by ``seed``."""
        images, labels = load_cifar_arrays(self.path, self.variant)
        train_idx, val_idx = self.split_indices(len(labels))
        return InMemoryImages(images, labels, train_idx), InMemoryImages(images, labels, val_idx)
