"""numpy's BLAS on one thread while a site handles a request (client/blas.py): set and given
back, shared by requests handled at once, and never a reason for a request to fail."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from client import blas


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_overlapping_requests_share_the_limit_and_the_last_gives_the_threads_back() -> None:
    """Requests overlapping in one process (test_site_guarantee runs four at once) share one
    limit: the first sets it, a later one leaving does not lift it under the others, and the last
    gives back the threads there were before the first, not the one thread the first had set.
    (Overlapped here in one thread: OpenBLAS took a limit set from a worker thread in one
    process and not in another, so the check reads it where it was set.)"""
    with threadpool_limits(2, user_api="blas"):
        first, second = blas.one_blas_thread(), blas.one_blas_thread()
        first.__enter__()
        second.__enter__()
        assert _blas_threads() == {1}
        first.__exit__(None, None, None)  # the first leaves while the second is still inside
        assert _blas_threads() == {1}
        second.__exit__(None, None, None)
        assert _blas_threads() == {2} and blas._inside == 0


def test_where_the_limit_cannot_be_set_the_request_runs_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("no threadpoolctl here")

    monkeypatch.setattr(blas, "_controller", broken)
    with threadpool_limits(2, user_api="blas"), blas.one_blas_thread():
        assert _blas_threads() == {2}
    ran = []
    with blas.one_blas_thread():  # and the next request tries again
        ran.append(1)
    assert ran == [1]


def test_the_accountants_scipy_blas_is_limited_too() -> None:
    """scipy keeps its own OpenBLAS, loaded by scipy.special, which the accountant imports."""
    with threadpool_limits(2, user_api="blas"), blas.one_blas_thread():
        libraries = [lib["filepath"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert any("scipy.libs" in path for path in libraries) and _blas_threads() == {1}
