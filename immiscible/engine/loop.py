"""The one training loop: a diffusers model + EMA on accelerate, fed with the step's (assigned) noise.

Every experiment trains through ``train``; what is its own comes in as arguments: the model (``model=``, default the
named ``UNet2DModel`` of ``cfg.model``), the loss (``loss_fn(model, x0, noise, generator, step, labels)``, default
the denoising loss of ``cfg.objective``) and labels. The noise of each step is drawn and paired by
``immiscible.noise.source.draw_noise`` (Immiscible Diffusion, Li et al. 2024, Sec. 3); that one ``noise`` goes into
the loss, which builds both x_t and the target from it.

Reproducibility (a killed run resumes to bitwise the same weights on CPU):
- data order is a function of (seed, step) (``immiscible.data.batch_indices``); each process takes its slice of
  the global batch;
- noise and timesteps come from a generator seeded by (seed, step, rank), so they need no saved state; dropout
  from torch's global RNG reseeded per (seed, step, rank);
- checkpoints hold weights, EMA, optimizer, LR schedule and RNG states (``immiscible.engine.checkpoints``).

    python -m immiscible.engine --group unconditional --profile cpu --method exact --seed 0 --output-dir ...
    accelerate launch --multi_gpu --num_processes 2 -m immiscible.engine --group unconditional --profile smoke ...
"""
from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from immiscible.config import to_dict
from immiscible.data import batch_indices, flip_mask, load_images, load_labels, to_model_input
from immiscible.diffusion.losses import loss_name, make_denoising_loss
from immiscible.diffusion.schedules import alphas_cumprod
from immiscible.engine.checkpoints import (check_resumable, checkpoint_step, init_weights_path,
                                           latest_valid_checkpoint, list_checkpoints, list_snapshots,
                                           load_checkpoint, load_weights, model_config_json, remove_tmp,
                                           save_checkpoint, save_snapshot, truncate_log, weights_digest)
from immiscible.engine.config import TrainConfig, check_config
from immiscible.io import atomic_write_text
from immiscible.models import build_unet, num_parameters
from immiscible.noise.prefetch import prefetch
from immiscible.noise.source import draw_noise, step_generator


def _stop_if_not_finite(value: torch.Tensor, step: int, run_dir: Path) -> None:
    """Raise (without saving) when the losses summed since the last check are not finite (one host sync)."""
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(f"non-finite loss ({float(value.max())}) by step {step} of {run_dir}; stopped "
                                 f"without saving. Last good "
                                 f"checkpoint: {latest_valid_checkpoint(run_dir)}. Lower lr or enable grad_clip.")


