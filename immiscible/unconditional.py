"""Unconditional experiment (Immiscible Diffusion, Li et al. 2024, Sec. 4 / Fig. 1 and the "last step" figure):
vanilla vs immiscible DDPM/DDIM training on CIFAR-10, FD-vs-steps curves over seeds, steps-to-target efficiency.

Profiles (defaults here; params.yaml's ``unconditional.profiles.<name>`` overrides them key by key):

``smoke``  seconds: tiny UNet at 8x8, a few steps, a few dozen samples (tests, notebook smoke run).
``cpu``    about 50-60 min on 2 CPU cores for everything (proxy classifier + 2 methods x 3 seeds + evaluation).
           Measured costs on 2 cores: the 1.05M-parameter ``small`` UNet at 16x16 costs ~0.15 s per batch-64
           step (32x32 would be ~4x more), so 2000 steps x 6 runs ~ 30 min; exact assignment at batch 64 costs
           ~1 ms. CIFAR-10 is average-pooled to 16x16 so that the model can learn recognisable structure within
           that budget. Evaluation: 5 EMA snapshots per run (every 400 steps) x 1000 DDIM-25 samples
           (~20 s each) ~ 10 min; FD over 128-d proxy features (1000 samples >> 128 dims keeps the covariance
           well conditioned) against 10k training images; the proxy classifier costs ~2 min. lr 5e-4 with 100 warmup
           steps and EMA 0.998 suit a 2000-step run (the paper's 2e-4/5000/0.9999 would barely move).
``paper``  the paper's DDIM CIFAR-10 setting (ddpm-torch): 35.7M UNet, batch 128, lr 2e-4, warmup 5000,
           EMA 0.9999, linear betas 1e-4..0.02 over 1000 steps, eps-prediction, bf16 on GPU, Inception FID.

The noise assignment runs on the training batch (64 in ``cpu``, 128 in ``paper``); results are only comparable at
the same assignment batch size, which every run logs.
"""
from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from immiscible.assignment import assign_noise
from immiscible.config import choices, from_dict, load_yaml_group
from immiscible.io import atomic_save_npy, atomic_savefig, atomic_write_text
from immiscible.metrics import (EXTRACTORS, ClassifierConfig, classifier_dir, efficiency, feature_stats,
                                frechet_distance, get_extractor, inception_weights, kernel_distance,
                                train_classifier)
from immiscible.objectives import OBJECTIVES, predict_x0
from immiscible.train import (METHODS, TrainConfig, check_config, end_distributed, list_snapshots, load_images,
                              load_run_model, to_model_input, train)

PROFILES: dict[str, dict] = {
    "smoke": {
        "methods": ["vanilla", "exact"], "seeds": [0, 1],
        "train": dict(model="tiny", resolution=8, batch_size=16, steps=6, lr=1e-3, warmup_steps=0, ema_decay=0.9,
                      checkpoint_every=3, snapshot_every=3, log_every=1, progress=False),
        "eval": dict(num_samples=48, num_ref=64, sample_steps=2, sample_batch_size=48, kid_subsets=5,
                     kid_subset_size=16, grid_size=16, last_step_images=8, n_boot=100, progress=False),
        "classifier": dict(epochs=1, batch_size=32, width=8, feature_dim=16, progress=False),
    },
    "cpu": {
        "methods": ["vanilla", "exact"], "seeds": [0, 1, 2],
        "train": dict(model="small", resolution=16, batch_size=64, steps=2000, lr=5e-4, warmup_steps=100,
                      ema_decay=0.998, checkpoint_every=400, snapshot_every=400, log_every=20),
        "eval": dict(num_samples=1000, num_ref=10000, sample_steps=25, sample_batch_size=250, kid_subsets=50,
                     kid_subset_size=1000, grid_size=64, last_step_images=64),
        "classifier": dict(epochs=3, batch_size=128, lr=2e-3),
    },
    "paper": {
        "methods": ["vanilla", "exact"], "seeds": [0, 1, 2],
        "train": dict(model="ddpm_cifar10", resolution=32, batch_size=128, steps=800000, lr=2e-4,
                      warmup_steps=5000, ema_decay=0.9999, grad_clip=1.0, mixed_precision="bf16",
                      checkpoint_every=5000, snapshot_every=50000, log_every=100),
        "eval": dict(extractor="inception", num_samples=10000, num_ref=0, sample_steps=100, sample_batch_size=500,
                     kid_subsets=100, kid_subset_size=1000, grid_size=64, last_step_images=64),
        "classifier": dict(resolution=32, epochs=30, batch_size=256),
    },
}


