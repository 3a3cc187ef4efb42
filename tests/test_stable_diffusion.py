"""Stable Diffusion latent training on tiny random components built here (nothing downloaded): the latent cache,
the prompts and prompt dropout, the noise assigned on the latents and used in the loss, fine-tuning that starts from
the given UNet (and from-scratch training that does not), the run's settings guarded on resume, and sampling through
the diffusers pipeline with the trained UNet."""
import importlib.machinery
import importlib.util
import json
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")

import immiscible.sd.train as sd_train  # noqa: E402
from immiscible.config import from_dict  # noqa: E402
from immiscible.data import batch_indices, load_images, to_model_input  # noqa: E402
from immiscible.engine.config import TrainConfig  # noqa: E402
from immiscible.noise.assignment import assign_noise  # noqa: E402
from immiscible.noise.source import step_generator  # noqa: E402
from immiscible.sd.components import load_unet, load_vae, save_tiny_components  # noqa: E402
from immiscible.sd.latents import encode_dataset, load_latents  # noqa: E402
from immiscible.sd.sample import generate, load_run_unet, sd_pipeline  # noqa: E402
from immiscible.sd.train import SDConfig, check_sd_config, class_prompts, train_sd  # noqa: E402
from test_unconditional_notebook import make_image_folder  # noqa: E402
from conftest import rss_mb  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    pretrained = save_tiny_components(root / "tiny-sd", sample_size=16)
    dataset = make_image_folder(root / "images", per_class=12, size=16)
    latents = encode_dataset(str(pretrained), str(dataset), root / "latents", resolution=16, dtype="float32",
                             batch_size=8, progress=False, device="cpu")
    return {"pretrained": str(pretrained), "dataset": str(dataset), "latents": latents, "root": root}


def _cfg(out, **kw):
    values = dict(batch_size=8, steps=3, lr=1e-3, checkpoint_every=3, log_every=1, progress=False, ema_decay=0.9,
                  output_dir=str(out))
    return from_dict(TrainConfig, {**values, **kw})


def test_the_latent_cache_holds_scaled_posterior_means(tiny):
    latents, labels, classes, meta = load_latents(tiny["latents"], views=True)
    images = load_images(tiny["dataset"], "train", str(tiny["root"] / "data"), 16)
    vae = load_vae(tiny["pretrained"])
    with torch.no_grad():
        expected = vae.encode(to_model_input(images[:4])).latent_dist.mean * vae.config.scaling_factor
        mirrored = vae.encode(to_model_input(images[:4].flip(-1))).latent_dist.mean * vae.config.scaling_factor
    assert latents.shape == (24, 2, 4, 8, 8) and torch.allclose(latents[:4, 0], expected, atol=1e-5)
    assert torch.allclose(latents[:4, 1], mirrored, atol=1e-5)      # view 1: the latent of the mirrored image
    assert not torch.allclose(mirrored, expected.flip(-1), atol=1e-3)  # which a flipped latent is not
    assert classes == ["bright", "dark"] and labels.tolist() == sorted(labels.tolist())
    assert float(meta["scaling_factor"]) == vae.config.scaling_factor


def test_the_single_file_latent_cache_is_memory_mapped_not_copied(tmp_path):
    """The earlier single-file format (still read): every training process reads the latents from the same file
    pages (ImageNet at 256 px: 10.5 GB in float16): reading all of them grows the file-backed memory, not the
    process's own."""
    from safetensors.torch import save_file
    path = tmp_path / "big.safetensors"
    stored = torch.randn(8192, 4, 32, 32, generator=torch.Generator().manual_seed(0)).half()   # 64 MiB
    save_file({"latents": stored, "labels": torch.arange(8192) % 3}, str(path), metadata={"classes": '["a","b","c"]'})
    idx = torch.tensor([5, 4000, 8191, 17])
    expected = stored[idx].clone()
    del stored
    before = rss_mb()
    latents, labels, classes, _ = load_latents(path)
    total = sum(float(latents[i:i + 64].float().sum()) for i in range(0, len(latents), 64))   # touch every page
    after = rss_mb()
    assert np.isfinite(total) and torch.equal(latents[idx], expected) and latents.dtype == torch.float16
    assert after["RssFile"] - before["RssFile"] > 48           # the 64 MiB were read ...
    assert after["RssAnon"] - before["RssAnon"] < 32           # ... from the shared page cache, not copied (a copy
                                                               # would add 64 MiB of the process's own memory)


