"""Statistics users can quote: paired differences by seed and steps-to-target with censoring.

Runs of two methods with the same seed share initial weights, data order and noise draws; they differ only in the
pairing. They are compared in pairs:

- ``paired_differences``: per evaluated step, the difference method - baseline of a metric over the seeds both ran,
  its mean, a paired-t 95% interval (needs >= 2 pairs) and how many seeds favour the method (lower is better).
- ``efficiency_by_seed`` / ``efficiency_summary``: the paper's framing with the rule fixed before any run: the
  target is the baseline's OWN final value (per seed); the ratio is the steps the baseline needs to reach it over
  the steps the method needs. A method that never reaches the target within the run is censored: its steps are
  only known to exceed the last evaluated step, so its ratio is only known to be at most steps_base / last_step.
  Censored runs are kept and counted, never dropped.
- the interval of the median per-seed ratio is distribution-free (order statistics of n seeds), with its exact
  coverage stated (93.8% for 5 seeds, 75% for 3); censored ratios enter it as 0 for the lower end and as their
  bound for the upper end, so the interval stays conservative.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval of the mean of ``values`` (NaN bounds for fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def paired_differences(table: pd.DataFrame, values=("fd", "kid"), baseline: str = "vanilla",
                       level: float = 0.95) -> pd.DataFrame:
    """Per (method, step): the paired difference method - baseline of each of ``values`` over the seeds both
    methods ran (columns ``<value>_diff_mean``, ``_ci_low``, ``_ci_high``, ``<value>_n_better``: seeds where the
    method is lower); ``n_better`` is the count for the first value. ``table``: one row per (method, seed, step)."""
    rows = []
    base = table[table.method == baseline].set_index(["seed", "step"])
    for method in [m for m in dict.fromkeys(table.method) if m != baseline]:
        other = table[table.method == method].set_index(["seed", "step"])
        common = base.index.intersection(other.index)
        for step in sorted({s for _, s in common}):
            keys = [k for k in common if k[1] == step]
            row = {"method": method, "baseline": baseline, "step": int(step), "n_pairs": len(keys)}
            for i, value in enumerate(values):
                d = other.loc[keys, value].to_numpy(float) - base.loc[keys, value].to_numpy(float)
                mean, lo, hi = t_interval(d, level)
                row.update({f"{value}_diff_mean": mean, f"{value}_diff_ci_low": lo, f"{value}_diff_ci_high": hi,
                            f"{value}_n_better": int((d < 0).sum())})
                if i == 0:
                    row["n_better"] = int((d < 0).sum())
            row.update({"ci_level": level, "interval": "paired t over seeds"})
            rows.append(row)
    return pd.DataFrame(rows)


def steps_to_target(steps, values, target: float) -> tuple[float, bool]:
    """(step, censored): the first training step at which the curve reaches ``target`` (<=), linearly
    interpolated between evaluated steps; (last step, True) when it never does."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(steps)
    steps, values = steps[order], values[order]
    if len(values) == 0:
        raise ValueError("an empty curve has no steps to target")
    if values[0] <= target:
        return float(steps[0]), False
    for i in range(1, len(values)):
        if values[i] <= target:
            frac = (values[i - 1] - target) / (values[i - 1] - values[i])
            return float(steps[i - 1] + frac * (steps[i] - steps[i - 1])), False
    return float(steps[-1]), True


def efficiency_by_seed(steps, base_curves: dict, method_curves: dict) -> pd.DataFrame:
    """One row per seed both curves exist for: the target (the baseline's own final value), the steps each run
    needs to reach it, censoring, and the ratio steps_base / steps_method (for a censored run the column ``ratio``
    holds its upper bound steps_base / last_step and ``censored`` is True)."""
    rows = []
    for seed in sorted(set(base_curves) & set(method_curves)):
        base, other = np.asarray(base_curves[seed], float), np.asarray(method_curves[seed], float)
        target = float(base[np.argmax(steps)])
        s_base, _ = steps_to_target(steps, base, target)
        s_method, censored = steps_to_target(steps, other, target)
        rows.append({"seed": seed, "target": target, "steps_baseline": s_base, "steps_method": s_method,
                     "censored": censored, "ratio": s_base / s_method,
                     "ratio_kind": "upper bound (never reached)" if censored else "measured"})
    return pd.DataFrame(rows)


def median_interval(n: int, level: float = 0.95) -> tuple[int, int, float]:
    """(j, k, coverage): the order statistics x_(j) <= median <= x_(k) (1-based) of n values whose interval has
    the smallest exact coverage >= ``level`` (or the widest, (1, n), when n is too small to reach it)."""
    best = (1, n, 1 - 2 * stats.binom.cdf(0, n, 0.5))
    for j in range(1, n // 2 + 1):
        coverage = 1 - 2 * stats.binom.cdf(j - 1, n, 0.5)
        if coverage >= level:
            best = (j, n + 1 - j, coverage)
    return best


def efficiency_summary(per_seed: pd.DataFrame, steps, base_mean, method_mean, level: float = 0.95) -> dict:
    """Median per-seed ratio with a distribution-free interval (censored ratios count as 0 for the lower end and as
    their bound for the upper end and the median), counts of reached/censored seeds, and the ratio of the seed-mean
    curves (the paper's single number) with its own censoring flag."""
    n = len(per_seed)
    ratios = per_seed.ratio.to_numpy(float)
    censored = per_seed.censored.to_numpy(bool)
    j, k, coverage = median_interval(n, level) if n else (0, 0, float("nan"))
    low = np.sort(np.where(censored, 0.0, ratios))[j - 1] if n else float("nan")
    high = np.sort(ratios)[k - 1] if n else float("nan")
    target = float(np.asarray(base_mean, float)[np.argmax(steps)])
    s_base, _ = steps_to_target(steps, base_mean, target)
    s_method, mean_censored = steps_to_target(steps, method_mean, target)
    return {"n_seeds": n, "n_reached": int((~censored).sum()), "n_censored": int(censored.sum()),
            "ratio_median": float(np.median(ratios)) if n else float("nan"),
            "ratio_median_is_bound": bool(censored.any()),
            "ratio_ci_low": float(low), "ratio_ci_high": float(high), "ci_coverage": float(coverage),
            "interval": f"order statistics x({j}), x({k}) of {n} per-seed ratios (distribution-free)",
            "target_mean_curve": target, "steps_baseline_mean_curve": s_base, "steps_method_mean_curve": s_method,
            "ratio_mean_curve": s_base / s_method, "mean_curve_censored": mean_censored}
