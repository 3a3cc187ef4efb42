"""Paired differences, steps-to-target with censoring, the median interval and the trend of a paired gap over
training steps, on hand-made curves whose answer is known."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from immiscible.evaluation.statistics import (benjamini_hochberg, paired_sampling_sd, paired_t_p_value,
                                              sd_from_t_interval, t_interval_with_sampling_floor,
                                              t_p_value_from_interval,
                                              crossover_step, efficiency_by_seed, efficiency_summary, median_interval,
                                              paired_difference_curves, paired_differences, paired_slope_vs_log_step,
                                              slope_vs_log_step, steps_to_target, t_interval, trend_verdict)


def _table(values: dict) -> pd.DataFrame:
    """{(method, seed): [fd per step]} at steps 100, 200, 300 -> one row per (method, seed, step)."""
    return pd.DataFrame([{"method": m, "seed": s, "step": 100 * (i + 1), "fd": v, "kid": v / 100}
                         for (m, s), curve in values.items() for i, v in enumerate(curve)])


def test_paired_difference_uses_pairs_not_independent_arms():
    # seeds differ a lot from each other, but the method is better by exactly 1.0 in every pair at step 300
    base = {0: [30, 20, 10], 1: [40, 30, 20], 2: [50, 40, 30]}
    table = _table({**{("vanilla", s): c for s, c in base.items()},
                    **{("exact", s): [c[0] + 2, c[1], c[2] - 1.0] for s, c in base.items()}})
    out = paired_differences(table).set_index("step")
    last = out.loc[300]
    assert last.n_pairs == 3 and last.n_better == 3
    assert last.fd_diff_mean == pytest.approx(-1.0)
    # zero spread of the differences: the paired interval collapses to the point, while the arms' own spread is 10
    assert last.fd_diff_ci_low == pytest.approx(-1.0) and last.fd_diff_ci_high == pytest.approx(-1.0)
    assert out.loc[100].fd_diff_mean == pytest.approx(2.0) and out.loc[100].n_better == 0
    assert last.kid_diff_mean == pytest.approx(-0.01)


def test_paired_interval_equals_scipy_paired_t():
    rng = np.random.default_rng(1)
    a, d = rng.normal(10, 3, 5), rng.normal(-0.5, 0.4, 5)
    table = _table({**{("vanilla", s): [a[s]] * 3 for s in range(5)},
                    **{("exact", s): [a[s] + d[s]] * 3 for s in range(5)}})
    row = paired_differences(table).iloc[-1]
    res = stats.ttest_rel(a + d, a).confidence_interval(0.95)
    assert row.fd_diff_ci_low == pytest.approx(res.low) and row.fd_diff_ci_high == pytest.approx(res.high)
    assert row.n_better == int((d < 0).sum())


def test_unpaired_seeds_are_left_out_of_the_pairs():
    table = _table({("vanilla", 0): [3, 2, 1], ("vanilla", 1): [3, 2, 1], ("exact", 1): [2, 1, 0],
                    ("exact", 7): [9, 9, 9]})
    out = paired_differences(table)
    assert (out.n_pairs == 1).all() and (out.fd_diff_mean == -1).all()
    assert np.isnan(out.fd_diff_ci_low).all()  # one pair: no interval, never a made-up one


def test_steps_to_target_interpolates_and_censors():
    steps = [100, 200, 300]
    assert steps_to_target(steps, [50, 30, 10], 20) == (pytest.approx(250), False)
    assert steps_to_target(steps, [50, 30, 10], 60) == (100, False)
    assert steps_to_target(steps, [50, 30, 25], 20) == (300, True)
    with pytest.raises(ValueError):
        steps_to_target([], [], 1.0)


def test_efficiency_twice_as_fast_and_a_censored_seed_is_kept():
    steps = np.array([100, 200, 300, 400])
    base = {0: [40.0, 30.0, 20.0, 10.0], 1: [41.0, 31.0, 21.0, 11.0], 2: [39.0, 29.0, 19.0, 9.0]}
    fast = {0: [30.0, 10.0, 8.0, 7.0], 1: [31.0, 11.0, 9.0, 8.0], 2: [45.0, 40.0, 30.0, 20.0]}  # seed 2 never
    per_seed = efficiency_by_seed(steps, base, fast).set_index("seed")
    assert per_seed.loc[0].target == 10.0 and per_seed.loc[0].steps_baseline == 400
    assert per_seed.loc[0].steps_method == pytest.approx(200) and per_seed.loc[0].ratio == pytest.approx(2.0)
    assert per_seed.loc[1].ratio == pytest.approx(2.0)
    assert per_seed.loc[2].censored and per_seed.loc[2].steps_method == 400
    assert per_seed.loc[2].ratio == pytest.approx(1.0)  # an upper bound: vanilla's steps / the last step
    out = efficiency_summary(per_seed.reset_index(), steps, np.mean(list(base.values()), 0),
                             np.mean(list(fast.values()), 0))
    assert (out["n_seeds"], out["n_reached"], out["n_censored"]) == (3, 2, 1)
    assert out["ratio_median"] == pytest.approx(2.0) and out["ratio_median_is_bound"]
    # 3 values: the interval is (min, max) with coverage 75%; the censored seed counts as 0 at the lower end
    assert out["ci_coverage"] == pytest.approx(0.75)
    assert out["ratio_ci_low"] == 0.0 and out["ratio_ci_high"] == pytest.approx(2.0)


def test_target_is_the_baselines_own_final_value_not_chosen_after_seeing_both():
    steps = np.array([1, 2, 3])
    per_seed = efficiency_by_seed(steps, {0: [9.0, 5.0, 4.0]}, {0: [3.0, 2.0, 1.0]})
    assert per_seed.target.iloc[0] == 4.0 and per_seed.ratio.iloc[0] == pytest.approx(3.0)
    # a worse method: censored, never replaced by a more lenient target
    per_seed = efficiency_by_seed(steps, {0: [9.0, 5.0, 4.0]}, {0: [9.0, 8.0, 7.0]})
    assert per_seed.censored.iloc[0] and per_seed.target.iloc[0] == 4.0


@pytest.mark.parametrize("n, j, k, coverage", [(3, 1, 3, 0.75), (5, 1, 5, 1 - 2 / 32), (10, 2, 9, 0.9785)])
def test_median_interval_order_statistics_and_exact_coverage(n, j, k, coverage):
    got = median_interval(n)
    assert got[:2] == (j, k) and got[2] == pytest.approx(coverage, abs=1e-4)


def test_t_interval_matches_scipy():
    x = [1.0, 2.0, 4.0, 7.0]
    mean, lo, hi = t_interval(x)
    ref = stats.t.interval(0.95, 3, loc=np.mean(x), scale=stats.sem(x))
    assert (lo, hi) == pytest.approx(ref) and mean == 3.5


STEPS = (100, 200, 400, 800)
T2 = stats.t.ppf(0.975, 2)   # 4.303: 3 seeds, 2 degrees of freedom


def _trend_table(gaps: dict, steps=STEPS) -> pd.DataFrame:
    """{seed: f(step) -> paired gap} -> vanilla and exact runs whose exact - vanilla is the gap; vanilla's own
    curve differs by seed (paired out)."""
    rows = []
    for seed, gap in gaps.items():
        for step in steps:
            base = 30.0 - 3.0 * np.log(step + 1) + 5 * seed
            rows += [{"method": "vanilla", "seed": seed, "step": step, "fd": base},
                     {"method": "exact", "seed": seed, "step": step, "fd": base + gap(step)}]
    return pd.DataFrame(rows)


def _lines(intercepts, slopes, origin=100.0) -> dict:
    """Gaps c + b ln(step / origin), one (c, b) per seed."""
    return {s: (lambda step, c=c, b=b: c + b * np.log(step / origin)) for s, (c, b) in enumerate(zip(intercepts,
                                                                                                       slopes))}


def test_slope_vs_log_step_is_the_least_squares_line():
    a, b = slope_vs_log_step([10, 100, 1000], [7.0, 5.0, 3.0])      # 7 - 2 log10(step / 10) = ... per ln(step)
    assert b == pytest.approx(-2 / np.log(10)) and a + b * np.log(10) == pytest.approx(7.0)
    ref = stats.linregress(np.log([100, 200, 400, 800]), [1.0, 3.0, 2.0, 5.0])
    assert slope_vs_log_step([100, 200, 400, 800], [1.0, 3.0, 2.0, 5.0]) == pytest.approx((ref.intercept, ref.slope))


@pytest.mark.parametrize("intercepts, slopes, trend", [
    ((3, 3, 3), (-0.4, -0.5, -0.6), "shrinking"),      # +3 at step 100, down to +1.96 at step 800
    ((-3, -3, -3), (0.4, 0.5, 0.6), "shrinking"),      # the same from below
    ((1, 1, 1), (0.4, 0.5, 0.6), "growing"),
    ((-1, -1, -1), (-0.4, -0.5, -0.6), "growing"),
    ((1, 1, 1), (0.5, -0.5, 0.1), "flat"),
])
def test_trend_of_a_known_slope(intercepts, slopes, trend):
    row = paired_slope_vs_log_step(_trend_table(_lines(intercepts, slopes)), "exact")
    # every seed's gap is an exact line: its slope is b; the interval is mean b +- t(2) sd(b) / sqrt(3)
    half = T2 * np.std(slopes, ddof=1) / np.sqrt(3)
    assert row["slope"] == pytest.approx(np.mean(slopes))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((np.mean(slopes) - half, np.mean(slopes) + half))
    assert (row["steps"], row["seeds"], row["first_step"], row["last_step"]) == (4, 3, 100, 800)
    assert row["gap_first"] == pytest.approx(intercepts[0])
    assert row["trend"] == trend and np.isnan(row["crossover_step"])


def test_a_supported_sign_change_gives_the_crossover_step():
    # gaps b (ln 200 - ln step), b = 0.9, 1.0, 1.1: +0.69 at step 100, zero at 200, -1.39 [-1.73, -1.04] at 800
    gaps = {s: (lambda step, b=b: b * (np.log(200) - np.log(step))) for s, b in enumerate((0.9, 1.0, 1.1))}
    row = paired_slope_vs_log_step(_trend_table(gaps), "exact")
    assert row["trend"] == "crossed zero" and row["crossover_step"] == pytest.approx(200)
    assert row["last_diff_ci_high"] < 0


def test_a_crossing_the_last_step_does_not_support_is_not_stated():
    # slope -1 in every seed, but the seeds' gaps differ by -1, 0, +1: the line crosses zero at step 400, the last
    # step's interval (-0.69 +- 2.48) contains zero: shrinking, no crossover step
    row = paired_slope_vs_log_step(_trend_table(_lines((0.39, 1.39, 2.39), (-1, -1, -1))), "exact")
    assert row["ci_low"] == pytest.approx(-1) and row["ci_high"] == pytest.approx(-1)
    assert row["last_diff_ci_low"] < 0 < row["last_diff_ci_high"]
    assert row["trend"] == "shrinking" and np.isnan(row["crossover_step"])


def test_a_crossing_beyond_the_measured_horizon_is_never_stated():
    gaps = {s: (lambda step, b=b: b * (np.log(1600) - np.log(step))) for s, b in enumerate((0.9, 1.0, 1.1))}
    row = paired_slope_vs_log_step(_trend_table(gaps), "exact")
    assert row["trend"] == "shrinking" and np.isnan(row["crossover_step"])   # the line would cross at 1600
    assert crossover_step(np.log(1600), -1.0, 100, 800) != crossover_step(np.log(1600), -1.0, 100, 3200)
    assert np.isnan(crossover_step(np.log(1600), -1.0, 100, 800))
    assert crossover_step(np.log(1600), -1.0, 100, 3200) == pytest.approx(1600)


def test_trend_verdict_rules():
    assert trend_verdict(float("nan"), float("nan"), 1.0, 0.5, 1.5, False) == "not enough points"
    assert trend_verdict(-1.0, 0.0, 1.0, 0.5, 1.5, False) == "flat"            # an interval touching 0 is flat
    assert trend_verdict(-1.0, -0.1, 1.0, 0.5, 1.5, False) == "shrinking"
    assert trend_verdict(-1.0, -0.1, 1.0, -1.5, -0.5, True) == "crossed zero"
    assert trend_verdict(-1.0, -0.1, 1.0, -1.5, -0.5, False) == "shrinking"   # the line itself does not cross
    assert trend_verdict(0.1, 1.0, -1.0, 0.5, 1.5, True) == "crossed zero"
    assert trend_verdict(0.1, 1.0, 0.0, 0.5, 1.5, False) == "growing"         # from a zero gap any slope grows


def test_noisy_trend_equals_per_seed_regressions_and_a_t_interval():
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.3, (5, len(STEPS)))
    gaps = {s: (lambda step, s=s: 2 - 0.3 * np.log(step) + noise[s][STEPS.index(step)]) for s in range(5)}
    row = paired_slope_vs_log_step(_trend_table(gaps), "exact")
    per_seed = [stats.linregress(np.log(STEPS), [gaps[s](x) for x in STEPS]).slope for s in range(5)]
    ref = stats.t.interval(0.95, 4, loc=np.mean(per_seed), scale=stats.sem(per_seed))
    assert row["seeds"] == 5 and row["slope"] == pytest.approx(np.mean(per_seed))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(ref)


@pytest.mark.parametrize("steps, seeds, expected", [((0, 400), 3, (1, 3)), ((400,), 3, (1, 3)), (STEPS, 1, (4, 1))])
def test_too_few_steps_or_seeds_is_a_row_not_a_crash(steps, seeds, expected):
    gaps = {s: (lambda step: 1.0 - 0.5 * np.log(step + 1)) for s in range(seeds)}
    row = paired_slope_vs_log_step(_trend_table(gaps, steps), "exact")
    assert (row["steps"], row["seeds"]) == expected
    assert row["trend"] == "not enough points" and np.isnan(row["ci_low"]) and np.isnan(row["crossover_step"])


def test_step_zero_unpaired_seeds_and_incomplete_steps_are_left_out():
    table = _trend_table({s: (lambda step, s=s: 1.0 + 0.5 * s) for s in range(3)}, (0, 100, 200, 400, 800))
    table = pd.concat([table, pd.DataFrame([{"method": "exact", "seed": 9, "step": 100, "fd": 1.0}])])
    table = table[~((table.seed == 2) & (table.step == 800) & (table.method == "exact"))]
    d = paired_difference_curves(table, "exact")
    assert list(d.index) == [0, 1, 2] and list(d.columns) == [100, 200, 400]


def test_repeated_rows_are_an_error_that_says_what_to_split():
    table = _trend_table(_lines((1, 1), (0.4, 0.5)))
    with pytest.raises(ValueError, match="split the table"):
        paired_slope_vs_log_step(pd.concat([table, table]), "exact")


def test_paired_t_p_value_by_hand_and_equals_scipy():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 on 2 degrees of freedom
    assert paired_t_p_value([1.0, 2.0, 3.0]) == pytest.approx(2 * stats.t.sf(2 * np.sqrt(3), 2))
    assert paired_t_p_value([1.0, 2.0, 3.0]) == pytest.approx(0.0741799, abs=1e-6)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5), rng.normal(size=5)
    assert paired_t_p_value(a - b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert np.isnan(paired_t_p_value([1.0]))


def test_p_value_from_the_interval_is_the_paired_t_tests():
    rng = np.random.default_rng(1)
    for n in (3, 5):
        d = rng.normal(0.5, 1.0, size=n)
        mean, low, high = t_interval(d)
        assert t_p_value_from_interval(mean, low, high, n) == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert t_p_value_from_interval(mean, low, high, 3) == pytest.approx(0.0741799, abs=1e-6)
    # an interval that just touches 0 has p = 1 - level
    assert t_p_value_from_interval(1.0, 0.0, 2.0, 3) == pytest.approx(0.05)
    assert np.isnan(t_p_value_from_interval(1.0, float("nan"), float("nan"), 1))


def test_benjamini_hochberg_step_up_by_hand_and_equals_scipy():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): p m / i = 0.02, 0.02, 0.04, 0.04; running min from the top
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # step-up: a larger p later in the order pulls an earlier one down (0.03 * 3 / 2 = 0.045 > 0.04 * 3 / 3)
    assert benjamini_hochberg([0.01, 0.03, 0.04]) == pytest.approx([0.03, 0.04, 0.04])
    assert benjamini_hochberg([0.9, 0.8]) == pytest.approx([0.9, 0.9])
    p = np.random.default_rng(2).uniform(size=25) ** 3
    assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p, method="bh"))
    q = benjamini_hochberg([0.01, float("nan"), 0.02])   # NaN: not a member of the family
    assert np.isnan(q[1]) and q[[0, 2]] == pytest.approx([0.02, 0.02])


def test_the_sampling_floor_adds_its_variance_to_the_between_seed_variance():
    d = np.array([1.0, 2.0, 3.0])                         # sd 1, n 3
    mean, low, high = t_interval(d)
    assert sd_from_t_interval(low, high, 3) == pytest.approx(1.0)
    # no floor: the plain paired interval and the paired t-test's p
    lo0, hi0, p0 = t_interval_with_sampling_floor(mean, 1.0, 3, 0.0)
    assert (lo0, hi0, p0) == pytest.approx((low, high, stats.ttest_1samp(d, 0).pvalue))
    # floor sd 1: se = sqrt((1 + 1) / 3), by hand
    se, q = np.sqrt(2 / 3), stats.t.ppf(0.975, 2)
    lo, hi, p = t_interval_with_sampling_floor(2.0, 1.0, 3, 1.0)
    assert (lo, hi, p) == pytest.approx((2 - q * se, 2 + q * se, 2 * stats.t.sf(2 / se, 2)))
    # three nearly equal differences: the floor, not their tiny spread, sets the width
    lo, hi, _ = t_interval_with_sampling_floor(-0.32, 0.003, 3, 0.05)
    assert hi - lo == pytest.approx(2 * q * np.sqrt((0.003 ** 2 + 0.05 ** 2) / 3))


def test_paired_sampling_sd_pairs_by_sample_seed_and_pools_groups():
    rows = []
    for step, diffs in ((100, (1.0, 2.0, 3.0)), (200, (5.0, 5.0))):   # group variances 1 (2 dof) and 0 (1 dof)
        for k, diff in enumerate(diffs):
            base = 10.0 + 7 * k                                 # a shared draw moves both methods alike
            rows += [{"method": "vanilla", "seed": 0, "step": step, "sample_seed": k, "fd": base},
                     {"method": "exact", "seed": 0, "step": step, "sample_seed": k, "fd": base + diff}]
    table = pd.DataFrame(rows)
    assert paired_sampling_sd(table, "exact", "vanilla") == pytest.approx(np.sqrt(2 / 3))
    assert np.isnan(paired_sampling_sd(table[table.step == 100].iloc[:2], "exact", "vanilla"))
