"""The training loop: config validation, assigned noise reaches the objective, checkpoints and resume, the
background assignment, restart on a changed config, warmup, gradient clipping and the EMA formula."""
import contextlib
import json
from dataclasses import replace
import threading
import warnings

import pytest
import torch
from safetensors.torch import load_file
from scipy.optimize import linear_sum_assignment
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import immiscible.diffusion.losses as losses_module
import immiscible.engine.__main__ as cli_module
import immiscible.engine.checkpoints as checkpoints_module
import immiscible.noise.source as source_module
from immiscible.noise.assignment import assign_noise, knn_noise
from immiscible.noise.source import step_generator
from immiscible.config import from_dict
from immiscible.engine.config import TrainConfig
from immiscible.data import batch_indices, flip_mask, to_model_input
from immiscible.engine.checkpoints import latest_valid_checkpoint, list_checkpoints, list_snapshots, load_run_model
from immiscible.engine.loop import train


def _images(n=48, size=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _cfg(tmp_path, name="run", **kw):
    base = dict(model="tiny", resolution=8, batch_size=8, steps=4, checkpoint_every=2, checkpoints_total_limit=3,
                snapshot_every=2, log_every=1, progress=False, output_dir=str(tmp_path / name), dropout=0.1)
    base.update(kw)
    return from_dict(TrainConfig, base)


def _same(a: dict, b: dict) -> bool:
    """Two state dicts with the same keys and bitwise equal tensors (an empty dict is never 'the same')."""
    return bool(a) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _spy_training_pair(monkeypatch):
    """Record (x0, noise, t) of every call of the default loss's training_pair."""
    seen = []
    real = losses_module.training_pair

    def spy(objective, x0, noise, t, alphas_cumprod):
        seen.append((x0.clone(), noise.clone(), t.clone()))
        return real(objective, x0, noise, t, alphas_cumprod)

    monkeypatch.setattr(losses_module, "training_pair", spy)
    return seen


@contextlib.contextmanager
def _optimizer_hooks(pre=None, post=None):
    """Global optimizer step hooks (they see the torch AdamW under accelerate's wrapper), removed afterwards."""
    handles = []
    if pre is not None:
        handles.append(register_optimizer_step_pre_hook(pre))
    if post is not None:
        handles.append(register_optimizer_step_post_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


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


def _rebuild_step(cfg, images, step):
    """The batch, Gaussian draw, paired noise and timesteps of ``step``, rebuilt outside the loop in draw_noise's
    RNG order: x0 from batch_indices (+ flip_mask), then from step_generator(seed, step, rank 0): the (B, C, H, W)
    Gaussian draw, then (knn only) the (B, k, C, H, W) candidates, then the loss's timesteps."""
    idx = torch.from_numpy(batch_indices(cfg.seed, step, cfg.batch_size, len(images)))
    x0 = to_model_input(images[idx])
    if cfg.hflip:
        flip = torch.from_numpy(flip_mask(cfg.seed, step, cfg.batch_size))
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    generator = step_generator(cfg.seed, step, 0)
    drawn = torch.randn(x0.shape, generator=generator)
    if cfg.method == "vanilla":
        noise = drawn
    elif cfg.method == "knn":
        state = generator.get_state()
        noise = knn_noise(x0, cfg.knn_k, generator=generator)
        # the same k candidates again, and the nearest one by a direct distance (not knn_noise's GEMM trick)
        replay = torch.Generator()
        replay.set_state(state)
        cand = torch.randn((x0.shape[0], cfg.knn_k) + tuple(x0.shape[1:]), generator=replay)
        nearest = (cand - x0[:, None]).flatten(2).norm(dim=2).argmin(1)
        assert torch.equal(noise, cand[torch.arange(len(x0)), nearest])
    else:
        noise = assign_noise(x0, drawn, cfg.method)
    t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=generator)
    return x0, drawn, noise, t


@pytest.mark.parametrize("method,hflip", [("exact", False), ("quantized", False), ("knn", False),
                                          ("vanilla", False), ("exact", True)])
def test_loop_passes_the_assigned_noise_to_the_objective(tmp_path, monkeypatch, method, hflip):
    seen = _spy_training_pair(monkeypatch)
    images = _images()
    # batch 32 of these images: the quantized pairing differs from the exact one at step 1 (fp16 ties)
    cfg = _cfg(tmp_path, method=method, hflip=hflip, steps=3, knn_k=8, batch_size=32)
    train(cfg, images=images)
    assert len(seen) == cfg.steps
    quantized_is_not_exact = False
    for step, (x0, noise, t) in enumerate(seen):
        x0_ref, drawn, noise_ref, t_ref = _rebuild_step(cfg, images, step)
        assert torch.equal(x0, x0_ref), f"step {step}: not the batch of batch_indices(seed, {step})"
        assert torch.equal(noise, noise_ref), f"step {step}: not the {method} noise of step_generator(seed, {step})"
        assert torch.equal(t, t_ref), f"step {step}: timesteps not drawn from the step's generator after the noise"
        if method == "vanilla":
            continue
        assert not torch.equal(noise, drawn)  # the pairing changed something
        distances = torch.cdist(x0.flatten(1).double(), drawn.flatten(1).double())
        if method in ("exact", "quantized"):  # a permutation of the draw
            rows = torch.cdist(noise.flatten(1).double(), drawn.flatten(1).double()).argmin(1)
            assert sorted(rows.tolist()) == list(range(len(x0))) and torch.equal(drawn[rows], noise)
        if method == "quantized":
            quantized_is_not_exact |= not torch.equal(noise, assign_noise(x0, drawn, "exact"))
        if method == "exact":  # optimal: the total of an independent float64 solve
            r, c = linear_sum_assignment(distances.numpy())
            total = (x0.flatten(1).double() - noise.flatten(1).double()).norm(dim=1).sum()
            assert float(total) == pytest.approx(float(distances.numpy()[r, c].sum()), rel=1e-5)
    assert quantized_is_not_exact == (method == "quantized")
    log = _log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert {"dist_before", "dist_after", "assign_ms", "assign_batch"} <= set(log[0])
    if method != "vanilla":
        assert all(r["dist_after"] < r["dist_before"] for r in log)
    else:
        assert all(r["dist_after"] == r["dist_before"] for r in log)


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


def test_resume_puts_the_ema_on_the_models_device(tmp_path):
    """EMAModel.load_state_dict keeps the loaded (CPU) tensors: resume_or_start moves the EMA to the model's
    device afterwards (on a GPU the first ema.step would otherwise mix devices; tests/test_cuda.py resumes there)."""
    from diffusers.training_utils import EMAModel
    from immiscible.engine.loop import resume_or_start
    from immiscible.models import build_unet
    cfg = _cfg(tmp_path, steps=2)
    train(cfg, images=_images())
    model = build_unet(cfg.model, cfg.resolution, 3).double()  # parameters of another dtype than the saved ones
    ema = EMAModel(model.parameters(), decay=0.9)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    assert resume_or_start(cfg, model, ema, optimizer, scheduler) == 2
    for shadow, param in zip(ema.shadow_params, model.parameters()):
        assert shadow.device == param.device and shadow.dtype == param.dtype
    ema.step(model.parameters())  # what crashed on a GPU


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
    before = load_file(tmp_path / "run" / "checkpoint-0000002" / "model.safetensors")
    with pytest.raises(ValueError, match=r"different config \{'lr': \(0\.0002, 0\.001\)\}"):
        train(_cfg(tmp_path, steps=4, lr=1e-3), images=images)
    # the old run is left as it was
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-0000002"]
    assert _same(before, load_file(tmp_path / "run" / "checkpoint-0000002" / "model.safetensors"))
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["lr"] == 2e-4
    with pytest.raises(ValueError, match=r"on_change='resume'.*'error' or 'restart'"):
        train(_cfg(tmp_path, steps=4), images=images, on_change="resume")


def test_changed_training_parameter_restarts_from_scratch(tmp_path):
    images = _images()
    train(_cfg(tmp_path, steps=4, lr=2e-4), images=images)  # checkpoints 2, 4; snapshots 2, 4
    with pytest.warns(UserWarning, match=r"different config \{'lr': \(0\.0002, 0\.001\)\}.*Restarting"):
        summary = train(_cfg(tmp_path, steps=2, lr=1e-3), images=images, on_change="restart")
    assert summary["start_step"] == 0
    fresh = train(_cfg(tmp_path, "fresh", steps=2, lr=1e-3), images=images)
    assert fresh["start_step"] == 0
    for name in ("model.safetensors", "ema.safetensors"):
        assert _same(load_file(tmp_path / "run" / "checkpoint-0000002" / name),
                     load_file(tmp_path / "fresh" / "checkpoint-0000002" / name)), name
    # nothing of the old run is left: its checkpoint and snapshot of step 4 and its log lines are gone
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-0000002"]
    assert sorted(list_snapshots(tmp_path / "run")) == [2]
    assert [r["step"] for r in _log(tmp_path / "run")] == [1, 2]
    assert [r["loss"] for r in _log(tmp_path / "run")] == [r["loss"] for r in _log(tmp_path / "fresh")]
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["lr"] == 1e-3
    # and the restarted run resumes normally afterwards
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(_cfg(tmp_path, steps=2, lr=1e-3), images=images, on_change="restart")["start_step"] == 2
    assert not [w for w in caught if "Restarting" in str(w.message)]


def _nan_at_third_call():
    """A training_pair whose target turns NaN at its third call (the third step)."""
    real = losses_module.training_pair
    calls = {"n": 0}

    def poisoned(objective, x0, noise, t, alphas_cumprod):
        calls["n"] += 1
        x_t, target = real(objective, x0, noise, t, alphas_cumprod)
        return x_t, target * float("nan") if calls["n"] == 3 else target
    return poisoned


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(losses_module, "training_pair", _nan_at_third_call())
    with pytest.raises(FloatingPointError, match=r"by step 3 .*checkpoint-0000002"):
        train(_cfg(tmp_path, steps=4), images=_images())
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-0000002"]


@pytest.mark.parametrize("objective", ["v", "x0", "flow"])
def test_other_objectives_train_on_their_own_target(tmp_path, objective, monkeypatch):
    """Each objective's run builds (x_t, target) by that objective's definition from the batch and its noise:
    v = sqrt(a) noise - sqrt(1 - a) x0, x0 = x0, flow: x_t = (1 - t) x0 + t noise and target noise - x0."""
    real, seen = losses_module.training_pair, []

    def spy(name, x0, noise, t, alphas_cumprod):
        x_t, target = real(name, x0, noise, t, alphas_cumprod)
        seen.append((name, x0, noise, t, alphas_cumprod, x_t, target))
        return x_t, target
    monkeypatch.setattr(losses_module, "training_pair", spy)
    summary = train(_cfg(tmp_path, objective=objective, steps=2), images=_images())
    assert torch.isfinite(torch.tensor(summary["final_loss"])) and len(seen) == 2
    for name, x0, noise, t, ac, x_t, target in seen:
        assert name == objective
        if objective == "flow":
            s = t.view(-1, 1, 1, 1)
            assert torch.allclose(x_t, (1 - s) * x0 + s * noise, atol=1e-6)
            assert torch.allclose(target, noise - x0, atol=1e-6)
            continue
        a = ac[t].view(-1, 1, 1, 1).to(x0.dtype)
        assert torch.allclose(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-5)
        expected = a.sqrt() * noise - (1 - a).sqrt() * x0 if objective == "v" else x0
        assert torch.allclose(target, expected, atol=1e-5)


def test_cli_reads_profile_from_params_and_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("unconditional:\n  profiles:\n    smoke:\n      train: {batch_size: 32}\n")
    cfg, on_change = cli_module.config_from_args(
        ["--profile", "smoke", "--params", str(params), "--method", "exact", "--seed", "3", "--set", "lr=0.01",
         "--output-dir", str(tmp_path / "r"), "--on-change", "restart"])
    assert (cfg.method, cfg.seed, cfg.lr, cfg.batch_size, cfg.model) == ("exact", 3, 0.01, 32, "tiny")
    assert on_change == "restart"
    with pytest.raises(ValueError, match=r"unknown profile 'laptop'"):
        cli_module.config_from_args(["--profile", "laptop", "--params", str(params)])


@pytest.mark.parametrize("method", ["exact", "knn"])
def test_background_assignment_gives_the_same_weights_as_synchronous(tmp_path, monkeypatch, method):
    images = _images()
    threads = {}
    real_perm, real_knn = source_module.assignment_permutation, source_module.knn_noise

    def record(real):
        def spy(*args, **kwargs):
            threads[name].append((threading.current_thread().name, threading.get_ident()))
            return real(*args, **kwargs)
        return spy

    monkeypatch.setattr(source_module, "assignment_permutation", record(real_perm))
    monkeypatch.setattr(source_module, "knn_noise", record(real_knn))
    for name, background in (("bg", "thread"), ("sync", "inline")):
        threads[name] = []
        train(_cfg(tmp_path, name, method=method, steps=3, checkpoint_every=3, assign_background=background),
              images=images)
    main = (threading.main_thread().name, threading.main_thread().ident)
    assert len(threads["bg"]) == 3 and len(threads["sync"]) == 3
    assert all(n.startswith("immiscible-assign") and ident != main[1] for n, ident in threads["bg"]), threads["bg"]
    assert all((n, ident) == main for n, ident in threads["sync"]), threads["sync"]
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "bg" / "checkpoint-0000003" / name)
        b = load_file(tmp_path / "sync" / "checkpoint-0000003" / name)
        assert _same(a, b), name
    snaps = {name: list_snapshots(tmp_path / name) for name in ("bg", "sync")}
    assert sorted(snaps["bg"]) == sorted(snaps["sync"]) == [2, 3]
    for step in (2, 3):
        assert _same(load_file(snaps["bg"][step]), load_file(snaps["sync"][step])), step
    assert not _same(load_file(snaps["bg"][2]), load_file(snaps["bg"][3]))  # the EMA moved
    def logged(run):
        return [(r["step"], r["loss"], r["dist_before"], r["dist_after"]) for r in _log(tmp_path / run)]
    assert logged("bg") == logged("sync")


