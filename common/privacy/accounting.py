"""Privacy accounting for DP-SGD at one site.

Unit of privacy: one record at one site. Neighbouring datasets differ by adding or removing
one record (the relation under which Poisson-subsampled Gaussian accounting holds).

A site's training is described as data: a history of :class:`DpSgdEvent` values, each one
``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)``. Epsilon is always derived from
the whole history, never carried as a running number: the epsilon a site reports after
round r is the composition of every step it has taken so far.

The number we enforce and report comes from the PRV accountant (Gopi et al. 2021,
"Numerical Composition of Differential Privacy"), via Opacus. Google's ``dp-accounting``
(RDP and PLD) provides an independent cross-check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from common.errors import ConfigError

# PRV epsilon error; the accountant returns an upper bound, so this only loosens, never
# under-reports.
PRV_EPS_ERROR = 0.01
# Beyond this many composed steps the allowed error grows in proportion to the steps. The PRV
# mesh is eps_error / sqrt(steps) fine over a domain that widens with the steps (Gopi et al.
# 2021, Sec. 5), so at a fixed error its memory and time grow with the steps (measured here at
# sample rate 0.5: 1,000 steps 0.7 GB / 19 s, 10,000 steps 7.9 GB / 157 s, 100,000 out of
# memory). With the error scaled, one evaluation costs what 1,000 steps cost, however long the
# history: the result is still an upper bound, loose by at most ``prv_eps_error(steps)``.
PRV_STEPS_AT_BASE_ERROR = 1_000


def prv_eps_error(steps: int) -> float:
    """The PRV accountant's allowed epsilon error for a history of ``steps`` steps."""
    return PRV_EPS_ERROR * max(1.0, steps / PRV_STEPS_AT_BASE_ERROR)


_SIGMA_MAX = 1e4


class Accountant(StrEnum):
    PRV = "prv"  # Opacus PRV (reported, enforced)
    RDP = "rdp"  # dp-accounting RDP (cross-check)
    PLD = "pld"  # dp-accounting PLD (cross-check)


@dataclass(frozen=True)
class DpSgdEvent:
    """``steps`` DP-SGD steps with Poisson sample rate ``sample_rate`` and noise ``noise_multiplier``.

    ``noise_multiplier`` is sigma / clipping bound (the std of the Gaussian noise added to the
    sum of clipped per-example gradients, in units of the bound).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0 or not math.isfinite(self.noise_multiplier):
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def _merged(history: Sequence[DpSgdEvent]) -> list[tuple[float, float, int]]:
    """Opacus history tuples, with consecutive identical mechanisms merged (same result,
    fewer convolutions)."""
    out: list[tuple[float, float, int]] = []
    for e in history:
        if out and out[-1][0] == e.noise_multiplier and out[-1][1] == e.sample_rate:
            out[-1] = (e.noise_multiplier, e.sample_rate, out[-1][2] + e.steps)
        else:
            out.append((e.noise_multiplier, e.sample_rate, e.steps))
    return out


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def epsilon(history: Sequence[DpSgdEvent], *, delta: float, accountant: Accountant = Accountant.PRV) -> float:
    """Epsilon of the composition of every event in ``history`` at ``delta``.

    An empty history has spent nothing: 0.0.
    """
    _check_delta(delta)
    if not history:
        return 0.0
    if accountant is Accountant.PRV:
        from common.privacy.prv import prv_epsilon

        merged = tuple(_merged(history))
        return prv_epsilon(merged, float(delta), prv_eps_error(sum(e.steps for e in history)))
    return _dp_accounting_epsilon(history, delta=delta, accountant=accountant)


def _dp_accounting_epsilon(history: Sequence[DpSgdEvent], *, delta: float, accountant: Accountant) -> float:
    import logging

    import dp_accounting
    from dp_accounting import pld, rdp

    logging.getLogger("absl").setLevel(logging.ERROR)  # per-order RDP notices; the bound still holds

    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(sigma_q[1], dp_accounting.GaussianDpEvent(sigma_q[0])),
                sigma_q[2],
            )
            for sigma_q in _merged(history)
        ]
    )
    acc = rdp.RdpAccountant() if accountant is Accountant.RDP else pld.PLDAccountant()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: Sequence[DpSgdEvent] = (),
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier (to ``tolerance`` in epsilon) such that ``prior`` followed by
    ``steps`` steps at ``sample_rate`` spends at most ``target_epsilon`` at ``delta``.

    The returned sigma never overshoots: ``epsilon(prior + [event]) <= target_epsilon``.
    Raises :class:`ConfigError` if no noise level can meet the target.
    """
    if not target_epsilon > 0:
        raise ConfigError(f"epsilon must be > 0, got {target_epsilon}")
    _check_delta(delta)

    def spent(sigma: float) -> float:
        return epsilon([*prior, DpSgdEvent(sigma, sample_rate, steps)], delta=delta)

    if epsilon(prior, delta=delta) >= target_epsilon:
        raise ConfigError(f"the budget epsilon={target_epsilon:g} is already used by earlier training; nothing is left")
    aim = max(target_epsilon - tolerance / 2, 0.5 * target_epsilon)
    # The first probe: the moments accountant's scale (Abadi et al. 2016, Theorem 1: sigma of
    # order q sqrt(T log(1/delta)) / epsilon), where it is above 1 (within 5-20% of the answer
    # for the plans of this project's scenarios); 1 otherwise. Only where the search starts.
    start = max(1.0, min(_SIGMA_MAX / 16, sample_rate * math.sqrt(2 * steps * math.log(1 / delta)) / target_epsilon))
    low, eps_low, high, eps_high = _bracket(spent, target_epsilon, aim, tolerance, start)
    if high > _SIGMA_MAX:
        raise ConfigError(
            f"epsilon={target_epsilon:g} at delta={delta:g} cannot be met with {steps} steps "
            f"at sample rate {sample_rate:.3g}: train fewer rounds or steps"
        )
    # Invariant: spent(high) <= target (safe), spent(low) > target or low == 0. Each PRV
    # evaluation costs milliseconds, so the next point is interpolated (epsilon is smooth and
    # decreasing in sigma, near linear in log-log) into the middle of the accepted window
    # [target - tolerance, target], along the secant through the two latest probes (a local
    # slope: the bracket's ends can be a factor 15 apart), kept inside the bracket and away
    # from its ends; bisection otherwise.
    probes = [(low, eps_low), (high, eps_high)]
    while high - low > 1e-4 * high and target_epsilon - eps_high > tolerance:
        mid = 0.5 * (low + high)
        margin = 0.02 * (high - low)
        line = _secant(*probes[-2:]) or _secant((low, eps_low), (high, eps_high))
        if line is not None:
            x0, y0, run_over_rise = line
            # in log space, clamped into the bracket before exp (a flat secant overflows)
            x = x0 + (math.log(aim) - y0) * run_over_rise
            mid = math.exp(min(max(x, math.log(low + margin)), math.log(high - margin)))
        eps_mid = spent(mid)
        probes.append((mid, eps_mid))
        if eps_mid <= target_epsilon:
            high, eps_high = mid, eps_mid
        else:
            low, eps_low = mid, eps_mid
    return high


