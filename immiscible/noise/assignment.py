"""Noise assignment: the one line of Immiscible Diffusion (Li et al., NeurIPS 2024, Sec. 3).

Each image x0[i] of a batch is paired with a noise by a linear assignment on the image-noise
distance matrix, so that the total distance is minimal. Only the noise is permuted: images,
labels and captions keep their order.

    noise = assign_noise(x0, torch.randn_like(x0))        # exact, the paper's default

Methods
-------
exact      the optimal permutation for the paper's cost, the unsquared L2 distance between the
           flattened tensors (``cost="l2"``). ``cost="sqeuclidean"`` minimises the sum of squared
           distances instead, whose optimum is the permutation maximising sum_i x0_i . n_perm(i); it is a
           different (but nearly as good) permutation, and it is cheaper to condition.
quantized  the official implementation's variant: L2 distances of 0.1-scaled tensors as an fp16 matrix (about
           100-200 distinct values; within one fp16 step of the official fp16 computation), then solved exactly.
           Ties make it slightly sub-optimal.
greedy     each image, in random order, takes its nearest still-free noise. O(B^2); keeps most but not
           all of the exact reduction (the benchmark notebook measures how much).
knn        not a permutation (see ``knn_noise``): each image draws k noises and keeps the nearest one.

Solvers for ``exact`` (all give an optimal permutation; ``solve_assignment``):
``"jv"``     the project's Jonker-Volgenant kernel (``csrc/jv.c``), written for the compiler's vectorizer and built
             on first use (``immiscible.noise.native``); float32 or float64 costs. Several times faster than ``lap``
             on CIFAR-10 batches of 1024 (the ratios: results/tables/assignment_timing.csv).
``"lap"``    Jonker-Volgenant from the ``lap`` package (float64, scalar C++).
``"scipy"``  ``scipy.optimize.linear_sum_assignment`` on the row/column-reduced cost.
``"auction"`` the certified auction: epsilon-scaled bidding rounds give near-optimal duals, every row whose column is
             not its float64 row minimum under those duals is freed, and ``jv``'s shortest augmenting paths assign the
             freed rows from the duals, which is exact. On the CPU the C kernel (``csrc/jv_impl.h``,
             ``native.solve_auction_cpu``; its solve is faster than ``jv``'s from B = 256 on, the ratios in
             results/tables/assignment_timing.csv; ``threads`` to bid in parallel); on CUDA tensors
             ``immiscible.noise.auction`` in torch, where the B x B matrix stays on the GPU unless the finish needs
             it.
``"auto"``   (default) the GPU auction for CUDA batches of at least ``AUCTION_MIN_BATCH``; else the C ``auction``
             (on ``HOST_THREADS_WITH_GPU`` threads for a CUDA batch on a host of >= 8 cores) where the kernel builds
             (a C compiler is needed), else ``lap`` where it is installed (the optional extra
             ``immiscible[lap]``), else ``scipy``.
Subtracting each row's and then each column's minimum changes every permutation's total by the same
constant, so the optimal permutation is unchanged, but the nearly-constant raw L2 matrix becomes a
well-conditioned one that scipy solves several times faster (``reduce_cost``).
"""
from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from immiscible.noise import native
from immiscible.noise.auction import solve_auction

METHODS = ("exact", "quantized", "greedy")
COSTS = ("l2", "sqeuclidean")
SOLVERS = ("auto", "jv", "lap", "scipy", "auction")
AUCTION_MIN_BATCH = 8192  # "auto" on CUDA from here: on one H200 host (results/device/auction_profile.csv) the C
#                          auction on 4 host threads solves B=4096 in 228 ms against the GPU auction's 282, and
#                          8192 in 1655 ms against 1458
HOST_THREADS_WITH_GPU = 4  # host threads for CUDA batches (the C auction's bids, the JV finish's scans) on hosts of >= 8
#                          cores (same table: 1.3x / 1.4x / 1.6x / 1.7x over one thread at B = 1024 ... 8192; 16
#                          threads are no faster). A CPU training keeps 1 thread: its cores run the model.


def _check_pair(x0: torch.Tensor, noise: torch.Tensor) -> None:
    if not isinstance(x0, torch.Tensor) or not isinstance(noise, torch.Tensor):
        raise TypeError(f"x0 and noise must be torch tensors, got {type(x0).__name__} and {type(noise).__name__}")
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}; "
                         "draw the noise with torch.randn_like(x0)")
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"empty batch: x0 has shape {tuple(x0.shape)}; the assignment needs at least one image")


