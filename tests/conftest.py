"""Shared fixtures: deterministic torch, small thread count."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed torch per test so failures reproduce."""
    torch.manual_seed(0)
    yield
