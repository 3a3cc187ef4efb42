"""Does a code change leave the evaluations unchanged? Every experiment with a snapshot evaluation (unconditional,
consistency, fine-tuning, class-conditional) at its smoke profile on CIFAR-10: train once, then evaluate a copy of
the runs with each tree and compare the SHA-256 of every table, metrics file and evaluation cache file (their names
are the cache keys). Only the training tables' seconds and steps/s may differ between two evaluations of the same
runs; they are left out.

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old python tools/eval_identity.py train --out /tmp/eid/runs
    cp -r /tmp/eid/runs /tmp/eid/old && cp -r /tmp/eid/runs /tmp/eid/new
    PYTHONPATH=/tmp/old python tools/eval_identity.py evaluate --out /tmp/eid/old > old.json
    PYTHONPATH=.        python tools/eval_identity.py evaluate --out /tmp/eid/new > new.json
    diff old.json new.json && echo identical
"""
import argparse
import hashlib
import importlib
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

EXPERIMENTS = ("unconditional", "consistency", "finetuning", "class_conditional")
TIMING = ("train_s", "steps_per_s", "seconds")


def arguments(out: Path, name: str, data_dir: str) -> list[str]:
    return ["--profile", "smoke", "--params", str(out / "params.yaml"), "--data-dir", data_dir,
            "--output-dir", str(out / name / "results"), "--checkpoint-dir", str(out / name / "ckpt"),
            "--classifier-dir", str(out / name / "classifier")]


def train(out: Path, data_dir: str) -> None:
    from immiscible.engine.loop import train as train_run
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["class_conditional"]["profiles"]["smoke"]["train"]["num_classes"] = 10  # CIFAR-10's labels
    for name in EXPERIMENTS:
        params[name]["seeds"] = [0, 1]
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    for name in EXPERIMENTS:
        module = importlib.import_module(f"immiscible.experiments.{name}")
        module.main(["classifier", *arguments(out, name, data_dir)])
        if name == "class_conditional":  # its runs train through the engine's command line (a DVC matrix)
            exp = module.setup("smoke", params=str(out / "params.yaml"), data_dir=data_dir,
                               checkpoint_dir=str(out / name / "ckpt"), output_dir=str(out / name / "results"),
                               classifier_root=str(out / name / "classifier"))
            for method in exp.methods:
                for seed in exp.seeds:
                    train_run(exp.run_config(method, seed))
        else:
            module.main(["train", *arguments(out, name, data_dir)])


def digest(path: Path) -> str:
    if path.suffix == ".csv":
        df = pd.read_csv(path)
        df = df.drop(columns=[c for c in TIMING if c in df.columns])
        return hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate(out: Path, data_dir: str) -> dict:
    hashes = {}
    for name in EXPERIMENTS:
        module = importlib.import_module(f"immiscible.experiments.{name}")
        module.main(["evaluate", *arguments(out, name, data_dir)])
        folders = [out / name / "results", *sorted((out / name / "ckpt").glob("*-eval"))]
        for folder in folders:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    hashes[str(f.relative_to(out))] = digest(f)
    return hashes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=["train", "evaluate"])
    p.add_argument("--out", required=True, help="the runs' folder (train writes it; evaluate reads a copy)")
    p.add_argument("--data-dir", default="data", help="holds cifar10/ (dvc repro -s data@cifar10)")
    a = p.parse_args()
    print("code:", importlib.import_module("immiscible").__file__, file=sys.stderr)
    if a.phase == "train":
        train(Path(a.out), a.data_dir)
    else:
        print(json.dumps(evaluate(Path(a.out), a.data_dir), indent=1))


if __name__ == "__main__":
    main()
