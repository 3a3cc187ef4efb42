"""Why immiscible training is worse than vanilla at this scale: a controlled ablation, and the follow-up's KNN k sweep
and flow-matching comparison at CPU scale.

The unconditional experiment found exact - vanilla FD +1.6 at 2000 steps, worse in every seed and step. Candidate
cause: the coupling is stronger at low dimension (the assignment cuts the image-noise distance by 2.8% on 16x16x3
batches of 64, 1.6-1.9% at 32x32x3), and the model learns a conditional it never meets at sampling (random noise).
If so, the cost should grow with the coupling strength at a fixed cost (KNN's k, exact) and with a smaller dimension.

Arms (params.yaml ``ablation.arms``), each with its own vanilla and the same seeds (paired: same init, data order,
noise draws; ``ablation_train``):
- ``base``: the unconditional setting at the ablation's step; vanilla and exact are the unconditional runs;
  KNN with k = 2, 4, 8, 16, 32: the coupling strength at the same cost;
- ``px8``: 8x8 images (a quarter of the dimension), vanilla / exact / knn8;
- ``flow``: the flow-matching objective (the follow-up: KNN FID 3.56 vs vanilla 4.92 vs linear assignment 5.02).

The coupling strength of each run is measured on its own training batches (the engine logs the image-noise
distance before and after the assignment). FD is compared within an arm (each resolution has its own proxy
classifier); across arms, the ratio method / vanilla of FD (a paired interval on the log) is comparable. Each arm
also scores its first seed's snapshots with ``eval.sampling_repeats`` other sample seeds (the same in every arm): the
paired sampling noise the report adds to each row's interval, a contrast's measured on the same draws.

    python -m immiscible.experiments.ablation classifier   # DVC classifier_ablation: proxy classifiers (other sizes)
    python -m immiscible.experiments.ablation evaluate     # DVC evaluate_ablation: every table and the figure
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from immiscible.config import from_dict, group_profile, load_profile, load_yaml_group
from immiscible.engine.loop import end_distributed
from immiscible.evaluation.features import ClassifierConfig, train_classifier
from immiscible.evaluation.statistics import paired_differences, paired_sampling_sd, t_interval
from immiscible.experiments import ablation_train as T, experiment as E, unconditional as U
from immiscible.io import atomic_savefig, atomic_write_text

GROUP = T.GROUP


@dataclass(frozen=True)
class ArmExperiment(E.Experiment):
    """One arm in the unconditional experiment's shape: its methods are run names, each run's folder is the
    ablation's (trained here, or the reused run of another experiment)."""
    folders: tuple = ()                    # ((run, seed, folder), ...)

    def run_dir(self, method: str, seed: int) -> Path:
        return Path(dict(((r, s), f) for r, s, f in self.folders)[(method, seed)])

    def evaluates(self, step: int) -> bool:
        """Only the ablation's step: every comparison is made there (and earlier snapshots cost budget)."""
        return step == self.train.steps


@dataclass(frozen=True)
class AblationExperiment:
    ablation: T.Ablation
    arms: dict = field(default_factory=dict)   # arm -> ArmExperiment
    output_dir: str = "results"

    def table(self, name: str) -> Path:
        return Path(self.output_dir) / "tables" / f"{GROUP}_{name}.csv"


