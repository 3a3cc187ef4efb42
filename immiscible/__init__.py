"""immiscible: noise assignment for diffusion training (Immiscible Diffusion, Li et al., NeurIPS 2024), and the
reproducible artifact of the paper.

The one line:

    noise = immiscible.assign_noise(x0, torch.randn_like(x0))

The public API is what this module exports (``__all__``; the README's "Public API" lists the same names). The core
install needs torch, numpy and scipy only; the reproduction pipeline (``immiscible.engine``, ``.experiments``, ...)
needs the ``artifact`` extra.
"""
from immiscible.noise.assignment import (
    assign_noise,
    assignment_permutation,
    image_noise_distance,
    knn_noise,
    mean_pair_distance,
    solve_assignment,
)
from immiscible.noise.distributed import assign_noise_distributed
from immiscible.noise.prefetch import prefetch_assigned_noise

__all__ = ["assign_noise", "assign_noise_distributed", "assignment_permutation", "image_noise_distance", "knn_noise",
           "mean_pair_distance", "prefetch_assigned_noise", "solve_assignment"]
__version__ = "0.2.0"
