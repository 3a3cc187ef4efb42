"""dvc.yaml and params.yaml agree: every ${...} resolves, every stage lists the code it imports (imports inside
functions and the notebooks' imports included) and reads params that exist, and every tracked result file belongs
to a stage."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from test_layers import GRAPH, PACKAGE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages():
    from dvc.repo import Repo
    repo = Repo(str(ROOT), uninitialized=True)
    try:
        return {s.addressing: s for s in repo.index.stages}
    finally:
        repo.close()


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
    path = PACKAGE.parent / module.replace(".", "/")
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT)


def notebook_imports(path: Path) -> set[str]:
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    found = set()
    for mod, names in re.findall(r"^\s*from (immiscible[\w.]*) import ([\w, ]+)", code, re.M):
        for n in (x.split(" as ")[0].strip() for x in names.split(",")):
            found.add(f"{mod}.{n}" if f"{mod}.{n}" in GRAPH else mod)
    return found


def entry_modules(cmd: str) -> set[str]:
    mods = set(re.findall(r"python -m (immiscible[\w.]*)", cmd))
    for notebook in re.findall(r"python -m immiscible\.pipeline (\w+)", cmd):
        mods |= notebook_imports(ROOT / "notebooks" / f"{notebook}.ipynb")
    # `python -m package` runs package/__main__ (after the package's __init__, which closure() adds)
    return {m + ".__main__" if m + ".__main__" in GRAPH else m for m in mods}


def test_every_stage_lists_the_code_it_imports(stages):
    missing = {}
    for name, stage in stages.items():
        deps = [Path(d.def_path) for d in stage.deps]
        needed = {module_file(m) for m in closure(entry_modules(stage.cmd))}
        absent = sorted(str(f) for f in needed if not any(f == d or d in f.parents for d in deps))
        if absent:
            missing[name] = absent
    assert not missing, f"stages missing the code they import: {missing}"


def test_every_params_reference_resolves():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    refs = set(re.findall(r"\$\{([^}]+)\}", (ROOT / "dvc.yaml").read_text()))
    assert refs, "dvc.yaml holds no ${...} reference: the test would check nothing"
    for ref in refs - {r for r in refs if r.startswith("item.")}:
        _get(params, ref)  # nested keys such as profiles.${unconditional.profile}.train: the stage-params test


def _get(params, dotted):
    node = params
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"{dotted!r} is not in params.yaml"
        node = node[key]
    return node


def test_stage_params_exist_and_every_stage_declares_some(stages):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in stages.items():
        declared = [p for dep in stage.deps if dep.__class__.__name__ == "ParamsDependency" for p in dep.params]
        assert declared, f"{name} declares no params"
        for p in declared:
            _get(params, p)


def test_every_tracked_result_file_belongs_to_a_stage(stages):
    outs = {Path(o.def_path) for s in stages.values() for o in s.outs}
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    # results/device/ is written by tools/device_check.sh on a GPU machine (`make device-check`), which no stage runs
    outs.add(Path("results/device"))
    # results/gpu/ is written by the GPU study (tools/gpu_study.sh), which no stage runs either
    outs.add(Path("results/gpu"))
    orphans = [f for f in tracked if not any(Path(f) == o or o in Path(f).parents for o in outs)]
    assert not orphans, f"result files no stage produces: {orphans}"


def test_no_stage_writes_into_another_stages_outputs(stages):
    owner = {}
    for name, stage in stages.items():
        for o in stage.outs:
            path = Path(o.def_path)
            clash = [n for p, n in owner.items() if p == path or p in path.parents or path in p.parents]
            assert not clash, f"{name} writes {path}, which {clash} also outputs"
            owner[path] = name
