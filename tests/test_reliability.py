"""Reliability (issue #5): a training run killed with SIGKILL at any moment - also in the middle of a checkpoint
write - resumes from its last complete checkpoint to bitwise the same weights on CPU; truncated or corrupt
checkpoints are skipped with a warning; the same params and seed give identical tables."""
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
import torch
from safetensors.torch import load_file

import immiscible.diffusion.losses as losses_module
import immiscible.engine.__main__ as cli_module
import immiscible.engine.checkpoints as checkpoints_module
from conftest import make_image_folder
from immiscible.experiments import unconditional as U
from immiscible.evaluation.features import train_classifier
from immiscible.config import from_dict
from immiscible.data import load_dataset
from immiscible.experiments.distance_reduction import measure_distance_reduction
from immiscible.engine.config import TrainConfig
from immiscible.engine.checkpoints import checkpoint_step, latest_valid_checkpoint, list_checkpoints, list_snapshots, verify_checksums
from immiscible.engine.loop import train

STEPS = 16
# A tiny run with everything that carries state across a resume: exact assignment, dropout, EMA, AdamW.
RUN = dict(model="tiny", resolution=8, batch_size=8, steps=STEPS, method="exact", dropout=0.1, lr=1e-3,
           ema_decay=0.9, checkpoint_every=2, checkpoints_total_limit=2, snapshot_every=4, log_every=1,
           progress=False)


def _argv(data: Path, run_dir: Path) -> list[str]:
    """The train command's arguments for RUN on ``data`` into ``run_dir``."""
    argv = ["--dataset", str(data), "--output-dir", str(run_dir)]
    for key, value in RUN.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _load(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, copied (load_file maps the file: damaging it later would crash the test)."""
    return {k: v.clone() for k, v in load_file(path).items()}


def _weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Final model, EMA and optimizer-free snapshot weights of a finished run."""
    final = run_dir / f"checkpoint-{STEPS:07d}"
    assert verify_checksums(final), f"{final} is missing or fails its checksums"
    out = {name: _load(final / name) for name in ("model.safetensors", "ema.safetensors")}
    out.update({f"snapshot-{s}": _load(p) for s, p in list_snapshots(run_dir).items()})
    return out


def _assert_bitwise_equal(a: dict, b: dict, context: str = "") -> None:
    assert sorted(a) == sorted(b), context
    for name in a:
        assert sorted(a[name]) == sorted(b[name]), f"{name} {context}"
        different = [k for k in a[name] if not torch.equal(a[name][k], b[name][k])]
        assert not different, f"{name}: {different[:3]} differ {context}"


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".tmp-*"))


def _logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def one_thread():
    """In-process runs use one thread, like the subprocesses (OMP_NUM_THREADS=1), so that results compare bitwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "folder", per_class=8, size=(8, 8))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """Weights of an uninterrupted run (in-process, one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = tmp_path_factory.mktemp("reference") / "run"
        cli_module.main(_argv(data, run_dir))
    finally:
        torch.set_num_threads(before)
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1))
    return _weights(run_dir)


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120.0) -> None:
    """Poll the run's log until it records ``step`` (the run is still going)."""
    log = run_dir / "log.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read() if proc.stderr else ''}"
        if log.exists():
            done = [json.loads(line)["step"] for line in log.read_text().splitlines() if line.endswith("}")]
            if done and done[-1] >= step:
                return
        time.sleep(0.005)
    raise AssertionError(f"no step {step} in {log} after {timeout} s")


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_rerun_gives_bitwise_the_same_weights(data, reference, tmp_path):
    seed = random.randrange(2 ** 32)
    rng = random.Random(seed)
    kill_after, delay = rng.randint(3, STEPS - 4), rng.uniform(0.0, 0.1)  # about 0-2 steps past the logged one
    context = f"(random moment: seed {seed}, {delay:.3f} s after step {kill_after} was logged)"
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "immiscible.engine", *_argv(data, run_dir)]
    with open(tmp_path / "killed.err", "w") as err:
        proc = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_for_step(proc, run_dir, kill_after)
            time.sleep(delay)  # the random part of the moment, not a synchronisation
            assert proc.poll() is None, f"the run finished before it could be killed {context}"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / f"checkpoint-{STEPS:07d}").exists(), context

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        last_complete = latest_valid_checkpoint(run_dir)
    assert last_complete is not None, f"step {kill_after} was logged after checkpoint 2 was written {context}"
    rerun = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout[rerun.stdout.index("{"):])
    assert summary["start_step"] == checkpoint_step(last_complete) >= 2, context
    _assert_bitwise_equal(_weights(run_dir), reference, context)
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1)), context  # resumed log: each step once
    assert _leftovers(run_dir) == [], context


