"""The project's exact assignment kernel (``csrc/jv.c``), compiled on first use and loaded through ctypes.

The kernel is plain C written for the compiler's auto-vectorizer, so it is built on the machine that runs it,
with ``-march=native``: one C compiler (``$CC``, else ``cc``/``gcc``/``clang``), no build step at install, about
a second once. The shared library is cached under ``$IMMISCIBLE_CACHE`` (default ``~/.cache/immiscible``), keyed
by the source, the flags, the compiler and the CPU, so a home directory shared between machines stays correct.

A cached shared object is code this process will run, so the cache is guarded: the folder must belong to the user
and be writable by no one else (it is created 0700; otherwise the kernel is refused, with a message saying what to
do); each build records its key and the SHA-256 of the library it produced beside it, and a library that does not
match its record is rebuilt, never loaded. A flag set that failed to compile is recorded too (``jv-<key>.failed``,
with the compiler's message) and not retried at every start; a new compiler or source changes the key and retries.
Where no compiler works, ``jv_kernel`` returns None with a warning, and ``solve_assignment`` uses ``lap`` (or scipy)
instead. Set ``IMMISCIBLE_NATIVE=0`` to never build it.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

MAX_COST = 1e300  # the kernel's "infinity" is DBL_MAX / 4: every cost and price stays far below it
SCAN_MIN_N = 2048  # csrc/jv.c's JV_SCAN_MIN_N: a shortest-path scan is split over threads from this many columns on
SOURCE_DIR = Path(__file__).parent / "csrc"
SOURCES = ("jv.c", "jv_impl.h")
# Each tuple is tried in order; the first that compiles is used (the extra x86 flag is gcc/clang-specific).
_FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"),  # -fopenmp: the auction's bids on threads
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native", "-mprefer-vector-width=512"),
    ("-O3", "-march=native"),
    ("-O3",),
)
# Safe for this kernel: it never creates inf/NaN (its "infinity" is finite) and the caller rejects them.
_COMMON = ("-fno-trapping-math", "-fno-signed-zeros", "-ffinite-math-only", "-fno-math-errno", "-shared", "-fPIC")


def cache_dir() -> Path:
    return Path(os.environ.get("IMMISCIBLE_CACHE") or Path.home() / ".cache" / "immiscible")


def _check_private(path: Path, what: str) -> None:
    """Refuse a cache file or folder that another user owns or that others may write (it would inject code)."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise RuntimeError(f"the kernel cache {what} {path} belongs to another user (uid {st.st_uid}): set "
                           "IMMISCIBLE_CACHE to a folder of your own")
    if st.st_mode & 0o022:
        raise RuntimeError(f"the kernel cache {what} {path} is writable by other users (mode {oct(st.st_mode & 0o777)})"
                           ": a library placed there would run in this process. Run `chmod go-w` on it, or set "
                           "IMMISCIBLE_CACHE to a private folder")


def private_cache_dir() -> Path:
    """The cache folder, created 0700 if absent, checked private."""
    path = cache_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(path, "folder")
    return path


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its feature flags (Linux), else the platform string."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.platform() + platform.processor()


