"""Opacus's PRV accountant, computed the same way but without its pure-Python hot spot.

Stock ``opacus.accountants.PRVAccountant.get_epsilon`` spends 98% of its time in
``compute_safe_domain_size``, which bounds the PRV's domain with Opacus's RDP accountant: a
pure-Python series per RDP order, re-run for every call (about 0.5 s at sample rate 0.5 on
this machine, twice per call). Here the same numbers come from:

- :func:`rdp_per_step`: the RDP of one Poisson-subsampled Gaussian step at Opacus's default
  orders, with the fractional orders' series evaluated as numpy arrays (the same terms, cut
  where Opacus cuts them) and cached per ``(sample_rate, noise_multiplier)``: RDP composes by
  addition, so a history needs one vector per distinct mechanism, whatever its length;
- :func:`prv_epsilon`: Opacus's own discretisation, FFT composition and epsilon bound on the
  domain computed from those vectors, widened to a length the FFT is fast at
  (:func:`_fast_fourier_domain`), memoised per (merged history, delta, error): the epsilon of
  a history is a pure function of it. Four of Opacus's steps are computed faster with the same
  result: the CDF only where it is neither 0 nor 1 (bit for bit), the truncated mean over the
  Gaussian's privacy loss (:func:`_truncated_mean`, more accurate than Opacus's quad), a
  long self-composition's power by repeated squaring (:func:`_power`), and the epsilon bound
  searched where it is looked at (:func:`_upper_epsilon`, bit for bit).

Nothing here holds privacy state: a cache maps mechanisms to numbers, never a site to its
spend. The result is the upper bound Opacus returns (tests compare the two over random
histories); the audit recomputes independently with dp-accounting's PLD.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import special

# Opacus's RDPAccountant.DEFAULT_ALPHAS (what compute_safe_domain_size uses).
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
_FRAC = np.array([a for a in ORDERS if not float(a).is_integer()])
_INT = [int(a) for a in ORDERS if float(a).is_integer()]
_FRAC_POS = np.array([i for i, a in enumerate(ORDERS) if not float(a).is_integer()])
_INT_POS = np.array([i for i, a in enumerate(ORDERS) if float(a).is_integer()])
_STOP = -30.0  # Opacus stops a fractional order's series after the first term below exp(-30)
_LOG_HALF = math.log(0.5)
_LOG_2 = math.log(2)


def _log_erfc(x: np.ndarray) -> np.ndarray:
    return _LOG_2 + special.log_ndtr(-x * 2**0.5)


def _log_sub(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """log(exp(pos) - exp(neg)), elementwise; -inf where they are equal."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        out = pos + np.log(-np.expm1(neg - pos))
    out = np.where(np.isneginf(neg), pos, out)
    return np.where(pos == neg, -np.inf, out)


def _log_a_frac(q: float, sigma: float) -> np.ndarray:
    """log A_alpha at every fractional order (Mironov et al. 2019, Sec. 3.3), vectorised.

    The series of each order is summed in chunks until Opacus's cut (the first term below
    exp(-30), included); orders near 1 at large sample rates need thousands of terms."""
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    rows = len(_FRAC)
    sums = np.full((4, rows), -np.inf)  # log sums of the positive/negative terms of s0, s1
    active = np.arange(rows)
    start, n = 0, 64
    while active.size:
        alpha = _FRAC[active][:, None]
        i = np.arange(start, start + n, dtype=float)[None, :]
        coef = special.binom(alpha, i)
        with np.errstate(divide="ignore"):
            log_coef = np.log(np.abs(coef))
        j = alpha - i
        log_s0 = (
            log_coef
            + i * math.log(q)
            + j * math.log(1 - q)
            + (i * i - i) / (2 * sigma**2)
            + _LOG_HALF
            + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        )
        log_s1 = (
            log_coef
            + j * math.log(q)
            + i * math.log(1 - q)
            + (j * j - j) / (2 * sigma**2)
            + _LOG_HALF
            + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        )
        below = np.maximum(log_s0, log_s1) < _STOP
        done = below.any(axis=1)
        last = np.where(done, below.argmax(axis=1), n - 1)
        keep = np.arange(n)[None, :] <= last[:, None]
        positive = coef > 0
        parts = ((log_s0, positive), (log_s0, ~positive), (log_s1, positive), (log_s1, ~positive))
        for k, (terms, sign) in enumerate(parts):
            part = special.logsumexp(np.where(keep & sign, terms, -np.inf), axis=1)
            sums[k, active] = np.logaddexp(sums[k, active], part)
        active = active[~done]
        start += n
        n = min(2 * n, 4096)
        if start > 1 << 22:
            raise ArithmeticError(f"RDP series did not converge (q={q}, sigma={sigma})")
    return np.logaddexp(_log_sub(sums[0], sums[1]), _log_sub(sums[2], sums[3]))