def setup(profile: str | None = None, params: str = "params.yaml", dataset: str | None = None, data_dir: str = "data",
          checkpoint_dir: str = "checkpoints/ablation", output_dir: str = "results",
          classifier_root: str = "checkpoints/classifier", reuse_root: str = "checkpoints") -> AblationExperiment:
    """The ablation and one ArmExperiment per arm (evaluation and classifier settings: the unconditional profile's,
    with the ablation profile's ``eval`` on top). The base resolution's proxy classifier is the unconditional
    experiment's (``classifier_root``); other resolutions have theirs in ``<classifier_root>-ablation``."""
    profile = group_profile(params, GROUP, profile)
    ab = T.setup(profile, params, dataset, data_dir, checkpoint_dir, reuse_root)
    group, p = load_profile(params, GROUP, profile)
    _, base = load_profile(params, T.BASE_GROUP, profile)
    features = load_yaml_group(params, T.BASE_GROUP).get("feature_extractor", {})
    eval_cfg = from_dict(E.EvalConfig, {**features, **base.get("eval", {}), **(p.get("eval") or {})})
    arms = {}
    for arm in dict.fromkeys(T.parse_run(r, ab.arms)[0] for r in ab.all_runs):
        runs = tuple(r for r in ab.all_runs if r.startswith(f"{arm}-"))
        runs = tuple(sorted(runs, key=lambda r: not r.endswith("-vanilla")))
        train = ab.run_config(f"{arm}-vanilla", ab.seeds[0])
        root = classifier_root if train.resolution == ab.base.resolution else f"{classifier_root}-ablation"
        clf = from_dict(ClassifierConfig, {**base.get("classifier", {}), "dataset": train.dataset,
                                           "data_dir": data_dir, "resolution": train.resolution, "out_dir": root})
        folders = tuple((r, s, str(ab.run_dir(r, s))) for r in runs for s in ab.seeds)
        arms[arm] = ArmExperiment(profile, runs, ab.seeds, train, eval_cfg, clf, checkpoint_dir,
                                  str(Path(checkpoint_dir) / f"{profile}-eval" / arm), name=f"{GROUP}-{arm}",
                                  folders=folders)
    return AblationExperiment(ab, arms, output_dir)


def train_classifiers(exp: AblationExperiment) -> list[dict]:
    """Train (or reuse) the proxy classifier of every arm resolution other than the base one."""
    done, infos = set(), []
    for arm in exp.arms.values():
        if arm.train.resolution == exp.ablation.base.resolution or arm.classifier.resolution in done:
            continue
        done.add(arm.classifier.resolution)
        infos.append(train_classifier(arm.classifier))
    return infos


def check_reused(exp: AblationExperiment) -> None:
    """Every reused run holds the ablation's setting and reaches its step (``ablation_train.reused_config``)."""
    for run in exp.ablation.reused:
        for seed in exp.ablation.seeds:
            T.reused_config(exp.ablation, run, seed)


def coupling_table(exp: AblationExperiment) -> pd.DataFrame:
    """Per run and seed, from its training log up to the ablation's step: the mean image-noise distance before and
    after the assignment, its change in %, the final loss and the training speed."""
    rows = []
    steps = exp.ablation.base.steps
    for arm, a in exp.arms.items():
        for run in a.methods:
            for seed in a.seeds:
                log = E.read_log(a.run_dir(run, seed))
                log = log[log.step <= steps]
                cfg = exp.ablation.run_config(run, seed)
                rows.append({"arm": arm, "variant": T.parse_run(run, exp.ablation.arms)[1], "run": run,
                             "seed": seed, "method": cfg.method, "knn_k": cfg.knn_k if cfg.method == "knn" else 0,
                             "resolution": cfg.resolution, "objective": cfg.objective,
                             "reused": run in exp.ablation.reused, "steps": int(log.step.iloc[-1]),
                             "dist_before": log.dist_before.mean(), "dist_after": log.dist_after.mean(),
                             "distance_change_pct": 100 * (log.dist_after.mean() / log.dist_before.mean() - 1),
                             "final_loss": log.loss.iloc[-1],
                             "steps_per_s": log.step.iloc[-1] / E.training_seconds(log)})
    return pd.DataFrame(rows)


