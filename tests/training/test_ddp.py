"""DDP on CPU: 2 processes (gloo) train together, agree on the subnets and all-reduce once per step."""

from __future__ import annotations

import json

from tests.training.helpers import TINY, run_cli


def test_ddp_two_cpu_processes(tmp_path):
    proc = run_cli("trainer=ddp_sim", "callbacks=trace", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    traces = [[json.loads(line) for line in (tmp_path / "trace" / f"trace_rank{r}.jsonl").read_text().splitlines()]
              for r in (0, 1)]
    assert len(traces[0]) == len(traces[1]) == 3
    for r0, r1 in zip(*traces):
        assert r0["step"] == r1["step"]
        assert r0["subnets"] == r1["subnets"]  # both ranks trained the same subnets
        assert r0["param_sum"] == r1["param_sum"]  # and hold the same weights after the step
        # Every gradient bucket was all-reduced exactly once in the step, not once per subnet (3 here).
        assert r0["allreduce"] and set(r0["allreduce"].values()) == {1}, r0["allreduce"]
        assert r0["allreduce"] == r1["allreduce"]
    assert any(r0["loss"] != r1["loss"] for r0, r1 in zip(*traces))  # each rank saw its own shard
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
