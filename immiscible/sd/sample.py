"""Sampling a trained run through the diffusers Stable Diffusion pipeline: the pretrained VAE, text encoder and
tokenizer with the run's UNet (its EMA snapshot) and classifier-free guidance. The default sampler is the official
generation's (generate.py: ``StableDiffusionPipeline`` with its defaults, ``num_inference_steps=20``): SD v1's PNDM
scheduler, 20 steps, guidance 7.5; DDIM is the other choice (the project's earlier setting: DDIM 50 steps, guidance
1.5, the profile paper_scratch_project).

    pipe = sd_pipeline("CompVis/stable-diffusion-v1-4", "checkpoints/sd/exact-0")            # PNDM
    images = generate(pipe, ["goldfish"] * 4, steps=20, guidance_scale=7.5, seed=0)       # uint8 NHWC

    python -m immiscible.sd.sample --pretrained ... --run-dir runs/exact-0 --latents data/latents/imagenet-256 \
        --params params.yaml --profile paper_scratch --per-class 50 --out samples/exact-0    # PNGs per class
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from immiscible.config import choices, from_dict, load_profile
from immiscible.engine.checkpoints import load_weights, snapshot_path

SCHEDULERS = ("pndm", "ddim")


@dataclass(frozen=True)
class SampleConfig:
    """The sampler of a profile (``stable_diffusion.profiles.<name>.sample``); the defaults are the official ones."""
    scheduler: str = field(default="pndm", metadata=choices(*SCHEDULERS))  # the pipeline's default for SD v1.4
    steps: int = 20                       # generate.py: num_inference_steps=20
    guidance_scale: float = 7.5           # StableDiffusionPipeline's default, which generate.py keeps


def sample_settings(params: str | Path | None = None, profile: str | None = None,
                    overrides: dict | None = None) -> SampleConfig:
    """The SampleConfig of params.yaml's ``stable_diffusion.profiles.<profile>.sample`` (the defaults without a
    profile), with ``overrides`` (None values ignored)."""
    values = {}
    if profile:
        values = load_profile(params or "params.yaml", "stable_diffusion", profile)[1].get("sample", {})
    sample = from_dict(SampleConfig, {**values, **{k: v for k, v in (overrides or {}).items() if v is not None}})
    if sample.steps < 1 or sample.guidance_scale < 0:
        raise ValueError(f"steps={sample.steps} must be >= 1 and guidance_scale={sample.guidance_scale} >= 0")
    return sample


def load_run_unet(run_dir: str | Path, step: int | None = None):
    """The run's UNet2DConditionModel with the EMA weights of ``step`` (default: its last snapshot)."""
    from diffusers import UNet2DConditionModel
    path = snapshot_path(run_dir, step)
    unet = UNet2DConditionModel.from_config(json.loads((Path(run_dir) / "model_config.json").read_text()))
    load_weights(unet, path)
    return unet.eval()


def make_scheduler(name: str, config: dict):
    """The sampling scheduler ``name`` from the pretrained scheduler's config. PNDM: SD v1.4's own scheduler is
    PNDM with ``skip_prk_steps`` (what the pipeline uses by default); from another scheduler's config PNDM gets
    ``skip_prk_steps=True`` as SD v1's. DDIM: diffusers' DDIM with the same training schedule."""
    from diffusers import DDIMScheduler, PNDMScheduler
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r}; choose one of {SCHEDULERS}")
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    return PNDMScheduler.from_config({**config, "skip_prk_steps": config.get("skip_prk_steps", True)})


def sd_pipeline(pretrained: str, run_dir: str | Path, step: int | None = None, device: str | None = None,
                scheduler: str = "pndm"):
    """A StableDiffusionPipeline of the pretrained components with the run's UNet and the ``scheduler`` sampler."""
    from diffusers import StableDiffusionPipeline
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = StableDiffusionPipeline.from_pretrained(pretrained, unet=load_run_unet(run_dir, step), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(pipe, prompts: list[str], steps: int = 20, guidance_scale: float = 7.5, seed: int = 0,
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
                  prompt_template: str = "{}", sample: SampleConfig = SampleConfig(), batch_size: int = 16,
                  seed: int = 0, resolution: int | None = None, device: str | None = None,
                  progress: bool = True) -> Path:
    """``per_class`` PNGs per class prompt (the empty prompt when ``classes`` is empty: unconditional) of
    ``resolution`` pixels (that of the training images; default the UNet's own) in ``out/<class index>/<i>.png``,
    sampled by ``sample``; batch b uses generator seed ``seed + b``."""
    from PIL import Image
    from tqdm.auto import tqdm
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be >= 1")
    pipe = sd_pipeline(pretrained, run_dir, device=device, scheduler=sample.scheduler)
    names = [c.replace("_", " ") for c in classes] or [None]
    jobs = [(ci, i) for ci in range(len(names)) for i in range(per_class)]
    out = Path(out)
    for b, start in enumerate(tqdm(range(0, len(jobs), batch_size), desc="sample", unit="batch", disable=not progress)):
        batch = jobs[start:start + batch_size]
        prompts = ["" if names[ci] is None else prompt_template.format(names[ci]) for ci, _ in batch]
        images = generate(pipe, prompts, sample.steps, sample.guidance_scale, seed + b, resolution)
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
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--profile", help="the stable_diffusion profile whose sampler to use (default: the official "
                                     "sampler, PNDM 20 steps, guidance 7.5)")
    p.add_argument("--scheduler", choices=SCHEDULERS, help="overrides the profile's")
    p.add_argument("--steps", type=int, help="overrides the profile's")
    p.add_argument("--guidance-scale", type=float, help="overrides the profile's")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    sample = sample_settings(a.params, a.profile, {"scheduler": a.scheduler, "steps": a.steps,
                                                   "guidance_scale": a.guidance_scale})
    sd = run_sd_settings(a.run_dir)  # the run's own conditioning and prompt template
    _, _, classes, meta = load_latents(a.latents)
    classes = classes if sd["conditioning"] == "class" else []
    # the images the run was trained on had the latent cache's resolution (SD v1's UNet defaults to 512 px)
    print(sample_folder(a.pretrained, a.run_dir, a.out, classes, a.per_class, sd["prompt_template"], sample,
                        a.batch_size, a.seed, int(meta["resolution"])))


if __name__ == "__main__":
    main()
