"""Sampling from trained runs: DDIM (Song et al. 2021) through diffusers' DDIMScheduler, Euler for flow matching.

Sampling is seeded and batched; samples come back as uint8 (N, H, W, C) like the datasets, ready for the
feature extractors and for PNG grids (``immiscible.experiments.figures``).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from tqdm.auto import tqdm

from immiscible.data import to_uint8
from immiscible.diffusion.objectives import check_objective
from immiscible.diffusion.schedules import ddim_scheduler


def guided_output(model, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None,
                  guidance_scale: float, null_label: int) -> torch.Tensor:
    """The model's output at (x, t): unconditional without labels; with labels, classifier-free guidance
    uncond + s (cond - uncond) (Ho & Salimans 2022), conditional and null-class passes in one batch (s = 1: the
    conditional output alone)."""
    if class_labels is None:
        return model(x, t).sample.float()
    if guidance_scale == 1.0:
        return model(x, t, class_labels=class_labels).sample.float()
    both = model(torch.cat([x, x]), t, class_labels=torch.cat([class_labels, torch.full_like(class_labels,
                                                                                          null_label)])).sample
    cond, uncond = both.float().chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def ddim_sample(model, cfg, noise: torch.Tensor, num_inference_steps: int = 50, eta: float = 0.0,
                class_labels: torch.Tensor | None = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """x0 samples (B, C, H, W) in [-1, 1] from initial noise x_T by DDIM (guided by ``class_labels``, if any)."""
    scheduler = ddim_scheduler(cfg, num_inference_steps)
    x = noise
    for t in scheduler.timesteps:
        model_output = guided_output(model, x, t.to(x.device), class_labels, guidance_scale, cfg.num_classes)
        x = scheduler.step(model_output, t, x, eta=eta).prev_sample
    return x.clamp(-1, 1)


@torch.no_grad()
def flow_euler_sample(model, cfg, noise: torch.Tensor, num_inference_steps: int = 50) -> torch.Tensor:
    """x0 samples from noise at t=1 by Euler steps of dx/dt = v(x, t) down to t=0 (rectified flow)."""
    times = torch.linspace(1.0, 0.0, num_inference_steps + 1, device=noise.device)
    x = noise
    for t, t_next in zip(times[:-1], times[1:]):
        v = model(x, (t * cfg.num_train_timesteps).expand(x.shape[0])).sample.float()
        x = x + (t_next - t) * v
    return x.clamp(-1, 1)


def sample_images(model, cfg, num_samples: int, num_inference_steps: int = 50, batch_size: int = 256,
                  seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
                  autocast: bool = True, labels=None, guidance_scale: float = 1.0) -> np.ndarray:
    """``num_samples`` images as uint8 (N, H, W, C): DDIM for eps/v/x0 runs, Euler for flow runs. The initial noise
    is drawn on the CPU from ``seed`` (the same images on every device); the model runs on ``device``, in bf16
    autocast on CUDA when ``autocast``. A class-conditional run samples the classes ``labels`` (N,) with
    classifier-free guidance ``guidance_scale`` (DDIM only)."""
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (num_samples,):
            raise ValueError(f"labels must have shape ({num_samples},), got {tuple(labels.shape)}")
        if cfg.objective == "flow":
            raise ValueError("guided sampling is implemented for DDIM (eps, v, x0 objectives), not flow")
    check_objective(cfg.objective)
    device = torch.device(device)
    model = model.to(device).eval()
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if autocast and device.type == "cuda"
           else contextlib.nullcontext())
    channels = model.config.in_channels
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, num_samples, batch_size), desc="sample", unit="batch", disable=not progress,
                      leave=False):
        b = min(batch_size, num_samples - start)
        noise = torch.randn(b, channels, cfg.resolution, cfg.resolution, generator=generator).to(device)
        with amp:
            if cfg.objective == "flow":
                x0 = flow_euler_sample(model, cfg, noise, num_inference_steps)
            else:
                y = None if labels is None else labels[start:start + b].to(device)
                x0 = ddim_sample(model, cfg, noise, num_inference_steps, class_labels=y,
                                 guidance_scale=guidance_scale)
        out.append(to_uint8(x0))
    return np.concatenate(out)
