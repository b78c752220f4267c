"""Tests of the datamodule registry and of the Hydra configs in conf/data/."""

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from enas4d.data import DigitsDataModule, create_datamodule, list_datamodules

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "data"


def test_registry_names():
    assert list_datamodules() == ["cifar10", "cifar100", "digits", "imagefolder"]
    assert isinstance(create_datamodule("digits", batch_size=8), DigitsDataModule)


def test_unknown_name_lists_valid_names():
    valid = "cifar10, cifar100, digits, imagefolder"
    with pytest.raises(ValueError, match=f"unknown datamodule 'mnist'; valid names: {valid}"):
        create_datamodule("mnist")


def test_typo_in_arguments_is_rejected():
    with pytest.raises(TypeError, match="batchsize"):
        create_datamodule("digits", batchsize=8)


@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "imagefolder"])
def test_config_matches_constructor(name):
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    params = inspect.signature(get_class(cfg._target_).__init__).parameters
    assert set(cfg) - {"_target_"} == set(params) - {"self"}, "every argument in the yaml, and only those"
    lines = (CONF_DIR / f"{name}.yaml").read_text().splitlines()
    for key in set(cfg) - {"_target_"}:  # every field commented, on its line or the line above
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        assert "#" in lines[index] or lines[index - 1].startswith("#"), f"{name}.yaml: '{key}' lacks a comment"


def test_digits_config_instantiates_with_top_level_seed():
    cfg = OmegaConf.create({"seed": 3, "data": OmegaConf.load(CONF_DIR / "digits.yaml")})
    dm = instantiate(cfg.data)
    assert isinstance(dm, DigitsDataModule) and dm.seed == 3
    assert OmegaConf.create({"data": OmegaConf.load(CONF_DIR / "digits.yaml")}).data.seed == 0
