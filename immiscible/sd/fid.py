"""FID of Stable Diffusion samples against ImageNet validation images, through clean-fid's Inception-V3.

    python -m immiscible.sd.fid reference --images path/to/imagenet/val --resolution 256 --out data/imagenet-val-256
    python -m immiscible.sd.fid score --samples samples/exact-0 --reference data/imagenet-val-256 --out fid/exact-0.json

``reference`` writes every validation image as a PNG at the training resolution, with the transform the training
images get (RGB, shorter side resized bilinear, center crop: ``latent_cache.load_image``), so that samples and
references differ only in where they come from; it skips images already written, so an interrupted run continues.
``score`` runs clean-fid on the two folders (both searched recursively for images) and writes the FID, the image
counts, the mode and clean-fid's version as JSON.

The mode: the official code reports pytorch-fid (the paper's README); clean-fid's ``legacy_pytorch`` mode reproduces
pytorch-fid's resizing and is the default here so that the numbers are comparable with the paper's; ``clean`` (PIL
bicubic resize, clean-fid's recommendation) is the alternative. clean-fid downloads its Inception weights on first
use (a GPU machine with a network, or place the file where clean-fid looks for it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from immiscible.data import IMAGE_SUFFIXES
from immiscible.io import atomic_write, atomic_write_text
from immiscible.sd.latent_cache import load_image

MODES = ("legacy_pytorch", "clean")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith("."))


def prepare_reference(images: str | Path, out: str | Path, resolution: int = 256, limit: int = 0,
                      progress: bool = True) -> Path:
    """Every image under ``images`` (searched recursively: ImageNet's val/ flat or in class folders) as
    ``out/<its relative path>.png`` at ``resolution``; ``limit`` > 0 keeps the first ``limit`` images (sorted by
    path). Images already written are skipped. Returns ``out``."""
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise FileNotFoundError(f"no image folder {images}: give the ImageNet validation folder (val/, flat or one "
                                "subfolder per class)")
    files = _images(images)
    if not files:
        raise ValueError(f"{images} holds no images: give the folder of the validation JPEGs")
    if resolution < 8:
        raise ValueError(f"resolution={resolution} must be >= 8 (the training resolution, e.g. 256)")
    files = files[:limit] if limit > 0 else files
    for path in tqdm(files, desc="reference images", unit="img", disable=not progress):
        target = out / path.relative_to(images).with_suffix(".png")
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = load_image(path, resolution)
        atomic_write(target, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
    return out


def score(samples: str | Path, reference: str | Path, out: str | Path | None = None, mode: str = "legacy_pytorch",
          batch_size: int = 32, device: str | None = None, num_workers: int = 4) -> dict:
    """clean-fid's FID between the image folders ``samples`` and ``reference``; written as JSON to ``out`` when
    given. Both folders must hold images; the counts go into the result (FID is biased upward at small counts: the
    paper's protocol is 50 samples per ImageNet class, 50,000 in all)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose one of {MODES} (legacy_pytorch: comparable with the paper's "
                         "pytorch-fid numbers)")
    counts = {}
    for name, folder in (("samples", Path(samples)), ("reference", Path(reference))):
        if not folder.is_dir():
            raise FileNotFoundError(f"no {name} folder {folder}" + (
                ": sample the run first (python -m immiscible.sd.sample ...)" if name == "samples" else
                ": write it first (python -m immiscible.sd.fid reference --images ... --out ...)"))
        counts[name] = len(_images(folder))
        if counts[name] == 0:
            raise ValueError(f"the {name} folder {folder} holds no images")
    try:
        import cleanfid
        from cleanfid import fid
    except ImportError as e:
        raise ImportError("FID needs clean-fid: pip install clean-fid (with the torch of constraints.txt)") from e
    import torch
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    value = fid.compute_fid(str(samples), str(reference), mode=mode, batch_size=batch_size, device=device,
                            num_workers=num_workers, verbose=False)
    result = {"fid": float(value), "mode": mode, "num_samples": counts["samples"],
              "num_reference": counts["reference"], "clean_fid": getattr(cleanfid, "__version__", "unknown"),
              "samples": Path(samples).name, "reference": Path(reference).name}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out), json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="FID of Stable Diffusion samples against ImageNet validation images "
                                            "(clean-fid's Inception-V3).")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reference", help="the validation images at the training resolution, as PNGs")
    r.add_argument("--images", required=True, help="the ImageNet validation folder")
    r.add_argument("--out", required=True)
    r.add_argument("--resolution", type=int, default=256)
    r.add_argument("--limit", type=int, default=0, help="only the first N images (sorted by path); 0: all")
    s = sub.add_parser("score", help="FID between a samples folder and the reference folder")
    s.add_argument("--samples", required=True)
    s.add_argument("--reference", required=True)
    s.add_argument("--out", required=True, help="the JSON file to write")
    s.add_argument("--mode", default="legacy_pytorch", choices=MODES)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--device", default=None)
    a = p.parse_args(argv)
    if a.command == "reference":
        print(prepare_reference(a.images, a.out, a.resolution, a.limit))
    else:
        print(json.dumps(score(a.samples, a.reference, a.out, a.mode, a.batch_size, a.device), indent=1))


if __name__ == "__main__":
    main()
