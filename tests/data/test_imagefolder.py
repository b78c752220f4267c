"""Tests of ImageFolderDataModule on a tiny tree of PNG files."""

import numpy as np
import pytest
import torch
from PIL import Image

from enas4d.data import ImageFolderDataModule

CLASSES = ["ant", "bee", "cat"]


def _tree(root, per_class=4, seed=0):
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (int(rng.integers(10, 20)), int(rng.integers(10, 20)))  # odd, non-square sizes
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_split_of_train_folder(tmp_path):
    _tree(tmp_path / "train")
    dm = ImageFolderDataModule(path=tmp_path, image_size=8, batch_size=4, val_size=3, num_workers=0)
    assert (dm.num_classes, dm.class_names, dm.image_size) == (3, CLASSES, 8)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.val_dataloader().dataset) == 3 and len(dm.train_dataloader().dataset) == 9
    assert len(dm.mean) == 3


def test_val_folder_and_flat_tree(tmp_path):
    _tree(tmp_path / "train")
    _tree(tmp_path / "val", per_class=2, seed=1)
    dm = ImageFolderDataModule(path=tmp_path, image_size=8, batch_size=4, num_workers=0)
    assert len(dm.val_dataloader().dataset) == 6 and len(dm.train_dataloader().dataset) == 12
    carved = ImageFolderDataModule(
        path=tmp_path, image_size=8, batch_size=4, val_size=2, use_val_folder=False, num_workers=0
    )
    assert len(carved.val_dataloader().dataset) == 2
    flat = ImageFolderDataModule(path=tmp_path / "train", image_size=8, batch_size=4, val_size=2, num_workers=0)
    assert flat.class_names == CLASSES


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.path: no ImageFolder tree"):
        ImageFolderDataModule(path=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataModule(path=tmp_path / "empty")
    (tmp_path / "hollow" / "ant").mkdir(parents=True)  # a class folder without images
    with pytest.raises(ValueError, match="empty split"):
        ImageFolderDataModule(path=tmp_path / "hollow", num_workers=0).setup()
    _tree(tmp_path / "mixed" / "train")
    (tmp_path / "mixed" / "val" / "dog").mkdir(parents=True)
    with pytest.raises(ValueError, match="differ"):
        ImageFolderDataModule(path=tmp_path / "mixed")