def image_noise_distance(x0: torch.Tensor, noise: torch.Tensor, cost: str = "l2",
                         dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, B) matrix of distances between flattened images x0[i] and noises noise[j].

    ``cost="l2"`` gives ||x0_i - n_j||, ``cost="sqeuclidean"`` gives ||x0_i - n_j||^2. The matrix is one
    GEMM; ``dtype`` (default: float32, or the input dtype on CUDA when it is fp16/bf16) sets its precision.
    """
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; choose one of {COSTS}")
    if dtype is None:
        low = x0.dtype in (torch.float16, torch.bfloat16) and x0.is_cuda
        dtype = x0.dtype if low else torch.float32
    a = x0.reshape(x0.shape[0], -1).to(dtype)        # (B, D)
    b = noise.reshape(noise.shape[0], -1).to(dtype)  # (B, D)
    # The cross term is the GEMM (in ``dtype``); norms and the sum in fp32 so that fp16 cannot overflow. In place
    # after the one (B, B) sum of the norms: the same roundings as ``norms - 2.0 * cross`` (doubling is exact), with
    # two fewer (B, B) temporaries, which matters at large B (docs/results.md, assignment timing).
    cross = (a @ b.T).float()                                                           # (B, B)
    sq = a.float().pow(2).sum(1, keepdim=True) + b.float().pow(2).sum(1)[None, :]
    sq.sub_(cross.mul_(2.0)).clamp_min_(0)
    return sq if cost == "sqeuclidean" else sq.sqrt_()


def reduce_cost(cost: np.ndarray) -> np.ndarray:
    """Subtract row minima, then column minima: every permutation's total shifts by the same constant."""
    c = cost - cost.min(axis=1, keepdims=True)
    c -= c.min(axis=0, keepdims=True)
    return c


