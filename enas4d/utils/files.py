"""File helpers: atomic writes, temporary siblings with the user's usual permissions, content hashes.

Temporary files and folders are created by ``os.open(..., O_CREAT | O_EXCL, 0o666)`` and
``os.mkdir(..., 0o777)`` under fresh random names, so the kernel applies the process umask (and any
default ACL of the folder) exactly as it does for an ordinary new file. ``tempfile.mkstemp`` and
``mkdtemp`` would leave them 0600/0700, and reading the umask means ``os.umask(0)`` then restoring
it, which briefly changes a process-wide setting under any thread that creates a file meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_target", "file_digest", "make_temp_dir", "write_atomic", "write_json"]

_NAME_TRIES = 100  # random names to try before giving up (a clash has odds of 2**-32 per try)


def _unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create ``parent/<prefix><8 random hex><suffix>`` with ``create`` (which must fail if it exists)."""
    for _ in range(_NAME_TRIES):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {str(parent)!r}")


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder ``parent/<prefix><random>`` with the permissions ``mkdir`` would give it."""
    return _unique(Path(parent), prefix, "", lambda p: os.mkdir(p, 0o777))


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    ``os.replace`` is atomic within one file system (POSIX and Windows). The new file gets the usual
    permissions of a new file (see the module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = os.fspath(_unique(path.parent, f".{path.name}.", ".tmp", _new_file))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic, pretty JSON (NaN/inf rejected: the file must be standard JSON)."""
    write_atomic(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document in ``path``; ValueError (one line: what is wrong) when it cannot be read."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{os.fspath(path)!r} is not readable JSON ({str(e).splitlines()[0]})") from e


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
