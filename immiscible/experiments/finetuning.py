"""Fine-tuning experiment (Immiscible Diffusion, Li et al. 2024: fine-tuning Stable Diffusion v1.4 on ImageNet, FID
11.45 vanilla, 10.28 linear assignment, 10.38 KNN in the official code's README), at CPU scale on CIFAR-10.

One vanilla model is pretrained on some classes (``pretrain.classes``) and every run is fine-tuned from its last EMA
snapshot on the other classes (``train.classes``): a shifted distribution that shares structure with the pretraining
one, as ImageNet does with Stable Diffusion's pretraining data. Every method and seed starts from the identical
weights (checked here: the step-0 snapshot of every run holds the pretrained snapshot's tensors); runs with the same
seed share data order and noise draws and are compared in pairs.

Metrics per method, seed and snapshot (step 0 is the pretrained model): FD and KID against held-out images of the
fine-tuning classes, and ``fd_source``, the FD of the same samples against the pretraining classes (how far the
model has moved from where it started).

    python -m immiscible.experiments.finetuning classifier
    python -m immiscible.experiments.finetuning_train pretrain
    python -m immiscible.experiments.finetuning_train finetune --method exact --seed 0
    python -m immiscible.experiments.finetuning evaluate
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from immiscible.config import group_profile
from immiscible.data import load_images, load_labels
from immiscible.diffusion.sampling import sample_images
from immiscible.engine.checkpoints import init_weights_path, load_run_model, weights_digest
from immiscible.engine.config import TrainConfig
from immiscible.engine.loop import train
from immiscible.evaluation.distances import feature_stats, frechet_distance, kernel_distance
from immiscible.evaluation.statistics import paired_differences
from immiscible.experiments import experiment as E, snapshot_eval as S
from immiscible.experiments.cli import experiment_main, standard_commands
from immiscible.experiments.finetuning_train import GROUP, pretrain_dir, run_settings
from immiscible.io import atomic_save_npy

# The official code's README, fine-tuning Stable Diffusion v1.4 on ImageNet (FID, one run each)
PAPER_FID = {"vanilla": 11.45, "exact": 10.28, "knn": 10.38}
VALUES = ("fd", "kid", "fd_source")


@dataclass(frozen=True)
class FinetuneExperiment(E.Experiment):
    pretrain: TrainConfig | None = None    # the shared starting point's run (vanilla, other classes)

    @property
    def pretrain_dir(self) -> Path:
        return Path(self.pretrain.output_dir)


def setup(profile: str | None = None, params: str = "params.yaml", checkpoint_dir: str = "checkpoints/finetuning",
          classifier_root: str = "checkpoints/classifier-finetuning", data_dir: str = "data",
          dataset: str | None = None, train_overrides: dict | None = None, pretrain_overrides: dict | None = None,
          **kwargs) -> FinetuneExperiment:
    """The experiment of params.yaml's ``finetuning`` group (other arguments as ``unconditional.setup``)."""
    profile = group_profile(params, GROUP, profile)
    pre, _ = run_settings(params, profile, dataset, data_dir, checkpoint_dir, pretrain_overrides, train_overrides)
    exp = E.setup(profile, dataset=dataset, data_dir=data_dir, params=params, checkpoint_dir=checkpoint_dir,
                  classifier_root=classifier_root, group_name=GROUP,
                  train_overrides={**(train_overrides or {}), "init_from": str(pretrain_dir(checkpoint_dir, profile))},
                  sections=("pretrain", "train", "eval", "classifier"), **kwargs)
    return FinetuneExperiment(**{f: getattr(exp, f) for f in exp.__dataclass_fields__}, pretrain=pre)


# ----------------------------------------------------------------------------- training (tests, notebooks)

def train_all(exp: FinetuneExperiment, on_change: str = "error") -> pd.DataFrame:
    """The pretraining run, then every (method, seed) fine-tuning run from it; the training table."""
    train(exp.pretrain, on_change=on_change)
    for method in exp.methods:
        for seed in exp.seeds:
            train(exp.run_config(method, seed), on_change=on_change)
    return E.training_table(exp)


# ----------------------------------------------------------------------------- evaluation

def class_subset(labels: np.ndarray, classes) -> np.ndarray:
    """Indices of ``labels`` in ``classes`` (all of them when ``classes`` is empty)."""
    return np.flatnonzero(np.isin(labels, classes)) if len(classes) else np.arange(len(labels))