@functools.lru_cache(maxsize=1)
def _lapjv_kernel():
    """``lap``'s C kernel ``lapjv_internal(n, double **rows, int *x, int *y)``, called through ctypes, or None.

    ``lap.lapjv`` (0.5.13) holds the GIL while it solves, so a solve in a background thread would stall the training
    thread for its whole duration. A ctypes call releases the GIL. The C++ symbol name encodes the argument types
    (unsigned int, double**, int*, int*), so a build with other types simply has no such symbol and ``lap.lapjv``
    is used instead."""
    try:
        from lap import _lapjv
        kernel = getattr(ctypes.CDLL(_lapjv.__file__), "_Z14lapjv_internaljPPdPiS1_")
    except (ImportError, OSError, AttributeError):
        return None
    kernel.restype = ctypes.c_int
    kernel.argtypes = (ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    return kernel


@functools.lru_cache(maxsize=1)
def _has_lap() -> bool:
    """Whether the optional ``lap`` package is installed (the core install needs only torch, numpy and scipy)."""
    import importlib.util
    return importlib.util.find_spec("lap") is not None


def _solve_lapjv(cost: np.ndarray) -> np.ndarray:
    """Jonker-Volgenant on a C-contiguous float64 (n, n) matrix, n >= 2, without holding the GIL when possible."""
    kernel = _lapjv_kernel()
    if kernel is None:
        if not _has_lap():
            raise ModuleNotFoundError("solver='lap' needs the optional package lap: pip install 'immiscible[lap]', "
                                      "or use solver='jv' or 'scipy'")
        import lap
        return np.asarray(lap.lapjv(cost)[1], dtype=np.int64)
    n = cost.shape[0]
    rows = cost.ctypes.data + cost.strides[0] * np.arange(n, dtype=np.uintp)  # the kernel's double* per row
    x, y = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    status = kernel(n, rows.ctypes.data, x.ctypes.data, y.ctypes.data)
    if status != 0:
        raise MemoryError(f"lap's solver failed (status {status}) on a {n}x{n} matrix: out of memory?")
    return x.astype(np.int64)


def solve_assignment(cost: np.ndarray, solver: str = "auto", threads: int = 1) -> np.ndarray:
    """Optimal permutation ``perm`` of a square cost matrix: row i is matched to column perm[i].

    float16/float32 costs are solved in float32 by ``jv`` (``lap`` and ``scipy`` convert to float64, which
    changes no value). Every solver releases the GIL while it solves, so a solve in a background thread lets
    Python run meanwhile. ``threads``: the C auction's bidding threads, and for ``auction`` and ``jv`` the threads
    that share each shortest-path scan from ``native.SCAN_MIN_N`` columns on (the same result on any number;
    ``lap`` and ``scipy`` use one)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    cost = np.asarray(cost)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"the cost matrix must be square, got shape {cost.shape}")
    low = cost.dtype in (np.float16, np.float32)
    cost = np.ascontiguousarray(cost, dtype=np.float32 if low else np.float64)
    if cost.shape[0] <= 1:
        return np.zeros(cost.shape[0], dtype=np.int64)
    low_end, high_end = float(cost.min()), float(cost.max())  # NaN if any entry is NaN; no (n, n) temporary
    largest = max(-low_end, high_end)
    if not (np.isfinite(low_end) and np.isfinite(high_end)):
        raise ValueError("the cost matrix has NaN or inf entries: check the inputs for non-finite values")
    kernel = largest < native.MAX_COST and native.auction_kernel() is not None
    if solver == "auto":
        solver = "auction" if kernel else "lap" if _has_lap() else "scipy"
    if solver == "auction":
        if kernel:
            return native.solve_auction_cpu(cost, threads)[0]
        return solve_auction(torch.from_numpy(cost))[0].numpy()  # torch's, finished by scipy
    if solver == "jv":
        if largest >= native.MAX_COST:
            raise ValueError(f"costs of magnitude {largest:.3g} are too large for solver='jv' (limit "
                             f"{native.MAX_COST:g}); rescale the costs or use solver='lap'")
        return native.solve_jv(cost, check=False, threads=threads)  # checked above
    cost = cost.astype(np.float64, copy=False)
    if solver == "lap":
        return _solve_lapjv(cost)
    _, col = linear_sum_assignment(reduce_cost(cost))
    return np.asarray(col, dtype=np.int64)


def greedy_permutation(cost: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows in a seeded random order each take their cheapest still-free column (approximate)."""
    n = cost.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    taken = np.zeros(n, dtype=bool)
    perm = np.empty(n, dtype=np.int64)
    big = np.inf
    for i in order:
        j = int(np.argmin(np.where(taken, big, cost[i])))
        perm[i] = j
        taken[j] = True
    return perm


def assignment_permutation(x0: torch.Tensor, noise: torch.Tensor, method: str = "exact", cost: str = "l2",
                           solver: str = "auto", groups: torch.Tensor | None = None) -> torch.Tensor:
    """The permutation ``perm`` (LongTensor, (B,), on x0's device) such that (x0[i], noise[perm[i]]) is the
    assigned pairing. ``groups`` (e.g. class labels, shape (B,)) restricts the assignment to noises within the
    same group, which keeps the noise marginal of every class Gaussian (C2OT-style class blocking)."""
    _check_pair(x0, noise)
    if method not in METHODS:
        hint = " (KNN is not a permutation: call knn_noise)" if method == "knn" else ""
        raise ValueError(f"unknown assignment method {method!r}; choose one of {METHODS}{hint}")
    B = x0.shape[0]
    if groups is not None:
        groups = torch.as_tensor(groups)
        if groups.shape != (B,):
            raise ValueError(f"groups must have shape ({B},) to match the batch, got {tuple(groups.shape)}")
        perm = torch.empty(B, dtype=torch.long)
        for g in torch.unique(groups.cpu()):
            idx = (groups.cpu() == g).nonzero().flatten()
            sub = assignment_permutation(x0[idx.to(x0.device)], noise[idx.to(x0.device)], method, cost, solver)
            perm[idx] = idx[sub.cpu()]
        return perm.to(x0.device)
    if B == 1:
        return torch.zeros(1, dtype=torch.long, device=x0.device)
    with torch.no_grad():
        if method == "quantized":
            # Official variant: L2 of 0.1-scaled tensors as an fp16 matrix, solved as the official code solves it
            # (scipy on the raw fp16 matrix). The official code casts the scaled inputs to fp16 and lets the GPU
            # compute the L2 in fp16; here the L2 is computed in fp32 and rounded to fp16. The two matrices agree up
            # to one fp16 step per entry (tests/test_assignment.py: at most one step, on about 1% of the entries of
            # pixel batches, against the fp16-input L2 computed exactly), so the permutation is the official one
            # wherever the matrices agree, and otherwise the optimum of a matrix one rounding step from it.
            dist = image_noise_distance(x0 * 0.1, noise * 0.1, "l2").to(torch.float16)
            perm = np.asarray(linear_sum_assignment(dist.float().cpu().numpy())[1], dtype=np.int64)
        elif method == "exact" and (solver == "auction" or solver == "auto" and x0.is_cuda
                                    and B >= AUCTION_MIN_BATCH):
            # On the device: fp32 distances (one fp32 GEMM, whatever the inputs' precision), the certified auction
            return solve_auction(image_noise_distance(x0, noise, cost, dtype=torch.float32),
                                 threads=host_threads(x0))[0]
        else:
            dist = image_noise_distance(x0, noise, cost).float().cpu().numpy()  # fp32: what the GEMM computed
            perm = (solve_assignment(dist, solver, host_threads(x0)) if method == "exact"
                    else greedy_permutation(dist))
    return torch.from_numpy(perm).to(x0.device)


def host_threads(x0: torch.Tensor) -> int:
    """The host threads of a batch's solve (the C auction's bids, the JV finish's scans): ``HOST_THREADS_WITH_GPU``
    for a CUDA batch on a host of at least 8 cores (they are idle while the GPU trains), else 1."""
    return HOST_THREADS_WITH_GPU if x0.is_cuda and (os.cpu_count() or 1) >= 8 else 1


def assign_noise(x0: torch.Tensor, noise: torch.Tensor, method: str = "exact", **options) -> torch.Tensor:
    """Return ``noise`` re-ordered along dim 0 so that pairing (x0[i], out[i]) minimises the total image-noise
    distance (Immiscible Diffusion's linear assignment). Same shape, dtype and device; inputs untouched.

    ``options`` go to :func:`assignment_permutation` (``cost``, ``solver``, ``groups``)."""
    perm = assignment_permutation(x0, noise, method=method, **options)
    return noise[perm]


def knn_noise(x0: torch.Tensor, k: int, generator: torch.Generator | None = None,
              chunk: int = 256) -> torch.Tensor:
    """KNN noise ("Improved Immiscible Diffusion", arXiv 2505.18521): for each image draw ``k`` Gaussian noises
    and keep the nearest one (L2). k=1 is plain Gaussian noise. Unlike a permutation, this shifts the noise
    marginal slightly toward the data (the kept noise is shorter and correlated with its image)."""
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch tensor, got {type(x0).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (number of candidate noises per image), got {k!r}")
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"empty batch: x0 has shape {tuple(x0.shape)}")
    B = x0.shape[0]
    shape = (B, k) + tuple(x0.shape[1:])
    gen_device = generator.device if generator is not None else x0.device
    cand = torch.randn(shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    if k == 1:
        return cand[:, 0]
    # ||c - x||^2 = ||c||^2 - 2 c.x + ||x||^2; the last term is the same for all k candidates of an image, so the
    # nearest candidate is argmin(||c||^2 - 2 c.x): one batched GEMM, in fp16/bf16 on CUDA when x0 is.
    work = x0.dtype if (x0.is_cuda and x0.dtype in (torch.float16, torch.bfloat16)) else torch.float32
    best = torch.empty(B, dtype=torch.long, device=x0.device)
    with torch.no_grad():
        for s in range(0, B, chunk):  # chunks bound the (chunk, k, D) temporaries
            c = cand[s:s + chunk].reshape(-1, k, cand[0, 0].numel()).to(work)   # (b, k, D)
            x = x0[s:s + chunk].reshape(len(c), -1, 1).to(work)                   # (b, D, 1)
            # the squared norms in one read of the candidates (fp32 accumulation), the dot products in one GEMM
            sq = torch.linalg.vector_norm(c, dim=-1, dtype=torch.float32).square_()  # (b, k)
            score = sq - 2 * torch.bmm(c, x).squeeze(-1).float()                   # (b, k)
            best[s:s + chunk] = score.argmin(1)
    return cand[torch.arange(B, device=x0.device), best]


def mean_pair_distance(x0: torch.Tensor, noise: torch.Tensor) -> float:
    """Mean L2 distance between x0[i] and noise[i] over the batch (the slides' 'average image-noise distance')."""
    return float((x0.reshape(x0.shape[0], -1).double() - noise.reshape(noise.shape[0], -1).double())
                 .norm(dim=1).mean())