def _log_a_int(q: float, sigma: float) -> np.ndarray:
    """log A_alpha at every integer order: a finite binomial sum, one row per order."""
    alpha = np.array(_INT, dtype=float)[:, None]
    i = np.arange(max(_INT) + 1, dtype=float)[None, :]
    with np.errstate(divide="ignore"):
        log_coef = np.log(special.binom(alpha, i)) + i * math.log(q) + (alpha - i) * math.log(1 - q)
    terms = np.where(i <= alpha, log_coef + (i * i - i) / (2 * sigma**2), -np.inf)
    return special.logsumexp(terms, axis=1)


@lru_cache(maxsize=4096)
def rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one step at :data:`ORDERS` (read-only array)."""
    q, sigma = float(sample_rate), float(noise_multiplier)
    orders = np.array(ORDERS)
    if q == 1.0:
        out = orders / (2 * sigma**2)
    else:
        out = np.empty(len(ORDERS))
        out[_FRAC_POS] = _log_a_frac(q, sigma) / (_FRAC - 1)
        out[_INT_POS] = _log_a_int(q, sigma) / (np.array(_INT) - 1)
    out.setflags(write=False)
    return out


def _rdp_epsilon(rdp: np.ndarray, delta: float) -> float:
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the domain bound is loose, never the epsilon.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def _safe_domain_size(history: Sequence[tuple[float, float, int]], eps_error: float, delta_error: float) -> float:
    """Opacus's ``compute_safe_domain_size`` (Gopi et al. 2021, remark 5.6) on cached RDP."""
    total = sum(steps for _, _, steps in history)
    composed = sum(steps * rdp_per_step(q, sigma) for sigma, q, steps in history)
    l_max = _rdp_epsilon(composed, delta_error / 4)
    for sigma, q, _ in history:
        l_max = max(l_max, _rdp_epsilon(rdp_per_step(q, sigma), delta_error / (8 * total)))
    return max(l_max, eps_error) + 3


# Where Opacus's CDF formula gives exactly 1.0: erfc's first argument at least this. There
# erfc(a1) <= erfc(6) = 2.2e-17 and the second term's erfc is smaller still (its argument is
# larger), so the two subtracted terms sum to at most 1.1e-17, a fifth of half an ulp below 1.0
# (2^-54, about 5.6e-17): ``... + 1.0`` rounds to exactly 1.0.
_SATURATED_ARG = 6.0
# Below this t, Opacus's exp(t) in the CDF is finite (it overflows past 709.78).
_EXP_SAFE = 700.0
# Gauss-Legendre nodes and weights on [-1, 1] for the truncated mean's composite rule.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


def _saturated_loss(sigma: float) -> float:
    """The Gaussian's privacy loss ``z`` from which Opacus's CDF is exactly 1.0 (erfc's first
    argument :data:`_SATURATED_ARG`); below its negative both erfc terms are 2 to the same
    precision (the CDF is 0)."""
    from opacus.accountants.analysis.prv.prvs import SQRT2

    return (_SATURATED_ARG * 2 * SQRT2 * sigma + 1) / (2 * sigma**2)


def _cdf_of_loss(q: float, sigma: float, z: np.ndarray) -> np.ndarray:
    """Opacus's ``PoissonSubsampledGaussianPRV.cdf`` as a function of the Gaussian's privacy loss
    ``z`` (a mixture of two Gaussian CDFs), the same operations on the same values."""
    from opacus.accountants.analysis.prv.prvs import SQRT2

    return (
        -q * special.erfc((2 * z * sigma**2 - 1) / (2 * SQRT2 * sigma)) / 2
        - (1 - q) * special.erfc((2 * z * sigma**2 + 1) / (2 * SQRT2 * sigma)) / 2
        + 1.0
    )


def _loss_of(q: float, t: np.ndarray) -> np.ndarray:
    """The Gaussian's privacy loss ``z`` at PRV values ``t > log(1 - q)``, the inverse of ``t =
    log(1 - q + q e^z)``: Opacus's ``log((e^t + q - 1) / q)`` up to t = 700, beyond it (where
    Opacus's ``exp(t)`` overflows past 709.8) ``t + log(1 - (1 - q) e^-t) - log q``."""
    with np.errstate(over="ignore"):
        z = np.log((np.exp(t) + q - 1) / q)
    far = t > _EXP_SAFE
    if far.any():
        z[far] = t[far] + np.log1p(-(1 - q) * np.exp(-t[far])) - math.log(q)
    return z


