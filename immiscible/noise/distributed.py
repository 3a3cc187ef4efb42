"""Noise assignment over several processes (torch.distributed, as accelerate sets it up): one assignment over the
global batch, as the official code does, or one per process.

    noise = immiscible.assign_noise_distributed(x0, torch.randn_like(x0))                  # global (default)
    noise = immiscible.assign_noise_distributed(x0, torch.randn_like(x0), scope="local")   # per process

Global: every process's batch is gathered (rank 0's rows first), rank 0 solves one assignment and broadcasts the
permutation, and each process keeps the rows of the assigned noise for its own images. The result equals
``assign_noise`` on the concatenated batch (tested with two processes). Without an initialised process group (one
process) both scopes are ``assign_noise``.
"""
from __future__ import annotations

import torch

from immiscible.noise.assignment import assign_noise, assignment_permutation

SCOPES = ("global", "local")


def global_permutation(x0: torch.Tensor, noise: torch.Tensor, method: str, group=None, labels=None,
                       **options) -> torch.Tensor:
    """One assignment over the batches of all processes of ``group``: the global batch is gathered (rank 0 rows
    first), rank 0 solves it and broadcasts the permutation. Returns this process's rows of the assigned noise.
    ``labels`` (B,): gathered too, and the assignment is solved within each class. Every process must pass a batch
    of the same shape (``assign_noise_distributed`` checks it)."""
    import torch.distributed as dist
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    b = x0.shape[0]
    x0_all = [torch.empty_like(x0) for _ in range(world)]
    noise_all = [torch.empty_like(noise) for _ in range(world)]
    dist.all_gather(x0_all, x0.contiguous(), group=group)
    dist.all_gather(noise_all, noise.contiguous(), group=group)
    noise_all = torch.cat(noise_all)  # (world*b, C, H, W)
    groups = None
    if labels is not None:
        labels_all = [torch.empty_like(labels) for _ in range(world)]
        dist.all_gather(labels_all, labels.contiguous(), group=group)
        groups = torch.cat(labels_all)
    if rank == 0:
        perm = assignment_permutation(torch.cat(x0_all), noise_all, method, groups=groups, **options).to(x0.device)
    else:
        perm = torch.empty(world * b, dtype=torch.long, device=x0.device)
    dist.broadcast(perm, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return noise_all[perm[rank * b:(rank + 1) * b]]


def assign_noise_distributed(x0: torch.Tensor, noise: torch.Tensor, method: str = "exact", scope: str = "global",
                             group=None, labels: torch.Tensor | None = None, **options) -> torch.Tensor:
    """``noise`` re-paired to this process's batch ``x0`` by ``method`` ("exact" or "quantized"), over the global
    batch of ``group`` (default: all processes) or per process (``scope="local"``). ``labels`` (B,): assign within
    each class only. Call it on every process of the group at the same step (it is collective). ``options``:
    ``cost``, ``solver`` as in ``assign_noise``."""
    import torch.distributed as dist
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}; choose 'global' (one assignment over all processes) or 'local'")
    if method not in ("exact", "quantized"):
        raise ValueError(f"method={method!r}: a distributed assignment is 'exact' or 'quantized' (knn_noise needs "
                         "no other process: call it per process)")
    if scope == "local" or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        if labels is not None:
            return noise[assignment_permutation(x0, noise, method, groups=labels, **options)]
        return assign_noise(x0, noise, method, **options)
    shape = torch.tensor(list(x0.shape) + list(noise.shape), device=x0.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shapes, shape, group=group)
    if any(not torch.equal(s, shapes[0]) for s in shapes):
        raise ValueError(f"every process must pass batches of one shape for a global assignment; got "
                         f"{[s.tolist() for s in shapes]} (x0 shape, then noise shape, per rank). Drop the last "
                         "incomplete batch (drop_last=True) or use scope='local'")
    return global_permutation(x0, noise, method, group, labels=labels, **options)
