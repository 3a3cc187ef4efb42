"""The paper-table notebooks run end to end through papermill on tiny settings and write their tables."""
import json
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

from conftest import make_archive, make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def _run(name, tmp_path, **params):
    out_nb = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out_nb), parameters=params,
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    return out_nb


@pytest.fixture
def tiny_archive(tmp_path):
    folder = make_image_folder(tmp_path / "src", classes=("a", "b", "c"), per_class=12, size=(8, 8))
    return make_archive(folder, tmp_path / "tiny.tar.gz")


@pytest.mark.slow
def test_distance_reduction_notebook(tmp_path, tiny_archive):
    out = tmp_path / "results"
    _run("distance_reduction", tmp_path, dataset=str(tiny_archive), batch_sizes=[4, 16], num_batches=3,
         output_dir=str(out), representations=["pixels", "pixels_standardized"])
    df = pd.read_csv(out / "tables" / "distance_reduction.csv")
    for col in ["dataset", "batch_size", "dim", "mean_distance_random", "mean_distance_assigned",
                "delta_mean_distance_pct", "ci95_pct"]:
        assert col in df.columns
    assert list(df.batch_size) == [4, 16, 4, 16] and (df.dim == 192).all()
    assert (df.mean_distance_assigned < df.mean_distance_random).all()
    assert (out / "figures" / "distance_reduction.png").stat().st_size > 1000


@pytest.mark.slow
def test_assignment_timing_notebook(tmp_path):
    out = tmp_path / "results"
    nb = _run("assignment_timing", tmp_path, batch_sizes=[8, 32], methods=["exact", "exact_scipy", "greedy", "knn"],
              dataset=None, dim=48, repeats=2, knn_k=4, output_dir=str(out))
    df = pd.read_csv(out / "tables" / "assignment_timing.csv")
    for col in ["method", "batch_size", "dim", "device", "distance_ms", "assign_ms", "total_ms", "hardware"]:
        assert col in df.columns
    assert len(df) == 8 and (df.dim == 48).all() and (df.device == "cpu").all()
    exact = df[df.method == "exact"].delta_mean_distance_pct.values
    scipy = df[df.method == "exact_scipy"].delta_mean_distance_pct.values
    assert exact == pytest.approx(scipy)  # the same optimum, whichever solver
    assert (out / "figures" / "assignment_timing.png").exists()
    assert "speed-up" in json.dumps(json.loads(nb.read_text())["cells"])
