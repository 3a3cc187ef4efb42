"""The GPU check's plumbing, on the CPU: the timing CLI works without the notebook stack (a CUDA PyTorch image has
no papermill, clean-fid or DVC), and tools/device_check.sh runs end to end in its DRY_RUN mode."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("papermill", "nbformat", "nbclient", "ipykernel", "jupyter_client", "cleanfid", "dvc")

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('not installed on the GPU image: ' + name)
sys.meta_path.insert(0, Block())
import immiscible.experiments.timing, immiscible.experiments.bench
immiscible.experiments.timing.main({argv!r})
"""


def test_timing_cli_needs_no_notebook_stack(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"t": {"batch_sizes": [16, 32], "methods": ["exact", "exact_scipy", "greedy",
                                            "knn"], "dim": 48, "device": "cpu", "repeats": 1, "max_seconds": 1,
                                            "knn_k": 4, "seed": 0, "dataset": None, "table_name": "t.csv"}}))
    argv = ["--group", "t", "--params", str(params), "--output-dir", str(tmp_path / "out")]
    r = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=BLOCKED, argv=argv)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "out" / "tables" / "t.csv")
    assert set(df.method) == {"exact", "exact_scipy", "greedy", "knn"} and set(df.batch_size) == {16, 32}
    assert (tmp_path / "out" / "figures" / "t.png").stat().st_size > 0
    assert "speed-up over scipy" in r.stdout and "recommended" in r.stdout


def test_timing_cli_rejects_an_unknown_group(tmp_path):
    from immiscible.experiments.timing import main
    with pytest.raises(ValueError, match="no group 'nope'"):
        main(["--group", "nope", "--params", str(ROOT / "params.yaml")])


def test_timing_group_without_a_setting_names_it(tmp_path):
    """params.yaml is the timing's only source of settings: a group without knn_k is refused, not defaulted."""
    from immiscible.experiments.timing import GROUP_KEYS, run_group
    group = {k: v for k, v in dict(batch_sizes=[16], methods=["knn"], dim=48, device="cpu", repeats=1,
                                   max_seconds=1, knn_k=4, seed=0).items() if k != "knn_k"}
    assert set(group) | {"knn_k"} == set(GROUP_KEYS)
    with pytest.raises(ValueError, match=r"lacks \['knn_k'\]; set them in params.yaml"):
        run_group(group, output_dir=str(tmp_path), echo=False)
    assert not (tmp_path / "tables").exists()


@pytest.mark.slow
def test_device_check_dry_run_writes_its_results(device_check_dry_run):
    out, r = device_check_dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    timing = pd.read_csv(out / "tables" / "assignment_timing_cuda.csv")
    assert set(timing.batch_size) == {32, 64}
    bench = pd.read_csv(out / "assignment_overhead_cuda.csv")
    assert set(bench.method) == {"vanilla", "exact"} and (bench.seconds_per_step > 0).all()
    step_time = pd.read_csv(out / "consistency_step_time.csv")
    assert set(step_time.objective) == {"eps", "consistency"} and (step_time.seconds_per_step > 0).all()
    throughput = pd.read_csv(out / "runs_throughput_cuda.csv")
    assert list(throughput["mode"]) == ["processes", "single", "side_by_side"] and (throughput.images_per_s > 0).all()
    study = pd.read_csv(out / "gpu" / "tables" / "unconditional_fid.csv")
    assert set(study.method) == {"vanilla", "exact", "knn"} and len(study) == 18  # 9 runs x 2 snapshots
    log = (out / "device_check.log").read_text()
    assert "== timing" in log and "== bench" in log and "== consistency" in log and "FAILED" not in log
    assert "== throughput" in log and "== gpu_quick" in log


def test_timing_reductions_are_reproducible():
    """Times vary from run to run; the achieved reductions (knn included: its candidates are seeded) do not."""
    from immiscible.experiments.timing import time_assignment
    runs = [time_assignment(["exact", "greedy", "knn"], [16, 32], dim=48, repeats=1, knn_k=4, seed=3)
            for _ in range(2)]
    assert runs[0].delta_mean_distance_pct.tolist() == runs[1].delta_mean_distance_pct.tolist()
    assert (runs[0].delta_mean_distance_pct < 0).all()


def test_timing_skips_the_cuda_only_method_on_the_cpu(capsys):
    from immiscible.experiments.timing import time_assignment
    df = time_assignment(["exact_auction_graphs", "greedy"], [16], dim=48, repeats=1)
    assert list(df.method) == ["greedy"] and "exact_auction_graphs" in capsys.readouterr().out
