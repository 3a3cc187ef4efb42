"""Training runs of the fine-tuning experiment, apart from its evaluation (a run depends only on the engine):

    python -m immiscible.experiments.finetuning_train pretrain                       # DVC pretrain_finetuning
    python -m immiscible.experiments.finetuning_train finetune --method exact --seed 0   # train_finetuning@...

One pretraining run (params.yaml ``finetuning.profiles.<profile>.pretrain``, vanilla) is trained once and cached;
every fine-tuning run (``...train``: another part of the data, its own method and seed) starts from its last EMA
snapshot: ``init_from`` in the engine, which loads the weights (never a re-initialised UNet), records their SHA-256
and saves them as the run's step-0 snapshot.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from immiscible.config import from_dict, load_profile, group_profile
from immiscible.engine.config import TrainConfig, check_config
from immiscible.engine.loop import end_distributed, train
from immiscible.noise.source import METHODS

GROUP = "finetuning"
# what fine-tuning cannot change: the pretrained weights must fit the fine-tuned model
ARCHITECTURE = ("model", "resolution", "dropout", "num_classes", "objective", "num_train_timesteps", "beta_start",
                "beta_end", "beta_schedule")


def pretrain_dir(checkpoint_dir: str | Path, profile: str) -> Path:
    return Path(checkpoint_dir) / profile / "pretrained"


def run_dir(checkpoint_dir: str | Path, profile: str, method: str, seed: int) -> Path:
    return Path(checkpoint_dir) / profile / f"{method}-{seed}"


def run_settings(params: str = "params.yaml", profile: str | None = None, dataset: str | None = None,
                 data_dir: str = "data", checkpoint_dir: str = "checkpoints/finetuning",
                 pretrain_overrides: dict | None = None, train_overrides: dict | None = None
                 ) -> tuple[TrainConfig, TrainConfig]:
    """(pretraining TrainConfig, base fine-tuning TrainConfig starting from the pretraining run), validated."""
    profile = group_profile(params, GROUP, profile)
    group, p = load_profile(params, GROUP, profile)
    for section in ("pretrain", "train"):
        if section not in p:
            raise ValueError(f"profile {profile!r} of {GROUP!r} needs a {section!r} section (a TrainConfig)")
    common = {"dataset": dataset or group.get("dataset", "cifar10"), "data_dir": data_dir}
    pre_dir = pretrain_dir(checkpoint_dir, profile)
    pre = check_config(from_dict(TrainConfig, {**p["pretrain"], **(pretrain_overrides or {}), **common,
                                               "output_dir": str(pre_dir)}))
    ft = check_config(from_dict(TrainConfig, {**p["train"], **(train_overrides or {}), **common,
                                              "init_from": str(pre_dir)}))
    differ = {k: (getattr(pre, k), getattr(ft, k)) for k in ARCHITECTURE if getattr(pre, k) != getattr(ft, k)}
    if differ:
        raise ValueError(f"profile {profile!r}: fine-tuning must keep the pretrained model's architecture and "
                         f"diffusion; these differ (pretrain, train): {differ}")
    if pre.method != "vanilla":
        raise ValueError(f"profile {profile!r}: pretrain.method={pre.method!r}; the shared starting point is "
                         "trained vanilla (as the released Stable Diffusion weights were)")
    return pre, ft


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train the pretraining run or one fine-tuning run.")
    p.add_argument("what", choices=("pretrain", "finetune"))
    p.add_argument("--method", choices=METHODS, help="finetune: the noise assignment")
    p.add_argument("--seed", type=int, help="finetune: the run's seed (data order, noise draws)")
    p.add_argument("--profile", default=None, help="default: params.yaml finetuning.profile")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--checkpoint-dir", default="checkpoints/finetuning")
    a = p.parse_args(argv)
    profile = group_profile(a.params, GROUP, a.profile)
    pre, ft = run_settings(a.params, profile, data_dir=a.data_dir, checkpoint_dir=a.checkpoint_dir)
    if a.what == "pretrain":
        cfg = pre
    else:
        if a.method is None or a.seed is None:
            p.error("finetune needs --method and --seed")
        cfg = replace(ft, method=a.method, seed=a.seed,
                      output_dir=str(run_dir(a.checkpoint_dir, profile, a.method, a.seed)))
    print(json.dumps(train(cfg, on_change="restart"), indent=2))
    end_distributed()


if __name__ == "__main__":
    main()
