"""fedshield's PRV accountant (common.privacy.prv) gives Opacus's numbers: the RDP vectors
that bound the PRV domain match Opacus's pure-Python series term for term, the memo returns
what a fresh computation returns, and nothing a caller holds can change a cached value."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis.rdp import compute_rdp

from common.privacy import prv


@settings(max_examples=40, deadline=None)
@given(
    q=st.one_of(st.floats(1e-4, 0.999), st.sampled_from([0.5, 0.9, 0.99, 1.0, 1e-3])),
    sigma=st.floats(0.3, 20.0),
)
def test_rdp_vector_matches_opacus_series(q: float, sigma: float) -> None:
    ours = prv.rdp_per_step(q, sigma)
    theirs = np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(prv.ORDERS)))
    # Compared as log A = (alpha - 1) RDP, what both series sum: where A ~ 1 (small q, or orders
    # near 1) the two sums of alternating terms lose different last bits of A (up to ~1e-13),
    # which RDP = log A / (alpha - 1) magnifies tenfold at alpha = 1.1 (hypothesis found q = 0.5
    # there: 1.5e-12 apart in RDP, 1.5e-13 in log A). The RDP only sizes the PRV's domain.
    alpha_minus_1 = np.asarray(prv.ORDERS) - 1
    np.testing.assert_allclose(ours * alpha_minus_1, theirs * alpha_minus_1, rtol=1e-9, atol=1e-12)


def test_cached_rdp_vector_cannot_be_changed_by_a_caller() -> None:
    vector = prv.rdp_per_step(0.25, 1.3)
    with pytest.raises(ValueError):
        vector[0] = 0.0  # a caller lowering a cached RDP would lower every later epsilon
    assert prv.rdp_per_step(0.25, 1.3)[0] > 0


def test_memoised_epsilon_is_the_fresh_computation() -> None:
    history = ((1.1, 0.3, 12), (0.9, 0.3, 5))
    first = prv.prv_epsilon(history, 1e-5, 0.01)
    prv.prv_epsilon.cache_clear()
    prv.rdp_per_step.cache_clear()
    assert prv.prv_epsilon(history, 1e-5, 0.01) == first
    # a different history, delta or error is a different value, never a stale one
    assert prv.prv_epsilon(((1.1, 0.3, 13), (0.9, 0.3, 5)), 1e-5, 0.01) > first
    assert prv.prv_epsilon(history, 1e-6, 0.01) > first


@settings(max_examples=40, deadline=None)
@given(
    q=st.one_of(st.floats(1e-5, 0.999), st.sampled_from([1.0, 1 / 60_000, 0.5])),
    sigma=st.floats(0.2, 30.0),
    size=st.floats(1.0, 40.0),
    mesh=st.sampled_from([2e-3, 7e-4, 3e-4]),
)
def test_truncated_cdf_is_opacus_bit_for_bit(q: float, sigma: float, size: float, mesh: float) -> None:
    """The CDF skipped where it is 0 or exactly 1 (common.privacy.prv._subsampled_gaussian_cdf)
    gives at every cell edge the very value Opacus's truncated PRV gives, so the same pmf."""
    from opacus.accountants.analysis.prv import Domain, PoissonSubsampledGaussianPRV, TruncatedPrivacyRandomVariable

    domain = prv._fast_fourier_domain(Domain.create_aligned(-size, size, mesh))
    edges = np.append(domain.ts - domain.dt / 2, domain.ts[-1] + domain.dt / 2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tprv = TruncatedPrivacyRandomVariable(PoissonSubsampledGaussianPRV(q, sigma), domain.t_min, domain.t_max)
        expected = tprv.cdf(edges)
        got = prv._truncated_cdf(q, sigma, domain, edges)
    assert np.array_equal(got, expected, equal_nan=True)


def _reference_mean(q: float, sigma: float, t_min: float, t_max: float) -> float:
    """The truncated PRV's mean, ``t_max - integral of its CDF``, by adaptive quadrature
    converged far tighter than Opacus asks (1e-13 relative), on pieces graded towards the
    PRV's lower end ``log(1 - q)`` where the CDF rises like a function of ``log(t - log(1 - q))``."""
    import math

    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV
    from scipy import integrate

    inner = PoissonSubsampledGaussianPRV(q, sigma)
    low = float(inner.cdf(np.array(t_min)))
    mass = float(inner.cdf(np.array(t_max))) - low

    def cdf(t: float) -> float:
        return (float(inner.cdf(np.array(t))) - low) / mass

    start = max(math.log(1 - q), t_min) if q < 1 else t_min
    cuts = np.concatenate([start + 10.0 ** -np.arange(1, 17), [0.0], np.linspace(start, t_max, 60)])
    edges = [start, *sorted({float(c) for c in cuts if start < c < t_max}), t_max]
    total = 0.0
    for left, right in zip(edges[:-1], edges[1:], strict=True):
        total += integrate.quad(cdf, left, right, limit=2000, epsabs=1e-15, epsrel=1e-13)[0]
    return t_max - total - (start - t_min) * cdf(t_min)


@settings(max_examples=30, deadline=None)
@given(
    q=st.one_of(st.floats(1e-5, 0.999), st.sampled_from([1.0, 0.5, 1e-3, 0.9999])),
    sigma=st.floats(0.2, 30.0),
    size=st.floats(1.0, 40.0),
)
def test_truncated_mean_is_the_integral_to_1e_13(q: float, sigma: float, size: float) -> None:
    """The discretisation's mean-preserving shift needs the truncated PRV's mean: computed over
    the Gaussian's privacy loss (prv._truncated_mean), it agrees with a tightly converged
    adaptive quadrature, and with Opacus's own quad (accurate to its tolerance, ~1e-6 at worst)."""
    import warnings

    from opacus.accountants.analysis.prv import Domain, PoissonSubsampledGaussianPRV, TruncatedPrivacyRandomVariable

    domain = prv._fast_fourier_domain(Domain.create_aligned(-size, size, 1e-3))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quad's notes on slow convergence (its result still converges)
        ours = prv._truncated_mean(q, sigma, domain.t_min, domain.t_max)
        reference = _reference_mean(q, sigma, domain.t_min, domain.t_max)
        opacus = TruncatedPrivacyRandomVariable(PoissonSubsampledGaussianPRV(q, sigma), domain.t_min, domain.t_max)
        theirs = opacus.mean()
    assert ours == pytest.approx(reference, rel=1e-12, abs=1e-13)
    assert ours == pytest.approx(theirs, abs=1e-6)


@settings(max_examples=8, deadline=None)
@given(
    q=st.floats(0.005, 0.3),
    sigma=st.floats(0.7, 4.0),
    steps=st.one_of(st.integers(100, 700), st.sampled_from([99, 100, 101, 128, 255])),
)
def test_long_self_composition_is_opacus_epsilon(q: float, sigma: float, steps: int) -> None:
    """From 100 steps on numpy raises a complex array to a power by ``exp(n log z)``; fedshield
    squares repeatedly (prv._power), as numpy itself does below 100. The composed PRV's pmf
    differs only by rounding and the epsilon is stock Opacus's to 1e-6."""
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import Domain
    from opacus.accountants.analysis.prv.compose import _compose_fourier

    domain = prv._fast_fourier_domain(Domain.create_aligned(-6.0, 6.0, 3e-4))
    with np.errstate(divide="ignore"):
        single = prv._discretize(q, sigma, domain)
    ours, theirs = prv._self_composed(single, steps), _compose_fourier(single, steps)
    np.testing.assert_allclose(ours.pmf, theirs.pmf, rtol=0, atol=1e-14)
    assert ours.domain == theirs.domain

    stock = PRVAccountant()
    stock.history = [(sigma, q, steps)]
    expected = stock.get_epsilon(delta=1e-5, eps_error=0.01)
    assert prv.prv_epsilon(((sigma, q, steps),), 1e-5, 0.01) == pytest.approx(expected, rel=1e-6)


def _outcome(compute) -> float | str:  # noqa: ANN001
    """A computation's value, or the name of the error it raised."""
    try:
        return float(compute())
    except (RuntimeError, IndexError, ValueError) as exc:
        return type(exc).__name__


@settings(max_examples=40, deadline=None)
@given(
    q=st.one_of(st.floats(0.001, 0.6), st.just(1.0)),
    sigma=st.floats(0.5, 4.0),
    steps=st.integers(1, 300),
    delta=st.sampled_from([1e-3, 1e-5, 1e-7, 0.5, 0.9, 0.999]),
)
def test_upper_epsilon_is_opacus_compute_epsilons_upper_bit_for_bit(
    q: float, sigma: float, steps: int, delta: float
) -> None:
    """fedshield searches -delta(t) by bisection, evaluating it where it looks; Opacus evaluates
    it everywhere and searches it with searchsorted: the same point, the same float, and an
    error wherever Opacus raises one (near delta = 1 its lower value's search fails)."""
    domain = prv._domain(((sigma, q, steps),), 0.01, delta / 1000)
    with np.errstate(divide="ignore"):
        composed = prv._self_composed(prv._discretize(q, sigma, domain), steps)
    theirs = _outcome(lambda: composed.compute_epsilon(delta, delta / 1000, 0.01)[2])
    assert _outcome(lambda: prv._upper_epsilon(composed, delta, delta / 1000, 0.01)) == theirs


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 200),
    low=st.floats(-30.0, 0.0),
    width=st.floats(0.01, 60.0),
    seed=st.integers(0, 2**32 - 1),
    negative=st.floats(0.0, 0.5),
    delta=st.floats(1e-9, 0.999),
)
def test_upper_epsilon_matches_opacus_where_minus_delta_is_not_monotone(
    size: int, low: float, width: float, seed: int, negative: float, delta: float
) -> None:
    """A composed pmf's FFT leaves entries slightly negative, so -delta(t) is not monotone
    everywhere: pmfs with negative entries anywhere (and widths where exp over- and underflows)
    must give what Opacus's searchsorted gives, value or error."""
    from opacus.accountants.analysis.prv import DiscretePRV, Domain

    rng = np.random.default_rng(seed)
    pmf = rng.exponential(size=2 * size) * np.where(rng.random(2 * size) < negative, -1e-3, 1.0)
    dprv = DiscretePRV(pmf=pmf / abs(pmf.sum()), domain=Domain(low, low + width, 2 * size))
    with np.errstate(all="ignore"):
        theirs = _outcome(lambda: dprv.compute_epsilon(delta, delta / 1000, 0.01)[2])
        ours = _outcome(lambda: prv._upper_epsilon(dprv, delta, delta / 1000, 0.01))
    assert ours == theirs or (ours != ours and theirs != theirs)  # equal, or both NaN


