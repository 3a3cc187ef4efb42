"""Benchmark: what the assignment costs inside training (a ratio against vanilla measured in the same run).

    python -m immiscible.experiments.bench     # params.yaml group `assignment_overhead` (the DVC stage)

For each batch size it trains the profile's model for ``steps`` steps with ``vanilla`` noise, with ``exact`` assigned
inline, and with ``exact`` assigned in a background thread (``assign_background``: what ``auto`` picks on a GPU), in
alternating order, and reports the median seconds per step and the median over repeats of the ratio exact / vanilla
within a repeat (with its range: the spread is the benchmark's noise). Writes
``results/tables/assignment_overhead.csv``. On a machine with a GPU it trains there (with the profile's
``mixed_precision``) and the solve runs on the CPU; a batch size that does not fit is recorded as NaN. Nothing here
is a pass/fail test: the numbers are printed and saved.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace

import pandas as pd
import torch

from immiscible.config import from_dict, group_values, load_profile
from immiscible.io import atomic_write_text
from immiscible.experiments.timing import hardware_description
from immiscible.data import load_images
from immiscible.engine.config import TrainConfig
from immiscible.engine.loop import train

VARIANTS = (("vanilla", "inline"), ("exact", "inline"), ("exact", "thread"))  # (method, where the assignment runs)


def seconds_per_step(cfg: TrainConfig, images, warmup: int = 2) -> tuple[float, float]:
    """Median wall time of one training step after ``warmup`` steps, and the median time of the step's assignment
    (``assign_ms`` in the run's per-step log, wherever it ran; 0 for vanilla). Medians ignore steps slowed down by
    something else on the machine."""
    import json
    with tempfile.TemporaryDirectory() as tmp:
        train(replace(cfg, output_dir=tmp, log_every=1), images=images)
        log = [json.loads(line) for line in open(f"{tmp}/log.jsonl")]
    elapsed = [r["elapsed_s"] for r in log]
    step_s = statistics.median(b - a for a, b in zip(elapsed[warmup:], elapsed[warmup + 1:]))
    return step_s, statistics.median(r["assign_ms"] for r in log[warmup + 1:])


def assignment_overhead(profile: str, batch_sizes, steps: int, repeats: int, params: str = "params.yaml",
                        data_dir: str = "data") -> pd.DataFrame:
    """Seconds per training step for each variant and batch size, and the ratio to vanilla (no defaults here: the
    values of the DVC stage live in params.yaml's ``assignment_overhead``)."""
    if steps < 4:
        raise ValueError(f"steps must be >= 4 (2 warm-up steps are discarded), got {steps}")
    group, prof = load_profile(params, "unconditional", profile)
    base = {**prof["train"], "dataset": group.get("dataset", "cifar10")}  # the experiment's one dataset
    base.update(progress=False, checkpoint_every=10**9, snapshot_every=0, log_every=10**9, data_dir=data_dir)
    cfg0 = from_dict(TrainConfig, base)
    images = load_images(cfg0.dataset, "train", data_dir, cfg0.resolution)
    device = "cuda" if torch.cuda.is_available() else "cpu"   # where accelerate trains
    rows = []
    for B in batch_sizes:
        times: dict[tuple, list] = {v: [] for v in VARIANTS}
        try:
            for _ in range(repeats):
                for method, background in VARIANTS:
                    cfg = replace(cfg0, batch_size=B, steps=steps, method=method, assign_background=background)
                    times[(method, background)].append(seconds_per_step(cfg, images))
        except torch.cuda.OutOfMemoryError:
            print(f"batch size {B}: out of GPU memory; recorded as NaN")
            times = {v: [(float("nan"), float("nan"))] for v in VARIANTS}
            torch.cuda.empty_cache()
        vanilla = [t for t, _ in times[VARIANTS[0]]]
        for (method, background), runs in times.items():
            ts = [t for t, _ in runs]
            # each repeat runs the variants back to back: its ratio to that repeat's vanilla cancels slow drift
            ratios = [t / v for t, v in zip(ts, vanilla)]
            assign_ms = statistics.median(a for _, a in runs)
            rows.append({"profile": profile, "model": cfg0.model, "resolution": cfg0.resolution, "batch_size": B,
                         "method": method, "assignment_runs": background, "seconds_per_step": statistics.median(ts),
                         "ratio_vs_vanilla": statistics.median(ratios), "ratio_min": min(ratios),
                         "ratio_max": max(ratios),
                         # the assignment's own time per step (where it ran), over vanilla's step: inline, this is
                         # the overhead measured directly, without the step-to-step noise of the ratio
                         "assign_ms": assign_ms, "assign_share": assign_ms / 1000 / statistics.median(vanilla),
                         "steps_timed": steps - 3, "repeats": len(ts),
                         "mixed_precision": cfg0.mixed_precision if device == "cuda" else "no",
                         "hardware": hardware_description(device)})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Training-step overhead of the exact assignment vs vanilla.")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--group", default="assignment_overhead", help="params.yaml group (profile, batch_sizes, "
                   "steps, repeats); command-line values override it")
    p.add_argument("--profile", default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default="results/tables/assignment_overhead.csv")
    a = p.parse_args(argv)
    g = group_values(a.params, a.group, ("profile", "batch_sizes", "steps", "repeats"))
    df = assignment_overhead(a.profile or g["profile"], a.batch_sizes or g["batch_sizes"], a.steps or g["steps"],
                             a.repeats or g["repeats"], a.params, a.data_dir)
    atomic_write_text(a.out, df.to_csv(index=False))
    print(df[["batch_size", "method", "assignment_runs", "seconds_per_step", "ratio_vs_vanilla", "ratio_min",
              "ratio_max", "assign_ms", "assign_share"]].round(4).to_string(index=False))


if __name__ == "__main__":
    main()
