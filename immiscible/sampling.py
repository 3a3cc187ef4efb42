"""Sampling from trained runs: DDIM (Song et al. 2021) through diffusers' DDIMScheduler, Euler for flow matching.

Sampling is seeded and batched; samples come back as uint8 (N, H, W, C) like the datasets, ready for the
feature extractors and for PNG grids.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from immiscible.data import to_uint8
from immiscible.io import atomic_write
from immiscible.objectives import PREDICTION_TYPES, check_objective


def ddim_scheduler(cfg, num_inference_steps: int):
    """A DDIMScheduler matching a TrainConfig's betas and objective, set to ``num_inference_steps``."""
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                              beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule,
                              prediction_type=PREDICTION_TYPES[cfg.objective], clip_sample=True,
                              set_alpha_to_one=True, timestep_spacing="leading")
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


@torch.no_grad()
def ddim_sample(model, cfg, noise: torch.Tensor, num_inference_steps: int = 50, eta: float = 0.0) -> torch.Tensor:
    """x0 samples (B, C, H, W) in [-1, 1] from initial noise x_T by DDIM."""
    scheduler = ddim_scheduler(cfg, num_inference_steps)
    x = noise
    for t in scheduler.timesteps:
        model_output = model(x, t.to(x.device)).sample
        x = scheduler.step(model_output, t, x, eta=eta).prev_sample
    return x.clamp(-1, 1)


@torch.no_grad()
def flow_euler_sample(model, cfg, noise: torch.Tensor, num_inference_steps: int = 50) -> torch.Tensor:
    """x0 samples from noise at t=1 by Euler steps of dx/dt = v(x, t) down to t=0 (rectified flow)."""
    times = torch.linspace(1.0, 0.0, num_inference_steps + 1, device=noise.device)
    x = noise
    for t, t_next in zip(times[:-1], times[1:]):
        v = model(x, (t * cfg.num_train_timesteps).expand(x.shape[0])).sample
        x = x + (t_next - t) * v
    return x.clamp(-1, 1)


def sample_images(model, cfg, num_samples: int, num_inference_steps: int = 50, batch_size: int = 256,
                  seed: int = 0, device: str | torch.device = "cpu", progress: bool = True) -> np.ndarray:
    """``num_samples`` images as uint8 (N, H, W, C): DDIM for eps/v/x0 runs, Euler for flow runs."""
    check_objective(cfg.objective)
    model = model.to(device).eval()
    channels = model.config.in_channels
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, num_samples, batch_size), desc="sample", unit="batch", disable=not progress,
                      leave=False):
        b = min(batch_size, num_samples - start)
        noise = torch.randn(b, channels, cfg.resolution, cfg.resolution, generator=generator).to(device)
        if cfg.objective == "flow":
            x0 = flow_euler_sample(model, cfg, noise, num_inference_steps)
        else:
            x0 = ddim_sample(model, cfg, noise, num_inference_steps)
        out.append(to_uint8(x0))
    return np.concatenate(out)


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2, scale: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (H', W', C) grid image, ``nrow`` images per row."""
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = img
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_grid(images: np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save uint8 (N, H, W, C) images as one PNG grid."""
    grid = make_grid(images, nrow, scale=scale)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    return atomic_write(path, image.save)
