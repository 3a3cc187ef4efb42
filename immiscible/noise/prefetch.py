"""Hide the assignment behind training: pair the next batch's noise in a background thread.

The exact solve runs on the CPU and releases the GIL (every solver does: the project's ``jv`` kernel and ``lap``'s
are called through ctypes, scipy releases it itself), so while the model trains on batch k a worker thread draws
and assigns the noise of batch k+1. The noise is drawn from the prefetcher's own generator, in batch order, by one
worker: the result is identical to assigning synchronously with that generator (tested), whatever the timing of the
threads, and the training loop's own RNG is never touched from another thread.

    batches = prefetch_assigned_noise(loader, method="exact", generator=torch.Generator().manual_seed(seed))
    for x0, noise in batches:        # noise is already assigned to x0
        ...
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import torch

from immiscible.noise.source import KNN_K, METHODS, draw_noise


def prefetch(fn: Callable, items: Iterable, ahead: int = 1) -> Iterator:
    """Yield ``fn(item)`` for each item, in order, computing the next ``ahead`` results in one background thread."""
    if ahead < 1:
        raise ValueError(f"ahead must be >= 1 (batches assigned in advance), got {ahead}")
    it = iter(items)
    pending: list = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="immiscible-assign") as pool:
        def submit() -> None:
            for item in it:
                pending.append(pool.submit(fn, item))
                return

        for _ in range(ahead):
            submit()
        while pending:
            fut = pending.pop(0)
            submit()
            yield fut.result()


def prefetch_assigned_noise(batches: Iterable, method: str = "exact", generator: torch.Generator | None = None,
                            knn_k: int = KNN_K, ahead: int = 1, key=None, cost: str = "l2",
                            solver: str = "auto") -> Iterator[tuple]:
    """Yield ``(batch, noise)`` with the noise for the next ``ahead`` batches computed in a background thread: each
    is ``draw_noise(x0, generator, method, knn_k=knn_k, cost=cost, solver=solver)``, the training loop's own draw.

    ``key(batch)`` picks the image tensor out of a batch (default: the batch itself, or its first element when it is
    a tuple/list, as a DataLoader of (images, labels) gives)."""
    if method not in METHODS or method == "exact_class":
        raise ValueError(f"unknown noise method {method!r} for prefetching; choose one of "
                         f"{tuple(m for m in METHODS if m != 'exact_class')}")
    if key is None:
        def key(b):
            return b[0] if isinstance(b, (tuple, list)) else b

    def pair(batch):
        return batch, draw_noise(key(batch), generator, method, knn_k=knn_k, cost=cost, solver=solver)[0]
    return prefetch(pair, batches, ahead)
