"""Data layer: CIFAR-10 (official release or a local archive) and any ImageFolder, prepared once into arrays.

Layout of an ImageFolder (directory or .tar.gz / .tgz / .tar archive)::

    train/<class>/*.jpg|png     required (images directly under train/ form one class)
    test/<class>/*.jpg|png      optional

``prepare_dataset`` writes ``<out>/train.npz`` (and ``test.npz``) holding ``images`` (N, H, W, C) uint8,
``labels`` (N,) int64 and ``classes``, plus ``info.json``. Everything downstream reads those arrays through
``load_dataset``. Command line (what the DVC ``data`` stage runs)::

    python -m immiscible.data --dataset cifar10 --out data/cifar10 [--archive PATH]

For ``cifar10`` the archive defaults to the ``CIFAR10_ARCHIVE`` environment variable; with neither, the official
release is downloaded through torchvision, which verifies its MD5 checksum.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from immiscible.io import atomic_write, atomic_write_text, file_sha256

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message says what to do."""


@dataclass
class ImageDataset:
    images: np.ndarray   # (N, H, W, C) uint8
    labels: np.ndarray   # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image as the model sees it."""
        n, h, w, c = self.images.shape
        return (c, h, w)

    def tensor(self, idx=None) -> torch.Tensor:
        """Images ``idx`` as float32 (B, C, H, W) scaled to [-1, 1]."""
        arr = self.images if idx is None else self.images[idx]
        return to_model_range(arr)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def downsample(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, C, r, r) by average pooling (r must divide H)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, C, H, W)
    h = x.shape[-1]
    if x.shape[-2] != h:
        raise ValueError(f"images must be square, got {tuple(x.shape[-2:])}")
    if h == resolution:
        return x.contiguous()
    if h % resolution:
        raise ValueError(f"resolution={resolution} must divide the image size {h} (e.g. {h // 2}); "
                         "pick a divisor or prepare the data at another size")
    k = h // resolution
    out = [F.avg_pool2d(x[i:i + 4096].float(), k).round().to(torch.uint8) for i in range(0, len(x), 4096)]
    return torch.cat(out)


def load_images(dataset: str, split: str, data_dir: str, resolution: int, num_images: int = 0) -> torch.Tensor:
    """A dataset split as uint8 (N, C, r, r) at ``resolution``; ``num_images`` > 0 keeps the first N."""
    images = load_dataset(dataset, split, data_dir).images
    if num_images:
        images = images[:num_images]
    return downsample(images, resolution)


def load_labels(dataset: str, split: str, data_dir: str, num_images: int = 0) -> tuple[torch.Tensor, list[str]]:
    """(class labels (N,) as int64, class names) of a dataset split, aligned with ``load_images``."""
    ds = load_dataset(dataset, split, data_dir)
    labels = ds.labels[:num_images] if num_images else ds.labels
    return torch.from_numpy(np.asarray(labels, dtype=np.int64)), list(ds.classes)


# ----------------------------------------------------------------------------- data order

@lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Dataset indices of the global batch at ``step``: a pure function of (seed, step), hence resumable.
    Batch ``s`` holds positions s*B..(s+1)*B-1 of the epoch permutations ``default_rng([seed, epoch])``."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = positions // n, positions % n
    return np.array([_epoch_permutation(seed, int(e), n)[o] for e, o in zip(epochs, offsets)], dtype=np.int64)


def flip_mask(seed: int, step: int, batch_size: int) -> np.ndarray:
    """Which images of the global batch at ``step`` are flipped horizontally (p = 1/2), a pure function of
    (seed, step) drawn from its own stream, so turning flips on leaves every other random draw unchanged."""
    return np.random.default_rng([seed, step, 0xF1]).random(batch_size) < 0.5


# ----------------------------------------------------------------------------- reading an ImageFolder

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not Path(name).name.startswith(".")


def _split_class(rel: str, split: str) -> str | None:
    """'train/cat/1.jpg' -> 'cat'; 'train/1.jpg' -> '' ; other splits -> None."""
    parts = Path(rel).parts
    if len(parts) < 2 or parts[0] != split:
        return None
    return parts[1] if len(parts) >= 3 else ""


