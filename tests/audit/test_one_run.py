"""The one-run audit's statistics (Steinke, Nasr & Jagielski 2023) against a slow, exact
reference, and its honesty and power on guessers whose privacy is known."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.one_run import audit_bound, epsilon_lower_bound, guesses, p_value


def _reference_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The theorem's bound in exact rational arithmetic: binomial terms by math.comb, the
    maximum over i by a plain loop (slow, obviously the formula)."""
    q = Fraction(1) / (1 + Fraction(math.exp(-epsilon)))

    def pmf(k: int) -> Fraction:
        return math.comb(r, k) * q**k * (1 - q) ** (r - k)

    tail = sum((pmf(k) for k in range(v, r + 1)), Fraction(0))
    best = Fraction(0)
    for i in range(1, v + 1):
        best = max(best, sum((pmf(k) for k in range(v - i, v)), Fraction(0)) / i)
    return min(float(tail + 2 * m * Fraction(delta) * best), 1.0)


@settings(max_examples=80, deadline=None)
@given(
    r=st.integers(1, 40),
    data=st.data(),
    epsilon=st.floats(0, 6),
    delta=st.sampled_from([0.0, 1e-5, 1e-3, 0.05]),
)
def test_the_p_value_is_the_theorems_bound(r, data, epsilon, delta):
    v = data.draw(st.integers(0, r))
    m = data.draw(st.integers(r, 3 * r))
    assert p_value(m, r, v, epsilon, delta) == pytest.approx(_reference_p_value(m, r, v, epsilon, delta), rel=1e-9,
                                                             abs=1e-12)  # fmt: skip


def test_the_bound_is_the_largest_epsilon_ruled_out():
    m, r, v, delta = 1000, 200, 170, 1e-5
    eps = epsilon_lower_bound(m, r, v, delta, p=0.05)
    assert 0 < eps < 10
    assert p_value(m, r, v, eps, delta) < 0.05 <= p_value(m, r, v, eps + 1e-6, delta)


def test_no_evidence_gives_no_bound():
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0  # a coin's accuracy rules nothing out
    assert epsilon_lower_bound(1000, 0, 0, 1e-5) == 0.0


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 3.0])
def test_the_bound_stays_below_the_truth_for_randomized_response(epsilon):
    """Each canary's guess is right with e^eps / (1 + e^eps), exactly what an eps-DP
    mechanism allows at most: over 200 audits the 95% bound exceeds eps in at most ~5%."""
    rng = np.random.default_rng(0)
    q = 1 / (1 + math.exp(-epsilon))
    over = sum(epsilon_lower_bound(1000, 500, int(rng.binomial(500, q)), 0.0) > epsilon for _ in range(200))
    assert over <= 20  # 5% of 200 is 10; binomial slack


def test_a_perfect_white_box_guesser_gives_a_clear_positive_bound():
    """DP off: the auditor sees each canary's presence exactly (the power requirement)."""
    rng = np.random.default_rng(1)
    included = rng.random(1000) < 0.5
    scores = included + rng.normal(0, 0.01, 1000)
    result = audit_bound(scores, included, delta=1e-5)
    assert result.epsilon >= 1 and result.correct == result.k_plus + result.k_minus
    assert result.grid == 6 and result.canaries == 1000


def test_guesses_count_the_top_and_bottom_scores():
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2])
    included = np.array([True, False, True, False, False])
    assert guesses(scores, included, 2, 2) == (4, 3)  # top 0.9 (in), 0.8 (out); bottom 0.1, 0.2 (out)
    assert guesses(scores, included, 0, 1) == (1, 1)
    with pytest.raises(ValueError, match="sum to at most 5"):
        guesses(scores, included, 3, 3)
