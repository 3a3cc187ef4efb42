"""Sample quality and training efficiency: FD/KID on clean-fid, feature extractors, steps-to-target.

Feature extractors
------------------
``inception``  clean-fid's Inception-V3 ("clean" mode: PIL bicubic resize to 299x299) when its weights file exists:
               ``/tmp/inception-2015-12-05.pt`` (where clean-fid keeps it) or a file the user passes. Then FD is FID.
``proxy``      without those weights (offline machines): the 128-d penultimate features of a small CIFAR-10 classifier
               that ``python -m immiscible.metrics train-classifier`` trains and caches, with its test accuracy.
               The Frechet distance in this space is reported as "FD (proxy ...)", never as FID.
Both FD (``cleanfid.fid.frechet_distance``) and KID (``cleanfid.fid.kernel_distance``, seeded) use the same features.

Efficiency (the paper's "x times faster training"): for each method, the training step at which its seed-mean
FD curve first reaches a target FD (linear interpolation between evaluated steps); the ratio
steps(vanilla) / steps(immiscible) with a bootstrap confidence interval over seeds.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from immiscible.config import from_dict, load_yaml_group
from immiscible.io import atomic_write, atomic_write_text

INCEPTION_DEFAULT = Path("/tmp") / "inception-2015-12-05.pt"  # clean-fid's fixed location
EXTRACTORS = ("auto", "inception", "proxy")


# ----------------------------------------------------------------------------- proxy classifier

class ProxyClassifier(nn.Module):
    """A small all-convolutional CIFAR-10 classifier; ``features`` is its 128-d pooled penultimate layer."""

    def __init__(self, channels: int = 3, width: int = 32, feature_dim: int = 128, num_classes: int = 10):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.body = nn.Sequential(block(channels, width, 1), block(width, 2 * width, 2),
                                  block(2 * width, 2 * width, 1), block(2 * width, feature_dim, 2),
                                  block(feature_dim, feature_dim, 1))
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, feature_dim)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class ClassifierConfig:
    dataset: str = "cifar10"
    data_dir: str = "data"
    resolution: int = 16          # must equal the diffusion runs' resolution
    num_images: int = 0           # 0: whole train split
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    feature_dim: int = 128
    seed: int = 0
    out_dir: str = "checkpoints/classifier"
    progress: bool = True


def _uint8_to_input(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(127.5).sub(1.0)


def classifier_dir(root: str | Path, dataset: str, resolution: int) -> Path:
    """Where the proxy classifier for (dataset, resolution) is cached."""
    return Path(root) / f"{Path(dataset).name}-{resolution}px"


def train_classifier(cfg: ClassifierConfig, train_images: torch.Tensor | None = None, train_labels=None,
                     test_images: torch.Tensor | None = None, test_labels=None) -> dict:
    """Train the proxy classifier (random flips, AdamW, cosine LR) and cache it; returns info incl. test accuracy.
    Images are uint8 (N, C, H, W); when not given they are loaded from cfg.dataset at cfg.resolution."""
    from immiscible.data import load_dataset
    from immiscible.train import downsample

    start = time.perf_counter()
    if train_images is None:
        train_ds = load_dataset(cfg.dataset, "train", cfg.data_dir)
        n = cfg.num_images or len(train_ds)
        train_images, train_labels = downsample(train_ds.images[:n], cfg.resolution), train_ds.labels[:n]
        try:
            test_ds = load_dataset(cfg.dataset, "test", cfg.data_dir)
            test_images, test_labels = downsample(test_ds.images, cfg.resolution), test_ds.labels
        except (FileNotFoundError, ValueError):
            test_images = None
    train_labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    if test_images is None:  # no test split: hold out the last 10% of train
        cut = int(len(train_images) * 0.9)
        test_images, test_labels = train_images[cut:], train_labels[cut:]
        train_images, train_labels = train_images[:cut], train_labels[:cut]
    test_labels = torch.as_tensor(np.asarray(test_labels), dtype=torch.long)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1

    torch.manual_seed(cfg.seed)
    model = ProxyClassifier(train_images.shape[1], cfg.width, cfg.feature_dim, num_classes)
    steps_per_epoch = max(1, len(train_images) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=total, desc="proxy classifier", unit="step", disable=not cfg.progress, mininterval=1.0)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train_images), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = _uint8_to_input(train_images[idx])
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(_uint8_to_input(test_images[i:i + 1000])).argmax(1)
                          for i in range(0, len(test_images), 1000)])
    accuracy = float((pred == test_labels).float().mean())
    out = classifier_dir(cfg.out_dir, cfg.dataset, cfg.resolution)
    out.mkdir(parents=True, exist_ok=True)
    info = {"extractor": "proxy", "dataset": cfg.dataset, "resolution": cfg.resolution,
            "channels": int(train_images.shape[1]), "num_classes": num_classes, "width": cfg.width,
            "feature_dim": cfg.feature_dim, "epochs": cfg.epochs, "train_images": len(train_images),
            "test_images": len(test_images), "test_accuracy": accuracy, "seconds": time.perf_counter() - start}
    atomic_write(out / "classifier.safetensors", lambda tmp: save_file(model.state_dict(), tmp))
    atomic_write_text(out / "info.json", json.dumps(info, indent=2) + "\n")
    return info


# ----------------------------------------------------------------------------- feature extractors

@dataclass
class FeatureExtractor:
    name: str                                   # "inception" or "proxy"
    label: str                                  # how results name the metric, e.g. "FID" or "FD (proxy ...)"
    fn: Callable[[np.ndarray], np.ndarray]      # uint8 (N, H, W, C) -> float (N, D)
    info: dict = field(default_factory=dict)

    def __call__(self, images: np.ndarray, batch_size: int = 500, progress: bool = False) -> np.ndarray:
        """Features of uint8 (N, H, W, C) images, float64 (N, D)."""
        chunks = [self.fn(images[i:i + batch_size])
                  for i in tqdm(range(0, len(images), batch_size), desc=f"features ({self.name})",
                                disable=not progress, leave=False)]
        return np.concatenate(chunks).astype(np.float64)


def load_proxy_extractor(folder: str | Path) -> FeatureExtractor:
    """The cached proxy classifier of ``folder`` as a feature extractor."""
    folder = Path(folder)
    if not (folder / "classifier.safetensors").is_file():
        raise FileNotFoundError(f"no proxy classifier in {folder}: run `python -m immiscible.metrics "
                                "train-classifier` (the DVC `classifier` stage) first")
    info = json.loads((folder / "info.json").read_text())
    model = ProxyClassifier(info["channels"], info["width"], info["feature_dim"], info["num_classes"])
    model.load_state_dict(load_file(folder / "classifier.safetensors"))
    model.eval()

    @torch.no_grad()
    def fn(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if x.shape[-1] != info["resolution"]:
            raise ValueError(f"the proxy classifier in {folder} works at {info['resolution']}px, got images of "
                             f"{x.shape[-1]}px: train a classifier at this resolution")
        return model.features(_uint8_to_input(x)).numpy()

    label = f"FD (proxy: {Path(info['dataset']).name} classifier features, {info['resolution']}px, acc {info['test_accuracy']:.3f})"
    return FeatureExtractor("proxy", label, fn, {**info, "path": str(folder)})


def load_inception_extractor(weights: str | Path) -> FeatureExtractor:
    """clean-fid's Inception-V3 (TorchScript weights file) in "clean" mode: 2048-d pool features."""
    from cleanfid.resize import make_resizer
    base = torch.jit.load(str(weights), map_location="cpu").eval()
    resize = make_resizer("PIL", False, "bicubic", (299, 299))

    @torch.no_grad()
    def fn(images: np.ndarray) -> np.ndarray:
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, -1)
        x = torch.from_numpy(np.stack([resize(img) for img in images])).permute(0, 3, 1, 2).float()
        return base.layers.forward((x - 128) / 128).reshape(len(images), 2048).numpy()

    return FeatureExtractor("inception", "FID", fn, {"weights": str(weights)})


