"""The GPU study's plumbing on the CPU: tools/gpu_study.sh with the `gpu_smoke` profile (the gpu profile's shape at
smoke size: 9 runs side by side, 3 methods x 3 seeds, in the unconditional and consistency experiments, and each
ablation arm's runs side by side) goes from prepared data to the evaluations' tables in the GPU results folder, and
the report reads them as its `gpu` setting."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from immiscible.experiments.unconditional import setup

ROOT = Path(__file__).resolve().parents[1]


def write_prepared(folder: Path, n_train: int = 96, n_test: int = 64) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    classes = np.array([f"c{i}" for i in range(10)])
    for split, n in (("train", n_train), ("test", n_test)):
        np.savez(folder / f"{split}.npz", images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, n), classes=classes)


def test_gpu_profiles_train_their_runs_side_by_side():
    from immiscible.experiments import consistency
    params = ROOT / "params.yaml"
    for profile in ("gpu_smoke", "gpu_quick", "gpu"):
        exp = setup(profile, params=str(params))
        assert exp.side_by_side and exp.methods == ("vanilla", "exact", "knn") and len(exp.seeds) == 3
    for profile in ("gpu_smoke", "gpu"):
        exp = consistency.setup(profile, params=str(params))
        assert exp.side_by_side and exp.train.resolution == (32 if profile == "gpu" else 8)
    assert consistency.setup("gpu", params=str(params)).train.steps >= 20_000
    quick, full = setup("gpu_quick", params=str(params)), setup("gpu", params=str(params))
    assert quick.train.resolution == full.train.resolution == 32 and quick.train.model == full.train.model
    assert full.train.steps >= 20_000 and full.train.steps >= 10 * quick.train.steps
    cpu = yaml.safe_load(params.read_text())["unconditional"]
    assert cpu["profile"] == "cpu"  # `dvc repro` stays the CPU pipeline


@pytest.mark.slow
def test_gpu_study_runs_end_to_end_in_its_smoke_form(tmp_path):
    write_prepared(tmp_path / "data" / "cifar10")
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(tmp_path / "data"),
           "CHECKPOINT_ROOT": str(tmp_path / "checkpoints")}
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_study.sh"), "gpu_smoke", str(out)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    fid = pd.read_csv(out / "tables" / "unconditional_fid.csv")
    assert set(fid.method) == {"vanilla", "exact", "knn"} and set(fid.seed) == {0, 1, 2}
    assert set(fid.step) == {3, 6} and fid.fd.notna().all()
    paired = pd.read_csv(out / "tables" / "unconditional_paired.csv")
    assert {"exact", "knn"} <= set(paired.method)
    seconds = pd.read_csv(out / "tables" / "gpu_study_seconds_gpu_smoke.csv")
    assert list(seconds.part) == ["classifier", "train", "evaluate", "consistency_classifier", "consistency_train",
                                  "consistency_evaluate", "ablation_train", "ablation_classifier",
                                  "ablation_evaluate"]
    runs = tmp_path / "checkpoints"
    for m in ("vanilla", "exact", "knn"):  # every run trained side by side, in its own folder
        for experiment in ("unconditional", "consistency"):
            log = (runs / experiment / "gpu_smoke" / f"{m}-0" / "log.jsonl").read_text()
            assert '"runs_side_by_side": 9' in log
    assert '"runs_side_by_side": 15' in (runs / "ablation" / "gpu_smoke" / "base-knn2-0" / "log.jsonl").read_text()
    consistency = pd.read_csv(out / "tables" / "consistency_fid.csv")
    assert set(consistency.method) == {"vanilla", "exact", "knn"} and consistency.fd.notna().all()
    ablation = pd.read_csv(out / "tables" / "ablation_fid.csv")
    assert {"base-exact", "base-knn32", "flow-knn8", "px8-vanilla"} <= set(ablation.run)
    from immiscible.experiments.report import horizon_trends  # the report's gpu column reads these tables
    gpu = horizon_trends(out / "tables", "gpu")
    assert set(gpu.comparison) >= {"exact - vanilla", "knn - vanilla"}
