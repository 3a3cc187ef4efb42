"""Bad inputs (issue #5, docs/bad_inputs.md): each one raises an error of a stated type whose message says what to do,
before any compute, and leaves nothing half-written in the output folders."""
import errno
import os
import pathlib
import re
import tarfile

import matplotlib.figure
import pandas as pd
import pytest
import torch

import immiscible.diffusion.losses as losses_module
import immiscible.engine.__main__ as cli_module
import immiscible.engine.checkpoints as checkpoints_module
from conftest import make_archive, make_image_folder
from immiscible.experiments import figures, unconditional as U
from immiscible.config import load_profile

PARAMS = str(pathlib.Path(__file__).resolve().parents[1] / "params.yaml")
from immiscible.noise.assignment import knn_noise
from immiscible.config import from_dict
from immiscible.data import DatasetError, load_dataset, prepare_dataset
from immiscible.models import MODEL_CONFIGS
from immiscible.engine.config import TrainConfig
from immiscible.engine.checkpoints import list_checkpoints, list_snapshots, load_run_model, verify_checksums
from immiscible.engine.loop import train

TINY = dict(model="tiny", resolution=8, batch_size=8, steps=4, checkpoint_every=2, snapshot_every=2, log_every=1,
            progress=False)


def _images(n=32):
    return torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _cfg(tmp_path, **kw) -> TrainConfig:
    return from_dict(TrainConfig, {**TINY, "output_dir": str(tmp_path / "run"), **kw})


