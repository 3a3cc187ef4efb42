"""The unconditional experiment end to end on the smoke profile (classifier, training, evaluation, notebook) on a tiny
generated ImageFolder in tmp_path: the tables hold the values their rules give (recomputed here from the written
CSV), the evaluation cache follows the weights and parameters, and the notebook only reads."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from conftest import write_params
from immiscible.experiments import unconditional as U
from immiscible.experiments.experiment import read_log, training_seconds
from immiscible.evaluation.features import train_classifier

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "unconditional.ipynb"


def make_image_folder(root: Path, per_class: int = 40, size: int = 32) -> Path:
    """Two classes of random 32x32 PNGs (dark / bright) with train/ and test/ splits."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for cls, base in (("dark", 60), ("bright", 180)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(rng.normal(base, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def smoke_params(tmp_path: Path, dataset: Path, seeds=(0, 1, 2), **train) -> Path:
    """params.yaml in tmp_path: the project's smoke profile, on ``dataset``, with ``train`` overrides."""
    return write_params(tmp_path, unconditional=dict(dataset=str(dataset), seeds=list(seeds), profile="smoke",
                                                      profiles={"smoke": {"train": train}}))


def run_pipeline(tmp_path: Path, params: Path) -> dict:
    """What the DVC stages run: classifier, every training run, every table."""
    exp = U.setup("smoke", params=str(params), data_dir=str(tmp_path / "data"),
                  checkpoint_dir=str(tmp_path / "ckpt" / "unconditional"), output_dir=str(tmp_path / "results"),
                  classifier_root=str(tmp_path / "ckpt" / "classifier"))
    train_classifier(exp.classifier)
    U.train_all(exp, on_change="restart")
    return U.evaluate_all(exp)


def test_notebook_is_committed_without_outputs_and_has_parameters():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3" and "language_info" in nb["metadata"]
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    source = "".join(params[0]["source"])
    for name in ("profile", "methods", "seeds", "params", "output_dir", "checkpoint_dir"):
        assert f"{name} =" in source
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    for computing in ("train_all", "U.evaluate", "train(", "sample_images", "U.last_step("):
        assert computing not in code  # the notebook only reads tables and saved samples


def test_unknown_profile_and_method_name_allowed_values():
    with pytest.raises(ValueError, match=r"unknown profile 'laptop'.*cpu.*paper.*smoke"):
        U.setup("laptop", params=str(ROOT / "params.yaml"))
    with pytest.raises(ValueError, match=r"'immiscible'.*vanilla.*exact"):
        U.setup("smoke", methods=["vanilla", "immiscible"], params=str(ROOT / "params.yaml"))