def evaluate_runs(exp: AblationExperiment) -> pd.DataFrame:
    """FD and KID of every run's snapshots up to the ablation's step (cached per snapshot, as the unconditional
    experiment's), with the arm and variant of each row."""
    frames = []
    for arm, a in exp.arms.items():
        try:
            table = U.evaluate(a)
        except FileNotFoundError as e:
            if "proxy classifier" not in str(e) or a.train.resolution == exp.ablation.base.resolution:
                raise
            raise FileNotFoundError(f"arm {arm!r} ({a.train.resolution} px) has no proxy classifier in "
                                    f"{a.classifier.out_dir}: `dvc repro classifier_ablation`") from e
        variants = {r: T.parse_run(r, exp.ablation.arms)[1] for r in a.methods}
        frames.append(table.rename(columns={"method": "run"}).assign(arm=arm, variant=lambda d: d.run.map(variants)))
    fid = pd.concat(frames, ignore_index=True)
    fid["log_fd"] = np.log(fid.fd)
    first = ["arm", "variant", "run", "seed", "step"]
    return fid[first + [c for c in fid.columns if c not in first]]


def sampling_noise_runs(exp: AblationExperiment) -> pd.DataFrame:
    """Per arm, the ablation step's snapshot of each run's first seed scored with ``eval.sampling_repeats`` other
    sample seeds (``unconditional.sampling_noise`` of the arm, cached like the evaluation), with the arm, variant and
    log FD: the paired sampling noise the report adds to each arm's intervals. The arms share the sample seeds, so
    the noise of a contrast between arms is measured on the same draws."""
    frames = []
    for arm, a in exp.arms.items():
        table = U.sampling_noise(a)
        variants = {r: T.parse_run(r, exp.ablation.arms)[1] for r in a.methods}
        frames.append(table.rename(columns={"method": "run"}).assign(arm=arm, variant=lambda d: d.run.map(variants)))
    noise = pd.concat(frames, ignore_index=True)
    noise["log_fd"] = np.log(noise.fd.astype(float))
    first = ["arm", "variant", "run", "seed", "step", "sample_seed"]
    return noise[first + [c for c in noise.columns if c not in first]]


def paired_frame(fid: pd.DataFrame, coupling: pd.DataFrame) -> pd.DataFrame:
    """Per arm, variant and step: method - vanilla of FD and KID (paired t over seeds), the FD ratio method/vanilla
    (exp of the paired interval of log FD: comparable across arms), and the coupling strength of the variant."""
    frames = []
    for arm, rows in fid.groupby("arm", sort=False):
        table = paired_differences(rows.assign(method=rows.variant), ("fd", "kid", "log_fd"), baseline="vanilla")
        for suffix in ("mean", "ci_low", "ci_high"):
            table[f"fd_ratio_{suffix}"] = np.exp(table.pop(f"log_fd_diff_{suffix}"))
        table = table.drop(columns=["log_fd_n_better"]).rename(columns={"method": "variant"})
        frames.append(table.assign(arm=arm))
    paired = pd.concat(frames, ignore_index=True)
    strength = (coupling.groupby(["arm", "variant"], sort=False)
                .agg(distance_change_pct=("distance_change_pct", "mean"), resolution=("resolution", "first"),
                     objective=("objective", "first"), knn_k=("knn_k", "first")).reset_index())
    paired = paired.merge(strength, on=["arm", "variant"], how="left")
    vanilla = fid[fid.variant == "vanilla"].groupby(["arm", "step"]).fd.mean().rename("fd_vanilla").reset_index()
    paired = paired.merge(vanilla, on=["arm", "step"], how="left")
    first = ["arm", "variant", "step", "resolution", "objective", "knn_k", "distance_change_pct", "n_pairs",
             "fd_vanilla", "fd_diff_mean", "fd_diff_ci_low", "fd_diff_ci_high", "fd_n_better", "fd_ratio_mean",
             "fd_ratio_ci_low", "fd_ratio_ci_high"]
    return paired[first + [c for c in paired.columns if c not in first]]