def _build_key(cc: str, flags: tuple[str, ...]) -> str:
    """SHA-256 of what the library is built from: the sources, the flags, the compiler's version, the CPU."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((SOURCE_DIR / name).read_bytes())
    h.update("\0".join([*flags, *_COMMON, version, _cpu_id(), platform.machine()]).encode())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to ``path`` (0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _verified(library: Path, record: Path, key: str) -> bool:
    """Whether ``library`` is what the build recorded in ``record`` for ``key`` (and is private)."""
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    _check_private(library, "file")
    return saved.get("key") == key and saved.get("sha256") == _sha256(library)


def build(cc: str | None = None) -> Path:
    """Compile ``csrc/jv.c`` (or reuse the verified cached build) and return the shared library's path.
    Raises RuntimeError, with the compiler's message, when no compiler or no flag set works, or when the cache is
    not private."""
    cc = cc or _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc/clang); the exact solver falls back to `lap`")
    folder = private_cache_dir()
    errors = []
    for flags in _FLAG_SETS:
        key = _build_key(cc, flags)
        library, record, failed = (folder / f"jv-{key[:16]}{suffix}" for suffix in (".so", ".json", ".failed"))
        if failed.exists():
            errors.append(f"{' '.join(flags)}: failed before, not retried (its message is in {failed}; delete "
                          "the file to retry)")
            continue
        if library.exists():
            if _verified(library, record, key):
                return library
            if record.exists():  # no record: built by an older version; rebuilt quietly
                warnings.warn(f"immiscible: {library} does not match the hash recorded when it was built; "
                              "rebuilding it", RuntimeWarning, stacklevel=2)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder, prefix=".tmp-")
        os.close(fd)
        cmd = [cc, *flags, *_COMMON, "-o", tmp, str(SOURCE_DIR / "jv.c")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            _write_private(record, json.dumps({"key": key, "sha256": _sha256(Path(tmp)), "flags": list(flags),
                                               "compiler": cc}, indent=1) + "\n")
            os.replace(tmp, library)  # atomic: concurrent builders (DataLoader workers, ranks) never see half a file
            return library
        os.unlink(tmp)
        message = f"{' '.join(cmd)}\n{proc.stderr.strip()}"
        _write_private(failed, message + "\n")
        errors.append(message)
    raise RuntimeError("could not compile the assignment kernel:\n" + "\n\n".join(errors))


def _library():
    """The built kernel library (ctypes), or None (with a warning saying why) when it cannot be built here. Not
    cached itself: ``jv_kernel`` and ``jv_finish_kernel`` are (clearing theirs rebuilds or reloads)."""
    if os.environ.get("IMMISCIBLE_NATIVE", "1") == "0":
        return None
    try:
        return ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as err:
        warnings.warn(f"immiscible: the native assignment kernel is unavailable, using `lap` (or scipy without "
                      f"it) ({err})", RuntimeWarning, stacklevel=5)
        return None


def _functions(prefix: str, argtypes: tuple) -> dict | None:
    lib = _library()
    if lib is None:
        return None
    kernels = {}
    for dtype, name in ((np.float32, f"{prefix}_float"), (np.float64, f"{prefix}_double")):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = argtypes
        kernels[dtype] = fn
    return kernels


@functools.lru_cache(maxsize=1)
def jv_kernel():
    """``{np.float32: fn, np.float64: fn}``, each ``fn(n, cost*, x*, y*, v*, arr_passes, threads) -> int``, or None
    (with a warning saying why) when the kernel cannot be built here."""
    return _functions("jv_solve", (ctypes.c_int,) + (ctypes.c_void_p,) * 4 + (ctypes.c_int, ctypes.c_int))


@functools.lru_cache(maxsize=1)
def jv_finish_kernel():
    """``{np.float32: fn, np.float64: fn}``, each ``fn(n, cost*, x*, y*, v*, threads) -> int`` (the shortest
    augmenting paths from a warm start), or None when the kernel cannot be built here."""
    return _functions("jv_finish", (ctypes.c_int,) + (ctypes.c_void_p,) * 4 + (ctypes.c_int,))


@functools.lru_cache(maxsize=1)
def auction_kernel():
    """``{np.float32: fn, np.float64: fn}``, each ``fn(n, cost*, x*, y*, v*, eps_final, scaling, stop_free, threads,
    stats*) -> int`` (the certified auction with the JV finish), or None when the kernel cannot be built here."""
    kernels = _functions("auction_solve", (ctypes.c_int,) + (ctypes.c_void_p,) * 4
                         + (ctypes.c_double, ctypes.c_double, ctypes.c_int, ctypes.c_int, ctypes.c_void_p))
    return kernels


def check_threads(threads) -> None:
    """The documented error for a bad thread count."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")