def _strip_common_root(names: list[str]) -> str:
    """Archives often wrap everything in one folder (cifar10/train/...): find the prefix that holds train/."""
    for n in names:
        parts = Path(n).parts
        if "train" in parts:
            i = parts.index("train")
            return "/".join(parts[:i])
    return ""


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"cannot decode image {where}: {e}. Remove or replace the file and run again.") from e
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return np.asarray(img)


def _collect(entries: dict[str, list[tuple[str, callable]]], source: str) -> tuple[dict[str, ImageDataset], dict]:
    """entries: split -> [(relative path, read_bytes)]; decode, validate and stack."""
    if not entries.get("train"):
        raise DatasetError(f"{source} has no images under train/: an ImageFolder needs train/<class>/*.jpg|png "
                           f"(and optionally test/<class>/...). Check the path or repack the data.")
    classes = sorted({c for split in entries.values() for c, _, _ in split})
    out = {}
    for split, items in entries.items():
        arrays, labels = [], []
        for cls, rel, read in tqdm(items, desc=f"decode {split}", unit="img", mininterval=2, leave=False):
            arrays.append(_decode(read(), f"{rel} in {source}"))
            labels.append(classes.index(cls))
        shapes = Counter(a.shape[:2] for a in arrays)
        if len(shapes) > 1:
            (common, _), (odd, _) = shapes.most_common(2)
            bad = next(rel for (_, rel, _), a in zip(items, arrays) if a.shape[:2] == odd)
            raise DatasetError(f"images of mixed sizes in {source} ({split}): most are {common[0]}x{common[1]} "
                               f"(HxW) but e.g. {bad} is {odd[0]}x{odd[1]}. Resize them all to one size first.")
        if len({a.ndim for a in arrays}) > 1:  # grayscale mixed with colour: promote all to RGB
            arrays = [np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a for a in arrays]
        images = np.stack(arrays)
        if images.ndim == 3:
            images = images[..., None]
        out[split] = ImageDataset(images.astype(np.uint8), np.asarray(labels, dtype=np.int64), classes)
    info = {"source": Path(source).name, "classes": classes,  # the name, never a machine path: prepared data
            "splits": {s: len(d) for s, d in out.items()}, "shape_hwc": list(out["train"].images.shape[1:])}
    if Path(source).is_file():  # an archive: its checksum says which one it was, wherever it lies
        info["sha256"] = file_sha256(source)
    return out, info


def read_image_folder(path: str | os.PathLike) -> dict[str, ImageDataset]:
    """Read an ImageFolder directory or archive into {'train': ImageDataset, ['test': ...]}."""
    return _read_image_folder(path)[0]


def _read_image_folder(path) -> tuple[dict[str, ImageDataset], dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path {path} does not exist. Give an ImageFolder directory or a .tar.gz "
                                f"archive with train/<class>/*.jpg, or a dataset name such as 'cifar10'.")
    entries: dict[str, list] = {}
    if path.is_dir():
        files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and _is_image(p.name))
        root = _strip_common_root(files)
        for rel in files:
            rel_in = rel[len(root) + 1:] if root else rel
            for split in ("train", "test"):
                cls = _split_class(rel_in, split)
                if cls is not None:
                    entries.setdefault(split, []).append((cls, rel, (lambda p=path / rel: p.read_bytes())))
        return _collect(entries, path)
    if not str(path).lower().endswith(ARCHIVE_SUFFIXES):
        raise DatasetError(f"{path} is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)}); give an ImageFolder "
                           "directory or a tar archive of one.")
    try:
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and _is_image(m.name)]
            root = _strip_common_root([m.name for m in members])
            blobs = {}
            for m in tqdm(members, desc=f"read {path.name}", unit="file", mininterval=2, leave=False):
                blobs[m.name] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, Exception) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"archive {path} is corrupt or truncated ({type(e).__name__}: {e}). "
                           "Download it again and check its checksum.") from e
    for name in sorted(blobs):
        rel_in = name[len(root) + 1:] if root else name
        for split in ("train", "test"):
            cls = _split_class(rel_in, split)
            if cls is not None:
                entries.setdefault(split, []).append((cls, name, (lambda n=name: blobs[n])))
    return _collect(entries, path)


