"""Noise schedules: the DDPM betas (Ho et al. 2020) as diffusers builds them, in one place for training, sampling
and analysis. Any object with ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule`` (a
TrainConfig) describes a schedule."""
from __future__ import annotations

import torch

from immiscible.diffusion.objectives import PREDICTION_TYPES


def ddpm_scheduler(cfg):
    """diffusers' DDPMScheduler for the schedule of ``cfg``."""
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule)


def alphas_cumprod(cfg, device: torch.device | str = "cpu") -> torch.Tensor:
    """alpha_bar_t for t = 0..T-1, float32 (T,)."""
    return ddpm_scheduler(cfg).alphas_cumprod.to(device)


def ddim_scheduler(cfg, num_inference_steps: int):
    """A DDIMScheduler matching the schedule and objective of ``cfg``, set to ``num_inference_steps``."""
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                              beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule,
                              prediction_type=PREDICTION_TYPES[cfg.objective], clip_sample=True,
                              set_alpha_to_one=True, timestep_spacing="leading")
    scheduler.set_timesteps(num_inference_steps)
    return scheduler
