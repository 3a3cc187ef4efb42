"""The ablation: run names and arms are checked before any compute; a reused run of the unconditional experiment is
exactly the run the ablation would have trained (the same snapshot); each arm is compared with its own vanilla, the
coupling strength is measured on the training batches, and the whole experiment runs end to end with its notebook."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
import yaml
from safetensors.torch import load_file

from immiscible.engine.checkpoints import list_snapshots
from immiscible.engine.loop import train
from immiscible.evaluation.features import train_classifier
from immiscible.experiments import ablation as A, ablation_train as T, unconditional as U
from conftest import write_params
from test_unconditional_notebook import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, dataset, **ablation) -> Path:
    """The project's params.yaml on ``dataset`` at 16 px (smoke), with ``ablation`` group overrides."""
    return write_params(tmp_path, unconditional=dict(dataset=str(dataset), seeds=[0, 1], profile="smoke",
                                                      profiles={"smoke": {"train": {"resolution": 16}}}),
                        ablation=dict(dataset=str(dataset), seeds=[0, 1], profile="smoke", **ablation))


def test_variants_and_run_names():
    assert T.variant_fields("vanilla") == {"method": "vanilla"}
    assert T.variant_fields("exact") == {"method": "exact"}
    assert T.variant_fields("knn16") == {"method": "knn", "knn_k": 16}
    arms = {"base": {}, "px8": {"resolution": 8}}
    assert T.parse_run("px8-knn2", arms) == ("px8", "knn2")
    for bad in ("knn", "knn0", "greedy", "exact_class"):
        with pytest.raises(ValueError, match="variant"):
            T.variant_fields(bad)
    with pytest.raises(ValueError, match="<arm>-<variant>"):
        T.parse_run("px32-exact", arms)


@pytest.mark.parametrize("change, message", [
    (dict(runs=["px8-exact"]), "no px8-vanilla run"),
    (dict(arms={"base": {}, "lr": {"lr": 1.0}}, runs=["lr-vanilla"]), "may change only"),
    (dict(reused={"px8-vanilla": "unconditional"}, runs=["px8-exact"]), "changes nothing"),
    (dict(runs=["base-vanilla"]), "both trained here and reused"),
])
def test_bad_ablation_settings_are_refused_before_any_compute(tmp_path, change, message):
    path = _params(tmp_path, tmp_path / "none", **change)
    with pytest.raises(ValueError, match=message):
        T.setup("smoke", str(path))


@pytest.mark.slow
def test_a_reused_run_is_the_run_the_ablation_would_train(tmp_path):
    dataset = make_image_folder(tmp_path / "two", per_class=24, size=16)
    path = _params(tmp_path, dataset)
    exp = U.setup("smoke", params=str(path), data_dir=str(tmp_path / "data"),
                  checkpoint_dir=str(tmp_path / "ckpt" / "unconditional"), methods=("vanilla", "exact"), seeds=(0,),
                  output_dir=str(tmp_path / "results"))
    U.train_all(exp)                                              # 6 steps, snapshots at 3 and 6
    ab = T.setup("smoke", str(path), data_dir=str(tmp_path / "data"),
                 checkpoint_dir=str(tmp_path / "ckpt" / "ablation"), reuse_root=str(tmp_path / "ckpt"))
    assert ab.base.steps == 3 and ab.run_dir("base-exact", 0) == exp.run_dir("exact", 0)
    cfg = T.reused_config(ab, "base-exact", 0)
    fresh = train(replace(cfg, output_dir=str(tmp_path / "fresh")))
    assert fresh["steps"] == 3
    ours = load_file(list_snapshots(tmp_path / "fresh")[3])
    theirs = load_file(list_snapshots(exp.run_dir("exact", 0))[3])
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)

    changed = _params(tmp_path, dataset)            # another lr in the unconditional setting: the runs differ
    params = yaml.safe_load(changed.read_text())
    params["unconditional"]["profiles"]["smoke"]["train"]["lr"] = 0.5
    changed.write_text(yaml.safe_dump(params))
    ab = T.setup("smoke", str(changed), data_dir=str(tmp_path / "data"),
                 checkpoint_dir=str(tmp_path / "ckpt" / "ablation"), reuse_root=str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="reused run 'base-exact'.*lr"):
        T.reused_config(ab, "base-exact", 0)
    with pytest.raises(FileNotFoundError, match="train_unconditional"):
        T.reused_config(ab, "base-exact", 1)