def _low_and_mass(q: float, sigma: float, t_min: float, t_max: float) -> tuple[float, float]:
    """The untruncated CDF at ``t_min`` and the mass between ``t_min`` and ``t_max`` (Opacus's
    ``_remaining_mass``, the same subtraction)."""
    low, high = _subsampled_gaussian_cdf(q, sigma, np.array([t_min, t_max]))
    return float(low), float(high - low)


def _truncated_mean(q: float, sigma: float, t_min: float, t_max: float) -> float:
    """The mean of Opacus's ``TruncatedPrivacyRandomVariable(PoissonSubsampledGaussianPRV(q,
    sigma), t_min, t_max)``, integrated where its CDF moves and in the variable it moves in.

    Opacus integrates by parts (``mean = t_max - integral of the truncated CDF F over [t_min,
    t_max]``) with ``scipy.integrate.quad`` over fixed log-spaced pieces: thousands of scalar
    CDF calls (0.7-1 ms), and at small noise up to 4e-7 off, because the CDF rises like a
    function of ``log(t - log(1 - q))`` at the PRV's lower end, which quad's pieces do not
    resolve. Here the same integral is taken over the privacy loss ``z`` of the Gaussian, with
    ``t = log(1 - q + q e^z)`` (Gopi et al. 2021, Sec. 5; Opacus's CDF is a mixture of two
    Gaussian CDFs in ``z``): ``integral of F dt = integral of F(t(z)) t'(z) dz``, where
    ``t'(z)`` is a logistic in ``z``. The CDF is neither 0 nor 1 only for ``z`` in a band a
    few noise widths wide (:data:`_SATURATED_ARG`, as for the pmf), and there a composite
    16-point Gauss-Legendre rule with pieces half the smaller of the integrand's two scales
    (``1 / sigma``, 1) is exact to about 1e-14 (tests compare it with a tightly converged
    adaptive quadrature); outside it the integrand is the constant ``(0 or 1 - low) / mass``."""
    z_one = _saturated_loss(sigma)  # above: the CDF is exactly 1.0
    z_zero = -z_one  # below: both erfc terms are 2 (the CDF is 0)

    def z_of(t: float) -> float:  # -inf at or below log(1 - q), where the CDF is 0
        if q == 1.0:
            return t
        with np.errstate(divide="ignore", invalid="ignore"):
            z = float(_loss_of(q, np.array([t]))[0])
        return z if z > -math.inf else -math.inf  # log of 0 or less (nan) below the PRV's support

    def t_of(z: float) -> float:
        return z if q == 1.0 else float(np.logaddexp(z + math.log(q), math.log1p(-q)))

    low, mass = _low_and_mass(q, sigma, t_min, t_max)
    integral = 0.0  # of the untruncated CDF over [t_min, t_max]
    z_lo, z_hi = max(z_zero, z_of(t_min)), min(z_one, z_of(t_max))
    if z_hi > z_lo:
        pieces = max(1, math.ceil((z_hi - z_lo) / (0.5 * min(1.0, 1.0 / sigma))))
        edges = np.linspace(z_lo, z_hi, pieces + 1)
        half = np.diff(edges) / 2
        z = (edges[:-1] + half)[:, None] + half[:, None] * _GL_NODES[None, :]
        dt_dz = 1.0 if q == 1.0 else special.expit(z + math.log(q) - math.log1p(-q))
        integral += float(((_cdf_of_loss(q, sigma, z) * dt_dz) @ _GL_WEIGHTS) @ half)
    t_one = t_of(z_one)
    if t_one < t_max:
        integral += t_max - max(t_one, t_min)
    return t_max - (integral - low * (t_max - t_min)) / mass


def _subsampled_gaussian_cdf(q: float, sigma: float, t: np.ndarray) -> np.ndarray:
    """``PoissonSubsampledGaussianPRV(q, sigma).cdf(t)`` of Opacus, the same operations on the
    same values, evaluated only where it is neither 0 (``t <= log(1 - q)``, where Opacus returns
    0.0) nor exactly 1.0 (beyond :data:`_SATURATED_ARG`): on a PRV domain most cell edges are in
    one of the two, and ``erfc`` there was most of a fresh epsilon's time.

    Except beyond ``t = 700`` (reached only at noise multipliers below about 0.05), where
    Opacus's ``exp(t)`` overflows past 709.8 and its CDF jumps to 1 too early: there the privacy
    loss of the Gaussian comes from ``z = t + log(1 - (1 - q) e^-t) - log q``, which does not
    overflow (found in review: at noise 0.02, Opacus put the half of a step's privacy loss that
    lies near 1,250 at 710)."""
    low = np.log(1 - q)
    t_one = np.logaddexp(_saturated_loss(sigma) + math.log(q), low)  # log(q e^z + 1 - q) at the saturated loss
    out = np.where(t >= t_one, 1.0, 0.0)
    band = (t > low) & (t < t_one)
    out[band] = _cdf_of_loss(q, sigma, _loss_of(q, t[band]))
    return out


