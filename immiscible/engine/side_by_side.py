"""Many runs of one setting trained side by side in one process, so that one GPU is kept busy.

A run of the small CIFAR-10 UNets is launch-bound on a GPU: one run, or nine processes time-sliced on the device,
leave it mostly idle. Here the runs of an experiment (methods x seeds, or any list of configs that differ only in
what a run's noise pairing and seed are, ``PER_RUN_FIELDS``) train in one loop:

- ``stack="vmap"`` (the default on a GPU): the runs' weights are stacked along a leading run dimension
  (``torch.func.stack_module_state``) and one vmapped ``functional_call`` computes every run's forward and
  backward as one batched computation; AdamW and the EMA update the stacked tensors (both are elementwise, so each
  run's slice is updated as its own optimizer would), and gradients are clipped per run by each run's own norm;
- ``stack="loop"`` (the default on a CPU, where batching buys nothing): each run keeps its own model, optimizer and
  EMA and takes its step in turn, exactly as ``train`` would.

Every run keeps its semantics: its seed streams (initial weights, data order, flips, timesteps and noise are
functions of (seed, step), ``batch_source``), its own assignment on its own batch, its own clipping norm, EMA,
checkpoints, snapshots, log and resume, in its own run folder in the single-run format (a side-by-side run
resumes alone and vice versa). ``loop`` equals single runs bitwise; ``vmap`` computes the same step with other
kernels (grouped convolutions), so its weights agree to float rounding (tests/test_side_by_side.py states the
tolerance) and its assignments are the same. Dropout under ``vmap`` draws other masks than a single run.

    python -m immiscible.experiments.unconditional train --profile gpu_quick   # the profile's runs side by side
"""
from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from immiscible.config import to_dict
from immiscible.diffusion.losses import SplitLoss, make_denoising_loss
from immiscible.diffusion.schedules import alphas_cumprod
from immiscible.engine.checkpoints import save_checkpoint, save_snapshot
from immiscible.engine.config import TrainConfig, check_config
from immiscible.engine.loop import (_stop_if_not_finite, append_log, batch_source, resume_or_start, saves_at,
                                    training_inputs)
from immiscible.io import atomic_write_text
from immiscible.models import build_unet, num_parameters
from immiscible.noise.prefetch import prefetch
from immiscible.noise.source import step_generator

# What may differ between runs trained side by side (everything else is one setting).
PER_RUN_FIELDS = ("method", "seed", "knn_k", "output_dir", "assign_cost", "assign_solver", "assign_scope",
                  "assign_background", "progress")
STACKS = ("auto", "vmap", "loop")


def check_side_by_side(cfgs) -> list[TrainConfig]:
    """Validate the configs and that they differ only in ``PER_RUN_FIELDS``, with distinct output folders."""
    cfgs = [check_config(c) for c in cfgs]
    if not cfgs:
        raise ValueError("train_side_by_side needs at least one run config")
    shared = {k: v for k, v in to_dict(cfgs[0]).items() if k not in PER_RUN_FIELDS}
    for cfg in cfgs[1:]:
        diff = sorted(k for k, v in to_dict(cfg).items() if k not in PER_RUN_FIELDS and shared[k] != v)
        if diff:
            raise ValueError(f"runs trained side by side must share one setting; {cfg.output_dir} differs from "
                             f"{cfgs[0].output_dir} in {diff}. Train them in separate groups (or singly with train).")
    dirs = [str(Path(c.output_dir).resolve()) for c in cfgs]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"runs trained side by side need distinct output_dir values; got {dirs}")
    if cfgs[0].init_from:
        raise ValueError("fine-tuning runs (init_from) are trained singly: use immiscible.engine.loop.train")
    if cfgs[0].mixed_precision == "fp16":
        raise ValueError("mixed_precision='fp16' needs a loss scaler, which side-by-side training does not keep: "
                         "use 'bf16' (or 'no')")
    return cfgs


@dataclass
class _Run:
    """One run's own objects (its model, EMA, optimizer and schedule hold its state whenever it is saved)."""
    cfg: TrainConfig
    model: torch.nn.Module
    ema: object
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    start_step: int = 0


