"""The Stable Diffusion DVC project (pipelines/stable_diffusion) on tiny random components: `dvc repro` encodes the
latent cache once, trains a run per method on it and samples each run into PNG folders; the cache is reused until
what it depends on changes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
import torch
import yaml

pytest.importorskip("transformers")

from immiscible.sd.components import save_tiny_components  # noqa: E402
from immiscible.sd.latents import encode_dataset, load_latents  # noqa: E402
from test_unconditional_notebook import make_image_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))


def _run(args, cwd):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_dvc_repro_encodes_once_trains_each_method_and_samples(tmp_path):
    if not Path(DVC).exists():
        pytest.skip("dvc is not installed next to this Python")
    project = tmp_path / "project"
    sub = project / "pipelines" / "stable_diffusion"
    sub.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    shutil.copytree(ROOT / "immiscible", project / "immiscible",       # the stages' code deps (../../immiscible/...)
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / "pipelines" / "stable_diffusion" / name, sub / name)
    _run(["git", "init", "-q"], project)
    _run([DVC, "init", "--subdir", "-q"], sub)
    pretrained = save_tiny_components(tmp_path / "tiny-sd", sample_size=16)
    dataset = make_image_folder(tmp_path / "images", per_class=8, size=16)
    mapping = tmp_path / "classes.txt"
    mapping.write_text("bright light one, lamp\ndark shade\n")
    params = yaml.safe_load((sub / "params.yaml").read_text())
    params.update(pretrained=str(pretrained), dataset=str(dataset), class_names=str(mapping), resolution=16,
                  dtype="float32", profile="smoke", launch=f"{sys.executable}", methods=["vanilla", "exact"],
                  seeds=[0], sample={"per_class": 2, "batch_size": 4},
                  fid={"val_images": str(make_image_folder(tmp_path / "val", per_class=3, size=20) / "test"),
                       "mode": "legacy_pytorch"})
    (sub / "params.yaml").write_text(yaml.safe_dump(params))

    # everything but the FID stages (clean-fid's Inception weights cannot be downloaded here)
    log = _run([DVC, "repro", "samples", "reference"], sub)
    val = sorted((tmp_path / "val" / "test").rglob("*.png"))
    reference = sorted((sub / "reference").rglob("*.png"))
    assert len(reference) == len(val) > 0 and Image.open(reference[0]).size == (16, 16)  # at the training resolution
    assert "Running stage 'latents'" in log and "Running stage 'train@exact-0'" in log
    latents, labels, classes, _ = load_latents(sub / "latents" / "train", views=True)
    expected = encode_dataset(str(pretrained), str(dataset), tmp_path / "direct", resolution=16, dtype="float32",
                              class_names=str(mapping), progress=False, device="cpu")
    assert torch.allclose(latents, load_latents(expected, views=True)[0], atol=1e-6)
    assert classes == ["light one", "shade"] and latents.shape[1] == 2    # names from the mapping file; mirrors
    for method in ("vanilla", "exact"):
        run = sub / "runs" / f"{method}-0"
        config = json.loads((run / "train_config.json").read_text())
        assert config["method"] == method and config["settings"]["latents_sha256"]
        pngs = sorted((sub / "samples" / f"{method}-0").glob("*/*.png"))
        assert len(pngs) == 2 * len(classes)
        assert Image.open(pngs[0]).size == (16, 16)           # the training images' resolution
    status = _run([DVC, "status"], sub)
    assert "fid@exact-0" in status and "latents:" not in status and "train@exact-0" not in status  # only FID to run

    params["resolution"] = 8             # what the cache depends on changed: it is encoded again, and all after it
    (sub / "params.yaml").write_text(yaml.safe_dump(params))
    status = _run([DVC, "status"], sub)
    assert "latents:" in status and "resolution" in status

    params["resolution"] = 16            # back; then the training code changes: training and sampling are stale,
    (sub / "params.yaml").write_text(yaml.safe_dump(params))    # the latent cache (which does not import it) is not
    with open(project / "immiscible" / "sd" / "train.py", "a") as f:
        f.write("\n# changed\n")
    status = _run([DVC, "status"], sub)
    assert "train@exact-0" in status and "immiscible/sd/train.py" in status and "latents:" not in status