def test_warmup_schedule_of_applied_and_logged_lr(tmp_path):
    images = _images()
    lr, warmup = 1e-3, 5
    applied = {}

    def pre(optimizer, args, kwargs):
        applied[name].append(optimizer.param_groups[0]["lr"])

    with _optimizer_hooks(pre=pre):
        for name, steps, warmup_steps in (("full", 6, warmup), ("split", 2, warmup), ("split", 6, warmup),
                                          ("flat", 2, 0)):
            applied.setdefault(name, [])
            train(_cfg(tmp_path, name, steps=steps, lr=lr, warmup_steps=warmup_steps), images=images)
    schedule = [lr * min(1.0, (s + 1) / warmup) for s in range(7)]  # LambdaLR: factor of step s (0-based)
    # the update of 0-based step s uses lr * min(1, (s+1)/warmup): 1/5, 2/5, ... of lr, then lr
    assert applied["full"] == pytest.approx(schedule[:6], rel=1e-12)
    assert applied["full"][0] < applied["full"][1] < applied["full"][4] == applied["full"][5]
    # a resumed run continues the schedule where its checkpoint left it
    assert applied["split"] == pytest.approx(schedule[:6], rel=1e-12)
    # log.jsonl's record for step s (1-based, written after the scheduler stepped) holds the next step's lr
    assert [r["lr"] for r in _log(tmp_path / "full")] == pytest.approx(schedule[1:7], rel=1e-12)
    assert [r["lr"] for r in _log(tmp_path / "split")] == pytest.approx(schedule[1:7], rel=1e-12)
    assert _same(load_file(tmp_path / "full" / "checkpoint-0000006" / "model.safetensors"),
                 load_file(tmp_path / "split" / "checkpoint-0000006" / "model.safetensors"))
    # without warmup the lr is constant
    assert applied["flat"] == [lr, lr]
    assert [r["lr"] for r in _log(tmp_path / "flat")] == [lr, lr]