def _truncated_cdf(q: float, sigma: float, domain, t: np.ndarray) -> np.ndarray:
    """``TruncatedPrivacyRandomVariable(PoissonSubsampledGaussianPRV(q, sigma), t_min, t_max).cdf(t)``
    of Opacus on ``domain``'s ends, with the inner CDF from :func:`_subsampled_gaussian_cdf`."""
    low, mass = _low_and_mass(q, sigma, domain.t_min, domain.t_max)
    inside = (_subsampled_gaussian_cdf(q, sigma, t) - low) / mass
    return np.where(t < domain.t_min, 0.0, np.where(t < domain.t_max, inside, 1.0))


def _discretize(q: float, sigma: float, domain):  # -> DiscretePRV
    """Opacus's ``discretize`` of the truncated PRV on ``domain`` (mean-preserving shift)."""
    from opacus.accountants.analysis.prv import DiscretePRV

    ts = domain.ts
    # The CDF once at every cell edge (Opacus evaluates it at both edges of every cell: twice).
    pmf = np.diff(_truncated_cdf(q, sigma, domain, np.append(ts - domain.dt / 2, ts[-1] + domain.dt / 2)))
    shift = _truncated_mean(q, sigma, domain.t_min, domain.t_max) - np.dot(ts, pmf)
    if np.abs(shift) >= domain.dt / 2:
        raise RuntimeError("Discrete mean differs significantly from continuous mean.")
    return DiscretePRV(pmf=pmf, domain=domain.shift_right(shift))


def _fast_fourier_domain(domain):  # -> Domain
    """``domain`` widened by the same number of mesh points on each side until its length has
    only the factors 2, 3 and 5: the composition's FFTs then cost about a tenth of what a
    length with a large prime factor costs (pocketfft falls back to Bluestein's algorithm; 16-34
    ms against ~2 ms at 45,000-87,000 points, measured here). Same mesh and alignment; a wider
    domain only truncates less of the PRV (Gopi et al. 2021, Sec. 5: the domain must be at least
    the safe size, the mesh at most the one computed), so the result stays an upper bound."""
    from opacus.accountants.analysis.prv import Domain
    from scipy.fft import next_fast_len

    size = domain.size
    while next_fast_len(size, real=True) != size:
        size += 2
    pad = (size - domain.size) // 2
    return Domain(domain.t_min - pad * domain.dt, domain.t_max + pad * domain.dt, size)


def _power(values: np.ndarray, n: int) -> np.ndarray:
    """``values ** n`` (``n >= 1``) by repeated squaring, in place on copies: what numpy does for
    an integer exponent below 100 (``npy_cpow``), but numpy switches to ``exp(n log z)`` from
    100 on, three times slower (3.2 ms against 1.1 at 27,000 points here, where most of a long
    history's composition went)."""
    result: np.ndarray | None = None
    base = values.copy()
    while True:
        if n & 1:
            result = base.copy() if result is None else np.multiply(result, base, out=result)
        n >>= 1
        if not n:
            return result if result is not None else np.ones_like(values)
        np.multiply(base, base, out=base)


