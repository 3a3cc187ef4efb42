"""dvc.yaml and params.yaml agree: every ${...} resolves, every stage lists the code it imports (imports inside
functions and the notebooks' imports included) and reads params that exist, and every tracked result file belongs
to a stage."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import dvc_deps  # noqa: E402
from import_graph import closure, entry_modules, module_file  # noqa: E402


@pytest.fixture(scope="module")
def stages():
    from dvc.repo import Repo
    repo = Repo(str(ROOT), uninitialized=True)
    try:
        return {s.addressing: s for s in repo.index.stages}
    finally:
        repo.close()


def test_every_stage_lists_the_code_it_imports(stages):
    missing = {}
    for name, stage in stages.items():
        deps = [Path(d.def_path) for d in stage.deps]
        needed = {module_file(m) for m in closure(entry_modules(stage.cmd))}
        absent = sorted(str(f) for f in needed if not any(f == d or d in f.parents for d in deps))
        if absent:
            missing[name] = absent
    assert not missing, f"stages missing the code they import: {missing}"


def test_code_deps_are_generated_from_the_imports():
    """Every stage's code deps (dvc.yaml and the SD project's) are what tools/dvc_deps.py generates: an import added
    without running it fails here, so no stage misses code it runs and none lists code it does not."""
    stale = {p.relative_to(ROOT).as_posix(): dvc_deps.regenerate(p)[1] for p in dvc_deps.DVC_FILES}
    assert not any(stale.values()), f"run `python tools/dvc_deps.py`; stale code deps: {stale}"


def test_generated_deps_restore_a_removed_import_and_keep_the_rest(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    assert "      - immiscible/experiments/report.py\n" in text
    broken = tmp_path / "dvc.yaml"
    broken.write_text(text.replace("      - immiscible/experiments/report.py\n", "", 1)
                      .replace("  report:\n", "  report:\n    # a comment kept\n", 1))
    fixed, changed = dvc_deps.regenerate(broken, prefix="")
    assert changed == ["report"]
    assert fixed == text.replace("  report:\n", "  report:\n    # a comment kept\n", 1)


def test_generated_deps_are_folders_only_where_every_module_is_needed():
    deps = dvc_deps.code_deps("python -m immiscible.engine")     # a training run: all of noise, part of diffusion
    assert Path("immiscible/noise") in deps and Path("immiscible/noise/csrc") not in deps
    assert Path("immiscible/diffusion") not in deps and Path("immiscible/diffusion/objectives.py") in deps
    assert not any(d.parts[:2] == ("immiscible", "experiments") for d in deps)
    part = dvc_deps.as_entries({Path("immiscible/__init__.py"), Path("immiscible/noise/__init__.py"),
                                Path("immiscible/noise/native.py")})
    assert part == [Path("immiscible/__init__.py"), Path("immiscible/noise/__init__.py"),
                    Path("immiscible/noise/native.py"), Path("immiscible/noise/csrc")]   # the kernel's C source


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


def test_the_run_folders_dvc_tracks_are_the_ones_the_code_reads(stages):
    """dvc.yaml writes each run folder's path in its train stage's outs; the experiments find runs through
    ``run_dir`` (and their evaluation cache through ``eval_dir``): both must name the same folders."""
    from immiscible.experiments import (ablation_train, class_conditional, consistency, finetuning,
                                        unconditional)
    experiments = {"unconditional": unconditional.setup(params=str(ROOT / "params.yaml")),
                   "consistency": consistency.setup(params=str(ROOT / "params.yaml")),
                   "class_conditional": class_conditional.setup(params=str(ROOT / "params.yaml")),
                   "finetuning": finetuning.setup(params=str(ROOT / "params.yaml")),
                   "ablation": ablation_train.setup(params=str(ROOT / "params.yaml"))}
    checked = 0
    for name, stage in stages.items():
        group, _, item = name.partition("@")
        exp = experiments.get(group.removeprefix("train_")) if group.startswith("train_") else None
        if exp is None:
            continue
        run, _, seed = item.rpartition("-")
        outs = {Path(o.def_path) for o in stage.outs}
        assert exp.run_dir(run, int(seed)) in outs, f"{name}: writes {outs}, the code reads {exp.run_dir(run, int(seed))}"
        checked += 1
    assert checked >= 40
    for group in ("unconditional", "consistency", "class_conditional", "finetuning"):
        outs = {Path(o.def_path) for o in stages[f"evaluate_{group}"].outs}
        assert Path(experiments[group].eval_dir) in outs, group
