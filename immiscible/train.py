"""One training loop for every experiment: diffusers UNet2DModel + DDPMScheduler + EMA on accelerate.

Noise per batch (Immiscible Diffusion, Li et al. 2024, Sec. 3): ``noise = torch.randn_like(x0)``, then
``vanilla`` keeps it, ``exact``/``quantized`` re-pair it with ``assign_noise``, ``knn`` draws it with
``knn_noise``. That one ``noise`` builds both x_t and the target (``objectives.training_pair``).

Reproducibility (designed so that a killed run resumes to bitwise the same weights on CPU):
- data order is a function of (seed, step): batch ``s`` holds positions s*B..(s+1)*B-1 of the epoch permutations
  ``default_rng([seed, epoch])``; each process takes its slice of the global batch;
- noise and timesteps come from a generator seeded by (seed, step, rank), so they need no saved state;
- dropout uses torch's global RNG, whose state is saved with numpy's and python's in every checkpoint;
- a checkpoint is written into a temporary folder, checksummed (SHA256SUMS), then renamed into place with
  ``os.replace``; on resume a checkpoint whose checksums fail is skipped with a warning;
- snapshots and run files go through ``immiscible.io`` (temporary file, then ``os.replace``); the ``.tmp-*`` leftovers
  of a killed write are removed when the run starts again (docs/bad_inputs.md lists what each failure gives).

    python -m immiscible.train --profile cpu --method exact --seed 0 --output-dir checkpoints/unconditional/cpu/exact-0
    accelerate launch --multi_gpu --num_processes 2 -m immiscible.train --profile smoke ...   # several processes
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from immiscible.assignment import assign_noise, knn_noise, mean_pair_distance
from immiscible.config import choices, from_dict, to_dict, validate
from immiscible.data import load_dataset
from immiscible.io import NO_SPACE, atomic_write, atomic_write_text, no_space_error
from immiscible.models import MODEL_CONFIGS, build_unet, num_parameters
from immiscible.objectives import OBJECTIVES, model_time, sample_t, training_pair
from immiscible.prefetch import prefetch

METHODS = ("vanilla", "exact", "quantized", "knn")
# Fields that may change between a run and its resumption (they do not change the trajectory).
RESUMABLE_FIELDS = ("steps", "output_dir", "checkpoint_every", "checkpoints_total_limit", "snapshot_every",
                    "log_every", "progress", "data_dir", "assign_background")


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = "cifar10"              # a prepared name under data_dir, or an ImageFolder path
    data_dir: str = "data"
    resolution: int = 32                  # images are average-pooled to this size (must divide the stored size)
    num_images: int = 0                   # 0: the whole train split; N: its first N images (smoke runs)
    # model
    model: str = field(default="tiny", metadata=choices(*MODEL_CONFIGS))
    dropout: float | None = None          # None: the model config's own value
    # diffusion (DDPM linear betas 1e-4..0.02 over 1000 steps, as in the paper's DDIM base code)
    objective: str = field(default="eps", metadata=choices(*OBJECTIVES))
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = field(default="linear", metadata=choices("linear", "scaled_linear", "squaredcos_cap_v2"))
    # noise assignment
    method: str = field(default="vanilla", metadata=choices(*METHODS))
    knn_k: int = 4
    assign_cost: str = field(default="l2", metadata=choices("l2", "sqeuclidean"))
    assign_solver: str = field(default="auto", metadata=choices("auto", "jv", "lap", "scipy"))
    assign_scope: str = field(default="global", metadata=choices("global", "local"))  # across processes or per process
    # "thread": assign batch s+1 in a background thread while batch s trains (same results); "inline": in the loop;
    # "auto": thread on a GPU, inline on CPU (there the thread would compete with torch for the same cores).
    assign_background: str = field(default="auto", metadata=choices("auto", "thread", "inline"))
    # optimisation
    batch_size: int = 64                  # global batch (all processes together) = the assignment batch
    steps: int = 1000
    lr: float = 2e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999             # effective decay is min(ema_decay, (1+n)/(10+n)) (diffusers EMAModel)
    mixed_precision: str = field(default="no", metadata=choices("no", "fp16", "bf16"))  # GPU only
    # bookkeeping
    seed: int = 0
    output_dir: str = "checkpoints/run"
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 2      # full checkpoints kept (EMA snapshots are kept separately)
    snapshot_every: int = 0               # EMA weights saved for evaluation every N steps (0: final only)
    log_every: int = 10
    progress: bool = True


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Validate types, choices and ranges of the whole config before any compute."""
    cfg = validate(cfg)
    positive = ("resolution", "num_train_timesteps", "batch_size", "checkpoint_every", "log_every", "knn_k",
                "checkpoints_total_limit")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be >= 1")
    for name in ("steps", "num_images", "warmup_steps", "snapshot_every"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be >= 0")
    if not 0 <= cfg.ema_decay < 1:
        raise ValueError(f"ema_decay={cfg.ema_decay!r} must be in [0, 1)")
    return cfg


# ----------------------------------------------------------------------------- data

def downsample(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, C, r, r) by average pooling (r must divide H)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, C, H, W)
    h = x.shape[-1]
    if x.shape[-2] != h:
        raise ValueError(f"images must be square, got {tuple(x.shape[-2:])}")
    if h == resolution:
        return x.contiguous()
    if h % resolution:
        raise ValueError(f"resolution={resolution} must divide the image size {h} (e.g. {h // 2}); "
                         "pick a divisor or prepare the data at another size")
    k = h // resolution
    out = [F.avg_pool2d(x[i:i + 4096].float(), k).round().to(torch.uint8) for i in range(0, len(x), 4096)]
    return torch.cat(out)


