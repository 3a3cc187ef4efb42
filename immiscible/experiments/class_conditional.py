"""Class-conditional experiment (Immiscible Diffusion, Li et al. 2024: class-conditional Stable Diffusion on ImageNet,
here at CPU scale on CIFAR-10): a UNet with a class embedding, label dropout for classifier-free guidance, guided
DDIM sampling; vanilla vs class-blind assignment (``exact``: only the noise is permuted, labels keep their order, as
the official code does) vs class-aware assignment (``exact_class``: one assignment per class of the batch, so every
class keeps a Gaussian noise marginal; C2OT) vs ``knn``.

Metrics per method, seed and snapshot: FD of all samples, the mean over classes of the per-class FD, KID, and the
conditioning accuracy (the share of samples the held-out proxy classifier puts in the requested class). Paired
differences against vanilla (and ``exact_class`` against ``exact``) and steps-to-target as in the unconditional
experiment.

    python -m immiscible.experiments.class_conditional classifier
    python -m immiscible.engine --group class_conditional --profile cpu --method exact_class --seed 0 --output-dir ...
    python -m immiscible.experiments.class_conditional evaluate
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from immiscible.data import load_labels
from immiscible.diffusion.sampling import sample_images
from immiscible.engine.checkpoints import load_run_model
from immiscible.evaluation.distances import feature_stats, frechet_distance, kernel_distance
from immiscible.evaluation.features import classifier_dir, load_proxy_extractor
from immiscible.evaluation.statistics import paired_differences
from immiscible.experiments.cli import experiment_main, standard_commands
from immiscible.experiments import experiment as E, snapshot_eval as S
from immiscible.io import atomic_save_npy

GROUP = "class_conditional"


@dataclass(frozen=True)
class ClassEvalConfig(E.EvalConfig):
    guidance_scale: float = 1.5            # classifier-free guidance of the DDIM samples (1: no guidance)
    grid_per_class: int = 8                # final samples per class kept for the figure (first seed)


def setup(profile: str | None = None, params: str = "params.yaml", checkpoint_dir: str = "checkpoints/class_conditional",
          classifier_root: str = "checkpoints/classifier-class_conditional", **kwargs) -> E.Experiment:
    """The experiment of params.yaml's ``class_conditional`` group (arguments as ``unconditional.setup``)."""
    exp = E.setup(profile, params=params, checkpoint_dir=checkpoint_dir, classifier_root=classifier_root,
                  group_name=GROUP, eval_cls=ClassEvalConfig, **kwargs)
    if not exp.train.num_classes:
        raise ValueError(f"profile {exp.profile!r} of {GROUP}: train.num_classes must be the dataset's number of classes")
    return exp


def sample_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """The requested classes of the evaluation samples: 0, 1, ..., C-1, 0, 1, ... (balanced)."""
    return np.arange(num_samples) % num_classes


def class_predictor(exp: E.Experiment, device: str):
    """predict(images uint8 (N, H, W, C)) -> classes, by the proxy classifier trained on the training split."""
    from safetensors.torch import load_file
    folder = classifier_dir(exp.classifier.out_dir, exp.classifier.dataset, exp.classifier.resolution)
    extractor = load_proxy_extractor(folder, device)
    weights = load_file(str(Path(folder) / "classifier.safetensors"))
    w, b = weights["head.weight"].double().numpy(), weights["head.bias"].double().numpy()
    return lambda images: np.argmax(extractor(images) @ w.T + b, axis=1)


def reference_by_class(exp: E.Experiment, extractor, ref: np.ndarray) -> dict[int, tuple]:
    """Feature statistics of the reference images of each class (the same reference set as the overall FD)."""
    labels, _ = load_labels(exp.train.dataset, S.reference_split(extractor), exp.train.data_dir)
    labels = labels.numpy()[S.reference_indices(len(labels), exp.eval.num_ref)]
    return {int(c): feature_stats(ref[labels == c]) for c in np.unique(labels)}


