"""Training runs of the ablation that asks why immiscible training is worse here (its evaluation is ``ablation``):

    python -m immiscible.experiments.ablation_train --run base-knn8 --seed 0      # DVC train_ablation@base-knn8-0
    python -m immiscible.experiments.ablation_train --all --profile gpu           # every run, each arm side by side

A run is named ``<arm>-<variant>``. The arm (params.yaml ``ablation.arms``) changes one thing of the setting: the
unconditional experiment's profile ``train`` with ``ablation.profiles.<profile>.train`` on top (fewer steps). The
variant is ``vanilla``, ``exact`` or ``knn<k>`` (KNN with that k: the coupling strength at the same cost). Runs listed
in ``ablation.reused`` are not trained here: they are the unconditional experiment's runs read at the ablation's step,
which is the same trajectory (the learning rate is constant after warmup and the data order and noise are drawn per
(seed, step): `steps` is a field the engine's resume check lets change, for that reason). ``reused_config`` checks it.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from immiscible.config import from_dict, group_profile, load_profile, load_yaml_group
from immiscible.engine.checkpoints import check_resumable
from immiscible.engine.config import TrainConfig, check_config
from immiscible.engine.loop import end_distributed, train
from immiscible.engine.side_by_side import train_side_by_side

GROUP = "ablation"
BASE_GROUP = "unconditional"        # the setting every arm starts from
ARM_FIELDS = ("resolution", "objective", "model", "batch_size")   # what an arm may change
_VARIANT = re.compile(r"^(vanilla|exact|knn(\d+))$")


@dataclass(frozen=True)
class Ablation:
    profile: str
    seeds: tuple[int, ...]
    base: TrainConfig                      # the unconditional setting with the ablation's steps
    arms: dict                             # arm -> {TrainConfig field: value}
    runs: tuple[str, ...]                  # trained here
    reused: dict                           # run -> the experiment group whose run it is
    checkpoint_dir: str                    # runs trained here: checkpoint_dir/<profile>/<run>-<seed>
    reuse_root: str = "checkpoints"        # reused runs: reuse_root/<group>/<profile>/<variant>-<seed>

    @property
    def all_runs(self) -> tuple[str, ...]:
        return tuple(self.reused) + self.runs

    def run_dir(self, run: str, seed: int) -> Path:
        if run in self.reused:  # the other experiment's folder of that variant and seed
            return Path(self.reuse_root) / self.reused[run] / self.profile / f"{parse_run(run, self.arms)[1]}-{seed}"
        return Path(self.checkpoint_dir) / self.profile / f"{run}-{seed}"

    def run_config(self, run: str, seed: int) -> TrainConfig:
        arm, variant = parse_run(run, self.arms)
        return check_config(replace(self.base, **self.arms[arm], **variant_fields(variant), seed=seed,
                                    output_dir=str(self.run_dir(run, seed))))


def variant_fields(variant: str) -> dict:
    """The TrainConfig fields of a variant: ``vanilla``, ``exact`` or ``knn<k>``."""
    m = _VARIANT.match(variant)
    if not m:
        raise ValueError(f"unknown variant {variant!r}: use vanilla, exact or knn<k> (e.g. knn8)")
    if m.group(2):
        k = int(m.group(2))
        if k < 1:
            raise ValueError(f"variant {variant!r}: k must be >= 1")
        return {"method": "knn", "knn_k": k}
    return {"method": variant}


def parse_run(run: str, arms: dict) -> tuple[str, str]:
    """(arm, variant) of a run name ``<arm>-<variant>``, checked against the arms and variants."""
    arm, _, variant = run.partition("-")
    if arm not in arms or not variant:
        raise ValueError(f"run {run!r} must be <arm>-<variant> with an arm of {sorted(arms)} "
                         "and a variant vanilla, exact or knn<k>")
    variant_fields(variant)
    return arm, variant


def setup(profile: str | None = None, params: str = "params.yaml", dataset: str | None = None, data_dir: str = "data",
          checkpoint_dir: str = "checkpoints/ablation", reuse_root: str = "checkpoints", seeds=None) -> Ablation:
    """The ablation of params.yaml's ``ablation`` group, validated before any compute: every run parses, every arm
    has a vanilla run (its baseline), arms change only ``ARM_FIELDS``."""
    profile = group_profile(params, GROUP, profile)
    group, p = load_profile(params, GROUP, profile)
    _, base_profile = load_profile(params, BASE_GROUP, profile)
    unknown = set(p) - {"train", "eval"}
    if unknown:
        raise ValueError(f"profile {profile!r} of {GROUP}: unknown key(s) {sorted(unknown)}; allowed: train, eval")
    arms = {name: dict(fields or {}) for name, fields in (group.get("arms") or {}).items()}
    for name, fields in arms.items():
        if "-" in name:
            raise ValueError(f"arm {name!r}: names may not contain '-'")
        bad = set(fields) - set(ARM_FIELDS)
        if bad:
            raise ValueError(f"arm {name!r} changes {sorted(bad)}; an arm may change only {ARM_FIELDS}")
    base_group = load_yaml_group(params, BASE_GROUP)
    values = {**base_profile.get("train", {}), **p.get("train", {}),
              "dataset": dataset or group.get("dataset", base_group.get("dataset", "cifar10")), "data_dir": data_dir}
    base = check_config(from_dict(TrainConfig, values))
    runs = tuple(group.get("runs") or ())
    reused = dict(group.get("reused") or {})
    seeds = tuple(int(s) for s in (seeds if seeds is not None else group.get("seeds", (0,))))
    if not seeds:
        raise ValueError("seeds must hold at least one seed (3 or more for intervals)")
    overlap = set(runs) & set(reused)
    if overlap:
        raise ValueError(f"runs {sorted(overlap)} are both trained here and reused")
    for run in (*reused, *runs):
        parse_run(run, arms)
    for arm in {parse_run(r, arms)[0] for r in (*reused, *runs)}:
        if f"{arm}-vanilla" not in (*reused, *runs):
            raise ValueError(f"arm {arm!r} has no {arm}-vanilla run: each arm is compared with its own vanilla")
    for run in reused:
        if arms[parse_run(run, arms)[0]]:
            raise ValueError(f"reused run {run!r} must be in an arm that changes nothing (the other experiment's "
                             "setting)")
    return Ablation(profile, seeds, base, arms, runs, reused, str(checkpoint_dir), str(reuse_root))


def reused_config(ab: Ablation, run: str, seed: int) -> TrainConfig:
    """The ablation's config of a reused run, after checking that the other experiment's run has it (all fields but
    those that do not change the trajectory); the run must reach the ablation's step."""
    cfg = ab.run_config(run, seed)
    folder = ab.run_dir(run, seed)
    if not (folder / "train_config.json").exists():
        raise FileNotFoundError(f"{folder} holds no run: reused runs come from the {ab.reused[run]} experiment "
                                f"(`dvc repro train_{ab.reused[run]}`)")
    theirs = json.loads((folder / "train_config.json").read_text())
    try:
        check_resumable(theirs, cfg, folder)
    except ValueError as e:
        raise ValueError(f"reused run {run!r}: {e} (the ablation's base is the {BASE_GROUP} profile's train)") from e
    if theirs["steps"] < cfg.steps:
        raise ValueError(f"reused run {folder} has {theirs['steps']} steps; the ablation reads step {cfg.steps}")
    return cfg


