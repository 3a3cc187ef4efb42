"""Images/s of an experiment's runs on one device, three ways, measured in the same process tree and run:

- ``processes``: every run as its own process (``python -m immiscible.engine``-style ``train``), all at once: how
  the DVC matrix trains them today, the baseline;
- ``single``: one run alone in this process (``train``);
- ``side_by_side``: every run in this process (``train_side_by_side``; ``vmap`` on a GPU, ``loop`` on a CPU);
  ``side_by_side_vmap``: stacked (vmap) whatever the device (on a CPU the default is ``loop``);
  ``side_by_side_compiled``: stacked with the stacked loss compiled (``torch.compile``).

Every mode trains the real engine (data order, flips, noise drawn and paired by the run's method, loss, AdamW,
clipping, EMA) on random uint8 images of the profile's size, for ``steps`` steps; its rate is taken from the runs'
own logs between the log at ``warmup`` steps and the last one (set-up, compilation and the final save excluded).
For ``processes``, the rate is every process's images after its warm-up divided by the wall time from the first
process's warm-up to the last process's end (so time a process waits for the others counts against it).

The model's FLOPs per image (forward + backward, ``torch.utils.flop_counter``) give the achieved FLOP/s of each
mode and its fraction of the device's peak, the peak being measured in the same run: the best of a few large
matrix products (bf16 on a GPU, fp32 on a CPU).

    python -m immiscible.experiments.runs_throughput                       # params.yaml group runs_throughput
    python -m immiscible.experiments.runs_throughput --setting gpu --out results/device/runs_throughput_cuda.csv
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from immiscible.config import from_dict, load_yaml_group, to_dict
from immiscible.engine.config import TrainConfig
from immiscible.engine.loop import train
from immiscible.engine.side_by_side import train_side_by_side
from immiscible.experiments.timing import hardware_description
from immiscible.io import atomic_write_text
from immiscible.models import build_unet

MODES = ("processes", "single", "side_by_side", "side_by_side_vmap", "side_by_side_compiled")
DEFAULT_MODES = MODES[:3]  # the others only where a setting asks


def flops_per_image(cfg: TrainConfig, device: torch.device, batch: int = 8) -> float:
    """FLOPs of one training image (forward and backward of the UNet) by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_unet(cfg.model, cfg.resolution, 3, cfg.dropout).to(device)
    x = torch.randn(batch, 3, cfg.resolution, cfg.resolution, device=device)
    t = torch.randint(0, cfg.num_train_timesteps, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t).sample.square().mean().backward()
    return counter.get_total_flops() / batch


def matmul_peak(device: torch.device, n: int | None = None, repeats: int = 5) -> float:
    """Measured FLOP/s of the device's best case: an n x n x n matrix product (bf16 on a GPU, fp32 on a CPU)."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 2):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10 if cuda else 1):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:  # two warm-ups
            best = min(best, (time.perf_counter() - start) / (10 if cuda else 1))
    return 2 * n ** 3 / best


def run_configs(setting: dict, root: Path) -> list[TrainConfig]:
    """The setting's runs (``methods`` x ``seeds`` of one ``train`` config), each in its own folder under root."""
    base = from_dict(TrainConfig, {**setting["train"], "progress": False, "num_images": 0})
    steps = int(setting["steps"])
    base = replace(base, steps=steps, log_every=int(setting["warmup"]), checkpoint_every=steps, snapshot_every=0)
    return [replace(base, method=m, seed=int(s), output_dir=str(root / f"{m}-{s}"))
            for m in setting["methods"] for s in setting["seeds"]]


def random_images(cfg: TrainConfig, n: int = 4096) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, cfg.resolution, cfg.resolution), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def _window(run_dir: Path, warmup: int) -> tuple[int, float, float]:
    """(steps, seconds) of a run's log between the log at ``warmup`` steps and its last log, and that last log's
    elapsed seconds."""
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    first = next(r for r in log if r["step"] == warmup)
    last = log[-1]
    return last["step"] - first["step"], last["elapsed_s"] - first["elapsed_s"], first["elapsed_s"]


def measure_single(cfgs: list[TrainConfig], device: torch.device) -> float:
    """Images/s of the first run trained alone in this process."""
    cfg = cfgs[0]
    train(replace(cfg, output_dir=cfg.output_dir + "-single"), images=random_images(cfg))
    steps, seconds, _ = _window(Path(cfg.output_dir + "-single"), cfg.log_every)
    return steps * cfg.batch_size / seconds


def measure_side_by_side(cfgs: list[TrainConfig], device: torch.device, stack: str = "auto",
                         compile: bool = False) -> float:
    """Images/s of every run trained side by side in this process (``stack``: train_side_by_side's; ``compile``:
    its stacked loss compiled)."""
    cfgs = [replace(c, output_dir=f"{c.output_dir}-{stack}{'-compiled' if compile else ''}") for c in cfgs]
    train_side_by_side(cfgs, images=random_images(cfgs[0]), device=device, stack=stack, compile=compile)
    steps, seconds, _ = _window(Path(cfgs[0].output_dir), cfgs[0].log_every)
    return len(cfgs) * steps * cfgs[0].batch_size / seconds


