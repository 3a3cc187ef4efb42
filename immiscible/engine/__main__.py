"""Train one run from a params.yaml profile: ``<group>.profiles.<profile>.train`` plus the group's ``dataset``, then
command-line overrides. What each DVC train stage runs.

    python -m immiscible.engine --group unconditional --profile cpu --method exact --seed 0 --output-dir DIR
    python -m immiscible.engine --group unconditional --profile smoke --set lr=1e-3 --set knn_k=8 ...
"""
from __future__ import annotations

import argparse
import json
import os

import yaml

from immiscible.config import from_dict, load_profile
from immiscible.diffusion.objectives import OBJECTIVES
from immiscible.engine.config import TrainConfig
from immiscible.engine.loop import end_distributed, train
from immiscible.noise.source import METHODS


def config_from_args(argv=None) -> tuple[TrainConfig, str]:
    """(TrainConfig, on_change) from a params.yaml profile plus command-line overrides."""
    p = argparse.ArgumentParser(description="Train one diffusion run (resumes from its last checkpoint).")
    p.add_argument("--params", default="params.yaml", help="params file holding the profiles")
    p.add_argument("--group", default="unconditional", help="params.yaml group (experiment) holding `profiles`")
    p.add_argument("--profile", default=None, help="smoke | cpu | paper (the group's profiles)")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--seed", type=int)
    p.add_argument("--objective", choices=OBJECTIVES)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--dataset", help="default: the group's `dataset`")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--output-dir", dest="output_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrainConfig field")
    p.add_argument("--on-change", choices=("error", "restart"), default="error",
                   help="output_dir holds a run with another config: stop (default) or retrain from scratch")
    a = p.parse_args(argv)
    values: dict = {}
    if a.profile:
        group, profile = load_profile(a.params, a.group, a.profile)
        values.update(profile.get("train", {}))
        if "dataset" in group:
            values["dataset"] = group["dataset"]
    for key in ("method", "seed", "objective", "steps", "batch_size", "dataset", "data_dir", "output_dir"):
        if getattr(a, key) is not None:
            values[key] = getattr(a, key)
    for item in a.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        values[key] = yaml.safe_load(text)
    return from_dict(TrainConfig, values), a.on_change


def main(argv=None) -> None:
    cfg, on_change = config_from_args(argv)
    summary = train(cfg, on_change=on_change)
    end_distributed()
    if int(os.environ.get("RANK", "0")) == 0:  # one summary, not one per process
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
