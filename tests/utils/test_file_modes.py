"""Temporary files and folders get the permissions of ordinary new ones, without touching the umask."""

import hashlib
import os

import pytest

from enas4d.utils import files
from enas4d.utils.files import atomic_target, file_digest, make_temp_dir, write_json


@pytest.fixture
def umask_027():
    """Run with umask 027 (group may read, others nothing), restored afterwards."""
    before = os.umask(0o027)
    yield
    os.umask(before)


def test_temp_dir_and_atomic_file_follow_the_umask_without_reading_it(umask_027, tmp_path, monkeypatch):
    def no_umask(mask):  # reading it means setting it: a process-wide change other threads would see
        raise AssertionError("os.umask called")

    monkeypatch.setattr(files.os, "umask", no_umask)
    d = make_temp_dir(tmp_path, ".out.tmp-")
    assert d.parent == tmp_path and d.name.startswith(".out.tmp-") and not any(d.iterdir())
    assert d.stat().st_mode & 0o777 == 0o750  # tempfile.mkdtemp: 0700
    write_json(d / "a.json", {"a": 1})
    assert (d / "a.json").stat().st_mode & 0o777 == 0o640  # tempfile.mkstemp: 0600
    with atomic_target(d / "b.bin") as tmp:
        assert os.path.basename(tmp).startswith(".b.bin.") and os.stat(tmp).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(d)) == ["a.json", "b.bin"]
    assert make_temp_dir(tmp_path, ".out.tmp-") != d  # a fresh name each time


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    p = tmp_path / "x.ckpt"
    p.write_bytes(b"weights" * 300_000)  # more than one read chunk
    assert file_digest(p) == hashlib.sha256(p.read_bytes()).hexdigest()