def measure_processes(cfgs: list[TrainConfig], device: torch.device) -> float:
    """Images/s of every run as its own process, all started at once."""
    procs = []
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(cfgs)))}
    for cfg in cfgs:
        cfg = replace(cfg, output_dir=cfg.output_dir + "-process")
        command = [sys.executable, "-m", "immiscible.experiments.runs_throughput", "--worker", json.dumps(to_dict(cfg))]
        procs.append((cfg, subprocess.Popen(command, env=env)))
    results = []
    for cfg, proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"the training process of {cfg.output_dir} failed (exit {proc.returncode})")
        results.append(json.loads((Path(cfg.output_dir) / "worker.json").read_text()))
    start = min(r["warm_at"] for r in results)
    end = max(r["end_at"] for r in results)
    return sum(r["steps"] for r in results) * cfgs[0].batch_size / (end - start)


def _worker(cfg_json: str) -> None:
    """One process of ``measure_processes``: train the run, record when its warm-up ended and its training ended
    on the wall clock."""
    cfg = from_dict(TrainConfig, json.loads(cfg_json))
    if torch.cuda.is_available():
        torch.cuda.init()
    summary = train(cfg, images=random_images(cfg))
    returned = time.time()
    steps, seconds, warm_elapsed = _window(Path(cfg.output_dir), cfg.log_every)
    loop_start = returned - summary["seconds"]  # the final save lies after the last log: a small overestimate
    atomic_write_text(Path(cfg.output_dir) / "worker.json", json.dumps(
        {"steps": steps, "warm_at": loop_start + warm_elapsed, "end_at": loop_start + warm_elapsed + seconds}))


MEASURES = {"processes": measure_processes, "single": measure_single, "side_by_side": measure_side_by_side,
            "side_by_side_vmap": lambda cfgs, device: measure_side_by_side(cfgs, device, "vmap"),
            "side_by_side_compiled": lambda cfgs, device: measure_side_by_side(cfgs, device, "vmap", compile=True)}


def runs_throughput(setting: dict, name: str, device: torch.device | None = None, peak: float | None = None,
                    workdir: str | Path | None = None) -> pd.DataFrame:
    """One row per mode of ``setting`` (``train``, ``methods``, ``seeds``, ``steps``, ``warmup``, ``modes``,
    ``repeats``): the median images/s over the repeats (modes alternate within a repeat), the median ratio to the
    ``processes`` baseline and to ``single`` within a repeat (with the range over repeats), FLOP/s and its share
    of the peak."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    modes = tuple(setting.get("modes", DEFAULT_MODES))
    repeats = int(setting.get("repeats", 1))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {MODES}")
    if int(setting["steps"]) < 2 * int(setting["warmup"]):
        raise ValueError(f"steps={setting['steps']} must be at least twice warmup={setting['warmup']}")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cfgs = run_configs(setting, Path(tmp))
        flops = flops_per_image(cfgs[0], device)
        peak = peak or matmul_peak(device)
        for r in range(repeats):
            for mode in modes:
                folder = Path(tmp) / f"repeat{r}"
                try:
                    rate = MEASURES[mode](run_configs(setting, folder), device)
                except Exception as e:  # a mode that fails here (e.g. compilation) is reported, not hidden
                    if mode in ("processes", "single"):
                        raise
                    print(f"{name} {mode} FAILED: {type(e).__name__}: {e}", flush=True)
                    rate = float("nan")
                rates[mode].append(rate)
                print(f"{name} repeat {r} {mode}: {rate:.0f} images/s", flush=True)

    def ratios(mode: str, base: str) -> list[float]:
        return [a / b for a, b in zip(rates[mode], rates[base])] if base in rates else [float("nan")]

    rows = []
    for mode, values in rates.items():
        vs_single = ratios(mode, "single")
        rows.append({"setting": name, "mode": mode, "runs": len(cfgs) if mode != "single" else 1,
                     "model": cfgs[0].model, "resolution": cfgs[0].resolution, "batch_size": cfgs[0].batch_size,
                     "mixed_precision": cfgs[0].mixed_precision if device.type == "cuda" else "no",
                     "steps_timed": int(setting["steps"]) - int(setting["warmup"]), "repeats": repeats,
                     "images_per_s": statistics.median(values),
                     "vs_processes": statistics.median(ratios(mode, "processes")),
                     "vs_single": statistics.median(vs_single), "vs_single_min": min(vs_single),
                     "vs_single_max": max(vs_single), "gflops_per_image": flops / 1e9,
                     "tflops_per_s": statistics.median(values) * flops / 1e12, "peak_tflops_per_s": peak / 1e12,
                     "fraction_of_peak": statistics.median(values) * flops / peak,
                     "device": device.type, "hardware": hardware_description(str(device))})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Images/s of an experiment's runs: separate processes, one run, side by "
                                            "side; FLOPs and share of the device's peak.")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--group", default="runs_throughput")
    p.add_argument("--setting", action="append", help="the group's settings to measure (default: its `run` list)")
    p.add_argument("--out", default="results/tables/runs_throughput.csv")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return _worker(a.worker)
    group = load_yaml_group(a.params, a.group)
    names = a.setting or group.get("run", [])
    missing = [n for n in names if n not in group.get("settings", {})]
    if missing or not names:
        raise ValueError(f"settings {missing or names} not in params.yaml {a.group}.settings "
                         f"({sorted(group.get('settings', {}))})")
    frames = [runs_throughput(group["settings"][n], n) for n in names]
    df = pd.concat(frames, ignore_index=True)
    atomic_write_text(a.out, df.to_csv(index=False))
    print(df[["setting", "mode", "runs", "images_per_s", "vs_processes", "vs_single", "vs_single_min",
              "vs_single_max", "gflops_per_image", "tflops_per_s", "fraction_of_peak"]].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