def test_profiles_come_from_params_yaml_only(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("unconditional:\n  dataset: toy\n  seeds: [4, 5]\n  profiles:\n    cpu:\n"
                      "      train: {steps: 123, model: small, resolution: 16}\n      eval: {num_samples: 77}\n"
                      "      classifier: {epochs: 7}\n")
    exp = U.setup("cpu", params=str(params))
    assert exp.seeds == (4, 5) and exp.train.steps == 123 and exp.eval.num_samples == 77
    assert exp.classifier.epochs == 7 and exp.classifier.resolution == exp.train.resolution == 16
    assert exp.train.dataset == exp.classifier.dataset == "toy"  # one dataset for training, classifier, reference
    assert exp.train.lr == 2e-4  # the dataclass's documented default: no hidden profile table in code


@pytest.mark.slow
def test_smoke_pipeline_tables_hold_what_their_rules_give_and_the_notebook_reads_them(tmp_path):
    import papermill as pm
    data = make_image_folder(tmp_path / "toy")
    params = smoke_params(tmp_path, data)
    tables = run_pipeline(tmp_path, params)
    out = tmp_path / "results" / "tables"

    fid = pd.read_csv(out / "unconditional_fid.csv")
    assert set(fid.method) == {"vanilla", "exact"} and set(fid.seed) == {0, 1, 2} and set(fid.step) == {3, 6}
    assert (fid.extractor == "proxy").all() and not fid.metric.str.startswith("FID").any()
    assert (fid.reference == "test").all()  # the proxy's reference is held out from its training images

    # paired table recomputed from the written FD rows with scipy's paired t
    paired = pd.read_csv(out / "unconditional_paired.csv")
    for _, row in paired.iterrows():
        v = fid[(fid.method == "vanilla") & (fid.step == row.step)].set_index("seed").fd
        e = fid[(fid.method == "exact") & (fid.step == row.step)].set_index("seed").fd
        d = (e - v.loc[e.index]).to_numpy()
        ci = stats.ttest_rel(e.to_numpy(), v.loc[e.index].to_numpy()).confidence_interval(0.95)
        assert row.n_pairs == 3 and row.n_better == int((d < 0).sum())
        assert row.fd_diff_mean == pytest.approx(d.mean(), rel=1e-4)
        assert (row.fd_diff_ci_low, row.fd_diff_ci_high) == pytest.approx((ci.low, ci.high), rel=1e-4, abs=1e-6)

    # efficiency recomputed: target = each seed's vanilla final FD; censored seeds counted, not dropped
    seeds = pd.read_csv(out / "unconditional_efficiency_seeds.csv").set_index("seed")
    eff = pd.read_csv(out / "unconditional_efficiency.csv").iloc[0]
    for seed in (0, 1, 2):
        v = fid[(fid.method == "vanilla") & (fid.seed == seed)].sort_values("step")
        e = fid[(fid.method == "exact") & (fid.seed == seed)].sort_values("step")
        target = v.fd.iloc[-1]
        assert seeds.loc[seed].target == pytest.approx(target, rel=1e-5)
        reached = e.fd.to_numpy() <= target * (1 + 1e-5)
        assert bool(seeds.loc[seed].censored) == (not reached.any())
    assert eff.n_reached + eff.n_censored == eff.n_seeds == 3
    assert eff.n_censored == seeds.censored.sum()
    assert eff.ratio_median == pytest.approx(np.median(seeds.ratio), rel=1e-5)
    assert eff.ci_coverage == pytest.approx(0.75)

    metrics = json.loads((tmp_path / "results" / "metrics" / "unconditional.json").read_text())
    assert metrics["exact"]["n_censored"] == eff.n_censored
    assert metrics["exact"]["final_fd_diff"] == pytest.approx(paired[paired.step == 6].fd_diff_mean.iloc[0], abs=1e-4)
    assert -5 < metrics["exact"]["distance_reduction_pct"] < 0

    last = pd.read_csv(out / "unconditional_last_step.csv")
    assert sorted(set(last[last.method == "exact"].t)) == [599.0, 799.0, 899.0, 999.0]

    parameters = dict(profile="smoke", params=str(params), checkpoint_dir=str(tmp_path / "ckpt" / "unconditional"),
                      output_dir=str(tmp_path / "results"), seeds="[0, 1, 2]")  # a list as -p passes it: a string
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "executed.ipynb"), parameters=parameters,
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # the notebook wrote no table
    for name in ("fd_curves", "kid_curves", "paired", "samples", "last_step"):
        assert (tmp_path / "results" / "figures" / f"unconditional_{name}.png").stat().st_size > 0


@pytest.mark.slow
def test_changing_a_training_parameter_changes_the_fd_rows(tmp_path):
    """The evaluation cache is keyed by the snapshot's weights and the evaluation parameters: a retrained run never
    returns its old rows (as `dvc exp run -S ...train.lr=...` would)."""
    data = make_image_folder(tmp_path / "toy", per_class=16)
    first = run_pipeline(tmp_path, smoke_params(tmp_path, data, seeds=(0,)))["fid"]
    again = run_pipeline(tmp_path, smoke_params(tmp_path, data, seeds=(0,)))["fid"]
    pd.testing.assert_frame_equal(first, again)  # unchanged inputs: the cached rows
    changed = run_pipeline(tmp_path, smoke_params(tmp_path, data, seeds=(0,), lr=0.003))["fid"]
    assert not np.allclose(first.fd, changed.fd)
    assert len(changed) == len(first)
    exp = U.setup("smoke", params=str(tmp_path / "params.yaml"), data_dir=str(tmp_path / "data"),
                  checkpoint_dir=str(tmp_path / "ckpt" / "unconditional"), output_dir=str(tmp_path / "results"),
                  classifier_root=str(tmp_path / "ckpt" / "classifier"))
    fewer = U.evaluate(replace(exp, eval=replace(exp.eval, num_samples=24)))
    assert not np.allclose(fewer.fd, changed.fd) and (fewer.num_samples == 24).all()


def test_training_time_adds_up_the_stretches_of_a_resumed_run(tmp_path):
    """The engine's elapsed time restarts when a run resumes; the training tables count every stretch once (the last
    logged value of each), so a resumed run's steps/s is not inflated."""
    rows = [{"step": s, "elapsed_s": e} for s, e in ((1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 0.5), (6, 1.5))]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = read_log(tmp_path)
    assert training_seconds(log) == 5.5
    assert training_seconds(log.iloc[:4]) == 4.0      # never resumed: the last value
