"""The shape every training experiment shares: its settings resolved from one params.yaml group and profile
(``setup`` -> ``Experiment``), its runs (``train_all``) and the tables read from their logs.

An experiment is (methods x seeds) runs of one base ``TrainConfig``; run ``(method, seed)`` lives in
``checkpoint_dir/<profile>/<method>-<seed>`` and its results go to ``output_dir/tables/<name>_<table>.csv``. The
unconditional, class-conditional, fine-tuning, ablation and last-step experiments are of this shape (consistency
has its own settings and reuses the tables).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from immiscible.config import choices, from_dict, group_profile, load_profile
from immiscible.diffusion.objectives import OBJECTIVES
from immiscible.engine.config import TrainConfig, check_config
from immiscible.engine.loop import train
from immiscible.engine.side_by_side import train_side_by_side
from immiscible.evaluation.features import EXTRACTORS, ClassifierConfig
from immiscible.io import atomic_write_text
from immiscible.noise.source import METHODS

PROFILE_KEYS = ("methods", "seeds", "side_by_side")  # what a profile may set beyond its sections


@dataclass(frozen=True)
class EvalConfig:
    extractor: str = field(default="auto", metadata=choices(*EXTRACTORS))
    inception_weights: str | None = None   # a weights file; default clean-fid's /tmp/inception-2015-12-05.pt
    num_samples: int = 1000                # generated images per evaluated snapshot (EMA weights)
    num_ref: int = 10000                   # reference images (0: the whole reference split)
    sample_steps: int = 25                 # DDIM (or Euler for flow) steps
    sample_batch_size: int = 250
    kid_subsets: int = 50
    kid_subset_size: int = 1000
    grid_size: int = 64                    # final samples kept per run for the figures
    last_step_images: int = 64
    sampling_repeats: int = 0              # FD of the final snapshots of the first seed with this many other
                                           # sample seeds: how much of the spread is sampling noise
    progress: bool = True


@dataclass(frozen=True)
class Experiment:
    profile: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    train: TrainConfig                     # the base config; method, seed and output_dir vary per run
    eval: EvalConfig
    classifier: ClassifierConfig
    checkpoint_dir: str                    # runs live in checkpoint_dir/<profile>/<method>-<seed>
    output_dir: str                        # tables/, figures/, metrics/
    name: str = "unconditional"            # prefix of the result files
    side_by_side: bool = False             # `train` trains every run in one process (engine/side_by_side.py)

    def run_dir(self, method: str, seed: int) -> Path:
        return Path(self.checkpoint_dir) / self.profile / f"{method}-{seed}"

    def evaluates(self, step: int) -> bool:
        """Whether the snapshot of ``step`` is evaluated: every one up to the profile's steps."""
        return step <= self.train.steps

    def run_config(self, method: str, seed: int) -> TrainConfig:
        return replace(self.train, method=method, seed=seed, output_dir=str(self.run_dir(method, seed)))

    @property
    def eval_dir(self) -> Path:
        return Path(self.checkpoint_dir) / f"{self.profile}-eval"

    def table(self, name: str) -> Path:
        return Path(self.output_dir) / "tables" / f"{self.name}_{name}.csv"