def test_prompts_per_class_and_the_empty_prompt():
    sd = SDConfig(pretrained="x")                  # the official prompt: the class name alone
    assert class_prompts(["golden_retriever", "cat"], sd) == ["golden retriever", "cat", ""]
    project = replace(sd, prompt_template="a photo of a {}")   # the project's variant
    assert class_prompts(["golden_retriever", "cat"], project) == ["a photo of a golden retriever",
                                                                    "a photo of a cat", ""]
    assert class_prompts(["cat"], replace(sd, conditioning="none")) == [""]


def test_training_conditions_on_the_prompts_and_uses_the_assigned_latent_noise(tiny, monkeypatch):
    seen = []
    real = sd_train.denoising_loss

    def spy(model, x0, noise, t, objective, ac, T, **kw):
        seen.append((x0.clone(), noise.clone(), kw["encoder_hidden_states"].clone()))
        return real(model, x0, noise, t, objective, ac, T, **kw)

    monkeypatch.setattr(sd_train, "denoising_loss", spy)
    cfg = _cfg(tiny["root"] / "run-exact", method="exact", steps=4, checkpoint_every=4)
    sd = SDConfig(pretrained=tiny["pretrained"], prompt_dropout=0.5)
    train_sd(cfg, sd, tiny["latents"])
    latents, labels, classes, _ = sd_train.training_latents(tiny["latents"], sd.hflip)   # image, mirror, image, ...
    views = load_latents(tiny["latents"], views=True)[0]
    assert len(latents) == 2 * len(views) and torch.equal(latents[1::2], views[:, 1])
    from immiscible.sd.components import load_text_encoder
    embeddings = sd_train.prompt_embeddings(*load_text_encoder(tiny["pretrained"]), class_prompts(classes, sd))
    dropped = 0
    for step, (x0, noise, states) in enumerate(seen):
        idx = torch.from_numpy(batch_indices(cfg.seed, step, cfg.batch_size, len(latents)))
        assert torch.equal(x0, latents[idx])                        # the cached latents, as stored
        raw = torch.randn(x0.shape, generator=step_generator(cfg.seed, step, 0))
        assert torch.equal(noise, assign_noise(x0, raw))            # assigned on the latents
        for i, y in enumerate(labels[idx]):
            is_class, is_empty = torch.equal(states[i], embeddings[y]), torch.equal(states[i], embeddings[-1])
            assert is_class or is_empty
            dropped += is_empty
    assert 0 < dropped < 4 * cfg.batch_size                         # prompt dropout at work, not everywhere


def test_fine_tuning_starts_from_the_given_unet_and_scratch_does_not(tiny):
    pre = load_unet(tiny["pretrained"], "finetune").state_dict()
    for mode in ("finetune", "scratch"):
        out = tiny["root"] / f"lr0-{mode}"
        train_sd(_cfg(out, lr=0.0, grad_clip=0.0, steps=2, checkpoint_every=2),
                 SDConfig(pretrained=tiny["pretrained"], mode=mode), tiny["latents"])
        after = load_file(out / "checkpoint-0000002" / "model.safetensors")
        same = all(torch.equal(after[k], pre[k]) for k in pre)
        assert same == (mode == "finetune"), mode


