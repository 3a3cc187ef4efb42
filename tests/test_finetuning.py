"""Fine-tuning: a run starts from the pretrained weights (step 0 equals them; with lr 0 it never leaves them), the
class subsets, resumption never crosses other starting weights, the bad inputs, and the smoke experiment end to end
(pretraining stage, fine-tuning runs, evaluation, notebook) on a generated two-class ImageFolder."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from immiscible.config import from_dict
from immiscible.engine.checkpoints import list_snapshots, weights_digest
from immiscible.engine.config import TrainConfig, check_config
from immiscible.engine.loop import train, training_data
from immiscible.evaluation.features import train_classifier
from immiscible.experiments import finetuning as F
from conftest import write_params
from test_unconditional_notebook import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def _images(n=32, seed=0):
    return torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _cfg(out, **kw):
    values = dict(model="tiny", resolution=8, batch_size=8, steps=4, checkpoint_every=2, log_every=1, lr=1e-3,
                  progress=False, output_dir=str(out))
    return from_dict(TrainConfig, {**values, **kw})


@pytest.fixture
def pretrained(tmp_path):
    train(_cfg(tmp_path / "pre"), images=_images())
    return tmp_path / "pre"


def _last(run):
    snaps = list_snapshots(run)
    return snaps[max(snaps)]


def test_step_zero_is_the_pretrained_model_and_training_moves_from_there(tmp_path, pretrained):
    cfg = _cfg(tmp_path / "ft", init_from=str(pretrained), snapshot_every=2, seed=3)
    train(cfg, images=_images(seed=1))
    snaps = list_snapshots(tmp_path / "ft")
    assert sorted(snaps) == [0, 2, 4]
    start, pre = load_file(snaps[0]), load_file(_last(pretrained))
    assert start.keys() == pre.keys() and all(torch.equal(start[k], pre[k]) for k in pre)
    assert weights_digest(snaps[0]) == weights_digest(_last(pretrained))
    assert weights_digest(snaps[4]) != weights_digest(snaps[0])  # it trained
    saved = json.loads((tmp_path / "ft" / "train_config.json").read_text())
    assert saved["init_sha256"] == weights_digest(_last(pretrained))


def test_with_lr_zero_the_weights_stay_the_pretrained_ones(tmp_path, pretrained):
    """Nothing in the loop re-initialises the loaded UNet (the official fine-tuning script did)."""
    train(_cfg(tmp_path / "ft", init_from=str(pretrained), lr=0.0, grad_clip=0.0), images=_images(seed=1))
    pre = load_file(_last(pretrained))
    for name in ("model.safetensors", "ema.safetensors"):
        after = load_file(tmp_path / "ft" / "checkpoint-0000004" / name)
        assert all(torch.equal(after[k], pre[k]) for k in pre), name
    scratch = _cfg(tmp_path / "scratch", lr=0.0, grad_clip=0.0)  # the control: without init_from it differs
    train(scratch, images=_images(seed=1))
    after = load_file(tmp_path / "scratch" / "checkpoint-0000004" / "model.safetensors")
    assert not all(torch.equal(after[k], pre[k]) for k in pre)


def test_a_run_is_never_resumed_over_other_pretrained_weights(tmp_path, pretrained):
    cfg = _cfg(tmp_path / "ft", init_from=str(pretrained), steps=2)
    train(cfg, images=_images(seed=1))
    train(_cfg(pretrained, seed=5), images=_images(), on_change="restart")  # the pretraining changed
    longer = _cfg(tmp_path / "ft", init_from=str(pretrained), steps=4)
    with pytest.raises(ValueError, match="init_sha256"):
        train(longer, images=_images(seed=1))
    summary = train(longer, images=_images(seed=1), on_change="restart")
    assert summary["start_step"] == 0
    assert weights_digest(list_snapshots(tmp_path / "ft")[0]) == weights_digest(_last(pretrained))


def test_classes_select_the_training_images(tmp_path):
    folder = make_image_folder(tmp_path / "two", per_class=10, size=8)  # classes: bright (0), dark (1)
    cfg = _cfg(tmp_path / "r", dataset=str(folder), data_dir=str(tmp_path / "data"), classes=(1,))
    images, labels = training_data(cfg)
    assert labels is None and len(images) == 10
    everything, _ = training_data(_cfg(tmp_path / "r", dataset=str(folder), data_dir=str(tmp_path / "data")))
    assert len(everything) == 20 and float(images.float().mean()) < float(everything.float().mean())  # the dark ones
    with_labels = _cfg(tmp_path / "r", dataset=str(folder), data_dir=str(tmp_path / "data"), classes=(1,),
                       num_classes=2, num_images=4)
    images, labels = training_data(with_labels)
    assert len(images) == 4 and labels.tolist() == [1, 1, 1, 1]


def test_bad_fine_tuning_settings_give_clear_errors(tmp_path, pretrained):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(_cfg(tmp_path / "a", init_from=str(tmp_path / "missing.safetensors")), images=_images())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without EMA snapshots"):
        train(_cfg(tmp_path / "b", init_from=str(tmp_path / "empty")), images=_images())
    with pytest.raises(ValueError, match="weights of another model config"):
        train(_cfg(tmp_path / "c", init_from=str(pretrained), model="small"), images=_images())
    with pytest.raises(ValueError, match="the pretrained weights changed"):
        train(_cfg(tmp_path / "d", init_from=str(pretrained), init_sha256="0" * 64), images=_images())
    with pytest.raises(ValueError, match="set init_from too"):
        check_config(_cfg(tmp_path / "e", init_sha256="0" * 64))
    with pytest.raises(ValueError, match="distinct class indices"):
        check_config(_cfg(tmp_path / "f", classes=(1, 1)))
    folder = make_image_folder(tmp_path / "two", per_class=4, size=8)
    with pytest.raises(ValueError, match=r"\[7\] do not exist"):
        training_data(_cfg(tmp_path / "g", dataset=str(folder), data_dir=str(tmp_path / "data"), classes=(0, 7)))


def _smoke(tmp_path):
    dataset = make_image_folder(tmp_path / "two", per_class=24, size=16)
    path = write_params(tmp_path, finetuning=dict(dataset=str(dataset), seeds=[0, 1], profile="smoke"))
    exp = F.setup("smoke", params=str(path), data_dir=str(tmp_path / "data"),
                  checkpoint_dir=str(tmp_path / "ckpt" / "ft"), output_dir=str(tmp_path / "results"),
                  classifier_root=str(tmp_path / "ckpt" / "clf"))
    return exp, path


def test_bad_experiment_settings_give_clear_errors(tmp_path):
    exp, path = _smoke(tmp_path)
    params = yaml.safe_load(path.read_text())
    params["finetuning"]["profiles"]["smoke"]["train"]["model"] = "small"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="keep the pretrained model's architecture"):
        F.setup("smoke", params=str(path))
    del params["finetuning"]["profiles"]["smoke"]["pretrain"]
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="needs a 'pretrain' section"):
        F.setup("smoke", params=str(path))


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tmp_path, monkeypatch):
    exp, path = _smoke(tmp_path)
    assert exp.pretrain.classes == (0,) and exp.train.classes == (1,)
    assert exp.train.init_from == str(exp.pretrain_dir)
    train_classifier(exp.classifier)
    F.train_all(exp)
    tables = F.evaluate_all(exp)
    fid = pd.read_csv(exp.table("fid"))
    assert set(fid.method) == set(exp.methods) and sorted(set(fid.step)) == [0, 2, 4]
    assert len(fid) == 3 * 2 * 3 and fid.fd_source.notna().all()
    start = fid[fid.step == 0]
    for seed, sub in start.groupby("seed"):  # one starting model, one sample seed per pair: one value
        assert sub.fd.nunique() == 1 and sub.fd_source.nunique() == 1
    paired = pd.read_csv(exp.table("paired"))
    assert (paired[paired.step == 0].fd_diff_mean == 0).all()
    for (method, step), sub in paired.groupby(["method", "step"]):
        f = fid[fid.step == step]
        d = f[f.method == method].set_index("seed").fd - f[f.method == "vanilla"].set_index("seed").fd
        assert sub.fd_diff_mean.iloc[0] == pytest.approx(d.mean(), abs=1e-4)
    paper = pd.read_csv(exp.table("paper")).set_index("method")
    assert paper.loc["exact", "paper_fid"] == 10.28 and paper.loc["vanilla", "ours_diff"] == 0
    final = fid[fid.step == 4].groupby("method").fd.mean()
    assert paper.loc["knn", "ours_fd"] == pytest.approx(final["knn"], rel=1e-5)
    assert tables["pretrain"].steps.iloc[0] == 6 and tables["training"].steps.eq(4).all()
    assert json.loads((Path(exp.output_dir) / "metrics" / "finetuning.json").read_text()).keys() == {"exact", "knn"}
    noise = tables["sampling_noise"]   # seed 0's last snapshot with 2 other sample seeds: another noise, another FD
    assert len(noise) == 3 * 2 and set(noise.step) == {4} and set(noise.seed) == {0}
    assert set(noise.sample_seed) == {20_000, 21_000}
    run = fid[(fid.step == 4) & (fid.seed == 0)].set_index("method").fd
    assert not np.allclose(noise[noise.sample_seed == 20_000].set_index("method").fd[run.index], run)
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")
    monkeypatch.setattr(F, "sample_images", no_sampling)   # cached: read back, not sampled again
    pd.testing.assert_frame_equal(F.sampling_noise(exp), noise)
    monkeypatch.undo()

    # a run that did not start from the pretrained weights is refused
    snap = list_snapshots(exp.run_dir("exact", 1))[0]
    weights = load_file(snap)
    save_file({k: v + 1 for k, v in weights.items()}, snap)
    with pytest.raises(ValueError, match="did not start from the pretrained weights"):
        F.check_common_start(exp)
    save_file(weights, snap)

    import papermill as pm
    pm.execute_notebook(str(ROOT / "notebooks" / "finetuning.ipynb"), str(tmp_path / "executed.ipynb"),
                        parameters=dict(profile="smoke", params=str(path), checkpoint_dir=exp.checkpoint_dir,
                                        output_dir=exp.output_dir), kernel_name="python3", progress_bar=False)
    for name in ("fd_curves", "paired", "samples"):
        assert (Path(exp.output_dir) / "figures" / f"finetuning_{name}.png").stat().st_size > 0