# ----------------------------------------------------------------------------- official CIFAR-10

def download_cifar10(root: str | os.PathLike) -> dict[str, ImageDataset]:
    """The official CIFAR-10 python release, downloaded and MD5-checked by torchvision."""
    from torchvision.datasets import CIFAR10
    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = CIFAR10(root=str(root), train=train, download=True)
        out[split] = ImageDataset(np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64),
                                  list(ds.classes))
    return out


# ----------------------------------------------------------------------------- prepared arrays

def _atomic_savez(path: Path, **arrays) -> None:
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def prepare_dataset(dataset: str, out_dir: str | os.PathLike, archive: str | None = None) -> dict:
    """Prepare ``dataset`` ('cifar10' or an ImageFolder path) into ``out_dir``; returns the info dict."""
    out_dir = Path(out_dir)
    if dataset == "cifar10":
        if archive:
            splits, info = _read_image_folder(archive)
            if splits["train"].classes != CIFAR10_CLASSES:
                raise DatasetError(f"{archive} does not look like CIFAR-10: classes {splits['train'].classes}")
        else:
            splits = download_cifar10(out_dir / "download")
            info = {"source": "official CIFAR-10 release (torchvision, MD5-checked)", "classes": CIFAR10_CLASSES,
                    "splits": {s: len(d) for s, d in splits.items()}, "shape_hwc": [32, 32, 3]}
    else:
        splits, info = _read_image_folder(dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, ds in splits.items():
        _atomic_savez(out_dir / f"{split}.npz", images=ds.images, labels=ds.labels, classes=np.asarray(ds.classes))
    info["name"] = dataset if dataset == "cifar10" else Path(dataset).name
    atomic_write_text(out_dir / "info.json", json.dumps(info, indent=2) + "\n")
    return info


def load_prepared(out_dir: str | os.PathLike, split: str = "train") -> ImageDataset:
    path = Path(out_dir) / f"{split}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: prepare the dataset first (`dvc repro data` or "
                                f"`python -m immiscible.data --dataset NAME --out {out_dir}`).")
    with np.load(path) as z:
        return ImageDataset(z["images"], z["labels"].astype(np.int64), [str(c) for c in z["classes"]])


def load_dataset(dataset: str, split: str = "train", data_dir: str | os.PathLike = "data") -> ImageDataset:
    """A dataset by name (prepared under ``data_dir/<name>``) or by ImageFolder path (read directly)."""
    if not isinstance(dataset, str) or not dataset:
        raise DatasetError(f"dataset must be a name such as 'cifar10' or a path, got {dataset!r}")
    prepared = Path(data_dir) / dataset
    if (prepared / f"{split}.npz").exists():
        return load_prepared(prepared, split)
    if Path(dataset).exists():
        splits = read_image_folder(dataset)
        if split not in splits:
            raise DatasetError(f"{dataset} has no {split}/ split (it has {sorted(splits)})")
        return splits[split]
    if dataset == "cifar10":
        raise FileNotFoundError(f"CIFAR-10 is not prepared under {prepared}: run `make data` (or `dvc repro data`), "
                                "with CIFAR10_ARCHIVE=path/to/archive.tar.gz on a machine without internet.")
    raise FileNotFoundError(f"unknown dataset {dataset!r}: no prepared data in {prepared} and no such path. "
                            "Give 'cifar10' or the path of an ImageFolder directory or .tar.gz archive.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="'cifar10' or the path of an ImageFolder directory/archive")
    p.add_argument("--out", required=True, help="output directory, e.g. data/cifar10")
    p.add_argument("--archive", default=None, help="CIFAR-10 as a local ImageFolder archive "
                   "(default: $CIFAR10_ARCHIVE; without it the official release is downloaded)")
    a = p.parse_args(argv)
    archive = a.archive or (os.environ.get("CIFAR10_ARCHIVE") or None if a.dataset == "cifar10" else None)
    info = prepare_dataset(a.dataset, a.out, archive)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
