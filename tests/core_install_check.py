"""Run inside a fresh virtual environment holding only the immiscible wheel and its core dependencies (torch, numpy,
scipy): the library works there without the artifact's packages. Called by tests/test_core_install.py; exits
non-zero with a message on any failure."""
import importlib.util
import itertools
import os
import sys
import tempfile
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import immiscible
from immiscible.noise import native


def brute_force_cost(cost):
    n = len(cost)
    return min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))


def assigned_cost(x0, noise):
    return float((x0 - noise).flatten(1).norm(dim=1).sum())


def worker(rank, world, store, scope, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2 * 6, 3, 4, 4, generator=g), torch.randn(2 * 6, 3, 4, 4, generator=g)
    mine = slice(rank * 6, (rank + 1) * 6 - (scope == "uneven" and rank == 1))
    try:
        assigned = immiscible.assign_noise_distributed(x0[mine], noise[mine], scope="global" if scope == "uneven"
                                                       else scope)
        torch.save(assigned, os.path.join(out, f"{scope}-{rank}.pt"))
    except ValueError as e:
        open(os.path.join(out, f"{scope}-{rank}.err"), "w").write(str(e))
    dist.destroy_process_group()


def main():
    here = os.path.dirname(immiscible.__file__)
    assert sys.prefix in here, f"immiscible imported from {here}, not from the fresh environment {sys.prefix}"
    for name in ("diffusers", "accelerate", "pandas", "dvc", "papermill", "lap", "matplotlib", "safetensors"):
        assert importlib.util.find_spec(name) is None, f"{name} is importable: not a core-only environment"
    assert immiscible.__version__ and sorted(immiscible.__all__) == sorted(
        n for n in dir(immiscible) if not n.startswith("_") and callable(getattr(immiscible, n)))

    # the exact assignment is optimal: the project's kernel (built here) and scipy
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(7, 3, 4, 4, generator=g), torch.randn(7, 3, 4, 4, generator=g)
    cost = immiscible.image_noise_distance(x0, noise).double().numpy()
    best = brute_force_cost(cost)
    assert native.jv_kernel() is not None, "the kernel did not build in the fresh environment"
    for solver in ("jv", "scipy", "auto"):
        out = immiscible.assign_noise(x0, noise, solver=solver)
        assert abs(assigned_cost(x0, out) - best) < 1e-4, solver
    try:
        immiscible.assign_noise(x0, noise, solver="lap")
        raise AssertionError("solver='lap' worked without lap installed")
    except ModuleNotFoundError as e:
        assert "immiscible[lap]" in str(e)
    os.environ["IMMISCIBLE_NATIVE"] = "0"  # no kernel and no lap: auto falls back to scipy, with a warning
    native.jv_kernel.cache_clear()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = immiscible.assign_noise(x0, noise)
    assert abs(assigned_cost(x0, out) - best) < 1e-4
    del os.environ["IMMISCIBLE_NATIVE"]
    native.jv_kernel.cache_clear()

    # knn: each image keeps the nearest of its k draws
    kg = torch.Generator().manual_seed(2)
    out = immiscible.knn_noise(x0, 8, generator=kg)
    candidates = torch.randn((7, 8, 3, 4, 4), generator=torch.Generator().manual_seed(2))
    nearest = candidates[torch.arange(7), (candidates - x0[:, None]).flatten(2).norm(dim=2).argmin(1)]
    assert torch.allclose(out, nearest)

    # the distributed helper: two processes (gloo), global = one assignment of the concatenated batch
    with tempfile.TemporaryDirectory() as tmp:
        for scope in ("global", "local", "uneven"):
            mp.spawn(worker, args=(2, os.path.join(tmp, f"store-{scope}"), scope, tmp), nprocs=2, join=True)
        g = torch.Generator().manual_seed(0)
        x0, noise = torch.randn(12, 3, 4, 4, generator=g), torch.randn(12, 3, 4, 4, generator=g)
        got = torch.cat([torch.load(os.path.join(tmp, f"global-{r}.pt")) for r in range(2)])
        assert torch.equal(got, immiscible.assign_noise(x0, noise)), "global != assignment of the whole batch"
        for r in range(2):
            mine = slice(r * 6, (r + 1) * 6)
            assert torch.equal(torch.load(os.path.join(tmp, f"local-{r}.pt")),
                               immiscible.assign_noise(x0[mine], noise[mine]))

        for r in range(2):  # batches of different sizes: a clear error on every rank, no hang
            assert "batches of one shape" in open(os.path.join(tmp, f"uneven-{r}.err")).read()

    # the prefetcher pairs each batch as the synchronous call with the same generator does
    batches = [torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    pre = list(immiscible.prefetch_assigned_noise(batches, generator=torch.Generator().manual_seed(9)))
    gen = torch.Generator().manual_seed(9)
    for (xb, nb), b in zip(pre, batches):
        assert torch.equal(nb, immiscible.assign_noise(b, torch.randn(b.shape, generator=gen)))
    print("core install OK:", immiscible.__version__, here)


if __name__ == "__main__":
    main()
