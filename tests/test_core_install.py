"""The wheel installs and works in a fresh virtual environment that holds only the core dependencies (torch, numpy,
scipy, taken from this environment: no network): assign_noise (optimal), knn_noise, the distributed helper with two
processes, the prefetcher, and the kernel built from the source files the wheel ships (tests/core_install_check.py).
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _closure(names) -> list:
    """The distributions ``names`` need at run time (no extras), recursively, as installed here."""
    from packaging.requirements import Requirement
    seen, todo, dists = set(), list(names), []
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except Exception:  # a requirement not installed here (platform-specific): torch imports without it
            continue
        dists.append(dist)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dists


def _link_farm(folder: Path, dists) -> None:
    """Symlinks to the top-level files of ``dists`` (their packages and metadata), one folder for a .pth file."""
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in dists:
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (folder / top).exists() and src.parent == site:
                (folder / top).symlink_to(src)


def test_wheel_in_a_core_only_environment(tmp_path):
    src = tmp_path / "src"  # build from a copy: a build in place would leave build/ and *.egg-info in the tree
    shutil.copytree(ROOT / "immiscible", src / "immiscible", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True)
    wheel = next((tmp_path / "dist").glob("immiscible-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "immiscible/noise/csrc/jv.c" in names and "immiscible/noise/csrc/jv_impl.h" in names
    core = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(re.split(r"[<>=!~ ]", r)[0] for r in core) == ["numpy", "scipy", "torch"], core

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True)
    farm = tmp_path / "core-deps"
    _link_farm(farm, _closure(["torch", "numpy", "scipy"]))
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "core_deps.pth").write_text(str(farm) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["IMMISCIBLE_CACHE"] = str(tmp_path / "kernel-cache")
    proc = subprocess.run([str(python), str(ROOT / "tests" / "core_install_check.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "core install OK" in proc.stdout
