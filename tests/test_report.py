"""The reproduction report: the verdict rules, every row's numbers against the result tables (recomputed here from the
per-seed FDs), and the Markdown/HTML written from the same rows with the figures embedded."""
import html
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from immiscible.experiments import report as R

ROOT = Path(__file__).resolve().parents[1]


def test_verdict_rules():
    assert R.verdict(-2.0, -0.1, q=0.01, ratio=3.2, claimed=3.0) == "reproduced"
    assert R.verdict(-2.0, -0.1, q=0.01, ratio=1.5, claimed=3.0).startswith("partly")
    assert R.verdict(-2.0, -0.1, q=0.01) == "reproduced"              # a better-FID claim: no speed-up condition
    assert R.verdict(0.2, 1.0, q=0.01, ratio=1.0, claimed=3.0) == "not reproduced (worse)"
    assert R.verdict(-1.0, 1.0, q=0.5) == "not reproduced (not resolved: the interval contains 0)"
    assert R.verdict(float("nan"), float("nan"), q=float("nan")).startswith("not resolvable")


def test_an_interval_off_zero_counts_only_with_q_below_the_level():
    assert R.verdict(-2.0, -0.1, q=0.06) == "not reproduced (not resolved: q 0.060 >= 0.05)"
    assert R.verdict(0.1, 2.0, q=0.06) == "not reproduced (not resolved: q 0.060 >= 0.05)"
    assert R.verdict(-2.0, -0.1, q=R.FDR_LEVEL) != "reproduced"


def test_a_censored_speed_up_never_reaches_the_claimed_factor():
    # a median of 3.5 that is only an upper bound (censored seeds) cannot count as reaching 3x
    assert R.verdict(-2.0, -0.1, q=0.01, ratio=3.5, claimed=3.0, ratio_is_bound=True).startswith("partly")
    assert R.verdict(-2.0, -0.1, q=0.01, ratio=3.5, claimed=3.0, ratio_is_bound=False) == "reproduced"
    assert R.verdict(-2.0, -0.1, q=0.01, ratio=None, claimed=3.0).startswith("partly")   # no speed-up measured


def test_faster_without_a_factor_needs_a_measured_speed_up_above_one():
    assert R.verdict(-2.0, -0.1, q=0.01, ratio=1.0, claimed=1.0).startswith("partly")   # not vacuous
    assert R.verdict(-2.0, -0.1, q=0.01, ratio=1.2, claimed=1.0, ratio_is_bound=True).startswith("partly")
    assert R.verdict(-2.0, -0.1, q=0.01, ratio=1.03, claimed=1.0) == "reproduced"


def test_the_printed_rule_text_is_generated_from_the_rules_that_decide():
    text = R.verdict_rule_text()
    for label, condition, _ in (*R.CLAIM_RULES, *R.hypothesis_rules("<reading of a lower value>",
                                                                     "<reading of a higher value>")):
        assert f'"{label.format(why="<why>")}" {condition}' in text
    assert f"q-value is below {R.FDR_LEVEL}" in text and R.FAMILY in text
    # every verdict the rules can give is a label of the printed text (the first rule that holds decides)
    for e in (R.Evidence(-2, -1, 0.01, 3.5, False, 3.0), R.Evidence(-2, -1, 0.01, 3.5, True, 3.0),
              R.Evidence(1, 2, 0.01), R.Evidence(-1, 1, 0.5), R.Evidence(float("nan"), float("nan"))):
        assert R.decide(R.CLAIM_RULES, e).split(":")[0].rstrip(")") in text
    assert text in (ROOT / "results" / "REPORT.md").read_text()


def test_judge_sets_p_from_the_interval_and_bh_q_over_the_family():
    rows = [R.interval_row(f"c{i}", "-", "-", "-", m, lo, hi, 3) for i, (m, lo, hi) in
            enumerate([(-1.0, -1.9, -0.1), (-1.0, -2.0, 0.0), (-1.0, -1.5, -0.5)])]
    rows.append({"claim": "not an interval", "verdict": "measured"})
    R.judge(rows)
    p = [stats.t.sf(1.0 / ((hi - lo) / (2 * stats.t.ppf(0.975, 2))), 2) * 2
         for lo, hi in ((-1.9, -0.1), (-2.0, 0.0), (-1.5, -0.5))]
    assert [r["_p"] for r in rows[:3]] == pytest.approx(p)
    assert [r["_q"] for r in rows[:3]] == pytest.approx(stats.false_discovery_control(p))
    assert rows[1]["verdict"].startswith("not reproduced (not resolved")     # touches 0
    assert rows[2]["verdict"] == "reproduced" and rows[3]["p"] == rows[3]["q"] == "-"


