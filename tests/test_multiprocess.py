"""Two CPU processes (accelerate launch, gloo) train end to end; with assign_scope=global each rank trains on its
slice of the single-process assignment of the concatenated global batch, with assign_scope=local on its own."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from immiscible.noise.assignment import assign_noise
from immiscible.data import batch_indices, to_model_input
from immiscible.noise.source import step_generator
from immiscible.engine.checkpoints import verify_checksums

SEED, STEPS, BATCH = 3, 3, 16  # global batch 16: 8 images per process
CONFIG = dict(model="tiny", resolution=8, batch_size=BATCH, steps=STEPS, method="exact", seed=SEED,
              checkpoint_every=STEPS, log_every=1, progress=False)

# Runs under `accelerate launch` in each process: trains with both scopes and saves what each rank trained on.
DRIVER = '''
import json, sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

import immiscible.diffusion.losses as L
import immiscible.engine.loop as T
from immiscible.engine.config import TrainConfig
from immiscible.config import from_dict

out = Path(sys.argv[1])
base = json.loads((out / "config.json").read_text())
images = load_file(out / "images.safetensors")["images"]
used = []  # (x0, noise) of every step, as the loss saw them
real_training_pair = L.training_pair

def training_pair(objective, x0, noise, t, alphas_cumprod):
    used.append((x0.clone(), noise.clone()))
    return real_training_pair(objective, x0, noise, t, alphas_cumprod)

L.training_pair = training_pair
report = {}
try:
    T.train(from_dict(TrainConfig, {**base, "batch_size": 7, "output_dir": str(out / "odd")}), images=images)
except ValueError as e:
    report["odd_batch_error"] = str(e)
for scope in ("global", "local", "global-thread"):
    used.clear()
    where = "thread" if scope.endswith("thread") else "inline"
    cfg = from_dict(TrainConfig, {**base, "assign_scope": scope.split("-")[0], "assign_background": where,
                                  "output_dir": str(out / scope)})
    report[scope] = T.train(cfg, images=images)
    rank = dist.get_rank()
    save_file({f"{kind}-{step}": t.contiguous() for step, pair in enumerate(used) for kind, t in zip(("x0", "noise"), pair)},
              out / f"{scope}-rank{rank}.safetensors")
used.clear()  # class-aware assignment over the global batch: labels gathered with the images
T.train(from_dict(TrainConfig, {**base, "method": "exact_class", "num_classes": 3, "output_dir": str(out / "class")}),
        images=images, labels=torch.arange(len(images)) % 3)
save_file({f"{kind}-{step}": t.contiguous() for step, pair in enumerate(used) for kind, t in zip(("x0", "noise"), pair)},
          out / f"class-rank{rank}.safetensors")
report.update(rank=dist.get_rank(), world_size=dist.get_world_size(), backend=dist.get_backend())
T.end_distributed()
(out / f"rank{rank}.json").write_text(json.dumps(report))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_and_global_assignment_equals_single_process(tmp_path):
    images = torch.randint(0, 256, (40, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    save_file({"images": images}, tmp_path / "images.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "driver.py").write_text(DRIVER)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(tmp_path / "driver.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["backend"]) for r in reports] == [(0, 2, "gloo"), (1, 2, "gloo")]
    for report in reports:
        assert report["global"]["num_processes"] == report["local"]["num_processes"] == 2
        assert "batch_size=7 must be divisible by the number of processes (2): use a multiple of 2" in \
            report["odd_batch_error"]
    assert not (tmp_path / "odd").exists()
    for scope in ("global", "local", "global-thread"):
        assert verify_checksums(tmp_path / scope / f"checkpoint-{STEPS:07d}")
        assert json.loads((tmp_path / scope / "summary.json").read_text())["num_processes"] == 2

    used = {(scope, r): load_file(tmp_path / f"{scope}-rank{r}.safetensors")
            for scope in ("global", "local", "global-thread") for r in (0, 1)}
    half = BATCH // 2
    scopes_differ = False
    for step in range(STEPS):
        idx = batch_indices(SEED, step, BATCH, len(images))
        x0 = [to_model_input(images[torch.from_numpy(idx[r * half:(r + 1) * half])]) for r in (0, 1)]
        drawn = [torch.randn(x0[r].shape, generator=step_generator(SEED, step, r, torch.device("cpu")))
                 for r in (0, 1)]  # each rank's Gaussian noise before the assignment
        single = assign_noise(torch.cat(x0), torch.cat(drawn))  # one process, the concatenated global batch
        for r in (0, 1):
            for scope in ("global", "local"):
                assert torch.equal(used[scope, r][f"x0-{step}"], x0[r]), (scope, r, step)
            assert torch.equal(used["global", r][f"noise-{step}"], single[r * half:(r + 1) * half]), (r, step)
            # rank 0 solved and broadcast the permutation from a background thread on its own process group
            assert torch.equal(used["global-thread", r][f"noise-{step}"], used["global", r][f"noise-{step}"])
            assert torch.equal(used["local", r][f"noise-{step}"], assign_noise(x0[r], drawn[r])), (r, step)
        y = torch.from_numpy(idx) % 3  # the class-aware run's labels (arange % 3 of the chosen images)
        single_class = assign_noise(torch.cat(x0), torch.cat(drawn), groups=y)
        classes = load_file(tmp_path / "class-rank0.safetensors"), load_file(tmp_path / "class-rank1.safetensors")
        for r in (0, 1):
            assert torch.equal(classes[r][f"noise-{step}"], single_class[r * half:(r + 1) * half]), (r, step)
        local = torch.cat([used["local", r][f"noise-{step}"] for r in (0, 1)])
        scopes_differ |= not torch.equal(local, single)
    assert scopes_differ  # the global assignment pairs across the two halves; per-process assignment cannot