def reference_features(exp: FinetuneExperiment, extractor, classes) -> tuple[np.ndarray, str]:
    """(features of up to ``num_ref`` reference images of ``classes``, a key naming them), cached."""
    split, t = S.reference_split(extractor), exp.train
    names = "all" if not len(classes) else "-".join(str(c) for c in classes)
    key = (f"ref-{Path(t.dataset).name}-{split}-classes{names}-{t.resolution}px-{S.extractor_key(extractor)}"
           f"-n{exp.eval.num_ref}")
    path = exp.eval_dir / f"{key}.npy"
    if path.exists():
        return np.load(path), key
    labels, _ = load_labels(t.dataset, split, t.data_dir)
    idx = class_subset(labels.numpy(), classes)
    idx = idx[S.reference_indices(len(idx), exp.eval.num_ref)]
    images = load_images(t.dataset, split, t.data_dir, t.resolution)[torch.from_numpy(idx)]
    feats = extractor(images.permute(0, 2, 3, 1).numpy(), progress=exp.eval.progress)
    atomic_save_npy(path, feats)
    return feats, key


def check_common_start(exp: FinetuneExperiment) -> str:
    """The SHA-256 every run started from: each run's step-0 snapshot must equal the pretrained run's last EMA
    snapshot (the premise of the paired comparison, and proof that the weights were loaded, not re-initialised)."""
    expected = weights_digest(init_weights_path(exp.pretrain_dir))
    todo = S.snapshots_to_evaluate(exp)
    starts = {(m, s): path for m, s, step, path, _ in todo if step == 0}
    for method in exp.methods:
        for seed in exp.seeds:
            path = starts.get((method, seed))
            if path is None:
                raise FileNotFoundError(f"{exp.run_dir(method, seed)} has no step-0 snapshot (a fine-tuning run "
                                        "records its starting weights as step 0): retrain it with this version")
            if weights_digest(path) != expected:
                raise ValueError(f"{path} is not the pretrained snapshot of {exp.pretrain_dir}: the run did not "
                                 "start from the pretrained weights; retrain it (`dvc repro train_finetuning`)")
    return expected


