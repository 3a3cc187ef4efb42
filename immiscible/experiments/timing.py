"""Assignment timing (the slides' performance table, first row): how long the noise assignment takes.

Each method is timed in two parts: ``distance_ms`` (the B x B image-noise distance matrix, one GEMM) and
``assign_ms`` (solving for the permutation on CPU). The paper quotes 5.4 / 6.7 / 8.8 / 22.8 ms at
B = 128 / 256 / 512 / 1024 on an A6000 machine. Next to the time, every row gives the achieved change of the
mean image-noise distance, since a fast method that loses the reduction is worthless.

Methods timed here:
    exact        optimal L2 permutation, the default solver on the host: the project's C auction with its certificate
                 and JV finish (``auction``) on the fp32 distances (``lap`` where no C compiler is found; the
                 ``solver`` column says which ran)
    exact_jv     the same optimum from the project's Jonker-Volgenant kernel ``jv`` (the default until the auction)
    exact_jv_threads  ``jv`` with each shortest-path scan split over every core of the host (from 2048 columns on)
    exact_auction the same optimum from the certified auction on the tensors' device (``immiscible.noise.auction``):
                 fp32 distances and the solve on the GPU, rows failing the float64 certificate finished by ``jv``
                 (on the host threads that training would use, ``host_threads``)
    exact_auction_graphs  the same on CUDA with the free count read every 8 rounds once few rows are free, those
                 rounds replayed from CUDA graphs (``solve_auction(check_every=8, graphs=True)``; CUDA only)
    exact_lap    the same optimum from the ``lap`` package's Jonker-Volgenant solver (float64)
    exact_scipy  the same optimum from scipy's linear_sum_assignment on the raw L2 matrix (the plain baseline)
    quantized    the official code's fp16 distances of 0.1-scaled tensors, scipy solve
    greedy       each image takes its nearest free noise (approximate, O(B^2))
    knn          k candidate noises per image, keep the nearest (not a permutation; ``knn_k`` candidates;
                 its time includes drawing the B*k candidates and is reported as ``assign_ms``)

The notebook ``notebooks/assignment_timing.ipynb`` shows these; without Jupyter (e.g. on a GPU machine):

    python -m immiscible.experiments.timing --group assignment_timing_cuda --output-dir results/device
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from immiscible.noise import native
from immiscible.noise.auction import solve_auction
from immiscible.noise.assignment import greedy_permutation, host_threads, image_noise_distance, knn_noise, \
    mean_pair_distance, solve_assignment
from immiscible.noise.source import KNN_K
from immiscible.experiments.paper import PAPER_TIME_MS
from immiscible.io import atomic_savefig

TIMING_METHODS = ("exact", "exact_threads", "exact_jv", "exact_jv_threads", "exact_auction", "exact_auction_graphs",
                  "exact_lap", "exact_scipy", "quantized", "greedy", "knn")
CUDA_ONLY = ("exact_auction_graphs",)  # skipped, with a note, where the device is not a GPU
# The ``optimality`` column: how a method's permutation relates to the optimum of its distance matrix
OPTIMALITY = {"exact": "exact solver", "exact_threads": "exact solver", "exact_jv": "exact solver",
              "exact_jv_threads": "exact solver", "exact_lap": "exact solver", "exact_scipy": "exact solver",
              "quantized": "exact on fp16 distances", "greedy": "approximate", "knn": "not a permutation"}


def hardware_description(device: str) -> str:
    """A short string naming the hardware the timings ran on."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, 1e3 * (time.perf_counter() - t)


