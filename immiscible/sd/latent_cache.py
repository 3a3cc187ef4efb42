"""The streaming latent cache: an ImageFolder (``root/<class>/*.JPEG``, ImageNet's layout, any image sizes) or a list
of files, encoded by the VAE in batches into one memory-mapped ``.npy`` file written shard by shard, so that memory
stays bounded whatever the split's size, and an interrupted encode resumes to the same bytes.

Each image is read with PIL, converted to RGB, resized so that its shorter side is the training resolution (bilinear)
and center-cropped: the official SD training transform (``transforms.Resize(resolution, BILINEAR)`` then
``CenterCrop``, with ``--center_crop``), which on PIL images is PIL's own resize. With ``mirror`` each image is also
encoded mirrored (its horizontal flip, flipped before encoding): training picks one of the two views, which is the
official random flip of the image (see ``immiscible.sd.train.training_latents``).

A cache folder::

    index.json    what was encoded (image count, files digest, resolution, dtype, views, latent shape, classes, the
                  encoder's description) and, per shard, the SHA-256 of its bytes once it is written (null before)
    files.txt     one line per image: its path relative to the source, a tab, its label
    labels.npy    (N,) int64
    latents.npy   (N, V, C, h, w): view 0 the image, view 1 (with mirror) its mirror; float16 or float32

``latents.npy`` is preallocated; each shard (``shard_size`` images) is encoded into one buffer, written at its place
with ``os.pwrite`` and fsync'ed, and only then marked done in ``index.json`` (replaced atomically). A shard that was
being written when the encode stopped is not marked, so it is encoded again in full; the batches of a shard are the
same whether or not the encode was interrupted, hence the same bytes. The process holds one shard and one batch of
images (plus the next batch being decoded), never the split.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from immiscible.data import IMAGE_SUFFIXES
from immiscible.io import atomic_save_npy, atomic_write, atomic_write_text

VERSION = 1
INDEX, FILES, LABELS, LATENTS = "index.json", "files.txt", "labels.npy", "latents.npy"
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ImageSource:
    """The images to encode, in order: ``files`` (relative to ``root`` or absolute), their ``labels``, and per label
    the folder name (``class_ids``, e.g. the WordNet id) and the name the prompts use (``classes``)."""
    root: Path
    files: list[str]
    labels: list[int]
    class_ids: list[str]
    classes: list[str]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def folder_source(root: str | os.PathLike, class_names: str | os.PathLike | None = None,
                  num_images: int = 0) -> ImageSource:
    """An ImageFolder ``root/<class>/**/*.JPEG`` (classes: the sorted folder names; images directly under ``root``
    form a class of their own with the empty name), listed without reading any image. ``num_images`` > 0 keeps the
    first N in listing order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder {root}: give the folder holding one subfolder per class "
                                "(root/<class>/*.JPEG; ImageNet: ILSVRC/Data/CLS-LOC/train), or a list with --files")
    groups: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir():
            found = sorted(str(p.relative_to(root)) for p in Path(entry.path).rglob("*")
                           if _is_image(p.name) and p.is_file())
            if found:
                groups[entry.name] = found
        elif entry.is_file() and _is_image(entry.name):
            groups.setdefault("", []).append(entry.name)
    if not groups:
        raise ValueError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}, any case) in class folders: "
                         "give the folder with root/<class>/*.JPEG, or check that the archive was extracted")
    class_ids = sorted(groups)
    files = [f for c in class_ids for f in groups[c]]
    labels = [i for i, c in enumerate(class_ids) for _ in groups[c]]
    if num_images:
        files, labels = files[:num_images], labels[:num_images]
    return ImageSource(root, files, labels, class_ids, class_names_of(class_ids, class_names))


def list_source(list_file: str | os.PathLike, class_names: str | os.PathLike | None = None,
                num_images: int = 0) -> ImageSource:
    """A list of images, one a line: ``path`` (its class: the name of its folder) or ``path<TAB>class``; relative
    paths are relative to the list's folder. Classes are the sorted distinct class names."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"no file list {list_file}: give a text file with one image path a line "
                                "(optionally a tab and its class)")
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        path, _, cls = line.partition("\t")
        pairs.append((path.strip(), cls.strip() or Path(path.strip()).parent.name))
    if not pairs:
        raise ValueError(f"{list_file} lists no images: write one image path a line")
    if num_images:
        pairs = pairs[:num_images]
    class_ids = sorted({c for _, c in pairs})
    label_of = {c: i for i, c in enumerate(class_ids)}
    return ImageSource(list_file.parent, [p for p, _ in pairs], [label_of[c] for _, c in pairs], class_ids,
                       class_names_of(class_ids, class_names))


def read_class_names(path: str | os.PathLike) -> dict[str, str]:
    """{class id: name} of a mapping file, one class a line: ``<id> <names>``, e.g. ImageNet's
    LOC_synset_mapping.txt ``n01440764 tench, Tinca tinca``. The name is the first of the comma-separated names
    ("tench"): WordNet lists the common name first, and the official script's prompt is one short class name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no class-name file {path}: give a text file with one '<folder name> <class name>' "
                                "line per class (ImageNet: LOC_synset_mapping.txt), or leave it out to use the "
                                "folder names")
    names: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        name = parts[1].split(",")[0].strip() if len(parts) == 2 else ""
        if not name:
            raise ValueError(f"{path}, line {number}: {line!r} has no class name after the id: write "
                             "'<folder name> <class name>' (e.g. 'n01440764 tench, Tinca tinca')")
        if parts[0] in names:
            raise ValueError(f"{path}, line {number}: class {parts[0]!r} is named twice; keep one line per class")
        names[parts[0]] = name
    return names