def _paired_t(a: np.ndarray, b: np.ndarray):
    d = a - b
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half, int((d < 0).sum())


def test_rows_match_the_result_tables():
    rows = {r["claim"]: r for r in R.build_rows(ROOT / "results")}
    fid = pd.read_csv(ROOT / "results" / "tables" / "unconditional_fid.csv")
    last = fid[fid.step == fid.step.max()]
    exact = last[last.method == "exact"].set_index("seed").fd
    vanilla = last[last.method == "vanilla"].set_index("seed").fd
    mean, low, high, better = _paired_t(exact.to_numpy(), vanilla.loc[exact.index].to_numpy())
    row = rows["up to 3x faster DDIM training, CIFAR-10 (unconditional)"]
    assert f"{mean:+.2f} [{low:+.2f}, {high:+.2f}], {better}/{len(exact)} seeds better" in row["ours"]
    assert row["verdict"] == R.verdict(low, high, row["_q"], 1.0, 3.0, ratio_is_bound=True)
    for name in ("finetuning", "class_conditional"):
        f = pd.read_csv(ROOT / "results" / "tables" / f"{name}_fid.csv")
        f = f[f.step == f.step.max()]
        knn, ex = f[f.method == "knn"].set_index("seed").fd, f[f.method == "exact"].set_index("seed").fd
        mean, low, high, better = _paired_t(knn.to_numpy(), ex.loc[knn.index].to_numpy())
        label = {"finetuning": "fine-tuning", "class_conditional": "class-conditional"}[name]
        r = rows[f"{R.KNN_VS_LA}: {label}"]
        assert f"{mean:+.2f} [{low:+.2f}, {high:+.2f}], {better}/{len(knn)} seeds better" in r["ours"]
        assert r["verdict"] == R.verdict(low, high, r["_q"])
        d = knn.to_numpy() - ex.loc[knn.index].to_numpy()
        noise = ROOT / "results" / "tables" / f"{name}_sampling_noise.csv"
        if noise.exists():   # the measured sampling floor: its variance joins the between-seed variance of the mean
            w = pd.read_csv(noise).pivot_table(index="sample_seed", columns="method", values="fd")
            floor_var = (w.knn - w.exact).var(ddof=1)
            se = np.sqrt((d.var(ddof=1) + floor_var) / len(d))
            assert r["_p"] == pytest.approx(2 * stats.t.sf(abs(d.mean()) / se, len(d) - 1))
        else:
            assert r["_p"] == pytest.approx(stats.ttest_rel(knn.to_numpy(), ex.loc[knn.index].to_numpy()).pvalue)
    assert rows["Stable Diffusion on ImageNet: from scratch and fine-tuning"]["verdict"] == "not run here"
    # the ablation's coupling row: the KNN variant with the largest distance cut against exact, paired by seed
    fid = pd.read_csv(ROOT / "results" / "tables" / "ablation_fid.csv")
    training = pd.read_csv(ROOT / "results" / "tables" / "ablation_training.csv")
    base = training[(training.arm == "base") & (training.method == "knn")]
    strongest = base.groupby("variant").distance_change_pct.mean().idxmin()
    last = fid[(fid.arm == "base") & (fid.step == fid.step.max())]
    knn, ex = last[last.variant == strongest].set_index("seed").fd, last[last.variant == "exact"].set_index("seed").fd
    mean, low, high, better = _paired_t(knn.to_numpy(), ex.loc[knn.index].to_numpy())
    row = next(r for r in rows.values() if f"FD {strongest} - exact" in r["ours"])
    assert f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]" in row["ours"]


