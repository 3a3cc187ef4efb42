"""Where the certified auction's time goes, per batch size and setting (for tuning ``solve_auction``'s defaults):
seconds of the fp32 distances, of the whole solve, the rounds, the rows left to the CPU finish. CIFAR-10 images
(DATA_DIR/cifar10) when present, else uniform [-1, 1] vectors; Gaussian noise. With ``--host-threads``, the same
costs are also solved on the host by the C auction on that many threads and by ``jv`` (one thread, and its scans split
over each thread count above one; rows with device "cpu"),
which says which side should solve on the machine at hand.

    python tools/auction_profile.py --out results/device/auction_profile.csv [--device cuda] [--batch-sizes ...]
        [--tune-at 1024 4096] [--host-threads 1 4 16]
"""
import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from immiscible.noise import native
from immiscible.noise.assignment import HOST_THREADS_WITH_GPU, image_noise_distance
from immiscible.noise.auction import solve_auction

# threads: the finish's split scans, as training has them; check_every: rounds between reads of the free count once
# few rows are free; graphs: those rounds from CUDA graphs (CUDA only). A smaller tail and eps_final trade rounds for
# the finish: on the CPU (torch, B=4096) tail=1/512 with eps_final=1e-7 took the finish from 282 to 24 ms for 895
# rounds instead of 87.
FAST = dict(check_every=8, graphs=True)
SETTINGS = [dict(), dict(threads=HOST_THREADS_WITH_GPU), dict(check_every=8), FAST,
            dict(FAST, tail=1 / 128, eps_final=1e-7), dict(FAST, tail=1 / 512, eps_final=1e-7),
            dict(FAST, tail=1 / 512, eps_final=1e-7, threads=HOST_THREADS_WITH_GPU), dict(tail=1 / 512, eps_final=1e-7),
            dict(scaling=4.0), dict(eps_final=1e-5)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--tune-at", type=int, nargs="+", default=[4096],
                   help="the batch sizes at which every setting is timed")
    p.add_argument("--host-threads", type=int, nargs="*", default=[],
                   help="also time the host's C auction on these thread counts, and jv, on the same costs")
    p.add_argument("--host-max-seconds", type=float, default=3.0,
                   help="a host solver is not timed at larger batches once one solve took longer than this")
    p.add_argument("--data-dir", default="data")
    a = p.parse_args()
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    n_max = max(a.batch_sizes + a.tune_at)
    slow = set()  # host solvers past --host-max-seconds
    try:
        from immiscible.data import load_dataset
        images = load_dataset("cifar10", "train", a.data_dir).tensor(slice(0, n_max)).flatten(1)
    except Exception as err:  # noqa: BLE001 - a profile without data still says something
        print("no CIFAR-10 here, uniform vectors instead:", err)
        images = torch.rand(n_max, 3072) * 2 - 1
    rows = []
    for B in a.batch_sizes:
        settings = SETTINGS if B in a.tune_at else SETTINGS[:1]
        for setting in [s for s in settings if a.device.startswith("cuda") or not s.get("graphs")]:
            g = torch.Generator().manual_seed(B)
            x0 = images[torch.randperm(len(images), generator=g)[:B]].to(a.device, torch.float16)
            noise = torch.randn(x0.shape, generator=g).to(a.device, torch.float16)
            for repeat in range(3 if B <= 4096 else 2):  # the first is a warm-up
                sync()
                t0 = time.perf_counter()
                cost = image_noise_distance(x0, noise, dtype=torch.float32)
                sync()
                t1 = time.perf_counter()
                perm, rep = solve_auction(cost, **setting)
                sync()
                t2 = time.perf_counter()
            row = {"batch_size": B, "setting": ",".join(f"{k}={v}" if isinstance(v, bool) else f"{k}={v:g}"
                                                      for k, v in setting.items()) or "default",
                   "distance_ms": 1e3 * (t1 - t0), "solve_ms": 1e3 * (t2 - t1), "rounds": rep.rounds,
                   "phases": rep.phases, "unassigned": rep.unassigned, "freed": rep.freed,
                   "certified": rep.certified, "max_violation": rep.max_violation, "device": a.device,
                   "hardware": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"}
            print(row, flush=True)
            rows.append(row)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(a.out, index=False)
        if a.host_threads and native.auction_kernel() is not None:
            rows += host_rows(cost.cpu().numpy(), a.host_threads, a.host_max_seconds, slow)
            pd.DataFrame(rows).to_csv(a.out, index=False)


def host_rows(cost, threads, max_seconds, slow):
    """The host solvers on the same fp32 costs: the C auction per thread count, then jv; each timed twice (the
    first a warm-up) unless it is in ``slow``, which collects those that took longer than ``max_seconds``. Column
    ``certified``: the permutation's float64 total equals scipy's optimum on the same costs (checked up to B=4096,
    None above: scipy takes minutes there)."""
    import os

    import numpy as np
    from scipy.optimize import linear_sum_assignment
    B, rows = cost.shape[0], []
    c64 = cost.astype(np.float64)
    optimum = c64[np.arange(B), linear_sum_assignment(c64)[1]].sum() if B <= 4096 else None
    solvers = [(f"auction_cpu,threads={t}", lambda t=t: native.solve_auction_cpu(cost, threads=t)) for t in threads]
    solvers.append(("jv_cpu", lambda: (native.solve_jv(cost), None, {})))
    solvers += [(f"jv_cpu,threads={t}", lambda t=t: (native.solve_jv(cost, threads=t), None, {})) for t in threads
                if t > 1]
    for name, solve in solvers:
        if name in slow:
            continue
        for repeat in range(2):
            t0 = time.perf_counter()
            perm, _, stats = solve()
            seconds = time.perf_counter() - t0
            if seconds > max_seconds:
                slow.add(name)
                break
        total = c64[np.arange(B), perm].sum()
        certified = None if optimum is None else bool(abs(total - optimum) <= 1e-9 * abs(optimum))
        row = {"batch_size": B, "setting": name, "distance_ms": float("nan"), "solve_ms": 1e3 * seconds,
               "rounds": stats.get("bids_or_rounds"), "phases": stats.get("phases"),
               "unassigned": stats.get("unassigned"), "freed": stats.get("freed"), "certified": certified,
               "max_violation": float("nan"), "device": "cpu", "hardware": f"{os.cpu_count()} logical CPUs"}
        print(row, flush=True)
        rows.append(row)
    return rows

if __name__ == "__main__":
    main()
