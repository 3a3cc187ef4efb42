"""The overhead benchmark runs and reports a ratio against vanilla measured in the same run."""
from pathlib import Path

import numpy as np
import pytest
import yaml

import immiscible.experiments.bench as bench
from immiscible.data import prepare_dataset
from conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def test_assignment_overhead_reports_all_variants(tmp_path):
    prepare_dataset(str(make_image_folder(tmp_path / "f", per_class=20, size=(8, 8))), tmp_path / "data" / "tiny")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"unconditional": {"dataset": "tiny", "profiles": {"smoke": {"train": {
        "model": "tiny", "resolution": 8, "batch_size": 8}}}}}))  # the experiment's one dataset
    df = bench.assignment_overhead("smoke", batch_sizes=[8], steps=4, repeats=1, params=str(params),
                                   data_dir=str(tmp_path / "data"))
    assert set(zip(df.method, df.assignment_runs)) == set(bench.VARIANTS)
    exact, vanilla = df[df.method == "exact"], df[df.method == "vanilla"].iloc[0]
    assert (exact.assign_ms > 0).all() and vanilla.assign_ms == 0     # the runs' logs: only exact assigned
    assert np.allclose(exact.assign_share, exact.assign_ms / 1000 / vanilla.seconds_per_step)
    assert ((exact.ratio_min <= exact.ratio_vs_vanilla) & (exact.ratio_vs_vanilla <= exact.ratio_max)).all()
    with pytest.raises(ValueError, match="steps must be >= 4"):
        bench.assignment_overhead("smoke", [8], steps=3, repeats=1, params=str(params))


def test_the_ratio_pairs_each_variant_with_the_same_repeats_vanilla(tmp_path, monkeypatch):
    """Slow drift between repeats cancels: each repeat's exact time is divided by that repeat's vanilla time, and the
    table gives the median of those ratios, their range, and the assignment's own time over vanilla's step."""
    prepare_dataset(str(make_image_folder(tmp_path / "f", per_class=20, size=(8, 8))), tmp_path / "data" / "tiny")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"unconditional": {"dataset": "tiny", "profiles": {"smoke": {"train": {
        "model": "tiny", "resolution": 8, "batch_size": 8}}}}}))
    drift = iter([1.0, 1.1, 1.5,    # repeat 1: vanilla, exact inline, exact in a thread (seconds per step)
                  2.0, 2.4, 2.6,    # repeat 2: everything twice as slow, exact relatively slower
                  4.0, 4.2, 4.4])   # repeat 3
    assign = {"vanilla": 0.0, "exact": 8.0}

    def fake(cfg, images, warmup=2):
        return next(drift), assign[cfg.method]
    monkeypatch.setattr(bench, "seconds_per_step", fake)
    df = bench.assignment_overhead("smoke", batch_sizes=[8], steps=4, repeats=3, params=str(params),
                                   data_dir=str(tmp_path / "data")).set_index(["method", "assignment_runs"])
    inline, thread = df.loc[("exact", "inline")], df.loc[("exact", "thread")]
    assert inline.ratio_vs_vanilla == pytest.approx(1.1)          # median of 1.1, 1.2, 1.05
    assert (inline.ratio_min, inline.ratio_max) == pytest.approx((1.05, 1.2))
    assert thread.ratio_vs_vanilla == pytest.approx(1.3) and thread.ratio_max == pytest.approx(1.5)
    assert inline.seconds_per_step == pytest.approx(2.4)           # the median time, for reference
    assert inline.assign_share == pytest.approx(0.008 / 2.0)       # 8 ms over vanilla's median step of 2 s
    assert df.loc[("vanilla", "inline")].ratio_vs_vanilla == 1.0 and inline.repeats == 3


def test_training_throughput_times_each_variant_in_its_precision():
    """The bf16 variant really runs the forward in bfloat16 (and the default in fp32); an unknown variant is refused."""
    from immiscible.experiments.throughput import training_throughput
    df = training_throughput("smoke", ["default", "bf16", "threads=1"], steps=2, warmup=1, repeats=1,
                             params=str(ROOT / "params.yaml"))
    assert dict(zip(df.variant, df.forward_dtype)) == {"default": "float32", "bf16": "bfloat16",
                                                       "threads=1": "float32"}
    assert (df.steps_per_s > 0).all() and df.set_index("variant").ratio_vs_default["default"] == 1.0
    with pytest.raises(ValueError, match="unknown variant"):
        training_throughput("smoke", ["fp8"], steps=2, warmup=1, repeats=1, params=str(ROOT / "params.yaml"))
