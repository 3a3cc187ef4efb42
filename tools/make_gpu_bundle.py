"""Prepare what `tools/device_check.sh` needs on a GPU machine that has PyTorch but no network.

    python tools/make_gpu_bundle.py            # (`make gpu-bundle`) writes .gpu-bundle/, ignored by git

.gpu-bundle/wheels/  wheels of the packages the check needs beyond a CUDA PyTorch image (lap for the exact
                     solve; diffusers for training; clean-fid for the GPU study's Frechet distances), for CPython
                     3.12 on x86-64 Linux
.gpu-bundle/data/    the first 8192 CIFAR-10 training images in the project's prepared format (from data/cifar10,
                     so run `make data` first), enough for the timing up to B=8192 and the benchmark

The bundle is about 30 MB, small enough to copy to the GPU machine with the repository.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Missing from a typical CUDA PyTorch image (which has numpy, scipy, pandas, matplotlib, tqdm, pyyaml, safetensors,
# accelerate, huggingface-hub, requests, regex, filelock, pillow, pytest). Versions follow constraints.txt.
PACKAGES = ("lap", "diffusers", "clean-fid")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def pinned_version(name: str) -> str | None:
    """The version pinned in constraints.txt, else the one installed here."""
    m = re.search(rf'^{re.escape(name)}==(\S+)', (ROOT / "constraints.txt").read_text(), re.IGNORECASE | re.MULTILINE)
    if m:
        return m.group(1)
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def download_wheels(out: Path, python_version: str = "3.12") -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    specs = [f"{n}=={v}" if (v := pinned_version(n)) else n for n in PACKAGES]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(out)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + specs, check=True)
    return specs


def slice_dataset(src: Path, out: Path, n: int) -> None:
    path = src / "train.npz"
    if not path.exists():
        raise SystemExit(f"{path} not found: prepare CIFAR-10 first (`make data`)")
    with np.load(path) as z:
        arrays = {"images": z["images"][:n], "labels": z["labels"][:n], "classes": z["classes"]}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "train.npz", **arrays)
    info = {"name": src.name, "source": f"first {len(arrays['images'])} training images of the prepared {src.name}",
            "splits": {"train": len(arrays["images"])}}
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / ".gpu-bundle"))
    p.add_argument("--data", default=str(ROOT / "data" / "cifar10"))
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (major.minor)")
    a = p.parse_args(argv)
    out = Path(a.out)
    specs = download_wheels(out / "wheels", a.python_version)
    slice_dataset(Path(a.data), out / "data" / Path(a.data).name, a.images)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"{out}: wheels {', '.join(specs)}; {a.images} images; {size:.1f} MiB")


if __name__ == "__main__":
    main()
