"""Checkpoint I/O of the training engine, in the diffusers conventions (``checkpoint-{step}`` folders, a total
limit, resume from the latest) with safetensors weights, written atomically and checksummed.

- a checkpoint is written into a temporary folder, checksummed (SHA256SUMS), then renamed into place with
  ``os.replace``; on resume a checkpoint whose checksums fail is skipped with a warning;
- EMA snapshots for evaluation (``snapshots/ema-{step}.safetensors``) are kept, unlike full checkpoints;
- the ``.tmp-*`` leftovers of a killed write are removed when the run starts again.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from immiscible.config import from_dict, to_dict
from immiscible.engine.config import RESUMABLE_FIELDS, TrainConfig
from immiscible.io import NO_SPACE, atomic_write, atomic_write_text, file_sha256, no_space_error
from immiscible.models import build_unet


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checksums(folder: Path) -> None:
    """Write SHA256SUMS for every file of ``folder`` (the last file of a checkpoint)."""
    lines = [f"{file_sha256(p)}  {p.name}" for p in sorted(folder.iterdir()) if p.is_file() and p.name != "SHA256SUMS"]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def verify_checksums(folder: Path) -> bool:
    """True when SHA256SUMS exists and every listed file matches it."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return False
    try:
        lines = sums.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    if not lines:
        return False
    for line in lines:
        digest, sep, name = line.partition("  ")
        if not sep or not (folder / name).is_file() or file_sha256(folder / name) != digest:
            return False
    return True


def checkpoint_step(path: Path) -> int:
    """checkpoint-0001000 -> 1000."""
    return int(path.name.rsplit("-", 1)[1])


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders (checkpoint-<digits>) of a run, oldest first; other names such as copies are ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
                  key=checkpoint_step)


def latest_valid_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose checksums verify; corrupt ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        if verify_checksums(path):
            return path
        warnings.warn(f"checkpoint {path} is incomplete or corrupt (SHA256SUMS mismatch); using an older one")
    return None


