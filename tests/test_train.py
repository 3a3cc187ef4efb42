"""The training loop: config validation, assigned noise reaches the objective, checkpoints and resume."""
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

import immiscible.train as train_module
from immiscible.assignment import assign_noise
from immiscible.config import from_dict
from immiscible.train import (TrainConfig, batch_indices, latest_valid_checkpoint, list_checkpoints,
                              list_snapshots, load_run_model, train)


def _images(n=48, size=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _cfg(tmp_path, name="run", **kw):
    base = dict(model="tiny", resolution=8, batch_size=8, steps=4, checkpoint_every=2, checkpoints_total_limit=3,
                snapshot_every=2, log_every=1, progress=False, output_dir=str(tmp_path / name), dropout=0.1)
    base.update(kw)
    return from_dict(TrainConfig, base)


def test_config_errors_name_key_value_and_allowed():
    with pytest.raises(ValueError, match=r"method='immiscible'.*vanilla.*exact.*quantized.*knn"):
        from_dict(TrainConfig, {"method": "immiscible"})
    with pytest.raises(ValueError, match=r"objective='score'.*eps"):
        from_dict(TrainConfig, {"objective": "score"})
    with pytest.raises(ValueError, match=r"unknown key.*'lr_max'.*allowed keys"):
        from_dict(TrainConfig, {"lr_max": 1.0})
    with pytest.raises(ValueError, match=r"steps='10'.*integer"):
        from_dict(TrainConfig, {"steps": "10"})
    with pytest.raises(ValueError, match=r"model='huge'.*tiny"):
        from_dict(TrainConfig, {"model": "huge"})


def test_data_order_is_a_function_of_seed_and_step():
    a = [batch_indices(0, s, 8, 20) for s in range(5)]
    b = [batch_indices(0, s, 8, 20) for s in range(5)]
    assert all((x == y).all() for x, y in zip(a, b))
    epoch0 = list(a[0]) + list(a[1]) + list(a[2][:4])
    assert sorted(epoch0) == list(range(20))  # every image once per epoch
    assert not (batch_indices(1, 0, 8, 20) == a[0]).all()


@pytest.mark.parametrize("method", ["exact", "quantized", "knn", "vanilla"])
def test_loop_passes_the_assigned_noise_to_the_objective(tmp_path, monkeypatch, method):
    seen = []
    real = train_module.training_pair

    def spy(objective, x0, noise, t, alphas_cumprod):
        seen.append((x0.clone(), noise.clone()))
        return real(objective, x0, noise, t, alphas_cumprod)

    monkeypatch.setattr(train_module, "training_pair", spy)
    train(_cfg(tmp_path, method=method, steps=2, knn_k=8, batch_size=16), images=_images())
    assert len(seen) == 2
    for x0, noise in seen:
        if method == "exact":  # an optimal pairing is its own assignment
            torch.testing.assert_close(assign_noise(x0, noise), noise)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"dist_before", "dist_after", "assign_ms", "assign_batch"} <= set(log[0])
    if method != "vanilla":
        assert all(r["dist_after"] < r["dist_before"] for r in log)


def test_resume_gives_bitwise_the_same_weights(tmp_path):
    images = _images()
    full = train(_cfg(tmp_path, "full", steps=6), images=images)
    assert full["start_step"] == 0
    train(_cfg(tmp_path, "split", steps=4), images=images)
    resumed = train(_cfg(tmp_path, "split", steps=6), images=images)
    assert resumed["start_step"] == 4
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "full" / "checkpoint-0000006" / name)
        b = load_file(tmp_path / "split" / "checkpoint-0000006" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    again = train(_cfg(tmp_path, "full", steps=6), images=images)  # finished: nothing to do
    assert again["start_step"] == 6
    assert sorted(list_snapshots(tmp_path / "full")) == [2, 4, 6]
    model, cfg = load_run_model(tmp_path / "full")
    assert cfg.steps == 6 and not model.training


def test_corrupt_checkpoint_falls_back_with_warning(tmp_path):
    images = _images()
    train(_cfg(tmp_path, steps=4), images=images)
    newest = list_checkpoints(tmp_path / "run")[-1]
    with open(newest / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00garbage\x00")
    with pytest.warns(UserWarning, match="corrupt"):
        assert latest_valid_checkpoint(tmp_path / "run").name == "checkpoint-0000002"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(_cfg(tmp_path, steps=4), images=images)
    assert summary["start_step"] == 2


def test_changed_training_parameter_refuses_to_resume(tmp_path):
    images = _images()
    train(_cfg(tmp_path, steps=2), images=images)
    with pytest.raises(ValueError, match="different config"):
        train(_cfg(tmp_path, steps=4, lr=1e-3), images=images)


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    real = train_module.training_pair
    calls = {"n": 0}

    def poisoned(objective, x0, noise, t, alphas_cumprod):
        calls["n"] += 1
        x_t, target = real(objective, x0, noise, t, alphas_cumprod)
        return x_t, target * float("nan") if calls["n"] == 3 else target

    monkeypatch.setattr(train_module, "training_pair", poisoned)
    with pytest.raises(FloatingPointError, match=r"step 2 .*checkpoint-0000002"):
        train(_cfg(tmp_path, steps=4), images=_images())
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-0000002"]


@pytest.mark.parametrize("objective", ["v", "x0", "flow"])
def test_other_objectives_train(tmp_path, objective):
    summary = train(_cfg(tmp_path, objective=objective, steps=2), images=_images())
    assert torch.isfinite(torch.tensor(summary["final_loss"]))


def test_cli_reads_profile_from_params_and_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("unconditional:\n  profiles:\n    smoke:\n      train: {batch_size: 32}\n")
    cfg, on_change = train_module.config_from_args(
        ["--profile", "smoke", "--params", str(params), "--method", "exact", "--seed", "3", "--set", "lr=0.01",
         "--output-dir", str(tmp_path / "r"), "--on-change", "restart"])
    assert (cfg.method, cfg.seed, cfg.lr, cfg.batch_size, cfg.model) == ("exact", 3, 0.01, 32, "tiny")
    assert on_change == "restart"
    with pytest.raises(ValueError, match=r"unknown profile 'laptop'"):
        train_module.config_from_args(["--profile", "laptop", "--params", str(params)])


def test_background_assignment_gives_the_same_weights_as_synchronous(tmp_path):
    images = _images()
    for name, background in (("bg", "thread"), ("sync", "inline")):
        train(_cfg(tmp_path, name, method="exact", steps=3, checkpoint_every=3, assign_background=background),
              images=images)
    a = load_file(tmp_path / "bg" / "checkpoint-0000003" / "model.safetensors")
    b = load_file(tmp_path / "sync" / "checkpoint-0000003" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_model_config_json_is_the_same_in_every_process():
    import os
    import subprocess
    import sys
    code = ("from immiscible.models import build_unet; from immiscible.train import model_config_json; "
            "print(model_config_json(build_unet('tiny', 8)))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(outs) == 1 and '"in_channels": 3' in outs.pop()
