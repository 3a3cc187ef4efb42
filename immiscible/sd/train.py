"""Stable Diffusion latent training on the engine: the UNet (from scratch or fine-tuned) learns on the cached VAE
latents, with the noise assigned on the latents by the engine (every method, global over processes by default), and
the text conditioning of the official code: the CLIP encoding of the class name (the official script's prompt is the
class name alone; "a photo of a {}" is the project's variant), the empty prompt for unconditional training, and
optional prompt dropout (the empty prompt; 0 in the official code). The text encoder is frozen, so each prompt is
encoded once per run. Random horizontal flips (the official ``--random_flip``) use the latents of the mirrored images
stored in the cache (``training_latents``).

    accelerate launch --multi_gpu --num_processes 8 -m immiscible.sd.train --profile paper_scratch \
        --pretrained CompVis/stable-diffusion-v1-4 --latents data/latents/imagenet-256 \
        --method exact --seed 0 --output-dir checkpoints/sd/exact-0
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from immiscible.config import choices, from_dict, load_profile, to_dict
from immiscible.diffusion.losses import denoising_loss
from immiscible.diffusion.objectives import sample_t
from immiscible.diffusion.schedules import alphas_cumprod
from immiscible.engine.config import TrainConfig, check_config
from immiscible.engine.loop import end_distributed, train
from immiscible.noise.source import METHODS
from immiscible.sd.components import MODES, load_text_encoder, load_unet
from immiscible.sd.latents import latents_digest, load_latents

GROUP = "stable_diffusion"


@dataclass(frozen=True)
class SDConfig:
    pretrained: str = ""                   # a diffusers folder or hub id: vae/, text_encoder/, tokenizer/, unet/, scheduler/
    mode: str = field(default="scratch", metadata=choices(*MODES))
    conditioning: str = field(default="class", metadata=choices("class", "none"))  # none: the empty prompt
    # the defaults are the official script's (conditional_scratch_train_sd.py): the prompt is the class name alone,
    # no prompt dropout, random flips; the project's earlier choices ("a photo of a {}", dropout 0.1, no flip) are
    # the profile paper_scratch_project
    prompt_template: str = "{}"
    prompt_dropout: float = 0.0           # share of prompts replaced by the empty prompt (classifier-free guidance)
    hflip: bool = True                    # random horizontal flips: the mirrored images' latents (training_latents)
    gradient_checkpointing: bool = False
    # memory levers: attention "sdpa" (torch's scaled_dot_product_attention, diffusers' default processor) or
    # "xformers" (needs the xformers package); optimizer "adamw" or "adamw8bit" (bitsandbytes' 8-bit AdamW: the
    # optimizer state in 8 bits: about 5 GB less for the 860M-parameter SD v1 UNet)
    attention: str = field(default="sdpa", metadata=choices("sdpa", "xformers"))
    optimizer: str = field(default="adamw", metadata=choices("adamw", "adamw8bit"))


def _require(module: str, setting: str, extra: str) -> None:
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{setting} needs the {module} package, which is not installed: pip install {extra} "
                          "(with the torch of constraints.txt), or drop the setting")


def optimizer_class(sd: SDConfig):
    """The optimizer class of ``sd.optimizer`` (same signature as torch.optim.AdamW)."""
    if sd.optimizer == "adamw8bit":
        _require("bitsandbytes", "optimizer=adamw8bit", "bitsandbytes")
        import bitsandbytes
        return bitsandbytes.optim.AdamW8bit
    return torch.optim.AdamW


def set_attention(unet, sd: SDConfig):
    """SDPA is diffusers' default attention processor on torch 2; xformers replaces it when asked for."""
    if sd.attention == "xformers":
        _require("xformers", "attention=xformers", "xformers")
        unet.enable_xformers_memory_efficient_attention()
    return unet