def test_report_files_are_written_from_the_rows(tmp_path):
    shutil.copytree(ROOT / "results" / "tables", tmp_path / "tables")
    (tmp_path / "figures").mkdir()
    shutil.copy(ROOT / "results" / "figures" / "finetuning_fd_curves.png", tmp_path / "figures")
    rows = R.write_report(tmp_path, figures=("finetuning_fd_curves", "missing_figure"))
    md, page = (tmp_path / "REPORT.md").read_text(), (tmp_path / "report.html").read_text()
    for r in rows:
        assert r["verdict"] in md and html.escape(r["claim"]) in page
    assert page.count("data:image/png;base64,") == 1  # the figure that exists, embedded
    assert len(md.splitlines()) > len(rows)


def test_without_tables_only_what_cannot_run_here_is_listed(tmp_path):
    rows = R.build_rows(tmp_path)
    assert {r["verdict"] for r in rows} == {"not run here"}


def test_the_readme_headline_intervals_are_the_reports():
    """Every "mean [low, high]" in the README's headline table is a number of the generated report."""
    import re
    readme = (ROOT / "README.md").read_text()
    headline = readme.split("## Headline results", 1)[1].split("\n## ", 1)[0]
    report = (ROOT / "results" / "REPORT.md").read_text()
    intervals = re.findall(r"[+-]\d+\.\d+ \[[+-]\d+\.\d+, [+-]\d+\.\d+\]", headline)
    assert len(intervals) >= 6
    for interval in intervals:
        assert interval in report, f"README headline {interval!r} is not in results/REPORT.md"


def _ablation_tables(folder: Path, diffs: dict, contrast: tuple) -> None:
    """Synthetic ablation tables: ``diffs`` {(arm, variant): (mean, low, high)}; ``contrast`` (mean, low, high)."""
    rows = [{"arm": arm, "variant": variant, "step": 800, "resolution": 8 if arm == "px8" else 16,
             "objective": "flow" if arm == "flow" else "eps", "knn_k": 0, "distance_change_pct": -1.0 - i,
             "n_pairs": 3, "fd_vanilla": 10.0, "fd_diff_mean": m, "fd_diff_ci_low": lo, "fd_diff_ci_high": hi,
             "fd_n_better": 1, "fd_ratio_mean": 1 + m / 10, "fd_ratio_ci_low": 1 + lo / 10,
             "fd_ratio_ci_high": 1 + hi / 10} for i, ((arm, variant), (m, lo, hi)) in enumerate(diffs.items())]
    (folder / "tables").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "tables" / "ablation_paired.csv", index=False)
    m, lo, hi = contrast
    pd.DataFrame([{"arm": "px8", "reference": "base", "variant": "exact", "step": 800, "n_pairs": 3,
                   "ratio_of_ratios_mean": m, "ratio_of_ratios_ci_low": lo, "ratio_of_ratios_ci_high": hi}]).to_csv(
        folder / "tables" / "ablation_contrasts.csv", index=False)


@pytest.mark.parametrize("diffs, contrast, expected", [   # resolved intervals are narrow: q < 0.05 in the family
    ({("base", "exact"): (1.0, 0.9, 1.1), ("base", "knn2"): (0.5, 0.45, 0.55), ("base", "knn8"): (-1.0, -1.1, -0.9),
      ("flow", "exact"): (0.5, 0.45, 0.55),
      ("flow", "knn8"): (-0.2, -1.0, 0.6), ("px8", "exact"): (2.0, 1.9, 2.1)}, (1.1, 1.09, 1.11),
     {"k sweep": "partly (better than vanilla: knn8)", "LA": "reproduced (worse than vanilla)",
      "KNN": "not reproduced (not resolved: the interval contains 0)", "dimension": "supported (costlier at 8 px)"}),
    ({("base", "exact"): (1.0, 0.9, 1.1), ("base", "knn2"): (-1.0, -1.1, -0.9), ("base", "knn8"): (-1.0, -1.1, -0.9),
      ("flow", "exact"): (-0.5, -0.55, -0.45),
      ("flow", "knn8"): (-0.5, -0.55, -0.45), ("px8", "exact"): (0.0, -1.0, 1.0)}, (0.9, 0.89, 0.91),
     {"k sweep": "reproduced", "LA": "not reproduced (better than vanilla here)", "KNN": "reproduced",
      "dimension": "contradicted (cheaper at 8 px)"}),
    ({("base", "exact"): (1.0, 0.9, 1.1), ("base", "knn2"): (-1.0, -1.9, -0.1), ("base", "knn8"): (-1.0, -2.0, 0.2),
      ("flow", "exact"): (0.5, -0.5, 1.5),
      ("flow", "knn8"): (-0.5, -0.9, -0.1), ("px8", "exact"): (0.0, -1.0, 1.0)}, (0.9, 0.8, 1.1),
     # knn2 and flow knn8 exclude 0 (p 0.041, 0.033) but BH over the 6 rows gives q 0.119: not resolved
     {"k sweep": "not reproduced (not resolved: knn2, knn8)", "LA": "not resolved: the interval contains 0",
      "KNN": "not reproduced (not resolved: q 0.119 >= 0.05)",
      "dimension": "not resolved: the interval of the ratio contains 1"}),
])
def test_ablation_rows_follow_the_rules(tmp_path, diffs, contrast, expected):
    _ablation_tables(tmp_path, diffs, contrast)
    rows = R.judge(R.ablation_rows(tmp_path))

    def verdict_of(prefix):
        return next(r["verdict"] for r in rows if r["claim"].startswith(prefix))
    got = {"k sweep": verdict_of("KNN at every k"), "LA": verdict_of("flow matching: linear"),
           "KNN": verdict_of("flow matching: KNN"), "dimension": verdict_of("hypothesis")}
    assert got == expected


