"""notebooks/unconditional.ipynb end to end on the smoke profile, on a tiny generated ImageFolder, in tmp_path."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from immiscible import unconditional as U

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "unconditional.ipynb"


def make_image_folder(root: Path, per_class: int = 40, size: int = 32) -> Path:
    """Two classes of random 32x32 PNGs (dark / bright) with train/ and test/ splits."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 4)):
        for cls, base in (("dark", 60), ("bright", 180)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(rng.normal(base, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def test_notebook_is_committed_without_outputs_and_has_parameters():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3" and "language_info" in nb["metadata"]
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    source = "".join("".join(c["source"]) for c in nb["cells"])
    for name in ("profile", "dataset", "methods", "seeds", "objective", "steps", "batch_size", "data_dir",
                 "output_dir", "checkpoint_dir"):
        assert f"{name} =" in source


def test_unknown_profile_and_method_name_allowed_values(tmp_path):
    with pytest.raises(ValueError, match=r"'laptop'.*smoke.*cpu.*paper"):
        U.setup("laptop", params=None)
    with pytest.raises(ValueError, match=r"'immiscible'.*vanilla.*exact"):
        U.setup("smoke", methods=["vanilla", "immiscible"], params=None)


@pytest.mark.slow
def test_notebook_runs_on_smoke_profile(tmp_path):
    import papermill as pm
    data = make_image_folder(tmp_path / "toy")
    out, ckpt = tmp_path / "results", tmp_path / "checkpoints"
    parameters = dict(profile="smoke", dataset=str(data), data_dir=str(tmp_path / "data"), params=None,
                      checkpoint_dir=str(ckpt / "unconditional"), classifier_dir=str(ckpt / "classifier"),
                      output_dir=str(out), seeds=[0, 1])
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "executed.ipynb"), parameters=parameters,
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    fid = pd.read_csv(out / "tables" / "unconditional_fid.csv")
    assert {"method", "seed", "step", "extractor", "num_samples", "fd", "kid", "checkpoint"} <= set(fid.columns)
    assert set(fid.method) == {"vanilla", "exact"} and set(fid.seed) == {0, 1} and set(fid.step) == {3, 6}
    assert (fid.extractor == "proxy").all() and not fid.metric.str.startswith("FID").any()
    eff = pd.read_csv(out / "tables" / "unconditional_efficiency.csv")
    assert {"target_fd", "steps_vanilla", "steps_method", "ratio", "ratio_ci_low", "ratio_ci_high"} <= set(eff.columns)
    last = pd.read_csv(out / "tables" / "unconditional_last_step.csv")
    assert {"vanilla", "exact"} <= set(last.method)
    assert sorted(set(last[last.method == "exact"].t)) == [599.0, 799.0, 899.0, 999.0]  # T-1 and earlier times
    assert set(last[last.method == "exact"].noise) == {"assigned", "random"}
    for name in ("fd_curves", "kid_curves", "samples", "last_step"):
        assert (out / "figures" / f"unconditional_{name}.png").stat().st_size > 0
    before = (out / "tables" / "unconditional_fid.csv").stat().st_mtime_ns
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "executed2.ipynb"), parameters=parameters,
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    assert (out / "tables" / "unconditional_fid.csv").stat().st_mtime_ns == before  # cached: nothing rewritten


def test_params_yaml_overrides_profile_defaults(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("unconditional:\n  seeds: [4, 5]\n  feature_extractor: {epochs: 7}\n"
                      "  profiles:\n    cpu:\n      train: {steps: 123}\n      eval: {num_samples: 77}\n")
    exp = U.setup("cpu", params=str(params))
    assert exp.seeds == (4, 5) and exp.train.steps == 123 and exp.eval.num_samples == 77
    assert exp.classifier.epochs == 7 and exp.classifier.resolution == exp.train.resolution == 16
    assert exp.train.model == "small" and exp.methods == ("vanilla", "exact")
