"""Resuming: a schedule of another length is refused, and last.ckpt is always the latest checkpoint."""

from __future__ import annotations

import shutil

import pytest
import torch

from enas4d.train import TrainSetupError, main, train

CRASH = ["+callbacks.crash._target_=tests.training.helpers.CrashAt", "+callbacks.crash.step=4"]


def _step(path) -> int:
    return torch.load(path, weights_only=False, map_location="cpu")["global_step"]


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_resume_with_a_longer_run_is_refused(tiny_cfg, tmp_path, scheduler, capsys):
    """The restored schedule ends where the checkpoint's run ended: more epochs would train at lr 0 (cosine)
    or crash (one-cycle). One line, exit status 1, the checkpoint untouched."""
    run = tmp_path / "run"
    sched = f"module/scheduler={scheduler}"
    train(tiny_cfg(sched, "logger=none", out=run))  # 1 epoch of 3 steps
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(TrainSetupError, match=r"^trainer.max_epochs/max_steps: this run would last 6 optimizer "
                                              r"steps, the checkpoint's learning-rate schedule lasts 3 .*start a new "
                                              r"run to train longer$"):
        train(tiny_cfg(sched, "logger=none", "trainer.max_epochs=2", f"ckpt_path={last}", out=run))
    assert last.read_bytes() == before
    with pytest.raises(SystemExit) as exit_info:
        main.__wrapped__(tiny_cfg(sched, "logger=none", "trainer.max_epochs=3", f"ckpt_path={last}", out=run))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith("enas4d-train: error: trainer.max_epochs/max_steps: this run would last 9 optimizer steps")


def test_resume_in_a_copied_run_folder_rewrites_last_ckpt(tiny_cfg, tmp_path):
    """Lightning names a checkpoint last-v1.ckpt when last.ckpt exists but is not the one it wrote itself."""
    src, copy = tmp_path / "src", tmp_path / "copy"
    with pytest.raises(RuntimeError, match="simulated crash"):  # stops in epoch 2; last.ckpt = end of epoch 1
        train(tiny_cfg("logger=none", "trainer.max_epochs=2", *CRASH, out=src))
    shutil.copytree(src, copy)
    assert _step(copy / "checkpoints" / "last.ckpt") == 3
    train(tiny_cfg("logger=none", "trainer.max_epochs=2", f"ckpt_path={copy}/checkpoints/last.ckpt", out=copy))
    names = sorted(p.name for p in (copy / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names
    assert _step(copy / "checkpoints" / "last.ckpt") == 6
