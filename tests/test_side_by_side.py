"""Side-by-side training (immiscible.engine.side_by_side) equals single runs: bitwise in ``loop`` mode, to a stated
tolerance on the weights in ``vmap`` mode (other kernels: grouped convolutions), with the same assignments; it
resumes, alone or with single runs, and rejects runs that do not share a setting."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from immiscible.engine.config import TrainConfig
from immiscible.engine.loop import train
from immiscible.engine.side_by_side import train_side_by_side

RUNS = (("vanilla", 0), ("exact", 1), ("knn", 2))
# vmap: 6 AdamW steps at lr 1e-3 from the same weights. The float32 rounding of other kernels is amplified by Adam's
# normalisation where a gradient is tiny, so a weight may move apart by up to a whole step: 4.2e-5 at most on the
# host where this was written; on an AMD EPYC host one weight of 263,603 moved 2.4e-4 (within the first 3 steps)
# while the mean difference stayed 1e-7. Two different runs differ by far more on both counts (tested).
VMAP_WEIGHT_TOLERANCE = 1e-3  # the largest |difference| of one weight: one AdamW step at lr 1e-3
VMAP_MEAN_TOLERANCE = 1e-6    # the mean |difference| over all weights


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(123))


def configs(root: Path, **overrides) -> list[TrainConfig]:
    base = TrainConfig(model="tiny", resolution=8, batch_size=16, steps=6, lr=1e-3, ema_decay=0.9, warmup_steps=2,
                       hflip=True, checkpoint_every=3, snapshot_every=3, log_every=2, progress=False)
    base = replace(base, **overrides)
    return [replace(base, method=m, seed=s, output_dir=str(root / f"{m}-{s}")) for m, s in RUNS]


def weight_differences(a: Path, b: Path) -> tuple[float, float]:
    """The largest and the mean |difference| between two weight files' entries."""
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    d = torch.cat([(wa[k].float() - wb[k].float()).abs().flatten() for k in wa])
    return float(d.max()), float(d.mean())


def max_weight_difference(a: Path, b: Path) -> float:
    return weight_differences(a, b)[0]


def assert_vmap_close(a: Path, b: Path, *what) -> None:
    """Weights trained side by side in vmap mode match the single run's up to float32 rounding (see the tolerances)."""
    largest, mean = weight_differences(a, b)
    assert largest <= VMAP_WEIGHT_TOLERANCE and mean <= VMAP_MEAN_TOLERANCE, (*what, largest, mean)


def timeless(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "assign_ms", "runs_side_by_side")} for r in records]


def log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory, images):
    cfgs = configs(tmp_path_factory.mktemp("single"))
    for cfg in cfgs:
        train(cfg, images=images)
    return cfgs


FILES = ("checkpoint-0000006/model.safetensors", "checkpoint-0000006/ema.safetensors",
         "snapshots/ema-0000003.safetensors", "snapshots/ema-0000006.safetensors")


def test_loop_mode_equals_single_runs_bitwise(tmp_path, images, single_runs):
    train_side_by_side(configs(tmp_path), images=images, stack="loop")
    for single, together in zip(single_runs, configs(tmp_path)):
        for f in FILES:
            assert max_weight_difference(Path(single.output_dir) / f, Path(together.output_dir) / f) == 0.0, f
        assert timeless(log(single.output_dir)) == timeless(log(together.output_dir))


def test_vmap_mode_equals_single_runs_within_tolerance_with_the_same_assignments(tmp_path, images, single_runs):
    summaries = train_side_by_side(configs(tmp_path), images=images, stack="vmap")
    assert {s["stack"] for s in summaries} == {"vmap"} and all(s["runs_side_by_side"] == 3 for s in summaries)
    for single, together in zip(single_runs, configs(tmp_path)):
        for f in FILES:
            assert_vmap_close(Path(single.output_dir) / f, Path(together.output_dir) / f, single.method, f)
        a, b = log(single.output_dir), log(together.output_dir)
        # the assigned pairs are the same: the mean distance of the assigned pairs, step by step
        assert [r["dist_after"] for r in a] == [r["dist_after"] for r in b]
        assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-4)
    # the methods really differ (the test would pass trivially if every run drew the same pairs)
    afters = [log(c.output_dir)[-1]["dist_after"] for c in configs(tmp_path)]
    assert len(set(afters)) == 3


def test_vmap_runs_differ_from_each_other(tmp_path, images):
    """Each run keeps its own seed (initial weights) and batches: no two stacked runs end with the same weights."""
    cfgs = configs(tmp_path, steps=3)
    train_side_by_side(cfgs, images=images, stack="vmap")
    finals = [Path(c.output_dir) / "snapshots/ema-0000003.safetensors" for c in cfgs]
    apart = [weight_differences(a, b) for a in finals for b in finals if a != b]
    assert min(largest for largest, _ in apart) > 10 * VMAP_WEIGHT_TOLERANCE
    assert min(mean for _, mean in apart) > 1000 * VMAP_MEAN_TOLERANCE


