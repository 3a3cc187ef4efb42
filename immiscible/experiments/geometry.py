"""What the assignment does to the noise, without training: how far KNN noise leaves the Gaussian (the follow-up's
k), and the slides' picture of assigned noise in Gaussian noise space.

- ``knn_marginal``: for each k, the noise KNN keeps for real image batches: its norm and per-dimension variance
  against the standard Gaussian's, its cosine with its image, and the image-noise distance change against random
  pairing; the exact assignment (a permutation, so the Gaussian marginal is kept) beside it.
- ``noise_space``: the noises projected on the images' two principal directions, each coloured by its image's score
  on the first; with random pairing the colours are mixed, with the assignment they line up. The correlation between
  a noise's and its image's first-direction scores says by how much, as a number.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from immiscible.data import ImageDataset
from immiscible.io import atomic_savefig
from immiscible.noise.assignment import assign_noise, knn_noise, mean_pair_distance


def _batches(ds: ImageDataset, batch_size: int, num_batches: int, seed: int, resolution: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(num_batches):
        idx = torch.randperm(len(ds), generator=g)[:batch_size].numpy()
        x = ds.tensor(idx)
        if x.shape[-1] != resolution:
            x = torch.nn.functional.avg_pool2d(x, x.shape[-1] // resolution)
        yield x, g


def knn_marginal(ds: ImageDataset, ks=(1, 2, 4, 8, 16, 32, 64), batch_size: int = 128, num_batches: int = 10,
                 seed: int = 0, resolution: int = 32) -> pd.DataFrame:
    """One row per k (and one for the exact assignment): how the kept noise differs from a standard Gaussian."""
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks={list(ks)!r} must be integers >= 1")
    rows = []
    for method, k in [("knn", k) for k in ks] + [("exact", 1)]:
        norms, variances, cosines, change = [], [], [], []
        for x0, g in _batches(ds, batch_size, num_batches, seed, resolution):
            random = torch.randn(x0.shape, generator=g)
            noise = assign_noise(x0, random) if method == "exact" else knn_noise(x0, k, generator=g)
            d = noise[0].numel()
            flat, img = noise.flatten(1), x0.flatten(1)
            norms.append(float(flat.norm(dim=1).mean()) / math.sqrt(d))
            variances.append(float(flat.var(dim=0, unbiased=True).mean()))
            cosines.append(float(torch.nn.functional.cosine_similarity(flat, img, dim=1).mean()))
            change.append(100 * (mean_pair_distance(x0, noise) / mean_pair_distance(x0, random) - 1))
        rows.append({"method": method, "k": k, "resolution": resolution, "dim": d, "batch_size": batch_size,
                     "num_batches": num_batches, "norm_ratio": float(np.mean(norms)),
                     "norm_change_pct": 100 * (float(np.mean(norms)) - 1), "variance": float(np.mean(variances)),
                     "cosine_with_image": float(np.mean(cosines)), "distance_change_pct": float(np.mean(change)),
                     "distance_change_ci95": float(1.96 * np.std(change, ddof=1) / math.sqrt(len(change)))})
    return pd.DataFrame(rows)


def noise_space(ds: ImageDataset, batch_size: int = 512, seed: int = 0, resolution: int = 32) -> tuple[dict, pd.DataFrame]:
    """(points for the figure, a table): the noises of one batch projected on the images' top two principal
    directions, random and assigned pairing, and the correlation of each noise's first score with its image's."""
    x0, g = next(_batches(ds, batch_size, 1, seed, resolution))
    random = torch.randn(x0.shape, generator=g)
    assigned = assign_noise(x0, random)
    flat = x0.flatten(1)
    centred = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    basis = v[:2].T                                            # (D, 2) the images' two principal directions
    image_score = (centred @ basis[:, 0]).numpy()
    points, rows = {"image_score": image_score}, []
    for name, noise in (("random", random), ("assigned", assigned)):
        proj = (noise.flatten(1) @ basis).numpy()
        points[name] = proj
        r = float(np.corrcoef(proj[:, 0], image_score)[0, 1])
        rows.append({"pairing": name, "batch_size": batch_size, "resolution": resolution, "dim": flat.shape[1],
                     "corr_first_direction": r, "noise_score_std": float(proj[:, 0].std())})
    return points, pd.DataFrame(rows)


def plot_knn_marginal(table: pd.DataFrame, path=None):
    import matplotlib.pyplot as plt
    knn, exact = table[table.method == "knn"], table[table.method == "exact"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(knn.k, knn.norm_change_pct, "o-", label="KNN: mean noise norm vs Gaussian")
    axes[0].axhline(exact.norm_change_pct, color="k", ls="--", label="exact assignment (a permutation)")
    axes[0].set_ylabel("change of the noise norm (%)")
    axes[1].plot(knn.k, knn.distance_change_pct, "o-", label="KNN")
    axes[1].axhline(exact.distance_change_pct, color="k", ls="--", label=f"exact assignment, B={int(exact.batch_size)}")
    axes[1].set_ylabel("change of the image-noise distance (%)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (candidate noises per image)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"What KNN keeps: CIFAR-10 at {int(exact.resolution)} px (D={int(exact.dim)})", fontsize=10)
    fig.tight_layout()
    if path is not None:
        atomic_savefig(fig, path, dpi=120)
    return fig


def plot_noise_space(points: dict, table: pd.DataFrame, path=None):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharex=True, sharey=True)
    corr = table.set_index("pairing").corr_first_direction
    for ax, name in zip(axes, ("random", "assigned")):
        sc = ax.scatter(points[name][:, 0], points[name][:, 1], c=points["image_score"], cmap="coolwarm", s=9)
        ax.set_title(f"{name} pairing\ncorr(noise, its image) on the 1st direction: {corr[name]:+.2f}", fontsize=9)
        ax.set_xlabel("noise on the images' 1st principal direction")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("noise on the 2nd principal direction")
    fig.colorbar(sc, ax=axes, label="its image's score on the 1st direction")
    if path is not None:
        atomic_savefig(fig, path, dpi=120)
    return fig
