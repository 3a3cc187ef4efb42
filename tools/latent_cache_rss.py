"""Peak resident memory of the streaming latent cache (immiscible/sd/latent_cache.py): an ImageFolder of generated
JPEGs of mixed sizes encoded by the tiny random VAE, in a child process (``python -m immiscible.sd.latents``), for a
small and a large number of images. Bounded memory means the two peaks are about the same while the cache grows.
docs/stable_diffusion.md quotes its output.

    python tools/latent_cache_rss.py --images 10000 --small 640 --resolution 64
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from immiscible.sd.components import save_tiny_components  # noqa: E402


def make_folder(root: Path, n: int, classes: int, resolution: int) -> Path:
    """n random JPEGs in root/<wnid>/, each side drawn in [resolution, 2 * resolution)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = rng.integers(resolution, 2 * resolution, 2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:06d}.JPEG", quality=90)
    return root


def peak_rss_mib(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a child process running ``python ARGS``."""
    start = time.time()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"the encode failed (status {status})")
    return usage.ru_maxrss / 1024, time.time() - start   # ru_maxrss: KiB on Linux


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--small", type=int, default=640)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", default="float16")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pretrained = save_tiny_components(tmp / "tiny-sd", sample_size=a.resolution)
        make_folder(tmp / "train", a.images, a.classes, a.resolution)
        rss, _ = peak_rss_mib(["-c", "from immiscible.sd.latents import load_vae; import sys; "
                                     "load_vae(sys.argv[1]).encode", str(pretrained)])
        print(f"the same process without encoding (imports, the VAE loaded): peak RSS {rss:.0f} MiB")
        for n in (a.small, a.images):
            out = tmp / f"cache-{n}"
            rss, seconds = peak_rss_mib(["-m", "immiscible.sd.latents", "--pretrained", str(pretrained), "--dataset", str(tmp / "train"),
                                         "--out", str(out), "--resolution", str(a.resolution), "--num-images", str(n),
                                         "--batch-size", str(a.batch_size), "--dtype", a.dtype, "--device", "cpu"])
            size = (out / "latents.npy").stat().st_size / 2**20
            print(f"{n} images at {a.resolution} px ({a.dtype}, image + mirror, batch {a.batch_size}, shards of "
                  f"{64 * a.batch_size}): peak RSS {rss:.0f} MiB, latents.npy {size:.0f} MiB, {seconds:.0f} s")
    print(f"max RSS of this process (generation): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