def _solve(method: str, x0: torch.Tensor, noise: torch.Tensor, device: str, knn_k: int, seed: int = 0):
    """Returns (paired noise, distance_ms, assign_ms, optimality) for one batch."""
    if method == "knn":
        generator = torch.Generator(x0.device).manual_seed(seed)  # seeded: the table's reduction is reproducible
        out, ms = _timed(lambda: knn_noise(x0, knn_k, generator=generator), device)
        return out, float("nan"), ms, OPTIMALITY[method]
    if method in ("exact_auction", "exact_auction_graphs"):  # on the device: fp32 distances, the certified auction
        options = dict(check_every=8, graphs=True) if method == "exact_auction_graphs" else {}
        cost, distance_ms = _timed(lambda: image_noise_distance(x0, noise, dtype=torch.float32), device)
        (perm, report), assign_ms = _timed(lambda: solve_auction(cost, threads=host_threads(x0), **options), device)
        return noise[perm], distance_ms, assign_ms, "certified" if report.certified else "not certified"
    if method == "quantized":
        def dist():
            d = image_noise_distance(x0 * 0.1, noise * 0.1, dtype=torch.float16 if device.startswith("cuda") else None)
            return d.to(torch.float16).float().cpu().numpy()
    elif method in ("exact", "exact_threads", "exact_jv", "exact_jv_threads"):
        def dist():
            return image_noise_distance(x0, noise).float().cpu().numpy()   # solved as the fp32 matrix it is
    else:
        def dist():
            return image_noise_distance(x0, noise).double().cpu().numpy()
    cost, distance_ms = _timed(dist, device)
    if method == "exact":
        perm, assign_ms = _timed(lambda: solve_assignment(cost), "cpu")
    elif method == "exact_threads":   # the default solver on every core of the host
        perm, assign_ms = _timed(lambda: solve_assignment(cost, threads=os.cpu_count() or 1), "cpu")
    elif method == "exact_jv":
        perm, assign_ms = _timed(lambda: solve_assignment(cost, "jv"), "cpu")
    elif method == "exact_jv_threads":
        perm, assign_ms = _timed(lambda: solve_assignment(cost, "jv", threads=os.cpu_count() or 1), "cpu")
    elif method == "exact_lap":
        perm, assign_ms = _timed(lambda: solve_assignment(cost, "lap"), "cpu")
    elif method in ("exact_scipy", "quantized"):
        perm, assign_ms = _timed(lambda: linear_sum_assignment(cost)[1], "cpu")
    else:
        perm, assign_ms = _timed(lambda: greedy_permutation(cost), "cpu")
    return noise[torch.as_tensor(perm, device=noise.device)], distance_ms, assign_ms, OPTIMALITY[method]


def _solver_name(method: str) -> str:
    if method in ("exact", "exact_threads"):
        threads = f" ({os.cpu_count() or 1} threads)" if method == "exact_threads" else ""
        return ("auction" if native.auction_kernel() is not None else "lap") + threads
    return {"exact_jv": "jv", "exact_jv_threads": f"jv ({os.cpu_count() or 1} threads)",
            "exact_auction": "auction (GPU)", "exact_auction_graphs": "auction (GPU, graphs)", "exact_lap": "lap",
            "exact_scipy": "scipy", "quantized": "scipy"}.get(method, method)