def contrast_frame(fid: pd.DataFrame, reference: str = "base") -> pd.DataFrame:
    """Does an arm change the cost of a variant? Per other arm and shared variant at the last step: the ratio of FD
    ratios (arm's method/vanilla over the reference arm's), a paired t interval over seeds on the log (the seeds
    share the init, data order and noise draws across arms), and both arms' ratios."""
    last = fid[fid.step == fid.step.max()]
    log_ratio = {}
    for (arm, variant), rows in last.groupby(["arm", "variant"], sort=False):
        log_ratio[arm, variant] = rows.set_index("seed").log_fd
    rows = []
    for (arm, variant), values in log_ratio.items():
        if arm == reference or variant == "vanilla" or (reference, variant) not in log_ratio:
            continue
        mine = values - log_ratio[arm, "vanilla"]
        ref = log_ratio[reference, variant] - log_ratio[reference, "vanilla"]
        d = (mine - ref).dropna()
        mean, lo, hi = t_interval(d.to_numpy())
        rows.append({"arm": arm, "reference": reference, "variant": variant, "step": int(last.step.max()),
                     "n_pairs": len(d), "ratio_arm": float(np.exp(mine.mean())),
                     "ratio_reference": float(np.exp(ref.mean())), "ratio_of_ratios_mean": float(np.exp(mean)),
                     "ratio_of_ratios_ci_low": float(np.exp(lo)), "ratio_of_ratios_ci_high": float(np.exp(hi)),
                     "ci_level": 0.95, "interval": "paired t over seeds on the log"})
    return pd.DataFrame(rows)


def plot_ablation(paired: pd.DataFrame, path: str | Path | None = None):
    """Left: the base arm's FD difference to vanilla against the coupling strength (distance cut), KNN k and exact.
    Right: FD ratio method / vanilla per arm (dimension and objective), with 95% paired intervals."""
    import matplotlib.pyplot as plt
    last = paired[paired.step == paired.step.max()]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    base = last[last.arm == last.arm.iloc[0]].sort_values("distance_change_pct", ascending=False)
    x = -base.distance_change_pct
    ax.errorbar(x, base.fd_diff_mean, yerr=[base.fd_diff_mean - base.fd_diff_ci_low,
                                            base.fd_diff_ci_high - base.fd_diff_mean], fmt="o-", capsize=3)
    for xi, yi, name in zip(x, base.fd_diff_mean, base.variant):
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, 5))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("coupling strength: image-noise distance cut (%) on the training batches")
    ax.set_ylabel("proxy FD, method - vanilla (95% paired CI)")
    ax.set_title(f"arm {base.arm.iloc[0]!r} ({int(base.resolution.iloc[0])} px, {base.objective.iloc[0]}), "
                 f"step {int(base.step.iloc[0])}")
    labels, y, lo, hi = [], [], [], []
    for _, r in last.iterrows():
        labels.append(f"{r.arm}\n{r.variant}")
        y.append(r.fd_ratio_mean)
        lo.append(r.fd_ratio_mean - r.fd_ratio_ci_low)
        hi.append(r.fd_ratio_ci_high - r.fd_ratio_mean)
    pos = np.arange(len(labels))
    bx.errorbar(pos, y, yerr=[lo, hi], fmt="o", capsize=3)
    bx.axhline(1, color="grey", lw=0.8)
    bx.set_xticks(pos, labels, fontsize=8)
    bx.set_ylabel("FD ratio method / vanilla (95% paired CI)")
    bx.set_title("every arm: below 1 is better than vanilla")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_savefig(fig, path, dpi=120)
    return fig


