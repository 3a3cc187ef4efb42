"""CUDA-only checks (skipped on CPU): KNN on the GPU, the timing on CUDA, and training on a GPU with the assignment
in a background thread on a side stream. `tools/device_check.sh` runs them on a GPU machine."""
import json

import pytest
import torch

import immiscible.diffusion.losses as losses_module
import immiscible.engine.__main__ as cli_module
import immiscible.engine.checkpoints as checkpoints_module
from immiscible.noise.assignment import assign_noise, knn_noise, mean_pair_distance
from immiscible.config import from_dict
from immiscible.experiments.timing import time_assignment
from immiscible.engine.config import TrainConfig
from immiscible.engine.loop import train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_knn_on_cuda_keeps_the_nearest_candidate(dtype):
    B, k, shape = 64, 16, (3, 16, 16)
    x0 = (torch.rand((B,) + shape, generator=torch.Generator().manual_seed(0)) * 2 - 1).cuda().to(dtype)
    out = knn_noise(x0, k, generator=torch.Generator("cuda").manual_seed(5))
    assert out.is_cuda and out.dtype == dtype and out.shape == x0.shape
    cand = torch.randn((B, k) + shape, generator=torch.Generator("cuda").manual_seed(5), device="cuda", dtype=dtype)
    d = (cand.double() - x0.double()[:, None]).flatten(2).norm(dim=-1)                      # (B, k)
    chosen = (out.double() - x0.double()).flatten(1).norm(dim=-1)
    assert (cand == out[:, None]).flatten(2).all(-1).any(-1).all()                            # one of the candidates
    assert (chosen <= d.min(1).values * (1 + 1e-3)).all()                                     # the nearest (fp16 GEMM)


def test_timing_on_cuda_names_the_gpu():
    df = time_assignment(["exact", "knn"], [64, 128], dim=768, device="cuda", repeats=2, dtype="float16")
    assert (df.device == "cuda").all() and df.hardware.str.contains(torch.cuda.get_device_name()).all()
    assert (df[df.method == "exact"].delta_mean_distance_pct < 0).all()


@pytest.mark.parametrize("B", [512, 2048])
def test_auction_on_cuda_reaches_the_optimum_and_stays_on_the_device(B, monkeypatch):
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from immiscible.noise import assignment
    from immiscible.noise.assignment import assignment_permutation, image_noise_distance
    from immiscible.noise.auction import solve_auction
    monkeypatch.setattr(assignment, "AUCTION_MIN_BATCH", 1024)  # "auto" routes 2048 to the GPU auction, 512 to the host
    g = torch.Generator().manual_seed(B)
    x0 = (torch.rand((B, 3, 32, 32), generator=g) * 2 - 1).cuda().half()
    noise = torch.randn(x0.shape, generator=g).cuda().half()
    cost = image_noise_distance(x0, noise, dtype=torch.float32)
    perm, report = solve_auction(cost)
    assert perm.is_cuda and report.certified
    c64 = cost.double().cpu().numpy()
    r, c = linear_sum_assignment(c64)
    assert c64[np.arange(B), perm.cpu().numpy()].sum() == pytest.approx(c64[r, c].sum(), rel=1e-12)
    auto = assignment_permutation(x0, noise)  # "auto": the GPU auction from AUCTION_MIN_BATCH on, else the host's
    assert auto.is_cuda
    if B >= assignment.AUCTION_MIN_BATCH:
        assert torch.equal(auto, perm)
    else:
        # the host solves the distances of the fp16 inputs: optimal up to their rounding
        assert c64[np.arange(B), auto.cpu().numpy()].sum() == pytest.approx(c64[r, c].sum(), rel=1e-3)


@pytest.mark.parametrize("check_every", [1, 8])
def test_auction_rounds_from_cuda_graphs_are_the_eager_rounds(check_every):
    """``graphs=True`` replays the sparse rounds from CUDA graphs: the same permutation, duals and rounds as the
    eager rounds, and a second solve of the same size (new costs, the graphs replayed, not captured again) too."""
    from immiscible.noise import auction
    from immiscible.noise.assignment import image_noise_distance
    captured = []  # per solve: the id of the graph of each padded number of slots
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        x0 = (torch.rand((1024, 3, 32, 32), generator=g) * 2 - 1).cuda().half()
        cost = image_noise_distance(x0, torch.randn(x0.shape, generator=g).cuda().half(), dtype=torch.float32)
        perm, report = auction.solve_auction(cost, check_every=check_every)
        perm_g, report_g = auction.solve_auction(cost, check_every=check_every, graphs=True)
        assert torch.equal(perm, perm_g) and torch.equal(report.duals, report_g.duals)
        assert (report.rounds, report.freed) == (report_g.rounds, report_g.freed) and report_g.certified
        state = next(iter(auction._TAIL_GRAPHS.values()))
        captured.append({m: id(graph) for m, (graph, _) in state.graphs.items()})
    assert captured[0] and all(captured[1][m] == graph for m, graph in captured[0].items())  # replayed, not recaptured


