"""Image-noise distance reduction (the slides' performance table, second row).

For batches of B images and B Gaussian noises, compare the mean image-noise L2 distance of the random pairing
with that of the assigned pairing. The paper reports -1.93% / -2.16% / -2.32% / -2.44% at B = 128 / 256 / 512 /
1024 without saying what data it was measured on; ``REPRESENTATIONS`` lists the candidates this project measures.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from immiscible.noise.assignment import assignment_permutation, mean_pair_distance
from immiscible.data import ImageDataset
from immiscible.io import atomic_savefig
from immiscible.experiments.paper import PAPER_DELTA_PCT



def _pixels(x: torch.Tensor, ds: ImageDataset, g: torch.Generator) -> torch.Tensor:
    return x


def _pixels_01(x, ds, g):
    return (x + 1) / 2


def _pixels_standardized(x, ds, g):
    mean, std = _dataset_moments(ds)
    return (x - mean) / std


def _latent_shaped_gaussian(x, ds, g):
    # Stand-in for Stable Diffusion latents (4x32x32 at 256 px, scaled by the VAE factor to about unit variance):
    # the distance statistics of unit-variance 4096-dim data. Not real latents (no VAE weights offline).
    return torch.randn((x.shape[0], 4, 32, 32), generator=g)


REPRESENTATIONS: dict[str, Callable] = {
    "pixels": _pixels,                           # images scaled to [-1, 1], the usual diffusion input
    "pixels_01": _pixels_01,                     # images in [0, 1]
    "pixels_standardized": _pixels_standardized, # zero mean, unit variance over the dataset
    "latent_shaped_gaussian": _latent_shaped_gaussian,  # unit-variance 4x32x32 data, the shape of SD latents
}

_MOMENTS: dict[int, tuple[float, float]] = {}


def _dataset_moments(ds: ImageDataset) -> tuple[float, float]:
    key = id(ds.images)
    if key not in _MOMENTS:
        sample = ds.tensor(np.arange(0, len(ds), max(1, len(ds) // 5000)))
        _MOMENTS[key] = (float(sample.mean()), float(sample.std()))
    return _MOMENTS[key]


def measure_distance_reduction(ds: ImageDataset, batch_sizes: list[int], num_batches: int, seed: int = 0,
                               representation: str = "pixels", method: str = "exact",
                               dataset_name: str = "", encode: Callable | None = None) -> pd.DataFrame:
    """One row per batch size: mean distance with random and assigned pairing, relative change and its 95% CI.
    ``representation="vae_latents"``: the real latents of a VAE, ``encode(images in [-1, 1]) -> latents``
    (``immiscible.sd.latents.latent_encoder``), in place of the latent-shaped Gaussian stand-in."""
    if representation == "vae_latents":
        if encode is None:
            raise ValueError("representation 'vae_latents' needs encode= (a VAE's encoder: "
                             "immiscible.sd.latents.latent_encoder(pretrained)); the notebook's `vae` parameter")
    elif representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; choose one of "
                         f"{[*REPRESENTATIONS, 'vae_latents']}")
    bad = [b for b in batch_sizes if not isinstance(b, int) or b < 1]
    if bad:
        raise ValueError(f"batch sizes must be positive integers, got {bad}")
    if num_batches < 2:
        raise ValueError(f"num_batches must be >= 2 to give a confidence interval, got {num_batches}")
    if max(batch_sizes) > len(ds):
        raise ValueError(f"batch size {max(batch_sizes)} exceeds the dataset's {len(ds)} images")
    transform = (lambda x, ds, g: encode(x)) if representation == "vae_latents" else REPRESENTATIONS[representation]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for B in tqdm(batch_sizes, desc=f"distance reduction ({representation})"):
        random_d, assigned_d, change = [], [], []
        for _ in range(num_batches):
            idx = torch.randperm(len(ds), generator=g)[:B].numpy()
            x0 = transform(ds.tensor(idx), ds, g)                   # (B, ...)
            noise = torch.randn(x0.shape, generator=g)              # the random pairing: noise[i] <-> x0[i]
            perm = assignment_permutation(x0, noise, method=method)
            r, a = mean_pair_distance(x0, noise), mean_pair_distance(x0, noise[perm])
            random_d.append(r)
            assigned_d.append(a)
            change.append(100.0 * (a - r) / r)
        change = np.asarray(change)
        tqdm.write(f"{representation} B={B}: {change.mean():+.2f}% over {num_batches} batches")
        rows.append({
            "dataset": dataset_name, "representation": representation, "method": method, "batch_size": B,
            "dim": int(math.prod(x0.shape[1:])), "num_batches": num_batches, "seed": seed,
            "mean_distance_random": float(np.mean(random_d)), "mean_distance_assigned": float(np.mean(assigned_d)),
            "delta_mean_distance_pct": float(change.mean()),
            "ci95_pct": float(1.96 * change.std(ddof=1) / math.sqrt(len(change))),
            "paper_delta_pct": PAPER_DELTA_PCT.get(B, float("nan")),
        })
    return pd.DataFrame(rows)


def plot_distance_reduction(df: pd.DataFrame, path=None):
    """Relative change of the mean image-noise distance vs batch size, one line per representation."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for rep, sub in df.groupby("representation", sort=False):
        ax.errorbar(sub.batch_size, sub.delta_mean_distance_pct, yerr=sub.ci95_pct, marker="o", capsize=3,
                    label=f"{rep} (D={sub.dim.iloc[0]})")
    ax.plot(list(PAPER_DELTA_PCT), list(PAPER_DELTA_PCT.values()), "k*--", ms=11, label="paper (slides)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("change of mean image-noise distance (%)")
    ax.set_title("Immiscible assignment vs random pairing")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        atomic_savefig(fig, path, dpi=120)
    return fig