@dataclass(frozen=True)
class EvalConfig:
    extractor: str = field(default="auto", metadata=choices(*EXTRACTORS))
    inception_weights: str | None = None   # a weights file; default clean-fid's /tmp/inception-2015-12-05.pt
    num_samples: int = 1000                # generated images per evaluated checkpoint (EMA weights)
    num_ref: int = 10000                   # training images for the reference statistics (0: all)
    sample_steps: int = 25                 # DDIM (or Euler for flow) steps
    sample_batch_size: int = 250
    kid_subsets: int = 50
    kid_subset_size: int = 1000
    grid_size: int = 64
    last_step_images: int = 64
    target_fd: float | None = None         # None: the worse of the two methods' final mean FD
    n_boot: int = 2000
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
    output_dir: str                        # tables/ and figures/

    def run_dir(self, method: str, seed: int) -> Path:
        return Path(self.checkpoint_dir) / self.profile / f"{method}-{seed}"

    def run_config(self, method: str, seed: int) -> TrainConfig:
        return replace(self.train, method=method, seed=seed, output_dir=str(self.run_dir(method, seed)))

    @property
    def eval_dir(self) -> Path:
        return Path(self.checkpoint_dir) / f"{self.profile}-eval"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_profile(name: str, params: str | Path | None = "params.yaml") -> dict:
    """Profile ``name``: built-in defaults overridden by params.yaml's ``unconditional.profiles.<name>``,
    ``unconditional.methods`` / ``seeds`` and ``unconditional.feature_extractor``."""
    group = load_yaml_group(params, "unconditional") if params else {}
    profiles = _merge(PROFILES, group.get("profiles", {}))
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; choose one of {tuple(profiles)}")
    profile = copy.deepcopy(profiles[name])
    unknown = set(profile) - {"methods", "seeds", "train", "eval", "classifier"}
    if unknown:
        raise ValueError(f"profile {name!r}: unknown key(s) {sorted(unknown)}; allowed: methods, seeds, train, "
                         "eval, classifier")
    for key in ("methods", "seeds"):  # group-level lists (the DVC matrix) apply to whichever profile runs
        if key in group:
            profile[key] = group[key]
    # classifier: built-in profile defaults < params feature_extractor < params profiles.<name>.classifier
    own = group.get("profiles", {}).get(name, {}).get("classifier", {})
    profile["classifier"] = _merge(_merge(PROFILES.get(name, {}).get("classifier", {}),
                                          group.get("feature_extractor", {})), own)
    for key in ("extractor", "inception_weights"):  # feature_extractor may also choose the extractor
        if key in profile["classifier"]:
            profile["eval"].setdefault(key, profile["classifier"].pop(key))
    return profile