def train_arms_side_by_side(ab: Ablation, on_change: str = "restart") -> list[dict]:
    """Every run trained here (not the reused ones), the runs of each arm (its variants x seeds: one setting) side by
    side in this process (``train_side_by_side``), arm after arm."""
    summaries = []
    for arm in dict.fromkeys(parse_run(r, ab.arms)[0] for r in ab.runs):
        cfgs = [ab.run_config(r, s) for r in ab.runs if parse_run(r, ab.arms)[0] == arm for s in ab.seeds]
        summaries += train_side_by_side(cfgs, on_change=on_change)
    return summaries


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train one run of the ablation (arm, variant, seed), or all of them.")
    p.add_argument("--run", help="<arm>-<variant>, one of params.yaml ablation.runs")
    p.add_argument("--seed", type=int)
    p.add_argument("--all", action="store_true", help="every run of the profile, each arm's runs side by side")
    p.add_argument("--profile", default=None, help=f"default: params.yaml {GROUP}.profile")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--checkpoint-dir", default="checkpoints/ablation")
    a = p.parse_args(argv)
    profile = group_profile(a.params, GROUP, a.profile)
    ab = setup(profile, a.params, data_dir=a.data_dir, checkpoint_dir=a.checkpoint_dir)
    if a.all:
        if a.run or a.seed is not None:
            p.error("--all trains every run: give either --all or --run and --seed")
        print(json.dumps(train_arms_side_by_side(ab), indent=2))
        return
    if a.run is None or a.seed is None:
        p.error("give --run and --seed (one run) or --all (every run)")
    if a.run not in ab.runs:
        p.error(f"--run {a.run!r} is not one of {GROUP}.runs {list(ab.runs)} (reused runs are trained by their "
                "own experiment)")
    print(json.dumps(train(ab.run_config(a.run, a.seed), on_change="restart"), indent=2))
    end_distributed()


if __name__ == "__main__":
    main()
