"""Sampling a trained run through the diffusers Stable Diffusion pipeline: the pretrained VAE, text encoder and
tokenizer with the run's UNet (its EMA snapshot), DDIM, classifier-free guidance.

    pipe = sd_pipeline("CompVis/stable-diffusion-v1-4", "checkpoints/sd/exact-0")
    images = generate(pipe, ["a photo of a goldfish"] * 4, steps=50, guidance_scale=7.5, seed=0)   # uint8 NHWC

    python -m immiscible.sd.sample --pretrained ... --run-dir runs/exact-0 --latents latents.safetensors \
        --per-class 50 --out samples/exact-0         # PNGs per class, for FID (clean-fid's compute_fid on folders)
"""
from __future__ import annotations

import argparse
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


def run_sd_settings(run_dir: str | Path) -> dict:
    """The SD settings a run was trained with (recorded by ``immiscible.sd.train`` in its config)."""
    path = Path(run_dir) / "train_config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} holds no run (no train_config.json): train it first")
    settings = json.loads(path.read_text()).get("settings", {}).get("stable_diffusion")
    if settings is None:
        raise ValueError(f"{run_dir} is not a Stable Diffusion run (python -m immiscible.sd.train)")
    return settings


def sample_folder(pretrained: str, run_dir: str | Path, out: str | Path, classes: list[str], per_class: int,
                  prompt_template: str = "a photo of a {}", steps: int = 50, guidance_scale: float = 7.5,
                  batch_size: int = 16, seed: int = 0, resolution: int | None = None, device: str | None = None,
                  progress: bool = True) -> Path:
    """``per_class`` PNGs per class prompt (the empty prompt when ``classes`` is empty: unconditional) of
    ``resolution`` pixels (that of the training images; default the UNet's own) in ``out/<class index>/<i>.png``;
    batch b uses generator seed ``seed + b``."""
    from PIL import Image
    from tqdm.auto import tqdm
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be >= 1")
    pipe = sd_pipeline(pretrained, run_dir, device=device)
    names = [c.replace("_", " ") for c in classes] or [None]
    jobs = [(ci, i) for ci in range(len(names)) for i in range(per_class)]
    out = Path(out)
    for b, start in enumerate(tqdm(range(0, len(jobs), batch_size), desc="sample", unit="batch", disable=not progress)):
        batch = jobs[start:start + batch_size]
        prompts = ["" if names[ci] is None else prompt_template.format(names[ci]) for ci, _ in batch]
        images = generate(pipe, prompts, steps, guidance_scale, seed + b, resolution)
        for (ci, i), image in zip(batch, images):
            folder = out / f"{ci:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return out


def main(argv=None) -> None:
    from immiscible.sd.latents import load_latents
    p = argparse.ArgumentParser(description="Sample a trained Stable Diffusion run into a folder of PNGs.")
    p.add_argument("--pretrained", required=True, help="the diffusers folder or hub id the run was trained with")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--latents", required=True, help="the run's latent cache (its class names)")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    sd = run_sd_settings(a.run_dir)  # the run's own conditioning and prompt template
    _, _, classes, meta = load_latents(a.latents)
    classes = classes if sd["conditioning"] == "class" else []
    # the images the run was trained on had the latent cache's resolution (SD v1's UNet defaults to 512 px)
    print(sample_folder(a.pretrained, a.run_dir, a.out, classes, a.per_class, sd["prompt_template"], a.steps,
                        a.guidance_scale, a.batch_size, a.seed, int(meta["resolution"])))


if __name__ == "__main__":
    main()
