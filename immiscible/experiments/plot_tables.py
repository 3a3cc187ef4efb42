"""Wide tables for ``dvc plots``: one column per method (or per method and sampler), so that ``dvc plots show`` and
``dvc plots diff`` draw one line per method instead of one line through every run.

    python -m immiscible.experiments.plot_tables      # results/plots/<name>.csv from results/tables (DVC stage)

Each table (params.yaml ``plot_tables.tables``) is a pivot of a result table: the mean over seeds of one metric,
indexed by training step (or batch size). Nothing is computed that the result tables do not hold.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from immiscible.config import group_values
from immiscible.io import atomic_write_text

def wide(table: pd.DataFrame, index: str, line: str, value: str) -> pd.DataFrame:
    """The mean of ``value`` per ``index`` (rows) and per line (columns named by the format string ``line`` from the
    rows' columns, e.g. "{method} {sample_steps}-step"); vanilla's lines first, the others in name order."""
    keys = re.findall(r"{(\w+)}", line)
    missing = [c for c in (index, *keys, value) if c not in table.columns]
    if missing:
        raise ValueError(f"the table has no column(s) {missing}; it has {list(table.columns)}")
    names = table[keys].astype(str).apply(lambda row: line.format(**row), axis=1)
    out = table.assign(line=names).pivot_table(index=index, columns="line", values=value, aggfunc="mean")
    out = out[sorted(out.columns, key=lambda c: (not c.startswith("vanilla"), c))]
    out.columns.name = None
    return out.reset_index()


def write_plot_tables(tables: dict, results: str | Path = "results") -> list[Path]:
    """Each of ``tables`` ({name: {source, index, line, value}}: params.yaml's ``plot_tables.tables``) whose source
    results/tables/<source>.csv exists, as results/plots/<name>.csv; returns the files written."""
    results = Path(results)
    written = []
    for name, spec in tables.items():
        source, index, line, value = (spec[k] for k in ("source", "index", "line", "value"))
        path = results / "tables" / f"{source}.csv"
        if not path.exists():
            continue
        out = results / "plots" / f"{name}.csv"
        atomic_write_text(out, wide(pd.read_csv(path), index, line, value).to_csv(index=False, float_format="%.6g"))
        written.append(out)
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Wide per-method tables for `dvc plots` from the result tables.")
    p.add_argument("--results", default="results")
    p.add_argument("--params", default="params.yaml")
    a = p.parse_args(argv)
    for path in write_plot_tables(group_values(a.params, "plot_tables", ("tables",))["tables"], a.results):
        print(path)


if __name__ == "__main__":
    main()