def test_the_ablation_rows_add_their_own_arms_measured_sampling_floor(tmp_path):
    """Each ablation row adds the paired sampling sd of its own arm and variant (ablation_sampling_noise.csv); a
    contrast between arms adds the sd of its double difference of log FD over the sample seeds both arms drew."""
    diffs = {("base", "exact"): (1.0, 0.9, 1.1), ("base", "knn8"): (-1.0, -1.1, -0.9),
             ("flow", "knn8"): (-0.32, -0.33, -0.31), ("px8", "exact"): (2.0, 1.9, 2.1)}
    _ablation_tables(tmp_path, diffs, (1.1, 1.09, 1.11))
    rows = {r["claim"]: r for r in R.judge(R.ablation_rows(tmp_path))}
    flow, dim = rows["flow matching: KNN beats vanilla (follow-up)"], next(
        r for c, r in rows.items() if c.startswith("hypothesis: the cost of immiscible training here grows"))
    assert flow["_floor"] is None and dim["_floor"] is None     # no sampling-noise table: not measured
    rng = np.random.default_rng(0)
    noise = pd.DataFrame([{"arm": arm, "variant": variant, "seed": 0, "step": 800, "sample_seed": 20_000 + 1000 * r,
                           "fd": 10 + rng.normal(0, 0.3)} for arm, variants in (("base", ("vanilla", "exact", "knn8")),
                                                                            ("flow", ("vanilla", "knn8")),
                                                                            ("px8", ("vanilla", "exact")))
                          for variant in variants for r in range(4)]).assign(log_fd=lambda d: np.log(d.fd))
    noise.to_csv(tmp_path / "tables" / "ablation_sampling_noise.csv", index=False)
    w = noise.pivot_table(index="sample_seed", columns=["arm", "variant"], values="fd")
    lw = np.log(w)
    rows = {r["claim"]: r for r in R.judge(R.ablation_rows(tmp_path))}
    flow, dim = rows["flow matching: KNN beats vanilla (follow-up)"], next(
        r for c, r in rows.items() if c.startswith("hypothesis: the cost of immiscible training here grows"))
    assert flow["_floor"] == pytest.approx((w["flow", "knn8"] - w["flow", "vanilla"]).std(ddof=1))
    contrast = (lw["px8", "exact"] - lw["px8", "vanilla"]) - (lw["base", "exact"] - lw["base", "vanilla"])
    assert dim["_floor"] == pytest.approx(contrast.std(ddof=1))
    knn8 = rows["KNN beats vanilla at k=8 (follow-up's k sweep, DDIM CIFAR-10)"]
    assert knn8["_floor"] == pytest.approx((w["base", "knn8"] - w["base", "vanilla"]).std(ddof=1))
    # the floor widens the interval that decides: flow's [-0.33, -0.31] cannot stay narrower than its sampling noise
    low, high = flow["_decided"]
    assert high - low > 2 * flow["_floor"] and flow["sampling floor"].startswith(f"sd {flow['_floor']:.3f} measured")