def test_a_run_is_not_resumed_with_other_sd_settings(tiny):
    out = tiny["root"] / "guard"
    sd = SDConfig(pretrained=tiny["pretrained"])
    train_sd(_cfg(out, steps=2, checkpoint_every=2), sd, tiny["latents"])
    with pytest.raises(ValueError, match="settings"):
        train_sd(_cfg(out, steps=3), replace(sd, prompt_dropout=0.3), tiny["latents"])


def _fake_module(monkeypatch, name: str, **attributes):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_8bit_adam_is_the_optimizer_when_asked_for_and_recorded(tiny, monkeypatch):
    sd = SDConfig(pretrained=tiny["pretrained"], optimizer="adamw8bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ImportError, match="pip install bitsandbytes"):
            train_sd(_cfg(tiny["root"] / "no-bnb", steps=1), sd, tiny["latents"])
    made = []

    class AdamW8bit(torch.optim.AdamW):   # stands in for bitsandbytes.optim.AdamW8bit (same signature)
        def __init__(self, params, lr, weight_decay):
            made.append(lr)
            super().__init__(params, lr=lr, weight_decay=weight_decay)
    _fake_module(monkeypatch, "bitsandbytes", optim=types.SimpleNamespace(AdamW8bit=AdamW8bit))
    out = tiny["root"] / "bnb"
    train_sd(_cfg(out, steps=2, checkpoint_every=2, lr=3e-4), sd, tiny["latents"])
    assert made == [3e-4]
    recorded = json.loads((out / "train_config.json").read_text())["settings"]["stable_diffusion"]
    assert recorded["optimizer"] == "adamw8bit"
    with pytest.raises(ValueError, match="settings"):   # never resumed with the other optimizer's state
        train_sd(_cfg(out, steps=3, lr=3e-4), replace(sd, optimizer="adamw"), tiny["latents"])


def test_xformers_attention_when_asked_for(monkeypatch):
    calls = []
    unet = types.SimpleNamespace(enable_xformers_memory_efficient_attention=lambda: calls.append(1))
    sd_train.set_attention(unet, SDConfig(pretrained="x"))                        # sdpa: diffusers' default
    assert calls == []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="pip install xformers"):
        sd_train.set_attention(unet, SDConfig(pretrained="x", attention="xformers"))
    monkeypatch.undo()
    _fake_module(monkeypatch, "xformers")
    sd_train.set_attention(unet, SDConfig(pretrained="x", attention="xformers"))
    assert calls == [1]


def test_sampling_goes_through_the_pipeline_with_the_trained_unet(tiny):
    out = tiny["root"] / "sampled"
    train_sd(_cfg(out, method="knn", knn_k=4, steps=2, checkpoint_every=2), SDConfig(pretrained=tiny["pretrained"]),
             tiny["latents"])
    pipe = sd_pipeline(tiny["pretrained"], out, device="cpu")
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"        # the official sampler by default
    assert type(sd_pipeline(tiny["pretrained"], out, device="cpu", scheduler="ddim").scheduler).__name__ == \
        "DDIMScheduler"
    run_unet = load_run_unet(out).state_dict()
    assert all(torch.equal(v, run_unet[k]) for k, v in pipe.unet.state_dict().items())
    images = generate(pipe, ["dark", ""], steps=2, guidance_scale=3.0, seed=0)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    again = generate(pipe, ["dark", ""], steps=2, guidance_scale=3.0, seed=0)
    assert np.array_equal(images, again)


def test_bad_sd_settings_give_clear_errors(tiny):
    with pytest.raises(ValueError, match="pretrained is empty"):
        check_sd_config(SDConfig())
    with pytest.raises(ValueError, match="must hold one"):
        check_sd_config(SDConfig(pretrained="x", prompt_template="a photo"))
    with pytest.raises(ValueError, match="is not allowed"):
        from_dict(SDConfig, {"pretrained": "x", "mode": "resume"})
    with pytest.raises(FileNotFoundError, match="encode the dataset first"):
        load_latents(tiny["root"] / "missing.safetensors")


