"""Writes the source notebooks (no outputs) from the cell lists below: `python tools/make_notebooks.py`."""
import nbformat as nbf

META = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}}


def notebook(path, cells):
    nb = nbf.v4.new_notebook(metadata=META)
    for kind, src in cells:
        if kind == "md":
            nb.cells.append(nbf.v4.new_markdown_cell(src.strip()))
        else:
            cell = nbf.v4.new_code_cell(src.strip())
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i}"
    nbf.write(nb, path)


notebook("notebooks/distance_reduction.ipynb", [
    ("md", """
# The assignment reduces the image-noise distance by about 2% (slides: performance table, second row)

Immiscible Diffusion pairs each image with a nearby noise by a linear assignment inside the batch. The slides
report the change of the average image-noise L2 distance against the random pairing:
-1.93% / -2.16% / -2.32% / -2.44% at batch sizes 128 / 256 / 512 / 1024, without saying what data it was measured on.
This notebook measures it on images scaled to [-1, 1] (what the diffusion model sees) and on the other candidate
representations in `immiscible.distance_reduction.REPRESENTATIONS`, and says which one reproduces the paper's row.
"""),
    ("params", """
dataset = "cifar10"          # a prepared dataset name, or the path of an ImageFolder directory / .tar.gz
data_dir = "data"
batch_sizes = [128, 256, 512, 1024]
num_batches = 20
seed = 0
method = "exact"
representations = ["pixels", "pixels_01", "pixels_standardized", "latent_shaped_gaussian"]
output_dir = "results"
"""),
    ("code", """
from pathlib import Path
import pandas as pd
from immiscible.data import load_dataset
from immiscible.io import atomic_write_text
from immiscible.distance_reduction import measure_distance_reduction, plot_distance_reduction, PAPER_DELTA_PCT

out = Path(output_dir)
(out / "tables").mkdir(parents=True, exist_ok=True)
(out / "figures").mkdir(parents=True, exist_ok=True)
ds = load_dataset(dataset, "train", data_dir)
print(f"{dataset}: {len(ds)} training images of shape {ds.shape}")
"""),
    ("md", "## Measure: random pairing vs assigned pairing, per batch size and representation"),
    ("code", """
df = pd.concat([measure_distance_reduction(ds, batch_sizes, num_batches, seed, rep, method, dataset_name=dataset)
                for rep in representations], ignore_index=True)
atomic_write_text(out / "tables" / "distance_reduction.csv", df.to_csv(index=False))
df[["representation", "batch_size", "dim", "mean_distance_random", "mean_distance_assigned",
    "delta_mean_distance_pct", "ci95_pct", "paper_delta_pct"]].round(3)
"""),
    ("code", """
fig = plot_distance_reduction(df, out / "figures" / "distance_reduction.png")
"""),
    ("md", "## Which representation reproduces the paper's row?"),
    ("code", """
table = df.pivot(index="representation", columns="batch_size", values="delta_mean_distance_pct")
paper = pd.Series(PAPER_DELTA_PCT, name="paper")
shared = [b for b in table.columns if b in PAPER_DELTA_PCT]
if shared:
    table["max_abs_gap_to_paper_pts"] = (table[shared] - paper[shared]).abs().max(axis=1)
    best = table["max_abs_gap_to_paper_pts"].idxmin()
    print(f"Closest to the paper: {best} (largest gap {table.loc[best, 'max_abs_gap_to_paper_pts']:.2f} points)")
    for rep, gap in table["max_abs_gap_to_paper_pts"].items():
        verdict = "reproduces (within 0.15 points)" if gap <= 0.15 else "does not reproduce"
        print(f"  {rep:24s} largest gap {gap:5.2f} points -> {verdict}")
table.round(2)
"""),
])

notebook("notebooks/assignment_timing.ipynb", [
    ("md", """
# The assignment is cheap (slides: performance table, first row)

The slides report 5.4 / 6.7 / 8.8 / 22.8 ms for the assignment at batch sizes 128 / 256 / 512 / 1024 on an A6000
machine (6.7 ms at 256 in the summary). This notebook times the distance matrix and the solve separately for each
method (`immiscible.timing`), records the hardware, fits how the time grows with B, and shows the achieved distance
reduction next to the time: a fast method that loses the reduction is worthless.
"""),
    ("params", """
batch_sizes = [128, 256, 512, 1024, 2048, 4096]
methods = ["exact", "exact_lap", "exact_scipy", "quantized", "greedy", "knn"]
dim = 3072                 # flattened sample size for synthetic data (used when dataset is None)
dataset = "cifar10"        # images to pair with noise (their dim overrides `dim`); None: uniform [-1, 1] vectors
data_dir = "data"
device = "cpu"             # "cuda" on a GPU machine
dtype = "float32"          # float16 / bfloat16: precision of images and noise (the distance GEMM runs in it on CUDA)
repeats = 5                # batches timed per point, each a different one (the solve time depends on the batch)
max_seconds = 20.0         # stop timing more batches of one point after this long
knn_k = 64
seed = 0
output_dir = "results"
table_name = "assignment_timing.csv"
"""),
    ("md", "## Median time per method and batch size (over `repeats` batches; every method sees the same batches)"),
    ("code", """
from immiscible.timing import growth_exponents, recommend_methods, run_group, solve_speedup

group = dict(batch_sizes=batch_sizes, methods=methods, dim=dim, dataset=dataset, device=device, dtype=dtype,
             repeats=repeats, max_seconds=max_seconds, knn_k=knn_k, seed=seed)
df = run_group(group, data_dir, output_dir, table_name, echo=False)   # writes the table and the figure (below)
print("hardware:", df.hardware.iloc[0])
df.pivot(index="batch_size", columns="method", values="total_ms").round(1)
"""),
    ("md", "## Distance vs solve, speed-up over the plain scipy baseline, and growth with B"),
    ("code", """
show = df[["method", "batch_size", "distance_ms", "assign_ms", "total_ms", "delta_mean_distance_pct", "paper_total_ms"]]
if "exact_scipy" in methods and "exact" in methods:
    print("exact solve speed-up over scipy on the raw L2 matrix (same optimum):")
    print(solve_speedup(df).round(1).to_string())
print(growth_exponents(df).round(2).to_string(index=False))
show.round(2)
"""),
    ("md", """
## Which method at which batch size

The fastest permutation method that keeps at least 95% of the exact distance reduction (KNN is not a permutation:
it shifts the noise marginal toward the data, so its reduction is not comparable and it is listed in the tables
above only for its time).
"""),
    ("code", """
recommend_methods(df).round(2)
"""),
])