def _fid_table(gap_slopes: dict, steps=(200, 400, 800, 1600)) -> pd.DataFrame:
    """vanilla and ``method`` runs of 3 seeds whose paired gap is 2 + b ln(step / 200), b per seed from
    ``gap_slopes`` {method: (b0, b1, b2)}."""
    rows = []
    for method, slopes in gap_slopes.items():
        for seed, b in enumerate(slopes):
            for step in steps:
                base = 40.0 - 4.0 * np.log(step) + 3 * seed
                rows += [{"method": "vanilla", "seed": seed, "step": step, "fd": base},
                         {"method": method, "seed": seed, "step": step, "fd": base + 2 + b * np.log(step / 200)}]
    return pd.DataFrame(rows).drop_duplicates(["method", "seed", "step"])


def test_horizon_trends_of_the_result_tables_are_per_seed_slopes_over_ln_step():
    trends = R.all_horizon_trends(ROOT / "results")
    fid = pd.read_csv(ROOT / "results" / "tables" / "unconditional_fid.csv")
    wide = fid.pivot_table(index="seed", columns=["step", "method"], values="fd")
    steps = sorted(fid.step.unique())
    d = np.array([[wide.loc[s, (t, "exact")] - wide.loc[s, (t, "vanilla")] for t in steps] for s in wide.index])
    slopes = [np.polyfit(np.log(steps), row, 1)[0] for row in d]
    low, high = stats.t.interval(0.95, len(slopes) - 1, loc=np.mean(slopes), scale=stats.sem(slopes))
    row = trends[(trends.experiment == "unconditional") & (trends.comparison == "exact - vanilla")].iloc[0]
    assert (row.steps, row.seeds, row.setting) == (len(steps), len(slopes), "cpu")
    assert (row.slope, row.ci_low, row.ci_high) == pytest.approx((np.mean(slopes), low, high))
    assert row.trend == ("flat" if low <= 0 <= high else row.trend)
    # the ablation evaluates one step: its rows say so instead of inventing a trend
    assert set(trends[trends.experiment.str.startswith("ablation")].trend) <= {"not enough points"}
    written = pd.read_csv(ROOT / "results" / "tables" / "horizon_trends.csv")
    assert list(written.trend) == list(trends.trend)
    assert np.allclose(written.slope, trends.slope.astype(float), rtol=1e-5, equal_nan=True)


def test_the_gpu_setting_is_its_own_column_and_is_said_to_be_missing_until_measured(tmp_path):
    (tmp_path / "tables").mkdir()
    _fid_table({"exact": (0.3, 0.4, 0.5)}).to_csv(tmp_path / "tables" / "unconditional_fid.csv", index=False)
    R.write_report(tmp_path, figures=())
    md = (tmp_path / "REPORT.md").read_text()
    assert "| unconditional | exact - vanilla | growing: slope +0.40 [" in md and R.GPU_MISSING in md
    assert set(pd.read_csv(tmp_path / "tables" / "horizon_trends.csv").setting) == {"cpu"}

    (tmp_path / "gpu" / "tables").mkdir(parents=True)
    _fid_table({"exact": (-0.5, -0.6, -0.7), "knn8": (0.5, -0.5, 0.1)}).to_csv(
        tmp_path / "gpu" / "tables" / "unconditional_fid.csv", index=False)
    R.write_report(tmp_path, figures=())
    md, page = (tmp_path / "REPORT.md").read_text(), (tmp_path / "report.html").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| unconditional | exact - vanilla |"))
    cpu, gpu = line.split(" | ")[2:4]
    assert cpu.startswith("growing: slope +0.40") and gpu.startswith("shrinking: slope -0.60")
    knn = next(x for x in md.splitlines() if x.startswith("| unconditional | knn8 - vanilla |"))
    assert knn.split(" | ")[2] == "-" and knn.split(" | ")[3].startswith("flat")   # the CPU study has no knn8
    assert R.GPU_MISSING not in md and "Verdicts by horizon" in page
    trends = pd.read_csv(tmp_path / "tables" / "horizon_trends.csv")
    assert sorted(zip(trends.setting, trends.comparison, trends.trend)) == [
        ("cpu", "exact - vanilla", "growing"), ("gpu", "exact - vanilla", "shrinking"),
        ("gpu", "knn8 - vanilla", "flat")]