def solve_auction_cpu(cost: np.ndarray, threads: int = 1, eps_final: float = 1e-4, scaling: float = 8.0,
                      tail: float = 1 / 32) -> tuple[np.ndarray, np.ndarray, dict]:
    """The certified auction in C (``csrc/jv_impl.h``, ``auction_solve``): Jacobi bidding rounds with epsilon
    scaling, each phase stopped at ``tail`` of the rows free, then the float64 certificate on the duals and the JV
    shortest augmenting paths for the rows that fail it, from those duals. Optimal, like ``solve_jv``.
    ``threads``: a round's bids computed on that many threads (OpenMP, where the build has it). ``cost``:
    C-contiguous float32/float64 (n, n), finite, n >= 1. Returns (permutation, column duals, stats)."""
    kernels = auction_kernel()
    if kernels is None:
        raise RuntimeError("the native assignment kernel is unavailable here (see the warning above)")
    check_threads(threads)
    n = cost.shape[0]
    x, y = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    v, stats = np.empty(n, dtype=np.float64), np.zeros(7, dtype=np.int32)
    status = kernels[cost.dtype.type](n, cost.ctypes.data, x.ctypes.data, y.ctypes.data, v.ctypes.data,
                                      float(eps_final), float(scaling), int(tail * n), threads, stats.ctypes.data)
    if status != 0:
        raise MemoryError(f"the assignment kernel ran out of memory on a {n}x{n} matrix")
    keys = ("bids_or_rounds", "phases", "unassigned", "freed", "auction_us", "certificate_us", "finish_us")
    return x.astype(np.int64), v, dict(zip(keys, stats.tolist()))


def finish_jv(cost: np.ndarray, x: np.ndarray, v: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Complete a partial assignment optimally: ``x`` (n,) int, row -> column or -1, ``v`` (n,) float64 column
    prices such that every assigned row's column attains min_j (cost_ij - v_j) in float64 (the caller checks it;
    ``immiscible.noise.auction`` does). ``cost``: C-contiguous float32/float64 (n, n), finite. Returns the optimal
    permutation and the final column prices (for which every row's column attains its row minimum); the GIL is
    released while it runs. ``threads``: each shortest-path scan split over that many threads (the same result)."""
    kernels = jv_finish_kernel()
    if kernels is None:
        raise RuntimeError("the native assignment kernel is unavailable here (see the warning above)")
    check_threads(threads)
    n = cost.shape[0]
    x = np.ascontiguousarray(x, dtype=np.int32).copy()
    v = np.ascontiguousarray(v, dtype=np.float64).copy()
    y = np.full(n, -1, dtype=np.int32)
    assigned = x >= 0
    if len(np.unique(x[assigned])) != int(assigned.sum()):
        raise ValueError("finish_jv: two rows share a column in the partial assignment")
    y[x[assigned]] = np.nonzero(assigned)[0]
    status = kernels[cost.dtype.type](n, cost.ctypes.data, x.ctypes.data, y.ctypes.data, v.ctypes.data, threads)
    if status != 0:
        raise MemoryError(f"the assignment kernel ran out of memory on a {n}x{n} matrix")
    return x.astype(np.int64), v


def solve_jv(cost: np.ndarray, arr_passes: int = 2, check: bool = True, threads: int = 1) -> np.ndarray:
    """Optimal permutation of a C-contiguous float32/float64 (n, n) matrix, n >= 1. The GIL is released while it
    solves. ``arr_passes``: passes of augmenting row reduction before the shortest paths (2, as in
    Jonker-Volgenant; any value is exact). ``check=False`` skips the input checks (for ``solve_assignment``, which
    has made them): the kernel needs finite costs below 1e300 in magnitude. ``threads``: each shortest-path scan of
    the last step split over that many threads (OpenMP; the same result on any number)."""
    kernels = jv_kernel()
    if kernels is None:
        raise RuntimeError("the native assignment kernel is unavailable here (see the warning above); "
                           "use solver='lap' or solver='scipy'")
    if check:
        if not (isinstance(cost, np.ndarray) and cost.dtype.type in kernels and cost.flags.c_contiguous
                and cost.ndim == 2 and cost.shape[0] == cost.shape[1] and cost.shape[0] >= 1):
            raise ValueError("solve_jv needs a square, non-empty, C-contiguous float32 or float64 array; "
                             "solve_assignment converts any matrix")
        largest = float(np.abs(cost).max())
        if not largest < MAX_COST:  # also NaN
            raise ValueError(f"solve_jv needs finite costs below {MAX_COST:g} in magnitude, got {largest:.3g}")
    check_threads(threads)
    n = cost.shape[0]
    x, y, v = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32), np.empty(n, dtype=np.float64)
    status = kernels[cost.dtype.type](n, cost.ctypes.data, x.ctypes.data, y.ctypes.data, v.ctypes.data, arr_passes,
                                      threads)
    if status != 0:
        raise MemoryError(f"the assignment kernel ran out of memory on a {n}x{n} matrix")
    return x.astype(np.int64)
