"""The last-step comparison with v-objective models: the runs train with the v objective, the table holds the
prediction-to-truth distance per method, seed, noise and t (and the dataset mean's), and the notebook draws it."""
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
import yaml

from immiscible.experiments import last_step as L, unconditional as U
from test_unconditional_notebook import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_v_objective_last_step_end_to_end(tmp_path):
    dataset = make_image_folder(tmp_path / "two", per_class=16, size=16)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["v_objective"].update(dataset=str(dataset), profile="smoke")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    exp = L.setup("smoke", params=str(path), data_dir=str(tmp_path / "data"), checkpoint_dir=str(tmp_path / "ckpt"),
                  output_dir=str(tmp_path / "results"))
    assert exp.train.objective == "v"
    U.train_all(exp)
    table = L.evaluate(exp)
    assert set(table.method) == {"dataset mean image", *exp.methods}
    runs = table[table.seed >= 0]
    assert len(runs) == len(exp.methods) * len(exp.seeds) * 4 * 2  # 4 timesteps x assigned/random noise
    assert runs.mean_l2.gt(0).all() and int(runs.t.max()) == 999
    pm.execute_notebook(str(ROOT / "notebooks" / "last_step.ipynb"), str(tmp_path / "nb.ipynb"),
                        parameters=dict(profile="smoke", params=str(path), checkpoint_dir=exp.checkpoint_dir,
                                        output_dir=exp.output_dir), kernel_name="python3", progress_bar=False)
    assert (Path(exp.output_dir) / "figures" / "v_objective_last_step.png").stat().st_size > 1000
    written = pd.read_csv(exp.table("last_step"))
    assert len(written) == len(table) and np.allclose(written.mean_l2, table.mean_l2, rtol=1e-5)


def test_an_eps_profile_is_refused(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["v_objective"]["profiles"]["smoke"]["train"]["objective"] = "eps"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="well-conditioned"):
        L.setup("smoke", params=str(path))