def _atomic_dir(final: Path, write) -> Path:
    """Call ``write(tmp_dir)``, checksum it, fsync, then rename it to ``final`` in one step. A failed write removes
    its temporary folder (a killed one leaves it to the next run's clean-up); a full disk says what to do."""
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        write_checksums(tmp)
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            raise no_space_error(final, e) from e
        raise
    if final.exists():
        _remove_dir(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _remove_dir(path: Path) -> None:
    """Delete a folder by renaming it to .tmp-* first: a kill mid-way leaves only what the next run cleans up."""
    doomed = path.parent / f".tmp-remove-{path.name}-{os.getpid()}"
    try:
        os.replace(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def remove_tmp(folder: Path) -> None:
    """Delete the .tmp-* leftovers of writes that were killed."""
    for tmp in folder.glob(".tmp-*") if folder.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def ema_state_dict(model, ema) -> dict[str, torch.Tensor]:
    """The model's state dict with parameters replaced by their EMA values."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for (name, _), shadow in zip(model.named_parameters(), ema.shadow_params):
        state[name] = shadow.detach().to(state[name].dtype).clone().contiguous()
    return state


def save_checkpoint(run_dir: Path, step: int, cfg: TrainConfig, model, ema, optimizer, lr_scheduler) -> Path:
    """Write checkpoint-{step} atomically: weights, EMA, optimizer, LR schedule, RNG states, step, config."""
    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        save_file(ema_state_dict(model, ema), tmp / "ema.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()},
                   tmp / "optimizer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, tmp / "rng.safetensors")
        np_state = np.random.get_state()
        ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        state = {"step": step, "config": to_dict(cfg), "ema": ema_meta,
                 "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                 "python_rng": _listify(random.getstate()),
                 "data_order": "default_rng([seed, epoch]).permutation(N); batch s = positions s*B..(s+1)*B-1"}
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    path = _atomic_dir(run_dir / f"checkpoint-{step:07d}", write)
    for old in list_checkpoints(run_dir)[:-cfg.checkpoints_total_limit]:
        _remove_dir(old)
    return path


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, (list, tuple)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def load_weights(model, path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict into ``model``; weights of another model config -> ValueError saying so."""
    weights = load_file(path)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [(k, tuple(weights[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = (f"shape of {wrong[0][0]} is {wrong[0][1]}, the model expects {wrong[0][2]}" if wrong else
                  f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        raise ValueError(f"{path} holds weights of another model config ({detail}). Load it with the config it "
                         "was trained with (its run's train_config.json), or use another output_dir for a new model.")
    model.load_state_dict(weights)
    return weights


def load_checkpoint(path: Path, model, ema, optimizer, lr_scheduler) -> dict:
    """Restore everything ``save_checkpoint`` wrote; returns state.json."""
    state = json.loads((path / "state.json").read_text())
    load_weights(model, path / "model.safetensors")
    ema_weights = load_file(path / "ema.safetensors")
    shadow = [ema_weights[name] for name, _ in model.named_parameters()]
    ema.load_state_dict({**state["ema"], "shadow_params": shadow})
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    lr_scheduler.load_state_dict(opt["lr_scheduler"])
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    name, keys, *rest = state["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(_tuplify(state["python_rng"]))
    return state


def save_snapshot(run_dir: Path, step: int, model, ema) -> Path:
    """EMA weights for evaluation: snapshots/ema-{step}.safetensors (kept, unlike full checkpoints)."""
    folder = run_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    state = ema_state_dict(model, ema)
    return atomic_write(folder / f"ema-{step:07d}.safetensors",
                        lambda tmp: save_file(state, tmp, metadata={"step": str(step)}))


def list_snapshots(run_dir: str | Path) -> dict[int, Path]:
    """{step: path} of a run's EMA snapshots."""
    folder = Path(run_dir) / "snapshots"
    paths = folder.glob("ema-*.safetensors") if folder.is_dir() else []
    return dict(sorted((int(p.stem.split("-")[1]), p) for p in paths))


def weights_digest(path: str | Path) -> str:
    """SHA-256 of the tensors of a safetensors file (names, dtypes, shapes, values; not its metadata, which holds
    the step): equal for the same weights saved at different steps or by different runs."""
    h = hashlib.sha256()
    for name, tensor in sorted(load_file(path).items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def init_weights_path(init_from: str | Path) -> Path:
    """The weights file a fine-tuning run starts from: ``init_from`` itself, or a run folder's last EMA snapshot."""
    path = Path(init_from)
    if path.is_dir():
        snaps = list_snapshots(path)
        if not snaps:
            raise FileNotFoundError(f"init_from={str(init_from)!r} is a folder without EMA snapshots "
                                    "(snapshots/ema-*.safetensors): train the pretraining run first, or give a "
                                    "weights file")
        return snaps[max(snaps)]
    if not path.is_file():
        raise FileNotFoundError(f"init_from={str(init_from)!r} does not exist: give a .safetensors weights file or "
                                "a run folder with EMA snapshots")
    return path


def snapshot_path(run_dir: str | Path, step: int | None = None) -> Path:
    """The EMA snapshot of ``step`` (default: the last) of a run; a clear error when there is none."""
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise FileNotFoundError(f"no EMA snapshots in {run_dir}/snapshots: train the run first")
    step = max(snaps) if step is None else step
    if step not in snaps:
        raise ValueError(f"no snapshot for step {step} in {run_dir}; available steps: {sorted(snaps)}")
    return snaps[step]


def load_run_model(run_dir: str | Path, step: int | None = None):
    """(UNet with EMA weights of ``step`` (default: last snapshot), its TrainConfig) of a finished run."""
    run_dir = Path(run_dir)
    cfg = from_dict(TrainConfig, json.loads((run_dir / "train_config.json").read_text()))
    path = snapshot_path(run_dir, step)
    channels = json.loads((run_dir / "model_config.json").read_text())["in_channels"]
    model = build_unet(cfg.model, cfg.resolution, channels, cfg.dropout, cfg.num_classes)
    load_weights(model, path)
    return model.eval(), cfg


def model_config_json(model) -> str:
    """The UNet's diffusers config as JSON, without diffusers' private keys (their order changes from process to
    process, which would make identical runs look different to DVC)."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return json.dumps(config, indent=2, default=str) + "\n"


def check_resumable(saved: dict, cfg: TrainConfig, path: Path) -> None:
    current = to_dict(cfg)
    defaults = to_dict(TrainConfig())  # a field added after the checkpoint was written counts as its default
    diff = {k: (saved.get(k, defaults[k]), v) for k, v in current.items()
            if k not in RESUMABLE_FIELDS and saved.get(k, defaults[k]) != v}
    if diff:
        raise ValueError(f"{path} was trained with a different config {diff} (saved, requested). Use another "
                         "output_dir for the new setting, or delete the old run to start over.")




def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a run resumes from) and a partial last line
    (a run killed while appending)."""
    if not path.exists():
        return
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append((json.loads(line)["step"], line))
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for s, line in records if s <= step))


def snapshot_digest(path: str | Path) -> str:
    """SHA-256 of a snapshot file: what evaluation caches are keyed by (weights, not file names)."""
    return file_sha256(Path(path))
