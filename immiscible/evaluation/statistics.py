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
- ``paired_slope_vs_log_step``: the trend of the paired difference over training (verdicts by horizon): per seed,
  the least-squares slope of (method - baseline) against ln(step), then a t-interval of the mean slope over seeds.
  This is the two-stage (summary statistics) form of a random-slope mixed model: the pairing removes each seed's
  shared noise, and the spread of the per-seed slopes carries both the within-seed noise and the between-seed
  variation of the trend, with n_seeds - 1 degrees of freedom (honest for 3 seeds, where a mixed model's
  variance components could not be estimated). Every seed uses the same steps, so the design is balanced and the
  mean of the per-seed lines is the pooled least-squares line. ``trend_verdict`` and ``crossover_step`` turn it
  into words by the fixed rules stated there.
- ``paired_t_p_value`` / ``t_p_value_from_interval``: the two-sided p-value of the same paired t statistic the
  interval is built from (mean / (sd / sqrt(n)), n - 1 degrees of freedom); the second recovers it from a
  symmetric t-interval (mean, low, high) and n, as the report reads it from the paired tables.
- ``benjamini_hochberg``: q-values of a family of p-values by the Benjamini-Hochberg step-up procedure
  (Benjamini & Hochberg 1995): q_(i) = min over j >= i of p_(j) m / j; rejecting q < alpha controls the false
  discovery rate of the family at alpha.
- ``paired_sampling_sd`` / ``t_interval_with_sampling_floor``: the evaluation's own noise. A snapshot's FD is one
  draw of samples; the sd of the paired difference over repeated sample seeds (both methods drawn from the same
  initial noise per sample seed, as in the evaluation) is the sampling floor. With 3 training seeds the spread of the
  paired differences can by chance fall far below it, so the floored interval adds the floor's variance to the
  between-seed variance of the paired difference: se = sqrt((sd^2 + floor_sd^2) / n), t on n - 1 degrees of
  freedom. This is conservative (the between-seed sd already contains the sampling noise once, in expectation) and
  never narrower than the plain interval.
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


