"""``enas4d-profile``: a per-stage latency model of a supernet on this machine (for latency budgets).

    enas4d-profile ckpt=outputs/demo/train/checkpoints/last.ckpt hydra.run.dir=outputs/demo/profile
    enas4d-search ckpt=... budget=2.5ms device_profile=outputs/demo/profile/profile.json

:func:`profile` is the importable function; :func:`main` the thin Hydra entry point. What is timed
and fitted: :mod:`enas4d.search.latency`. Settings: conf/profile.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from enas4d.checkpoint import CheckpointError, load_supernet
from enas4d.search.latency import DeviceProfile, LatencyError, ProfileSettings, profile_supernet, write_profile
from enas4d.utils.cli import CONF_DIR, one_line_errors

__all__ = ["CONF_DIR", "QUICK", "settings", "profile", "main"]

# quick=true: enough to exercise every step (tests, smoke runs), not to trust the numbers.
QUICK = {"archs": 6, "warmup": 1, "repeats": 2, "min_time": 0.0}
_INTS = ("batch_size", "threads", "archs", "warmup", "repeats", "seed")


def settings(cfg: DictConfig) -> ProfileSettings:
    """The measurement settings of ``cfg`` (LatencyError naming a bad field)."""
    if not isinstance(cfg.quick, bool):
        raise LatencyError(f"quick: {cfg.quick!r} not allowed; allowed values: true, false")
    for name in _INTS:
        v = cfg[name]
        if isinstance(v, bool) or not isinstance(v, int):
            raise LatencyError(f"{name}: {v!r} is not an integer; allowed values: integers >= "
                               f"{0 if name in ('warmup', 'seed') else 1}")
    for name in ("holdout", "min_time"):
        if isinstance(cfg[name], bool) or not isinstance(cfg[name], (int, float)):
            raise LatencyError(f"{name}: {cfg[name]!r} is not a number")
    values: dict[str, Any] = {name: cfg[name] for name in _INTS}
    values.update(holdout=float(cfg.holdout), min_time=float(cfg.min_time), clock=str(cfg.clock),
                  runtime=str(cfg.runtime))
    subs = cfg.get("sub_batch_sizes")
    if subs is not None:
        if not OmegaConf.is_list(subs):
            raise LatencyError(f"sub_batch_sizes: {subs!r} not allowed; allowed values: a list of integers from 1 "
                               "to batch_size - 1, [] for none, or null (batch_size/32 and batch_size/8, at least 2)")
        values["sub_batch_sizes"] = tuple(subs)
    if cfg.quick:
        values.update(QUICK)
    return ProfileSettings(**values)


def profile(cfg: DictConfig, out: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Profile the supernet of ``cfg.ckpt`` and write ``out`` (profile.json); returns its content.

    Bad input raises LatencyError or CheckpointError (one line) before anything is timed.
    """
    console = console or Console()
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt is None or not str(cfg.ckpt).strip():
        raise LatencyError("ckpt: missing; give the training checkpoint of the supernet to profile, "
                           "e.g. ckpt=outputs/demo/train/checkpoints/last.ckpt")
    st = settings(cfg)
    image_size = cfg.image_size
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise LatencyError(f"image_size: {image_size!r} not allowed; allowed values: integers >= 1 or null")
    net, meta = load_supernet(str(cfg.ckpt))
    size = int(meta.data["image_size"] if image_size is None else image_size)
    console.print(f"profile: {net.name} ({net.num_stages} exits) from {cfg.ckpt}: {st.archs} architectures at "
                  f"batch sizes {list(st.batch_sizes)}, {st.threads} thread(s), {st.clock} clock, {st.runtime}, "
                  f"{size}x{size} inputs")
    data = profile_supernet(net, meta.supernet, meta.space, meta.data["mean"], meta.data["std"], size, st,
                            log=console.print, checkpoint=str(cfg.ckpt))
    DeviceProfile.from_json(data)  # what a search will read back must parse
    write_profile(out, data)
    for b in st.batch_sizes:
        fit = data["fit"][str(b)]
        held = fit["held_out"]
        err = "no held-out architectures"
        if held:
            err = (f"held-out error {100 * held['mean_abs']:.1f}% mean, {100 * held['max_abs']:.1f}% max over "
                   f"{held['rows']} exits of {fit['held_out_archs']} architectures")
        console.print(f"profile: batch {b}: fit error {100 * fit['train']['mean_abs']:.1f}% mean on the fitted "
                      f"architectures; {err}")
    call = data["call_fit"]
    errs = ", ".join(f"{100 * e['mean_abs']:.1f}% at batch {m}" for m, e in call["errors"].items())
    console.print(f"profile: per-call fit at batch {call['batch_size']} (a stage on n of its images costs a + b*n) "
                  f"from batch sizes {call['batch_sizes']}: mean error {errs} (fitted architectures)")
    if call["note"]:
        console.print(f"profile: note: {call['note']}")
    console.print(f"profile: wrote {out} in {data['seconds']:.0f}s")
    return data


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="profile")
def main(cfg: DictConfig) -> None:
    """Command-line entry point. Bad input: one line on stderr, exit 2."""
    from hydra.core.hydra_config import HydraConfig

    out = cfg.out if cfg.out is not None else Path(HydraConfig.get().runtime.output_dir) / "profile.json"
    with one_line_errors("enas4d-profile", LatencyError, CheckpointError):
        profile(cfg, out)


if __name__ == "__main__":
    main()