def measurer(exp: FinetuneExperiment, device: str | None = None):
    """(name_of, measure) of the evaluation loop for points (method, seed, step, snapshot, is the last[, sample
    seed]): FD and KID against the fine-tuning classes and FD against the pretraining classes of one EMA snapshot,
    sampled from the given sample seed (default: the run's, the same initial noise for every method of a pair)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = S.extractor_for(exp, device)
    ref, ref_key = reference_features(exp, extractor, exp.train.classes)
    source, source_key = reference_features(exp, extractor, exp.pretrain.classes)
    ref_stats, source_stats, e = feature_stats(ref), feature_stats(source), exp.eval
    ext_key = S.extractor_key(extractor)

    def name_of(point):
        return S.eval_key(point[3], exp, ext_key, ref_key + "|" + source_key, S.point_sample_seed(point))

    def measure(point):  # (identical weights with the same sample seed, as every run's step 0, are scored once)
        method, seed, step, path, last = point[:5]
        model, cfg = load_run_model(exp.run_dir(method, seed), step)
        images = sample_images(model, cfg, e.num_samples, e.sample_steps, e.sample_batch_size,
                               seed=S.point_sample_seed(point), device=device, progress=e.progress)
        feats = extractor(images)
        if last:
            atomic_save_npy(exp.eval_dir / f"samples-{method}-{seed}.npy", images[:e.grid_size])
        if step == 0 and method == exp.methods[0] and seed == exp.seeds[0] and len(point) == 5:
            atomic_save_npy(exp.eval_dir / "samples-pretrained.npy", images[:e.grid_size])
        return {"method": method, "seed": seed, "step": step, "extractor": extractor.name,
                 "metric": extractor.label, "reference": S.reference_split(extractor),
                 "reference_classes": " ".join(map(str, exp.train.classes)) or "all",
                 "num_samples": e.num_samples, "num_ref": len(ref), "sample_steps": e.sample_steps,
                 "fd": frechet_distance(feats, ref_stats),
                 "kid": kernel_distance(feats, ref, e.kid_subsets, e.kid_subset_size, seed=step),
                 "fd_source": frechet_distance(feats, source_stats),
                 "classifier_accuracy": extractor.info.get("test_accuracy"), "assign_batch": cfg.batch_size,
                 "model": cfg.model, "resolution": cfg.resolution}
    return name_of, measure


def evaluate(exp: FinetuneExperiment, device: str | None = None) -> pd.DataFrame:
    """FD and KID against the fine-tuning classes and FD against the pretraining classes of every EMA snapshot
    (cached by weights, evaluation parameters, extractor, references and sample seed; identical snapshots with the
    same sample seed, as every run's step 0, are evaluated once)."""
    check_common_start(exp)
    return S.evaluate_snapshots(exp, S.snapshots_to_evaluate(exp), *measurer(exp, device))


def sampling_noise(exp: FinetuneExperiment, device: str | None = None) -> pd.DataFrame:
    """The last snapshot of each method's first seed scored with ``eval.sampling_repeats`` other sample seeds
    (``finetuning_sampling_noise.csv``, cached like the evaluation): the paired sampling noise the report adds to
    this experiment's intervals. Without rows when ``sampling_repeats`` is 0."""
    return S.evaluate_sampling_noise(exp, *measurer(exp, device))


def paired_frame(fid: pd.DataFrame) -> pd.DataFrame:
    """Per method and step: method - vanilla of FD, KID and the source FD over seeds (paired t, 95%)."""
    table = paired_differences(fid, VALUES, baseline="vanilla")
    table.insert(3, "fd_diff_ci_halfwidth", (table.fd_diff_ci_high - table.fd_diff_ci_low) / 2)
    return table


def paper_table(fid: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """The paper's fine-tuning FIDs beside our final FDs: per method, the value, the difference to vanilla and
    its relative size (ours with the paired interval). Different data, model, scale and metric: compare the signs
    and relative sizes, not the values."""
    last = int(fid.step.max())
    final = fid[fid.step == last].groupby("method").fd.mean()
    rows = []
    for method in final.index:
        p = paired[(paired.method == method) & (paired.step == last)]
        paper = PAPER_FID.get(method)
        rows.append({"method": method, "paper_fid": paper,
                     "paper_diff": None if paper is None else round(paper - PAPER_FID["vanilla"], 2),
                     "paper_rel_pct": None if paper is None else 100 * (paper / PAPER_FID["vanilla"] - 1),
                     "paper_setting": "SD v1.4 fine-tuned on ImageNet (official README), one run each",
                     "ours_fd": float(final[method]),
                     "ours_diff": 0.0 if p.empty else float(p.fd_diff_mean.iloc[0]),
                     "ours_diff_ci_low": None if p.empty else float(p.fd_diff_ci_low.iloc[0]),
                     "ours_diff_ci_high": None if p.empty else float(p.fd_diff_ci_high.iloc[0]),
                     "ours_rel_pct": 100 * (final[method] / final["vanilla"] - 1),
                     "ours_setting": f"{fid.metric.iloc[0]}, step {last}, mean of {fid.seed.nunique()} seeds"})
    return pd.DataFrame(rows)


def write_pretrain_table(exp: FinetuneExperiment) -> pd.DataFrame:
    """The pretraining run's one row (classes, steps, loss, time) for the README and the notebook."""
    log = E.read_log(exp.pretrain_dir)
    table = pd.DataFrame([{"classes": " ".join(map(str, exp.pretrain.classes)) or "all",
                           "steps": int(log.step.iloc[-1]), "final_loss": log.loss.iloc[-1],
                           "train_s": E.training_seconds(log),
                           "weights_sha256": weights_digest(init_weights_path(exp.pretrain_dir))[:16]}])
    E.write_csv(table, exp.table("pretrain"))
    return table


def evaluate_all(exp: FinetuneExperiment) -> dict[str, pd.DataFrame]:
    """Every table of the experiment from the trained runs (the DVC evaluate stage)."""
    fid = evaluate(exp)
    training = E.write_training_tables(exp)
    pretrain = write_pretrain_table(exp)
    paired = paired_frame(fid)
    E.write_csv(paired, exp.table("paired"))
    # steps to vanilla's final FD, counted over the fine-tuning snapshots (step 0 is every run's common start)
    summary, seeds = S.efficiency_tables(exp, fid[fid.step > 0])
    paper = paper_table(fid, paired)
    E.write_csv(paper, exp.table("paper"))
    S.write_metrics(exp, fid, paired, summary, training)
    return {"fid": fid, "training": training, "pretrain": pretrain, "paired": paired, "efficiency": summary,
            "efficiency_seeds": seeds, "paper": paper, "sampling_noise": sampling_noise(exp)}


def main(argv=None) -> None:
    experiment_main(argv, GROUP, setup, standard_commands(evaluate_all, train_all),
                    "Fine-tuning experiment: proxy classifier, every run, evaluation (runs: python -m "
                    "immiscible.experiments.finetuning_train ...).",
                    "checkpoints/finetuning", "checkpoints/classifier-finetuning")


if __name__ == "__main__":
    main()