def load_images(dataset: str, split: str, data_dir: str, resolution: int, num_images: int = 0) -> torch.Tensor:
    """A dataset split as uint8 (N, C, r, r) at ``resolution``; ``num_images`` > 0 keeps the first N."""
    images = load_dataset(dataset, split, data_dir).images
    if num_images:
        images = images[:num_images]
    return downsample(images, resolution)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


@lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Dataset indices of the global batch at ``step``: a pure function of (seed, step), hence resumable."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = positions // n, positions % n
    return np.array([_epoch_permutation(seed, int(e), n)[o] for e, o in zip(epochs, offsets)], dtype=np.int64)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator for the noise and timesteps of one step on one process, seeded by (seed, step, rank)."""
    state = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(state)


def draw_noise(cfg: TrainConfig, x0: torch.Tensor, generator: torch.Generator, accelerator=None) -> tuple:
    """The (assigned) noise for batch x0 and assignment stats (dist before, dist after, ms, assignment batch)."""
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    if cfg.method == "vanilla":
        d = mean_pair_distance(x0, noise)
        return noise, d, d, 0.0, x0.shape[0]
    start = time.perf_counter()
    if cfg.method == "knn":  # no coupling between images: always local
        assigned = knn_noise(x0, cfg.knn_k, generator=generator)
        batch = x0.shape[0]
    else:
        options = dict(cost=cfg.assign_cost, solver=cfg.assign_solver) if cfg.method == "exact" else {}
        world = accelerator.num_processes if accelerator is not None else 1
        if cfg.assign_scope == "global" and world > 1:
            # Gather the global batch (rank 0 rows first), assign once, keep this process's slice.
            x0_all, noise_all = accelerator.gather(x0.contiguous()), accelerator.gather(noise.contiguous())
            b = x0.shape[0]
            r = accelerator.process_index
            assigned = assign_noise(x0_all, noise_all, cfg.method, **options)[r * b:(r + 1) * b]
            batch = x0_all.shape[0]
        else:
            assigned = assign_noise(x0, noise, cfg.method, **options)
            batch = x0.shape[0]
    ms = (time.perf_counter() - start) * 1000
    return assigned, mean_pair_distance(x0, noise), mean_pair_distance(x0, assigned), ms, batch


# ----------------------------------------------------------------------------- checkpoints

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checksums(folder: Path) -> None:
    """Write SHA256SUMS for every file of ``folder`` (the last file of a checkpoint)."""
    lines = [f"{_sha256(p)}  {p.name}" for p in sorted(folder.iterdir()) if p.is_file() and p.name != "SHA256SUMS"]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def verify_checksums(folder: Path) -> bool:
    """True when SHA256SUMS exists and every listed file matches it."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return False
    try:
        lines = sums.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    if not lines:
        return False
    for line in lines:
        digest, sep, name = line.partition("  ")
        if not sep or not (folder / name).is_file() or _sha256(folder / name) != digest:
            return False
    return True