def class_names_of(class_ids: list[str], mapping: str | os.PathLike | None) -> list[str]:
    """The prompt name of each class: from the mapping file when given (every class must be in it), else the folder
    name itself (underscores read as spaces by the prompts)."""
    if mapping is None:
        return list(class_ids)
    names = read_class_names(mapping)
    missing = [c for c in class_ids if c and c not in names]
    if missing:
        raise ValueError(f"{mapping} names no class for {len(missing)} of the {len(class_ids)} folders (e.g. "
                         f"{', '.join(missing[:5])}): add a '<folder name> <class name>' line for each, or leave "
                         "the file out to use the folder names")
    out = [names.get(c, c) for c in class_ids]
    shared = sorted({n for n in out if out.count(n) > 1})
    if shared:  # ImageNet: 'crane' (bird, machine) and 'maillot' name two classes each
        warnings.warn(f"{len(shared)} class names are shared by several classes (e.g. {', '.join(shared[:4])}): "
                      "those classes get the same prompt", stacklevel=2)
    return out


def load_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """uint8 (resolution, resolution, 3) of an image file: RGB, shorter side resized to ``resolution`` (PIL
    bilinear), then the center crop (torchvision's Resize + CenterCrop on a PIL image, as the official script)."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}. Remove or replace the file (or leave it out of the list) "
                         "and run the same command again: the shards done so far are kept") from e
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    size = (resolution, int(resolution * long / short))
    img = img.resize(size if w <= h else size[::-1], Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))
    return np.asarray(img.crop((left, top, left + resolution, top + resolution)))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_index(out: Path, plan: dict, shards: list) -> None:
    complete = all(s is not None for s in shards)
    atomic_write_text(out / INDEX, json.dumps({"plan": plan, "shards": shards, "complete": complete},
                                              indent=1, sort_keys=True) + "\n")


def _write_shard(path: Path, offset: int, buffer: np.ndarray) -> str:
    """Write one shard's bytes at ``offset`` of the preallocated file, fsync; returns their SHA-256."""
    data = memoryview(np.ascontiguousarray(buffer)).cast("B")
    fd = os.open(path, os.O_WRONLY)
    try:
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], offset + written)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def _preallocate(path: Path, dtype: str, shape: tuple) -> None:
    """latents.npy with its header and zeros (sparse where the file system allows), created atomically."""
    def write(tmp: Path) -> None:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        del array
    atomic_write(path, write)


