"""Tests of CIFARDataModule on tiny synthetic .npz files and a faked torchvision folder."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from enas4d.data import CIFARDataModule
from enas4d.data.cifar import CIFAR100_CLASSES

SHARED_CIFAR10 = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10" / "train.npz"


def _arrays(n=60, num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % num_classes
    return x, y


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_file(tmp_path):
    x, y = _arrays()
    dm = CIFARDataModule(path=_write_npz(tmp_path / "train.npz", x=x, y=y), batch_size=16, val_size=12)
    assert (dm.name, dm.num_classes, dm.image_size, dm.in_chans) == ("cifar10", 10, 32, 3)
    assert dm.class_names[0] == "airplane"
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert len(dm.val_dataloader().dataset) == 12 and len(dm.train_dataloader().dataset) == 48
    # Pixels round-trip exactly through NHWC -> NCHW and normalisation.
    xv, yv = next(iter(dm.val_dataloader()))
    rows = dm.val_dataloader().dataset.indices
    raw = xv * torch.tensor(dm.std).view(1, 3, 1, 1) + torch.tensor(dm.mean).view(1, 3, 1, 1)
    expected = torch.from_numpy(x[rows.numpy()]).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(raw, expected[: len(raw)], atol=1e-5)
    assert torch.equal(yv, torch.from_numpy(y[rows.numpy()])[: len(yv)])


def test_folder_holding_train_npz_and_cifar100(tmp_path):
    x, y = _arrays(n=200, num_classes=100)
    _write_npz(tmp_path / "train.npz", x=x, y=y)
    dm = CIFARDataModule(path=tmp_path, variant="cifar100", batch_size=16)
    dm.setup()
    assert dm.num_classes == 100 and dm.class_names == list(CIFAR100_CLASSES)
    assert len(CIFAR100_CLASSES) == len(set(CIFAR100_CLASSES)) == 100
    assert CIFAR100_CLASSES == sorted(CIFAR100_CLASSES)  # label order is alphabetical


def test_torchvision_folder(tmp_path, monkeypatch):
    # Real batches carry md5 checksums we cannot reproduce; skip only that check.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x, y = _arrays(n=50)
    for i in range(5):  # 5 batches of 10 images, rows stored as CHW-flattened
        part = slice(10 * i, 10 * (i + 1))
        entry = {"data": x[part].transpose(0, 3, 1, 2).reshape(10, -1), "labels": y[part].tolist()}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["c"] * 10}))
    for path in (tmp_path, folder):  # the torchvision root, or the batches folder itself
        dm = CIFARDataModule(path=path, batch_size=8, val_size=10)
        dm.setup()
        train = dm.train_dataloader().dataset
        assert len(train) == 40
        assert torch.equal(train.images, torch.from_numpy(x).permute(0, 3, 1, 2))
        assert torch.equal(train.labels, torch.from_numpy(y))


def test_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.path: no CIFAR-10 \.npz or torchvision folder at .*looked for"):
        CIFARDataModule(path=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        CIFARDataModule(path=tmp_path, variant="cifar100")  # an existing folder without data


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": _arrays()[0]}, r"lacks key\(s\) \['y'\]"),
        ({"x": _arrays()[0][:, :16], "y": _arrays()[1]}, r"uint8 \(N, 32, 32, 3\)"),
        ({"x": _arrays()[0].astype(np.float32), "y": _arrays()[1]}, "uint8"),
        ({"x": _arrays()[0], "y": _arrays()[1][:10]}, "y must be integer"),
        ({"x": _arrays()[0], "y": _arrays()[1] + 5}, r"labels must be in \[0, 10\)"),
    ],
)
def test_bad_npz_contents(tmp_path, arrays, match):
    dm = CIFARDataModule(path=_write_npz(tmp_path / "bad.npz", **arrays))
    with pytest.raises(ValueError, match=match):
        dm.setup()


def test_unreadable_npz(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"not a zip archive at all")
    with pytest.raises(ValueError, match="cannot read .* as a CIFAR .npz"):
        CIFARDataModule(path=tmp_path / "garbage.npz").setup()
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    with pytest.raises(ValueError, match="single array"):
        CIFARDataModule(path=tmp_path / "array.npz").setup()


def test_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        CIFARDataModule(path=tmp_path, variant="cifar11")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR10.is_file(), reason="shared CIFAR-10 copy not present")
def test_shared_cifar10_npz():
    with np.load(SHARED_CIFAR10) as archive:
        assert archive["x"].shape == (45000, 32, 32, 3) and archive["x"].dtype == np.uint8
        assert archive["y"].shape == (45000,)
    dm = CIFARDataModule(path=SHARED_CIFAR10, batch_size=256)
    dm.setup()
    assert len(dm.train_dataloader().dataset) == 40500 and len(dm.val_dataloader().dataset) == 4500
    # Documented statistics of the 45,000 images (README): ~0.491, 0.482, 0.447 mean.
    assert np.allclose(dm.mean, [0.4914, 0.4822, 0.4465], atol=2e-3)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (256, 3, 32, 32) and int(y.max()) <= 9
