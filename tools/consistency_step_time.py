"""Seconds per training step of consistency training vs the eps objective, vanilla vs exact noise, for the `paper`
profile's model (what a GPU user needs to budget the consistency experiment's `paper` profile). Part of the GPU check
(tools/device_check.sh); on a CPU it runs with `--profile smoke`.

    python tools/consistency_step_time.py --profile paper --batch-size 512 --steps 12 --out OUT/consistency_step_time.csv
"""
import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from immiscible.data import load_images  # noqa: E402
from immiscible.diffusion.consistency import make_consistency_loss  # noqa: E402
from immiscible.engine.loop import train  # noqa: E402
from immiscible.experiments.consistency_train import run_settings  # noqa: E402
from immiscible.experiments.timing import hardware_description  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="paper")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default="results/device/consistency_step_time.csv")
    a = p.parse_args(argv)
    cfg, ct, _, _ = run_settings("params.yaml", a.profile, data_dir=a.data_dir)
    cfg = replace(cfg, steps=a.steps, log_every=1, checkpoint_every=10**9, snapshot_every=0, progress=False,
                  batch_size=a.batch_size or cfg.batch_size)
    images = load_images(cfg.dataset, "train", cfg.data_dir, cfg.resolution)
    rows = []
    for objective in ("eps", "consistency"):
        for method in ("vanilla", "exact"):
            loss_fn = make_consistency_loss(ct, cfg.steps) if objective == "consistency" else None
            with tempfile.TemporaryDirectory() as tmp:
                train(replace(cfg, method=method, output_dir=tmp), images=images, loss_fn=loss_fn)
                log = [json.loads(line) for line in open(f"{tmp}/log.jsonl")]
            elapsed = [r["elapsed_s"] for r in log]
            per_step = statistics.median(b - a for a, b in zip(elapsed[2:], elapsed[3:]))  # after 3 warm-up steps
            rows.append({"objective": objective, "method": method, "model": cfg.model, "resolution": cfg.resolution,
                         "batch_size": cfg.batch_size, "mixed_precision": cfg.mixed_precision,
                         "seconds_per_step": per_step,
                         "assign_ms": statistics.median(r["assign_ms"] for r in log[3:]),
                         "hardware": hardware_description("cuda" if torch.cuda.is_available() else "cpu")})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    base = df[(df.objective == "eps") & (df.method == "vanilla")].seconds_per_step.iloc[0]
    df["ratio_vs_eps_vanilla"] = df.seconds_per_step / base
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out, index=False, float_format="%.6g")
    print(df.to_string())


if __name__ == "__main__":
    main()
