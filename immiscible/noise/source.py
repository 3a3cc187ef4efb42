"""The per-step noise source of training (Immiscible Diffusion, Li et al. 2024, Sec. 3).

Each step draws Gaussian noise from a generator seeded by (seed, step, rank), so no state needs saving, then pairs it
with the batch: ``vanilla`` keeps the draw, ``exact``/``quantized`` permute it by a linear assignment, ``exact_class``
by one linear assignment per class of the batch (only noises drawn for images of the same class are exchanged, so
each class keeps a Gaussian noise marginal; C2OT-style), ``knn`` keeps the nearest of k draws per image. With
several processes, ``global`` scope gathers the global batch, rank 0 solves one assignment and broadcasts the
permutation, and each process keeps its slice (as the official code does).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from immiscible.noise.assignment import METHODS as ASSIGNMENT_METHODS, assignment_permutation, knn_noise
from immiscible.noise.distributed import global_permutation

# every way a training step may pair its noise: random (vanilla), a permutation of the draw (the assignment methods),
# the nearest of k draws per image (knn), the exact assignment within each class (exact_class)
METHODS = ("vanilla", *ASSIGNMENT_METHODS, "knn", "exact_class")
KNN_K = 4   # candidate noises per image of ``knn`` unless told otherwise (training's, the prefetcher's)


def step_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for the noise and timesteps of one step on one process, seeded by (seed, step, rank)."""
    state = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(state)


def pair_distance(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean L2 distance of the pairs (x0[i], noise[i]) as a 0-d float64 tensor on x0's device (no host sync)."""
    return (x0.reshape(x0.shape[0], -1).double() - noise.reshape(noise.shape[0], -1).double()).norm(dim=1).mean()


def draw_noise(x0: torch.Tensor, generator: torch.Generator | None, method: str = "exact", knn_k: int = KNN_K,
               cost: str = "l2", solver: str = "auto", group=None, world: int = 1, stats: bool = False,
               labels: torch.Tensor | None = None):
    """(noise, info) for the batch x0 (B, C, H, W): the step's Gaussian draw paired by ``method``. ``group``: the
    process group of a global assignment (None: assign this process's batch alone). ``labels`` (B,): the classes
    ``exact_class`` assigns within (required there, ignored by the other methods). ``info`` is None unless
    ``stats``: then a dict of 0-d tensors ``dist_before``/``dist_after`` (mean pair distance of the random draw and of
    the assigned pairs), ``assign_ms`` and the assignment batch ``assign_batch``. The draw has x0's floating dtype,
    on the generator's device (x0's without a generator), then moves to x0's device."""
    if method not in METHODS:
        raise ValueError(f"unknown noise method {method!r}; choose one of {METHODS}")
    if method == "exact_class" and labels is None:
        raise ValueError("method 'exact_class' assigns within each class: it needs the batch's labels (a "
                         "class-conditional run); use 'exact' for unlabelled data")
    device = generator.device if generator is not None else x0.device
    dtype = x0.dtype if x0.is_floating_point() else None
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype).to(x0.device)
    start = time.perf_counter()
    batch = x0.shape[0]
    if method == "vanilla":
        assigned = noise
    elif method == "knn":  # no coupling between images: always per process
        assigned = knn_noise(x0, knn_k, generator=generator)
    else:
        options = dict(cost=cost, solver=solver) if method in ("exact", "exact_class") else {}
        solve = "exact" if method == "exact_class" else method
        groups = labels if method == "exact_class" else None
        if group is not None and world > 1:
            assigned = global_permutation(x0, noise, solve, group, labels=groups, **options)
            batch = world * x0.shape[0]
        else:
            assigned = noise[assignment_permutation(x0, noise, solve, groups=groups, **options)]
    if not stats:
        return assigned, None
    ms = 0.0 if method == "vanilla" else (time.perf_counter() - start) * 1000
    before = pair_distance(x0, noise)
    after = before if method == "vanilla" else pair_distance(x0, assigned)
    return assigned, {"dist_before": before, "dist_after": after, "assign_ms": ms, "assign_batch": batch}
