"""The site's veto: before training, compute the epsilon the site would have spent after the
planned steps, and refuse if that exceeds its budget. The server cannot override this.

Unit of privacy: one record at this site (add/remove-one); epsilon is at the budget's delta
and composes every event the site's ledger holds for the dataset, across all jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    spent: float  # epsilon spent so far on this dataset
    after: float  # epsilon after the planned steps (inf when no noise level fits)
    reason: str


def decide(history: Sequence[DpSgdEvent], planned: DpSgdEvent | None, budget: Budget) -> Decision:
    """Allow ``planned`` only if ``history + [planned]`` stays within ``budget``.

    ``planned=None`` means no noise level could meet the budget: always a refusal.
    """
    spent = epsilon(history, delta=budget.delta)
    after = epsilon([*history, planned], delta=budget.delta) if planned is not None else float("inf")
    if after <= budget.epsilon:
        return Decision(True, spent, after, "within budget")
    reason = f"budget exhausted: spent {spent:.2f} of {budget.epsilon:.2f} (delta={budget.delta:g})" + (
        f"; this round would bring it to {after:.2f}" if planned is not None else ""
    )
    return Decision(False, spent, after, reason)