def methods_and_seeds(group: dict, methods=None, seeds=None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The methods and seeds of an experiment (the arguments, else its params group's), checked: known methods,
    vanilla (the baseline) and at least one other, at least one seed."""
    methods = tuple(methods or group.get("methods", ("vanilla", "exact")))
    seeds = tuple(int(s) for s in (seeds if seeds is not None else group.get("seeds", (0,))))
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {METHODS}")
    if "vanilla" not in methods or len(methods) < 2:
        raise ValueError(f"methods={list(methods)} must include 'vanilla' (the baseline) and at least one other")
    if not seeds:
        raise ValueError("seeds must hold at least one seed (3 or more for intervals)")
    return methods, seeds


def setup(profile: str | None = None, dataset: str | None = None, data_dir: str = "data", methods=None, seeds=None,
          objective: str | None = None, steps: int | None = None, batch_size: int | None = None,
          params: str = "params.yaml", checkpoint_dir: str = "checkpoints/unconditional",
          output_dir: str = "results", classifier_root: str = "checkpoints/classifier",
          train_overrides: dict | None = None, eval_overrides: dict | None = None, group_name: str = "unconditional",
          eval_cls: type = EvalConfig, sections: tuple[str, ...] = ("train", "eval", "classifier")) -> Experiment:
    """Resolve and validate the whole experiment (params.yaml profile + arguments) before any compute.
    ``group_name``/``eval_cls``/``sections``: another experiment of the same shape (its params group, evaluation
    config and the sections its profiles may hold). A profile may also set its own ``methods``/``seeds`` (else the
    group's) and ``side_by_side: true`` (its runs train in one process: ``train_all``)."""
    profile = group_profile(params, group_name, profile)
    group, p = load_profile(params, group_name, profile)
    unknown = set(p) - set(sections) - set(PROFILE_KEYS)
    if unknown:
        raise ValueError(f"profile {profile!r}: unknown key(s) {sorted(unknown)}; allowed: "
                         f"{', '.join((*sections, *PROFILE_KEYS))}")
    dataset = dataset or group.get("dataset", "cifar10")
    methods, seeds = methods_and_seeds({**group, **{k: p[k] for k in ("methods", "seeds") if k in p}}, methods, seeds)
    if objective is not None and objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    train_values = {**p.get("train", {}), **(train_overrides or {}), "dataset": dataset, "data_dir": data_dir}
    for key, value in (("objective", objective), ("steps", steps), ("batch_size", batch_size)):
        if value is not None:
            train_values[key] = value
    train_cfg = check_config(from_dict(TrainConfig, train_values))
    extractor = group.get("feature_extractor", {})
    eval_cfg = from_dict(eval_cls, {**extractor, **p.get("eval", {}), **(eval_overrides or {})})
    clf = from_dict(ClassifierConfig, {**p.get("classifier", {}), "dataset": dataset, "data_dir": data_dir,
                                       "resolution": train_cfg.resolution, "out_dir": classifier_root})
    return Experiment(profile, methods, seeds, train_cfg, eval_cfg, clf, str(checkpoint_dir), str(output_dir),
                      name=group_name, side_by_side=bool(p.get("side_by_side", False)))


def train_all(exp: Experiment, on_change: str = "error") -> pd.DataFrame:
    """Train (or resume, or reuse) every (method, seed) run, one after the other or (a ``side_by_side`` profile)
    all in this process at once; then ``training_table``."""
    cfgs = [exp.run_config(method, seed) for method in exp.methods for seed in exp.seeds]
    if exp.side_by_side:
        train_side_by_side(cfgs, on_change=on_change)
    else:
        for cfg in cfgs:
            train(cfg, on_change=on_change)
    return training_table(exp)


def read_log(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / "log.jsonl"
    if not path.exists() or not path.stat().st_size:
        raise FileNotFoundError(f"no training log in {run_dir}: train the run first (`dvc repro train_unconditional`)")
    return pd.read_json(path, lines=True)


def training_seconds(log: pd.DataFrame) -> float:
    """Seconds of training behind a run's logged steps. The engine's elapsed time restarts when a run resumes (the log
    is cut back to the checkpoint it resumes from), so each stretch's last value counts once; a stretch starts where
    the elapsed time falls (a resumed stretch's first row comes a few steps after its start)."""
    elapsed = log.elapsed_s.to_numpy(float)
    ends = np.append(elapsed[1:] < elapsed[:-1], True)
    return float(elapsed[ends].sum())


def training_table(exp: Experiment) -> pd.DataFrame:
    """One row per run, from its log: final loss, mean image-noise distance before/after the assignment, its ms,
    the batch it ran on, training seconds and steps/s."""
    rows = []
    for method in exp.methods:
        for seed in exp.seeds:
            log = read_log(exp.run_dir(method, seed))
            rows.append({"method": method, "seed": seed, "steps": int(log.step.iloc[-1]),
                         "final_loss": log.loss.iloc[-1], "dist_before": log.dist_before.mean(),
                         "dist_after": log.dist_after.mean(), "assign_ms": log.assign_ms.mean(),
                         "assign_batch": int(log.assign_batch.iloc[-1]), "train_s": training_seconds(log),
                         "steps_per_s": log.step.iloc[-1] / training_seconds(log)})
    return pd.DataFrame(rows)


def write_training_tables(exp: Experiment) -> pd.DataFrame:
    """The training table and the loss curves of every run, written; returns the training table."""
    training = training_table(exp)
    write_csv(training, exp.table("training"))
    write_csv(loss_curves(exp), exp.table("loss"))
    return training


def loss_curves(exp: Experiment) -> pd.DataFrame:
    """(method, seed, step, loss) of every run's log, for `dvc plots`."""
    frames = [read_log(exp.run_dir(m, s))[["step", "loss"]].assign(method=m, seed=s)
              for m in exp.methods for s in exp.seeds]
    return pd.concat(frames)[["method", "seed", "step", "loss"]]


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` atomically unless the file already holds exactly this content (keeps DVC hashes stable)."""
    text = df.to_csv(index=False, float_format="%.6g")
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path
