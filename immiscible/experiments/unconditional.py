"""Unconditional experiment (Immiscible Diffusion, Li et al. 2024, Sec. 4 / Fig. 1, "up to 3x faster" DDIM on
CIFAR-10): vanilla vs immiscible training, FD/KID vs steps per seed, paired differences and steps-to-target.

Everything configurable lives in params.yaml's ``unconditional`` group: ``dataset``, ``methods``, ``seeds``,
``feature_extractor`` and ``profiles.<smoke|cpu|paper>`` with ``train`` (an engine TrainConfig), ``eval`` and
``classifier`` (the proxy feature extractor). This module supplies only what is the experiment's own:

    python -m immiscible.experiments.unconditional classifier   # DVC classifier_unconditional
    python -m immiscible.engine --group unconditional ...       # DVC train_unconditional@<method>-<seed>
    python -m immiscible.experiments.unconditional evaluate     # DVC evaluate_unconditional: every table

Evaluation caches are keyed by a hash of the snapshot's weights and every evaluation parameter, so a retrained
run can never return an old row. The proxy FD's reference set is the held-out test split (the proxy classifier is
trained on the training split); Inception FID keeps the training-set reference the field uses.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from immiscible.config import choices, from_dict, load_profile, to_dict
from immiscible.data import load_dataset, load_images, to_model_input, to_uint8
from immiscible.diffusion.objectives import OBJECTIVES, model_time, predict_x0, training_pair
from immiscible.diffusion.sampling import sample_images
from immiscible.diffusion.schedules import alphas_cumprod
from immiscible.engine.checkpoints import list_snapshots, load_run_model, snapshot_digest
from immiscible.engine.config import TrainConfig, check_config
from immiscible.engine.loop import train
from immiscible.engine.side_by_side import train_side_by_side
from immiscible.evaluation.distances import feature_stats, frechet_distance, kernel_distance
from immiscible.evaluation.features import EXTRACTORS, ClassifierConfig, classifier_dir, get_extractor
from immiscible.evaluation.statistics import efficiency_by_seed, efficiency_summary, paired_differences
from immiscible.experiments.cli import experiment_main, standard_commands
from immiscible.io import atomic_save_npy, atomic_write_text
from immiscible.noise.assignment import assign_noise
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


def setup(profile: str = "smoke", dataset: str | None = None, data_dir: str = "data", methods=None, seeds=None,
          objective: str | None = None, steps: int | None = None, batch_size: int | None = None,
          params: str = "params.yaml", checkpoint_dir: str = "checkpoints/unconditional",
          output_dir: str = "results", classifier_root: str = "checkpoints/classifier",
          train_overrides: dict | None = None, eval_overrides: dict | None = None, group_name: str = "unconditional",
          eval_cls: type = EvalConfig, sections: tuple[str, ...] = ("train", "eval", "classifier")) -> Experiment:
    """Resolve and validate the whole experiment (params.yaml profile + arguments) before any compute.
    ``group_name``/``eval_cls``/``sections``: another experiment of the same shape (its params group, evaluation
    config and the sections its profiles may hold). A profile may also set its own ``methods``/``seeds`` (else the
    group's) and ``side_by_side: true`` (its runs train in one process: ``train_all``)."""
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


# ----------------------------------------------------------------------------- training

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


# ----------------------------------------------------------------------------- evaluation

def extractor_for(exp: Experiment, device: str = "cpu"):
    """The experiment's feature extractor on ``device``; the proxy classifier must have been trained (classifier
    stage)."""
    folder = classifier_dir(exp.classifier.out_dir, exp.classifier.dataset, exp.classifier.resolution)
    stored = load_dataset(exp.train.dataset, "train", exp.train.data_dir).images.shape[1]
    native = exp.train.resolution == stored  # a downsampled run is never labelled FID by `auto`
    return get_extractor(exp.eval.extractor, folder, exp.eval.inception_weights, native_resolution=native,
                         device=device)


def _extractor_key(extractor) -> str:
    if extractor.name == "inception":
        return "inception-" + hashlib.sha256(Path(extractor.info["weights"]).read_bytes()).hexdigest()[:16]
    digest = hashlib.sha256(Path(extractor.info["path"], "classifier.safetensors").read_bytes()).hexdigest()
    return f"proxy-{digest[:16]}"


def reference_split(extractor) -> str:
    """The proxy's classifier saw the training images: its reference is the held-out test split."""
    return "train" if extractor.name == "inception" else "test"


def reference_features(exp: Experiment, extractor) -> tuple[np.ndarray, str]:
    """(features of ``num_ref`` reference images, a key naming them), cached per extractor and split."""
    split = reference_split(extractor)
    key = (f"ref-{Path(exp.train.dataset).name}-{split}-{exp.train.resolution}px-{_extractor_key(extractor)}"
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


def evaluate(exp: Experiment, device: str | None = None) -> pd.DataFrame:
    """FD and KID of every EMA snapshot of every run (cached by ``eval_key``); writes the fid table."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # sampling and features on the GPU if any
    extractor = extractor_for(exp, device)
    ref, ref_key = reference_features(exp, extractor)
    ref_stats, ext_key = feature_stats(ref), _extractor_key(extractor)
    todo = snapshots_to_evaluate(exp)
    rows, e = [], exp.eval
    for method, seed, step, path, last in tqdm(todo, desc="evaluate", unit="snapshot", disable=not e.progress):
        sample_seed = 10_000 + seed  # the same initial noise for both methods of a pair
        cache = exp.eval_dir / f"{method}-{seed}" / f"step{step:07d}-{eval_key(path, exp, ext_key, ref_key, sample_seed)}.json"
        if cache.exists():
            rows.append(json.loads(cache.read_text()))
            continue
        model, cfg = load_run_model(exp.run_dir(method, seed), step)
        images = sample_images(model, cfg, e.num_samples, e.sample_steps, e.sample_batch_size, seed=sample_seed,
                               device=device, progress=e.progress)
        feats = extractor(images)
        row = {"method": method, "seed": seed, "step": step, "extractor": extractor.name,
               "metric": extractor.label, "reference": reference_split(extractor), "num_samples": e.num_samples,
               "num_ref": len(ref), "sample_steps": e.sample_steps, "fd": frechet_distance(feats, ref_stats),
               "kid": kernel_distance(feats, ref, e.kid_subsets, e.kid_subset_size, seed=step),
               "classifier_accuracy": extractor.info.get("test_accuracy"), "assign_batch": cfg.batch_size,
               "objective": cfg.objective, "model": cfg.model, "resolution": cfg.resolution}
        if last:
            atomic_save_npy(exp.eval_dir / f"samples-{method}-{seed}.npy", images[:e.grid_size])
        atomic_write_text(cache, json.dumps(row, indent=1) + "\n")  # last: its presence marks the step as done
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["method", "seed", "step"]).reset_index(drop=True)
    write_csv(table, exp.table("fid"))
    return table


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` atomically unless the file already holds exactly this content (keeps DVC hashes stable)."""
    text = df.to_csv(index=False, float_format="%.6g")
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def paired_frame(fid: pd.DataFrame) -> pd.DataFrame:
    """Per method and step: the paired difference method - vanilla of FD and KID over seeds (paired t, 95%)."""
    table = paired_differences(fid, ("fd", "kid"), baseline="vanilla")
    table.insert(3, "fd_diff_ci_halfwidth", (table.fd_diff_ci_high - table.fd_diff_ci_low) / 2)
    return table


def paired_table(exp: Experiment, fid: pd.DataFrame) -> pd.DataFrame:
    """``paired_frame``, written to the experiment's paired table."""
    table = paired_frame(fid)
    write_csv(table, exp.table("paired"))
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


@torch.no_grad()
def last_step(exp: Experiment, num_show: int = 8, fractions=(1.0, 0.9, 0.8, 0.6)) -> pd.DataFrame:
    """x0-predictions of each model for held-out images noised (assigned and random noise) at the last timestep
    and at earlier ``fractions`` of T: the mean L2 distance prediction-to-truth per method, seed, noise and t.
    The predictions shown in the figure are saved beside the evaluation cache."""
    cfg0 = exp.train
    try:
        held_out = load_images(cfg0.dataset, "test", cfg0.data_dir, cfg0.resolution)
    except (FileNotFoundError, ValueError):
        held_out = load_images(cfg0.dataset, "train", cfg0.data_dir, cfg0.resolution)[-256:]
    x0 = to_model_input(held_out[:exp.eval.last_step_images])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1234))
    noises = {"assigned": assign_noise(x0, noise), "random": noise}
    ac = alphas_cumprod(cfg0)
    T, flow = cfg0.num_train_timesteps, cfg0.objective == "flow"
    times = [torch.full((len(x0),), f) if flow else torch.full((len(x0),), round(f * (T - 1)), dtype=torch.long)
             for f in fractions]
    mean_image = to_model_input(load_images(cfg0.dataset, "train", cfg0.data_dir, cfg0.resolution)[:5000]).mean(0)
    rows = [{"method": "dataset mean image", "seed": -1, "noise": "-", "t": -1,
             "mean_l2": float((x0 - mean_image).flatten(1).norm(dim=1).mean())}]
    shown = {"truth": to_uint8(x0[:num_show])}
    for method in exp.methods:
        for seed in exp.seeds:
            model, cfg = load_run_model(exp.run_dir(method, seed))
            for t in times:
                for kind, n in noises.items():
                    x_t = training_pair(cfg.objective, x0, n, t, ac)[0]
                    out = model(x_t, model_time(cfg.objective, t, cfg.num_train_timesteps)).sample
                    pred = predict_x0(cfg.objective, out, x_t, t, ac).clamp(-1, 1)
                    rows.append({"method": method, "seed": seed, "noise": kind, "t": float(t[0]),
                                 "mean_l2": float((pred - x0).flatten(1).norm(dim=1).mean())})
                    if seed == exp.seeds[0] and kind == "assigned":
                        shown[f"{method} t={float(t[0]):g}"] = to_uint8(pred[:num_show])
    np.savez(exp.eval_dir / "last_step_predictions.npz", **shown)
    table = pd.DataFrame(rows)
    write_csv(table, exp.table("last_step"))
    return table