def _bracket(
    spent: Callable[[float], float], target: float, aim: float, tolerance: float, start: float
) -> tuple[float, float, float, float]:
    """(low, spent(low), high, spent(high)) with ``spent(high) <= target`` and, unless ``high``
    is already within ``tolerance`` of the target (then ``low = 0``, ``spent(low) = inf``),
    ``spent(low) > target``; ``high = inf`` when no sigma up to ``_SIGMA_MAX`` (which is tried)
    meets the target.

    Probes from sigma = ``start`` along the log-log secant through the last two probes, aimed at
    ``aim`` (epsilon falls about as 1/sigma to 1/sigma^2.5 over the range that matters; slope
    -1 before a second probe), each step a factor in [1/2, 16]: one or two probes bracket the
    usual answer, where halving towards 0 and doubling from 1 took two to five, and the
    halvings were the dear ones (a smaller sigma needs a wider PRV domain: 50-60 ms at
    sigma 0.5 against 13-20 ms near 1, measured here)."""
    low, eps_low, high, eps_high = 0.0, math.inf, math.inf, 0.0
    sigma, eps = start, spent(start)
    previous: tuple[float, float] | None = None
    while True:
        if eps <= target:
            high, eps_high = sigma, eps
            if low > 0 or target - eps <= tolerance:
                return low, eps_low, high, eps_high
        else:
            low, eps_low = sigma, eps
            if math.isfinite(high):
                return low, eps_low, high, eps_high
            if sigma >= _SIGMA_MAX:  # the largest noise allowed, tried, is not enough
                return low, eps_low, math.inf, 0.0
        line = _secant(previous, (sigma, eps))
        slope = 1.0 / line[2] if line is not None and line[2] < 0 else -1.0
        if eps == math.inf:
            log_factor = math.log(16.0)
        elif eps <= 0:
            log_factor = math.log(0.5)
        else:  # clamped in log space before exp: a nearly flat secant would overflow
            log_factor = min(max((math.log(aim) - math.log(eps)) / slope, math.log(0.5)), math.log(16.0))
        previous = (sigma, eps)
        sigma = min(sigma * math.exp(log_factor), _SIGMA_MAX)  # _SIGMA_MAX itself is tried
        eps = spent(sigma)


def _secant(a: tuple[float, float] | None, b: tuple[float, float]) -> tuple[float, float, float] | None:
    """The log-log line through the probes ``a`` and ``b`` (sigma, epsilon) as (log sigma_a,
    log epsilon_a, d log sigma / d log epsilon), or ``None`` where it is not defined (a probe at
    sigma 0 or with epsilon 0 or infinite, or equal logs)."""
    if a is None or not (a[0] > 0 and b[0] > 0 and 0 < a[1] < math.inf and 0 < b[1] < math.inf):
        return None
    x0, x1, y0, y1 = math.log(a[0]), math.log(b[0]), math.log(a[1]), math.log(b[1])
    if x0 == x1 or y0 == y1:
        return None
    return x0, y0, (x1 - x0) / (y1 - y0)