def test_grad_clip_bounds_the_gradient_norm_the_optimizer_sees(tmp_path):
    images = _images()
    grads = {}

    def pre(optimizer, args, kwargs):
        grads[name].append([p.grad.detach().clone() for p in _params(optimizer)])  # every parameter has one

    def norm(gs):
        return float(torch.linalg.vector_norm(torch.cat([g.flatten().double() for g in gs])))

    with _optimizer_hooks(pre=pre):
        for name, clip in (("free", 0.0), ("tiny", 1e-6), ("loose", 1e6)):
            grads[name] = []
            train(_cfg(tmp_path, name, steps=2, grad_clip=clip), images=images)
    assert all(len(grads[name]) == 2 for name in grads)  # one optimizer step per training step
    free, tiny = [norm(gs) for gs in grads["free"]], [norm(gs) for gs in grads["tiny"]]
    assert all(n > 1e-3 for n in free), free
    assert all(0 < n <= 1e-6 * (1 + 1e-4) for n in tiny), tiny
    # step 1 (same weights, batch, noise, t and dropout): the clipped gradient is the free one scaled to norm 1e-6
    scale = 1e-6 / free[0]
    for g_tiny, g_free in zip(grads["tiny"][0], grads["free"][0]):
        torch.testing.assert_close(g_tiny, g_free * scale, rtol=1e-4, atol=1e-6 * scale)
    # a max norm above the gradient's changes nothing; a tiny one changes the weights
    loose = load_file(tmp_path / "loose" / "checkpoint-0000002" / "model.safetensors")
    assert _same(loose, load_file(tmp_path / "free" / "checkpoint-0000002" / "model.safetensors"))
    assert not _same(loose, load_file(tmp_path / "tiny" / "checkpoint-0000002" / "model.safetensors"))


