"""Does a code change leave training unchanged? Train 40 steps of four settings with the `immiscible` found on
PYTHONPATH and print the SHA-256 of every checkpoint and snapshot file as JSON; run it with the old and the new tree
and compare the two outputs (they must be equal for `dvc commit` of the training stages' code deps).

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old python tools/byte_identity.py --out /tmp/id-old > old.json
    PYTHONPATH=.        python tools/byte_identity.py --out /tmp/id-new > new.json
    diff <(grep -v code old.json) <(grep -v code new.json) && echo identical
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

import immiscible
from immiscible.config import from_dict
from immiscible.data import load_dataset
from immiscible.engine.config import TrainConfig
from immiscible.engine.loop import train

SETTINGS = {"exact": dict(method="exact"), "knn": dict(method="knn", knn_k=4), "vanilla": dict(method="vanilla"),
            "exact_flow": dict(method="exact", objective="flow")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True, help="a fresh folder for the runs")
    p.add_argument("--data-dir", default="data", help="holds cifar10/ (dvc repro -s data@cifar10)")
    p.add_argument("--steps", type=int, default=40)
    a = p.parse_args()
    out = Path(a.out)
    print("code:", immiscible.__file__, file=sys.stderr)
    images = load_dataset("cifar10", "train", a.data_dir).tensor(slice(0, 4096))
    hashes = {}
    for name, kw in SETTINGS.items():
        cfg = from_dict(TrainConfig, dict(model="small", resolution=16, batch_size=64, steps=a.steps, lr=5e-4,
                                          warmup_steps=10, ema_decay=0.998, grad_clip=1.0,
                                          checkpoint_every=a.steps, snapshot_every=a.steps // 2, log_every=10,
                                          progress=False, seed=0, output_dir=str(out / name), **kw))
        train(cfg, images=images)
        for f in sorted((out / name).rglob("*")):
            if f.is_file() and f.suffix in (".safetensors", ".pt", ".bin"):
                hashes[str(f.relative_to(out))] = hashlib.sha256(f.read_bytes()).hexdigest()
    print(json.dumps(hashes, indent=1))


if __name__ == "__main__":
    main()