def measurer(exp: E.Experiment, device: str | None = None):
    """(name_of, measure) of the evaluation loop for points (method, seed, step, snapshot, is the last[, sample
    seed]): FD (all samples and per class), KID and conditioning accuracy of one EMA snapshot, sampled from the given
    sample seed (default: the run's, the same initial noise for every method of a pair)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = S.extractor_for(exp, device)
    ref, ref_key = S.reference_features(exp, extractor)
    ref_stats, ext_key, e = feature_stats(ref), S.extractor_key(extractor), exp.eval
    per_class_ref = reference_by_class(exp, extractor, ref)
    predict = class_predictor(exp, device)
    labels = sample_labels(e.num_samples, exp.train.num_classes)

    def name_of(point):
        return S.eval_key(point[3], exp, ext_key, ref_key, S.point_sample_seed(point))

    def measure(point):
        method, seed, step, path, last = point[:5]
        model, cfg = load_run_model(exp.run_dir(method, seed), step)
        images = sample_images(model, cfg, e.num_samples, e.sample_steps, e.sample_batch_size,
                               seed=S.point_sample_seed(point), device=device, progress=e.progress, labels=labels,
                               guidance_scale=e.guidance_scale)
        feats = extractor(images)
        per_class = [frechet_distance(feats[labels == c], stats) for c, stats in per_class_ref.items()]
        accuracy = float((predict(images) == labels).mean())
        if last:  # per class, the first grid_per_class samples: rows of the figure
            order = np.concatenate([np.flatnonzero(labels == c)[:e.grid_per_class] for c in per_class_ref])
            atomic_save_npy(exp.eval_dir / f"samples-{method}-{seed}.npy", images[order])
        return {"method": method, "seed": seed, "step": step, "extractor": extractor.name, "metric": extractor.label,
                 "reference": S.reference_split(extractor), "num_samples": e.num_samples, "num_ref": len(ref),
                 "sample_steps": e.sample_steps, "guidance_scale": e.guidance_scale,
                 "fd": frechet_distance(feats, ref_stats),
                 "kid": kernel_distance(feats, ref, e.kid_subsets, e.kid_subset_size, seed=step),
                 "fd_class_mean": float(np.mean(per_class)), "class_accuracy": accuracy,
                 "class_error": 1.0 - accuracy, "classifier_accuracy": extractor.info.get("test_accuracy"),
                 "assign_batch": cfg.batch_size, "model": cfg.model, "resolution": cfg.resolution}
    return name_of, measure


def evaluate(exp: E.Experiment, device: str | None = None) -> pd.DataFrame:
    """FD (all samples and per class), KID and conditioning accuracy of every EMA snapshot (cached as in the
    unconditional experiment: by weights, every evaluation parameter, extractor and reference)."""
    name_of, measure = measurer(exp, device)
    return S.evaluate_snapshots(exp, S.snapshots_to_evaluate(exp), name_of, measure)


def sampling_noise(exp: E.Experiment, device: str | None = None) -> pd.DataFrame:
    """The last snapshot of each method's first seed scored with ``eval.sampling_repeats`` other sample seeds
    (``<name>_sampling_noise.csv``, cached like the evaluation): the paired sampling noise the report adds to the
    intervals of this experiment. Without rows when ``sampling_repeats`` is 0."""
    return S.evaluate_sampling_noise(exp, *measurer(exp, device))


VALUES = ("fd", "kid", "fd_class_mean", "class_error")


def paired_frame(fid: pd.DataFrame) -> pd.DataFrame:
    """Every method against vanilla, and the class-aware assignment against the class-blind one (paired t)."""
    tables = [paired_differences(fid, VALUES, baseline="vanilla")]
    if {"exact", "exact_class"} <= set(fid.method):
        tables.append(paired_differences(fid[fid.method.isin(["exact", "exact_class"])], VALUES, baseline="exact"))
    table = pd.concat(tables, ignore_index=True)
    table.insert(3, "fd_diff_ci_halfwidth", (table.fd_diff_ci_high - table.fd_diff_ci_low) / 2)
    return table


def evaluate_all(exp: E.Experiment) -> dict[str, pd.DataFrame]:
    """Every table of the experiment from the trained runs (the DVC evaluate stage)."""
    fid = evaluate(exp)
    training = E.write_training_tables(exp)
    paired = paired_frame(fid)
    E.write_csv(paired, exp.table("paired"))
    summary, seeds = S.efficiency_tables(exp, fid)
    S.write_metrics(exp, fid, paired[paired.baseline == "vanilla"], summary, training)
    return {"fid": fid, "training": training, "paired": paired, "efficiency": summary, "efficiency_seeds": seeds,
            "sampling_noise": sampling_noise(exp)}


def main(argv=None) -> None:
    experiment_main(argv, GROUP, setup, standard_commands(evaluate_all),
                    "Class-conditional experiment: proxy classifier, evaluation (runs: python -m immiscible.engine "
                    "--group class_conditional ...).",
                    "checkpoints/class_conditional", "checkpoints/classifier-class_conditional")


if __name__ == "__main__":
    main()
