"""TorchScript calls of enas4d, with torch's deprecation notices for them handled in one place.

torch 2.14 marks ``torch.jit.script``, ``freeze``, ``save``, ``load`` (and ``trace``) deprecated in
favour of ``torch.export``, and warns on every call. ``model.ts`` is still the export's contract
and TorchScript still works, so enas4d silences exactly those notices (matched by message, so any
other warning, from torch or from the model, still shows) wherever it calls TorchScript itself:
export, evaluate, benchmarks and tests go through these helpers. A user's own ``torch.jit.load``
of a ``model.ts`` warns as torch decides.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Iterator

import torch
from torch import nn

__all__ = ["JIT_DEPRECATION", "quiet_torchscript", "script", "save", "load", "roundtrip"]

# The message torch 2.14 gives every deprecated torch.jit entry point ("`torch.jit.load` is deprecated...").
JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Inside, torch.jit's deprecation FutureWarnings are not shown (other warnings are)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
        yield


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)`` without the deprecation notice."""
    with quiet_torchscript():
        return torch.jit.script(model)


def save(module: torch.jit.ScriptModule, path: str | os.PathLike | io.BytesIO) -> None:
    """``torch.jit.save`` without the deprecation notice."""
    with quiet_torchscript():
        torch.jit.save(module, path if isinstance(path, io.BytesIO) else os.fspath(path))


def load(path: str | os.PathLike | io.BytesIO, map_location: str | torch.device | None = None
         ) -> torch.jit.ScriptModule:
    """``torch.jit.load`` without the deprecation notice."""
    with quiet_torchscript():
        return torch.jit.load(path if isinstance(path, io.BytesIO) else os.fspath(path), map_location=map_location)


def roundtrip(model: nn.Module) -> torch.jit.ScriptModule:
    """Script ``model``, save it to memory and load it back: what a user gets from a saved model.ts."""
    buf = io.BytesIO()
    save(script(model), buf)
    buf.seek(0)
    return load(buf)
