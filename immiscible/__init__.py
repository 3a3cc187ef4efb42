"""immiscible: a reproducible artifact for Immiscible Diffusion (Li et al., NeurIPS 2024).

The one line:

    noise = immiscible.assign_noise(x0, torch.randn_like(x0))
"""
from immiscible.noise.assignment import (
    assign_noise,
    assignment_permutation,
    image_noise_distance,
    knn_noise,
    mean_pair_distance,
)

__all__ = ["assign_noise", "assignment_permutation", "image_noise_distance", "knn_noise", "mean_pair_distance"]
__version__ = "0.1.0"
