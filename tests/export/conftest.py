"""Fixtures of the export tests: one torch thread (the 2-core test machine is shared)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Oversubscribed OpenMP threads make small CPU convolutions 10-100x slower on a busy machine.

    Session scope, so module-scoped fixtures (which build and export models) run with it too.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
