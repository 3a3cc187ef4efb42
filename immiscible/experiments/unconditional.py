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

import numpy as np
import pandas as pd
import torch

from immiscible.data import load_images, to_model_input, to_uint8
from immiscible.diffusion.objectives import model_time, predict_x0, training_pair
from immiscible.diffusion.sampling import sample_images
from immiscible.diffusion.schedules import alphas_cumprod
from immiscible.engine.checkpoints import load_run_model
from immiscible.evaluation.distances import feature_stats, frechet_distance, kernel_distance
from immiscible.experiments.cli import experiment_main, standard_commands
from immiscible.experiments.experiment import Experiment, setup, train_all, write_csv, write_training_tables
from immiscible.experiments.snapshot_eval import (efficiency_tables, eval_key, evaluate_sampling_noise,
                                                  evaluate_snapshots, extractor_for, extractor_key, paired_frame,
                                                  point_sample_seed, reference_features, reference_split,
                                                  snapshots_to_evaluate, write_metrics)
from immiscible.io import atomic_save_npy
from immiscible.noise.assignment import assign_noise

# ----------------------------------------------------------------------------- evaluation


def measurer(exp: Experiment, device: str | None = None):
    """(name_of, measure) of the evaluation loop for points (method, seed, step, snapshot, is the last[, sample
    seed]): FD and KID of one EMA snapshot, sampled from the given sample seed (default: the run's, the same initial
    noise for every method of a pair); the last snapshot's first samples are kept for the figure."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # sampling and features on the GPU if any
    extractor = extractor_for(exp, device)
    ref, ref_key = reference_features(exp, extractor)
    ref_stats, ext_key, e = feature_stats(ref), extractor_key(extractor), exp.eval

    def name_of(point):
        return eval_key(point[3], exp, ext_key, ref_key, point_sample_seed(point))

    def measure(point):
        method, seed, step, path, last = point[:5]
        model, cfg = load_run_model(exp.run_dir(method, seed), step)
        images = sample_images(model, cfg, e.num_samples, e.sample_steps, e.sample_batch_size,
                               seed=point_sample_seed(point), device=device, progress=e.progress)
        feats = extractor(images)
        if last:
            atomic_save_npy(exp.eval_dir / f"samples-{method}-{seed}.npy", images[:e.grid_size])
        return {"method": method, "seed": seed, "step": step, "extractor": extractor.name,
                 "metric": extractor.label, "reference": reference_split(extractor), "num_samples": e.num_samples,
                 "num_ref": len(ref), "sample_steps": e.sample_steps, "fd": frechet_distance(feats, ref_stats),
                 "kid": kernel_distance(feats, ref, e.kid_subsets, e.kid_subset_size, seed=step),
                 "classifier_accuracy": extractor.info.get("test_accuracy"), "assign_batch": cfg.batch_size,
                 "objective": cfg.objective, "model": cfg.model, "resolution": cfg.resolution}
    return name_of, measure


def evaluate(exp: Experiment, device: str | None = None) -> pd.DataFrame:
    """FD and KID of every EMA snapshot of every run (``evaluate_snapshots``: cached by ``eval_key``); writes the
    fid table."""
    return evaluate_snapshots(exp, snapshots_to_evaluate(exp), *measurer(exp, device))


def paired_table(exp: Experiment, fid: pd.DataFrame) -> pd.DataFrame:
    """``paired_frame``, written to the experiment's paired table."""
    table = paired_frame(fid)
    write_csv(table, exp.table("paired"))
    return table


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
    """The last snapshot of each method's first seed scored with ``eval.sampling_repeats`` other sample seeds
    (``<name>_sampling_noise.csv``, cached like the evaluation): the part of the FD spread that comes from drawing
    ``num_samples`` samples, next to the spread between training seeds, and the paired sampling noise the report
    adds to this experiment's intervals. Without rows when ``sampling_repeats`` is 0."""
    return evaluate_sampling_noise(exp, *measurer(exp, device))


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