def checkpoint_step(path: Path) -> int:
    """checkpoint-0001000 -> 1000."""
    return int(path.name.rsplit("-", 1)[1])


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders (checkpoint-<digits>) of a run, oldest first; other names such as copies are ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
                  key=checkpoint_step)


def latest_valid_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose checksums verify; corrupt ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        if verify_checksums(path):
            return path
        warnings.warn(f"checkpoint {path} is incomplete or corrupt (SHA256SUMS mismatch); using an older one")
    return None


def _atomic_dir(final: Path, write) -> Path:
    """Call ``write(tmp_dir)``, checksum it, fsync, then rename it to ``final`` in one step. A failed write removes
    its temporary folder (a killed one leaves it to the next run's clean-up); a full disk says what to do."""
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        write_checksums(tmp)
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            raise no_space_error(final, e) from e
        raise
    if final.exists():
        _remove_dir(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _remove_dir(path: Path) -> None:
    """Delete a folder by renaming it to .tmp-* first: a kill mid-way leaves only what the next run cleans up."""
    doomed = path.parent / f".tmp-remove-{path.name}-{os.getpid()}"
    try:
        os.replace(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_tmp(folder: Path) -> None:
    """Delete the .tmp-* leftovers of writes that were killed."""
    for tmp in folder.glob(".tmp-*") if folder.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def ema_state_dict(model, ema) -> dict[str, torch.Tensor]:
    """The model's state dict with parameters replaced by their EMA values."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for (name, _), shadow in zip(model.named_parameters(), ema.shadow_params):
        state[name] = shadow.detach().to(state[name].dtype).clone().contiguous()
    return state


def save_checkpoint(run_dir: Path, step: int, cfg: TrainConfig, model, ema, optimizer, lr_scheduler) -> Path:
    """Write checkpoint-{step} atomically: weights, EMA, optimizer, LR schedule, RNG states, step, config."""
    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        save_file(ema_state_dict(model, ema), tmp / "ema.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()},
                   tmp / "optimizer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, tmp / "rng.safetensors")
        np_state = np.random.get_state()
        ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        state = {"step": step, "config": to_dict(cfg), "ema": ema_meta,
                 "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                 "python_rng": _listify(random.getstate()),
                 "data_order": "default_rng([seed, epoch]).permutation(N); batch s = positions s*B..(s+1)*B-1"}
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    path = _atomic_dir(run_dir / f"checkpoint-{step:07d}", write)
    for old in list_checkpoints(run_dir)[:-cfg.checkpoints_total_limit]:
        _remove_dir(old)
    return path


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, (list, tuple)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def load_weights(model, path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict into ``model``; weights of another model config -> ValueError saying so."""
    weights = load_file(path)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [(k, tuple(weights[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = (f"shape of {wrong[0][0]} is {wrong[0][1]}, the model expects {wrong[0][2]}" if wrong else
                  f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        raise ValueError(f"{path} holds weights of another model config ({detail}). Load it with the config it "
                         "was trained with (its run's train_config.json), or use another output_dir for a new model.")
    model.load_state_dict(weights)
    return weights


def load_checkpoint(path: Path, model, ema, optimizer, lr_scheduler) -> dict:
    """Restore everything ``save_checkpoint`` wrote; returns state.json."""
    state = json.loads((path / "state.json").read_text())
    load_weights(model, path / "model.safetensors")
    ema_weights = load_file(path / "ema.safetensors")
    shadow = [ema_weights[name] for name, _ in model.named_parameters()]
    ema.load_state_dict({**state["ema"], "shadow_params": shadow})
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    lr_scheduler.load_state_dict(opt["lr_scheduler"])
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    name, keys, *rest = state["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(_tuplify(state["python_rng"]))
    return state


def save_snapshot(run_dir: Path, step: int, model, ema) -> Path:
    """EMA weights for evaluation: snapshots/ema-{step}.safetensors (kept, unlike full checkpoints)."""
    folder = run_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    state = ema_state_dict(model, ema)
    return atomic_write(folder / f"ema-{step:07d}.safetensors",
                        lambda tmp: save_file(state, tmp, metadata={"step": str(step)}))


def list_snapshots(run_dir: str | Path) -> dict[int, Path]:
    """{step: path} of a run's EMA snapshots."""
    folder = Path(run_dir) / "snapshots"
    paths = folder.glob("ema-*.safetensors") if folder.is_dir() else []
    return dict(sorted((int(p.stem.split("-")[1]), p) for p in paths))


def load_run_model(run_dir: str | Path, step: int | None = None):
    """(UNet with EMA weights of ``step`` (default: last snapshot), its TrainConfig) of a finished run."""
    run_dir = Path(run_dir)
    cfg = from_dict(TrainConfig, json.loads((run_dir / "train_config.json").read_text()))
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise FileNotFoundError(f"no EMA snapshots in {run_dir}/snapshots: train the run first")
    step = max(snaps) if step is None else step
    if step not in snaps:
        raise ValueError(f"no snapshot for step {step} in {run_dir}; available steps: {sorted(snaps)}")
    channels = json.loads((run_dir / "model_config.json").read_text())["in_channels"]
    model = build_unet(cfg.model, cfg.resolution, channels, cfg.dropout)
    load_weights(model, snaps[step])
    return model.eval(), cfg


def model_config_json(model) -> str:
    """The UNet's diffusers config as JSON, without diffusers' private keys (their order changes from process to
    process, which would make identical runs look different to DVC)."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return json.dumps(config, indent=2, default=str) + "\n"


def _check_resumable(saved: dict, cfg: TrainConfig, path: Path) -> None:
    current = to_dict(cfg)
    defaults = to_dict(TrainConfig())  # a field added after the checkpoint was written counts as its default
    diff = {k: (saved.get(k, defaults[k]), v) for k, v in current.items()
            if k not in RESUMABLE_FIELDS and saved.get(k, defaults[k]) != v}
    if diff:
        raise ValueError(f"{path} was trained with a different config {diff} (saved, requested). Use another "
                         "output_dir for the new setting, or delete the old run to start over.")


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, images: torch.Tensor | None = None, on_change: str = "error") -> dict:
    """Train (or resume) one run into cfg.output_dir; returns a summary. ``images``: uint8 (N, C, H, W) to
    train on instead of loading cfg.dataset (tests). ``on_change``: what to do when output_dir holds a run with a
    different config: "error" or "restart" (delete it and train from scratch, as a pipeline stage does)."""
    if on_change not in ("error", "restart"):
        raise ValueError(f"on_change={on_change!r}; choose 'error' or 'restart'")
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    cfg = check_config(cfg)
    mixed_precision = cfg.mixed_precision
    if mixed_precision != "no" and not torch.cuda.is_available():
        warnings.warn(f"mixed_precision={mixed_precision!r} needs a GPU; training in fp32 on CPU")
        mixed_precision = "no"
    accelerator = Accelerator(mixed_precision=mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world}): use a "
                         f"multiple of {world} such as {world * max(1, cfg.batch_size // world)}, or launch fewer "
                         "processes")
    local_batch = cfg.batch_size // world
    run_dir = Path(cfg.output_dir)
    is_main = accelerator.is_main_process

    # ---- setup: data, model, noise schedule, optimizer, EMA
    if images is None:
        images = load_images(cfg.dataset, "train", cfg.data_dir, cfg.resolution, cfg.num_images)
    n_images = len(images)
    torch.manual_seed(cfg.seed)  # same initial weights on every process
    model = build_unet(cfg.model, cfg.resolution, images.shape[1], cfg.dropout)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                              beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule)
    alphas_cumprod = scheduler.alphas_cumprod.to(accelerator.device)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, model_cls=type(model), model_config=model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Linear warmup then constant (ddpm-torch). Stepped by hand: accelerate would step it once per process.
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    raw_model = accelerator.unwrap_model(model)

    # ---- resume from the newest valid checkpoint, else start fresh
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    start_step = 0
    checkpoint = latest_valid_checkpoint(run_dir)
    if checkpoint is not None:
        state = json.loads((checkpoint / "state.json").read_text())
        try:
            _check_resumable(state["config"], cfg, checkpoint)
        except ValueError as e:
            if on_change == "error":
                raise
            warnings.warn(f"{e} Restarting: deleting {run_dir}.")
            accelerator.wait_for_everyone()
            if is_main:
                shutil.rmtree(run_dir)
            accelerator.wait_for_everyone()
            checkpoint = None
    if checkpoint is not None:
        load_checkpoint(checkpoint, raw_model, ema, optimizer, lr_scheduler)
        start_step = state["step"]
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_tmp(run_dir)  # leftovers of writes that were killed
        _remove_tmp(run_dir / "snapshots")
        atomic_write_text(run_dir / "train_config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
        atomic_write_text(run_dir / "model_config.json", model_config_json(raw_model))
        _truncate_log(run_dir / "log.jsonl", start_step)
    accelerator.wait_for_everyone()

    # ---- the loop
    model.train()
    t_start, loss_sum, loss_count, last_loss = time.perf_counter(), 0.0, 0, float("nan")
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, disable=not (cfg.progress and is_main),
               desc=f"train {cfg.method}-{cfg.seed}", unit="step", mininterval=1.0)

    # The exact solve runs on the CPU and releases the GIL (tested): batch s+1 is assigned in a thread while batch s
    # trains. Not with a global assignment over several processes (its all-gather must stay on the main thread).
    background = (cfg.assign_background == "thread"
                  or (cfg.assign_background == "auto" and accelerator.device.type != "cpu"))
    background = background and not (cfg.assign_scope == "global" and world > 1)
    # On a GPU the thread queues its work (noise, distance GEMM) on a side stream, so that copying the distances to
    # the CPU waits for that work only, not for the training step queued on the main stream.
    side_stream = torch.cuda.Stream(accelerator.device) if background and accelerator.device.type == "cuda" else None

    def next_batch(step: int) -> tuple:
        """x0, its (assigned) noise and the step's generator: a pure function of (seed, step, rank)."""
        idx = batch_indices(cfg.seed, step, cfg.batch_size, n_images)[rank * local_batch:(rank + 1) * local_batch]
        with torch.cuda.stream(side_stream) if side_stream is not None else contextlib.nullcontext():
            x0 = to_model_input(images[torch.from_numpy(idx)]).to(accelerator.device)  # (B, C, H, W) in [-1, 1]
            generator = step_generator(cfg.seed, step, rank, accelerator.device)
            return (x0, generator) + draw_noise(cfg, x0, generator, accelerator)

    steps = range(start_step, cfg.steps)
    batches = prefetch(next_batch, steps) if background else map(next_batch, steps)
    for step, (x0, generator, noise, dist_before, dist_after, assign_ms, assign_batch) in zip(bar, batches):
        if side_stream is not None:  # the main stream uses x0 and noise only once the side stream has made them
            main_stream = torch.cuda.current_stream(accelerator.device)
            main_stream.wait_stream(side_stream)
            x0.record_stream(main_stream)
            noise.record_stream(main_stream)
        torch.manual_seed(int(step_generator(cfg.seed, step, rank + world, torch.device("cpu")).initial_seed()))  # dropout
        t = sample_t(cfg.objective, x0.shape[0], cfg.num_train_timesteps, generator, accelerator.device)
        x_t, target = training_pair(cfg.objective, x0, noise, t, alphas_cumprod)  # one noise for both
        with accelerator.autocast():
            prediction = model(x_t, model_time(cfg.objective, t, cfg.num_train_timesteps)).sample
        loss = F.mse_loss(prediction.float(), target.float())
        losses = accelerator.gather(loss.detach()[None])
        if not torch.isfinite(losses).all():
            last = latest_valid_checkpoint(run_dir)
            raise FloatingPointError(f"non-finite loss {losses.tolist()} at step {step} of {run_dir}; stopped "
                                     f"without saving. Last good checkpoint: {last}. Lower lr or enable grad_clip.")
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(raw_model.parameters())

        done = step + 1
        last_loss = float(losses.mean())
        loss_sum, loss_count = loss_sum + last_loss, loss_count + 1
        if is_main and (done % cfg.log_every == 0 or done == cfg.steps):
            record = {"step": done, "loss": loss_sum / loss_count, "lr": lr_scheduler.get_last_lr()[0],
                      "dist_before": dist_before, "dist_after": dist_after, "assign_ms": assign_ms,
                      "assign_batch": assign_batch, "elapsed_s": time.perf_counter() - t_start}
            with open(run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4f}", dist=f"{dist_before:.2f}->{dist_after:.2f}")
            loss_sum, loss_count = 0.0, 0
        if is_main and (done == cfg.steps or (cfg.snapshot_every and done % cfg.snapshot_every == 0)):
            save_snapshot(run_dir, done, raw_model, ema)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            if is_main:
                save_checkpoint(run_dir, done, cfg, raw_model, ema, optimizer, lr_scheduler)
            accelerator.wait_for_everyone()
    bar.close()

    seconds = time.perf_counter() - t_start
    ran = cfg.steps - start_step
    summary = {"run_dir": str(run_dir), "start_step": start_step, "steps": cfg.steps, "final_loss": last_loss,
               "seconds": seconds, "steps_per_s": ran / seconds if ran else None,
               "num_parameters": num_parameters(raw_model), "num_processes": world}
    if is_main and ran:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    # No accelerator.end_training() here: it destroys the process group, and train_all calls train() once per run
    # in the same processes. Scripts call end_distributed() when done.
    return summary


def end_distributed() -> None:
    """Tear down the process group of a multi-process launch (once, at the end of a script)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a run resumes from) and a partial last line
    (a run killed while appending)."""
    if not path.exists():
        return
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append((json.loads(line)["step"], line))
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for s, line in records if s <= step))


# ----------------------------------------------------------------------------- command line

def _parse_value(text: str):
    import yaml
    return yaml.safe_load(text)


def config_from_args(argv=None) -> tuple[TrainConfig, str]:
    """(TrainConfig, on_change) from a profile of params.yaml's ``unconditional`` group plus command-line overrides."""
    p = argparse.ArgumentParser(description="Train one diffusion run (resumes from its last checkpoint).")
    p.add_argument("--profile", default=None, help="smoke | cpu | paper (from --params, group 'unconditional')")
    p.add_argument("--params", default="params.yaml", help="params file holding the profiles")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--seed", type=int)
    p.add_argument("--objective", choices=OBJECTIVES)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--dataset")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--output-dir", dest="output_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrainConfig field")
    p.add_argument("--on-change", choices=("error", "restart"), default="error",
                   help="output_dir holds a run with another config: stop (default) or retrain from scratch")
    a = p.parse_args(argv)
    values: dict = {}
    if a.profile:
        from immiscible.unconditional import load_profile
        values.update(load_profile(a.profile, a.params)["train"])
    for key in ("method", "seed", "objective", "steps", "batch_size", "dataset", "data_dir", "output_dir"):
        if getattr(a, key) is not None:
            values[key] = getattr(a, key)
    for item in a.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        values[key] = _parse_value(text)
    return from_dict(TrainConfig, values), a.on_change


def main(argv=None) -> None:
    cfg, on_change = config_from_args(argv)
    summary = train(cfg, on_change=on_change)
    end_distributed()
    if int(os.environ.get("RANK", "0")) == 0:  # one summary, not one per process
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