def setup(profile: str = "smoke", dataset: str = "cifar10", data_dir: str = "data", methods=None, seeds=None,
          objective: str | None = None, steps: int | None = None, batch_size: int | None = None,
          params: str | None = "params.yaml", checkpoint_dir: str = "checkpoints/unconditional",
          output_dir: str = "results", classifier_root: str = "checkpoints/classifier",
          train_overrides: dict | None = None, eval_overrides: dict | None = None) -> Experiment:
    """Resolve and validate the whole experiment (profile + notebook parameters) before any compute."""
    p = load_profile(profile, params)
    methods = tuple(methods or p["methods"])
    seeds = tuple(int(s) for s in (seeds if seeds is not None else p["seeds"]))
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {METHODS}")
    if "vanilla" not in methods or len(methods) < 2:
        raise ValueError(f"methods={list(methods)} must include 'vanilla' (the baseline) and at least one other")
    if objective is not None and objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if not seeds:
        raise ValueError("seeds must hold at least one seed (3 or more for confidence bands)")
    train_values = _merge(p["train"], train_overrides or {})
    train_values.update(dataset=dataset, data_dir=data_dir)
    for key, value in (("objective", objective), ("steps", steps), ("batch_size", batch_size)):
        if value is not None:
            train_values[key] = value
    train_cfg = check_config(from_dict(TrainConfig, train_values))
    eval_cfg = from_dict(EvalConfig, _merge(p["eval"], eval_overrides or {}))
    clf = from_dict(ClassifierConfig, {**p["classifier"], "dataset": dataset, "data_dir": data_dir,
                                       "resolution": train_cfg.resolution, "out_dir": classifier_root})
    return Experiment(profile, methods, seeds, train_cfg, eval_cfg, clf, str(checkpoint_dir), str(output_dir))


# ----------------------------------------------------------------------------- training

def train_all(exp: Experiment, on_change: str = "error") -> pd.DataFrame:
    """Train (or resume, or reuse) every (method, seed) run; one summary row per run."""
    rows = []
    for method in exp.methods:
        for seed in exp.seeds:
            cfg = exp.run_config(method, seed)
            summary = train(cfg, on_change=on_change)
            log = _read_log(Path(cfg.output_dir))
            rows.append({"method": method, "seed": seed, "steps": cfg.steps, "resumed_from": summary["start_step"],
                         "final_loss": log["loss"].iloc[-1] if len(log) else np.nan,
                         "dist_before": log["dist_before"].mean(), "dist_after": log["dist_after"].mean(),
                         "assign_ms": log["assign_ms"].mean(), "assign_batch": int(log["assign_batch"].iloc[-1]),
                         "train_s": log["elapsed_s"].iloc[-1] if len(log) else np.nan})
    return pd.DataFrame(rows)


