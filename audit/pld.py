"""The auditor's own accountant: Google's ``dp-accounting``, pessimistic PLD (and RDP for show).

Unit of privacy: one record at one site; neighbouring datasets differ by adding or removing
one record (``ADD_OR_REMOVE_ONE``). Epsilon is always reported at a stated delta.

The privacy loss distributions are built with ``pessimistic_estimate=True`` (every
discretisation rounds the loss up, truncated tails go to the infinity mass; Doroshenko et al.
2022, "Connect the Dots"), so the epsilon computed here is an upper bound on the true epsilon
of the composition, not an estimate that could fall on either side of it.
"""

from __future__ import annotations

import logging
import math
import warnings
from functools import lru_cache
from typing import Any

# Discretisation of the privacy loss; finer = tighter (still an upper bound), slower.
VALUE_DISCRETIZATION = 1e-4


@lru_cache(maxsize=256)
def _gaussian_pld(sigma: float, sample_rate: float, count: int) -> Any:
    from dp_accounting.pld import privacy_loss_distribution as pld_lib
    from dp_accounting.privacy_accountant import NeighboringRelation

    single = pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma,
        sensitivity=1.0,
        pessimistic_estimate=True,
        value_discretization_interval=VALUE_DISCRETIZATION,
        sampling_prob=sample_rate,
        use_connect_dots=True,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
    )
    return single.self_compose(count) if count > 1 else single


@lru_cache(maxsize=256)
def _rdp_vector(sigma: float, sample_rate: float, count: int) -> Any:
    """RDP of ``count`` Poisson-subsampled Gaussian steps at every default order (cached:
    the same mechanism recurs round after round)."""
    import dp_accounting
    from dp_accounting import rdp

    event: Any = dp_accounting.GaussianDpEvent(sigma)
    if sample_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sample_rate, event)
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(event, count))
    return acc._rdp.copy()  # RDP composes by addition over the same orders


class Composition:
    """The running composition of one data source's events: pessimistic PLD and RDP."""

    def __init__(self) -> None:
        import numpy as np
        from dp_accounting.rdp import rdp_privacy_accountant

        logging.getLogger("absl").setLevel(logging.ERROR)  # per-order RDP notices; the bound holds
        self._pld: Any = None
        self._orders = np.array(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
        self._rdp = np.zeros_like(self._orders)
        self.non_private = False  # once a release had no DP, nothing about this source is bounded

    def add_dp_sgd(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)``."""
        self._add(float(noise_multiplier), float(sample_rate), int(steps))

    def add_gaussian(self, noise_multiplier: float) -> None:
        """One Gaussian mechanism on a sensitivity-1 statistic (``GaussianDpEvent(sigma)``)."""
        self._add(float(noise_multiplier), 1.0, 1)

    def _add(self, sigma: float, sample_rate: float, count: int) -> None:
        pld = _gaussian_pld(sigma, sample_rate, count)
        self._pld = pld if self._pld is None else self._pld.compose(pld)
        self._rdp = self._rdp + _rdp_vector(sigma, sample_rate, count)

    def epsilon(self, delta: float) -> tuple[float, float]:
        """(pessimistic PLD, RDP) epsilon of everything composed so far, at ``delta``."""
        from dp_accounting.rdp import rdp_privacy_accountant

        if self.non_private:
            return math.inf, math.inf
        if self._pld is None:
            return 0.0, 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RDP's "optimal order is the largest alpha" notice
            eps_rdp = rdp_privacy_accountant.compute_epsilon(self._orders, self._rdp, delta)[0]
        return float(self._pld.get_epsilon_for_delta(delta)), float(eps_rdp)
