"""Distances between feature distributions: Frechet distance (FID when the features are Inception's; Heusel et al.
2017) and the kernel distance KID (Binkowski et al. 2018), through clean-fid."""
from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of (N, D) features."""
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(features: np.ndarray, ref_stats: tuple[np.ndarray, np.ndarray]) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between the Gaussian fit of ``features`` and the reference
    (mu, sigma), via clean-fid."""
    from cleanfid import fid
    mu, sigma = feature_stats(features)
    return float(fid.frechet_distance(mu, sigma, *ref_stats))


def kernel_distance(features: np.ndarray, ref_features: np.ndarray, num_subsets: int = 100,
                    max_subset_size: int = 1000, seed: int = 0) -> float:
    """KID: the unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3, averaged over random subsets
    (clean-fid), with numpy's global RNG seeded for reproducibility and restored afterwards."""
    from cleanfid import fid
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(fid.kernel_distance(features, ref_features, num_subsets, max_subset_size))
    finally:
        np.random.set_state(state)