# Run the train command, SIGKILLing itself in the middle of writing checkpoint-0000008.
KILL_DURING_CHECKPOINT = """
import os, signal, sys
import immiscible.engine.checkpoints as T
import immiscible.engine.__main__ as cli

WHERE = sys.argv.pop(1)
real_save_file, real_write_checksums = T.save_file, T.write_checksums

def save_file(tensors, path, *args, **kwargs):
    real_save_file(tensors, path, *args, **kwargs)
    if WHERE == "after-first-file" and ".tmp-checkpoint-0000008" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)  # model.safetensors is on disk, the other files are not

def write_checksums(folder):
    if WHERE == "before-checksums" and ".tmp-checkpoint-0000008" in str(folder):
        os.kill(os.getpid(), signal.SIGKILL)  # every file but SHA256SUMS is on disk
    real_write_checksums(folder)

T.save_file, T.write_checksums = save_file, write_checksums
cli.main(sys.argv[1:])
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["after-first-file", "before-checksums"])
def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_one(data, reference, tmp_path, where,
                                                                         one_thread, capsys):
    run_dir = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_CHECKPOINT, where, *_argv(data, run_dir)],
                            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = list(run_dir.glob(".tmp-checkpoint-0000008-*"))
    assert len(partial) == 1 and not (partial[0] / "SHA256SUMS").exists()  # killed mid-write, as intended
    assert (partial[0] / "model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-0000004", "checkpoint-0000006"]

    cli_module.main(_argv(data, run_dir))  # the rerun: the same train command
    summary = json.loads(capsys.readouterr().out)
    assert summary["start_step"] == 6
    _assert_bitwise_equal(_weights(run_dir), reference)
    assert _leftovers(run_dir) == []


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[:len(data) // 2])
    elif how == "bit-flipped":
        with open(path / "model.safetensors", "r+b") as f:
            f.seek(-100, os.SEEK_END)
            byte = f.read(1)
            f.seek(-100, os.SEEK_END)
            f.write(bytes([byte[0] ^ 1]))
    elif how == "empty":
        (path / "ema.safetensors").write_bytes(b"")
    elif how == "garbled-checksums":
        (path / "SHA256SUMS").write_text("not a checksum file\n")
    elif how == "no-checksums":
        (path / "SHA256SUMS").unlink()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "bit-flipped", "empty", "garbled-checksums", "no-checksums"])
def test_damaged_checkpoint_is_detected_with_a_warning_and_the_previous_one_used(tmp_path, how):
    images = torch.randint(0, 256, (32, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    cfg = from_dict(TrainConfig, {**RUN, "steps": 4, "output_dir": str(tmp_path / "run")})
    train(cfg, images=images)
    newest = tmp_path / "run" / "checkpoint-0000004"
    original = {n: _load(newest / n) for n in ("model.safetensors", "ema.safetensors")}
    _damage(newest, how)

    with pytest.warns(UserWarning, match=r"checkpoint-0000004 is incomplete or corrupt.*older one"):
        assert latest_valid_checkpoint(tmp_path / "run").name == "checkpoint-0000002"
    with pytest.warns(UserWarning, match="corrupt"):
        summary = train(cfg, images=images)
    assert summary["start_step"] == 2
    assert verify_checksums(newest)  # rewritten by the resumed run, bitwise as before
    _assert_bitwise_equal({n: _load(newest / n) for n in original}, original)


# ----------------------------------------------------------------------------- determinism

def _smoke_tables(data: Path, workdir: Path, monkeypatch) -> dict[str, bytes]:
    """Run the unconditional experiment's smoke profile (as the notebook does) in ``workdir``; its table files."""
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # relative output paths: the tables (which name checkpoints) compare byte for byte
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["unconditional"].update(dataset=str(data), seeds=[0, 1])
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    exp = U.setup("smoke", data_dir="data", params="params.yaml", checkpoint_dir="checkpoints/unconditional",
                  output_dir="results", classifier_root="checkpoints/classifier")
    train_classifier(exp.classifier)
    U.train_all(exp)
    U.evaluate_all(exp)
    import matplotlib.pyplot as plt
    plt.close("all")
    tables = workdir / "results" / "tables"
    return {p.name: p.read_bytes() for p in sorted(tables.glob("*.csv"))}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Matrix is singular")  # smoke: 48 samples, few features
def test_smoke_profile_twice_gives_identical_tables(data, tmp_path, monkeypatch, one_thread):
    first = _smoke_tables(data, tmp_path / "first", monkeypatch)
    second = _smoke_tables(data, tmp_path / "second", monkeypatch)
    assert set(first) == {f"unconditional_{name}.csv" for name in ("fid", "paired", "efficiency", "efficiency_seeds",
                                                                    "training", "loss", "last_step", "sampling_noise")}
    for name in set(first) - {"unconditional_training.csv", "unconditional_loss.csv"}:  # these hold wall time
        assert first[name] == second[name], f"{name} differs between two runs with the same params and seed"
    fid = pd.read_csv(tmp_path / "first" / "results" / "tables" / "unconditional_fid.csv")
    assert fid.fd.notna().all() and len(fid) == 2 * 2 * 2  # methods x seeds x snapshots: a real table


def test_distance_reduction_twice_gives_identical_tables(data):
    ds = load_dataset(str(data))
    first = measure_distance_reduction(ds, [4, 8], num_batches=3, seed=0, dataset_name="toy")
    second = measure_distance_reduction(load_dataset(str(data)), [4, 8], num_batches=3, seed=0, dataset_name="toy")
    assert first.to_csv(index=False) == second.to_csv(index=False)
    assert (first.delta_mean_distance_pct < 0).all()  # a real measurement, not an empty table
