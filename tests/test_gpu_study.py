"""The GPU study's plumbing on the CPU: tools/gpu_study.sh with the `gpu_smoke` profile (the gpu profile's shape at
smoke size: 9 runs side by side, 3 methods x 3 seeds, in the unconditional and consistency experiments, and each
ablation arm's runs side by side) goes from prepared data to the evaluations' tables in the GPU results folder, and
the report reads them as its `gpu` setting."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from immiscible.experiments.unconditional import setup

ROOT = Path(__file__).resolve().parents[1]


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
def test_gpu_study_runs_end_to_end_in_its_smoke_form(device_check_dry_run):
    """The GPU check's dry run runs the study as a GPU machine would (tools/gpu_study.sh gpu_smoke)."""
    check, r = device_check_dry_run
    log = (check / "device_check.log").read_text()   # this part's outcome (the device check's test reads the rest)
    assert "== gpu_quick" in log and "== gpu_quick FAILED" not in log, r.stdout[-3000:] + r.stderr[-3000:]
    out, runs = check / "gpu", check / "checkpoints"
    fid = pd.read_csv(out / "tables" / "unconditional_fid.csv")
    assert set(fid.method) == {"vanilla", "exact", "knn"} and set(fid.seed) == {0, 1, 2}
    assert set(fid.step) == {3, 6} and fid.fd.notna().all()
    paired = pd.read_csv(out / "tables" / "unconditional_paired.csv")
    assert {"exact", "knn"} <= set(paired.method)
    seconds = pd.read_csv(out / "tables" / "gpu_study_seconds_gpu_smoke.csv")
    assert list(seconds.part) == ["classifier", "train", "evaluate", "consistency_classifier", "consistency_train",
                                  "consistency_evaluate", "ablation_train", "ablation_classifier",
                                  "ablation_evaluate"]
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
