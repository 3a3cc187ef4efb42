"""Atomic writes for results: a temporary file next to the target, fsync, then ``os.replace``; file checksums.

A reader (DVC, a notebook, a resumed run) sees the old file or the new one, never half of one. A write that fails
removes its temporary file; a full disk becomes an OSError that says what to do. A write killed with SIGKILL can
leave only a hidden ``.tmp-*`` file beside the target, never a truncated target.
"""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space_error(path: str | os.PathLike, error: OSError) -> OSError:
    """The OSError to raise when writing ``path`` ran out of space (``error.errno`` kept)."""
    return OSError(error.errno, f"no space left on device while writing {path}: free space or set output_dir "
                                f"elsewhere, then run again (nothing half-written was kept)")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path`` (same suffix), then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in NO_SPACE:
            raise no_space_error(path, e) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful os.replace
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_npy(path: str | os.PathLike, array) -> Path:
    """``np.save`` to ``path`` (ending in .npy) atomically."""
    import numpy as np
    return atomic_write(path, lambda tmp: np.save(tmp, array))


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig(path, **kwargs)`` atomically (the format follows the suffix of ``path``)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, **kwargs))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (any size, bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
