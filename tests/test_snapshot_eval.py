"""The evaluation loop every experiment shares: each point is measured once, its row is cached under its name,
a second evaluation reads the cache, and points of the same name (identical weights scored the same way) are
measured once."""
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from immiscible.experiments.snapshot_eval import evaluate_snapshots


def _exp(tmp_path: Path):
    return SimpleNamespace(eval_dir=tmp_path / "eval", eval=SimpleNamespace(progress=False),
                           table=lambda name: tmp_path / f"x_{name}.csv")


def test_each_point_is_measured_once_cached_by_name_and_read_back(tmp_path):
    exp = _exp(tmp_path)
    points = [("exact", 1, 4, None, True), ("vanilla", 0, 2, None, False), ("vanilla", 0, 4, None, True),
              ("exact", 1, 0, None, False), ("vanilla", 1, 0, None, False)]  # the two step-0 points: one name
    measured = []

    def name_of(p):
        return "start" if p[2] == 0 else f"{p[0]}{p[1]}-{p[2]}"

    def measure(p):
        measured.append(p[:3])
        return {"method": p[0], "seed": p[1], "step": p[2], "fd": 10.0 - p[2] + p[1] / 10}

    table = evaluate_snapshots(exp, points, name_of, measure)
    assert len(measured) == 4 and ("vanilla", 1, 0) not in measured  # the second step-0 point reuses the first
    assert list(zip(table.method, table.seed, table.step)) == sorted(p[:3] for p in points)
    reused = table[(table.method == "vanilla") & (table.seed == 1)].iloc[0]
    assert reused.step == 0 and reused.fd == 10.1  # the first step-0 row, with this point's method and seed
    assert (exp.eval_dir / "exact-1" / "step0000004-exact1-4.json").exists()
    assert (exp.eval_dir / "vanilla-1" / "step0000000-start.json").exists()
    pd.testing.assert_frame_equal(pd.read_csv(exp.table("fid")), table)

    measured.clear()
    again = evaluate_snapshots(exp, points, name_of, measure)
    assert measured == [] and again.equals(table)  # every row from the cache
    (exp.eval_dir / "exact-1" / "step0000004-exact1-4.json").unlink()
    evaluate_snapshots(exp, points, name_of, measure)
    assert measured == [("exact", 1, 4)]  # only the point whose cache is gone
