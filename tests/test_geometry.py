"""What the assignment does to the noise: KNN shortens the kept noise more as k grows (k=1 is the Gaussian), the
exact assignment keeps every draw (a permutation: the same norms), the noise-space projection of the assigned noises
is a permutation of the random ones and lines up with the images; the notebook writes its tables and figures."""
import numpy as np
import pandas as pd
import papermill as pm
import pytest
import torch

from conftest import make_archive, make_image_folder
from immiscible.data import load_dataset
from immiscible.experiments import geometry as G
from test_notebooks import ROOT


@pytest.fixture
def dataset(tmp_path):
    folder = make_image_folder(tmp_path / "src", classes=("a", "b", "c"), per_class=30, size=(8, 8))
    return load_dataset(str(make_archive(folder, tmp_path / "tiny.tar.gz")), "train", str(tmp_path / "data"))


def test_knn_shortens_the_noise_with_k_and_the_assignment_keeps_it(dataset):
    table = G.knn_marginal(dataset, ks=(1, 4, 32), batch_size=32, num_batches=4, resolution=8).set_index("method")
    knn = table.loc["knn"].set_index("k")
    assert abs(knn.loc[1, "norm_change_pct"]) < 1.0
    assert knn.loc[1, "norm_change_pct"] > knn.loc[4, "norm_change_pct"] > knn.loc[32, "norm_change_pct"]
    assert knn.loc[32, "distance_change_pct"] < knn.loc[4, "distance_change_pct"] < 0
    # the exact assignment permutes the draws of each batch: the mean norm is the random draws' own
    g = torch.Generator().manual_seed(0)
    norms = []
    for _ in range(4):
        torch.randperm(len(dataset), generator=g)
        draw = torch.randn((32, 3, 8, 8), generator=g)
        norms.append(float(draw.flatten(1).norm(dim=1).mean()) / np.sqrt(192))
    assert table.loc["exact", "norm_ratio"] == pytest.approx(np.mean(norms), rel=1e-6)
    assert table.loc["exact", "distance_change_pct"] < 0
    with pytest.raises(ValueError, match="integers >= 1"):
        G.knn_marginal(dataset, ks=(0,))


def test_noise_space_assigned_is_a_permutation_that_lines_up(dataset):
    points, table = G.noise_space(dataset, batch_size=64, resolution=8)
    assert sorted(points["assigned"][:, 0].tolist()) == pytest.approx(sorted(points["random"][:, 0].tolist()))
    corr = table.set_index("pairing").corr_first_direction
    assert corr["assigned"] > corr["random"] + 0.2


@pytest.mark.slow
def test_geometry_notebook(tmp_path):
    folder = make_image_folder(tmp_path / "src", classes=("a", "b"), per_class=40, size=(8, 8))
    archive = make_archive(folder, tmp_path / "tiny.tar.gz")
    out = tmp_path / "results"
    pm.execute_notebook(str(ROOT / "notebooks" / "assignment_geometry.ipynb"), str(tmp_path / "nb.ipynb"),
                        parameters=dict(dataset=str(archive), data_dir=str(tmp_path / "data"), resolutions=[8, 4],
                                        knn_ks=[1, 4], batch_size=16, num_batches=3, noise_space_batch=32,
                                        output_dir=str(out)), kernel_name="python3", cwd=str(ROOT),
                        progress_bar=False)
    table = pd.read_csv(out / "tables" / "knn_marginal.csv")
    assert sorted(set(table.resolution)) == [4, 8] and len(table) == 2 * 3
    assert len(pd.read_csv(out / "tables" / "noise_space.csv")) == 2
    for name in ("knn_marginal", "noise_space"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