def test_gpu_training_thread_and_inline_see_the_same_assigned_noise(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    real = losses_module.training_pair
    seen = {}
    for background in ("thread", "inline"):
        got = seen.setdefault(background, [])

        def spy(objective, x0, noise, t, alphas_cumprod, got=got):
            assert x0.is_cuda and noise.is_cuda
            got.append((x0.detach().cpu(), noise.detach().cpu()))
            return real(objective, x0, noise, t, alphas_cumprod)

        monkeypatch.setattr(losses_module, "training_pair", spy)
        cfg = from_dict(TrainConfig, dict(model="tiny", resolution=8, batch_size=32, steps=4, checkpoint_every=4,
                                          snapshot_every=0, log_every=1, progress=False, method="exact",
                                          mixed_precision="bf16", assign_background=background,
                                          output_dir=str(tmp_path / background)))
        summary = train(cfg, images=images)
        assert torch.isfinite(torch.tensor(summary["final_loss"]))
        log = [json.loads(line) for line in (tmp_path / background / "log.jsonl").read_text().splitlines()]
        assert len(log) == 4 and all(r["dist_after"] < r["dist_before"] for r in log)
    assert len(seen["thread"]) == len(seen["inline"]) == 4
    for (xa, na), (xb, nb) in zip(seen["thread"], seen["inline"]):
        assert torch.equal(xa, xb) and torch.equal(na, nb)
        # the pairing the model saw is optimal: re-assigning it on the CPU does not lower the total distance
        assert mean_pair_distance(xa, na) <= mean_pair_distance(xa, assign_noise(xa, na)) * (1 + 1e-6)


def test_evaluation_runs_on_the_gpu_and_matches_the_cpu(tmp_path):
    """Sampling and proxy features on CUDA (bf16 autocast for the UNet): the same images as on the CPU up to the
    autocast rounding, and the same features for the same images."""
    import numpy as np
    from immiscible.diffusion.sampling import sample_images
    from immiscible.evaluation.features import (ClassifierConfig, classifier_dir, load_proxy_extractor,
                                                train_classifier)
    from immiscible.models import build_unet
    cfg = from_dict(TrainConfig, {"resolution": 8})
    torch.manual_seed(0)
    model = build_unet("tiny", 8)
    cpu = sample_images(model, cfg, 8, 4, 8, seed=3, device="cpu", progress=False)
    gpu = sample_images(model, cfg, 8, 4, 8, seed=3, device="cuda", progress=False)
    assert gpu.dtype == np.uint8 and gpu.shape == cpu.shape
    assert np.abs(gpu.astype(int) - cpu.astype(int)).mean() < 8  # bf16 autocast: close, not equal
    labels = torch.arange(64) % 2
    images = torch.randint(0, 200, (64, 3, 8, 8), dtype=torch.uint8)
    train_classifier(ClassifierConfig(dataset="toy", resolution=8, epochs=1, batch_size=16, width=8, feature_dim=8,
                                      out_dir=str(tmp_path), progress=False), images, labels)
    folder = classifier_dir(tmp_path, "toy", 8)
    f_cpu = load_proxy_extractor(folder, "cpu")(cpu)
    f_gpu = load_proxy_extractor(folder, "cuda")(cpu)
    assert np.allclose(f_cpu, f_gpu, atol=1e-3)


@pytest.mark.parametrize("method", ["exact", "knn"])
def test_consistency_training_on_the_gpu_uses_the_assigned_noise_and_samples_match_the_cpu(tmp_path, monkeypatch,
                                                                                         method):
    """Consistency training on CUDA in bf16 with the assignment in the background thread: every pair is built from
    the step's assigned noise (rebuilt here on the CPU from the step's generator), the loss stays finite, and one-
    and two-step samples on the GPU are close to the CPU's."""
    import numpy as np
    import immiscible.diffusion.consistency as C
    from immiscible.noise.source import draw_noise, step_generator
    images = torch.randint(0, 256, (64, 3, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    seen = []
    real = C.consistency_training_loss

    def spy(model, x0, noise, s_i, s_next, cfg, **kw):
        assert x0.is_cuda and noise.is_cuda and s_i.is_cuda
        seen.append((x0.detach().cpu(), noise.detach().cpu()))
        return real(model, x0, noise, s_i, s_next, cfg, **kw)

    monkeypatch.setattr(C, "consistency_training_loss", spy)
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)  # accelerate keeps one state per process: an earlier test chose fp32
    cfg = from_dict(TrainConfig, dict(model="tiny", resolution=8, batch_size=32, steps=6, checkpoint_every=6,
                                      log_every=1, progress=False, method=method, knn_k=4, mixed_precision="bf16",
                                      assign_background="thread", output_dir=str(tmp_path / "run")))
    ct = C.ConsistencyConfig(s0=2, s1=8)
    summary = train(cfg, images=images, loss_fn=C.make_consistency_loss(ct, cfg.steps))
    assert np.isfinite(summary["final_loss"]) and len(seen) == 6
    for step, (x0, noise) in enumerate(seen):
        expected, _ = draw_noise(x0.cuda(), step_generator(cfg.seed, step, 0, "cuda"), method, knn_k=4)
        assert torch.equal(noise, expected.cpu())
    model, _ = checkpoints_module.load_run_model(tmp_path / "run")
    for k in (1, 2):
        cpu = C.consistency_samples(model, ct, 16, 8, k, seed=1, device="cpu")
        gpu = C.consistency_samples(model, ct, 16, 8, k, seed=1, device="cuda")
        assert np.abs(gpu.astype(int) - cpu.astype(int)).mean() < 8  # bf16 autocast: close, not equal


def test_resume_on_cuda_continues_the_run(tmp_path):
    """A checkpoint resumed on the GPU: the EMA comes back on the model's device and training goes on."""
    images = torch.randint(0, 256, (64, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    cfg = from_dict(TrainConfig, dict(model="tiny", resolution=8, batch_size=16, steps=4, checkpoint_every=2,
                                      snapshot_every=2, log_every=1, progress=False, method="exact",
                                      output_dir=str(tmp_path / "run")))
    from dataclasses import replace
    train(replace(cfg, steps=2), images=images)
    summary = train(cfg, images=images)
    assert summary["start_step"] == 2 and torch.isfinite(torch.tensor(summary["final_loss"]))
    whole = train(replace(cfg, output_dir=str(tmp_path / "whole")), images=images)
    assert abs(whole["final_loss"] - summary["final_loss"]) < 1e-3


def test_side_by_side_on_cuda_matches_the_cuda_loop_and_resumes(tmp_path, monkeypatch):
    """The stacked (vmap) runs on the GPU in fp32 (TF32 off) end within a tolerance of the same runs trained one by
    one on the GPU (the same device's generators: the CPU draws other noise, which an H200 run showed as 96% of the
    weights differing by more than 1e-4); a bf16 stacked run resumes on the GPU. AdamW turns a gradient that is
    rounding noise (a bias ahead of a normalisation has a zero gradient in exact arithmetic) into a full step of
    either sign, so a few entries may differ by up to 2 lr per step; the test bounds the share of entries that
    differ by more than 1e-4 and the largest difference by 2 lr x steps."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    from dataclasses import replace
    from safetensors.torch import load_file
    from immiscible.engine.side_by_side import train_side_by_side
    images = torch.randint(0, 256, (200, 3, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    base = from_dict(TrainConfig, dict(model="tiny", resolution=8, batch_size=16, steps=4, lr=1e-3, ema_decay=0.9,
                                       checkpoint_every=2, snapshot_every=2, log_every=2, progress=False))
    runs = [("vanilla", 0), ("exact", 1), ("knn", 2)]

    def cfgs(name, **kw):
        return [replace(base, method=m, seed=s, output_dir=str(tmp_path / name / f"{m}-{s}"), **kw) for m, s in runs]
    train_side_by_side(cfgs("loop"), images=images, stack="loop", device="cuda")
    summaries = train_side_by_side(cfgs("gpu"), images=images, stack="vmap", device="cuda")
    assert {s["stack"] for s in summaries} == {"vmap"}
    for a, b in zip(cfgs("loop"), cfgs("gpu")):
        wa = load_file(f"{a.output_dir}/checkpoint-0000004/model.safetensors")
        wb = load_file(f"{b.output_dir}/checkpoint-0000004/model.safetensors")
        diff = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
        assert float((diff > 1e-4).float().mean()) < 0.01 and float(diff.max()) <= 2 * base.lr * base.steps + 1e-5
    train_side_by_side([replace(c, steps=2) for c in cfgs("bf16", mixed_precision="bf16")], images=images)
    resumed = train_side_by_side(cfgs("bf16", mixed_precision="bf16"), images=images)
    assert {s["start_step"] for s in resumed} == {2}
