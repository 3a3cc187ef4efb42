"""Consistency-model experiment (Immiscible Diffusion, Li et al. 2024: "3x training efficiency on Consistency Model +
CIFAR-10", 1.3x on CelebA): consistency training from scratch (``immiscible.diffusion.consistency``) with vanilla
vs assigned noise, one- and two-step samples, FD/KID vs steps per seed, paired differences and steps-to-target.

params.yaml's ``consistency`` group holds ``dataset``, ``methods``, ``seeds``, ``feature_extractor`` and
``profiles.<smoke|cpu|paper>`` with ``train`` (an engine TrainConfig), ``consistency`` (a ConsistencyConfig),
``eval`` and ``classifier``. The noise of each batch is drawn and assigned by the engine on the clean images, once,
before any noise level scales it; the consistency loss builds both points of the pair from it.

    python -m immiscible.experiments.consistency classifier                      # DVC classifier_consistency
    python -m immiscible.experiments.consistency_train --method exact --seed 0   # DVC train_consistency@exact-0
    python -m immiscible.experiments.consistency evaluate                        # DVC evaluate_consistency
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from immiscible.config import choices, from_dict, group_profile, to_dict
from immiscible.diffusion.consistency import ConsistencyConfig, consistency_samples
from immiscible.engine.checkpoints import load_run_model, snapshot_digest
from immiscible.evaluation.distances import feature_stats, frechet_distance, kernel_distance
from immiscible.evaluation.features import EXTRACTORS, ClassifierConfig
from immiscible.experiments.cli import experiment_main, standard_commands
from immiscible.experiments.experiment import (Experiment, methods_and_seeds, training_table, write_csv,
                                               write_training_tables)
from immiscible.experiments.snapshot_eval import (efficiency_frames, evaluate_sampling_noise, evaluate_snapshots,
                                                  extractor_for, extractor_key, paired_frame, point_sample_seed,
                                                  reference_features, reference_split, sampling_noise_points,
                                                  snapshots_to_evaluate)
from immiscible.experiments.consistency_train import GROUP, run_settings, train_run, train_runs_side_by_side
from immiscible.io import atomic_save_npy, atomic_write_text


@dataclass(frozen=True)
class ConsistencyEvalConfig:
    extractor: str = field(default="auto", metadata=choices(*EXTRACTORS))
    inception_weights: str | None = None
    num_samples: int = 1000                # generated images per evaluated snapshot and sampler (EMA weights)
    num_ref: int = 10000                   # reference images (0: the whole reference split)
    sample_steps: tuple[int, ...] = (1, 2)  # one-step and two-step consistency sampling
    sample_batch_size: int = 250
    kid_subsets: int = 50
    kid_subset_size: int = 1000
    grid_size: int = 64                    # final samples kept per run and sampler for the figures
    sampling_repeats: int = 0              # FD of the final snapshots of the first seed, per sampler, with this
                                           # many other sample seeds: how much of the spread is sampling noise
    progress: bool = True


@dataclass(frozen=True)
class ConsistencyExperiment(Experiment):
    consistency: ConsistencyConfig = ConsistencyConfig()


def setup(profile: str | None = None, dataset: str | None = None, data_dir: str = "data", methods=None, seeds=None,
          steps: int | None = None, params: str = "params.yaml", checkpoint_dir: str = "checkpoints/consistency",
          output_dir: str = "results", classifier_root: str = "checkpoints/classifier-consistency",
          train_overrides: dict | None = None, consistency_overrides: dict | None = None,
          eval_overrides: dict | None = None) -> ConsistencyExperiment:
    """Resolve and validate the whole experiment (params.yaml profile + arguments) before any compute."""
    profile = group_profile(params, GROUP, profile)
    train_cfg, ct, group, p = run_settings(params, profile, dataset, data_dir, steps, train_overrides,
                                           consistency_overrides)
    methods, seeds = methods_and_seeds({**group, **{k: p[k] for k in ("methods", "seeds") if k in p}}, methods, seeds)
    eval_cfg = from_dict(ConsistencyEvalConfig, {**group.get("feature_extractor", {}), **p.get("eval", {}),
                                                 **(eval_overrides or {})})
    for k in eval_cfg.sample_steps:
        if k not in (1, 2):
            raise ValueError(f"eval.sample_steps={list(eval_cfg.sample_steps)}: only 1 and 2 are supported")
    clf = from_dict(ClassifierConfig, {**p.get("classifier", {}), "dataset": train_cfg.dataset,
                                       "data_dir": data_dir, "resolution": train_cfg.resolution,
                                       "out_dir": classifier_root})
    return ConsistencyExperiment(profile, methods, seeds, train_cfg, eval_cfg, clf, str(checkpoint_dir),
                                 str(output_dir), name=GROUP, side_by_side=bool(p.get("side_by_side", False)),
                                 consistency=ct)


def train_all(exp: ConsistencyExperiment, on_change: str = "error") -> pd.DataFrame:
    """Train (or resume, or reuse) every (method, seed) run, one after the other or (a ``side_by_side`` profile)
    all in this process at once; then the training table."""
    cfgs = [exp.run_config(method, seed) for method in exp.methods for seed in exp.seeds]
    if exp.side_by_side:
        train_runs_side_by_side(cfgs, exp.consistency, on_change)
    else:
        for cfg in cfgs:
            train_run(cfg, exp.consistency, on_change)
    return training_table(exp)


# ----------------------------------------------------------------------------- evaluation

def eval_key(snapshot: Path, exp: ConsistencyExperiment, extractor_key: str, ref_key: str, sample_seed: int,
             num_steps: int) -> str:
    """What a row depends on: snapshot weights, the evaluation and sampling settings, extractor and reference."""
    e = to_dict(exp.eval)
    for key in ("progress", "grid_size", "sample_steps", "sampling_repeats"):
        e.pop(key)
    parts = {"snapshot_sha256": snapshot_digest(snapshot), "eval": e, "extractor": extractor_key,
             "reference": ref_key, "sample_seed": sample_seed, "num_steps": num_steps,
             "sampling": {k: getattr(exp.consistency, k) for k in ("sigma_min", "sigma_max", "sigma_data",
                                                                   "two_step_sigma")}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


SAMPLE_SEED_AT = 6  # a point is (method, seed, step, snapshot, is the last, sampler[, sample seed])


def measurer(exp: ConsistencyExperiment, device: str | None = None):
    """(name_of, measure) of the evaluation loop for points (method, seed, step, snapshot, is the last, sampling
    steps[, sample seed]): FD and KID of one- or two-step samples of one EMA snapshot, drawn from the given sample
    seed (default: the run's, the same initial noise for every method of a pair)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = extractor_for(exp, device)
    ref, ref_key = reference_features(exp, extractor)
    ref_stats, ext_key, e = feature_stats(ref), extractor_key(extractor), exp.eval

    def seed_of(point):
        return point_sample_seed(point, at=SAMPLE_SEED_AT)

    def name_of(point):
        return f"{point[5]}step-{eval_key(point[3], exp, ext_key, ref_key, seed_of(point), point[5])}"

    def measure(point):
        method, seed, step, path, last, k = point[:6]
        model, cfg = load_run_model(exp.run_dir(method, seed), step)
        images = consistency_samples(model, exp.consistency, e.num_samples, cfg.resolution, k, e.sample_batch_size,
                                     seed=seed_of(point), device=device)
        feats = extractor(images)
        if last:
            atomic_save_npy(exp.eval_dir / f"samples-{method}-{seed}-{k}step.npy", images[:e.grid_size])
        return {"method": method, "seed": seed, "step": step, "sample_steps": k, "extractor": extractor.name,
                 "metric": extractor.label, "reference": reference_split(extractor), "num_samples": e.num_samples,
                 "num_ref": len(ref), "fd": frechet_distance(feats, ref_stats),
                 "kid": kernel_distance(feats, ref, e.kid_subsets, e.kid_subset_size, seed=step),
                 "classifier_accuracy": extractor.info.get("test_accuracy"), "assign_batch": cfg.batch_size,
                 "model": cfg.model, "resolution": cfg.resolution}
    return name_of, measure


def evaluate(exp: ConsistencyExperiment, device: str | None = None) -> pd.DataFrame:
    """FD and KID of one- and two-step samples of every EMA snapshot of every run (cached by ``eval_key``)."""
    todo = [(*snapshot, k) for snapshot in snapshots_to_evaluate(exp) for k in exp.eval.sample_steps]
    return evaluate_snapshots(exp, todo, *measurer(exp, device), sort=("sample_steps", "method", "seed", "step"),
                              unit="point")


def sampling_noise(exp: ConsistencyExperiment, device: str | None = None) -> pd.DataFrame:
    """The last snapshot of each method's first seed sampled with ``eval.sampling_repeats`` other sample seeds, for
    each sampler (``consistency_sampling_noise.csv``, cached like the evaluation): the paired sampling noise the
    report adds to this experiment's intervals. Without rows when ``sampling_repeats`` is 0."""
    points = [(*p[:5], k, p[5]) for p in sampling_noise_points(exp) for k in exp.eval.sample_steps]
    return evaluate_sampling_noise(exp, *measurer(exp, device), points=points,
                                   sort=("sample_steps", "method", "seed", "step", "sample_seed"),
                                   seed_at=SAMPLE_SEED_AT)


def per_sampler(fid: pd.DataFrame, frame) -> list[pd.DataFrame]:
    """``frame(fid of one sampler)`` for each number of sampling steps, with a leading ``sample_steps`` column."""
    out = []
    for k, sub in fid.groupby("sample_steps"):
        result = frame(sub)
        results = result if isinstance(result, tuple) else (result,)
        out.append(tuple(r.assign(sample_steps=k)[["sample_steps", *r.columns]] for r in results))
    return [pd.concat(parts, ignore_index=True) for parts in zip(*out)]


def write_metrics(exp: ConsistencyExperiment, paired: pd.DataFrame, summary: pd.DataFrame,
                  training: pd.DataFrame) -> dict:
    """results/metrics/consistency.json: per sampler and method, the final paired FD difference and the ratio."""
    metrics = {}
    for _, r in summary.iterrows():
        sub = paired[(paired.sample_steps == r.sample_steps) & (paired.method == r.method)]
        p = sub[sub.step == sub.step.max()].iloc[0]
        runs = training[training.method == r.method]
        metrics.setdefault(f"{int(r.sample_steps)}-step", {})[r.method] = {
            "final_fd": round(r.final_fd_method, 4), "final_fd_vanilla": round(r.final_fd_vanilla, 4),
            "final_fd_diff": round(p.fd_diff_mean, 4),
            "final_fd_diff_ci": [round(p.fd_diff_ci_low, 4), round(p.fd_diff_ci_high, 4)],
            "n_better": int(p.n_better), "n_pairs": int(p.n_pairs), "ratio_median": round(r.ratio_median, 4),
            "ratio_ci": [round(r.ratio_ci_low, 4), round(r.ratio_ci_high, 4)], "n_reached": int(r.n_reached),
            "n_censored": int(r.n_censored),
            "distance_reduction_pct": round(float(100 * (runs.dist_after / runs.dist_before - 1).mean()), 3)}
    path = Path(exp.output_dir) / "metrics" / f"{exp.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_all(exp: ConsistencyExperiment) -> dict[str, pd.DataFrame]:
    """Every table of the experiment from the trained runs (the DVC evaluate stage)."""
    fid = evaluate(exp)
    training = write_training_tables(exp)
    (paired,) = per_sampler(fid, paired_frame)
    summary, seeds = per_sampler(fid, lambda sub: efficiency_frames(exp.methods, sub))
    write_csv(paired, exp.table("paired"))
    write_csv(summary, exp.table("efficiency"))
    write_csv(seeds, exp.table("efficiency_seeds"))
    write_metrics(exp, paired, summary, training)
    return {"fid": fid, "training": training, "paired": paired, "efficiency": summary, "efficiency_seeds": seeds,
            "sampling_noise": sampling_noise(exp)}


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> None:
    experiment_main(argv, GROUP, setup, standard_commands(evaluate_all, train_all),
                    "Consistency-model experiment: proxy classifier, every run, evaluation (one run alone: "
                    "python -m immiscible.experiments.consistency_train).",
                    "checkpoints/consistency", "checkpoints/classifier-consistency")


if __name__ == "__main__":
    main()
