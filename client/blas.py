"""numpy's BLAS on one thread while a site handles a request.

A site's process holds two thread pools: torch's (OpenMP: the model's operations) and numpy's
BLAS (OpenBLAS: the PRV accountant's dot products). After a call, each pool's threads spin
for a while before they sleep; on two cores, the accountant's BLAS threads spinning took the
core torch's next parallel operation waited for, a stall of 4-16 ms in about one small-model
step in twenty. 120 tabular client-rounds through the real handler in one process: 9.0-9.7 s
with both pools on two threads, 5.5-5.8 s with BLAS on one (its dot products are a few hundred
microseconds either way). Inside a Ray worker both pools are on one thread already (Ray sets
OMP_NUM_THREADS, which OpenBLAS follows); a deployed site's ClientApp process is not.

A speed measure only: where the limit cannot be set (threadpoolctl missing, a library it does
not know) the request runs without it. The numbers change only in their last bits (a BLAS dot
product on two threads sums in two halves), far inside the audit's tolerances. Requests handled
at once in one process (threads) share one limit: set by the first, restored by the last.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

_lock = threading.Lock()
_inside = 0  # requests inside the limit now
_limiter: Any = None  # threadpoolctl's limiter while any request is inside; None when not limited


@lru_cache(maxsize=1)
def _controller() -> Any:
    """threadpoolctl's view of the BLAS libraries the accountant uses (found once: 0.7 ms; a
    limit then costs 16 us): numpy's OpenBLAS, and scipy's own copy, which scipy.special (imported
    by the accountant) loads; a library loaded after this is not limited."""
    from threadpoolctl import ThreadpoolController

    import common.privacy.prv  # noqa: F401  (loads numpy's and scipy's OpenBLAS)

    return ThreadpoolController()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's (and scipy's) BLAS limited to one thread inside; torch's threads are left as they are."""
    global _inside, _limiter
    with _lock:
        if _inside == 0:
            try:
                _limiter = _controller().limit(limits=1, user_api="blas")
            except Exception:  # noqa: BLE001  (speed only: the request runs without the limit)
                _limiter = None
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None
