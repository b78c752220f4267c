"""What every console script shares: where the configs live and how bad input ends a run."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

__all__ = ["CONF_DIR", "EXIT_BAD_INPUT", "one_line_errors", "positive_int"]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # <repo>/conf (editable install)
EXIT_BAD_INPUT = 2  # exit status of every enas4d command on bad input (argparse's convention)


@contextlib.contextmanager
def one_line_errors(app: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` raised inside into one line on stderr (``app: error: ...``) and exit status 2."""
    try:
        yield
    except errors as e:
        print(f"{app}: error: {str(e).replace(chr(10), ' ')}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def positive_int(cfg: Any, key: str, error: type[Exception] = ValueError) -> int:
    """``cfg[key]`` (a dotted key of an OmegaConf config) as an int >= 1, else ``error`` naming the field."""
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{key}: expected an integer >= 1, got {value!r}")
    return value
