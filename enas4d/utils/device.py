"""The ``device=`` option of enas4d-search and enas4d-evaluate: one resolver, one set of values."""

from __future__ import annotations

import re

import torch

__all__ = ["DEVICES", "resolve_device"]

DEVICES = "auto, cpu, cuda, cuda:N"


def resolve_device(text: object, error: type[Exception] = ValueError) -> torch.device:
    """The device of ``device=``: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.

    Anything else, or a CUDA device torch cannot use here, raises ``error`` (the app's one-line
    error type) naming the field and the allowed values.
    """
    name = text.strip().lower() if isinstance(text, str) else ""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise error(f"device: {text!r} not allowed; allowed values: {DEVICES}")
    if not torch.cuda.is_available():
        raise error(f"device: {text!r} needs CUDA, which torch cannot use here; "
                    "allowed values on this machine: auto, cpu")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise error(f"device: {text!r} does not exist; allowed values: cuda:0 to "
                    f"cuda:{torch.cuda.device_count() - 1}, cuda, cpu, auto")
    return torch.device(name)
