"""The statistics of a one-run privacy audit: an epsilon **lower bound** from canary guesses.

Steinke, Nasr & Jagielski (2023), "Privacy Auditing with One (1) Training Run", NeurIPS 36
(arXiv:2305.08846). ``m`` canaries are each included in the training data independently with
probability 1/2 (the inclusion bits are the site's secret). After training, an auditor scores
every canary from what was released, guesses "included" for the ``k_plus`` highest scores and
"excluded" for the ``k_minus`` lowest, and abstains on the rest: ``r = k_plus + k_minus``
guesses, of which ``v`` are right.

**The bound** (their main theorem for approximate DP, Section 3 of arXiv:2305.08846; the p-value
as their Appendix D computes it). If the training run is
(epsilon, delta)-DP with respect to each canary, then for every ``v``

    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m delta max_{1 <= i <= v} P[v > Binomial(r, q) >= v - i] / i,

with ``q = e^epsilon / (1 + e^epsilon)``, the accuracy of epsilon-DP randomized response. The
right-hand side is the p-value of observing ``v`` correct guesses under the hypothesis "the run is
(epsilon, delta)-DP"; the audited lower bound at confidence ``1 - p`` is the largest epsilon whose
p-value is below ``p``: the run is not (epsilon, delta)-DP for any smaller epsilon, unless an event
of probability ``p`` happened.

Trying several guess counts ``(k_plus, k_minus)`` on the same scores and keeping the best would
be a data-dependent choice; :func:`audit_bound` tries a fixed grid and divides ``p`` by its size
(Bonferroni), so the confidence holds for the grid as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


def _check(m: int, r: int, v: int, delta: float) -> None:
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1], got {delta}")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses right] under "(epsilon, delta)-DP", by the theorem above."""
    _check(m, r, v, delta)
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[Bin = v-1], P[Bin = v-2], ..., P[Bin = 0]
    ratios = np.cumsum(pmf) / np.arange(1, v + 1)  # P[v > Bin >= v - i] / i for i = 1..v
    return min(beta + 2 * m * delta * float(ratios.max()), 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, *, p: float = 0.05) -> float:
    """The largest epsilon the audit rules out at confidence ``1 - p`` (0 when it rules out none)."""
    _check(m, r, v, delta)
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    low, high = 0.0, 1.0  # p_value(low) < p <= p_value(high)
    while p_value(m, r, v, high, delta) < p:
        low, high = high, 2 * high
        if high > 1e4:
            return math.inf  # every guess right and r large: no finite epsilon fits
    for _ in range(60):
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < p:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class AuditResult:
    epsilon: float  # the lower bound, at confidence 1 - p, Bonferroni-corrected over the grid
    k_plus: int  # guesses "included" that gave it
    k_minus: int  # guesses "excluded"
    correct: int
    canaries: int
    p: float
    grid: int  # how many (k_plus, k_minus) pairs were tried


def guesses(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int) -> tuple[int, int]:
    """(r, v): guess "included" on the ``k_plus`` highest scores and "excluded" on the
    ``k_minus`` lowest; how many guesses, and how many are right."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and inclusion bits {included.shape} must be equal 1-D arrays")
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > len(scores):
        raise ValueError(f"k_plus={k_plus} and k_minus={k_minus} must be >= 0 and sum to at most {len(scores)}")
    order = np.argsort(scores, kind="stable")
    low, high = order[:k_minus], order[len(order) - k_plus :] if k_plus else order[:0]
    return k_plus + k_minus, int(included[high].sum() + (~included[low]).sum())


def audit_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    p: float = 0.05,
    grid: Sequence[tuple[int, int]] | None = None,
) -> AuditResult:
    """The best lower bound over ``grid`` (default: k_plus = k_minus in 1%, 2%, 5%, 10%, 20%,
    50% of the canaries), each at confidence ``1 - p / len(grid)``."""
    m = len(scores)
    if grid is None:
        grid = sorted({(max(1, int(f * m / 2)),) * 2 for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5) if m >= 2})
    if not grid:
        raise ValueError("no guesses to make: need at least 2 canaries")
    best = AuditResult(0.0, 0, 0, 0, m, p, len(grid))
    for k_plus, k_minus in grid:
        r, v = guesses(scores, included, k_plus, k_minus)
        eps = epsilon_lower_bound(m, r, v, delta, p=p / len(grid))
        if eps > best.epsilon:
            best = AuditResult(eps, k_plus, k_minus, v, m, p, len(grid))
    return best