def _build_run(cfg: TrainConfig, channels: int, device: torch.device) -> _Run:
    from diffusers.training_utils import EMAModel
    torch.manual_seed(cfg.seed)  # the run's initial weights, as train() draws them
    model = build_unet(cfg.model, cfg.resolution, channels, cfg.dropout, cfg.num_classes).to(device)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, model_cls=type(model), model_config=model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    return _Run(cfg, model, ema, optimizer, lr_scheduler)


def _resume_all(runs: list[_Run], on_change: str, loss: str) -> int:
    """Resume every run; runs whose newest checkpoints differ (a kill while the runs were being saved) all go back
    to the oldest of those steps, which every run still holds. Returns the common start step."""
    for run in runs:
        np.random.seed(run.cfg.seed)
        random.seed(run.cfg.seed)
        run.start_step = resume_or_start(run.cfg, run.model, run.ema, run.optimizer, run.lr_scheduler, on_change,
                                         loss=loss)
    start = min(run.start_step for run in runs)
    for run in runs:
        if run.start_step != start:
            fresh = _build_run(run.cfg, run.model.config.in_channels, next(run.model.parameters()).device)
            run.model, run.ema, run.optimizer, run.lr_scheduler = (fresh.model, fresh.ema, fresh.optimizer,
                                                                   fresh.lr_scheduler)
            run.start_step = resume_or_start(run.cfg, run.model, run.ema, run.optimizer, run.lr_scheduler,
                                             on_change, at_step=start, loss=loss)
    return start


class _Stack:
    """The runs' parameters, AdamW and EMA stacked along dimension 0; one vmapped loss (``SplitLoss.compute``)
    for all runs."""

    def __init__(self, runs: list[_Run], loss: SplitLoss, compile: bool = False):
        from torch.func import functional_call, stack_module_state
        self.runs = runs
        models = [run.model for run in runs]
        self.names = [name for name, _ in models[0].named_parameters()]
        params, buffers = stack_module_state(models)
        self.params = [params[name] for name in self.names]  # leaves (R, ...) in the models' parameter order
        self.buffers = buffers
        self.template = copy.deepcopy(models[0]).to("meta")
        first = runs[0]
        self.optimizer = torch.optim.AdamW(self.params, lr=first.cfg.lr, weight_decay=first.cfg.weight_decay)
        states = [run.optimizer.state_dict() for run in runs]
        group = {k: v for k, v in states[0]["param_groups"][0].items() if k != "params"}
        stacked_state = {}
        for i in states[0]["state"]:
            st = states[0]["state"][i]
            stacked_state[i] = {k: (st[k] if k == "step" else torch.stack([s["state"][i][k] for s in states]))
                                for k in st}
        self.optimizer.load_state_dict({"state": stacked_state,
                                        "param_groups": [{**group, "params": list(range(len(self.params)))}]})
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, runs[0].lr_scheduler.lr_lambdas[0])
        self.lr_scheduler.load_state_dict(runs[0].lr_scheduler.state_dict())
        self.optimizer.param_groups[0]["lr"] = first.optimizer.param_groups[0]["lr"]  # not restored by the schedule
        self.shadow = [torch.stack(s).clone() for s in zip(*(run.ema.shadow_params for run in runs))]
        self.ema = runs[0].ema  # its decay schedule (optimization_step) is every run's: they step together

        def run_loss(p, b, x0, noise, drawn):  # one run's loss, its model a functional view of its weights
            def model(x, t, **kwargs):
                return functional_call(self.template, (dict(zip(self.names, p)), b), (x, t), kwargs)
            return loss.compute(model, x0, noise, **drawn)
        losses = torch.vmap(run_loss, in_dims=(0, 0, 0, 0, 0), randomness="different")
        if compile:  # fewer, fused kernels for the batched forward and backward (compiled on the first step)
            losses = torch.compile(losses)

        def math_attention_losses(*args):
            # Attention (the ddpm_cifar10 UNet's) under vmap: CUDA's memory-efficient kernel failed its backward on
            # an H200 ("LSE is not correctly aligned (strideB)"); the math kernel computes the same attention.
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel([SDPBackend.MATH]):
                return losses(*args)
        self.losses = math_attention_losses

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Each run's gradients scaled by min(1, max_norm / (its own total norm + 1e-6)), as clip_grad_norm_."""
        norms = torch.stack([p.grad.flatten(1).norm(dim=1) for p in self.params], dim=1).norm(dim=1)  # (R,)
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for p in self.params:
            p.grad.mul_(coef.view(-1, *([1] * (p.dim() - 1))).to(p.grad.dtype))
        return norms

    @torch.no_grad()
    def ema_step(self) -> None:
        """The diffusers EMAModel update (decay min(ema_decay, (1+n)/(10+n))) on the stacked shadow weights."""
        self.ema.optimization_step += 1
        decay = self.ema.get_decay(self.ema.optimization_step)
        self.ema.cur_decay_value = decay
        torch._foreach_sub_(self.shadow, torch._foreach_sub(self.shadow, [p.detach() for p in self.params]),
                            alpha=1 - decay)

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy the stacked state back into each run's own model, EMA, optimizer and schedule (to save it)."""
        opt = self.optimizer.state_dict()
        for r, run in enumerate(self.runs):
            for p, stacked in zip(run.model.parameters(), self.params):
                p.copy_(stacked[r])
            run.ema.shadow_params = [s[r].clone() for s in self.shadow]
            run.ema.optimization_step = self.ema.optimization_step
            state = {i: {k: (v if k == "step" else v[r]) for k, v in st.items()} for i, st in opt["state"].items()}
            run.optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
            run.lr_scheduler.load_state_dict(self.lr_scheduler.state_dict())


