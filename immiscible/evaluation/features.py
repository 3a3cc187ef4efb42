"""Feature extractors for sample quality: clean-fid's Inception (FID) and a documented proxy.

``inception``  clean-fid's Inception-V3 ("clean" mode: PIL bicubic resize to 299x299) when its weights file exists:
               ``/tmp/inception-2015-12-05.pt`` (where clean-fid keeps it) or a file the user passes. Then FD is FID.
``proxy``      without those weights (offline machines): the 128-d penultimate features of a small classifier
               trained on the training split and cached by the experiment's ``classifier`` stage, with its test
               accuracy. The Frechet distance in this space is reported as "FD (proxy ...)", never as FID; its
               reference set must be held out from the classifier's training images (the test split).
``auto``       Inception only when its weights exist AND the images are at the dataset's native resolution (a
               16-pixel CPU stand-in upsampled to 299 would not be FID in any comparable sense), else the proxy.
"""
from __future__ import annotations

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

from immiscible.data import downsample, load_dataset
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
    resolution: int = 32          # must equal the diffusion runs' (TrainConfig's default; experiments pass theirs)
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


def load_proxy_extractor(folder: str | Path, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The cached proxy classifier of ``folder`` as a feature extractor running on ``device``."""
    folder = Path(folder)
    if not (folder / "classifier.safetensors").is_file():
        raise FileNotFoundError(f"no proxy classifier in {folder}: run the experiment's "
                                "classifier stage first (`dvc repro classifier_unconditional`)")
    info = json.loads((folder / "info.json").read_text())
    model = ProxyClassifier(info["channels"], info["width"], info["feature_dim"], info["num_classes"])
    model.load_state_dict(load_file(folder / "classifier.safetensors"))
    model.to(device).eval()

    @torch.no_grad()
    def fn(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)
        if x.shape[-1] != info["resolution"]:
            raise ValueError(f"the proxy classifier in {folder} works at {info['resolution']}px, got images of "
                             f"{x.shape[-1]}px: train a classifier at this resolution")
        return model.features(_uint8_to_input(x)).float().cpu().numpy()

    label = f"FD (proxy: {Path(info['dataset']).name} classifier features, {info['resolution']}px, acc {info['test_accuracy']:.3f})"
    return FeatureExtractor("proxy", label, fn, {**info, "path": str(folder)})


def load_inception_extractor(weights: str | Path, device: str | torch.device = "cpu") -> FeatureExtractor:
    """clean-fid's Inception-V3 (TorchScript weights file) in "clean" mode: 2048-d pool features, on ``device``."""
    from cleanfid.resize import make_resizer
    base = torch.jit.load(str(weights), map_location=device).eval()
    resize = make_resizer("PIL", False, "bicubic", (299, 299))

    @torch.no_grad()
    def fn(images: np.ndarray) -> np.ndarray:
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, -1)
        x = torch.from_numpy(np.stack([resize(img) for img in images])).permute(0, 3, 1, 2).float().to(device)
        return base.layers.forward((x - 128) / 128).reshape(len(images), 2048).float().cpu().numpy()

    return FeatureExtractor("inception", "FID", fn, {"weights": str(weights)})


def inception_weights(path: str | None = None) -> Path | None:
    """The Inception weights file to use: ``path`` if given (must exist), else clean-fid's default if present."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"inception weights {path} not found; give the path of "
                                    "inception-2015-12-05.pt or leave it empty to use the proxy")
        return Path(path)
    return INCEPTION_DEFAULT if INCEPTION_DEFAULT.is_file() else None


def get_extractor(kind: str = "auto", classifier: str | Path | None = None, inception_path: str | None = None,
                  native_resolution: bool = True, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Inception when its weights exist (``inception``; ``auto`` only at the data's ``native_resolution``), else
    the cached proxy classifier."""
    if kind not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {kind!r}; choose one of {EXTRACTORS}")
    weights = inception_weights(inception_path) if kind == "inception" or (kind == "auto" and native_resolution) \
        else None
    if weights is not None:
        return load_inception_extractor(weights, device)
    if kind == "inception":
        raise FileNotFoundError(f"Inception weights not found at {INCEPTION_DEFAULT}: download "
                                "inception-2015-12-05.pt there, pass its path, or use extractor 'proxy'")
    if classifier is None:
        raise ValueError("no Inception weights and no proxy classifier folder given")
    return load_proxy_extractor(classifier, device)
