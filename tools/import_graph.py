"""The package's import graph, read from the source (imports inside functions included), and what a command runs.

Shared by the layering tests (tests/test_layers.py) and the DVC code-dependency generator (tools/dvc_deps.py), so
that what the tests check and what dvc.yaml lists come from one reading of the code.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "immiscible"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every immiscible module ``path`` imports, anywhere in the file (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "immiscible"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "immiscible":
                continue
            for a in node.names:  # `from immiscible.noise import native` imports a module
                candidate = f"{base}.{a.name}"
                found.add(candidate if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / candidate.replace(".", "/")).is_dir() else base)
    return found


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def closure(modules: set[str]) -> set[str]:
    """The immiscible modules ``modules`` import, transitively, with the packages whose __init__ runs."""
    seen, todo = set(), list(modules)
    while todo:
        m = todo.pop()
        if m in seen or m not in GRAPH:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages' __init__ run first
        todo += list(GRAPH[m])
    return seen


def module_file(module: str) -> Path:
    """The source file of ``module``, relative to the project root."""
    path = PACKAGE.parent / module.replace(".", "/")
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT)


def notebook_imports(path: Path) -> set[str]:
    """The immiscible modules a notebook's code cells import (``from immiscible.x import y``)."""
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    found = set()
    for mod, names in re.findall(r"^\s*from (immiscible[\w.]*) import ([\w, ]+)", code, re.M):
        for n in (x.split(" as ")[0].strip() for x in names.split(",")):
            found.add(f"{mod}.{n}" if f"{mod}.{n}" in GRAPH else mod)
    return found


def entry_modules(cmd: str) -> set[str]:
    """The modules a stage's command runs: ``python -m immiscible...`` (or ``<launcher> -m immiscible...``), and for
    ``python -m immiscible.pipeline <notebook>`` the notebook's imports."""
    mods = set(re.findall(r"-m (immiscible[\w.]*)", cmd))
    for notebook in re.findall(r"-m immiscible\.pipeline (\w+)", cmd):
        mods |= notebook_imports(ROOT / "notebooks" / f"{notebook}.ipynb")
    # `python -m package` runs package/__main__ (after the package's __init__, which closure() adds)
    return {m + ".__main__" if m + ".__main__" in GRAPH else m for m in mods}
