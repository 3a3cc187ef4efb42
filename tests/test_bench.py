"""The overhead benchmark runs and reports a ratio against vanilla measured in the same run."""
import numpy as np
import pytest
import yaml

import immiscible.experiments.bench as bench
from immiscible.data import prepare_dataset
from conftest import make_image_folder


def test_assignment_overhead_reports_all_variants(tmp_path):
    prepare_dataset(str(make_image_folder(tmp_path / "f", per_class=20, size=(8, 8))), tmp_path / "data" / "tiny")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"unconditional": {"dataset": "tiny", "profiles": {"smoke": {"train": {
        "model": "tiny", "resolution": 8, "batch_size": 8}}}}}))  # the experiment's one dataset
    df = bench.assignment_overhead("smoke", batch_sizes=[8], steps=4, repeats=1, params=str(params),
                                   data_dir=str(tmp_path / "data"))
    assert set(zip(df.method, df.assignment_runs)) == set(bench.VARIANTS)
    assert np.isclose(df[df.method == "vanilla"].ratio_vs_vanilla.iloc[0], 1.0)
    assert (df.seconds_per_step > 0).all()
    with pytest.raises(ValueError, match="steps must be >= 4"):
        bench.assignment_overhead("smoke", steps=3, params=str(params))