@pytest.mark.slow
def test_ablation_end_to_end_with_its_notebook(tmp_path):
    dataset = make_image_folder(tmp_path / "two", per_class=24, size=16)
    path = _params(tmp_path, dataset, runs=["base-knn4", "px8-vanilla", "px8-exact", "flow-vanilla", "flow-knn4"])
    data, ckpt = str(tmp_path / "data"), tmp_path / "ckpt"
    uncond = U.setup("smoke", params=str(path), data_dir=data, checkpoint_dir=str(ckpt / "unconditional"),
                     classifier_root=str(ckpt / "classifier"), output_dir=str(tmp_path / "uncond-results"))
    U.train_all(uncond)
    train_classifier(uncond.classifier)
    exp = A.setup("smoke", str(path), data_dir=data, checkpoint_dir=str(ckpt / "ablation"),
                  output_dir=str(tmp_path / "results"), classifier_root=str(ckpt / "classifier"),
                  reuse_root=str(ckpt))
    assert list(exp.arms) == ["base", "px8", "flow"]
    assert exp.arms["px8"].classifier.out_dir == str(ckpt / "classifier") + "-ablation"
    for run in exp.ablation.runs:
        for seed in exp.ablation.seeds:
            T.main(["--run", run, "--seed", str(seed), "--profile", "smoke", "--params", str(path), "--data-dir", data,
                    "--checkpoint-dir", str(ckpt / "ablation")])
    with pytest.raises(FileNotFoundError, match="proxy|classifier"):
        A.evaluate_all(exp)                                     # the 8 px classifier is not trained yet
    assert [info["resolution"] for info in A.train_classifiers(exp)] == [8]
    tables = A.evaluate_all(exp)

    fid, coupling, paired = tables["fid"], tables["training"], tables["paired"]
    assert set(zip(fid.arm, fid.variant)) == {("base", "vanilla"), ("base", "exact"), ("base", "knn4"),
                                              ("px8", "vanilla"), ("px8", "exact"), ("flow", "vanilla"),
                                              ("flow", "knn4")}
    assert fid.step.max() == 3 and set(fid[fid.arm == "px8"].resolution) == {8}
    assert set(fid[fid.arm == "flow"].objective) == {"flow"}
    # the reused base-exact row at step 3 is the unconditional run's snapshot at step 3, evaluated the same way
    base_fd = fid[(fid.arm == "base") & (fid.variant == "exact") & (fid.step == 3)].set_index("seed").fd
    uncond_fd = U.evaluate(uncond)
    uncond_fd = uncond_fd[(uncond_fd.method == "exact") & (uncond_fd.step == 3)].set_index("seed").fd
    assert np.allclose(base_fd.sort_index(), uncond_fd.sort_index())
    # coupling strength from the training logs: none for vanilla, a cut for the others
    by = coupling.groupby(["arm", "variant"]).distance_change_pct.mean()
    assert (by.xs("vanilla", level="variant").abs() < 1e-9).all()
    assert by["base", "exact"] < 0 and by["base", "knn4"] < 0 and by["px8", "exact"] < by["base", "exact"]
    # every non-vanilla variant has its paired row, against its own arm's vanilla
    last = paired[paired.step == 3].set_index(["arm", "variant"])
    assert set(last.index) == {("base", "exact"), ("base", "knn4"), ("px8", "exact"), ("flow", "knn4")}
    for (arm, variant), r in last.iterrows():
        mine = fid[(fid.arm == arm) & (fid.variant == variant) & (fid.step == 3)].set_index("seed").fd
        van = fid[(fid.arm == arm) & (fid.variant == "vanilla") & (fid.step == 3)].set_index("seed").fd
        assert np.isclose(r.fd_diff_mean, (mine - van).mean())
        assert np.isclose(r.fd_ratio_mean, np.exp(np.log(mine / van).mean()))
        assert r.n_pairs == 2
    # the dimension contrast: px8's exact/vanilla ratio over base's, paired by seed
    c = tables["contrasts"].set_index(["arm", "variant"]).loc[("px8", "exact")]
    final = fid[fid.step == 3].set_index(["arm", "variant", "seed"]).fd
    per_seed = np.log(final["px8", "exact"] / final["px8", "vanilla"]) - np.log(final["base", "exact"] /
                                                                              final["base", "vanilla"])
    assert np.isclose(c.ratio_of_ratios_mean, np.exp(per_seed.mean())) and c.n_pairs == 2
    assert set(tables["contrasts"].arm) == {"px8", "flow"}
    assert (Path(exp.output_dir) / "figures" / "ablation.png").stat().st_size > 1000
    # each arm's sampling noise: the first seed's snapshot at the ablation step, once per other sample seed (smoke: 2),
    # the same sample seeds in every arm; a repeat's FD differs from the run's own evaluation (other draws)
    noise = tables["sampling_noise"]
    assert len(noise) == 2 * len(fid[fid.seed == 0])
    assert set(noise.seed) == {0} and set(noise.step) == {3}
    assert set(zip(noise.arm, noise.variant)) == set(zip(fid.arm, fid.variant))
    assert noise.groupby("arm").sample_seed.apply(frozenset).nunique() == 1
    assert np.allclose(noise.log_fd, np.log(noise.fd))
    own = fid[fid.seed == 0].set_index(["arm", "variant"]).fd
    assert not np.allclose(noise.groupby(["arm", "variant"]).fd.mean().loc[own.index], own)
    assert pd.read_csv(exp.table("sampling_noise")).shape == noise.shape
    floors = A.sampling_floors(noise).set_index(["arm", "variant"])
    w = noise[noise.arm == "flow"].pivot(index="sample_seed", columns="variant", values="fd")
    assert np.isclose(floors.loc[("flow", "knn4"), "paired_sd_vs_vanilla"], (w.knn4 - w.vanilla).std(ddof=1))
    assert np.isnan(floors.loc[("flow", "vanilla"), "paired_sd_vs_vanilla"])

    pm.execute_notebook(str(ROOT / "notebooks" / "ablation.ipynb"), str(tmp_path / "nb.ipynb"),
                        parameters=dict(output_dir=exp.output_dir), kernel_name="python3", progress_bar=False)
    written = pd.read_csv(exp.table("paired"))
    assert len(written) == len(paired)


def test_an_arm_is_evaluated_only_at_the_ablation_step(tmp_path):
    """Every comparison is made at the ablation's step, so earlier snapshots (and the later ones of reused runs) are
    not evaluated."""
    path = _params(tmp_path, tmp_path / "none")
    exp = A.setup("smoke", str(path), checkpoint_dir=str(tmp_path / "ckpt"), reuse_root=str(tmp_path / "reuse"))
    arm = exp.arms["flow"]
    for run, seed, folder in arm.folders:
        (Path(folder) / "snapshots").mkdir(parents=True)
        for step in (1, 3, 6):
            (Path(folder) / "snapshots" / f"ema-{step:07d}.safetensors").write_bytes(b"x")
    assert arm.train.steps == 3
    assert {t[2] for t in U.snapshots_to_evaluate(arm)} == {3}