def write_metrics(exp: AblationExperiment, paired: pd.DataFrame) -> dict:
    """results/metrics/ablation.json: each arm and variant at the last step."""
    last = paired[paired.step == paired.step.max()]
    metrics = {f"{r.arm}-{r.variant}": {
        "fd_diff": round(r.fd_diff_mean, 4), "fd_diff_ci": [round(r.fd_diff_ci_low, 4), round(r.fd_diff_ci_high, 4)],
        "fd_ratio": round(r.fd_ratio_mean, 4), "n_better": int(r.fd_n_better), "n_pairs": int(r.n_pairs),
        "distance_change_pct": round(r.distance_change_pct, 3)} for _, r in last.iterrows()}
    path = Path(exp.output_dir) / "metrics" / f"{GROUP}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_all(exp: AblationExperiment) -> dict[str, pd.DataFrame]:
    """Every table, the figure and the metrics from the trained (and reused) runs: what the DVC stage runs."""
    check_reused(exp)
    coupling = coupling_table(exp)
    fid = evaluate_runs(exp)
    paired = paired_frame(fid, coupling)
    contrasts = contrast_frame(fid)
    noise = sampling_noise_runs(exp)
    for name, table in (("fid", fid), ("training", coupling), ("paired", paired), ("contrasts", contrasts),
                        ("sampling_noise", noise)):
        E.write_csv(table, exp.table(name))
    plot_ablation(paired, Path(exp.output_dir) / "figures" / f"{GROUP}.png")
    write_metrics(exp, paired)
    return {"fid": fid, "training": coupling, "paired": paired, "contrasts": contrasts, "sampling_noise": noise}


def summary(paired: pd.DataFrame) -> pd.DataFrame:
    """The last step's rows in a few columns (the log of the stage, the notebook's first table)."""
    last = paired[paired.step == paired.step.max()]
    cols = ["arm", "variant", "distance_change_pct", "fd_vanilla", "fd_diff_mean", "fd_diff_ci_low",
            "fd_diff_ci_high", "fd_n_better", "n_pairs", "fd_ratio_mean", "fd_ratio_ci_low", "fd_ratio_ci_high"]
    return last[cols].reset_index(drop=True)


def sampling_floors(noise: pd.DataFrame) -> pd.DataFrame:
    """Per arm and variant, from the sampling-noise rows: the mean and sd of FD over the sample seeds and the paired
    sampling sd of variant - vanilla (the floor the report adds to the row's interval)."""
    rows = []
    for (arm, variant), g in noise.groupby(["arm", "variant"], sort=False):
        sd = np.nan if variant == "vanilla" else paired_sampling_sd(
            noise[noise.arm == arm].assign(method=lambda d: d.variant), variant, "vanilla")
        rows.append({"arm": arm, "variant": variant, "sample_seeds": g.sample_seed.nunique(), "fd_mean": g.fd.mean(),
                     "fd_sd": g.fd.std(ddof=1), "paired_sd_vs_vanilla": sd})
    return pd.DataFrame(rows, columns=["arm", "variant", "sample_seeds", "fd_mean", "fd_sd", "paired_sd_vs_vanilla"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="The ablation's proxy classifiers and evaluation (training: "
                                            "immiscible.experiments.ablation_train).")
    p.add_argument("command", choices=("classifier", "evaluate"))
    p.add_argument("--profile", default=None, help=f"default: params.yaml {GROUP}.profile")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--checkpoint-dir", default="checkpoints/ablation")
    p.add_argument("--classifier-dir", default="checkpoints/classifier")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--reuse-root", default="checkpoints", help="where the reused runs' experiments keep their runs")
    a = p.parse_args(argv)
    profile = group_profile(a.params, GROUP, a.profile)
    exp = setup(profile, a.params, data_dir=a.data_dir, checkpoint_dir=a.checkpoint_dir, output_dir=a.output_dir,
                classifier_root=a.classifier_dir, reuse_root=a.reuse_root)
    if a.command == "classifier":
        print(json.dumps(train_classifiers(exp), indent=2))
    else:
        tables = evaluate_all(exp)
        with pd.option_context("display.width", 200):
            print(summary(tables["paired"]).round(4).to_string())
            print(tables["contrasts"].round(4).to_string())
    end_distributed()


if __name__ == "__main__":
    main()