def inception_weights(path: str | None = None) -> Path | None:
    """The Inception weights file to use: ``path`` if given (must exist), else clean-fid's default if present."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"inception weights {path} not found; give the path of "
                                    "inception-2015-12-05.pt or leave it empty to use the proxy")
        return Path(path)
    return INCEPTION_DEFAULT if INCEPTION_DEFAULT.is_file() else None


def get_extractor(kind: str = "auto", classifier: str | Path | None = None,
                  inception_path: str | None = None) -> FeatureExtractor:
    """Inception when its weights exist (``auto``/``inception``), else the cached proxy classifier."""
    if kind not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {kind!r}; choose one of {EXTRACTORS}")
    weights = inception_weights(inception_path) if kind != "proxy" else None
    if weights is not None:
        return load_inception_extractor(weights)
    if kind == "inception":
        raise FileNotFoundError(f"Inception weights not found at {INCEPTION_DEFAULT}: download "
                                "inception-2015-12-05.pt there, pass its path, or use extractor 'proxy'")
    if classifier is None:
        raise ValueError("no Inception weights and no proxy classifier folder given")
    return load_proxy_extractor(classifier)


# ----------------------------------------------------------------------------- distances

def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of (N, D) features."""
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(features: np.ndarray, ref_stats: tuple[np.ndarray, np.ndarray]) -> float:
    """Frechet distance between the Gaussian fit of ``features`` and reference (mu, sigma), via clean-fid."""
    from cleanfid import fid
    mu, sigma = feature_stats(features)
    return float(fid.frechet_distance(mu, sigma, *ref_stats))