def test_power_by_squaring_is_the_power() -> None:
    rng = np.random.default_rng(3)
    values = np.exp(1j * rng.uniform(0, 2 * np.pi, 1000)) * rng.uniform(0.9, 1.0, 1000)
    for n in (1, 2, 3, 7, 64, 99, 100, 159, 1000):
        np.testing.assert_allclose(prv._power(values, n), values**n, rtol=1e-12, atol=1e-300)


def test_tiny_noise_whose_domain_reaches_past_where_exp_overflows() -> None:
    """At noise below about 0.05 the safe domain reaches t > 700, where e^t overflows: the mean's
    change of variable must still land on the domain's end (found in review: the integral ran on
    to where the CDF saturates, the mean came out at -138 and the epsilon raised instead of 588)."""
    import warnings

    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, TruncatedPrivacyRandomVariable

    q, sigma = 1e-4, 0.03
    history = ((sigma, q, 1),)
    size = prv._safe_domain_size(history, 0.01, 1e-8)
    assert size > 710, "the case must reach past exp's overflow"
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = TruncatedPrivacyRandomVariable(PoissonSubsampledGaussianPRV(q, sigma), -size, size).mean()
        assert prv._truncated_mean(q, sigma, -size, size) == pytest.approx(theirs, abs=1e-6)
        stock = PRVAccountant()
        stock.history = [history[0]]
        expected = stock.get_epsilon(delta=1e-5, eps_error=0.01)
        assert prv.prv_epsilon(history, 1e-5, 0.01) == pytest.approx(expected, rel=1e-6)


