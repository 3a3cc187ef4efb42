"""The exact assignment on the GPU: a parallel auction with epsilon scaling, certified optimal in float64.

    perm, report = solve_auction(cost)          # cost: (B, B) torch tensor on any device; perm on the same device

Bertsekas' auction (1988) for a minimum-cost assignment, in its Jacobi form: every unassigned row bids at once for
its cheapest column (cost + price), raising that column's price by its margin over its second-cheapest column plus
epsilon; each column goes to its highest bid and evicts its previous row. Every round is a few dense tensor
operations on the unassigned rows (a gather, a top-2, two scatter-reductions), so the whole solve stays on the
device: no host round trip of the B x B matrix. Epsilon scaling (phases of decreasing epsilon, the prices carried
over) keeps the number of rounds small.

An auction ends with epsilon-complementary slackness, which bounds the total cost within B * epsilon of the optimum
but does not make it optimal. So the result is **certified**: with the column duals v = -prices, every row's
assigned column must attain its row minimum of cost_ij - v_j, computed in float64 on the original costs. That is
dual feasibility with complementary slackness, so the assignment is optimal (its total equals the dual bound). Rows
where the check fails are freed and the project's Jonker-Volgenant kernel (``csrc/jv_impl.h``, step 4 only) finishes
them on the CPU from the auction's duals: the shortest augmenting paths from a state that satisfies the same
check, which is exact (each path's scans split over ``threads`` host threads from 2048 columns on). ``report``
says how many rows the certificate freed and whether the CPU finished any.

The same algorithm runs on the CPU in C (``native.solve_auction_cpu``, Gauss-Seidel bids), the default host solver.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from immiscible.noise import native


CERTIFY_TOL = 1e-9  # largest row violation, relative to the reduced matrix's largest entry, still called certified


@dataclass
class AuctionReport:
    rounds: int            # bidding rounds over all phases
    phases: int            # epsilon phases
    unassigned: int        # rows the auction left free (its tail)
    freed: int             # rows handed to the CPU finish: unassigned, or not at their float64 row minimum
    max_violation: float   # of the returned permutation: max_i (its reduced cost - the row's minimum), float64
    certified: bool        # max_violation <= CERTIFY_TOL * the cost range: the total is optimal up to
                           # B * max_violation (LP duality), i.e. to float64 rounding
    duals: torch.Tensor | None = None  # the column duals v (float64) that certify the permutation (None where no
                                       # C compiler built the finish: then an exact CPU solver solved it all)


def check_cost(cost: torch.Tensor) -> None:
    """The documented errors for a bad cost matrix: not a tensor, not square, empty, NaN or inf."""
    if not isinstance(cost, torch.Tensor):
        raise TypeError(f"the cost matrix must be a torch tensor, got {type(cost).__name__}")
    if cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"the cost matrix must be square, got shape {tuple(cost.shape)}")
    if cost.shape[0] == 0:
        raise ValueError("the cost matrix is empty: the assignment needs at least one row")
    if not bool(torch.isfinite(cost).all()):
        raise ValueError("the cost matrix has NaN or inf entries: check the inputs for non-finite values")


def auction_round(cost: torch.Tensor, p: torch.Tensor, y: torch.Tensor, slots: torch.Tensor, eps) -> None:
    """One Jacobi round: every free row in ``slots`` (the index n: a spare slot, which does not bid) bids for its
    cheapest column, each column goes to its highest bid (ties: the lowest row) and evicts its row. In place, with
    fixed shapes and no host synchronisation: on the prices ``p`` and the column -> row map ``y`` (each with a spare
    entry n, where the losers write) and on ``slots``, where a winner's slot takes the row its column evicts (a
    spare where the column was free). So the free count never grows and no row sits in two slots."""
    n = cost.shape[0]
    active = slots < n
    values = cost.index_select(0, slots.clamp_max(n - 1)).add_(p[:n])  # (m, n) float64
    best2, cols2 = values.topk(2, dim=1, largest=False)                  # ascending
    target = cols2[:, 0]
    bid = torch.where(active, p[target] + (best2[:, 1] - best2[:, 0]) + eps, -torch.inf)
    top = torch.full((n,), -torch.inf, dtype=bid.dtype, device=cost.device).scatter_reduce(0, target, bid, "amax")
    wins = active & (bid == top[target])
    first = torch.full((n,), n, dtype=torch.long, device=cost.device).scatter_reduce(
        0, target, torch.where(wins, slots, n), "amin")
    wins &= slots == first[target]                                       # one winner per column
    cols = torch.where(wins, target, n)
    evicted = y[cols]                                                    # -1: the column was free
    y[cols] = slots
    p[cols] = bid
    slots.copy_(torch.where(wins, torch.where(evicted >= 0, evicted, n), slots))


class TailGraphs:
    """CUDA graphs of ``rounds`` auction rounds over a fixed number of slots, for the sparse end of each phase, where
    a round is a few dozen small kernels and launching them costs more than running them. It holds the buffers the
    graphs read, for one device and size B: the reduced costs, the prices, the column -> row map, epsilon. The
    slots are padded with spares to a power of two, so a solve captures at most log2(B) graphs and every later solve
    of that size (a training run's) replays them. Opt-in (``solve_auction(graphs=True)``) and not yet timed."""

    def __init__(self, device: torch.device, n: int, rounds: int):
        self.n, self.rounds = n, rounds
        self.cost = torch.empty((n, n), dtype=torch.float64, device=device)
        self.p = torch.zeros(n + 1, dtype=torch.float64, device=device)
        self.y = torch.full((n + 1,), -1, dtype=torch.long, device=device)
        self.eps = torch.zeros((), dtype=torch.float64, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def run(self, slots: torch.Tensor) -> torch.Tensor:
        """``rounds`` rounds from the free rows ``slots``; returns the slots after them (a buffer of the graph's)."""
        m = 1 << (slots.numel() - 1).bit_length()
        if m not in self.graphs:
            self.graphs[m] = self.capture(m)
        graph, buf = self.graphs[m]
        buf.fill_(self.n)
        buf[:slots.numel()] = slots
        graph.replay()
        return buf

    def capture(self, m: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        buf = torch.full((m,), self.n, dtype=torch.long, device=self.cost.device)
        side = torch.cuda.Stream(self.cost.device)
        side.wait_stream(torch.cuda.current_stream(self.cost.device))
        with torch.cuda.stream(side):  # the warm-up the capture needs; spares only, so it changes no state
            auction_round(self.cost, self.p, self.y, buf, self.eps)
        torch.cuda.current_stream(self.cost.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(self.rounds):
                auction_round(self.cost, self.p, self.y, buf, self.eps)
        return graph, buf


_TAIL_GRAPHS: dict[tuple, TailGraphs] = {}  # one entry, the last size solved: its buffers hold a B x B float64 matrix


def tail_graphs(device: torch.device, n: int, rounds: int) -> TailGraphs:
    key = (str(device), n, rounds)
    if key not in _TAIL_GRAPHS:
        _TAIL_GRAPHS.clear()
        _TAIL_GRAPHS[key] = TailGraphs(device, n, rounds)
    return _TAIL_GRAPHS[key]


def auction_phase(cost: torch.Tensor, prices: torch.Tensor, eps: float, max_rounds: int, stop_free: int = 0,
                  check_every: int = 1, dense_entries: int = 1 << 22,
                  graphs: TailGraphs | None = None) -> tuple[torch.Tensor, int]:
    """One epsilon phase from no assignment: returns (row -> column, -1 for a row left free; rounds); ``prices``
    (float64) is updated in place. The phase stops once at most ``stop_free`` rows are free (0: a full
    assignment). Ties between equal bids for one column go to the lowest row index (deterministic).

    The free rows sit in a list of slots (``auction_round``), so rounds need no host synchronisation. The host reads
    the free count, and drops the spare slots, every ``check_every`` rounds, and after every round while the bids
    of the last count would fill at least ``dense_entries`` (free rows x B): there a round is heavier than a
    synchronisation. With ``check_every=1`` this is the textbook Jacobi phase (tested bit for bit); a larger value
    only moves the stop, up to ``check_every - 1`` rounds past ``stop_free`` (fewer rows left to the finish), and
    bids with spare slots between reads, which costs compute on the CPU and saves waits for the device on a GPU.
    ``graphs`` (``cost`` must then be ``graphs.cost``): the sparse rounds replay CUDA graphs of ``check_every``
    rounds, with the same result."""
    n = cost.shape[0]
    device = cost.device
    if graphs is None:
        y = torch.full((n + 1,), -1, dtype=torch.long, device=device)  # column -> row; index n: the losers' spare
        p = torch.zeros(n + 1, dtype=torch.float64, device=device)     # prices, with the spare's
    else:
        y, p = graphs.y.fill_(-1), graphs.p
        graphs.eps.fill_(eps)
    p[:n] = prices
    slots = torch.arange(n, device=device)                              # the free rows; n: a spare slot
    rounds, since_check = 0, check_every
    while True:
        dense = slots.numel() * n >= dense_entries
        if since_check >= check_every or dense:
            slots = slots[slots < n]                                    # the one synchronisation
            since_check, dense = 0, slots.numel() * n >= dense_entries
            if slots.numel() <= stop_free:
                break
            if rounds >= max_rounds:
                raise RuntimeError(f"the auction did not finish within {max_rounds} rounds at epsilon {eps:.3g}; "
                                   "use solver='jv' on the CPU")
        if graphs is not None and not dense:
            slots = graphs.run(slots)
            rounds, since_check = rounds + check_every, check_every
        else:
            auction_round(cost, p, y, slots, eps)
            rounds, since_check = rounds + 1, since_check + 1
    prices.copy_(p[:n])
    x = torch.full((n + 1,), -1, dtype=torch.long, device=device)      # row -> column, from y
    x[torch.where(y[:n] >= 0, y[:n], n)] = torch.arange(n, device=device)
    return x[:n], rounds


def max_violation(cost: torch.Tensor, perm: torch.Tensor, v: torch.Tensor) -> float:
    """The certificate of ``perm`` for the duals ``v``: 0 (up to float64 rounding) proves ``perm`` optimal for
    ``cost``; a positive value bounds its total's excess over the optimum by B times it."""
    return float(violations(cost.double(), perm, v.double()).max())


def violations(cost64: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n,) float64: how far each row's column x[i] lies above its row minimum of cost_ij - v_j (0 where it attains
    it), computed in float64 as the CPU kernel computes it. All zeros is the optimality certificate."""
    reduced = cost64 - v
    own = reduced.gather(1, x[:, None]).squeeze(1)
    return own - reduced.min(dim=1).values


def solve_auction(cost: torch.Tensor, eps_final: float = 1e-4, scaling: float = 8.0, tail: float = 1 / 32,
                  max_rounds: int = 100_000, threads: int = 1,
                  check_every: int = 1, graphs: bool = False) -> tuple[torch.Tensor, AuctionReport]:
    """Optimal permutation ``perm`` (long, on cost's device: row i gets column perm[i]) of a square cost matrix,
    and an ``AuctionReport``. The auction runs on the matrix's device in float64 and provides the duals; the
    result is certified for the float64 values of ``cost`` (module docstring).

    ``scaling``: epsilon's factor between phases (the first phase's epsilon is the reduced matrix's largest entry
    over ``scaling``); ``eps_final``: the last phase's epsilon, relative to that largest entry; ``tail``: each phase
    stops once at most this fraction of the rows is still free (the last rounds of an auction phase are long
    price wars between few rows; the CPU finish assigns those rows from the duals in a fraction of the time). Any
    setting gives the optimum: they only move work between the auction and the CPU finish. ``threads``: the CPU
    finish's shortest-path scans split over that many host threads (the same result on any number).
    ``check_every``: the rounds between the host's reads of the free count once few rows are free (``auction_phase``;
    1 on the CPU, where spare bids cost compute; a larger value is meant for GPUs, where the reads set a floor under
    a round's time; not yet timed on one). ``graphs``: the rounds between reads, once the bids are sparse, replay
    CUDA graphs (``TailGraphs``; CUDA only, the same result; they keep a B x B float64 buffer on the device until a
    solve of another size; not yet timed)."""
    check_cost(cost)
    native.check_threads(threads)
    n = cost.shape[0]
    if not scaling > 1:
        raise ValueError(f"scaling must be > 1 (epsilon's factor between phases), got {scaling}")
    if not 0 < eps_final < 1:
        raise ValueError(f"eps_final must lie in (0, 1) (relative to the largest reduced cost), got {eps_final}")
    if not 0 <= tail < 1:
        raise ValueError(f"tail must lie in [0, 1) (the fraction of rows a phase may leave free), got {tail}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an integer >= 1 (rounds between reads of the free count), "
                         f"got {check_every!r}")
    if graphs and cost.device.type != "cuda":
        raise ValueError(f"graphs=True replays CUDA graphs: it needs the cost matrix on a CUDA device, got "
                         f"{cost.device}; use graphs=False")
    if n == 1:
        return (torch.zeros(1, dtype=torch.long, device=cost.device),
                AuctionReport(0, 0, 0, 0, 0.0, True, cost[0].double()))
    cost64 = cost.double()
    reduced = cost64 - cost64.min(dim=1, keepdim=True).values
    col_min = reduced.min(dim=0).values
    reduced -= col_min                      # >= 0; same optimal permutations (each row and column shifted)
    top = float(reduced.max())
    if top == 0.0:                          # cost_ij = a_i + b_j: every permutation costs the same
        return torch.arange(n, device=cost.device), AuctionReport(0, 0, 0, 0, 0.0, True, col_min)
    state = None
    if graphs:
        state = tail_graphs(cost.device, n, check_every)
        reduced = state.cost.copy_(reduced)
    prices = torch.zeros(n, dtype=torch.float64, device=cost.device)
    eps, rounds, phases, stop_free = top / scaling, 0, 0, int(tail * n)
    while True:
        x, r = auction_phase(reduced, prices, eps, max_rounds, stop_free, check_every, graphs=state)
        rounds, phases = rounds + r, phases + 1
        if eps <= top * eps_final:
            break
        eps = max(eps / scaling, top * eps_final)
    del reduced
    # duals of the original matrix: reduced_ij + prices_j = cost_ij - (col_min_j - prices_j) - a row constant
    v = col_min - prices
    bad = (x < 0) | (violations(cost64, x.clamp_min(0), v) > 0)
    freed = int(bad.sum())
    if freed == 0:
        return x, AuctionReport(rounds, phases, 0, 0, 0.0, True, v)
    host = cost.detach().cpu()
    host = np.ascontiguousarray((host if host.dtype in (torch.float32, torch.float64) else host.float()).numpy())
    if native.jv_finish_kernel() is None:  # no C compiler: scipy's exact solver from scratch
        from scipy.optimize import linear_sum_assignment
        perm = torch.from_numpy(np.asarray(linear_sum_assignment(host)[1], dtype=np.int64)).to(cost.device)
        return perm, AuctionReport(rounds, phases, int((x < 0).sum()), n, 0.0, True, None)
    partial = torch.where(bad, -1, x).cpu().numpy()
    perm, v = native.finish_jv(host, partial, v.cpu().numpy(), threads)
    perm, v = torch.from_numpy(perm).to(cost.device), torch.from_numpy(v).to(cost.device)
    worst = float(violations(cost64, perm, v).max())
    return perm, AuctionReport(rounds, phases, int((x < 0).sum()), freed, worst, worst <= CERTIFY_TOL * top, v)
