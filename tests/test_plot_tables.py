"""The wide tables behind `dvc plots`: one column per method holding the mean over seeds, and every line dvc.yaml
draws exists in the committed tables."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from immiscible.experiments.plot_tables import wide, write_plot_tables

ROOT = Path(__file__).resolve().parents[1]


def test_each_column_is_one_method_mean_over_seeds():
    fid = pd.DataFrame({"method": ["exact", "exact", "vanilla", "vanilla", "exact", "vanilla"],
                        "seed": [0, 1, 0, 1, 0, 0], "step": [10, 10, 10, 10, 20, 20],
                        "sample_steps": [1, 1, 1, 1, 2, 2], "fd": [3.0, 5.0, 1.0, 2.0, 7.0, 9.0]})
    out = wide(fid, "step", "{method}", "fd")
    assert list(out.columns) == ["step", "vanilla", "exact"]          # the baseline first
    assert out.set_index("step").loc[10].tolist() == [1.5, 4.0] and out.set_index("step").loc[20].tolist() == [9.0, 7.0]
    per_sampler = wide(fid, "step", "{method} {sample_steps}-step", "fd").set_index("step")
    assert per_sampler.loc[10, "exact 1-step"] == 4.0 and per_sampler.loc[20, "vanilla 2-step"] == 9.0
    assert pd.isna(per_sampler.loc[20, "exact 1-step"])                # no row: no value, nothing invented
    with pytest.raises(ValueError, match=r"no column\(s\) \['kid'\]"):
        wide(fid, "step", "{method}", "kid")


def test_written_tables_are_the_result_tables_pivoted(tmp_path):
    (tmp_path / "tables").mkdir()
    src = ROOT / "results" / "tables" / "unconditional_fid.csv"
    (tmp_path / "tables" / "unconditional_fid.csv").write_text(src.read_text())
    written = write_plot_tables(yaml.safe_load((ROOT / "params.yaml").read_text())["plot_tables"]["tables"], tmp_path)
    assert [p.name for p in written] == ["unconditional_fd.csv"]       # sources that do not exist are skipped
    got = pd.read_csv(written[0]).set_index("step")
    fid = pd.read_csv(src)
    expected = fid[fid.method == "exact"].groupby("step").fd.mean()
    assert got["exact"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-5)


def test_every_line_dvc_plots_draws_is_a_column_of_the_committed_tables():
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert len(plots) == len(yaml.safe_load((ROOT / "params.yaml").read_text())["plot_tables"]["tables"])
    for plot in plots:
        (title, spec), = plot.items()
        for path, columns in spec["y"].items():
            table = pd.read_csv(ROOT / path)
            assert spec["x"] in table.columns, title
            assert set(columns) == set(table.columns) - {spec["x"]}, f"{title}: draws {columns}, has {list(table)}"
