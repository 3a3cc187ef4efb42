"""The Stable Diffusion components a run uses: from a diffusers folder or hub id (``pretrained``), nothing downloaded
unless the user's path is a hub id, and a tiny random set saved locally for tests and smoke runs.

Modes of the UNet: ``scratch`` builds the pretrained UNet's config with fresh weights (the paper's from-scratch
ImageNet runs); ``finetune`` loads its weights and keeps them (the official fine-tuning script re-initialises the
UNet after loading it; here a test checks that fine-tuning starts from the given weights).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

MODES = ("scratch", "finetune")


def load_vae(pretrained: str):
    from diffusers import AutoencoderKL
    return AutoencoderKL.from_pretrained(pretrained, subfolder="vae").eval().requires_grad_(False)


def load_text_encoder(pretrained: str):
    """(tokenizer, text encoder), frozen: the prompts are encoded once per run."""
    from transformers import CLIPTextModel, CLIPTokenizer
    tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder").eval().requires_grad_(False)
    return tokenizer, encoder


def load_unet(pretrained: str, mode: str, seed: int = 0):
    """The UNet to train: the pretrained one (``finetune``) or its config with weights drawn under ``seed``."""
    from diffusers import UNet2DConditionModel
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose 'scratch' (the config, new weights) or 'finetune' (the weights)")
    if mode == "finetune":
        return UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet")
    config = UNet2DConditionModel.load_config(pretrained, subfolder="unet")
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(config)


def save_tiny_components(folder: str | Path, sample_size: int = 16, seed: int = 0) -> Path:
    """A tiny random Stable Diffusion (VAE with 4 latent channels and downsampling 2, UNet with cross-attention,
    CLIP text encoder, a byte-level tokenizer with a small vocabulary, DDPM scheduler) saved in the diffusers layout,
    for tests and smoke runs: no weights are downloaded."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    folder = Path(folder)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=sample_size)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0,
                                        eos_token_id=2, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=sample_size // 2, in_channels=4, out_channels=4,
                                block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                cross_attention_dim=16, attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    with tempfile.TemporaryDirectory() as tok_dir:
        (Path(tok_dir) / "vocab.json").write_text(json.dumps(_byte_vocab()))
        (Path(tok_dir) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(f"{tok_dir}/vocab.json", f"{tok_dir}/merges.txt", model_max_length=16)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,  # SD v1's schedule
                              beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def _byte_vocab() -> dict[str, int]:
    """CLIP's special tokens and the byte-level characters (plain and word-final), so any text tokenizes."""
    chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [chr(c) for c in range(174, 256)]
    chars += [chr(256 + i) for i in range(68)]  # the remapped control/space bytes of byte-level BPE
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 2, "!": 1}
    for ch in chars:
        for token in (ch, ch + "</w>"):
            vocab.setdefault(token, len(vocab) + 1)
    # ids must be dense for the embedding table
    return {token: i for i, token in enumerate(sorted(vocab, key=vocab.get))}
