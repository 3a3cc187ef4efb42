"""Shared fixtures: small ImageFolder datasets generated on the fly (the project never ships data), the project's
params.yaml with a test's overrides, and one dry run of the GPU check shared by the tests that read it."""
import os
import subprocess
import sys
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


def write_prepared(folder: Path, n_train: int = 96, n_test: int = 64) -> None:
    """A prepared CIFAR-10-shaped dataset (train.npz / test.npz of random 32x32 images, 10 classes) in ``folder``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    classes = np.array([f"c{i}" for i in range(10)])
    for split, n in (("train", n_train), ("test", n_test)):
        np.savez(folder / f"{split}.npz", images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, n), classes=classes)


@pytest.fixture(scope="session")
def device_check_dry_run(tmp_path_factory):
    """``tools/device_check.sh`` in its DRY_RUN mode on a prepared random dataset, once per test session: (its output
    folder, the finished process). Its `gpu_quick` part is the whole `gpu_smoke` study (tables in OUT/gpu, runs in
    OUT/checkpoints), which tests/test_gpu_study.py checks; tests/test_device_check.py checks the other parts."""
    root = tmp_path_factory.mktemp("device_check")
    write_prepared(root / "bundle" / "data" / "cifar10")
    out = root / "out"
    env = {**os.environ, "DRY_RUN": "1", "BUNDLE": str(root / "bundle"), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "tools" / "device_check.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    return out, done


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