def encode_cache(encode: Callable[[torch.Tensor], torch.Tensor], source: ImageSource, out: str | os.PathLike,
                 resolution: int, batch_size: int = 64, shard_size: int = 4096, mirror: bool = True,
                 dtype: str = "float16", meta: dict | None = None, workers: int = 4, progress: bool = True,
                 on_change: str = "error") -> Path:
    """Encode ``source`` into the cache folder ``out`` (resuming what an interrupted call left there); returns
    ``out``. ``encode(x)``: latents (B, C, h, w) of uint8 images x (B, 3, r, r), called with at most ``batch_size``
    images; ``meta``: what describes the encoder (recorded, and checked on resume). ``on_change``: what to do when
    ``out`` holds a cache of other settings or images: "error", or "restart" (delete it, encode anew: a pipeline
    stage whose inputs changed)."""
    if on_change not in ("error", "restart"):
        raise ValueError(f"on_change={on_change!r}; choose 'error' or 'restart'")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; choose float16 or float32")
    for name, value in (("resolution", resolution), ("batch_size", batch_size), ("shard_size", shard_size)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if shard_size % batch_size:
        raise ValueError(f"shard_size={shard_size} must be a multiple of batch_size={batch_size} (a shard is whole "
                         "batches, so a resumed encode runs the same batches)")
    out = Path(out)
    n, views = len(source.files), 2 if mirror else 1
    files_text = "".join(f"{f}\t{y}\n" for f, y in zip(source.files, source.labels))
    with torch.no_grad():
        probe = encode(torch.zeros(1, 3, resolution, resolution, dtype=torch.uint8))
    shape = (n, views, *probe.shape[1:])
    plan = {"version": VERSION, "num_images": n, "files_sha256": _sha256(files_text), "resolution": resolution,
            "views": views, "dtype": dtype, "shape": list(shape), "shard_size": shard_size, "batch_size": batch_size,
            "class_ids": source.class_ids, "classes": source.classes, "meta": meta or {}}
    num_shards = -(-n // shard_size)
    shards: list = [None] * num_shards
    if (out / INDEX).is_file():
        saved = json.loads((out / INDEX).read_text())
        if saved["plan"] != plan:
            changed = sorted(k for k in plan if saved["plan"].get(k) != plan[k])
            message = (f"{out} holds a latent cache of other settings or images ({', '.join(changed)} differ)")
            if on_change == "error":
                raise ValueError(f"{message}: give another output folder, or delete this one to encode again")
            warnings.warn(f"{message}: deleting it and encoding again", stacklevel=2)
            shutil.rmtree(out)
        else:
            shards = saved["shards"]
    if not (out / INDEX).is_file():  # a fresh cache: everything but the index first, so an index always describes files that exist
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / FILES, files_text)
        atomic_save_npy(out / LABELS, np.asarray(source.labels, dtype=np.int64))
        _preallocate(out / LATENTS, dtype, shape)
        _write_index(out, plan, shards)
    offset = np.load(out / LATENTS, mmap_mode="r").offset
    row_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    todo = [s for s in range(num_shards) if shards[s] is None]
    bar = tqdm(total=n, initial=n - sum(min(shard_size, n - s * shard_size) for s in todo), desc="encode",
               unit="img", disable=not progress)

    def read(start: int, stop: int) -> list:
        return [pool.submit(load_image, _resolve(source.root, source.files[i]), resolution)
                for i in range(start, stop)]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for s in todo:
            start, stop = s * shard_size, min((s + 1) * shard_size, n)
            buffer = np.empty((stop - start, *shape[1:]), dtype=dtype)   # the one shard held: (S, V, C, h, w)
            batches = list(range(start, stop, batch_size))
            pending = read(batches[0], min(batches[0] + batch_size, stop))
            for b in batches:
                images = np.stack([f.result() for f in pending])                       # (B, r, r, 3) uint8
                nxt = b + batch_size
                pending = read(nxt, min(nxt + batch_size, stop)) if nxt < stop else []  # decoded while encoding
                x = torch.from_numpy(images).permute(0, 3, 1, 2)                       # (B, 3, r, r)
                with torch.no_grad():
                    buffer[b - start:b - start + len(x), 0] = encode(x).float().cpu().numpy()
                    if mirror:
                        buffer[b - start:b - start + len(x), 1] = encode(x.flip(-1)).float().cpu().numpy()
                bar.update(len(x))
            shards[s] = _write_shard(out / LATENTS, offset + start * row_bytes, buffer)
            del buffer
            _write_index(out, plan, shards)
    bar.close()
    return out


def _resolve(root: Path, file: str) -> Path:
    path = Path(file)
    return path if path.is_absolute() else root / path


def is_cache(path: str | os.PathLike) -> bool:
    return (Path(path) / INDEX).is_file()


def read_index(path: str | os.PathLike) -> dict:
    """The cache's index; a missing or unfinished cache raises with what to do."""
    path = Path(path)
    if not (path / INDEX).is_file():
        raise FileNotFoundError(f"no latent cache in {path} (no {INDEX}): encode the dataset first "
                                "(python -m immiscible.sd.latents --pretrained ... --dataset ... --out ...)")
    index = json.loads((path / INDEX).read_text())
    if not index["complete"]:
        done = sum(s is not None for s in index["shards"])
        raise ValueError(f"the latent cache {path} is unfinished ({done} of {len(index['shards'])} shards): run the "
                         "same encode command again, it continues where it stopped")
    return index


def load_cache(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(latents (N, V, C, h, w) memory-mapped, labels (N,), the index's plan) of a finished cache. The latents are
    a copy-on-write map of the file: reading a batch reads its pages into the shared page cache, not into the
    process's own memory."""
    path = Path(path)
    index = read_index(path)
    latents = torch.from_numpy(np.load(path / LATENTS, mmap_mode="c"))
    labels = torch.from_numpy(np.load(path / LABELS))
    return latents, labels, index["plan"]


def cache_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the index, which holds the SHA-256 of every shard and of the file list: what identifies a cache's
    contents without reading its latents again (``verify_cache`` reads them)."""
    read_index(path)
    return hashlib.sha256((Path(path) / INDEX).read_bytes()).hexdigest()


def verify_cache(path: str | os.PathLike) -> None:
    """Read every shard and compare with the SHA-256 recorded when it was written; raise on a mismatch."""
    path = Path(path)
    index = read_index(path)
    latents = np.load(path / LATENTS, mmap_mode="r")
    size = index["plan"]["shard_size"]
    for s, digest in enumerate(index["shards"]):
        got = hashlib.sha256(memoryview(np.ascontiguousarray(latents[s * size:(s + 1) * size])).cast("B"))
        if got.hexdigest() != digest:
            raise ValueError(f"shard {s} of {path} does not match its recorded SHA-256: the file was changed or "
                             "damaged; delete the folder and encode again")