def test_consistency_is_split_by_sampler_and_the_ablation_by_arm():
    fid = _fid_table({"exact": (0.1, 0.2, 0.3)})
    both = pd.concat([fid.assign(sample_steps=1), fid.assign(sample_steps=2)])
    assert [label for label, _ in R._experiment_splits("consistency", both)] == [
        "consistency (1-step sampling)", "consistency (2-step sampling)"]
    assert R._method_pairs(["vanilla", "exact", "knn"]) == [("exact", "vanilla"), ("knn", "vanilla"),
                                                            ("knn", "exact")]


def test_the_measured_sampling_floor_widens_the_interval_that_decides():
    """unconditional exact - vanilla: its paired sampling sd (4 sample seeds, shared initial noise) is added to the
    between-seed variance; rows without a sampling-noise table say so."""
    rows = {r["claim"]: r for r in R.build_rows(ROOT / "results")}
    noise = pd.read_csv(ROOT / "results" / "tables" / "unconditional_sampling_noise.csv")
    wide = noise.pivot(index="sample_seed", columns="method", values="fd")
    floor = (wide.exact - wide.vanilla).std(ddof=1)
    fid = pd.read_csv(ROOT / "results" / "tables" / "unconditional_fid.csv")
    last = fid[fid.step == fid.step.max()].pivot(index="seed", columns="method", values="fd")
    d = (last.exact - last.vanilla).to_numpy()
    se = np.sqrt((d.var(ddof=1) + floor ** 2) / len(d))
    half = stats.t.ppf(0.975, len(d) - 1) * se
    row = rows["up to 3x faster DDIM training, CIFAR-10 (unconditional)"]
    assert row["_floor"] == pytest.approx(floor)
    assert row["_decided"] == pytest.approx((d.mean() - half, d.mean() + half))
    assert row["_p"] == pytest.approx(2 * stats.t.sf(abs(d.mean()) / se, len(d) - 1))
    assert f"sd {floor:.3f} measured" in row["sampling floor"]
    # a row whose experiment measured no floor says so, and shows (FD rows only) what the unconditional floor gives
    fd_row, other = R.interval_row("c", "-", "-", "-", -1.0, -1.5, -0.5, 3), R.interval_row(
        "d", "-", "-", "-", -1.0, -1.5, -0.5, 3, fd=False)
    R.judge([fd_row, other], reference_floor=floor)
    assert fd_row["_floor"] is None and fd_row["sampling floor"].startswith(
        f"not measured (with the unconditional setting's sd {floor:.3f}: [")
    assert other["sampling floor"] == "not measured"


def test_each_consistency_sampler_gets_its_own_sampling_floor():
    """consistency exact - vanilla: the floor of the 1-step rows comes from the 1-step repeats only, the 2-step's
    from the 2-step repeats; a table without rows (sampling_repeats 0) gives no floor."""
    rows = {r["claim"]: r for r in R.build_rows(ROOT / "results")}
    noise = pd.read_csv(ROOT / "results" / "tables" / "consistency_sampling_noise.csv")
    floors = []
    for k in (1, 2):
        wide = noise[noise.sample_steps == k].pivot(index="sample_seed", columns="method", values="fd")
        floors.append((wide.exact - wide.vanilla).std(ddof=1))
        assert rows[f"3x faster consistency training, CIFAR-10 ({k}-step sampling)"]["_floor"] == \
            pytest.approx(floors[-1])
    assert floors[0] != pytest.approx(floors[1])
    assert R.sampling_floor(ROOT / "results", "consistency", sample_steps=3) is None


def test_an_empty_sampling_noise_table_means_no_floor(tmp_path):
    (tmp_path / "tables").mkdir()
    pd.DataFrame(columns=["method", "seed", "step", "sample_seed", "fd", "kid"]).to_csv(
        tmp_path / "tables" / "finetuning_sampling_noise.csv", index=False)
    assert R.sampling_floor(tmp_path, "finetuning") is None
