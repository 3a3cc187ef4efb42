"""Sampling a trained run through the diffusers Stable Diffusion pipeline: the pretrained VAE, text encoder and
tokenizer with the run's UNet (its EMA snapshot), DDIM, classifier-free guidance.

    pipe = sd_pipeline("CompVis/stable-diffusion-v1-4", "checkpoints/sd/exact-0")
    images = generate(pipe, ["a photo of a goldfish"] * 4, steps=50, guidance_scale=7.5, seed=0)   # uint8 NHWC
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from immiscible.engine.checkpoints import load_weights, snapshot_path


def load_run_unet(run_dir: str | Path, step: int | None = None):
    """The run's UNet2DConditionModel with the EMA weights of ``step`` (default: its last snapshot)."""
    from diffusers import UNet2DConditionModel
    path = snapshot_path(run_dir, step)
    unet = UNet2DConditionModel.from_config(json.loads((Path(run_dir) / "model_config.json").read_text()))
    load_weights(unet, path)
    return unet.eval()


def sd_pipeline(pretrained: str, run_dir: str | Path, step: int | None = None, device: str | None = None):
    """A StableDiffusionPipeline of the pretrained components with the run's UNet and a DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = StableDiffusionPipeline.from_pretrained(pretrained, unet=load_run_unet(run_dir, step), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(pipe, prompts: list[str], steps: int = 50, guidance_scale: float = 7.5, seed: int = 0,
             resolution: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) samples of ``prompts`` (an empty prompt: unconditional), one generator seed."""
    generator = torch.Generator(pipe.device).manual_seed(seed)
    size = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator,
               height=size, width=size, output_type="np").images
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
