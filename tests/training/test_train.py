"""The training app end to end on tiny digits runs: outputs, exact resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from enas4d.checkpoint import load_supernet, read_checkpoint
from enas4d.train import CONF_DIR, TrainSetupError, main, train

from tests.training.helpers import TINY, run_cli


def _trace(run: Path) -> list[dict]:
    lines = (run / "trace" / "trace_rank0.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_run_folder_has_config_checkpoints_and_logs(tiny_cfg, tmp_path):
    out = tmp_path / "run"
    metrics, objects = train(tiny_cfg("logger=default", out=out))
    assert (out / "config.yaml").is_file()
    assert (out / "csv" / "version_0" / "metrics.csv").is_file()
    assert any((out / "tensorboard").iterdir())
    ckpts = {p.name for p in (out / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts), ckpts
    net, meta = load_supernet(out / "checkpoints" / "last.ckpt")
    assert (net.name, net.num_stages, net.num_classes) == ("resnet_cifar", 2, 10)
    assert meta.data["name"] == "digits" and meta.data["mean"] == objects["datamodule"].mean
    assert 0.0 <= metrics["val/acc"] <= 1.0
    assert {f"val/{n}/exit{k}" for n in ("min", "mid", "max") for k in (1, 2)} <= set(metrics)
    header = (out / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss" in header and "val/max/exit2" in header


def test_last_checkpoint_is_the_last_epoch_even_when_val_acc_does_not_improve(tiny_cfg, tmp_path):
    # lr 0: the weights, hence val/acc, never change; Lightning's save_last would keep epoch 0's file.
    out = tmp_path / "run"
    train(tiny_cfg("trainer.max_epochs=2", "module.optimizer.lr=0.0", out=out))
    ckpt, _ = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((out / "checkpoints").glob("best-*.ckpt"))) == 1


def _by_step(records: list[dict]) -> dict[int, dict]:
    """Last record of every step; a step that ran twice (before a crash and after resuming) ran the same."""
    out: dict[int, dict] = {}
    for r in records:
        if r["step"] in out:
            assert out[r["step"]] == r, f"step {r['step']} replayed differently"
        out[r["step"]] = r
    return out


CRASH = ["+callbacks.crash._target_=tests.training.helpers.CrashAt", "+callbacks.crash.step=4"]


def test_resume_after_crash_continues_exactly(tiny_cfg, tmp_path):
    """2 epochs of 3 steps in one go == crash before step 4 (mid-epoch 2), resume from last.ckpt."""
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    train(tiny_cfg("callbacks=trace", "trainer.max_epochs=2", out=full))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_cfg("callbacks=trace", "trainer.max_epochs=2", *CRASH, out=crashed))
    assert len(_trace(crashed)) == 4  # steps 0..3 ran; last.ckpt holds the end of epoch 1 (step 3)
    train(tiny_cfg("callbacks=trace", "trainer.max_epochs=2", f"ckpt_path={crashed}/checkpoints/last.ckpt",
                   out=crashed))
    a, b = _by_step(_trace(full)), _by_step(_trace(crashed))
    assert sorted(a) == sorted(b) == list(range(6))
    for step in a:  # same subnets, losses, weights (checksum) and learning rates at every step
        assert a[step] == b[step], step
    assert len({json.dumps(r["subnets"]) for r in a.values()}) == 6  # random subnets change per step
    ca, cb = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False), \
        torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=False)
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    assert ca["lr_schedulers"] == cb["lr_schedulers"]
    assert ca["global_step"] == cb["global_step"] == 6


def test_missing_data_path_is_one_clear_error(tiny_cfg, tmp_path):
    missing = tmp_path / "nowhere" / "train.npz"
    with pytest.raises(TrainSetupError, match="nowhere") as err:
        train(tiny_cfg("data=cifar10", f"data.path={missing}"))
    assert "\n" not in str(err.value)


def test_resume_from_another_supernet_or_file_fails_clearly(tiny_cfg, tmp_path):
    src = tmp_path / "src"
    train(tiny_cfg("trainer.limit_train_batches=1", "logger=none", out=src))
    last = src / "checkpoints" / "last.ckpt"
    with pytest.raises(TrainSetupError, match="num_stages=2"):
        train(tiny_cfg("supernet.num_stages=3", f"ckpt_path={last}"))
    with pytest.raises(TrainSetupError, match="another supernet"):
        train(tiny_cfg("supernet=mbv3_cifar", "supernet.num_stages=2", f"ckpt_path={last}"))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainSetupError, match="not a readable checkpoint"):
        train(tiny_cfg(f"ckpt_path={bad}"))
    _, meta = read_checkpoint(last)
    assert meta.supernet["num_stages"] == 2


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer.max_epochs > 0 and cfg.module.n_random >= 0
    assert cfg.supernet.name and cfg.data._target_


def test_digits_demo_runs_with_fast_dev_run(tiny_cfg):
    metrics, objects = train(tiny_cfg("experiment=digits_demo", "debug=fdr", *TINY[1:]))
    assert objects["net"].num_stages == 2 and "val/acc" in metrics


def test_cli_bad_override_is_hydra_error(tmp_path):
    proc = run_cli("trainer.max_epoch=1", *TINY, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "max_epoch" in proc.stderr and "Traceback" not in proc.stderr
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(MissingConfigException, match="resnet_nope"):
            compose(config_name="train", overrides=["supernet=resnet_nope"])


def test_main_returns_the_optimized_metric_for_sweepers(tiny_cfg):
    value = main.__wrapped__(tiny_cfg("debug=fdr", *TINY[1:], "optimized_metric=val/max/exit2"))
    assert isinstance(value, float) and 0.0 <= value <= 1.0


def test_main_bad_value_is_one_line_error_and_exit_2(tiny_cfg, capsys):
    """main() (undecorated: the same code the CLI runs) turns bad input into one line and exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main.__wrapped__(tiny_cfg("module.n_random=-1"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("enas4d-train: error:") and "module.n_random" in err and "\n" not in err


def test_sigterm_is_an_interruption_not_a_finished_run(tmp_path):
    # Lightning ends a SIGTERM'd fit with a SystemExit of status 0; a caller must not take it as done.
    proc = run_cli(*TINY, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}", *CRASH, "+callbacks.crash.term=true")
    assert proc.returncode == 143, proc.stderr[-500:]
    assert f"enas4d-train: interrupted: stopped by SIGTERM at step 5 of epoch 1; resume with ckpt_path={tmp_path}" \
        in proc.stderr


def test_resume_after_kill_9(tiny_cfg, tmp_path):
    """A real SIGKILL mid-epoch, then `enas4d-train ... ckpt_path=.../last.ckpt`: same steps as without it."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    train(tiny_cfg("callbacks=trace", "trainer.max_epochs=2", out=full))
    args = [*TINY, "callbacks=trace", "trainer.max_epochs=2", f"hydra.run.dir={killed}"]
    proc = run_cli(*args, *CRASH, "+callbacks.crash.kill=true")
    assert proc.returncode == -9  # killed, not a clean exit
    proc = run_cli(*args, f"ckpt_path={killed}/checkpoints/last.ckpt")
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _by_step(_trace(full)), _by_step(_trace(killed))
    assert sorted(a) == sorted(b) == list(range(6))
    assert all(a[s] == b[s] for s in a)


def test_progressive_shrinking_with_onecycle_trains(tiny_cfg, tmp_path):
    metrics, objects = train(tiny_cfg("module=progressive", "module/scheduler=onecycle", "callbacks=trace",
                                      "trainer.limit_train_batches=4", out=tmp_path / "ps"))
    records = _trace(tmp_path / "ps")
    largest = objects["net"].space.largest()
    # 4 steps, phases start at 0, 1/4, 1/2, 3/4: step 0 may vary only the resolution.
    first = [json.loads(s) for s in records[0]["subnets"]]
    assert all(s["width"] == [list(r) for r in largest.width] for s in first)
    assert first[1]["resolution"] == min(objects["net"].space.resolutions)
    # The lr after each step follows torch's one-cycle policy over the run's 4 steps, peak = optimizer.lr.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4, pct_start=0.3)
    expected = []
    for _ in range(4):
        opt.step()
        ref.step()
        expected.append(opt.param_groups[0]["lr"])
    assert [r["lr"][0] for r in records] == pytest.approx(expected)
    assert "val/acc" in metrics


CIFAR10 = CONF_DIR.parent.parent / "shared" / "data" / "cifar10" / "train.npz"


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10.is_file(), reason="the shared CIFAR-10 copy is not on this machine")
def test_cifar10_cpu_preset_runs_one_batch(tiny_cfg):
    """The CIFAR-10 preset on the real data, with fast_dev_run (one training and one validation batch)."""
    metrics, objects = train(tiny_cfg("experiment=cifar10_cpu", "debug=fdr", "data.batch_size=16",
                                      "data.eval_batch_size=64", "module.bn_images=64"))
    dm = objects["datamodule"]
    assert dm.num_classes == 10 and len(dm.class_names) == 10 and "val/acc" in metrics


def test_train_restores_the_callers_thread_count(tiny_cfg):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train(tiny_cfg("torch_threads=1", "trainer.limit_train_batches=1", "logger=none"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
