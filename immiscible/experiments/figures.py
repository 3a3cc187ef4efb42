"""Figures of the training experiments, drawn from their result tables and saved samples only (no training, no
sampling): metric vs steps per seed with the seed mean and its interval, the paired difference with its interval,
sample grids and the last-step predictions. Saved as PNG under results/figures and returned for the notebooks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from immiscible.io import atomic_savefig, atomic_write


def _save(fig, output_dir: str | Path, name: str, dpi: int = 120):
    path = Path(output_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path, dpi=dpi)
    return fig


def plot_curves(fid: pd.DataFrame, output_dir: str | Path, name: str, value: str = "fd", title: str = ""):
    """``value`` vs training step: thin lines per seed, the seed mean and a 95% t-interval band per method."""
    import matplotlib.pyplot as plt
    from scipy import stats
    fig, ax = plt.subplots(figsize=(6, 4))
    methods = sorted(dict.fromkeys(fid.method), key=lambda m: m != "vanilla")  # the baseline first: colour C0
    for i, method in enumerate(methods):
        pivot = fid[fid.method == method].pivot(index="step", columns="seed", values=value)
        color = f"C{i}"
        for s in pivot.columns:
            ax.plot(pivot.index, pivot[s], color=color, alpha=0.25, lw=0.8)
        mean, n = pivot.mean(1), pivot.shape[1]
        ax.plot(pivot.index, mean, color=color, lw=2, label=f"{method} (n={n} seeds)")
        if n > 1:
            half = stats.t.ppf(0.975, n - 1) * pivot.std(1, ddof=1) / np.sqrt(n)
            ax.fill_between(pivot.index, mean - half, mean + half, color=color, alpha=0.2)
    ax.set_xlabel("training step")
    metric = fid.metric.iloc[0]
    ax.set_ylabel(("FID" if metric == "FID" else "proxy FD") if value == "fd" else value.upper())
    ax.set_title(title or f"{metric}\n{value.upper()} vs steps ({int(fid.num_samples.iloc[0])} samples per point, "
                          "EMA; band: 95% t-interval of the seed mean)", fontsize=8)
    ax.legend()
    fig.tight_layout()
    return _save(fig, output_dir, name)


def plot_paired(paired: pd.DataFrame, output_dir: str | Path, name: str, value: str = "fd"):
    """The paired difference method - baseline per step with its interval; below zero the method is better."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (method, sub) in enumerate(paired.groupby("method", sort=False)):
        ax.errorbar(sub.step, sub[f"{value}_diff_mean"],
                    yerr=[sub[f"{value}_diff_mean"] - sub[f"{value}_diff_ci_low"],
                          sub[f"{value}_diff_ci_high"] - sub[f"{value}_diff_mean"]],
                    color=f"C{i + 1}", marker="o", capsize=3,
                    label=f"{method} - {sub.baseline.iloc[0]} ({int(sub.n_pairs.max())} seed pairs, 95% paired t)")
        for _, r in sub.iterrows():
            ax.annotate(f"{int(r[f'{value}_n_better'])}/{int(r.n_pairs)}", (r.step, r[f"{value}_diff_ci_high"]),
                        textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"paired {value.upper()} difference")
    ax.set_title("below 0: the method is better; labels: seeds where it is better", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, output_dir, name)


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2, scale: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (H', W', C) grid image, ``nrow`` images per row."""
    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = img
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_grid(images: np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save uint8 (N, H, W, C) images as one PNG grid."""
    from PIL import Image
    grid = make_grid(images, nrow, scale=scale)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    return atomic_write(path, image.save)


def _show(ax, grid: np.ndarray, title: str) -> None:
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def sample_grids(samples: dict[str, np.ndarray], output_dir: str | Path, name: str, nrow: int | None = None):
    """One panel per entry of ``samples`` ({title: uint8 (N, H, W, C)}), side by side; ``nrow`` images per row
    (default: a square grid)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4.3))
    for ax, (title, images) in zip(np.atleast_1d(axes), samples.items()):
        _show(ax, make_grid(images, nrow), title)
    fig.tight_layout()
    return _save(fig, output_dir, name)


def prediction_rows(panels: dict[str, np.ndarray], output_dir: str | Path, name: str):
    """One row of images per entry of ``panels`` ({title: uint8 (N, H, W, C)}), e.g. the last-step predictions."""
    import matplotlib.pyplot as plt
    n = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(n * 0.9, 1.1 * len(panels)))
    for ax, (title, images) in zip(np.atleast_1d(axes), panels.items()):
        _show(ax, make_grid(images, nrow=len(images)), title)
    fig.tight_layout()
    return _save(fig, output_dir, name, dpi=150)
