"""Consistency training (iCT recipe) and the consistency experiment: the parametrisation's boundary condition and
scalings against their formulas, the curriculum and noise-level distribution against independent computations, the
pair built from ONE assigned noise inside the engine, shared dropout randomness of student and teacher, sampling
against a hand computation, and the smoke experiment end to end on a generated ImageFolder."""
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import immiscible.diffusion.consistency as C
from immiscible.config import from_dict
from immiscible.engine.config import TrainConfig
from immiscible.engine.loop import train
from immiscible.evaluation.features import train_classifier
from immiscible.experiments import consistency as X
from immiscible.experiments import consistency_train as T
from immiscible.models import build_unet
from immiscible.noise.assignment import assign_noise, knn_noise
from immiscible.noise.source import step_generator
from conftest import write_params
from test_unconditional_notebook import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
CFG = C.ConsistencyConfig()


class ZeroNet(torch.nn.Module):
    """F = 0, so f(x, sigma) = c_skip(sigma) x; records its inputs."""

    def __init__(self, channels=3):
        super().__init__()
        self.config = type("Cfg", (), {"in_channels": channels})()
        self.calls = []

    def forward(self, x, t, **kw):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return type("Out", (), {"sample": torch.zeros_like(x)})()


def test_scalings_match_the_formulas_and_the_model_is_the_identity_at_sigma_min():
    sigma = torch.tensor([0.002, 0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in = C.scalings(sigma, 0.5, 0.002)
    for s, a, b, c in zip(sigma.tolist(), c_skip, c_out, c_in):
        assert float(a) == pytest.approx(0.25 / ((s - 0.002) ** 2 + 0.25))
        assert float(b) == pytest.approx((s - 0.002) * 0.5 / math.sqrt(s ** 2 + 0.25))
        assert float(c) == pytest.approx(1 / math.sqrt(s ** 2 + 0.25))  # the square root (a known public bug)
    torch.manual_seed(0)
    model = build_unet("tiny", 8)
    x = torch.randn(4, 3, 8, 8)
    out = C.consistency_function(model, x, torch.full((4,), CFG.sigma_min), CFG)
    assert torch.allclose(out, x, atol=1e-6)  # boundary condition f(x, sigma_min) = x
    far = C.consistency_function(model, x, torch.full((4,), 10.0), CFG)
    assert not torch.allclose(far, x, atol=1e-2)


def test_karras_sigmas_curriculum_and_lognormal_against_independent_computations():
    s = C.karras_sigmas(11, 0.002, 80.0, 7.0)
    assert float(s[0]) == pytest.approx(0.002) and float(s[-1]) == pytest.approx(80.0) and (s.diff() > 0).all()
    i = 4
    expected = (0.002 ** (1 / 7) + i / 10 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    assert float(s[i]) == pytest.approx(expected)
    # iCT: K' = floor(K / (log2(1280/10) + 1)) = floor(8000 / 8) = 1000; N doubles every 1000 steps up to 1281
    got = [C.discretisation_steps(k, 8000, 10, 1280) for k in (0, 999, 1000, 2500, 6999, 7000, 7999)]
    assert got == [11, 11, 21, 41, 641, 1281, 1281]
    probs = C.lognormal_index_probs(s, -1.1, 2.0)
    cdf = stats.norm.cdf((np.log(s.numpy()) + 1.1) / 2.0)
    assert np.allclose(probs.numpy(), np.diff(cdf) / np.diff(cdf).sum())
    assert float(probs.sum()) == pytest.approx(1.0)


def test_pseudo_huber():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    c = 0.00054 * math.sqrt(48)
    assert C.huber_c(CFG, 48) == pytest.approx(c)
    assert torch.allclose(C.pseudo_huber(a, b, c), torch.full((2,), math.sqrt(48 + c * c) - c))
    assert torch.equal(C.pseudo_huber(a, a, c), torch.zeros(2))


def test_both_points_of_the_pair_come_from_the_same_noise():
    model = ZeroNet()
    x0, noise = torch.rand(5, 3, 4, 4) * 2 - 1, torch.randn(5, 3, 4, 4)
    s_i, s_next = torch.tensor([0.1, 0.5, 1, 2, 5.0]), torch.tensor([0.2, 0.7, 1.5, 3, 9.0])
    C.consistency_training_loss(model, x0, noise, s_i, s_next, CFG)
    (x_student, _), (x_teacher, _) = model.calls
    c_in = lambda s: 1 / (s ** 2 + 0.25).sqrt()[:, None, None, None]
    assert torch.allclose(x_student / c_in(s_next), x0 + s_next[:, None, None, None] * noise, atol=1e-5)
    assert torch.allclose(x_teacher / c_in(s_i), x0 + s_i[:, None, None, None] * noise, atol=1e-5)


def test_teacher_sees_the_students_dropout_and_gets_no_gradient():
    torch.manual_seed(0)
    model = build_unet("tiny", 8, dropout=0.5).train()
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    sigma = torch.full((4,), 1.0)
    outs = []
    real = C.consistency_function

    def spy(m, x, s, cfg, **kw):
        out = real(m, x, s, cfg, **kw)
        outs.append((out, torch.is_grad_enabled()))
        return out

    C.consistency_function, saved = spy, C.consistency_function
    try:  # equal levels: identical inputs, so equal outputs iff the dropout masks are the same
        C.consistency_training_loss(model, x0, noise, sigma, sigma + 1e-3, CFG)
        C.consistency_training_loss(model, x0, noise, sigma, sigma, CFG)
    finally:
        C.consistency_function = saved
    (student, grad_s), (teacher, grad_t) = outs[2], outs[3]
    assert grad_s and not grad_t and student.requires_grad and not teacher.requires_grad
    assert torch.equal(student.detach(), teacher)
    again = real(model, x0 + noise, sigma, CFG)  # a fresh draw of the masks differs
    assert not torch.equal(again.detach(), teacher)


@pytest.mark.parametrize("method", ["vanilla", "exact", "knn"])
def test_in_the_engine_the_pair_uses_the_assigned_noise_of_the_clean_images(tmp_path, monkeypatch, method):
    images = torch.randint(0, 256, (32, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    seen = []
    real = C.consistency_training_loss

    def spy(model, x0, noise, s_i, s_next, cfg, **kw):
        seen.append((x0.clone(), noise.clone(), s_i.clone(), s_next.clone()))
        return real(model, x0, noise, s_i, s_next, cfg, **kw)

    monkeypatch.setattr(C, "consistency_training_loss", spy)
    cfg = from_dict(TrainConfig, dict(model="tiny", resolution=8, batch_size=16, steps=4, checkpoint_every=4,
                                      log_every=1, progress=False, method=method, knn_k=3,
                                      output_dir=str(tmp_path / "run")))
    ct = C.ConsistencyConfig(s0=2, s1=8)
    train(cfg, images=images, loss_fn=C.make_consistency_loss(ct, cfg.steps))
    assert len(seen) == 4
    for step, (x0, noise, s_i, s_next) in enumerate(seen):
        g = step_generator(cfg.seed, step, 0, x0.device)  # the engine trains on the GPU where there is one
        raw = torch.randn(x0.shape, generator=g, device=g.device)  # the step's draw; knn then draws its k candidates
        expected = {"vanilla": raw, "exact": assign_noise(x0, raw)}.get(method) if method != "knn" else \
            knn_noise(x0, 3, generator=g)
        assert torch.equal(noise, expected)  # unscaled standard noise paired with the clean x0
        n = C.discretisation_steps(step, cfg.steps, 2, 8)
        levels = C.karras_sigmas(n, ct.sigma_min, ct.sigma_max, ct.rho)
        levels, s_i, s_next = levels.cpu(), s_i.cpu(), s_next.cpu()
        idx = torch.searchsorted(levels, s_i)
        assert torch.allclose(levels[idx], s_i) and torch.allclose(levels[idx + 1], s_next)


def test_one_and_two_step_sampling_match_a_hand_computation():
    model = ZeroNet()
    z = torch.randn(3, 3, 4, 4)
    g = torch.Generator().manual_seed(7)
    two = C.sample_consistency(model, z, (80.0, 0.821), CFG, torch.Generator().manual_seed(7))
    skip = lambda s: 0.25 / ((s - 0.002) ** 2 + 0.25)
    x1 = skip(80.0) * 80.0 * z
    x2 = x1 + math.sqrt(0.821 ** 2 - 0.002 ** 2) * torch.randn(z.shape, generator=g)
    assert torch.allclose(two, (skip(0.821) * x2).clamp(-1, 1), atol=1e-6)
    one = C.sample_consistency(model, z, (80.0,), CFG)
    assert torch.allclose(one, x1.clamp(-1, 1), atol=1e-6)
    with pytest.raises(ValueError, match="1 or 2"):
        C.sampling_sigmas(CFG, 3)
    torch.manual_seed(0)
    unet = build_unet("tiny", 8)
    a = C.consistency_samples(unet, CFG, 10, 8, 2, batch_size=4, seed=3)
    b = C.consistency_samples(unet, CFG, 10, 8, 2, batch_size=10, seed=3)
    assert a.shape == (10, 8, 8, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_bad_settings_give_clear_errors():
    with pytest.raises(ValueError, match="sigma_min < two_step_sigma < sigma_max"):
        C.check_consistency_config(C.ConsistencyConfig(sigma_min=1.0, two_step_sigma=0.5))
    with pytest.raises(ValueError, match="s0 <= s1"):
        C.make_consistency_loss(C.ConsistencyConfig(s0=20, s1=10), 100)
    with pytest.raises(ValueError, match="unknown key"):
        X.setup("smoke", params=str(ROOT / "params.yaml"), consistency_overrides={"sigma": 1})
    with pytest.raises(ValueError, match="only 1 and 2"):
        X.setup("smoke", params=str(ROOT / "params.yaml"), eval_overrides={"sample_steps": [1, 4]})
    with pytest.raises(ValueError, match="unknown profile"):
        X.setup("laptop", params=str(ROOT / "params.yaml"))


def smoke_experiment(tmp_path: Path, seeds=(0, 1, 2), **consistency):
    dataset = make_image_folder(tmp_path / "faces", per_class=24, size=16)
    path = write_params(tmp_path, consistency=dict(dataset=str(dataset), seeds=list(seeds), profile="smoke",
                                                   profiles={"smoke": {"consistency": consistency}}))
    return X.setup("smoke", params=str(path), data_dir=str(tmp_path / "data"),
                   checkpoint_dir=str(tmp_path / "ckpt" / "consistency"), output_dir=str(tmp_path / "results"),
                   classifier_root=str(tmp_path / "ckpt" / "classifier"))


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tmp_path, monkeypatch):
    exp = smoke_experiment(tmp_path)
    train_classifier(exp.classifier)
    X.train_all(exp)
    tables = X.evaluate_all(exp)
    fid = pd.read_csv(exp.table("fid"))
    assert set(fid.sample_steps) == {1, 2} and set(fid.method) == set(exp.methods)
    assert len(fid) == len(exp.methods) * len(exp.seeds) * 2 * 2  # snapshots at 3 and 6, two samplers
    paired = pd.read_csv(exp.table("paired"))
    for (k, method, step), sub in paired.groupby(["sample_steps", "method", "step"]):
        f = fid[(fid.sample_steps == k) & (fid.step == step)]
        diff = (f[f.method == method].set_index("seed").fd - f[f.method == "vanilla"].set_index("seed").fd)
        assert sub.fd_diff_mean.iloc[0] == pytest.approx(diff.mean(), rel=1e-3, abs=1e-9)
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        assert sub.fd_diff_ci_high.iloc[0] == pytest.approx(diff.mean() + half, rel=1e-3, abs=1e-9)
    eff = pd.read_csv(exp.table("efficiency"))
    assert set(eff.sample_steps) == {1, 2} and set(eff.method) == set(exp.methods) - {"vanilla"}
    metrics = json.loads((Path(exp.output_dir) / "metrics" / "consistency.json").read_text())
    assert set(metrics) == {"1-step", "2-step"}
    for m in exp.methods:
        for k in (1, 2):
            assert (exp.eval_dir / f"samples-{m}-0-{k}step.npy").exists()
    training = tables["training"]
    assert (training[training.method == "exact"].dist_after < training[training.method == "exact"].dist_before).all()
    # the sampling floor: seed 0's last snapshot, per sampler, with 2 other sample seeds; another noise, another FD
    noise = pd.read_csv(exp.table("sampling_noise"))
    assert len(noise) == len(exp.methods) * 2 * 2 and set(noise.step) == {6} and set(noise.seed) == {0}
    assert set(noise.sample_seed) == {20_000, 21_000} and set(noise.sample_steps) == {1, 2}
    for k in (1, 2):
        run = fid[(fid.step == 6) & (fid.seed == 0) & (fid.sample_steps == k)].set_index("method").fd
        other = noise[(noise.sample_seed == 20_000) & (noise.sample_steps == k)].set_index("method").fd
        assert not np.allclose(other[run.index], run)
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")
    monkeypatch.setattr(X, "consistency_samples", no_sampling)   # cached: read back, not sampled again
    pd.testing.assert_frame_equal(X.sampling_noise(exp), tables["sampling_noise"])
    monkeypatch.undo()
    # the notebook only reads these tables and samples, and draws the figures
    import papermill as pm
    before = {p: p.stat().st_mtime_ns for p in (Path(exp.output_dir) / "tables").glob("*.csv")}
    pm.execute_notebook(str(ROOT / "notebooks" / "consistency.ipynb"), str(tmp_path / "executed.ipynb"),
                        parameters=dict(profile="smoke", params=str(tmp_path / "params.yaml"),
                                        checkpoint_dir=exp.checkpoint_dir, output_dir=exp.output_dir),
                        kernel_name="python3", progress_bar=False)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    for name in ("fd_curves_1step", "fd_curves_2step", "paired_1step", "paired_2step", "samples"):
        assert (Path(exp.output_dir) / "figures" / f"consistency_{name}.png").stat().st_size > 0


def test_a_run_with_other_consistency_settings_is_restarted_or_refused(tmp_path):
    exp = smoke_experiment(tmp_path, seeds=(0,))
    cfg = exp.run_config("exact", 0)
    T.train_run(cfg, exp.consistency)
    run = exp.run_dir("exact", 0)
    first = (run / "snapshots" / "ema-0000006.safetensors").read_bytes()
    T.train_run(cfg, exp.consistency)  # same settings: reused as it is
    assert (run / "snapshots" / "ema-0000006.safetensors").read_bytes() == first
    other = replace(exp.consistency, s1=4)
    with pytest.raises(ValueError, match="other consistency settings"):
        T.train_run(cfg, other)
    with pytest.warns(UserWarning, match="Restarting"):
        T.train_run(cfg, other, on_change="restart")
    assert json.loads((run / "consistency_config.json").read_text())["s1"] == 4
    assert (run / "snapshots" / "ema-0000006.safetensors").read_bytes() != first


def test_single_run_command_line_trains_the_profiles_run(tmp_path):
    exp = smoke_experiment(tmp_path, seeds=(0,))
    T.main(["--method", "knn", "--seed", "1", "--params", str(tmp_path / "params.yaml"),
            "--data-dir", str(tmp_path / "data"), "--checkpoint-dir", str(tmp_path / "ck")])
    run = tmp_path / "ck" / "smoke" / "knn-1"
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["method"] == "knn" and saved["seed"] == 1 and saved["knn_k"] == exp.train.knn_k
    assert json.loads((run / "consistency_config.json").read_text()) == T.consistency_record(
        replace(exp.train, steps=saved["steps"]), exp.consistency)
    with pytest.raises(SystemExit):
        T.main(["--method", "immiscible", "--seed", "0"])
