"""numpy's BLAS on one thread while a site handles a request.

A site's process holds two thread pools: torch's (OpenMP: the model's operations) and numpy's
BLAS (OpenBLAS: the PRV accountant's dot products). After a call, each pool's threads spin
for a while before they sleep; on two cores, the accountant's BLAS threads spinning took the
core torch's next parallel operation waited for, a stall of 4-16 ms in about one small-model
step in twenty. 120 tabular client-rounds through the real handler in one process: 9.0-9.5 s
with both pools on two threads, 5.4 s with BLAS on one (its dot products are a few hundred
microseconds either way). Inside a Ray worker both pools are on one thread already (Ray sets
OMP_NUM_THREADS, which OpenBLAS follows); a deployed site's ClientApp process is not.

The numbers change only in their last bits (a BLAS dot product on two threads sums in two
halves): far inside the audit's tolerances.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _controller() -> Any:
    """threadpoolctl's view of the libraries loaded (found once: 0.7 ms; a limit then costs 16 us)."""
    import numpy  # noqa: F401  (its BLAS must be loaded to be found)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS limited to one thread inside; torch's threads are left as they are."""
    with _controller().limit(limits=1, user_api="blas"):
        yield
