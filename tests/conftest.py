"""Shared fixtures: small ImageFolder datasets generated on the fly (the project never ships data)."""
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=6, size=(8, 8), mode="RGB",
                      splits=("train", "test"), seed=0) -> Path:
    """Write root/<split>/<class>/<i>.png with random pixels; returns root."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    for split in splits:
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
                Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(d / f"{i:04d}.png")
    return root


def make_archive(folder: Path, archive: Path, wrap: str = "") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            tar.add(p, arcname=str(Path(wrap) / p.relative_to(folder)) if wrap else str(p.relative_to(folder)),
                    recursive=False)
    return archive


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "folder")


@pytest.fixture
def image_archive(tmp_path):
    folder = make_image_folder(tmp_path / "src", per_class=8, size=(8, 8))
    return make_archive(folder, tmp_path / "tiny.tar.gz")


def rss_mb() -> dict:
    """This process's resident memory in MiB: anonymous (its own copies) and file-backed (shared page cache)."""
    values = {}
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon:", "RssFile:")):
            key, value = line.split(":")
            values[key] = int(value.split()[0]) / 1024
    if len(values) < 2:
        pytest.skip("no RssAnon/RssFile in /proc/self/status")
    return values