SD_DRIVER = '''
import sys
from pathlib import Path
import torch, torch.distributed as dist
from safetensors.torch import save_file
import immiscible.sd.train as S
from immiscible.config import from_dict
from immiscible.engine.config import TrainConfig

out, pretrained, latents = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
used = []
real = S.denoising_loss
def spy(model, x0, noise, t, objective, ac, T, **kw):
    used.append((x0.clone(), noise.clone()))
    return real(model, x0, noise, t, objective, ac, T, **kw)
S.denoising_loss = spy
cfg = from_dict(TrainConfig, dict(batch_size=8, steps=2, checkpoint_every=2, log_every=1, progress=False,
                                  method="exact", seed=1, output_dir=str(out / "run")))
S.train_sd(cfg, S.SDConfig(pretrained=pretrained), latents)
save_file({f"{k}-{s}": t.contiguous() for s, pair in enumerate(used) for k, t in zip(("x0", "noise"), pair)},
          out / f"rank{dist.get_rank()}.safetensors")
S.end_distributed()
'''


@pytest.mark.slow
def test_two_processes_assign_over_the_global_batch_of_latents(tiny, tmp_path):
    import os
    import subprocess
    import sys
    from test_multiprocess import _free_port
    (tmp_path / "driver.py").write_text(SD_DRIVER)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(tmp_path / "driver.py"), str(tmp_path),
               tiny["pretrained"], str(tiny["latents"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    latents = sd_train.training_latents(tiny["latents"], hflip=True)[0]
    used = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    for step in range(2):
        idx = torch.from_numpy(batch_indices(1, step, 8, len(latents)))
        drawn = torch.cat([torch.randn((4, 4, 8, 8), generator=step_generator(1, step, r)) for r in (0, 1)])
        single = assign_noise(latents[idx], drawn)  # one process, the concatenated global batch
        for r in (0, 1):
            assert torch.equal(used[r][f"x0-{step}"], latents[idx[r * 4:(r + 1) * 4]])
            assert torch.equal(used[r][f"noise-{step}"], single[r * 4:(r + 1) * 4])


def test_the_distance_notebook_measures_real_vae_latents(tiny, tmp_path):
    """The notebook's `vae` parameter adds `vae_latents`: the distance change measured on the VAE's latents of the
    same images (here the tiny VAE: 4x8x8 latents of 16x16 images)."""
    import json as _json
    import papermill as pm
    import pandas as pd
    from pathlib import Path
    from immiscible.data import load_dataset
    from immiscible.experiments.distance_reduction import measure_distance_reduction
    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ValueError, match="needs encode="):
        measure_distance_reduction(load_dataset(tiny["dataset"], "train", str(tiny["root"] / "data")), [4], 2,
                                   representation="vae_latents")
    pm.execute_notebook(str(root / "notebooks" / "distance_reduction.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters=dict(dataset=tiny["dataset"], data_dir=str(tiny["root"] / "data"),
                                        batch_sizes=[4, 8], num_batches=3, representations=["pixels"],
                                        vae=tiny["pretrained"], output_dir=str(tmp_path / "results")),
                        kernel_name="python3", progress_bar=False)
    table = pd.read_csv(tmp_path / "results" / "tables" / "distance_reduction.csv")
    latents = table[table.representation == "vae_latents"]
    assert list(latents.batch_size) == [4, 8] and (latents.dim == 4 * 8 * 8).all()
    assert (latents.mean_distance_assigned <= latents.mean_distance_random).all()
    assert _json.loads((tmp_path / "out.ipynb").read_text())["cells"]


def test_sampling_refuses_a_folder_without_a_stable_diffusion_run(tmp_path):
    from immiscible.sd.sample import run_sd_settings
    with pytest.raises(FileNotFoundError, match="train it first"):
        run_sd_settings(tmp_path)
    (tmp_path / "train_config.json").write_text(json.dumps({"method": "exact", "settings": {}}))
    with pytest.raises(ValueError, match="not a Stable Diffusion run"):
        run_sd_settings(tmp_path)
