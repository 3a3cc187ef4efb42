"""Evaluating an experiment's EMA snapshots, shared by every experiment: the feature extractor and its reference
set, one cached loop over the snapshots (``evaluate_snapshots``: each experiment passes only how it samples and
scores one snapshot), and the tables read from the scores (paired differences, steps-to-target, metrics).

Each score is cached as a JSON row under ``exp.eval_dir/<method>-<seed>/`` in a file named by a hash of what it
depends on (``eval_key``: the snapshot's weights, every evaluation parameter, the extractor's weights, the
reference set and the sample seed), so a retrained run or a changed setting can never return an old row.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from immiscible.config import to_dict
from immiscible.data import load_dataset, load_images
from immiscible.engine.checkpoints import list_snapshots, snapshot_digest
from immiscible.evaluation.features import classifier_dir, get_extractor
from immiscible.evaluation.statistics import efficiency_by_seed, efficiency_summary, paired_differences
from immiscible.experiments.experiment import Experiment, write_csv
from immiscible.io import atomic_save_npy, atomic_write_text


def sample_seed(seed: int) -> int:
    """The sample seed of a run's evaluations: the same initial noise for every method of a pair."""
    return 10_000 + seed


def extractor_for(exp: Experiment, device: str = "cpu"):
    """The experiment's feature extractor on ``device``; the proxy classifier must have been trained (classifier
    stage)."""
    folder = classifier_dir(exp.classifier.out_dir, exp.classifier.dataset, exp.classifier.resolution)
    stored = load_dataset(exp.train.dataset, "train", exp.train.data_dir).images.shape[1]
    native = exp.train.resolution == stored  # a downsampled run is never labelled FID by `auto`
    return get_extractor(exp.eval.extractor, folder, exp.eval.inception_weights, native_resolution=native,
                         device=device)


def extractor_key(extractor) -> str:
    """The extractor's part of the cache keys: a hash of its weights (Inception's file, the proxy classifier's)."""
    if extractor.name == "inception":
        return "inception-" + hashlib.sha256(Path(extractor.info["weights"]).read_bytes()).hexdigest()[:16]
    digest = hashlib.sha256(Path(extractor.info["path"], "classifier.safetensors").read_bytes()).hexdigest()
    return f"proxy-{digest[:16]}"


def evaluate_snapshots(exp: Experiment, points: Sequence[tuple], name_of: Callable[[tuple], str],
                       measure: Callable[[tuple], dict], sort: Sequence[str] = ("method", "seed", "step"),
                       unit: str = "snapshot", table: str = "fid") -> pd.DataFrame:
    """The evaluation loop of every experiment. ``points``: (method, seed, step, snapshot path, is the run's last
    snapshot, *what else the experiment varies), e.g. ``snapshots_to_evaluate(exp)``. For each point, the row
    cached in ``exp.eval_dir/<method>-<seed>/step<step>-<name_of(point)>.json`` if it exists; else the row of an
    earlier point with the same name (the same weights scored the same way: fine-tuning's step 0 in every run),
    with the point's method, seed and step; else ``measure(point)``, which samples and scores the snapshot (and
    saves what the figures show). Writes and returns the experiment's ``table`` (the fid table), sorted by ``sort``."""
    rows, done = [], {}
    for point in tqdm(points, desc="evaluate", unit=unit, disable=not exp.eval.progress):
        method, seed, step = point[:3]
        name = name_of(point)
        cache = exp.eval_dir / f"{method}-{seed}" / f"step{step:07d}-{name}.json"
        if cache.exists():
            row = json.loads(cache.read_text())
        else:
            row = {**done[name], "method": method, "seed": seed, "step": step} if name in done else measure(point)
            atomic_write_text(cache, json.dumps(row, indent=1) + "\n")  # last: its presence marks the point done
        rows.append(row)
        done[name] = row
    frame = pd.DataFrame(rows).sort_values(list(sort)).reset_index(drop=True)
    write_csv(frame, exp.table(table))
    return frame