def check_sd_config(sd: SDConfig) -> SDConfig:
    if not sd.pretrained:
        raise ValueError("pretrained is empty: give a diffusers folder or hub id holding the Stable Diffusion "
                         "components (vae/, text_encoder/, tokenizer/, unet/, scheduler/)")
    if sd.prompt_template.count("{}") != 1:
        raise ValueError(f"prompt_template={sd.prompt_template!r} must hold one '{{}}' for the class name")
    if not 0 <= sd.prompt_dropout < 1:
        raise ValueError(f"prompt_dropout={sd.prompt_dropout!r} must be in [0, 1)")
    return sd


@torch.no_grad()
def prompt_embeddings(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """The frozen text encoder's last hidden states (P, L, D) of ``prompts`` padded to the tokenizer's length."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0].float()


def class_prompts(classes: list[str], sd: SDConfig) -> list[str]:
    """The prompt of each class (index = label), then the empty prompt (index = number of classes)."""
    names = [c.replace("_", " ") for c in classes] if sd.conditioning == "class" else []
    return [sd.prompt_template.format(name) for name in names] + [""]


def training_latents(path: str | Path, hflip: bool) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """(latents (M, C, h, w), labels (M,), class names, metadata) a run draws its batches from.

    With ``hflip`` every image is two items, itself and its mirror (M = 2N; the cache stores the latent of the
    mirrored image, encoded after the flip as the official transform does): the engine's epoch permutation of the
    2N items then shows each image once as is and once mirrored per 2N draws, in random order. The official
    ``RandomHorizontalFlip`` instead draws a fair coin at each draw; the share of flipped draws is 1/2 either way,
    only the pairing within an epoch differs. Flipping the latent itself (the engine's ``hflip``) is not used: the
    VAE's convolutions are not mirror-symmetric, so a flipped latent is not the latent of the flipped image (how far
    apart they are for SD's VAE is not measured here). The cost: the cache and its encoding are twice as large.
    The (N, 2, C, h, w) file becomes (2N, C, h, w) by a view, nothing is copied."""
    latents, labels, classes, meta = load_latents(path, views=True)            # (N, V, C, h, w)
    if not hflip:
        return latents[:, 0], labels, classes, meta
    if latents.shape[1] != 2:
        raise ValueError(f"hflip needs the mirrored images' latents, which {path} does not hold: encode it again "
                         "without --no-mirror (python -m immiscible.sd.latents ...), or train with --sd hflip=false")
    return latents.reshape(-1, *latents.shape[2:]), labels.repeat_interleave(2), classes, meta


def make_text_loss(objective: str, num_train_timesteps: int, ac: torch.Tensor, embeddings: torch.Tensor,
                   prompt_dropout: float):
    """``loss_fn(model, x0, noise, generator, step, labels)`` of a text-conditioned UNet: t from the step's
    generator, each image's class prompt (the empty prompt without labels, and for a ``prompt_dropout`` share drawn
    after t), and the denoising loss built from the engine's (assigned) noise."""
    empty = embeddings.shape[0] - 1

    def loss_fn(model, x0, noise, generator, step, labels=None):
        t = sample_t(objective, x0.shape[0], num_train_timesteps, generator, x0.device)
        index = torch.full((x0.shape[0],), empty, dtype=torch.long) if labels is None or empty == 0 else labels.cpu()
        if prompt_dropout > 0 and empty > 0:
            drop = torch.rand(index.shape, generator=generator, device=generator.device).cpu()
            index = torch.where(drop < prompt_dropout, torch.full_like(index, empty), index)
        states = embeddings[index].to(x0.device)
        return denoising_loss(model, x0, noise, t, objective, ac, num_train_timesteps, encoder_hidden_states=states)
    return loss_fn


def scheduler_fields(pretrained: str) -> dict:
    """The pretrained scheduler's training schedule as TrainConfig fields (the run must use the same)."""
    from diffusers import DDPMScheduler
    config = DDPMScheduler.load_config(pretrained, subfolder="scheduler")
    objective = {"epsilon": "eps", "v_prediction": "v"}[config.get("prediction_type", "epsilon")]
    return {"num_train_timesteps": config["num_train_timesteps"], "beta_start": config["beta_start"],
            "beta_end": config["beta_end"], "beta_schedule": config["beta_schedule"], "objective": objective}


def train_sd(cfg: TrainConfig, sd: SDConfig, latents_path: str | Path, on_change: str = "error") -> dict:
    """Train (or resume) one Stable Diffusion run on a latent cache into cfg.output_dir."""
    sd = check_sd_config(sd)
    if cfg.hflip:
        raise ValueError("train hflip flips the latents, which is not the latent of the flipped image: set it to "
                         "false and use --sd hflip=true (the mirrored images' latents from the cache)")
    latents, labels, classes, meta = training_latents(latents_path, sd.hflip)
    tokenizer, text_encoder = load_text_encoder(sd.pretrained)
    embeddings = prompt_embeddings(tokenizer, text_encoder, class_prompts(classes, sd))
    unet = load_unet(sd.pretrained, sd.mode, cfg.seed)
    if sd.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    set_attention(unet, sd)
    optimizer = optimizer_class(sd)
    digest = latents_digest(latents_path)  # the cache's index (shard digests); a single file: streamed
    conditional = sd.conditioning == "class"
    cfg = check_config(replace(cfg, **scheduler_fields(sd.pretrained), dataset=str(latents_path),
                               num_classes=len(classes) if conditional or cfg.method == "exact_class" else 0,
                               settings={**cfg.settings, "stable_diffusion": to_dict(sd), "latents_sha256": digest}))
    loss_fn = make_text_loss(cfg.objective, cfg.num_train_timesteps, alphas_cumprod(cfg), embeddings,
                             sd.prompt_dropout if conditional else 0.0)
    return train(cfg, images=latents, labels=labels if cfg.num_classes else None, model=unet, loss_fn=loss_fn,
                 on_change=on_change, optimizer_cls=optimizer)


def settings(params: str, profile: str, overrides: dict | None = None,
             sd_overrides: dict | None = None) -> tuple[TrainConfig, SDConfig]:
    """(TrainConfig, SDConfig) of params.yaml's ``stable_diffusion.profiles.<profile>``, with overrides."""
    _, p = load_profile(params, GROUP, profile)
    unknown = sorted(set(p) - {"train", "sd", "sample"})
    if unknown:
        raise ValueError(f"{GROUP}.profiles.{profile} has unknown keys {unknown}; allowed: train, sd, sample")
    cfg = from_dict(TrainConfig, {**p.get("train", {}), **(overrides or {})})
    sd = from_dict(SDConfig, {**p.get("sd", {}), **(sd_overrides or {})})
    return cfg, sd


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train one Stable Diffusion run on cached VAE latents.")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--profile", required=True, help="stable_diffusion profile: paper_scratch | paper_finetune (official) "
                                                     "| paper_scratch_project | paper_finetune_project | smoke")
    p.add_argument("--pretrained", help="diffusers folder or hub id (default: the profile's)")
    p.add_argument("--latents", required=True, help="the latent cache folder (python -m immiscible.sd.latents)")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrainConfig field")
    p.add_argument("--sd", action="append", default=[], metavar="KEY=VALUE",
                   help="any SDConfig field, e.g. conditioning=none (unconditional: the empty prompt)")
    a = p.parse_args(argv)
    import yaml

    def parse(items):
        out = {}
        for item in items:
            if "=" not in item:
                raise ValueError(f"expected KEY=VALUE, got {item!r}")
            key, _, text = item.partition("=")
            out[key] = yaml.safe_load(text)
        return out
    overrides = {"method": a.method, "seed": a.seed, "output_dir": a.output_dir, **parse(a.set)}
    sd_overrides = {**({"pretrained": a.pretrained} if a.pretrained else {}), **parse(a.sd)}
    cfg, sd = settings(a.params, a.profile, overrides, sd_overrides)
    summary = train_sd(cfg, sd, a.latents, on_change="restart")
    end_distributed()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
