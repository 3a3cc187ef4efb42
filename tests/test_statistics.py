"""Paired differences, steps-to-target with censoring and the median interval, on hand-made curves whose answer is
known."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from immiscible.evaluation.statistics import (efficiency_by_seed, efficiency_summary, median_interval,
                                              paired_differences, steps_to_target, t_interval)


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