def training_data(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(uint8 images (N, C, H, W), labels (N,) or None for an unconditional run) of a run: the train split of
    cfg.dataset, restricted to ``cfg.classes`` when given, then to its first ``cfg.num_images``."""
    if not cfg.classes:
        images = load_images(cfg.dataset, "train", cfg.data_dir, cfg.resolution, cfg.num_images)
        if not cfg.num_classes:
            return images, None
        labels, names = load_labels(cfg.dataset, "train", cfg.data_dir, cfg.num_images)
    else:
        images = load_images(cfg.dataset, "train", cfg.data_dir, cfg.resolution)
        labels, names = load_labels(cfg.dataset, "train", cfg.data_dir)
        unknown = [c for c in cfg.classes if c >= len(names)]
        if unknown:
            raise ValueError(f"classes={list(cfg.classes)}: {cfg.dataset} has classes 0..{len(names) - 1} "
                             f"({', '.join(names)}); {unknown} do not exist")
        keep = torch.isin(labels, torch.tensor(cfg.classes))
        images, labels = images[keep], labels[keep]
        if cfg.num_images:
            images, labels = images[:cfg.num_images], labels[:cfg.num_images]
    if cfg.num_classes and len(names) != cfg.num_classes:
        raise ValueError(f"{cfg.dataset} has {len(names)} classes but num_classes={cfg.num_classes}: "
                         f"set num_classes: {len(names)}")
    return images, (labels if cfg.num_classes else None)


def training_inputs(cfg: TrainConfig, images: torch.Tensor | None = None, labels=None):
    """(images, labels) a run trains on: the given ones, else ``training_data(cfg)``; labels checked against
    ``cfg.num_classes`` (a class-conditional run needs them, each in [0, num_classes))."""
    if images is None:
        images, loaded_labels = training_data(cfg)
        labels = loaded_labels if labels is None else labels
    labels = None if labels is None else torch.as_tensor(labels)
    if cfg.num_classes and labels is None:
        raise ValueError(f"num_classes={cfg.num_classes}: a class-conditional run needs labels (train(..., labels=))")
    if cfg.num_classes and not (0 <= int(labels.min()) and int(labels.max()) < cfg.num_classes):
        raise ValueError(f"labels must lie in [0, {cfg.num_classes}); got [{int(labels.min())}, {int(labels.max())}]")
    return images, labels

def is_log_step(cfg: TrainConfig, step: int) -> bool:
    """Whether the step (0-based) ends a logging interval: the steps the assignment statistics are measured on."""
    return (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps


def batch_source(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor | None, device: torch.device,
                 rank: int = 0, world: int = 1, group=None, side_stream=None):
    """``next_batch(step) -> (x0, labels, generator, noise, info)`` of one run on one process: the step's slice of
    the global batch (``batch_indices``), flipped by ``flip_mask``, and its noise drawn and paired by
    ``draw_noise`` from the generator of (seed, step, rank). A pure function of (cfg, step, rank): what makes a run
    resumable and side-by-side runs equal to single ones. ``side_stream``: a CUDA stream to queue the work on."""
    local_batch = cfg.batch_size // world
    n_images = len(images)

    def next_batch(step: int) -> tuple:
        idx = batch_indices(cfg.seed, step, cfg.batch_size, n_images)[rank * local_batch:(rank + 1) * local_batch]
        with torch.cuda.stream(side_stream) if side_stream is not None else contextlib.nullcontext():
            x0 = images[torch.from_numpy(idx).to(images.device)]  # (B, C, H, W): uint8 -> [-1, 1]; float data as is
            x0 = to_model_input(x0) if x0.dtype == torch.uint8 else x0.float()
            if cfg.hflip:
                flip = torch.from_numpy(flip_mask(cfg.seed, step, cfg.batch_size)[rank * local_batch:
                                                                                  (rank + 1) * local_batch])
                x0 = torch.where(flip.to(x0.device)[:, None, None, None], x0.flip(-1), x0)
            x0 = x0.to(device)
            y = None if labels is None else labels[torch.from_numpy(idx).to(labels.device)].to(device)
            generator = step_generator(cfg.seed, step, rank, device)
            noise, info = draw_noise(x0, generator, cfg.method, cfg.knn_k, cfg.assign_cost, cfg.assign_solver,
                                     group, world, stats=is_log_step(cfg, step), labels=y)
            return x0, y, generator, noise, info
    return next_batch


def saves_at(cfg: TrainConfig, done: int) -> tuple[bool, bool]:
    """(an EMA snapshot, a full checkpoint) is written after ``done`` steps."""
    snapshot = done == cfg.steps or bool(cfg.snapshot_every and done % cfg.snapshot_every == 0)
    return snapshot, done % cfg.checkpoint_every == 0 or done == cfg.steps


def append_log(run_dir: Path, done: int, loss: float, lr: float, info: dict, elapsed_s: float, **extra) -> dict:
    """Append one record to the run's log.jsonl: the mean loss since the last record and the step's assignment
    statistics (``draw_noise``'s info)."""
    record = {"step": done, "loss": loss, "lr": lr, "dist_before": float(info["dist_before"]),
              "dist_after": float(info["dist_after"]), "assign_ms": info["assign_ms"],
              "assign_batch": info["assign_batch"], "elapsed_s": elapsed_s, **extra}
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def resume_or_start(cfg: TrainConfig, raw_model, ema, optimizer, lr_scheduler, on_change: str = "error",
                    is_main: bool = True, barrier=lambda: None, at_step: int | None = None,
                    loss: str | None = None) -> int:
    """Prepare cfg.output_dir for training and return the step to start from: the newest valid checkpoint's
    (``at_step``: that step's checkpoint instead), loaded into model, EMA (on the model's device), optimizer and
    schedule, else 0. A folder holding a run of another config, or of another loss (``loss``: the name recorded in
    its loss.json), raises (``on_change="error"``) or is deleted ("restart"). Snapshots and log lines written
    after the starting state are removed (they are redone)."""
    run_dir = Path(cfg.output_dir)
    saved_loss = json.loads((run_dir / "loss.json").read_text())["loss"] if (run_dir / "loss.json").is_file() else None
    if loss is not None and saved_loss is not None and saved_loss != loss:
        message = (f"{run_dir} was trained with the {saved_loss!r} loss, not {loss!r}: resume it with the command that "
                   "trained it (a consistency run: python -m immiscible.experiments.consistency_train or the "
                   "consistency experiment's train), or use another output_dir for the new run.")
        if on_change == "error":
            raise ValueError(message)
        warnings.warn(f"{message} Restarting: deleting {run_dir}.")
        barrier()
        if is_main:
            shutil.rmtree(run_dir)
        barrier()
    start_step = 0
    checkpoint = latest_valid_checkpoint(run_dir)
    if at_step is not None and at_step != (checkpoint_step(checkpoint) if checkpoint is not None else 0):
        matches = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) == at_step]
        if at_step and not matches:
            raise FileNotFoundError(f"{run_dir} has no checkpoint of step {at_step} to resume from (it has "
                                    f"{[checkpoint_step(p) for p in list_checkpoints(run_dir)]}): train it alone "
                                    "to its newest checkpoint's step, or delete it to start over")
        checkpoint = matches[0] if at_step else None
    # the config the folder's run was started with: its newest checkpoint's, else (killed before its first
    # checkpoint) its train_config.json, so that a new setting never inherits the old run's snapshots
    saved_at = checkpoint / "state.json" if checkpoint is not None else run_dir / "train_config.json"
    if saved_at.is_file():
        saved = json.loads(saved_at.read_text())
        try:
            check_resumable(saved["config"] if checkpoint is not None else saved, cfg, saved_at.parent)
        except ValueError as e:
            if on_change == "error":
                raise
            warnings.warn(f"{e} Restarting: deleting {run_dir}.")
            barrier()
            if is_main:
                shutil.rmtree(run_dir)
            barrier()
            checkpoint = None
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, raw_model, ema, optimizer, lr_scheduler)["step"]
    param = next(raw_model.parameters())  # after loading: the loaded shadow weights come back as saved, on the CPU
    ema.to(device=param.device, dtype=param.dtype)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_tmp(run_dir)  # leftovers of writes that were killed
        remove_tmp(run_dir / "snapshots")
        for step, path in list_snapshots(run_dir).items():  # written after the state we start from: redone below
            if step > start_step:
                path.unlink()
        atomic_write_text(run_dir / "train_config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
        atomic_write_text(run_dir / "model_config.json", model_config_json(raw_model))
        if loss is not None:
            atomic_write_text(run_dir / "loss.json", json.dumps({"loss": loss}) + "\n")
        truncate_log(run_dir / "log.jsonl", start_step)
    barrier()
    return start_step


def train(cfg: TrainConfig, images: torch.Tensor | None = None, on_change: str = "error", labels=None,
          model=None, loss_fn=None, optimizer_cls=None) -> dict:
    """Train (or resume) one run into cfg.output_dir; returns a summary.

    ``images``: uint8 (N, C, H, W) to train on instead of loading cfg.dataset, or float (N, C, H, W) already in the
    model's space (VAE latents after scaling); ``labels``: (N,) class labels passed
    to ``loss_fn``; ``model``: a freshly built model instead of ``build_unet(cfg.model, ...)`` (built under the
    run's seed by the caller); ``loss_fn``: the experiment's loss; ``optimizer_cls``: an optimizer class with
    AdamW's signature (default ``torch.optim.AdamW``; e.g. bitsandbytes' 8-bit AdamW, which the caller records in
    ``cfg.settings`` so that a resume checks it). ``on_change``: what to do when output_dir holds
    a run with a different config: "error" or "restart" (delete it and train from scratch, as a pipeline stage does).
    """
    if on_change not in ("error", "restart"):
        raise ValueError(f"on_change={on_change!r}; choose 'error' or 'restart'")
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    cfg = check_config(cfg)
    mixed_precision = cfg.mixed_precision
    if mixed_precision != "no" and not torch.cuda.is_available():
        warnings.warn(f"mixed_precision={mixed_precision!r} needs a GPU; training in fp32 on CPU")
        mixed_precision = "no"
    accelerator = Accelerator(mixed_precision=mixed_precision)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world}): use a "
                         f"multiple of {world} such as {world * max(1, cfg.batch_size // world)}, or launch fewer "
                         "processes")
    run_dir = Path(cfg.output_dir)
    is_main = accelerator.is_main_process

    # ---- setup: data, model (pretrained weights when fine-tuning), loss, optimizer, EMA
    images, labels = training_inputs(cfg, images, labels)
    torch.manual_seed(cfg.seed)  # same initial weights on every process
    if model is None:
        model = build_unet(cfg.model, cfg.resolution, images.shape[1], cfg.dropout, cfg.num_classes)
    if cfg.init_from:  # fine-tuning: the given weights replace the random init (and start the EMA)
        init_path = init_weights_path(cfg.init_from)
        digest = weights_digest(init_path)
        if cfg.init_sha256 and cfg.init_sha256 != digest:
            raise ValueError(f"init_from {init_path} has SHA-256 {digest}, not the init_sha256={cfg.init_sha256} "
                             "asked for: the pretrained weights changed")
        cfg = replace(cfg, init_sha256=digest)  # recorded: a run is never resumed over other starting weights
        load_weights(model, init_path)
    if loss_fn is None:
        loss_fn = make_denoising_loss(cfg.objective, cfg.num_train_timesteps, alphas_cumprod(cfg, device),
                                      cfg.label_dropout, null_label=cfg.num_classes)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, model_cls=type(model), model_config=model.config)
    optimizer = (optimizer_cls or torch.optim.AdamW)(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Linear warmup then constant (ddpm-torch). Stepped by hand: accelerate would step it once per process.
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    # ---- resume from the newest valid checkpoint, else start fresh
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    start_step = resume_or_start(cfg, raw_model, ema, optimizer, lr_scheduler, on_change, is_main,
                                 accelerator.wait_for_everyone, loss=loss_name(loss_fn))

    # ---- where the assignment runs
    # "thread": batch s+1 is drawn and assigned in a background thread while batch s trains (the solvers release
    # the GIL); "auto" picks it on a GPU only (on a CPU the thread takes a core from torch).
    background = cfg.assign_background == "thread" or (cfg.assign_background == "auto" and device.type != "cpu")
    # A global assignment over processes runs its collectives on a process group of its own, so that the
    # background thread's all-gather/broadcast can never interleave with the training step's gradient all-reduce.
    group = None
    if cfg.assign_scope == "global" and world > 1 and cfg.method in ("exact", "quantized", "exact_class"):
        import torch.distributed as dist
        group = dist.new_group(list(range(world))) if background else dist.group.WORLD
    # On a GPU the thread queues its work on a side stream, so that copying the distances to the CPU waits for that
    # work only, not for the training step queued on the main stream.
    side_stream = torch.cuda.Stream(device) if background and device.type == "cuda" else None

    next_batch = batch_source(cfg, images, labels, device, rank, world, group, side_stream)

    # ---- the loop
    if is_main and cfg.init_from and start_step == 0:  # a fine-tuning run records its starting point as step 0
        save_snapshot(run_dir, 0, raw_model, ema)
    model.train()
    t_start = time.perf_counter()
    loss_sum, loss_count = torch.zeros((), dtype=torch.float64, device=device), 0
    loss = torch.full((), float("nan"), device=device)
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps,
               disable=not (cfg.progress and is_main), desc=f"train {cfg.method}-{cfg.seed}", unit="step",
               mininterval=1.0)
    steps = range(start_step, cfg.steps)
    batches = prefetch(next_batch, steps) if background else map(next_batch, steps)
    for step, (x0, y, generator, noise, info) in zip(bar, batches):
        if side_stream is not None:  # the main stream uses x0 and noise only once the side stream has made them
            main_stream = torch.cuda.current_stream(device)
            main_stream.wait_stream(side_stream)
            x0.record_stream(main_stream)
            noise.record_stream(main_stream)
        torch.manual_seed(int(step_generator(cfg.seed, step, rank + world).initial_seed()))  # dropout
        with accelerator.autocast():
            loss = loss_fn(model, x0, noise, generator, step, y)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(raw_model.parameters())
        loss_sum += loss.detach().double()  # stays on the device: no host sync outside log steps
        loss_count += 1

        done = step + 1
        if info is not None:  # a log step: the only per-step host sync
            mean_loss = accelerator.gather(loss_sum[None]).mean() / loss_count
            _stop_if_not_finite(mean_loss, done, run_dir)
            if is_main:
                record = append_log(run_dir, done, float(mean_loss), lr_scheduler.get_last_lr()[0], info,
                                    time.perf_counter() - t_start)
                bar.set_postfix(loss=f"{record['loss']:.4f}",
                                dist=f"{record['dist_before']:.2f}->{record['dist_after']:.2f}")
            loss_sum.zero_()
            loss_count = 0
        snapshot, checkpoint_now = saves_at(cfg, done)
        if snapshot or checkpoint_now:
            _stop_if_not_finite(loss_sum, done, run_dir)  # never save weights after a non-finite loss
        if is_main and snapshot:
            save_snapshot(run_dir, done, raw_model, ema)
        if checkpoint_now:
            if is_main:
                save_checkpoint(run_dir, done, cfg, raw_model, ema, optimizer, lr_scheduler)
            accelerator.wait_for_everyone()
    bar.close()

    seconds = time.perf_counter() - t_start
    ran = cfg.steps - start_step
    final_loss = float(accelerator.gather(loss.detach().float()[None]).mean())
    summary = {"run_dir": str(run_dir), "start_step": start_step, "steps": cfg.steps, "final_loss": final_loss,
               "seconds": seconds, "steps_per_s": ran / seconds if ran else None,
               "num_parameters": num_parameters(raw_model), "num_processes": world}
    if is_main and ran:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    # No accelerator.end_training() here: it destroys the process group, and a script may call train() once per
    # run in the same processes. Scripts call end_distributed() when done.
    return summary


def end_distributed() -> None:
    """Tear down the process group of a multi-process launch (once, at the end of a script)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