def train_side_by_side(cfgs, images: torch.Tensor | None = None, labels=None, on_change: str = "error",
                       stack: str = "auto", device: str | torch.device | None = None,
                       compile: bool = False, loss: SplitLoss | None = None) -> list[dict]:
    """Train (or resume) the runs of ``cfgs`` side by side in this process; returns each run's summary.

    ``images``/``labels``: the training data (default: cfgs' dataset, as ``train`` loads it); ``stack``: "vmap"
    (stacked weights, one batched computation), "loop" (each run in turn) or "auto" (vmap on a GPU, loop on a
    CPU); ``device``: default CUDA when available; ``compile``: ``torch.compile`` the stacked loss (vmap only);
    ``loss``: a ``SplitLoss`` (default: the engine's denoising loss of the runs' objective; consistency training
    passes its own)."""
    if stack not in STACKS:
        raise ValueError(f"stack={stack!r}; choose one of {STACKS}")
    if on_change not in ("error", "restart"):
        raise ValueError(f"on_change={on_change!r}; choose 'error' or 'restart'")
    cfgs = check_side_by_side(cfgs)
    base = cfgs[0]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stack = ("vmap" if device.type == "cuda" else "loop") if stack == "auto" else stack
    autocast_dtype = torch.bfloat16 if base.mixed_precision == "bf16" and device.type == "cuda" else None
    images, labels = training_inputs(base, images, labels)
    if device.type == "cuda":  # the whole (small) training set on the device: batches are gathered there
        images = images.to(device)
        labels = None if labels is None else labels.to(device)

    ac = alphas_cumprod(base, device)
    loss = loss or make_denoising_loss(base.objective, base.num_train_timesteps, ac, base.label_dropout,
                                       null_label=base.num_classes)
    runs = [_build_run(cfg, images.shape[1], device) for cfg in cfgs]
    start_step = _resume_all(runs, on_change, loss.name)
    side_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    sources = [batch_source(run.cfg, images, labels, device, side_stream=side_stream) for run in runs]

    def next_batches(step: int) -> list[tuple]:
        return [source(step) for source in sources]

    stacked = _Stack(runs, loss, compile) if stack == "vmap" else None
    for run in runs:
        run.model.train()
    n_runs = len(runs)
    t_start = time.perf_counter()
    loss_sum = torch.zeros(n_runs, dtype=torch.float64, device=device)
    loss_count = 0
    losses = torch.full((n_runs,), float("nan"), device=device)
    steps = range(start_step, base.steps)
    bar = tqdm(steps, initial=start_step, total=base.steps, disable=not base.progress, unit="step",
               desc=f"train {n_runs} runs side by side ({stack})", mininterval=1.0)
    batches = prefetch(next_batches, steps) if device.type == "cuda" else map(next_batches, steps)
    for step, batch in zip(bar, batches):
        if side_stream is not None:  # the main stream uses the batches once the side stream has made them
            main_stream = torch.cuda.current_stream(device)
            main_stream.wait_stream(side_stream)
            for x0, y, _, noise, _ in batch:
                x0.record_stream(main_stream)
                noise.record_stream(main_stream)
        if stacked is None:
            losses = torch.stack([_loop_step(run, b, step, loss, autocast_dtype, device)
                                  for run, b in zip(runs, batch)])
        else:
            torch.manual_seed(int(step_generator(base.seed, step, 1).initial_seed()))  # dropout
            losses = _stacked_step(stacked, loss, batch, step, base, autocast_dtype, device)
        loss_sum += losses.detach().double()
        loss_count += 1

        done = step + 1
        infos = [b[4] for b in batch]
        if infos[0] is not None:  # a log step (the same for every run): the only per-step host sync
            mean = loss_sum / loss_count
            elapsed = time.perf_counter() - t_start
            for r, run in enumerate(runs):
                _stop_if_not_finite(mean[r], done, Path(run.cfg.output_dir))
            lr = (stacked.lr_scheduler if stacked else runs[0].lr_scheduler).get_last_lr()[0]
            for r, run in enumerate(runs):
                append_log(Path(run.cfg.output_dir), done, float(mean[r]), lr, infos[r], elapsed,
                           runs_side_by_side=n_runs)
            bar.set_postfix(loss=f"{float(mean.mean()):.4f}")
            loss_sum.zero_()
            loss_count = 0
        snapshot, checkpoint_now = saves_at(base, done)
        if snapshot or checkpoint_now:
            for r, run in enumerate(runs):
                _stop_if_not_finite(loss_sum[r], done, Path(run.cfg.output_dir))
            if stacked is not None:
                stacked.unstack()
            for run in runs:
                if snapshot:
                    save_snapshot(Path(run.cfg.output_dir), done, run.model, run.ema)
                if checkpoint_now:
                    save_checkpoint(Path(run.cfg.output_dir), done, run.cfg, run.model, run.ema, run.optimizer,
                                    run.lr_scheduler)
    bar.close()

    seconds = time.perf_counter() - t_start
    ran = base.steps - start_step
    summaries = []
    for r, run in enumerate(runs):
        summary = {"run_dir": run.cfg.output_dir, "start_step": start_step, "steps": base.steps,
                   "final_loss": float(losses[r]), "seconds": seconds, "steps_per_s": ran / seconds if ran else None,
                   "num_parameters": num_parameters(run.model), "num_processes": 1, "runs_side_by_side": n_runs,
                   "stack": stack}
        if ran:
            atomic_write_text(Path(run.cfg.output_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
        summaries.append(summary)
    return summaries


def _loop_step(run: _Run, batch: tuple, step: int, loss_fn, autocast_dtype, device) -> torch.Tensor:
    """One run's training step exactly as ``train`` takes it."""
    x0, y, generator, noise, _ = batch
    cfg = run.cfg
    torch.manual_seed(int(step_generator(cfg.seed, step, 1).initial_seed()))  # dropout, as train() with 1 process
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = loss_fn(run.model, x0, noise, generator, step, y)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.ema.step(run.model.parameters())
    return loss.detach()


def _stacked_step(stacked: _Stack, loss: SplitLoss, batch: list[tuple], step: int, cfg: TrainConfig,
                  autocast_dtype, device) -> torch.Tensor:
    """One step of every run as one batched computation; returns the runs' losses (R,)."""
    drawn = [loss.draw(x0, generator, step, y) for x0, y, generator, _, _ in batch]  # each from its own generator
    stacked_drawn = {k: torch.stack([d[k] for d in drawn]) for k in drawn[0]}
    x0 = torch.stack([b[0] for b in batch])
    noise = torch.stack([b[3] for b in batch])
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        losses = stacked.losses(stacked.params, stacked.buffers, x0, noise, stacked_drawn)
    losses.sum().backward()  # runs share no weights: each run's slice receives its own loss's gradient
    if cfg.grad_clip > 0:
        stacked.clip_grad_norm_(cfg.grad_clip)
    stacked.optimizer.step()
    stacked.lr_scheduler.step()
    stacked.optimizer.zero_grad(set_to_none=True)
    stacked.ema_step()
    return losses.detach().float()
