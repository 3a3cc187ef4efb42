"""Generate the code dependencies of every DVC stage from the import closure of the modules its command runs.

    python tools/dvc_deps.py            # rewrite the code deps in dvc.yaml and pipelines/*/dvc.yaml
    python tools/dvc_deps.py --check    # exit 1 (listing the stages) where a file differs from what it generates

A stage's code deps are the source files of every module its command imports, transitively (imports inside
functions and, for ``python -m immiscible.pipeline <notebook>``, the notebook's imports included), listed as:
  - a package folder where the stage needs every module in it (the folder then also covers its non-Python files);
  - else the module files, and ``immiscible/noise/csrc`` where the C kernel's loader is needed.
Other deps (data, notebooks, checkpoints, tables) are written by hand and kept as they are; the generated entries
take the place of the first code entry. The YAML is edited in place, comments and layout kept.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import ruamel.yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_graph import PACKAGE, ROOT, closure, entry_modules, module_file  # noqa: E402

# non-Python files a module reads at run time: {module file: folder}
DATA_DEPS = {Path("immiscible/noise/native.py"): Path("immiscible/noise/csrc")}
DVC_FILES = (ROOT / "dvc.yaml", *sorted((ROOT / "pipelines").glob("*/dvc.yaml")))


def code_deps(cmd: str) -> list[Path]:
    """The code deps (paths relative to the project root) of a stage running ``cmd``."""
    return as_entries({module_file(m) for m in closure(entry_modules(cmd))})


def as_entries(needed: set[Path]) -> list[Path]:
    """The module files ``needed`` as dvc.yaml entries: whole folders where every module is needed, and the folders
    of non-Python files the needed modules read."""
    entries: list[Path] = []

    def walk(folder: Path) -> None:
        modules = {p.relative_to(ROOT) for p in folder.rglob("*.py")}
        if folder != PACKAGE and modules and modules <= needed:
            entries.append(folder.relative_to(ROOT))
            return
        entries.extend(sorted(p.relative_to(ROOT) for p in folder.glob("*.py") if p.relative_to(ROOT) in needed))
        for sub in sorted(d for d in folder.iterdir() if d.is_dir() and (d / "__init__.py").exists()):
            walk(sub)
    walk(PACKAGE)
    covered = set(entries)
    entries += [DATA_DEPS[f] for f in sorted(covered & set(DATA_DEPS))]
    return entries


def is_code(dep: str, prefix: str) -> bool:
    return dep.startswith(prefix + "immiscible/") or dep == prefix + "immiscible"


def regenerate(path: Path, prefix: str | None = None) -> tuple[str, list[str]]:
    """(the file's text with generated code deps, the stages whose code deps changed). ``prefix``: the project root
    as seen from the file's folder (default: worked out from where the file lies)."""
    yaml = ruamel.yaml.YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    data = yaml.load(path.read_text())
    if prefix is None:
        prefix = os.path.relpath(ROOT, path.parent).replace(os.sep, "/") + "/" if path.parent != ROOT else ""
    changed = []
    for name, stage in data["stages"].items():
        body = stage.get("do", stage)
        cmd = body["cmd"] if isinstance(body["cmd"], str) else " ".join(body["cmd"])
        generated = [prefix + p.as_posix() for p in code_deps(cmd)]
        deps = body.get("deps")
        current = [d for d in (deps or []) if isinstance(d, str) and is_code(d, prefix)]
        if current == generated:
            continue
        changed.append(name)
        if deps is None:
            body.insert(list(body).index("cmd") + 1, "deps", ruamel.yaml.comments.CommentedSeq(generated))
            continue
        at = next((i for i, d in enumerate(deps) if isinstance(d, str) and is_code(d, prefix)), len(deps))
        for i in reversed(range(len(deps))):
            if isinstance(deps[i], str) and is_code(deps[i], prefix):
                del deps[i]
        for j, p in enumerate(generated):
            deps.insert(at + j, p)
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue(), changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Generate the DVC stages' code deps from the import graph.")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 where a file is not as generated")
    a = p.parse_args(argv)
    stale = {}
    for path in DVC_FILES:
        text, changed = regenerate(path)
        if changed:
            stale[path.relative_to(ROOT).as_posix()] = changed
            if not a.check:
                path.write_text(text)
    for f, names in stale.items():
        print(f"{f}: {'stale' if a.check else 'rewrote'} code deps of {len(names)} stage(s): {', '.join(names)}")
    return 1 if a.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