def _batch(images: torch.Tensor | None, B: int, dim: int, seed: int, repeat: int, device: str, dtype: torch.dtype):
    """Batch ``repeat`` of size B: images (a random subset of ``images``, else uniform [-1, 1] vectors) and Gaussian
    noise, a pure function of (seed, B, repeat), so that every method is timed on the same batches."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, B, repeat]).generate_state(1)[0]))
    if images is not None:
        x0 = images[torch.randperm(len(images), generator=g)[:B]]
    else:
        x0 = torch.rand((B, dim), generator=g) * 2 - 1
    noise = torch.randn((B, x0.shape[1]), generator=g)
    return x0.to(device, dtype), noise.to(device, dtype)


def time_assignment(methods: list[str], batch_sizes: list[int], dim: int = 3072, device: str = "cpu",
                    repeats: int = 5, max_seconds: float = 20.0, knn_k: int = KNN_K, seed: int = 0,
                    images: torch.Tensor | None = None, dtype: str = "float32",
                    max_batch: dict | None = None) -> pd.DataFrame:
    """Median timings per (method, batch size) over ``repeats`` different batches (the solve time depends on the
    batch, not only on B), and the mean achieved change of the image-noise distance. Data: rows of ``images``
    (float, [-1, 1], at least max(B) rows) when given, else uniform [-1, 1] vectors of size ``dim``; noise is
    standard Gaussian. Every method sees the same batches. A point stops once it has used ``max_seconds`` (at least
    one timed batch, after one warm-up at B <= 1024). ``dtype`` ('float32', 'float16', 'bfloat16') is the precision
    of images and noise (low precision is meant for CUDA). ``max_batch`` ({method: B}) skips a method's larger
    batch sizes (a slow solver's point could take minutes). The ``optimality`` column says how each row's
    permutation relates to the optimum: the exact solvers are exact by construction, the auction's rows say whether
    every batch passed its float64 certificate."""
    bad = [m for m in methods if m not in TIMING_METHODS]
    if bad:
        raise ValueError(f"unknown timing method(s) {bad}; choose from {TIMING_METHODS}")
    if any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {batch_sizes}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {list(dtypes)}")
    if images is not None:
        images = images.reshape(len(images), -1)
        dim = images.shape[1]
        if len(images) < max(batch_sizes):
            raise ValueError(f"{len(images)} images given but the largest batch size is {max(batch_sizes)}")
    if not device.startswith("cuda") and any(m in CUDA_ONLY for m in methods):
        tqdm.write(f"skipped on {device}: {[m for m in methods if m in CUDA_ONLY]} (CUDA graphs, CUDA only)")
        methods = [m for m in methods if m not in CUDA_ONLY]
    hw = hardware_description(device)
    rows = []
    for B in tqdm(batch_sizes, desc="assignment timing"):
        for method in methods:
            if B > (max_batch or {}).get(method, B):
                continue
            if B <= 1024 or method == "exact_auction_graphs":  # warm-up (allocators, BLAS threads, CUDA kernels;
                # the graphs' capture, once per batch size in a training run)
                _solve(method, *_batch(images, B, dim, seed, 0, device, dtypes[dtype]), device, knn_k, seed)
            runs, start = [], time.perf_counter()
            while len(runs) < repeats and (not runs or time.perf_counter() - start < max_seconds):
                x0, noise = _batch(images, B, dim, seed, len(runs), device, dtypes[dtype])
                base = mean_pair_distance(x0, noise)
                paired, d_ms, a_ms, optimality = _solve(method, x0, noise, device, knn_k, seed)
                runs.append((d_ms, a_ms, 100.0 * (mean_pair_distance(x0, paired) - base) / base, optimality))
            d_ms = statistics.median(r[0] for r in runs)
            a_ms = statistics.median(r[1] for r in runs)
            tqdm.write(f"B={B} {method}: {a_ms + (0.0 if math.isnan(d_ms) else d_ms):.1f} ms "
                       f"({len(runs)} batches)")  # a line per point: the console of a pipeline run shows progress
            rows.append({
                "method": method, "solver": _solver_name(method), "batch_size": B, "dim": dim, "device": device,
                "dtype": dtype, "hardware": hw,
                "distance_ms": d_ms, "assign_ms": a_ms, "total_ms": a_ms + (0.0 if math.isnan(d_ms) else d_ms),
                "repeats": len(runs),
                "delta_mean_distance_pct": statistics.fmean(r[2] for r in runs),
                "optimality": ("not certified" if any(r[3] == "not certified" for r in runs) else runs[0][3]),
                "paper_total_ms": PAPER_TIME_MS.get(B, float("nan")),
            })
    return pd.DataFrame(rows)


def growth_exponents(df: pd.DataFrame, min_batch: int = 512) -> pd.DataFrame:
    """Slope of log(total_ms) against log(B) per method, fitted on B >= ``min_batch``: time ~ B^slope."""
    rows = []
    for method, sub in df[df.batch_size >= min_batch].groupby("method", sort=False):
        if sub.batch_size.nunique() >= 2:
            slope = np.polyfit(np.log(sub.batch_size), np.log(sub.total_ms), 1)[0]
            rows.append({"method": method, "exponent": float(slope), "fitted_from_batch_size": min_batch})
    return pd.DataFrame(rows)


def recommend_methods(df: pd.DataFrame, keep: float = 0.95) -> pd.DataFrame:
    """Per batch size: the fastest permutation method that keeps at least ``keep`` of the exact method's distance
    reduction, next to the exact method's time. KNN is listed apart: it is not a permutation (it changes the noise
    marginal), so its larger reduction is not comparable."""
    rows = []
    for B, sub in df.groupby("batch_size"):
        sub = sub.set_index("method")
        if "exact" not in sub.index:
            continue
        ref = sub.loc["exact", "delta_mean_distance_pct"]
        perms = sub.drop(index=[m for m in ("knn",) if m in sub.index])
        ok = perms[perms.delta_mean_distance_pct <= keep * ref]
        best = ok.total_ms.idxmin()
        rows.append({"batch_size": B, "recommended": best, "total_ms": ok.loc[best, "total_ms"],
                     "reduction_kept_pct": 100 * ok.loc[best, "delta_mean_distance_pct"] / ref,
                     "exact_ms": sub.loc["exact", "total_ms"],
                     "greedy_reduction_kept_pct": (100 * sub.loc["greedy", "delta_mean_distance_pct"] / ref
                                                   if "greedy" in sub.index else float("nan"))})
    return pd.DataFrame(rows)


def plot_timing(df: pd.DataFrame, path=None):
    """Log-log total time vs batch size per method, with the paper's numbers marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, sub in df.groupby("method", sort=False):
        axes[0].plot(sub.batch_size, sub.total_ms, "o-", label=method)
        axes[1].plot(sub.batch_size, sub.delta_mean_distance_pct, "o-", label=method)
    axes[0].plot(list(PAPER_TIME_MS), list(PAPER_TIME_MS.values()), "k*--", ms=11, label="paper (A6000 machine)")
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("distance + assignment time (ms)")
    axes[0].set_title(f"{df.hardware.iloc[0][:60]}", fontsize=8)
    axes[1].set_xscale("log", base=2)
    axes[1].set_ylabel("change of mean image-noise distance (%)")
    axes[1].set_title(f"achieved reduction (D={df.dim.iloc[0]})", fontsize=9)
    for ax in axes:
        ax.set_xlabel("batch size B")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        atomic_savefig(fig, path, dpi=120)
    return fig


