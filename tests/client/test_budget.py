"""The veto decides from the history and the planned mechanism alone."""

from __future__ import annotations

import pytest

from client.budget import Budget, decide
from common.privacy.accounting import DpSgdEvent, epsilon


def test_allows_within_budget_and_reports_spend() -> None:
    history = [DpSgdEvent(3.0, 1.0, 1)]
    d = decide(history, DpSgdEvent(3.0, 1.0, 1), Budget(2.0, 1e-5))
    assert d.allowed and d.spent == pytest.approx(epsilon(history, delta=1e-5))
    assert d.after == pytest.approx(epsilon(history * 2, delta=1e-5))


def test_refuses_when_the_planned_round_would_overspend() -> None:
    history = [DpSgdEvent(3.0, 1.0, 1)] * 2  # 1.88 spent
    d = decide(history, DpSgdEvent(3.0, 1.0, 1), Budget(2.0, 1e-5))
    assert not d.allowed
    assert d.reason.startswith("budget exhausted: spent 1.88 of 2.00 (delta=1e-05); this round would bring it to 2.3")


def test_refuses_when_no_noise_fits() -> None:
    d = decide([DpSgdEvent(3.0, 1.0, 1)], None, Budget(1.5, 1e-5))
    assert not d.allowed and d.after == float("inf") and "spent 1.28 of 1.50" in d.reason


def test_budget_validates() -> None:
    with pytest.raises(ValueError, match="budget epsilon must be > 0, got 0"):
        Budget(0, 1e-5)