def test_privacy_loss_beyond_exps_overflow_is_not_moved_down() -> None:
    """At noise 0.02 and sample rate 0.5, half of a step's privacy loss lies near 1/(2 sigma^2) +
    log q = 1249: Opacus's CDF, whose exp(t) overflows past t = 709.8, jumps to 1 there and puts
    that half at 710 (stock Opacus then raises on its own mean check). fedshield's CDF takes the
    loss from a form that does not overflow, so the bound is never below where the loss lies:
    with delta below q / 2, epsilon must exceed that half's median (there the loss exceeds epsilon
    + 1 with probability over 1/4, so delta(epsilon) would be above 0.15)."""
    import math

    q, sigma = 0.5, 0.02
    with np.errstate(all="ignore"):
        cdf = prv._subsampled_gaussian_cdf(q, sigma, np.array([709.0, 711.0, 1000.0, 1240.0, 1260.0]))
        assert np.allclose(cdf[:3], 1 - q) and 1 - q < cdf[3] < cdf[4] < 1.0  # the upper half, not a jump
        mean = prv._truncated_mean(q, sigma, -1572.0, 1572.0)
        assert mean == pytest.approx((1 - q) * math.log(1 - q) + q * (1 / (2 * sigma**2) + math.log(q)), abs=0.05)
        assert prv.prv_epsilon(((sigma, q, 1),), 1e-5, 0.01) >= 1 / (2 * sigma**2) + math.log(q) - 1