def _files(folder: pathlib.Path) -> list[str]:
    """Every file and folder under ``folder`` (relative), hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- names and numbers

def test_unknown_method(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"method='immiscible' is not allowed; choose one of .*'vanilla'.*'exact'"):
        cli_module.config_from_args(["--set", "method=immiscible"])
    with pytest.raises(ValueError, match=r"unknown method 'immiscible'; choose from .*'vanilla'"):
        U.setup("smoke", methods=["vanilla", "immiscible"], params=PARAMS)
    with pytest.raises(SystemExit):
        cli_module.main(["--method", "immiscible"])
    assert re.search(r"invalid choice: 'immiscible' \(choose from '?vanilla'?, '?exact'?", capsys.readouterr().err)


def test_unknown_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"unknown dataset 'imagenet-nothere'.*Give 'cifar10' or the path of "
                                                r"an ImageFolder"):
        load_dataset("imagenet-nothere", data_dir=tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="unknown dataset 'imagenet-nothere'"):
        train(_cfg(tmp_path, dataset="imagenet-nothere", data_dir=str(tmp_path / "data")))
    assert not (tmp_path / "run").exists()


def test_unknown_profile(tmp_path):
    with pytest.raises(ValueError, match=r"unknown profile 'nope' for group 'unconditional' in .*params.yaml; "
                                         r"choose one of \['cpu', 'gpu', 'gpu_quick', 'gpu_smoke', 'paper', 'smoke'\]"):
        load_profile(PARAMS, "unconditional", "nope")
    with pytest.raises(ValueError, match=r"unknown profile 'nope' for group 'unconditional'.*choose one of"):
        cli_module.main(["--profile", "nope", "--params", PARAMS,
                           "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
    with pytest.raises(FileNotFoundError, match=r"params file .*nothere.yaml not found"):
        cli_module.main(["--profile", "smoke", "--params", str(tmp_path / "nothere.yaml")])


def test_one_default_profile_for_every_entry_point(tmp_path):
    """No code holds a default profile: a library ``setup`` and a command line without one both run params.yaml's
    ``<group>.profile``; without that key the error names it; bench settings missing from params.yaml are named."""
    import yaml
    from immiscible.config import group_profile, group_values
    from immiscible.experiments import consistency_train, last_step
    params = yaml.safe_load(open(PARAMS))
    params["unconditional"]["profile"] = "smoke"
    params["consistency"]["profile"] = "paper"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert U.setup(params=str(path)).profile == "smoke" and U.setup("cpu", params=str(path)).profile == "cpu"
    assert consistency_train.run_settings(str(path))[0].steps == \
        consistency_train.run_settings(str(path), "paper")[0].steps
    params["ablation"]["profile"] = "smoke"               # the last-step comparison runs at the ablation's profile
    path.write_text(yaml.safe_dump(params))
    assert last_step.setup(params=str(path)).profile == "smoke"
    del params["ablation"]["profile"], params["assignment_overhead"]["repeats"]
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"ablation.profile is not set; pass a profile \(--profile\) or set"):
        last_step.setup(params=str(path))
    assert group_profile(str(path), "ablation", "smoke") == "smoke"
    with pytest.raises(ValueError, match=r"assignment_overhead lacks \['repeats'\]"):
        group_values(str(path), "assignment_overhead", ("profile", "batch_sizes", "steps", "repeats"))


def test_unknown_objective(tmp_path):
    with pytest.raises(ValueError, match=r"objective='score' is not allowed; choose one of .*'eps'.*'flow'"):
        cli_module.config_from_args(["--set", "objective=score"])
    with pytest.raises(ValueError, match=r"unknown objective 'score'; choose one of .*'eps'"):
        U.setup("smoke", objective="score", params=PARAMS)


@pytest.mark.parametrize("batch_size", [0, -8])
def test_batch_size_zero_or_negative(tmp_path, batch_size):
    with pytest.raises(ValueError, match=rf"batch_size={batch_size} must be >= 1"):
        train(_cfg(tmp_path, batch_size=batch_size), images=_images())
    with pytest.raises(ValueError, match=rf"batch_size={batch_size} must be >= 1"):
        U.setup("smoke", batch_size=batch_size, params=PARAMS, checkpoint_dir=str(tmp_path / "ckpt"))
    assert _files(tmp_path) == []


@pytest.mark.parametrize("k", [0, -1])
def test_knn_k_below_one(tmp_path, k):
    with pytest.raises(ValueError, match=rf"knn_k={k} must be >= 1"):
        train(_cfg(tmp_path, method="knn", knn_k=k), images=_images())
    assert _files(tmp_path) == []
    with pytest.raises(ValueError, match=r"k must be an integer >= 1 \(number of candidate noises per image\)"):
        knn_noise(torch.zeros(4, 3, 8, 8), k)


def test_batch_size_not_divisible_by_the_number_of_processes(tmp_path, monkeypatch):
    from accelerate import Accelerator
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 3))  # as under a 3-process launch
    with pytest.raises(ValueError, match=r"batch_size=8 must be divisible by the number of processes \(3\): use a "
                                         r"multiple of 3 such as 6, or launch fewer processes"):
        train(_cfg(tmp_path, batch_size=8), images=_images())
    assert _files(tmp_path) == []  # tests/test_multiprocess.py checks the same with two real processes


# ----------------------------------------------------------------------------- data

def test_dataset_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(FileNotFoundError, match=r"dataset path .*folder does not exist. Give an ImageFolder "
                                                r"directory or a .tar.gz archive"):
        prepare_dataset(str(missing), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"no such path. Give 'cifar10' or the path of an ImageFolder"):
        train(_cfg(tmp_path, dataset=str(missing)))
    assert _files(tmp_path) == []


def _bad_archive(tmp_path: pathlib.Path, kind: str) -> pathlib.Path:
    path = tmp_path / "bad.tar.gz"
    if kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        good = make_archive(make_image_folder(tmp_path / "src", per_class=8), tmp_path / "good.tar.gz")
        data = good.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        good.unlink()
    elif kind == "no-images":
        with tarfile.open(path, "w:gz"):
            pass
    return path


@pytest.mark.parametrize("kind, message", [
    ("empty-file", r"(?s)is corrupt or truncated .*Download it again and check its checksum"),
    ("garbage", r"(?s)is corrupt or truncated .*Download it again and check its checksum"),
    ("truncated", r"(?s)is corrupt or truncated .*Download it again and check its checksum"),
    ("no-images", r"has no images under train/: an ImageFolder needs train/<class>/\*.jpg\|png .*repack the data"),
])
def test_corrupt_or_empty_archive(tmp_path, kind, message):
    archive = _bad_archive(tmp_path, kind)
    out = tmp_path / "prepared"
    with pytest.raises(DatasetError, match=message):
        prepare_dataset(str(archive), out)
    assert not out.exists()
    with pytest.raises(DatasetError, match=message):
        train(_cfg(tmp_path, dataset=str(archive)))
    assert not (tmp_path / "run").exists()


def test_mixed_image_sizes(tmp_path):
    folder = make_image_folder(tmp_path / "mixed", classes=("cat",), per_class=3, size=(8, 8), splits=("train",))
    make_image_folder(tmp_path / "mixed", classes=("dog",), per_class=1, size=(16, 16), splits=("train",))
    out = tmp_path / "prepared"
    with pytest.raises(DatasetError, match=r"images of mixed sizes .*most are 8x8 \(HxW\) but e.g. "
                                           r"train/dog/0000.png is 16x16. Resize them all to one size first"):
        prepare_dataset(str(folder), out)
    assert not out.exists()


# ----------------------------------------------------------------------------- checkpoints and runs

def test_checkpoint_from_another_model_config(tmp_path, monkeypatch):
    images = _images()
    train(_cfg(tmp_path, steps=2), images=images)
    run = tmp_path / "run"
    before = _snapshot(run)
    # 1. resuming the run with another model setting: refused, with the difference and what to do
    with pytest.raises(ValueError, match=r"was trained with a different config \{'model': \('tiny', 'small'\)\}.*"
                                         r"Use another output_dir for the new setting"):
        train(_cfg(tmp_path, steps=4, model="small"), images=images)
    # 2. the same name now means another network (the model definition changed since): no raw size-mismatch error
    monkeypatch.setitem(MODEL_CONFIGS, "tiny", {**MODEL_CONFIGS["tiny"], "block_out_channels": (16, 32, 64)})
    with pytest.raises(ValueError, match=r"checkpoint-0000002/model.safetensors holds weights of another model "
                                         r"config \(shape of .* is .*, the model expects .*\). Load it with the "
                                         r"config it was trained with"):
        train(_cfg(tmp_path, steps=4), images=images)
    # 3. evaluating a snapshot with a config that does not match it
    with pytest.raises(ValueError, match=r"ema-0000002.safetensors holds weights of another model config"):
        load_run_model(run)
    assert _snapshot(run) == before  # nothing written, nothing removed


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, bad):
    real = losses_module.training_pair
    calls = {"n": 0}

    def poisoned(objective, x0, noise, t, alphas_cumprod):
        calls["n"] += 1
        x_t, target = real(objective, x0, noise, t, alphas_cumprod)
        return x_t, target * bad if calls["n"] == 4 else target  # the 4th step (step index 3)

    monkeypatch.setattr(losses_module, "training_pair", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \((nan|inf)\) by step 4 of .*; stopped without "
                                                 r"saving. Last good checkpoint: .*checkpoint-0000002. Lower lr or "
                                                 r"enable grad_clip"):
        train(_cfg(tmp_path, steps=6), images=_images())
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0000002"]
    assert verify_checksums(run / "checkpoint-0000002")
    assert sorted(list_snapshots(run)) == [2]
    assert not (run / "summary.json").exists()
    assert not [p for p in _files(run) if ".tmp-" in p]


# ----------------------------------------------------------------------------- a full disk

def _disk_full_after_half(real):
    """A writer that writes half of its output to the path it is given, then fails as a full disk does."""
    def write(self_or_path, data, *args, **kwargs):
        real(self_or_path, data[:len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def _fid_table() -> pd.DataFrame:
    rows = [{"method": m, "seed": s, "step": step, "fd": fd + s, "kid": 0.1, "extractor": "proxy",
             "metric": "FD (proxy)", "num_samples": 48}
            for m, base in (("vanilla", 50.0), ("exact", 45.0)) for s in (0, 1)
            for step, fd in ((3, base), (6, base - 10))]
    return pd.DataFrame(rows)


def test_no_disk_space_when_writing_a_table(tmp_path, monkeypatch):
    exp = U.setup("smoke", params=PARAMS, output_dir=str(tmp_path / "results"))
    tables = tmp_path / "results" / "tables"
    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_text", _disk_full_after_half(pathlib.Path.write_text))
        with pytest.raises(OSError, match=r"no space left on device while writing .*unconditional_efficiency.csv: "
                                          r"free space or set output_dir elsewhere") as info:
            U.efficiency_tables(exp, _fid_table())
    assert info.value.errno == errno.ENOSPC
    assert _files(tables) == []  # no partial table, no temporary file
    good, _ = U.efficiency_tables(exp, _fid_table())  # with space: written whole
    written = (tables / "unconditional_efficiency.csv").read_text()
    assert written == good.to_csv(index=False, float_format="%.6g")
    with monkeypatch.context() as m:  # a failed rewrite keeps the previous complete table
        m.setattr(pathlib.Path, "write_text", _disk_full_after_half(pathlib.Path.write_text))
        with pytest.raises(OSError, match="no space left on device"):
            U.efficiency_tables(exp, _fid_table().assign(fd=lambda d: d.fd * 2))
    assert _files(tables) == ["unconditional_efficiency.csv", "unconditional_efficiency_seeds.csv"]
    assert (tables / "unconditional_efficiency.csv").read_text() == written


def test_no_disk_space_when_writing_a_figure(tmp_path, monkeypatch):
    exp = U.setup("smoke", params=PARAMS, output_dir=str(tmp_path / "results"))
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        real(fig, path, *args, **kwargs)
        with open(path, "r+b") as f:  # half a PNG on disk, then the disk is full
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    with pytest.raises(OSError, match=r"no space left on device while writing .*unconditional_fd_curves.png: free "
                                      r"space or set output_dir elsewhere"):
        figures.plot_curves(_fid_table(), exp.output_dir, "unconditional_fd_curves")
    import matplotlib.pyplot as plt
    plt.close("all")
    assert _files(tmp_path / "results" / "figures") == []


def test_no_disk_space_when_writing_a_checkpoint(tmp_path, monkeypatch):
    real = checkpoints_module.save_file

    def save_file(tensors, path, *args, **kwargs):
        if "checkpoint-0000004" in str(path) and path.name == "ema.safetensors":
            real(dict(list(tensors.items())[:2]), path, *args, **kwargs)  # part of the file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints_module, "save_file", save_file)
    with pytest.raises(OSError, match=r"no space left on device while writing .*checkpoint-0000004: free space or "
                                      r"set output_dir elsewhere"):
        train(_cfg(tmp_path, steps=4), images=_images())
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0000002"]
    assert verify_checksums(run / "checkpoint-0000002")
    assert not [p for p in _files(run) if ".tmp-" in p]