def test_ema_follows_the_diffusers_decay_formula(tmp_path):
    # diffusers EMAModel.step: n = its update count (1 at the first update), decay = min(ema_decay, (1+m)/(10+m))
    # with m = n - 1 (0 at the first update, so the EMA starts at the weights after step 1), then
    # shadow -= (1 - decay) * (shadow - weights). ema_decay=0.2 is below (1+2)/(10+2): the cap is hit at update 3.
    ema_decay, steps = 0.2, 3
    after = []

    def post(optimizer, args, kwargs):
        after.append([p.detach().clone() for p in _params(optimizer)])

    with _optimizer_hooks(post=post):
        train(_cfg(tmp_path, steps=steps, lr=1e-2, ema_decay=ema_decay, snapshot_every=1, checkpoint_every=steps),
              images=_images())
    assert len(after) == steps
    decays = [min(ema_decay, (1 + m) / (10 + m)) if m > 0 else 0.0 for m in range(steps)]
    assert decays == pytest.approx([0.0, 2 / 11, 0.2])
    expected, shadow = [], [w.clone() for w in after[0]]  # any start: the first update has decay 0
    for d, weights in zip(decays, after):
        shadow = [s - (1 - d) * (s - w) for s, w in zip(shadow, weights)]
        expected.append(shadow)
    run = tmp_path / "run"
    names = [k for k, _ in load_run_model(run)[0].named_parameters()]
    assert len(names) == len(after[0])
    snaps = list_snapshots(run)
    assert sorted(snaps) == [1, 2, 3]
    for step, shadow in zip((1, 2, 3), expected):
        saved = load_file(snaps[step])
        for name, value in zip(names, shadow):
            torch.testing.assert_close(saved[name], value, rtol=0, atol=1e-6, msg=f"step {step} {name}")
    # the formula matters at this lr: the EMA of step 3 is neither the weights nor a plain 0.2-decay average
    last = load_file(snaps[3])
    assert max(float((last[n] - w).abs().max()) for n, w in zip(names, after[-1])) > 1e-4
    plain = [w.clone() for w in after[0]]
    for weights in after[1:]:
        plain = [s - (1 - ema_decay) * (s - w) for s, w in zip(plain, weights)]
    assert max(float((last[n] - w).abs().max()) for n, w in zip(names, plain)) > 1e-5  # 10x the tolerance
    checkpoint = run / "checkpoint-0000003"
    assert _same(load_file(checkpoint / "ema.safetensors"), last)
    assert json.loads((checkpoint / "state.json").read_text())["ema"]["optimization_step"] == steps
    model = load_file(checkpoint / "model.safetensors")
    assert all(torch.equal(model[n], w) for n, w in zip(names, after[-1]))