def solve_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Per batch size: scipy's solve time on the raw L2 matrix over each exact solver's solve time (same optimum):
    ``exact`` (the default solver) and, where timed, ``exact_jv`` and ``exact_lap`` (the ``lap`` package)."""
    ms = df.pivot(index="batch_size", columns="method", values="assign_ms")
    return pd.DataFrame({f"{m}_speedup_vs_scipy": ms["exact_scipy"] / ms[m] for m in ("exact", "exact_jv", "exact_lap")
                         if m in ms})


# what a timing group of params.yaml must set (``dataset``, ``dtype``, ``max_batch``, ``table_name`` are optional)
GROUP_KEYS = ("methods", "batch_sizes", "dim", "device", "repeats", "max_seconds", "knn_k", "seed")


def run_group(params: dict, data_dir: str = "data", output_dir: str = "results", table_name: str | None = None,
              echo: bool = True, **overrides) -> pd.DataFrame:
    """Time the methods of one params.yaml group (``overrides`` replace its values), write ``tables/<table_name>``
    and its figure under ``output_dir``, and return the table. ``echo`` prints the speed-up over scipy, the growth
    exponents and the recommended method per batch size. The notebook ``assignment_timing`` calls this and shows
    the tables; ``python -m immiscible.experiments.timing`` does the same without Jupyter (the GPU check)."""
    from pathlib import Path

    from immiscible.io import atomic_write_text

    p = {**params, **{k: v for k, v in overrides.items() if v is not None}}
    missing = [k for k in GROUP_KEYS if k not in p]
    if missing:
        raise ValueError(f"the timing group lacks {missing}; set them in params.yaml (the defaults live only there)")
    table_name = table_name or p.get("table_name", "assignment_timing.csv")
    images = None
    if p.get("dataset"):
        from immiscible.data import load_dataset
        images = load_dataset(p["dataset"], "train", data_dir).tensor(slice(0, max(p["batch_sizes"])))
    df = time_assignment(list(p["methods"]), list(p["batch_sizes"]), dim=p["dim"], device=p["device"],
                         repeats=p["repeats"], max_seconds=p["max_seconds"], knn_k=p["knn_k"], seed=p["seed"],
                         images=images, dtype=p.get("dtype", "float32"), max_batch=p.get("max_batch"))
    out = Path(output_dir)
    atomic_write_text(out / "tables" / table_name, df.to_csv(index=False))
    plot_timing(df, out / "figures" / Path(table_name).with_suffix(".png").name)
    if echo:
        print("hardware:", df.hardware.iloc[0])
        print(df.pivot(index="batch_size", columns="method", values="total_ms").round(2).to_string())
        if {"exact", "exact_scipy"} <= set(df.method):
            print("exact solve speed-up over scipy on the raw L2 matrix:\n" + solve_speedup(df).round(2).to_string())
        growth = growth_exponents(df)
        if len(growth):
            print(growth.round(2).to_string(index=False))
        print(recommend_methods(df).round(2).to_string(index=False))
    return df


def main(argv=None) -> None:
    import argparse

    from immiscible.config import load_yaml_group

    p = argparse.ArgumentParser(description="Assignment timing for one params.yaml group, without Jupyter "
                                            "(the notebook `assignment_timing` does the same and shows it).")
    p.add_argument("--group", default="assignment_timing", help="params.yaml group, e.g. assignment_timing_cuda")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--device", default=None, help="override the group's device (cpu, cuda)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="override the group's batch sizes")
    p.add_argument("--max-seconds", type=float, default=None, help="override the group's time per point")
    a = p.parse_args(argv)
    params = load_yaml_group(a.params, a.group)
    if not params:
        raise ValueError(f"{a.params} has no group {a.group!r}")
    run_group(params, a.data_dir, a.output_dir, device=a.device, batch_sizes=a.batch_sizes,
              max_seconds=a.max_seconds)


if __name__ == "__main__":
    main()