def _self_composed(dprv, n: int):  # DiscretePRV -> DiscretePRV
    """Opacus's ``_compose_fourier(dprv, n)`` (the PRV composed with itself ``n`` times by FFT),
    with the power taken by :func:`_power`."""
    from opacus.accountants.analysis.prv import DiscretePRV
    from scipy.fft import irfft, rfft

    if len(dprv) % 2 != 0:
        raise ValueError("Can only compose evenly sized discrete PRVs")
    pmf = irfft(_power(rfft(dprv.pmf), n))
    shift = n - 1 + (len(pmf) // 2 if n % 2 == 0 else 0)
    return DiscretePRV(pmf=np.roll(pmf, shift), domain=dprv.domain.shift_right(dprv.domain.shifts * (n - 1)))


def _convolution_tree(dprvs: list):  # list[DiscretePRV] -> DiscretePRV
    """Opacus's ``_compose_convolution_tree``: neighbouring PRVs convolved pairwise (``same``-size
    linear convolution) until one is left."""
    from opacus.accountants.analysis.prv import DiscretePRV
    from scipy.signal import convolve

    while len(dprvs) > 1:
        merged = [dprvs.pop()] if len(dprvs) % 2 == 1 else []
        for left, right in zip(dprvs[:-1:2], dprvs[1::2], strict=True):
            pmf = convolve(left.pmf, right.pmf, mode="same")
            merged.append(DiscretePRV(pmf=pmf, domain=left.domain.shift_right(right.domain.shifts)))
        dprvs = merged
    return dprvs[0]


def _domain(history: tuple[tuple[float, float, int], ...], eps_error: float, delta_error: float):  # -> Domain
    """The domain ``PRVAccountant`` discretises ``history`` on (its safe size and mesh for the
    errors), widened to a length the FFT is fast at (:func:`_fast_fourier_domain`)."""
    from opacus.accountants.analysis.prv import Domain

    total = sum(steps for _, _, steps in history)
    size = _safe_domain_size(history, eps_error, delta_error)
    mesh = eps_error / np.sqrt(total * np.log(12 / delta_error) / 2)
    return _fast_fourier_domain(Domain.create_aligned(-size, size, mesh))


@lru_cache(maxsize=8192)
def prv_epsilon(history: tuple[tuple[float, float, int], ...], delta: float, eps_error: float) -> float:
    """Upper bound on epsilon at ``delta`` of ``history`` = ((noise_multiplier, sample_rate,
    steps), ...), as ``PRVAccountant.get_epsilon(delta, eps_error=eps_error)`` computes it."""
    delta_error = delta / 1000
    domain = _domain(history, eps_error, delta_error)
    # At sample rate 1 the PRV code takes log(1 - q) = log(0) = -inf on purpose: exact, only
    # numpy's warning is silenced.
    with np.errstate(divide="ignore"):
        dprvs = [_discretize(q, sigma, domain) for sigma, q, _ in history]
        # Opacus's compose_heterogeneous: each mechanism composed with itself, then the convolution tree
        composed = _convolution_tree([_self_composed(d, s) for d, (_, _, s) in zip(dprvs, history, strict=True)])
        return _upper_epsilon(composed, delta, delta_error, eps_error)


def _upper_epsilon(dprv, delta: float, delta_error: float, eps_error: float) -> float:  # dprv: DiscretePRV
    """The upper value of Opacus's ``DiscretePRV.compute_epsilon(delta, delta_error,
    eps_error)``, the one fedshield reports, from the same arrays by the same arithmetic.

    Opacus evaluates ``-delta(t) = exp(t) d2(t) - d1(t)`` at every point of the domain (a second
    pass of ``exp``, a third of its cost) and finds where it reaches each of its three targets
    with numpy's ``searchsorted`` (a binary search). Here the same binary search (the same
    midpoints, the same comparison, NaN ordered last as numpy orders it) evaluates
    ``-delta(t)`` only at the points it visits (17 of 65,000), so it visits the same points
    and stops at the same one even where rounding (the FFT leaves some pmf entries slightly
    negative) makes ``-delta(t)`` not monotone. It raises where Opacus raises: at index 0 for any
    of the three targets (``RuntimeError``), past the end (``IndexError``)."""
    if delta <= 0:
        return math.inf
    if np.finfo(np.longdouble).eps * dprv.domain.size > delta - delta_error:
        raise ValueError(
            "Floating point errors will dominate for such small values of delta. Increase delta or reduce domain size."
        )
    t, p = dprv.domain.ts, dprv.pmf
    d1 = np.flip(np.flip(p).cumsum())
    d2 = np.flip(np.flip(p * np.exp(-t)).cumsum())

    def find_epsilon(target: float) -> float:  # Opacus's, with its searchsorted(ndelta, -target) done lazily
        lo, hi = 0, len(t)
        while lo < hi:
            mid = (lo + hi) // 2
            value = np.exp(t[mid : mid + 1])[0] * d2[mid] - d1[mid]
            if value < -target:  # False for NaN: numpy sorts NaN after every number
                lo = mid + 1
            else:
                hi = mid
        if lo <= 0:
            raise RuntimeError("Cannot compute epsilon")
        return np.log((d1[lo] - target) / d2[lo])

    upper = float(find_epsilon(delta - delta_error) + eps_error)
    find_epsilon(delta + delta_error)  # Opacus's lower and middle values, in its order: only their errors matter
    find_epsilon(delta)
    return upper
