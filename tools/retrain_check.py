"""Before `dvc commit` after a change to code that training stages depend on: retrain the first steps of recorded runs
with the code as it is now and compare their EMA snapshots byte for byte with the recorded ones. Identical snapshots
show that the change leaves the trajectories (and so every downstream result) unchanged.

    python tools/retrain_check.py                      # the default runs below; exit status 1 on any difference
    python tools/retrain_check.py checkpoints/unconditional/cpu/exact-0:400

Each run is ``<run folder>:<step>``: a step at which the run saved an EMA snapshot. Consistency runs are retrained
with their recorded curriculum length (the schedule depends on the run's total steps).
"""
from __future__ import annotations

import filecmp
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from immiscible.config import from_dict
from immiscible.engine.checkpoints import list_snapshots
from immiscible.engine.config import TrainConfig
from immiscible.engine.loop import train

DEFAULT = ("checkpoints/unconditional/cpu/exact-0:400", "checkpoints/class_conditional/cpu/exact_class-0:400",
           "checkpoints/finetuning/cpu/exact-0:200", "checkpoints/consistency/cpu/exact-0:400",
           "checkpoints/ablation/cpu/flow-exact-0:400", "checkpoints/ablation/cpu/px8-knn8-0:400")


def retrain(run: Path, step: int, out: Path) -> Path:
    """Train ``run``'s recorded config for ``step`` steps into ``out``; the snapshot of that step."""
    cfg = from_dict(TrainConfig, json.loads((run / "train_config.json").read_text()))
    cfg = replace(cfg, steps=step, output_dir=str(out), progress=False)
    loss_fn = None
    record = run / "consistency_config.json"
    if record.exists():
        from immiscible.diffusion.consistency import ConsistencyConfig, make_consistency_loss
        values = json.loads(record.read_text())
        total = values.pop("curriculum_steps")
        loss_fn = make_consistency_loss(from_dict(ConsistencyConfig, values), total)
    train(cfg, loss_fn=loss_fn)
    return list_snapshots(out)[step]


def main(argv=None) -> int:
    items = (argv if argv is not None else sys.argv[1:]) or DEFAULT
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, item in enumerate(items):
            folder, _, step = item.rpartition(":")
            run, step = Path(folder), int(step)
            recorded = list_snapshots(run).get(step)
            if recorded is None:
                print(f"SKIP {run}: no snapshot at step {step}")
                continue
            fresh = retrain(run, step, Path(tmp) / str(i))
            same = filecmp.cmp(recorded, fresh, shallow=False)
            failed += not same
            print(f"{'IDENTICAL' if same else 'DIFFERENT'} {recorded} vs retrained {fresh.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
