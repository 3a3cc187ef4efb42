"""The last-step comparison with the ablation's flow-matching runs: it reads the arm's vanilla and exact runs (no
training of its own), the table holds the prediction-to-truth distance per run, seed, noise and t (and the dataset
mean's), the notebook draws it, and settings that cannot give a well-conditioned prediction are refused."""
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest

from immiscible.engine.loop import train
from immiscible.experiments import ablation_train as T, last_step as L
from conftest import write_params
from test_unconditional_notebook import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, dataset, **last_step) -> Path:
    return write_params(tmp_path, unconditional=dict(dataset=str(dataset), profile="smoke"),
                        ablation=dict(dataset=str(dataset), seeds=[0, 1], profile="smoke"), last_step=last_step)


@pytest.mark.slow
def test_flow_last_step_end_to_end(tmp_path):
    dataset = make_image_folder(tmp_path / "two", per_class=16, size=8)
    path = _params(tmp_path, dataset)
    data, ablation = tmp_path / "data", tmp_path / "ckpt" / "ablation"
    ab = T.setup("smoke", str(path), data_dir=str(data), checkpoint_dir=str(ablation))
    for run in ("flow-vanilla", "flow-exact"):
        for seed in ab.seeds:
            train(ab.run_config(run, seed))
    exp = L.setup("smoke", params=str(path), data_dir=str(data), ablation_dir=str(ablation),
                  checkpoint_dir=str(tmp_path / "ckpt" / "last_step"), output_dir=str(tmp_path / "results"))
    assert exp.train.objective == "flow" and exp.methods == ("flow-vanilla", "flow-exact")
    assert exp.run_dir("flow-exact", 1) == ab.run_dir("flow-exact", 1)  # the ablation's runs, not copies
    table = L.evaluate(exp)
    assert set(table.method) == {"dataset mean image", *exp.methods}
    runs = table[table.seed >= 0]
    assert len(runs) == len(exp.methods) * len(exp.seeds) * 4 * 2  # 4 timesteps x assigned/random noise
    assert runs.mean_l2.gt(0).all() and runs.t.max() == 1.0    # flow: t = 1 is the noise itself
    pm.execute_notebook(str(ROOT / "notebooks" / "last_step.ipynb"), str(tmp_path / "nb.ipynb"),
                        parameters=dict(profile="smoke", params=str(path), data_dir=str(data),
                                        ablation_dir=str(ablation), checkpoint_dir=exp.checkpoint_dir,
                                        output_dir=exp.output_dir), kernel_name="python3", progress_bar=False)
    assert (Path(exp.output_dir) / "figures" / "flow_last_step.png").stat().st_size > 1000
    written = pd.read_csv(exp.table("last_step"))
    assert exp.table("last_step").name == "flow_last_step.csv"
    assert len(written) == len(table) and np.allclose(written.mean_l2, table.mean_l2, rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(arm="base"), "well-conditioned"),          # the eps arm: its prediction at t=T-1 is clipped noise
    (dict(arm="px32"), "not an arm"),
    (dict(variants=["exact", "knn64"]), "need vanilla"),
])
def test_bad_last_step_settings_are_refused(tmp_path, change, message):
    path = _params(tmp_path, tmp_path / "none", **change)
    with pytest.raises(ValueError, match=message):
        L.setup("smoke", params=str(path))