def _read_log(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "log.jsonl"
    return pd.read_json(path, lines=True) if path.exists() and path.stat().st_size else pd.DataFrame(
        columns=["loss", "dist_before", "dist_after", "assign_ms", "assign_batch", "elapsed_s"])


# ----------------------------------------------------------------------------- evaluation

def extractor_for(exp: Experiment):
    """The feature extractor of the experiment; trains and caches the proxy classifier when needed."""
    weights = inception_weights(exp.eval.inception_weights) if exp.eval.extractor != "proxy" else None
    folder = classifier_dir(exp.classifier.out_dir, exp.classifier.dataset, exp.classifier.resolution)
    if weights is None and not (folder / "classifier.safetensors").is_file():
        train_classifier(exp.classifier)
    return get_extractor(exp.eval.extractor, folder, exp.eval.inception_weights)


def _extractor_key(extractor) -> str:
    if extractor.name == "inception":
        return "inception"
    import hashlib
    digest = hashlib.sha256(Path(extractor.info["path"], "classifier.safetensors").read_bytes()).hexdigest()
    return f"proxy-{digest[:10]}"


def reference_features(exp: Experiment, extractor) -> np.ndarray:
    """Features of ``num_ref`` training images (a fixed random subset), cached per extractor."""
    key = _extractor_key(extractor)
    path = exp.eval_dir / f"ref-{Path(exp.train.dataset).name}-{exp.train.resolution}px-{key}-n{exp.eval.num_ref}.npy"
    if path.exists():
        return np.load(path)
    images = load_images(exp.train.dataset, "train", exp.train.data_dir, exp.train.resolution)
    if exp.eval.num_ref and exp.eval.num_ref < len(images):
        images = images[np.random.default_rng(0).permutation(len(images))[:exp.eval.num_ref]]
    feats = extractor(images.permute(0, 2, 3, 1).numpy(), progress=exp.eval.progress)
    atomic_save_npy(path, feats)
    return feats


def evaluate(exp: Experiment) -> pd.DataFrame:
    """FD and KID of every EMA snapshot of every run (cached per snapshot); writes tables/unconditional_fid.csv."""
    from immiscible.sampling import sample_images

    extractor = extractor_for(exp)
    key = _extractor_key(extractor)
    ref = reference_features(exp, extractor)
    ref_stats = feature_stats(ref)
    todo = []
    for method in exp.methods:
        for seed in exp.seeds:
            run_dir = exp.run_dir(method, seed)
            snaps = {s: p for s, p in list_snapshots(run_dir).items() if s <= exp.train.steps}
            if not snaps:
                raise FileNotFoundError(f"no EMA snapshots in {run_dir}: run train_all (or the DVC train stages)")
            todo += [(method, seed, step, path) for step, path in snaps.items()]
    rows = []
    e = exp.eval
    tag = f"{key}-n{e.num_samples}-s{e.sample_steps}-ref{e.num_ref}"
    for method, seed, step, path in tqdm(todo, desc="evaluate", unit="ckpt", disable=not e.progress):
        cache = exp.eval_dir / f"{method}-{seed}" / f"{tag}-step{step:07d}.json"
        if cache.exists():
            rows.append(json.loads(cache.read_text()))
            continue
        model, cfg = load_run_model(exp.run_dir(method, seed), step)
        images = sample_images(model, cfg, e.num_samples, e.sample_steps, e.sample_batch_size, seed=10_000 + seed,
                               progress=e.progress)
        feats = extractor(images)
        row = {"method": method, "seed": seed, "step": step, "extractor": extractor.name,
               "metric": extractor.label, "num_samples": e.num_samples, "num_ref": len(ref),
               "sample_steps": e.sample_steps, "fd": frechet_distance(feats, ref_stats),
               "kid": kernel_distance(feats, ref, e.kid_subsets, e.kid_subset_size, seed=step),
               "checkpoint": str(path), "classifier_accuracy": extractor.info.get("test_accuracy"),
               "assign_batch": cfg.batch_size, "objective": cfg.objective, "model": cfg.model,
               "resolution": cfg.resolution}
        if step == max(list_snapshots(exp.run_dir(method, seed))):
            atomic_save_npy(cache.with_suffix(".samples.npy"), images[:e.grid_size])
        atomic_write_text(cache, json.dumps(row, indent=1) + "\n")  # last: its presence marks the step as done
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["method", "seed", "step"]).reset_index(drop=True)
    _write_csv(table, Path(exp.output_dir) / "tables" / "unconditional_fid.csv")
    return table


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` atomically unless the file already holds exactly this content (keeps DVC hashes stable)."""
    text = df.to_csv(index=False)
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def efficiency_table(exp: Experiment, fid: pd.DataFrame) -> pd.DataFrame:
    """Steps to reach the target FD for vanilla and each other method, ratio vanilla/method with bootstrap CI."""
    rows = []
    base = fid[fid.method == "vanilla"].pivot(index="step", columns="seed", values="fd")
    for method in exp.methods:
        if method == "vanilla":
            continue
        other = fid[fid.method == method].pivot(index="step", columns="seed", values="fd")
        steps = base.index.intersection(other.index)
        out = efficiency(steps.values, [base.loc[steps, s].values for s in base.columns],
                         [other.loc[steps, s].values for s in other.columns], exp.eval.target_fd,
                         exp.eval.n_boot)
        rows.append({"method": method, "baseline": "vanilla", "extractor": fid.extractor.iloc[0],
                     "metric": fid.metric.iloc[0], "target_fd": out["target_fd"], "steps_vanilla": out["steps_a"],
                     "steps_method": out["steps_b"], "ratio": out["ratio"], "ratio_ci_low": out["ratio_ci_low"],
                     "ratio_ci_high": out["ratio_ci_high"], "ci": out["ci"], "boot_reached": out["boot_reached"],
                     "n_seeds_vanilla": out["n_seeds_a"], "n_seeds_method": out["n_seeds_b"],
                     "final_fd_vanilla": float(base.loc[steps].iloc[-1].mean()),
                     "final_fd_method": float(other.loc[steps].iloc[-1].mean()),
                     "num_samples": int(fid.num_samples.iloc[0])})
    table = pd.DataFrame(rows)
    _write_csv(table, Path(exp.output_dir) / "tables" / "unconditional_efficiency.csv")
    return table


# ----------------------------------------------------------------------------- figures

def _figure_path(exp: Experiment, name: str) -> Path:
    path = Path(exp.output_dir) / "figures" / f"unconditional_{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def plot_curves(exp: Experiment, fid: pd.DataFrame, value: str = "fd"):
    """FD (or KID) vs training steps: per-seed lines, seed mean and a 95% t-interval band."""
    import matplotlib.pyplot as plt
    from scipy import stats
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(exp.methods):
        pivot = fid[fid.method == method].pivot(index="step", columns="seed", values=value)
        color = f"C{i}"
        for s in pivot.columns:
            ax.plot(pivot.index, pivot[s], color=color, alpha=0.25, lw=0.8)
        mean, n = pivot.mean(1), pivot.shape[1]
        ax.plot(pivot.index, mean, color=color, lw=2, label=f"{method} (n={n} seeds)")
        if n > 1:
            half = stats.t.ppf(0.975, n - 1) * pivot.std(1, ddof=1) / np.sqrt(n)
            ax.fill_between(pivot.index, mean - half, mean + half, color=color, alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel(fid.metric.iloc[0] if value == "fd" else "KID")
    ax.set_title(f"{exp.profile}: {value.upper()} vs steps ({int(fid.num_samples.iloc[0])} samples, EMA)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, _figure_path(exp, f"{value}_curves"), dpi=120)
    return fig


def sample_grids(exp: Experiment, seed: int | None = None):
    """Grids of EMA samples of the final checkpoint of each method (one seed), saved as PNG and shown."""
    import matplotlib.pyplot as plt
    from immiscible.sampling import make_grid, sample_images, save_grid
    seed = exp.seeds[0] if seed is None else seed
    fig, axes = plt.subplots(1, len(exp.methods), figsize=(4 * len(exp.methods), 4))
    for ax, method in zip(np.atleast_1d(axes), exp.methods):
        model, cfg = load_run_model(exp.run_dir(method, seed))
        images = sample_images(model, cfg, exp.eval.grid_size, exp.eval.sample_steps, exp.eval.sample_batch_size,
                               seed=10_000 + seed, progress=False)
        save_grid(images, _figure_path(exp, f"samples_{method}"), scale=2)
        grid = make_grid(images)
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray")
        ax.set_title(f"{method}, seed {seed}, step {cfg.steps}")
        ax.axis("off")
    fig.tight_layout()
    atomic_savefig(fig, _figure_path(exp, "samples"), dpi=120)
    return fig


@torch.no_grad()
def last_step(exp: Experiment, num_show: int = 8, fractions=(1.0, 0.9, 0.8, 0.6)):
    """x0-predictions of each model for held-out images noised with assigned noise at the last timestep (and, since
    an eps-model's x0-prediction at t=T divides its error by sqrt(alpha_bar_T) ~ 0.006, at a few earlier times
    ``fractions`` of T); returns (figure, table of the mean L2 distance prediction-to-truth per method, seed, noise
    kind and timestep)."""
    import matplotlib.pyplot as plt
    from diffusers import DDPMScheduler
    from immiscible.data import to_uint8
    from immiscible.objectives import model_time, training_pair
    try:
        held_out = load_images(exp.train.dataset, "test", exp.train.data_dir, exp.train.resolution)
    except (FileNotFoundError, ValueError):
        held_out = load_images(exp.train.dataset, "train", exp.train.data_dir, exp.train.resolution)[-256:]
    x0 = to_model_input(held_out[:exp.eval.last_step_images])
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn(x0.shape, generator=g)
    noises = {"assigned": assign_noise(x0, noise), "random": noise}
    cfg0 = exp.train
    scheduler = DDPMScheduler(num_train_timesteps=cfg0.num_train_timesteps, beta_start=cfg0.beta_start,
                              beta_end=cfg0.beta_end, beta_schedule=cfg0.beta_schedule)
    alphas_cumprod = scheduler.alphas_cumprod
    T = cfg0.num_train_timesteps
    flow = cfg0.objective == "flow"
    times = [torch.full((len(x0),), f) if flow else torch.full((len(x0),), round(f * (T - 1)), dtype=torch.long)
             for f in fractions]
    mean_image = to_model_input(load_images(exp.train.dataset, "train", exp.train.data_dir, cfg0.resolution)[:5000]).mean(0)
    rows = [{"method": "dataset mean image", "seed": -1, "noise": "-", "t": -1,
             "mean_l2": float((x0 - mean_image).flatten(1).norm(dim=1).mean())}]
    shown = {}
    for method in exp.methods:
        for seed in exp.seeds:
            model, cfg = load_run_model(exp.run_dir(method, seed))
            for t in times:
                for kind, n in noises.items():
                    x_t = training_pair(cfg.objective, x0, n, t, alphas_cumprod)[0]
                    out = model(x_t, model_time(cfg.objective, t, cfg.num_train_timesteps)).sample
                    pred = predict_x0(cfg.objective, out, x_t, t, alphas_cumprod).clamp(-1, 1)
                    rows.append({"method": method, "seed": seed, "noise": kind, "t": float(t[0]),
                                 "mean_l2": float((pred - x0).flatten(1).norm(dim=1).mean())})
                    if seed == exp.seeds[0] and kind == "assigned":
                        shown[(float(t[0]), method)] = pred[:num_show]
    table = pd.DataFrame(rows)
    _write_csv(table, Path(exp.output_dir) / "tables" / "unconditional_last_step.csv")
    panels = [("truth x0 (held-out)", x0[:num_show])]
    panels += [(f"{m} x0-prediction at t={t:g} (assigned noise)", p) for (t, m), p in shown.items()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(num_show * 0.9, 1.1 * len(panels)))
    for ax, (title, x) in zip(np.atleast_1d(axes), panels):
        grid = make_row(to_uint8(x))
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    atomic_savefig(fig, _figure_path(exp, "last_step"), dpi=150)
    return fig, table


def make_row(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) side by side."""
    from immiscible.sampling import make_grid
    return make_grid(images, nrow=len(images))


def summarize_last_step(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the prediction-to-truth distance, per timestep, noise kind and method."""
    return (table.groupby(["t", "noise", "method"]).mean_l2.agg(["mean", "std", "count"]).reset_index()
            .sort_values(["t", "noise", "method"], ascending=[False, True, True]))


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Unconditional experiment stages: proxy classifier, training, evaluation.")
    p.add_argument("command", choices=["classifier", "train", "evaluate"],
                   help="classifier: train/cache the proxy feature extractor; train: every (method, seed) run; "
                        "evaluate: FD/KID tables (and the efficiency table)")
    p.add_argument("--profile", default=None, help="default: params.yaml unconditional.profile, else cpu")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--checkpoint-dir", default="checkpoints/unconditional")
    p.add_argument("--classifier-dir", default="checkpoints/classifier")
    p.add_argument("--output-dir", default="results")
    a = p.parse_args(argv)
    group = load_yaml_group(a.params, "unconditional")
    exp = setup(a.profile or group.get("profile", "cpu"), a.dataset or group.get("dataset", "cifar10"), a.data_dir,
                a.methods or group.get("methods"), a.seeds or group.get("seeds"), params=a.params,
                checkpoint_dir=a.checkpoint_dir, output_dir=a.output_dir, classifier_root=a.classifier_dir)
    if a.command == "classifier":
        print(json.dumps(train_classifier(exp.classifier), indent=2))
    elif a.command == "train":
        print(train_all(exp, on_change="restart").to_string())
    else:
        fid = evaluate(exp)
        print(fid.to_string())
        print(efficiency_table(exp, fid).T.to_string())
    end_distributed()


if __name__ == "__main__":
    main()