def sampling_noise_points(exp: Experiment) -> list[tuple]:
    """(method, seed, step, snapshot path, False, sample seed): the last evaluated snapshot of each method's first
    seed, once for each of ``eval.sampling_repeats`` other sample seeds (20000 + 1000 r + seed, as the unconditional
    table): how much of the FD spread comes from drawing the samples (the report's sampling floor)."""
    seed, points = exp.seeds[0], []
    for method in exp.methods:
        snaps = {s: p for s, p in list_snapshots(exp.run_dir(method, seed)).items() if exp.evaluates(s)}
        if not snaps:
            raise FileNotFoundError(f"no EMA snapshots in {exp.run_dir(method, seed)}: train the runs first")
        step = max(snaps)
        points += [(method, seed, step, snaps[step], False, 20_000 + 1000 * r + seed)
                   for r in range(exp.eval.sampling_repeats)]
    return points


def point_sample_seed(point: tuple, at: int = 5) -> int:
    """The sample seed of an evaluation point: its element ``at`` where the point has one (a
    ``sampling_noise_points`` point: 5; consistency's, which carry the sampler before it: 6), else the run's
    (``sample_seed``)."""
    return point[at] if len(point) > at else sample_seed(point[1])


def evaluate_sampling_noise(exp: Experiment, name_of: Callable[[tuple], str], measure: Callable[[tuple], dict],
                            points: Sequence[tuple] | None = None,
                            sort: Sequence[str] = ("method", "seed", "step", "sample_seed"),
                            seed_at: int = 5) -> pd.DataFrame:
    """The experiment's ``<name>_sampling_noise.csv``: ``evaluate_snapshots`` over ``points`` (default
    ``sampling_noise_points``; each point's sample seed is its element ``seed_at``), cached like the evaluation,
    each row ``measure``'s with a last ``sample_seed`` column; the paired sampling noise the report adds to this
    experiment's intervals; written without rows when ``eval.sampling_repeats`` is 0."""
    if not exp.eval.sampling_repeats:
        frame = pd.DataFrame(columns=[*sort, "fd", "kid"])
        write_csv(frame, exp.table("sampling_noise"))
        return frame
    points = sampling_noise_points(exp) if points is None else points

    def measure_repeat(point):
        return {**measure(point), "sample_seed": point_sample_seed(point, at=seed_at)}
    return evaluate_snapshots(exp, points, name_of, measure_repeat, sort=sort, table="sampling_noise")


def reference_split(extractor) -> str:
    """The proxy's classifier saw the training images: its reference is the held-out test split."""
    return "train" if extractor.name == "inception" else "test"


def reference_features(exp: Experiment, extractor) -> tuple[np.ndarray, str]:
    """(features of ``num_ref`` reference images, a key naming them), cached per extractor and split."""
    split = reference_split(extractor)
    key = (f"ref-{Path(exp.train.dataset).name}-{split}-{exp.train.resolution}px-{extractor_key(extractor)}"
           f"-n{exp.eval.num_ref}")
    path = exp.eval_dir / f"{key}.npy"
    if path.exists():
        return np.load(path), key
    images = load_images(exp.train.dataset, split, exp.train.data_dir, exp.train.resolution)
    images = images[reference_indices(len(images), exp.eval.num_ref)]
    feats = extractor(images.permute(0, 2, 3, 1).numpy(), progress=exp.eval.progress)
    atomic_save_npy(path, feats)
    return feats, key


def reference_indices(n: int, num_ref: int) -> np.ndarray:
    """Which of the ``n`` reference-split images are the reference set: a fixed random subset of ``num_ref``
    (all of them, in order, when ``num_ref`` is 0 or at least ``n``)."""
    if num_ref and num_ref < n:
        return np.random.default_rng(0).permutation(n)[:num_ref]
    return np.arange(n)


def eval_key(snapshot: Path, exp: Experiment, extractor_key: str, ref_key: str, sample_seed: int) -> str:
    """What an evaluation row depends on: the snapshot's weights, every evaluation parameter, the extractor's
    weights and the reference set. Its hash names the cached row."""
    parts = {"snapshot_sha256": snapshot_digest(snapshot), "eval": to_dict(exp.eval), "extractor": extractor_key,
             "reference": ref_key, "sample_seed": sample_seed}
    for key in ("progress", "grid_size", "last_step_images", "sampling_repeats"):
        parts["eval"].pop(key)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def snapshots_to_evaluate(exp: Experiment) -> list[tuple]:
    """(method, seed, step, snapshot path, is the run's last) for every EMA snapshot of every run that
    ``exp.evaluates``; a run without such snapshots is an error that names its training stage."""
    todo = []
    for method in exp.methods:
        for seed in exp.seeds:
            snaps = {s: p for s, p in list_snapshots(exp.run_dir(method, seed)).items() if exp.evaluates(s)}
            if not snaps:
                raise FileNotFoundError(f"no EMA snapshots in {exp.run_dir(method, seed)}: train the runs first "
                                        f"(`dvc repro train_{exp.name}`)")
            todo += [(method, seed, step, path, step == max(snaps)) for step, path in snaps.items()]
    return todo


