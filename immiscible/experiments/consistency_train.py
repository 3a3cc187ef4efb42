"""Training runs of the consistency experiment (DVC stage ``train_consistency@<method>-<seed>``), apart from its
evaluation so that a run depends only on the engine, the noise and the consistency loss:

    python -m immiscible.experiments.consistency_train --method exact --seed 0 [--profile cpu]

The run's TrainConfig and ConsistencyConfig come from params.yaml's ``consistency.profiles.<profile>``; the
consistency settings are saved beside the run (``consistency_config.json``), so a run made with other settings is
never resumed with these.
"""
from __future__ import annotations

import argparse
import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

from immiscible.config import from_dict, load_profile, group_profile, to_dict
from immiscible.diffusion.consistency import ConsistencyConfig, check_consistency_config, make_consistency_loss
from immiscible.engine.config import TrainConfig, check_config
from immiscible.engine.loop import end_distributed, train
from immiscible.engine.side_by_side import train_side_by_side
from immiscible.io import atomic_write_text
from immiscible.noise.source import METHODS

PROFILE_KEYS = ("methods", "seeds", "side_by_side")  # what a profile may set beyond its sections

GROUP = "consistency"


def run_settings(params: str = "params.yaml", profile: str | None = None, dataset: str | None = None,
                 data_dir: str = "data", steps: int | None = None, train_overrides: dict | None = None,
                 consistency_overrides: dict | None = None) -> tuple[TrainConfig, ConsistencyConfig, dict, dict]:
    """(base TrainConfig, ConsistencyConfig, the params group, the profile), validated before any compute."""
    profile = group_profile(params, GROUP, profile)
    group, p = load_profile(params, GROUP, profile)
    unknown = set(p) - {"train", "consistency", "eval", "classifier", *PROFILE_KEYS}
    if unknown:
        raise ValueError(f"profile {profile!r}: unknown key(s) {sorted(unknown)}; allowed: train, consistency, "
                         f"eval, classifier, {', '.join(PROFILE_KEYS)}")
    values = {**p.get("train", {}), **(train_overrides or {}), "dataset": dataset or group.get("dataset", "cifar10"),
              "data_dir": data_dir}
    if steps is not None:
        values["steps"] = steps
    cfg = check_config(from_dict(TrainConfig, values))
    ct = check_consistency_config(from_dict(ConsistencyConfig, {**p.get("consistency", {}),
                                                                **(consistency_overrides or {})}))
    return cfg, ct, group, p


def consistency_record(cfg: TrainConfig, ct: ConsistencyConfig) -> dict:
    """What a run's trajectory depends on beyond its TrainConfig: the consistency settings, with the curriculum's
    length (the run's steps) resolved."""
    return to_dict(ct) | {"curriculum_steps": cfg.steps}


def _record_settings(cfg: TrainConfig, ct: ConsistencyConfig, on_change: str) -> dict:
    """Check cfg.output_dir's consistency settings against ``ct`` (restart or refuse a run made with others) and
    write them; returns them."""
    run_dir = Path(cfg.output_dir)
    wanted = consistency_record(cfg, ct)
    saved_path = run_dir / "consistency_config.json"
    if run_dir.exists() and any(run_dir.iterdir()):
        saved = json.loads(saved_path.read_text()) if saved_path.exists() else None
        if saved != wanted:
            message = f"{run_dir} holds a run with other consistency settings ({saved}; requested {wanted})"
            if on_change == "error":
                raise ValueError(message + ". Use another checkpoint_dir, or delete the run to start over.")
            warnings.warn(message + ". Restarting: deleting it.")
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved_path, json.dumps(wanted, indent=2) + "\n")
    return wanted


def _rewrite_settings(cfg: TrainConfig, wanted: dict) -> None:
    saved_path = Path(cfg.output_dir) / "consistency_config.json"
    if not saved_path.exists():  # the engine restarted the folder for a changed TrainConfig
        atomic_write_text(saved_path, json.dumps(wanted, indent=2) + "\n")


def train_run(cfg: TrainConfig, ct: ConsistencyConfig, on_change: str = "error") -> dict:
    """Train (or resume) one consistency run into cfg.output_dir. A folder holding a run with other consistency
    settings is restarted (``on_change="restart"``, what the DVC stage does) or refused (``"error"``)."""
    wanted = _record_settings(cfg, ct, on_change)
    summary = train(cfg, on_change=on_change, loss_fn=make_consistency_loss(ct, cfg.steps))
    _rewrite_settings(cfg, wanted)
    return summary


def train_runs_side_by_side(cfgs: list[TrainConfig], ct: ConsistencyConfig, on_change: str = "error") -> list[dict]:
    """Train (or resume) the consistency runs of ``cfgs`` (one setting) side by side in this process
    (``train_side_by_side`` with the consistency loss), each run's settings checked and recorded as ``train_run``
    does."""
    wanted = [_record_settings(cfg, ct, on_change) for cfg in cfgs]
    summaries = train_side_by_side(cfgs, on_change=on_change, loss=make_consistency_loss(ct, cfgs[0].steps))
    for cfg, w in zip(cfgs, wanted):
        _rewrite_settings(cfg, w)
    return summaries


def run_dir(checkpoint_dir: str, profile: str, method: str, seed: int) -> Path:
    return Path(checkpoint_dir) / profile / f"{method}-{seed}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train one run of the consistency experiment.")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--profile", default=None, help="default: params.yaml consistency.profile")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--checkpoint-dir", default="checkpoints/consistency")
    a = p.parse_args(argv)
    profile = group_profile(a.params, GROUP, a.profile)
    cfg, ct, _, _ = run_settings(a.params, profile, data_dir=a.data_dir)
    cfg = replace(cfg, method=a.method, seed=a.seed, output_dir=str(run_dir(a.checkpoint_dir, profile, a.method, a.seed)))
    print(json.dumps(train_run(cfg, ct, on_change="restart"), indent=2))
    end_distributed()


if __name__ == "__main__":
    main()
