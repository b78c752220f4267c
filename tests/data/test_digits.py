"""Tests of DigitsDataModule: shapes, dtypes, normalisation (scikit-learn's bundled data, offline)."""

import pytest
import torch

from enas4d.data import DigitsDataModule

NUM_DIGITS = 1797  # size of sklearn.datasets.load_digits


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    return dm


def test_attributes(digits):
    assert (digits.name, digits.num_classes, digits.in_chans, digits.image_size) == ("digits", 10, 3, 32)
    assert digits.class_names == [str(d) for d in range(10)]
    assert len(digits.mean) == len(digits.std) == 3


def test_batch_shapes_and_dtypes(digits):
    x, y = next(iter(digits.train_dataloader()))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < 10
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey replicated to 3 channels


def test_split_sizes(digits):
    train, val = len(digits.train_dataloader().dataset), len(digits.val_dataloader().dataset)
    assert train + val == NUM_DIGITS
    assert val == round(0.1 * NUM_DIGITS)
    # The last partial batch is dropped for training, kept for evaluation.
    assert len(digits.train_dataloader()) == train // 32
    assert sum(len(y) for _, y in digits.val_dataloader()) == val


def test_train_split_is_normalised(digits):
    # The BN estimation loader covers the whole train split when asked for more images than it has.
    x = torch.cat([x for x, _ in digits.bn_dataloader(num_images=10**6)])
    assert x.shape[0] == NUM_DIGITS - round(0.1 * NUM_DIGITS)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_pixel_range_before_normalisation(digits):
    x, _ = next(iter(digits.val_dataloader()))
    mean, std = torch.tensor(digits.mean).view(1, 3, 1, 1), torch.tensor(digits.std).view(1, 3, 1, 1)
    raw = x * std + mean
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5 and raw.max() > 0.9


def test_image_size_and_given_stats():
    dm = DigitsDataModule(image_size=16, batch_size=8, mean=[0.5] * 3, std=[0.25] * 3)
    x, _ = next(iter(dm.val_dataloader()))  # setup runs on demand
    assert x.shape[1:] == (3, 16, 16)
    assert dm.mean == [0.5] * 3 and dm.std == [0.25] * 3  # given stats are not recomputed


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"mean": [0.5] * 3}, "together"),
        ({"mean": [0.5] * 3, "std": [0.0] * 3}, "std"),
        ({"mean": [0.5], "std": [0.5]}, "3 values"),
        ({"crop_padding": -1}, "crop_padding"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_empty_split_is_a_clear_error():
    with pytest.raises(ValueError, match="empty train or validation split"):
        DigitsDataModule(val_size=NUM_DIGITS).setup()
    with pytest.raises(ValueError, match="empty train or validation split"):
        DigitsDataModule(val_fraction=1e-6).setup()