@pytest.mark.parametrize("stack", ["loop", "vmap"])
def test_interrupted_side_by_side_resumes_to_the_same_weights(tmp_path, images, stack):
    whole = configs(tmp_path / "whole")
    train_side_by_side(whole, images=images, stack=stack)
    parts = configs(tmp_path / "parts")
    train_side_by_side([replace(c, steps=3) for c in parts], images=images, stack=stack)  # "killed" at step 3
    train_side_by_side(parts, images=images, stack=stack)
    for a, b in zip(whole, parts):
        assert max_weight_difference(Path(a.output_dir) / FILES[0], Path(b.output_dir) / FILES[0]) == 0.0
        assert [r["step"] for r in log(b.output_dir)] == [2, 3, 4, 6]  # 3: the end of the first stretch


def test_runs_at_different_checkpoints_resume_from_the_common_one(tmp_path, images, single_runs):
    """A kill while the runs were being saved leaves some a checkpoint ahead: all go back to the older one."""
    cfgs = configs(tmp_path)
    train_side_by_side([replace(c, steps=3) for c in cfgs], images=images, stack="loop")
    train(cfgs[0], images=images)  # run 0 alone to step 6: ahead of the others
    summaries = train_side_by_side(cfgs, images=images, stack="loop")
    assert {s["start_step"] for s in summaries} == {3}
    for single, together in zip(single_runs, cfgs):
        assert max_weight_difference(Path(single.output_dir) / FILES[0], Path(together.output_dir) / FILES[0]) == 0


def test_a_side_by_side_checkpoint_resumes_as_a_single_run(tmp_path, images, single_runs):
    cfgs = configs(tmp_path)
    train_side_by_side([replace(c, steps=3) for c in cfgs], images=images, stack="vmap")
    train(cfgs[1], images=images)  # the single engine continues the stacked run's checkpoint
    assert_vmap_close(Path(single_runs[1].output_dir) / FILES[0], Path(cfgs[1].output_dir) / FILES[0])


def test_runs_of_different_settings_are_refused(tmp_path, images):
    cfgs = configs(tmp_path)
    with pytest.raises(ValueError, match=r"share one setting.*\['lr'\]"):
        train_side_by_side([cfgs[0], replace(cfgs[1], lr=1e-4)], images=images)
    with pytest.raises(ValueError, match="distinct output_dir"):
        train_side_by_side([cfgs[0], cfgs[0]], images=images)
    with pytest.raises(ValueError, match="stack="):
        train_side_by_side(cfgs, images=images, stack="threads")
    with pytest.raises(ValueError, match="fp16"):
        train_side_by_side([replace(c, mixed_precision="fp16") for c in cfgs], images=images)


def test_consistency_runs_side_by_side_equal_single_runs(tmp_path, images):
    """The consistency loss (two passes of the same network, one under stop-gradient) through the same split:
    loop mode bitwise, vmap mode within the tolerance."""
    from immiscible.diffusion.consistency import ConsistencyConfig, make_consistency_loss
    ct = ConsistencyConfig(s0=2, s1=8)
    single = configs(tmp_path / "single")
    for cfg in single:
        train(cfg, images=images, loss_fn=make_consistency_loss(ct, cfg.steps))
    for stack in ("loop", "vmap"):
        together = configs(tmp_path / stack)
        train_side_by_side(together, images=images, stack=stack, loss=make_consistency_loss(ct, together[0].steps))
        for a, b in zip(single, together):
            if stack == "loop":
                assert max_weight_difference(Path(a.output_dir) / FILES[0], Path(b.output_dir) / FILES[0]) == 0.0
            else:
                assert_vmap_close(Path(a.output_dir) / FILES[0], Path(b.output_dir) / FILES[0], stack, a.method)


def test_a_run_without_the_common_checkpoint_is_refused(tmp_path, images):
    cfgs = configs(tmp_path, checkpoints_total_limit=1)
    train_side_by_side([replace(c, steps=3) for c in cfgs], images=images, stack="loop")
    train(cfgs[0], images=images)  # run 0 to step 6, keeping only its newest checkpoint
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 3"):
        train_side_by_side(cfgs, images=images, stack="loop")


def test_throughput_settings_are_checked():
    from immiscible.experiments.runs_throughput import runs_throughput
    setting = {"train": {"model": "tiny", "resolution": 8, "batch_size": 16}, "methods": ["vanilla"], "seeds": [0],
               "steps": 6, "warmup": 2}
    with pytest.raises(ValueError, match="unknown mode"):
        runs_throughput({**setting, "modes": ["gpus"]}, "x", device="cpu")
    with pytest.raises(ValueError, match="at least twice warmup"):
        runs_throughput({**setting, "warmup": 4}, "x", device="cpu")
