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
    try:
        return float(fid.frechet_distance(mu, sigma, *ref_stats))
    except TypeError as e:  # clean-fid 0.1.35 calls scipy's sqrtm(disp=False), which newer scipy no longer takes
        if "disp" not in str(e):
            raise
        return frechet_distance_from_stats(mu, sigma, *ref_stats)


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """clean-fid's ``frechet_distance`` computed with scipy's current ``sqrtm`` signature (same steps: the
    eps-offset retry when the product is singular, the real part of a numerically complex root)."""
    from scipy import linalg
    diff = np.atleast_1d(mu1) - np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


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
