"""Class-conditional training and its experiment: class-aware assignment (only noises of the same class exchanged,
labels in data order), class-blind assignment (labels in data order, noise permuted over the whole batch), label
dropout from the step's generator, guided DDIM against the guidance formula, the class embedding saved and loaded,
the bad inputs, and the smoke experiment end to end on a generated two-class ImageFolder."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import immiscible.diffusion.losses as losses_module
from immiscible.config import from_dict
from immiscible.diffusion.sampling import guided_output
from immiscible.engine.checkpoints import load_run_model
from immiscible.engine.config import TrainConfig, check_config
from immiscible.engine.loop import train
from immiscible.evaluation.features import train_classifier
from immiscible.experiments import class_conditional as K
from immiscible.noise.assignment import assignment_permutation
from immiscible.noise.source import draw_noise, step_generator
from conftest import write_params
from test_unconditional_notebook import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def _images_and_labels(n=48, classes=3):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
            torch.arange(n) % classes)


def _cfg(tmp_path, **kw):
    values = dict(model="tiny", resolution=8, batch_size=24, steps=3, checkpoint_every=3, log_every=1,
                  progress=False, num_classes=3, output_dir=str(tmp_path / "run"))
    return from_dict(TrainConfig, {**values, **kw})


@pytest.mark.parametrize("method", ["exact_class", "exact", "vanilla"])
def test_the_loss_sees_the_data_order_labels_and_the_methods_noise(tmp_path, monkeypatch, method):
    images, labels = _images_and_labels()
    seen = []
    real = losses_module.denoising_loss

    def spy(model, x0, noise, t, objective, ac, T, **kw):
        seen.append((x0.clone(), noise.clone(), kw["class_labels"].clone()))
        return real(model, x0, noise, t, objective, ac, T, **kw)

    monkeypatch.setattr(losses_module, "denoising_loss", spy)
    cfg = _cfg(tmp_path, method=method)
    train(cfg, images=images, labels=labels)
    assert len(seen) == 3
    from immiscible.data import batch_indices
    for step, (x0, noise, y) in enumerate(seen):
        idx = torch.from_numpy(batch_indices(cfg.seed, step, cfg.batch_size, len(images)))
        assert torch.equal(y, labels[idx])  # labels keep the data order whatever the method (no label dropout)
        raw = torch.randn(x0.shape, generator=step_generator(cfg.seed, step, 0))
        if method == "vanilla":
            assert torch.equal(noise, raw)
            continue
        perm = assignment_permutation(x0, raw, "exact", groups=y if method == "exact_class" else None)
        assert torch.equal(noise, raw[perm])
        if method == "exact_class":  # each image got a noise drawn for an image of its own class
            assert torch.equal(y[perm], y)
    if method == "exact":  # class-blind: over the run some noise crosses classes
        crossed = []
        for step, (x0, noise, y) in enumerate(seen):
            raw = torch.randn(x0.shape, generator=step_generator(cfg.seed, step, 0))
            crossed.append(not torch.equal(y[assignment_permutation(x0, raw, "exact")], y))
        assert any(crossed)


def test_label_dropout_uses_the_null_class_at_its_rate(tmp_path, monkeypatch):
    images, labels = _images_and_labels(n=96)
    seen = []
    real = losses_module.denoising_loss

    def spy(model, x0, noise, t, objective, ac, T, **kw):
        seen.append(kw["class_labels"].clone())
        return real(model, x0, noise, t, objective, ac, T, **kw)

    monkeypatch.setattr(losses_module, "denoising_loss", spy)
    cfg = _cfg(tmp_path, label_dropout=0.3, batch_size=48, steps=10, checkpoint_every=10)
    train(cfg, images=images, labels=labels)
    y = torch.cat(seen)
    share = float((y == 3).float().mean())  # the null class is num_classes
    assert 0.2 < share < 0.4 and int(y.max()) == 3 and int(y.min()) == 0


def test_guided_output_is_the_guidance_formula():
    class Net(torch.nn.Module):
        def forward(self, x, t, class_labels):
            return type("O", (), {"sample": x * (1 + class_labels.float()[:, None, None, None])})()

    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 1])
    out = guided_output(Net(), x, torch.tensor(5), y, 2.5, null_label=3)
    cond, uncond = x * (1 + y.float()[:, None, None, None]), x * 4
    assert torch.allclose(out, uncond + 2.5 * (cond - uncond))
    assert torch.allclose(guided_output(Net(), x, torch.tensor(5), y, 1.0, 3), cond)


def test_class_embedding_is_saved_and_loaded(tmp_path):
    images, labels = _images_and_labels()
    train(_cfg(tmp_path, method="exact_class", snapshot_every=3), images=images, labels=labels)
    model, cfg = load_run_model(tmp_path / "run")
    assert cfg.num_classes == 3 and model.class_embedding.num_embeddings == 4


def test_bad_class_settings_give_clear_errors(tmp_path):
    images, labels = _images_and_labels()
    with pytest.raises(ValueError, match="needs a class-conditional run"):
        check_config(_cfg(tmp_path, method="exact_class", num_classes=0))
    with pytest.raises(ValueError, match="label_dropout"):
        check_config(_cfg(tmp_path, num_classes=0, label_dropout=0.1))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        train(_cfg(tmp_path, num_classes=2), images=images, labels=labels)
    with pytest.raises(ValueError, match="needs labels"):
        train(_cfg(tmp_path), images=images)
    with pytest.raises(ValueError, match="needs the batch's labels"):
        draw_noise(images[:4].float(), torch.Generator().manual_seed(0), "exact_class")
    folder = make_image_folder(tmp_path / "two", per_class=8, size=8)
    with pytest.raises(ValueError, match="has 2 classes but num_classes=3: set num_classes: 2"):
        train(_cfg(tmp_path, dataset=str(folder), output_dir=str(tmp_path / "r2")))


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tmp_path, monkeypatch):
    dataset = make_image_folder(tmp_path / "two", per_class=24, size=16)
    path = write_params(tmp_path, class_conditional=dict(dataset=str(dataset), seeds=[0, 1], profile="smoke"))
    exp = K.setup("smoke", params=str(path), data_dir=str(tmp_path / "data"),
                  checkpoint_dir=str(tmp_path / "ckpt" / "cc"), output_dir=str(tmp_path / "results"),
                  classifier_root=str(tmp_path / "ckpt" / "clf"))
    train_classifier(exp.classifier)
    for method in exp.methods:
        for seed in exp.seeds:
            train(exp.run_config(method, seed))  # labels come from the dataset
    tables = K.evaluate_all(exp)
    fid = pd.read_csv(exp.table("fid"))
    assert set(fid.method) == set(exp.methods) and len(fid) == 4 * 2 * 2
    assert fid.class_accuracy.between(0, 1).all() and np.allclose(fid.class_error, 1 - fid.class_accuracy)
    assert (fid.guidance_scale == 1.5).all() and fid.fd_class_mean.notna().all()
    paired = pd.read_csv(exp.table("paired"))
    assert set(paired[paired.baseline == "exact"].method) == {"exact_class"}
    assert set(paired[paired.baseline == "vanilla"].method) == {"exact", "exact_class", "knn"}
    for (method, baseline, step), sub in paired.groupby(["method", "baseline", "step"]):
        f = fid[fid.step == step]
        d = f[f.method == method].set_index("seed").class_error - f[f.method == baseline].set_index("seed").class_error
        assert sub.class_error_diff_mean.iloc[0] == pytest.approx(d.mean(), abs=1e-6)
    samples = np.load(exp.eval_dir / "samples-exact_class-0.npy")
    assert samples.shape[0] == 2 * exp.eval.grid_per_class  # grid_per_class per class, class by class
    metrics = json.loads((Path(exp.output_dir) / "metrics" / "class_conditional.json").read_text())
    assert set(metrics) == {"exact", "exact_class", "knn"}
    assert tables["training"].steps.eq(6).all()
    noise = pd.read_csv(exp.table("sampling_noise"))     # the last snapshot of seed 0, with 2 other sample seeds
    assert len(noise) == 4 * 2 and set(noise.step) == {6} and set(noise.seed) == {0}
    assert set(noise.sample_seed) == {20_000, 21_000}
    again = fid[(fid.step == 6) & (fid.seed == 0)].set_index("method").fd   # another noise: another FD
    assert not np.allclose(noise[noise.sample_seed == 20_000].set_index("method").fd[again.index], again)
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")
    monkeypatch.setattr(K, "sample_images", no_sampling)   # cached: read back, not sampled again
    pd.testing.assert_frame_equal(K.sampling_noise(exp), tables["sampling_noise"])
    monkeypatch.undo()
    import papermill as pm
    pm.execute_notebook(str(ROOT / "notebooks" / "class_conditional.ipynb"), str(tmp_path / "executed.ipynb"),
                        parameters=dict(profile="smoke", params=str(path), checkpoint_dir=exp.checkpoint_dir,
                                        output_dir=exp.output_dir), kernel_name="python3", progress_bar=False)
    for name in ("fd_curves", "accuracy_curves", "paired", "samples"):
        assert (Path(exp.output_dir) / "figures" / f"class_conditional_{name}.png").stat().st_size > 0