def kernel_distance(features: np.ndarray, ref_features: np.ndarray, num_subsets: int = 100,
                    max_subset_size: int = 1000, seed: int = 0) -> float:
    """KID (clean-fid) with numpy's global RNG seeded for reproducibility and restored afterwards."""
    from cleanfid import fid
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(fid.kernel_distance(features, ref_features, num_subsets, max_subset_size))
    finally:
        np.random.set_state(state)


# ----------------------------------------------------------------------------- efficiency

def steps_to_target(steps, fd, target: float) -> float:
    """First training step at which the FD curve reaches ``target`` (linear interpolation); NaN if never."""
    steps, fd = np.asarray(steps, dtype=float), np.asarray(fd, dtype=float)
    order = np.argsort(steps)
    steps, fd = steps[order], fd[order]
    if len(fd) == 0:
        return float("nan")
    if fd[0] <= target:
        return float(steps[0])
    for i in range(1, len(fd)):
        if fd[i] <= target:
            frac = (fd[i - 1] - target) / (fd[i - 1] - fd[i])
            return float(steps[i - 1] + frac * (steps[i] - steps[i - 1]))
    return float("nan")


def _mean_curve(curves: list[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(curves), axis=0)


def efficiency(steps, curves_a: list, curves_b: list, target: float | None = None, n_boot: int = 2000,
               seed: int = 0, ci: float = 0.95) -> dict:
    """steps-to-target of the seed-mean curves of methods a (baseline) and b, their ratio a/b and a bootstrap CI
    over seeds. ``curves_*``: one FD array per seed on the common ``steps``. Default target: the worse of the two
    final mean FDs, so both mean curves reach it."""
    steps = np.asarray(steps, dtype=float)
    a, b = [np.asarray(c, float) for c in curves_a], [np.asarray(c, float) for c in curves_b]
    mean_a, mean_b = _mean_curve(a), _mean_curve(b)
    if target is None:
        target = float(max(mean_a[-1], mean_b[-1]))
    s_a, s_b = steps_to_target(steps, mean_a, target), steps_to_target(steps, mean_b, target)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n_boot):
        ra = _mean_curve([a[i] for i in rng.integers(0, len(a), len(a))])
        rb = _mean_curve([b[i] for i in rng.integers(0, len(b), len(b))])
        ratios.append(steps_to_target(steps, ra, target) / steps_to_target(steps, rb, target))
    ratios = np.asarray(ratios)
    finite = ratios[np.isfinite(ratios)]
    lo, hi = (np.quantile(finite, [(1 - ci) / 2, (1 + ci) / 2]) if len(finite) else (np.nan, np.nan))
    return {"target_fd": target, "steps_a": s_a, "steps_b": s_b, "ratio": s_a / s_b,
            "ratio_ci_low": float(lo), "ratio_ci_high": float(hi), "ci": ci, "n_boot": n_boot,
            "boot_reached": float(len(finite) / n_boot), "n_seeds_a": len(a), "n_seeds_b": len(b)}


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Metrics utilities (proxy feature extractor).")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-classifier", help="train and cache the proxy CIFAR-10 classifier")
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--group", default="unconditional", help="params.yaml group holding `feature_extractor`")
    t.add_argument("--out-dir", default=None)
    t.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    values = dict(load_yaml_group(a.params, a.group).get("feature_extractor", {}))
    values.pop("extractor", None)
    values.pop("inception_weights", None)
    if a.out_dir:
        values["out_dir"] = a.out_dir
    if a.data_dir:
        values["data_dir"] = a.data_dir
    info = train_classifier(from_dict(ClassifierConfig, values))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
