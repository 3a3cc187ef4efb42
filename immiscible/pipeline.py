"""Pipeline glue: run a paper notebook with its parameters from params.yaml (what each DVC notebook stage calls).

    python -m immiscible.pipeline distance_reduction            # params.yaml's `distance_reduction` group
    python -m immiscible.pipeline assignment_timing --group assignment_timing_cuda   # another group, same notebook
    python -m immiscible.experiments.timing --group assignment_timing_cuda                       # the same without Jupyter

The notebook ``notebooks/<name>.ipynb`` is executed by papermill into ``results/notebooks/<group>.ipynb`` with the
group's values that it declares as parameters (plus ``data_dir`` and ``output_dir``); its tables and figures go to
``results/``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_params(path: str | Path = "params.yaml") -> dict:
    """The whole params.yaml as a dict (groups are validated by the code that uses them)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run from the project root or pass --params")
    return yaml.safe_load(path.read_text()) or {}


def notebook_parameters(params: dict, group: str) -> dict:
    if group not in params:
        raise ValueError(f"params.yaml has no group {group!r}; groups: {sorted(params)}")
    return dict(params[group])


def run_notebook(name: str, parameters: dict, output_dir: str | Path = "results", data_dir: str | Path = "data",
                 notebook_dir: str | Path | None = None, run_name: str | None = None) -> Path:
    """Execute notebooks/<name>.ipynb with ``parameters`` into results/notebooks/<run_name or name>.ipynb.

    Only the parameters the notebook declares are passed (a params.yaml group may hold more, e.g. profiles);
    paths are recorded relative to the working directory, and cell output is streamed to the console (long cells
    print a line per unit of work)."""
    import papermill as pm

    src = Path(notebook_dir or ROOT / "notebooks") / f"{name}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"no notebook {src}")
    src = _relative(src)
    out = Path(output_dir) / "notebooks" / f"{run_name or name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    declared = pm.inspect_notebook(str(src))
    params = {k: v for k, v in {"data_dir": str(data_dir), "output_dir": str(output_dir), **parameters}.items()
              if k in declared}
    pm.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3", log_output=True,
                        progress_bar=False)
    return out


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (executed notebooks record it)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def main(argv=None) -> None:
    import logging
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # papermill streams cell output through it
    p = argparse.ArgumentParser(description="Run one paper notebook with its params.yaml group.")
    p.add_argument("notebook", help="notebook name, e.g. distance_reduction (also the params.yaml group)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--group", default=None, help="params.yaml group (default: the notebook's name)")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--data-dir", default="data")
    a = p.parse_args(argv)
    group = a.group or a.notebook
    parameters = notebook_parameters(load_params(a.params), group)
    print(run_notebook(a.notebook, parameters, a.output_dir, a.data_dir, run_name=group))


if __name__ == "__main__":
    main()
