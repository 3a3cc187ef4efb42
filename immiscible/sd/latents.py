"""The VAE latent cache: every image of a dataset split encoded once (the mean of the VAE posterior, times the VAE's
``scaling_factor``, as Stable Diffusion trains on), with its label and the class names. Training assigns the noise on
these latents. The cache streams the images and writes shards of a memory-mapped file (``immiscible.sd.latent_cache``:
ImageNet's 1.28M images of any size, bounded memory, resumable)::

    python -m immiscible.sd.latents --pretrained PATH_OR_HUB_ID --dataset path/to/ILSVRC/Data/CLS-LOC \
        --class-names LOC_synset_mapping.txt --resolution 256 --out data/latents/imagenet-256

The official training encodes each batch anew and samples the posterior; the posterior's spread is small against
the noise, and caching the mean makes the latents (and the assignment) a fixed function of the image. Caches of the
earlier single-file format (one ``.safetensors`` file) are still read by ``load_latents``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from immiscible.data import to_model_input
from immiscible.sd.components import load_vae
from immiscible.sd.latent_cache import (cache_digest, encode_cache, folder_source, is_cache, list_source, load_cache,
                                        verify_cache)


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


def image_source(dataset: str | None = None, split: str = "train", files: str | None = None,
                 class_names: str | None = None, num_images: int = 0):
    """The images of a split: ``files`` (a list file), else the ImageFolder ``dataset/split`` when that folder
    exists, else ``dataset`` itself (root/<class>/*)."""
    if files:
        return list_source(files, class_names, num_images)
    if not dataset:
        raise ValueError("give --dataset (an ImageFolder) or --files (a list of images)")
    root = Path(dataset)
    return folder_source(root / split if (root / split).is_dir() else root, class_names, num_images)


def encode_dataset(pretrained: str, dataset: str | None, out: str | Path, split: str = "train",
                   resolution: int = 256, num_images: int = 0, batch_size: int = 64, device: str | None = None,
                   progress: bool = True, dtype: str = "float16", files: str | None = None,
                   class_names: str | None = None, mirror: bool = True, shard_size: int | None = None,
                   workers: int | None = None, on_change: str = "error") -> Path:
    """Encode a split into the cache folder ``out`` (resumable; see ``immiscible.sd.latent_cache``). ``dtype``
    float16 halves the file and the page cache it needs (ImageNet at 256 px with the mirrors: about 21 GB, memory-mapped
    and shared by the processes of a machine); training reads the latents as float32 either way. ``mirror`` also
    stores each image's mirror (training's random flip; doubles the file and the encoding time). ``shard_size``:
    images per shard, a multiple of ``batch_size`` (default 64 batches). ``on_change``: "error" or "restart" when
    ``out`` holds a cache of other settings."""
    source = image_source(dataset, split, files, class_names, num_images)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae = load_vae(pretrained).to(device)

    def encode(x: torch.Tensor) -> torch.Tensor:   # uint8 (B, 3, r, r) -> (B, C, r/f, r/f)
        x = to_model_input(x).to(device, vae.dtype)
        return vae.encode(x).latent_dist.mean.float() * vae.config.scaling_factor

    # no digest of the VAE here: a training run records the digest of the cache, which the VAE determines
    meta = {"scaling_factor": vae.config.scaling_factor, "pretrained": str(pretrained),
            "source": Path(files or dataset).name, "split": split}
    workers = workers or min(8, os.cpu_count() or 1)
    shard_size = shard_size or 64 * batch_size
    return encode_cache(encode, source, out, resolution, batch_size, shard_size, mirror, dtype, meta, workers, progress,
                        on_change)


def load_latents(path: str | Path, views: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """(latents (N, C, h, w), labels (N,), class names, metadata) of a latent cache: a cache folder (``views``: the
    latents as (N, V, C, h, w), view 1 the mirrored images when the cache has them) or a single ``.safetensors`` file
    of the earlier format (V = 1). The latents are memory-mapped, as stored (float16 or float32): training reads a
    batch's pages when it draws the batch, and all processes on a machine share the same page cache
    (tests/test_stable_diffusion.py checks that reading them all grows file-backed memory, not the process's own).
    The metadata holds strings: classes, class_ids, scaling_factor, pretrained, resolution, views."""
    path = Path(path)
    if path.is_dir() or is_cache(path):
        latents, labels, plan = load_cache(path)
        meta = {**{k: str(v) for k, v in plan["meta"].items()}, "classes": json.dumps(plan["classes"]),
                "class_ids": json.dumps(plan["class_ids"]), "resolution": str(plan["resolution"]),
                "views": str(plan["views"])}
        return (latents if views else latents[:, 0]), labels, plan["classes"], meta
    if not path.is_file():
        raise FileNotFoundError(f"no latent cache {path}: encode the dataset first (python -m immiscible.sd.latents "
                                "--pretrained ... --dataset ... --out ...)")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        latents, labels = f.get_tensor("latents"), f.get_tensor("labels")
    meta = {**meta, "views": "1"}
    return (latents[:, None] if views else latents), labels, json.loads(meta["classes"]), meta


def latents_digest(path: str | Path) -> str:
    """What identifies a latent cache's contents: the index digest of a cache folder (no pass over the latents),
    the file's SHA-256 for a single-file cache."""
    from immiscible.io import file_sha256
    return cache_digest(path) if Path(path).is_dir() else file_sha256(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Encode a dataset split into VAE latents (the latent cache).")
    p.add_argument("--pretrained", required=True, help="a diffusers folder or hub id with vae/")
    p.add_argument("--dataset", help="an ImageFolder: <dataset>/<split>/<class>/*.JPEG or <dataset>/<class>/*.JPEG")
    p.add_argument("--files", help="instead of --dataset: a text file, one image path a line (optionally a tab and "
                                   "its class; else the class is the image's folder name)")
    p.add_argument("--class-names", help="one '<folder name> <name>[, other names]' line per class (ImageNet: "
                                         "LOC_synset_mapping.txt); the prompts use the first name. Default: the "
                                         "folder names")
    p.add_argument("--out", required=True, help="the cache folder (an interrupted encode resumes in it)")
    p.add_argument("--split", default="train")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--num-images", type=int, default=0, help="> 0: the first N images in listing order")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=0, help="images per shard, a multiple of --batch-size "
                                                              "(default: 64 batches)")
    p.add_argument("--workers", type=int, default=0, help="image decoding threads (default: up to 8)")
    p.add_argument("--dtype", default="float16", choices=("float32", "float16"))
    p.add_argument("--device", help="where the VAE runs (default: cuda when present, else cpu)")
    p.add_argument("--no-mirror", action="store_true", help="do not store the mirrored images' latents (training "
                                                            "then needs --sd hflip=false)")
    p.add_argument("--on-change", default="error", choices=("error", "restart"),
                   help="--out holds a cache of other settings or images: stop (error) or delete it (restart)")
    p.add_argument("--verify", action="store_true", help="only check a finished cache against its shard digests")
    a = p.parse_args(argv)
    if a.verify:
        verify_cache(a.out)
        print(f"{a.out}: every shard matches its SHA-256")
        return
    print(encode_dataset(a.pretrained, a.dataset, a.out, a.split, a.resolution, a.num_images, a.batch_size,
                         device=a.device, dtype=a.dtype, files=a.files, class_names=a.class_names, mirror=not a.no_mirror,
                         shard_size=a.shard_size or None, workers=a.workers or None,
                         on_change=a.on_change))


if __name__ == "__main__":
    main()
