"""The site's veto: before training, compute the epsilon the site would have spent after the
planned steps, and refuse if that exceeds its budget. The server cannot override this.

Unit of privacy: one record at this site (add/remove-one); epsilon is at the budget's delta
and composes every event the site's ledger holds for the dataset, across all jobs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from common.privacy.accounting import DpSgdEvent, epsilon


@dataclass(frozen=True)
class Budget:
    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ValueError(f"budget epsilon must be > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"budget delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    after: float  # epsilon after the planned steps (inf when no noise level fits)
    reason: str
    history: tuple[DpSgdEvent, ...] = field(repr=False)
    delta: float = field(repr=False)

    @cached_property
    def spent(self) -> float:
        """Epsilon spent so far on this dataset (computed when asked: a refusal reports it,
        an allowed round needs only ``after``)."""
        return epsilon(self.history, delta=self.delta)


def decide(history: Sequence[DpSgdEvent], planned: DpSgdEvent | None, budget: Budget) -> Decision:
    """Allow ``planned`` only if ``history + [planned]`` stays within ``budget``.

    ``planned=None`` means no noise level could meet the budget: always a refusal.
    """
    after = epsilon([*history, planned], delta=budget.delta) if planned is not None else float("inf")
    if after <= budget.epsilon:
        return Decision(True, after, "within budget", tuple(history), budget.delta)
    refused = Decision(False, after, "", tuple(history), budget.delta)
    reason = f"budget exhausted: spent {refused.spent:.2f} of {budget.epsilon:.2f} (delta={budget.delta:g})" + (
        f"; this round would bring it to {after:.2f}" if planned is not None else ""
    )
    return dataclasses.replace(refused, reason=reason)
