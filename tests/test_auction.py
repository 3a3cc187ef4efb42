"""The certified auction (immiscible/noise/auction.py) and the JV warm start it finishes with: the optimum of
scipy's float64 solver on every kind of cost, a certificate that rejects a non-optimal permutation, the documented
errors. On the CPU here; tests/test_cuda.py runs the same solver on a GPU."""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from immiscible.noise import native
from immiscible.noise.assignment import assignment_permutation, image_noise_distance, solve_assignment
from immiscible.noise.auction import max_violation, solve_auction

needs_kernel = pytest.mark.skipif(native.jv_kernel() is None, reason="no C compiler: the JV kernel is unavailable")


def optimum(cost: np.ndarray) -> float:
    r, c = linear_sum_assignment(cost.astype(np.float64))
    return float(cost.astype(np.float64)[r, c].sum())


def total(cost: np.ndarray, perm) -> float:
    return float(cost.astype(np.float64)[np.arange(len(cost)), np.asarray(perm)].sum())


def costs(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.random((n, n)).astype(np.float32)
    if kind == "cifar_like":  # raw L2 image-noise distances: nearly constant, a narrow spread per row
        x = torch.from_numpy(rng.uniform(-1, 1, (n, 3 * 16 * 16)).astype(np.float32))
        return image_noise_distance(x, torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).numpy()
    if kind == "duplicated_rows":
        base = rng.random((max(n // 4, 1), n))
        return base[rng.integers(0, len(base), n)]
    if kind == "tied":  # few distinct values: many optimal permutations
        return rng.integers(0, 3, (n, n)).astype(np.float64)
    if kind == "large_range":  # adversarial: entries from 1e-3 to 1e6
        return (10.0 ** rng.uniform(-3, 6, (n, n))).astype(np.float64)
    raise ValueError(kind)


@needs_kernel
@pytest.mark.parametrize("kind", ["random", "cifar_like", "duplicated_rows", "tied", "large_range"])
@pytest.mark.parametrize("n", [2, 3, 17, 128, 512])
def test_auction_reaches_scipys_optimum(kind, n):
    cost = costs(kind, n, seed=n)
    perm, report = solve_auction(torch.from_numpy(cost))
    assert sorted(perm.tolist()) == list(range(n))
    assert total(cost, perm) == pytest.approx(optimum(cost), rel=1e-12, abs=1e-12)
    assert report.certified and report.max_violation <= 1e-9 * (np.ptp(cost) + 1)
    assert max_violation(torch.from_numpy(cost), perm, report.duals) == report.max_violation


@needs_kernel
def test_auction_at_a_large_batch_and_through_solve_assignment():
    cost = costs("cifar_like", 2048, seed=3)
    perm = solve_assignment(cost, "auction")
    assert total(cost, perm) == pytest.approx(optimum(cost), rel=1e-12)


@needs_kernel
@pytest.mark.parametrize("tail,eps_final,scaling", [(0.0, 1e-6, 4.0), (0.5, 1e-2, 64.0), (0.0, 0.5, 2.0)])
def test_every_setting_gives_the_optimum(tail, eps_final, scaling):
    """The settings move work between the auction and the CPU finish; the optimum stays."""
    cost = costs("cifar_like", 200, seed=5)
    perm, report = solve_auction(torch.from_numpy(cost), eps_final=eps_final, scaling=scaling, tail=tail)
    assert total(cost, perm) == pytest.approx(optimum(cost), rel=1e-12)
    assert report.certified


@needs_kernel
def test_the_certificate_rejects_a_non_optimal_permutation():
    cost = torch.from_numpy(costs("random", 64, seed=7))
    perm, report = solve_auction(cost)
    assert max_violation(cost, perm, report.duals) <= 1e-12
    worse = perm.clone()
    worse[[0, 1]] = worse[[1, 0]]  # a swap: with continuous random costs, strictly worse
    assert total(cost.numpy(), worse) > total(cost.numpy(), perm)
    assert max_violation(cost, worse, report.duals) > 1e-6


@needs_kernel
def test_the_jv_warm_start_completes_a_partial_assignment_optimally():
    cost = costs("random", 300, seed=11)
    r, c = linear_sum_assignment(cost)
    # optimal duals from a full solve, then half the rows freed: the finish must restore an optimum
    perm, report = solve_auction(torch.from_numpy(cost))
    partial = perm.numpy().copy()
    partial[::2] = -1
    done, v = native.finish_jv(np.ascontiguousarray(cost), partial, report.duals.numpy())
    assert total(cost, done) == pytest.approx(total(cost, c), rel=1e-12)
    with pytest.raises(ValueError, match="share a column"):
        native.finish_jv(np.ascontiguousarray(cost), np.zeros(300, dtype=np.int64), report.duals.numpy())


def test_fp32_distances_keep_the_float64_optimum():
    """The auction path computes the B x B L2 distances in fp32 (one fp32 GEMM): the permutation it gives has the
    float64 cost of the optimum of float64 distances."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((256, 3, 32, 32), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    d64 = image_noise_distance(x0.double(), noise.double(), dtype=torch.float64).numpy()
    perm = assignment_permutation(x0, noise, "exact", solver="auction")
    assert total(d64, perm) == pytest.approx(optimum(d64), rel=1e-12)


@pytest.mark.parametrize("bad,error,match", [
    (torch.zeros(3, 4), ValueError, "square"),
    (torch.zeros(0, 0), ValueError, "empty"),
    (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), ValueError, "NaN or inf"),
    (torch.tensor([[0.0, float("inf")], [1.0, 2.0]]), ValueError, "NaN or inf"),
    (np.zeros((2, 2)), TypeError, "torch tensor"),
])
def test_bad_costs_give_the_documented_errors(bad, error, match):
    with pytest.raises(error, match=match):
        solve_auction(bad)


@pytest.mark.parametrize("bad,match", [(np.zeros((3, 4)), "square"), (np.array([[0.0, np.nan], [1.0, 2.0]]),
                                                                       "NaN or inf")])
def test_solve_assignment_with_the_auction_rejects_bad_costs(bad, match):
    with pytest.raises(ValueError, match=match):
        solve_assignment(bad, "auction")


@pytest.mark.parametrize("kw,match", [({"scaling": 1.0}, "scaling"), ({"eps_final": 0.0}, "eps_final"),
                                      ({"tail": 1.0}, "tail")])
def test_bad_settings_give_the_documented_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        solve_auction(torch.rand(4, 4), **kw)


def test_without_the_kernel_the_auction_finishes_with_scipy(monkeypatch):
    monkeypatch.setattr(native, "jv_finish_kernel", lambda: None)
    cost = costs("cifar_like", 128, seed=9)
    perm, report = solve_auction(torch.from_numpy(cost))
    assert total(cost, perm) == pytest.approx(optimum(cost), rel=1e-12) and report.duals is None


@needs_kernel
@pytest.mark.parametrize("kind", ["random", "cifar_like", "duplicated_rows", "tied", "large_range"])
@pytest.mark.parametrize("n", [1, 2, 3, 17, 128, 700])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_c_auction_reaches_scipys_optimum(kind, n, threads):
    """The CPU kernel (``native.solve_auction_cpu``: Gauss-Seidel bids with one thread, Jacobi rounds with more)."""
    cost = np.ascontiguousarray(costs(kind, n, seed=n))
    perm, v, stats = native.solve_auction_cpu(cost, threads)
    assert sorted(perm.tolist()) == list(range(n))
    assert total(cost, perm) == pytest.approx(optimum(cost), rel=1e-12, abs=1e-12)
    worst = max_violation(torch.from_numpy(cost), torch.from_numpy(perm), torch.from_numpy(v))
    assert worst <= 1e-9 * (np.ptp(cost) + 1)


@needs_kernel
def test_the_c_auction_ends_on_costs_with_a_huge_common_offset():
    """Prices near 1e12 absorb a small epsilon, so bids stop moving them: the phases' bid budget ends the auction and
    the JV finish still returns the optimum."""
    cost = 1e12 + costs("random", 200, seed=1).astype(np.float64)
    perm, _, stats = native.solve_auction_cpu(np.ascontiguousarray(cost), 1, eps_final=1e-12)
    assert total(cost - 1e12, perm) == pytest.approx(optimum(cost - 1e12), rel=1e-9)


@needs_kernel
def test_auto_on_the_cpu_is_the_c_auction_and_threads_are_checked():
    cost = costs("cifar_like", 300, seed=4)
    assert np.array_equal(solve_assignment(cost), native.solve_auction_cpu(np.ascontiguousarray(cost), 1)[0])
    assert total(cost, solve_assignment(cost, "auction", threads=2)) == pytest.approx(optimum(cost), rel=1e-12)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            native.solve_auction_cpu(np.ascontiguousarray(cost), bad)


@needs_kernel
def test_the_kernels_scan_threshold_is_the_one_python_names():
    source = (native.SOURCE_DIR / "jv.c").read_text()
    assert f"#define JV_SCAN_MIN_N {native.SCAN_MIN_N} " in source


@needs_kernel
@pytest.mark.parametrize("kind", ["random", "cifar_like", "duplicated_rows", "tied"])
def test_split_scans_give_the_same_result_bit_for_bit(kind):
    """From ``native.SCAN_MIN_N`` columns on, each shortest-path scan is split over the threads (blocks of columns;
    an uneven n gives uneven blocks): the permutation and the final prices are those of one thread, bit for bit, for
    the JV solver and for the JV finish from an auction's duals; both are scipy's optimum."""
    n = native.SCAN_MIN_N + 3
    cost = np.ascontiguousarray(costs(kind, n, seed=11))
    one, best = native.solve_jv(cost), optimum(cost)
    assert total(cost, one) == pytest.approx(best, rel=1e-12, abs=1e-12)
    full, report = solve_auction(torch.from_numpy(cost))       # an optimal state: its duals make every row tight
    partial = np.where(np.random.default_rng(0).random(n) < 0.3, -1, full.numpy())  # with 30% of its rows freed
    starts = [(np.full(n, -1), report.duals.numpy()), (partial, report.duals.numpy())]
    for threads in (2, 1000) if kind == "random" else (2,):   # 1000: capped at the cores
        assert np.array_equal(native.solve_jv(cost, threads=threads), one)
        for x, v in starts:
            p1, v1 = native.finish_jv(cost, x, v, 1)
            pt, vt = native.finish_jv(cost, x, v, threads)
            assert np.array_equal(p1, pt) and np.array_equal(v1, vt)
            assert total(cost, pt) == pytest.approx(best, rel=1e-12, abs=1e-12)


@needs_kernel
def test_the_auction_with_split_scans_reaches_the_optimum():
    n = native.SCAN_MIN_N + 1
    cost = np.ascontiguousarray(costs("cifar_like", n, seed=12))
    best = optimum(cost)
    for threads in (1, 2):
        perm, report = solve_auction(torch.from_numpy(cost), threads=threads)
        assert report.certified and total(cost, perm) == pytest.approx(best, rel=1e-12)
        perm, _, stats = native.solve_auction_cpu(cost, threads)
        assert stats["freed"] > 0 and total(cost, perm) == pytest.approx(best, rel=1e-12)
    assert total(cost, solve_assignment(cost, "jv", threads=2)) == pytest.approx(best, rel=1e-12)


@needs_kernel
@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_every_solver_with_threads_checks_them(bad):
    cost = np.ascontiguousarray(costs("random", 8, seed=1))
    for call in (lambda: native.solve_jv(cost, threads=bad), lambda: solve_assignment(cost, "jv", threads=bad),
                 lambda: native.finish_jv(cost, np.full(8, -1), np.zeros(8), bad),
                 lambda: solve_auction(torch.from_numpy(cost), threads=bad)):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            call()


def textbook_phase(cost, prices, eps, stop_free, max_rounds=None):
    """The Jacobi auction phase as written in the textbook: the free rows found by a mask every round, each bids for
    its cheapest column, each column goes to its highest bid (ties: the lowest row). It stops once at most
    ``stop_free`` rows are free or after ``max_rounds`` rounds."""
    n = cost.shape[0]
    x = torch.full((n,), -1, dtype=torch.long)
    y = torch.full((n,), -1, dtype=torch.long)
    rounds = 0
    while True:
        free = torch.arange(n)[x < 0]
        if free.numel() <= stop_free or rounds == max_rounds:
            return x, rounds
        rounds += 1
        best2, cols2 = (cost[free] + prices).topk(2, dim=1, largest=False)
        target = cols2[:, 0]
        bid = prices[target] + (best2[:, 1] - best2[:, 0]) + eps
        for col in target.unique().tolist():
            bidders = (target == col).nonzero().squeeze(1)
            winner = bidders[bid[bidders] == bid[bidders].max()][0]   # the lowest row among the highest bids
            if y[col] >= 0:
                x[y[col]] = -1
            x[free[winner]], y[col], prices[col] = col, free[winner], bid[winner]


@pytest.mark.parametrize("kind", ["random", "cifar_like", "duplicated_rows", "tied"])
def test_a_phase_makes_the_textbook_bids(kind):
    """``auction_phase`` (free rows in slots, no host synchronisation within a round) with ``check_every=1`` gives
    exactly the textbook phase's assignment, prices and round count, phase after phase. With a larger
    ``check_every`` (or while the bids are dense) only the stop moves: it stops at the first read at or after the
    textbook's stop, where it holds exactly the textbook's state after as many rounds."""
    from immiscible.noise.auction import auction_phase
    cost = torch.from_numpy(costs(kind, 300, seed=7)).double()
    cost = cost - cost.min(1, keepdim=True).values
    for check_every, dense_entries in ((1, 1 << 22), (3, 1 << 22), (8, 1 << 22), (8, 1)):
        p1, p2 = torch.zeros(300, dtype=torch.float64), torch.zeros(300, dtype=torch.float64)
        eps = float(cost.max()) / 8
        for stop_free in (9, 9, 0):
            _, r1 = textbook_phase(cost, p1.clone(), eps, stop_free)
            x2, r2 = auction_phase(cost, p2, eps, 10_000, stop_free, check_every, dense_entries)
            x1, _ = textbook_phase(cost, p1, eps, -1, max_rounds=r2)
            assert torch.equal(x1, x2) and torch.equal(p1, p2)
            assert r1 == r2 if check_every == 1 or dense_entries == 1 else r1 <= r2 < r1 + check_every
            eps /= 8


def test_tail_graphs_replay_the_eager_rounds(monkeypatch):
    """The plumbing of ``TailGraphs`` without CUDA: with a stand-in graph whose replay runs the captured rounds
    eagerly, the padded slots, the shared buffers and the round count give the eager phase's result bit for bit,
    where every sparse round comes from a graph and where dense rounds come first; a graph is captured once per
    padded size."""
    from immiscible.noise import auction
    captures = []

    class Replay:
        def __init__(self, state, buf):
            self.state, self.buf = state, buf

        def replay(self):
            for _ in range(self.state.rounds):
                auction.auction_round(self.state.cost, self.state.p, self.state.y, self.buf, self.state.eps)

    def capture(state, m):
        captures.append(m)
        buf = torch.full((m,), state.n, dtype=torch.long)
        return Replay(state, buf), buf

    monkeypatch.setattr(auction.TailGraphs, "capture", capture)
    n = 300
    cost = torch.from_numpy(costs("cifar_like", n, seed=5)).double()
    cost = cost - cost.min(1, keepdim=True).values
    for check_every, dense_entries in ((1, 1 << 22), (3, 1 << 22), (8, 1 << 22), (8, 64 * n)):
        state = auction.TailGraphs(torch.device("cpu"), n, check_every)
        state.cost.copy_(cost)
        p1, p2 = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        eps = float(cost.max()) / 8
        captures.clear()
        for stop_free in (9, 0):
            x1, r1 = auction.auction_phase(cost, p1, eps, 10_000, stop_free, check_every, dense_entries)
            x2, r2 = auction.auction_phase(state.cost, p2, eps, 10_000, stop_free, check_every, dense_entries,
                                           graphs=state)
            assert torch.equal(x1, x2) and torch.equal(p1, p2) and r1 == r2
            eps /= 8
        assert captures and len(captures) == len(set(captures)) and all(m & (m - 1) == 0 for m in captures)
        assert (max(captures) <= 64) == (dense_entries == 64 * n)  # dense rounds (64+ free rows) stay eager


@needs_kernel
@pytest.mark.parametrize("check_every", [1, 3, 8])
@pytest.mark.parametrize("kind", ["random", "cifar_like", "duplicated_rows", "tied", "large_range"])
def test_the_auction_reaches_scipys_optimum_on_any_check_interval(kind, check_every):
    cost = costs(kind, 257, seed=3)
    perm, report = solve_auction(torch.from_numpy(cost), check_every=check_every)
    assert sorted(perm.tolist()) == list(range(257)) and report.certified
    assert total(cost, perm) == pytest.approx(optimum(cost), rel=1e-12, abs=1e-12)


def test_check_every_is_checked():
    with pytest.raises(ValueError, match="check_every must be an integer >= 1"):
        solve_auction(torch.rand(4, 4), check_every=0)


def test_graphs_need_a_cuda_cost_matrix():
    for n in (1, 4):
        with pytest.raises(ValueError, match="graphs=True replays CUDA graphs: it needs the cost matrix on a CUDA"):
            solve_auction(torch.rand(n, n), graphs=True)