def summarize_last_step(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the prediction-to-truth distance, per timestep, noise kind and method."""
    return (table.groupby(["t", "noise", "method"]).mean_l2.agg(["mean", "std", "count"]).reset_index()
            .sort_values(["t", "noise", "method"], ascending=[False, True, True]))


def sampling_noise(exp: Experiment, device: str | None = None) -> pd.DataFrame:
    """FD/KID of the final snapshot of each method's first seed with ``sampling_repeats`` other sample seeds: the
    part of the FD spread that comes from drawing ``num_samples`` samples, next to the spread between training seeds
    (what decides whether more seeds or more samples per snapshot buy more power)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = extractor_for(exp, device)
    ref, _ = reference_features(exp, extractor)
    ref_stats, e, rows = feature_stats(ref), exp.eval, []
    seed = exp.seeds[0]
    for method in exp.methods:
        model, cfg = load_run_model(exp.run_dir(method, seed))
        for r in range(e.sampling_repeats):
            images = sample_images(model, cfg, e.num_samples, e.sample_steps, e.sample_batch_size,
                                   seed=20_000 + 1000 * r + seed, device=device, progress=e.progress)
            feats = extractor(images)
            rows.append({"method": method, "seed": seed, "step": cfg.steps, "sample_seed": 20_000 + 1000 * r + seed,
                         "num_samples": e.num_samples, "fd": frechet_distance(feats, ref_stats),
                         "kid": kernel_distance(feats, ref, e.kid_subsets, e.kid_subset_size, seed=cfg.steps)})
    table = pd.DataFrame(rows, columns=["method", "seed", "step", "sample_seed", "num_samples", "fd", "kid"])
    write_csv(table, exp.table("sampling_noise"))
    return table


def evaluate_all(exp: Experiment) -> dict[str, pd.DataFrame]:
    """Every table of the experiment from the trained runs (what the DVC evaluate stage runs)."""
    fid = evaluate(exp)
    training = write_training_tables(exp)
    paired = paired_table(exp, fid)
    summary, seeds = efficiency_tables(exp, fid)
    write_metrics(exp, fid, paired, summary, training)
    return {"fid": fid, "training": training, "paired": paired, "efficiency": summary,
            "efficiency_seeds": seeds, "last_step": last_step(exp), "sampling_noise": sampling_noise(exp)}


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> None:
    experiment_main(argv, "unconditional", setup, standard_commands(evaluate_all, train_all),
                    "Unconditional experiment stages: proxy classifier, every run, evaluation.",
                    "checkpoints/unconditional", "checkpoints/classifier")


if __name__ == "__main__":
    main()