def paired_t_p_value(differences) -> float:
    """Two-sided p-value of the paired t-test of mean(differences) = 0 (NaN for fewer than 2 differences)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return float("nan")
    sd = d.std(ddof=1)
    if sd == 0:
        return 1.0 if d.mean() == 0 else 0.0
    return float(2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(len(d))), len(d) - 1))


def t_p_value_from_interval(mean: float, low: float, high: float, n: int, level: float = 0.95) -> float:
    """Two-sided p-value of mean = 0 from its symmetric t-interval [low, high] over n values: the standard error is
    (high - low) / (2 t_{(1+level)/2, n-1}), t = mean / se (NaN when the interval or n < 2 leaves it undefined)."""
    if n < 2 or not all(np.isfinite([mean, low, high])):
        return float("nan")
    se = (high - low) / (2 * stats.t.ppf((1 + level) / 2, n - 1))
    if se == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * stats.t.sf(abs(mean) / se, n - 1))


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values of one family of p-values (same order; NaN p-values stay NaN and do not count
    in the family size m): q_(i) = min_{j >= i} p_(j) m / j over the sorted p-values, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return q
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def sd_from_t_interval(low: float, high: float, n: int, level: float = 0.95) -> float:
    """The sd of the n values a symmetric t-interval [low, high] of their mean was built from."""
    return (high - low) / (2 * stats.t.ppf((1 + level) / 2, n - 1)) * math.sqrt(n)


def t_interval_with_sampling_floor(mean: float, sd: float, n: int, floor_sd: float,
                                   level: float = 0.95) -> tuple[float, float, float]:
    """(low, high, p) of the mean of n paired differences whose between-seed sd is ``sd``, with the sampling
    floor's variance added: se = sqrt((sd^2 + floor_sd^2) / n), t on n - 1 degrees of freedom, two-sided p of
    mean = 0 from the same t."""
    se = math.sqrt((sd ** 2 + floor_sd ** 2) / n)
    half = stats.t.ppf((1 + level) / 2, n - 1) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1)) if se > 0 else float(mean == 0)
    return mean - half, mean + half, p


def paired_sampling_sd(table: pd.DataFrame, method: str, baseline: str, value: str = "fd") -> float:
    """The sd of method - baseline over repeated sample seeds (paired by seed, step and sample_seed), pooled over
    the (seed, step) groups: sqrt(sum of squared deviations from each group's mean / sum of (group size - 1)); NaN
    when no group has 2 sample seeds. ``table``: one row per (method, seed, step, sample_seed)."""
    keys = ["seed", "step", "sample_seed"]
    wide = table[table.method.isin([method, baseline])].pivot_table(index=keys, columns="method", values=value)
    if method not in wide or baseline not in wide:
        return float("nan")
    d = (wide[method] - wide[baseline]).dropna()
    groups = d.groupby(level=["seed", "step"])
    dof = int((groups.size() - 1).clip(lower=0).sum())
    if dof == 0:
        return float("nan")
    return float(math.sqrt(float(((d - groups.transform("mean")) ** 2).sum()) / dof))


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


NOT_ENOUGH_POINTS = "not enough points"


def slope_vs_log_step(steps, values) -> tuple[float, float]:
    """(intercept a, slope b) of the least-squares line values = a + b ln(step); steps must be > 0."""
    x, y = np.log(np.asarray(steps, dtype=float)), np.asarray(values, dtype=float)
    b = float(np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2))
    return float(y.mean() - b * x.mean()), b


def paired_difference_curves(table: pd.DataFrame, method: str, baseline: str = "vanilla",
                             value: str = "fd") -> pd.DataFrame:
    """method - baseline of ``value`` per seed (rows) and step (columns), over the seeds both ran and the steps
    > 0 (ln(0) has no place on the line) that every such seed has; ``table``: one row per (method, seed, step)."""
    sub = table[table.method.isin([method, baseline])]
    duplicated = sub.duplicated(["method", "seed", "step"])
    if duplicated.any():
        raise ValueError(f"{int(duplicated.sum())} repeated (method, seed, step) rows of {method!r}/{baseline!r}: "
                         "split the table first (e.g. by sample_steps or arm)")
    wide = sub.set_index(["seed", "step", "method"])[value].unstack("method")
    if method not in wide or baseline not in wide:
        return pd.DataFrame()
    d = (wide[method] - wide[baseline]).dropna().unstack("step")
    d = d.loc[:, [s for s in d.columns if s > 0]]
    return d.dropna(axis=1).sort_index(axis=1)


def crossover_step(intercept: float, slope: float, first_step: float, last_step: float) -> float:
    """The step where the line a + b ln(step) crosses zero, or NaN when it does not within [first, last]: the
    measured horizon, never beyond it."""
    if slope == 0 or not np.isfinite(slope):
        return float("nan")
    step = math.exp(-intercept / slope)
    return step if first_step <= step <= last_step else float("nan")


def trend_verdict(slope_low: float, slope_high: float, gap_first: float, last_low: float, last_high: float,
                  crosses_within: bool) -> str:
    """The trend of a paired gap by fixed rules, from the slope interval, the fitted gap at the first step (its
    sign is the gap's starting side), the last step's paired interval and whether the fitted line crosses zero
    within the measured steps:
    - "not enough points": no slope interval (fewer than 2 steps or 2 seeds);
    - "flat": the slope interval contains 0;
    - "growing": the slope moves the gap away from zero (same sign as the starting gap, or any sign from a zero
      start);
    - "crossed zero": the slope moves it toward zero, the fitted line crosses zero within the measured steps and
      the last step's paired interval excludes zero on the other side (a supported sign change);
    - "shrinking": the slope moves it toward zero, without a supported sign change."""
    if not (np.isfinite(slope_low) and np.isfinite(slope_high)):
        return NOT_ENOUGH_POINTS
    if slope_low <= 0 <= slope_high:
        return "flat"
    slope_sign, start = (1.0 if slope_low > 0 else -1.0), float(np.sign(gap_first))
    if start == 0 or slope_sign == start:
        return "growing"
    other_side = last_low > 0 if start < 0 else last_high < 0
    return "crossed zero" if crosses_within and other_side else "shrinking"


def paired_slope_vs_log_step(table: pd.DataFrame, method: str, baseline: str = "vanilla", value: str = "fd",
                             level: float = 0.95) -> dict:
    """The trend of the paired difference method - baseline of ``value`` over training steps: the mean per-seed
    slope against ln(step) with its t-interval over seeds, the fitted gap at the first and last step, the last
    step's paired interval, the verdict (``trend_verdict``) and the crossover step (only for "crossed zero")."""
    d = paired_difference_curves(table, method, baseline, value)
    steps = np.asarray(d.columns, dtype=float)
    row = {"comparison": f"{method} - {baseline}", "steps": len(steps), "seeds": len(d),
           "first_step": int(steps.min()) if len(steps) else 0, "last_step": int(steps.max()) if len(steps) else 0}
    nan = float("nan")
    row.update(slope=nan, ci_low=nan, ci_high=nan, gap_first=nan, gap_last=nan, last_diff_mean=nan,
               last_diff_ci_low=nan, last_diff_ci_high=nan, trend=NOT_ENOUGH_POINTS, crossover_step=nan)
    if len(steps) < 2 or len(d) < 1:
        return row
    lines = np.array([slope_vs_log_step(steps, curve) for curve in d.to_numpy(float)])   # (seeds, 2): a, b
    intercept = float(lines[:, 0].mean())
    slope, low, high = (float(v) for v in t_interval(lines[:, 1], level))
    last_mean, last_low, last_high = (float(v) for v in t_interval(d.iloc[:, -1].to_numpy(float), level))
    crossing = crossover_step(intercept, slope, steps.min(), steps.max())
    trend = trend_verdict(low, high, intercept + slope * math.log(steps.min()), last_low, last_high,
                          np.isfinite(crossing))
    row.update(slope=slope, ci_low=low, ci_high=high, gap_first=intercept + slope * math.log(steps.min()),
               gap_last=intercept + slope * math.log(steps.max()), last_diff_mean=last_mean,
               last_diff_ci_low=last_low, last_diff_ci_high=last_high, trend=trend,
               crossover_step=crossing if trend == "crossed zero" else nan)
    return row
