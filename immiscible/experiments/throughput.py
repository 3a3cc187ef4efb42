"""Training throughput of a profile's model on this machine: steps/s of the engine's step (forward, backward, AdamW,
EMA) with the settings that could buy speed on a CPU, each against the default measured in the same run.

    python -m immiscible.experiments.throughput      # params.yaml group `training_throughput` (the DVC stage)

Variants: ``default`` (what the runs use: fp32, contiguous NCHW, torch's default threads), ``channels_last``
(NHWC memory format for model and inputs), ``compile`` (``torch.compile`` with the inductor backend), ``bf16``
(the forward under ``torch.autocast("cpu", bfloat16)``: fast where the CPU has bf16 units such as AMX, slow where it
emulates them; the engine trains in fp32 on a CPU today) and ``threads=N`` (``torch.set_num_threads``). Each variant
is timed ``repeats`` times, alternating, and reported as the median steps/s and the median ratio to the default of
the same repeat. Nothing here changes how the pipeline trains:
a variant worth having would change the numerics, so it would need its own rerun.
"""
from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F

from immiscible.config import from_dict, group_values, load_profile
from immiscible.engine.config import TrainConfig
from immiscible.experiments.timing import hardware_description
from immiscible.io import atomic_write_text
from immiscible.models import build_unet

VARIANTS = ("default", "channels_last", "compile", "bf16", "threads=1")


def _steps_per_second(cfg: TrainConfig, variant: str, steps: int, warmup: int) -> tuple[float, str]:
    """(steps/s, the dtype of the model's output) of ``steps`` training steps of the profile's model on random data,
    timed after ``warmup`` steps."""
    threads = torch.get_num_threads()
    if variant.startswith("threads="):
        torch.set_num_threads(int(variant.split("=")[1]))
    try:
        torch.manual_seed(0)
        model = build_unet(cfg.model, cfg.resolution, 3, cfg.dropout)
        fmt = torch.channels_last if variant == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=fmt).train()
        forward = torch.compile(model) if variant == "compile" else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        ema = [p.detach().clone() for p in model.parameters()]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(cfg.batch_size, 3, cfg.resolution, cfg.resolution, generator=g).to(memory_format=fmt)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=g)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
                out = forward(x, t).sample
            loss = F.mse_loss(out.float(), x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_lerp_(ema, list(model.parameters()), 1 - cfg.ema_decay)
            return str(out.dtype).removeprefix("torch.")

        for _ in range(warmup):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            dtype = step()
        return steps / (time.perf_counter() - start), dtype
    finally:
        torch.set_num_threads(threads)


def training_throughput(profile: str, variants, steps: int, warmup: int, repeats: int,
                        params: str = "params.yaml") -> pd.DataFrame:
    """Median steps/s per variant and its median ratio to ``default`` within a repeat (no defaults here: the values
    of the DVC stage live in params.yaml's ``training_throughput``)."""
    cfg = from_dict(TrainConfig, dict(load_profile(params, "unconditional", profile)[1]["train"]))
    unknown = [v for v in variants if v not in VARIANTS and not v.startswith("threads=")]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {VARIANTS} or threads=N")
    runs: dict[str, list[float]] = {v: [] for v in variants}
    dtypes: dict[str, str] = {}
    for _ in range(repeats):
        for v in variants:
            rate, dtypes[v] = _steps_per_second(cfg, v, steps, warmup)
            runs[v].append(rate)
            print(f"{v}: {runs[v][-1]:.2f} steps/s", flush=True)
    base = runs.get("default")
    rows = []
    for v, rates in runs.items():
        ratios = [r / b for r, b in zip(rates, base)] if base else [float("nan")]
        rows.append({"profile": profile, "model": cfg.model, "resolution": cfg.resolution,
                     "batch_size": cfg.batch_size, "variant": v, "forward_dtype": dtypes[v],
                     "steps_per_s": statistics.median(rates),
                     "ratio_vs_default": statistics.median(ratios), "ratio_min": min(ratios),
                     "ratio_max": max(ratios), "repeats": repeats, "steps_timed": steps,
                     "default_threads": torch.get_num_threads(), "hardware": hardware_description("cpu")})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Training steps/s of a profile's model with CPU speed settings.")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--group", default="training_throughput")
    p.add_argument("--out", default="results/tables/training_throughput.csv")
    a = p.parse_args(argv)
    g = group_values(a.params, a.group, ("profile", "variants", "steps", "warmup", "repeats"))
    df = training_throughput(g["profile"], g["variants"], g["steps"], g["warmup"], g["repeats"], a.params)
    atomic_write_text(a.out, df.to_csv(index=False))
    print(df[["variant", "steps_per_s", "ratio_vs_default", "ratio_min", "ratio_max"]].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