def test_model_config_json_is_the_same_in_every_process():
    import os
    import subprocess
    import sys
    code = ("from immiscible.models import build_unet; from immiscible.engine.checkpoints import model_config_json; "
            "print(model_config_json(build_unet('tiny', 8)))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(outs) == 1 and '"in_channels": 3' in outs.pop()


def test_a_run_killed_before_its_first_checkpoint_never_lends_its_snapshots_to_a_new_setting(tmp_path, monkeypatch):
    """No checkpoint yet, only snapshots: the folder's train_config.json decides, and snapshots past the state the
    run starts from are removed (they would otherwise be served as the new run's model)."""
    with monkeypatch.context() as m:
        m.setattr(losses_module, "training_pair", _nan_at_third_call())
        with pytest.raises(FloatingPointError):
            train(_cfg(tmp_path, steps=4, lr=2e-4, snapshot_every=1, checkpoint_every=10, log_every=10),
                  images=_images())
    run = tmp_path / "run"
    assert sorted(list_snapshots(run)) == [1, 2] and list_checkpoints(run) == []
    with pytest.raises(ValueError, match=r"different config \{'lr': \(0.0002, 0.001\)\}"):
        train(_cfg(tmp_path, steps=1, lr=1e-3, snapshot_every=1, checkpoint_every=10), images=_images())
    assert sorted(list_snapshots(run)) == [1, 2]  # "error" leaves the folder as it was
    with pytest.warns(UserWarning, match="Restarting"):
        summary = train(_cfg(tmp_path, steps=1, lr=1e-3, snapshot_every=1, checkpoint_every=10), images=_images(),
                        on_change="restart")
    assert summary["start_step"] == 0 and sorted(list_snapshots(run)) == [1]
    # the same setting again: its final checkpoint (step 1) is found and nothing is redone
    summary = train(_cfg(tmp_path, steps=1, lr=1e-3, snapshot_every=1, checkpoint_every=10), images=_images())
    assert summary["start_step"] == 1 and sorted(list_snapshots(run)) == [1]


def test_a_run_is_never_resumed_with_another_loss(tmp_path):
    """A consistency run's folder records its loss (loss.json): resuming it with the engine's default denoising loss
    (`python -m immiscible.engine --group consistency ...`) is an error that says what to do, or a restart."""
    from immiscible.diffusion.consistency import ConsistencyConfig, make_consistency_loss
    images = _images()
    cfg = _cfg(tmp_path, steps=2)
    train(cfg, images=images, loss_fn=make_consistency_loss(ConsistencyConfig(s0=2, s1=8), 4))
    assert json.loads((tmp_path / "run" / "loss.json").read_text()) == {"loss": "consistency"}
    with pytest.raises(ValueError, match="trained with the 'consistency' loss, not 'denoising'.*consistency_train"):
        train(replace(cfg, steps=4), images=images)
    assert latest_valid_checkpoint(tmp_path / "run").name == "checkpoint-0000002"  # untouched
    with pytest.warns(UserWarning, match="Restarting"):
        summary = train(replace(cfg, steps=4), images=images, on_change="restart")
    assert summary["start_step"] == 0
    assert json.loads((tmp_path / "run" / "loss.json").read_text()) == {"loss": "denoising"}
