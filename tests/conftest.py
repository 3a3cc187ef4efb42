"""Shared fixtures: small ImageFolder datasets generated on the fly (the project never ships data), and the
project's params.yaml with a test's overrides."""
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _merge(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def write_params(path: Path, **groups) -> Path:
    """The project's params.yaml with ``groups`` merged in (nested dicts merge key by key, anything else replaces),
    written to ``path`` (a folder: its params.yaml); returns the file. E.g. the smoke profile on a test dataset:
    ``write_params(tmp_path, unconditional=dict(dataset=str(folder), seeds=[0, 1], profile="smoke"))``."""
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), groups)
    path = Path(path)
    path = path / "params.yaml" if path.is_dir() else path
    path.write_text(yaml.safe_dump(params))
    return path


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