def paired_frame(fid: pd.DataFrame) -> pd.DataFrame:
    """Per method and step: the paired difference method - vanilla of FD and KID over seeds (paired t, 95%)."""
    table = paired_differences(fid, ("fd", "kid"), baseline="vanilla")
    table.insert(3, "fd_diff_ci_halfwidth", (table.fd_diff_ci_high - table.fd_diff_ci_low) / 2)
    return table


def efficiency_frames(methods, fid: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary per method, per-seed rows): steps vanilla needs to reach its own final FD over the steps the
    method needs, per seed, censored where the method never reaches it (the rule is fixed in code, before runs)."""
    base = fid[fid.method == "vanilla"].pivot(index="step", columns="seed", values="fd")
    summary, seeds = [], []
    for method in (m for m in methods if m != "vanilla"):
        other = fid[fid.method == method].pivot(index="step", columns="seed", values="fd")
        steps = base.index.intersection(other.index)
        per_seed = efficiency_by_seed(steps.values, {s: base.loc[steps, s].values for s in base.columns},
                                      {s: other.loc[steps, s].values for s in other.columns})
        common = list(per_seed.seed)
        out = efficiency_summary(per_seed, steps.values, base.loc[steps, common].mean(1).values,
                                 other.loc[steps, common].mean(1).values)
        seeds.append(per_seed.assign(method=method, baseline="vanilla", last_step=int(steps.max())))
        summary.append({"method": method, "baseline": "vanilla", "metric": fid.metric.iloc[0],
                        "target_rule": "vanilla's own final FD, per seed", **out,
                        "final_fd_vanilla": float(base.loc[steps.max(), common].mean()),
                        "final_fd_method": float(other.loc[steps.max(), common].mean()),
                        "last_step": int(steps.max()), "num_samples": int(fid.num_samples.iloc[0])})
    summary, seeds = pd.DataFrame(summary), pd.concat(seeds, ignore_index=True)
    seeds = seeds[["method", "baseline", "seed", "target", "steps_baseline", "steps_method", "censored", "ratio",
                   "ratio_kind", "last_step"]]
    return summary, seeds


def efficiency_tables(exp: Experiment, fid: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``efficiency_frames``, written to the experiment's efficiency tables."""
    summary, seeds = efficiency_frames(exp.methods, fid)
    write_csv(summary, exp.table("efficiency"))
    write_csv(seeds, exp.table("efficiency_seeds"))
    return summary, seeds


def write_metrics(exp: Experiment, fid: pd.DataFrame, paired: pd.DataFrame, summary: pd.DataFrame,
                  training: pd.DataFrame) -> dict:
    """results/metrics/unconditional.json: what `dvc metrics show` and `dvc exp show` display."""
    metrics = {}
    last = paired[paired.step == paired.step.max()]
    for _, r in summary.iterrows():
        p = last[last.method == r.method].iloc[0]
        runs = training[training.method == r.method]
        metrics[r.method] = {
            "final_fd": round(r.final_fd_method, 4), "final_fd_vanilla": round(r.final_fd_vanilla, 4),
            "final_fd_diff": round(p.fd_diff_mean, 4), "final_fd_diff_ci": [round(p.fd_diff_ci_low, 4),
                                                                             round(p.fd_diff_ci_high, 4)],
            "n_better": int(p.n_better), "n_pairs": int(p.n_pairs),
            "ratio_median": round(r.ratio_median, 4), "ratio_ci": [round(r.ratio_ci_low, 4), round(r.ratio_ci_high, 4)],
            "ratio_ci_coverage": round(r.ci_coverage, 4), "n_reached": int(r.n_reached),
            "n_censored": int(r.n_censored), "ratio_mean_curve": round(r.ratio_mean_curve, 4),
            "distance_reduction_pct": round(float(100 * (runs.dist_after / runs.dist_before - 1).mean()), 3)}
    path = Path(exp.output_dir) / "metrics" / f"{exp.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return metrics
