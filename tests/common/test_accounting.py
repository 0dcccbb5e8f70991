"""Accounting: epsilon composes every step, never decreases, matches a fresh accountant and an
independent implementation; calibrated noise never overshoots the target."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant

from common.errors import ConfigError
from common.privacy.accounting import Accountant, DpSgdEvent, calibrate_noise, epsilon

DELTA = 1e-5

rounds_st = st.lists(
    st.builds(
        DpSgdEvent,
        noise_multiplier=st.floats(0.6, 8.0),
        sample_rate=st.floats(0.01, 1.0),
        steps=st.integers(1, 40),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=15, deadline=None)
@given(rounds_st)
def test_epsilon_never_decreases_across_rounds(history: list[DpSgdEvent]) -> None:
    spent = [epsilon(history[: r + 1], delta=DELTA) for r in range(len(history))]
    assert all(b >= a - 1e-9 for a, b in zip(spent, spent[1:], strict=False))


@settings(max_examples=10, deadline=None)
@given(rounds_st)
def test_history_epsilon_equals_a_fresh_accountant_stepped_through_every_step(history: list[DpSgdEvent]) -> None:
    fresh = PRVAccountant()
    for event in history:
        for _ in range(event.steps):
            fresh.step(noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate)
    # The same computation on a domain widened to a fast FFT length (common.privacy.prv): the
    # PRV's tails beyond the stock domain are kept instead of cut, a change far below 1e-6.
    assert epsilon(history, delta=DELTA) == pytest.approx(fresh.get_epsilon(delta=DELTA, eps_error=0.01), rel=1e-6)


def test_empty_history_spent_nothing() -> None:
    assert epsilon([], delta=DELTA) == 0.0


def test_later_round_is_the_composition_not_the_last_round() -> None:
    one_round = DpSgdEvent(2.0, 0.1, 50)
    assert epsilon([one_round, one_round], delta=DELTA) > 1.2 * epsilon([one_round], delta=DELTA)


@pytest.mark.parametrize("sigma, q, steps", [(1.0, 0.05, 200), (2.0, 0.2, 50), (4.0, 1.0, 5), (0.8, 0.01, 1000)])
def test_prv_agrees_with_independent_dp_accounting(sigma: float, q: float, steps: int) -> None:
    history = [DpSgdEvent(sigma, q, steps)]
    prv = epsilon(history, delta=DELTA)
    pld = epsilon(history, delta=DELTA, accountant=Accountant.PLD)
    rdp = epsilon(history, delta=DELTA, accountant=Accountant.RDP)
    assert prv == pytest.approx(pld, rel=0.05, abs=0.02)
    assert rdp >= pld - 0.02  # RDP is a looser upper bound than the (tight) PLD


@settings(max_examples=8, deadline=None)
@given(
    target=st.floats(0.3, 10.0),
    q=st.floats(0.02, 1.0),
    steps=st.integers(1, 200),
)
def test_calibrated_noise_never_overshoots(target: float, q: float, steps: int) -> None:
    sigma = calibrate_noise(target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps)
    spent = epsilon([DpSgdEvent(sigma, q, steps)], delta=DELTA)
    assert spent <= target
    assert spent >= target - 0.05 or sigma < 0.02  # and it is not wastefully noisy


@pytest.mark.parametrize(
    "target, q, steps, prior",
    [
        (4.0, 0.05, 120, ()),
        (8.0, 0.1, 60, ()),
        (1.0, 0.5, 20, ()),  # sigma near 9: far above the first probe
        (0.3, 1.0, 200, ()),  # sigma near 164
        (10.0, 0.02, 10, ()),  # sigma near 0.4: below the first probe
        (2.0, 0.005, 2000, (DpSgdEvent(1.2, 0.005, 1000),)),
    ],
)
def test_calibration_meets_the_target_within_tolerance_in_few_evaluations(
    target: float, q: float, steps: int, prior: tuple[DpSgdEvent, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never over the target, within the tolerance of it, and found in at most 7 evaluations of
    epsilon (each one milliseconds to a third of a second: halving and doubling from sigma = 1
    took up to 11 here)."""
    from common.privacy import accounting

    calls: list[float] = []
    real = accounting.epsilon

    def counted(history, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(history[-1].noise_multiplier if history else 0.0)
        return real(history, **kwargs)

    monkeypatch.setattr(accounting, "epsilon", counted)
    sigma = calibrate_noise(target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps, prior=prior)
    spent = real([*prior, DpSgdEvent(sigma, q, steps)], delta=DELTA)
    assert target - 0.01 <= spent <= target
    assert len(calls) <= 7, calls


@pytest.mark.parametrize(
    "prior, q, steps, answer",
    [
        (DpSgdEvent(3.0, 1.0, 1), 0.5, 1, 2000.0),  # found in review: the x16 step jumped past the limit
        (DpSgdEvent(3.0, 1.0, 1), 1.0, 1, 8000.0),
        (DpSgdEvent(2.0, 0.1, 50), 0.5, 1, 9000.0),  # a nearly flat epsilon: the secant's step overflowed exp
    ],
)
def test_calibration_near_the_noise_limit_finds_a_safe_sigma(
    prior: DpSgdEvent, q: float, steps: int, answer: float
) -> None:
    """Where the prior spend leaves almost nothing, the answer lies near the largest noise
    allowed: the search tries that limit itself instead of giving up at the step before it,
    and a flat epsilon curve never overflows the secant's step."""
    target = epsilon([prior, DpSgdEvent(answer, q, steps)], delta=DELTA)
    sigma = calibrate_noise(target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps, prior=[prior])
    assert epsilon([prior, DpSgdEvent(sigma, q, steps)], delta=DELTA) <= target
    assert sigma <= 1e4


def test_calibration_accounts_for_prior_spend() -> None:
    prior = [DpSgdEvent(3.0, 0.1, 100)]
    sigma = calibrate_noise(target_epsilon=3.0, delta=DELTA, sample_rate=0.1, steps=100, prior=prior)
    assert epsilon([*prior, DpSgdEvent(sigma, 0.1, 100)], delta=DELTA) <= 3.0
    assert sigma > calibrate_noise(target_epsilon=3.0, delta=DELTA, sample_rate=0.1, steps=100)


def test_calibration_rejects_non_positive_epsilon() -> None:
    with pytest.raises(ConfigError, match=r"epsilon must be > 0, got -1"):
        calibrate_noise(target_epsilon=-1.0, delta=DELTA, sample_rate=0.1, steps=10)


def test_calibration_refuses_when_prior_spend_exhausts_budget() -> None:
    with pytest.raises(ConfigError, match="already used"):
        calibrate_noise(target_epsilon=0.5, delta=DELTA, sample_rate=1.0, steps=1, prior=[DpSgdEvent(0.7, 1.0, 10)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 1}, "noise_multiplier must be > 0, got 0.0"),
        ({"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1}, r"sample_rate must be in \(0, 1\], got 1.5"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 0}, "steps must be >= 1, got 0"),
        ({"noise_multiplier": math.nan, "sample_rate": 0.1, "steps": 1}, "noise_multiplier must be > 0"),
    ],
)
def test_event_validates_itself(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DpSgdEvent(**kwargs)


def test_a_long_history_is_still_an_upper_bound_within_its_scaled_error() -> None:
    """Beyond 1,000 steps the PRV error allowed grows with the steps (memory and time of one
    evaluation stay at the 1,000-step level): the result is still an upper bound on the true
    epsilon, within the scaled error of the exact-error figure, and never below it by more
    than that figure's own error."""
    import warnings

    import numpy as np
    from opacus.accountants import PRVAccountant

    from common.privacy.accounting import PRV_EPS_ERROR, prv_eps_error

    history = [DpSgdEvent(3.0, 0.5, 2_000), DpSgdEvent(4.0, 0.25, 1_000)]
    assert prv_eps_error(500) == PRV_EPS_ERROR and prv_eps_error(3_000) == pytest.approx(3 * PRV_EPS_ERROR)
    scaled = epsilon(history, delta=DELTA)
    fresh = PRVAccountant()
    fresh.history = [(3.0, 0.5, 2_000), (4.0, 0.25, 1_000)]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = fresh.get_epsilon(delta=DELTA, eps_error=PRV_EPS_ERROR)
    assert exact - PRV_EPS_ERROR <= scaled <= exact + prv_eps_error(3_000)
    assert scaled >= epsilon(history, delta=DELTA, accountant=Accountant.PLD) - 0.05 * exact
