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


@pytest.mark.slow
def test_distance_table_equals_a_direct_call_and_lists_given_as_strings_are_parsed(tmp_path, tiny_archive):
    from immiscible.data import load_dataset
    from immiscible.experiments.distance_reduction import measure_distance_reduction
    out = tmp_path / "results"
    _run("distance_reduction", tmp_path, dataset=str(tiny_archive), batch_sizes="[4, 16]", num_batches=3,
         output_dir=str(out), representations="[pixels]")  # as `papermill -p batch_sizes "[4, 16]"` passes them
    table = pd.read_csv(out / "tables" / "distance_reduction.csv")
    direct = measure_distance_reduction(load_dataset(str(tiny_archive)), [4, 16], 3, 0, "pixels", "exact",
                                        dataset_name=str(tiny_archive))
    for col in ("mean_distance_random", "mean_distance_assigned", "delta_mean_distance_pct", "ci95_pct"):
        assert table[col].to_numpy() == pytest.approx(direct[col].to_numpy(), rel=1e-12)
    with pytest.raises(pm.PapermillExecutionError, match=r"batch_sizes='4, 16' is not a list; pass it as YAML"):
        _run("distance_reduction", tmp_path, dataset=str(tiny_archive), batch_sizes="4, 16", output_dir=str(out))


@pytest.mark.slow
def test_pipeline_run_records_relative_paths_only(tmp_path, tiny_archive, monkeypatch):
    import shutil
    from immiscible.pipeline import run_notebook
    monkeypatch.chdir(tmp_path)  # a project root of its own, as DVC runs stages from the root
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "distance_reduction.ipynb", tmp_path / "notebooks")
    out = run_notebook("distance_reduction", {"dataset": "tiny.tar.gz", "batch_sizes": [4], "num_batches": 2,
                                              "representations": ["pixels"], "profiles": {"ignored": 1}},
                       output_dir="results", notebook_dir=tmp_path / "notebooks")
    text = out.read_text()
    assert str(tmp_path) not in text and str(ROOT) not in text and "site-packages" not in text
    meta = json.loads(text)["metadata"]["papermill"]
    assert meta["input_path"] == "notebooks/distance_reduction.ipynb"
    assert meta["output_path"] == "results/notebooks/distance_reduction.ipynb"
    assert "profiles" not in meta["parameters"]  # only what the notebook declares is passed
