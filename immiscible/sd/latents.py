"""The VAE latent cache: every image of a dataset split encoded once (the mean of the VAE posterior, times the VAE's
``scaling_factor``, as Stable Diffusion trains on), with its label and the class names, in one safetensors file.
Training assigns the noise on these latents.

    python -m immiscible.sd.latents --pretrained PATH_OR_HUB_ID --dataset path/to/imagenet --resolution 256 \
        --out data/latents/imagenet-256.safetensors

The official training encodes each batch anew and samples the posterior; the posterior's spread is small against
the noise, and caching the mean makes the latents (and the assignment) a fixed function of the image.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from immiscible.data import load_images, load_labels, to_model_input
from immiscible.io import atomic_write
from immiscible.sd.components import load_vae


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, batch_size: int = 64, device: str = "cpu",
                  progress: bool = False) -> torch.Tensor:
    """Scaled latents (N, 4, H/f, W/f) float32 of uint8 images (N, 3, H, W): posterior mean x scaling factor."""
    vae = vae.to(device)
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="encode", unit="batch", disable=not progress):
        x = to_model_input(images[i:i + batch_size]).to(device, vae.dtype)
        out.append(vae.encode(x).latent_dist.mean.float().cpu() * vae.config.scaling_factor)
    return torch.cat(out)


def latent_encoder(pretrained: str, batch_size: int = 64, device: str | None = None):
    """encode(x) -> scaled latents (float32, on the CPU) of images x in [-1, 1] (N, 3, H, W), by the VAE of
    ``pretrained``: what the distance-reduction notebook measures as ``vae_latents``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae = load_vae(pretrained).to(device)

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        out = [vae.encode(x[i:i + batch_size].to(device, vae.dtype)).latent_dist.mean.float().cpu()
               for i in range(0, len(x), batch_size)]
        return torch.cat(out) * vae.config.scaling_factor
    return encode


def encode_dataset(pretrained: str, dataset: str, out: str | Path, split: str = "train", data_dir: str = "data",
                   resolution: int = 256, num_images: int = 0, batch_size: int = 64, device: str | None = None,
                   progress: bool = True, dtype: str = "float32") -> Path:
    """Encode a dataset split into ``out`` (latents, labels; metadata: class names, scaling factor, sources).
    ``dtype="float16"`` halves the file and the page cache it needs (ImageNet at 256 px: about 21 GB in float32,
    memory-mapped and shared by the processes of a machine); training reads the latents as float32 either way."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype={dtype!r}; choose float32 or float16")
    from safetensors.torch import save_file
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    images = load_images(dataset, split, data_dir, resolution, num_images)
    labels, classes = load_labels(dataset, split, data_dir, num_images)
    vae = load_vae(pretrained)
    latents = encode_images(vae, images, batch_size, device, progress).to(getattr(torch, dtype))
    # no digest of the VAE here: a training run records the SHA-256 of this file, which the VAE determines
    meta = {"classes": json.dumps(classes), "scaling_factor": str(vae.config.scaling_factor),
            "pretrained": str(pretrained), "dataset": str(dataset), "split": split, "resolution": str(resolution)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda tmp: save_file({"latents": latents.contiguous(), "labels": labels}, tmp,
                                                   metadata=meta))


def load_latents(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """(latents (N, C, h, w) as stored (float32 or float16), labels (N,), class names, metadata) of a latent cache.
    safetensors memory-maps the file: the latents are not copied into the process; training reads a batch's pages
    when it draws the batch, and all processes on a machine share the same page cache
    (tests/test_stable_diffusion.py checks that reading them all grows file-backed memory, not the process's own)."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no latent cache {path}: encode the dataset first (python -m immiscible.sd.latents "
                                "--pretrained ... --dataset ... --out ...)")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        latents, labels = f.get_tensor("latents"), f.get_tensor("labels")
    return latents, labels, json.loads(meta["classes"]), meta


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Encode a dataset split into VAE latents (the latent cache).")
    p.add_argument("--pretrained", required=True, help="a diffusers folder or hub id with vae/")
    p.add_argument("--dataset", required=True, help="a prepared name under --data-dir or an ImageFolder path")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--num-images", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    a = p.parse_args(argv)
    print(encode_dataset(a.pretrained, a.dataset, a.out, a.split, a.data_dir, a.resolution, a.num_images,
                         a.batch_size, dtype=a.dtype))


if __name__ == "__main__":
    main()
