"""The auditor's recomputation: pessimistic PLD over reserve/train/evaluate events, claims,
budgets and delta, on hand-built ledgers in the site-ledger format.

Unit of privacy: one record at one site (add/remove-one); epsilon at the budget's delta."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_ledgers import Site, provision, server

from audit.cli import run_audit
from audit.report import AuditResult
from common.privacy.accounting import DpSgdEvent, epsilon

JOB = "job-1"


def _fatal(result: AuditResult) -> list[str]:
    return [str(p) for p in result.problems if p.fatal]


def _audit(state: Path, tmp_path: Path) -> AuditResult:
    return run_audit([state], provision(state, tmp_path / "trusted"))


@pytest.mark.parametrize(
    "sigma, q, steps, delta",
    [
        (0.8, 0.01, 500, 1e-5),
        (1.1, 0.1, 30, 1e-5),
        (2.0, 0.5, 4, 1e-6),
        (4.0, 1.0, 2, 1e-5),
        (1.0, 0.05, 100, 1e-3),
        (6.0, 1.0, 1, 1e-7),
        (1.5, 0.2, 20, 1e-4),
        (0.6, 0.02, 200, 1e-5),
    ],
)
def test_honest_prv_claims_pass_and_bound_the_pessimistic_pld(
    tmp_path: Path, sigma: float, q: float, steps: int, delta: float
) -> None:
    state = tmp_path / "run"
    site = Site(state, "site-0", delta=delta, budget=1e6)
    trains = [site.round(JOB, r, DpSgdEvent(sigma, q, steps)) for r in (1, 2, 3)]
    server(state, JOB, {r: [t] for r, t in zip((1, 2, 3), trains, strict=True)})
    result = _audit(state, tmp_path)
    assert _fatal(result) == [] and result.verdict == "VERIFIED"
    spend = result.spends[0]
    assert len(spend.points) == 6  # reserve and train per round; the train is not a second spend
    for point in spend.points:
        # PRV (the site) is an upper bound a little above the pessimistic PLD (ours); RDP is looser.
        assert point.claimed == pytest.approx(point.pld, rel=0.03, abs=0.02)
        assert point.rdp >= point.pld - 1e-9
    assert spend.points[-1].pld == pytest.approx(spend.points[-2].pld)


def test_reserve_train_and_gaussian_evaluation_compose_in_ledger_order(tmp_path: Path) -> None:
    state = tmp_path / "run"
    site = Site(state, "site-0", budget=20)
    t1 = site.round(JOB, 1, DpSgdEvent(2.0, 0.5, 4))
    site.evaluate(JOB, 1, 5.0)  # a Gaussian release of evaluation metrics: counted
    site.evaluate(JOB, 1, None)  # declared public by the site: noted, not counted
    t2 = site.round(JOB, 2, DpSgdEvent(2.0, 0.5, 4))
    site.reserve(JOB, 3, DpSgdEvent(2.0, 0.5, 4))  # a crash after the reserve: still spent
    server(state, JOB, {1: [t1], 2: [t2]})
    result = _audit(state, tmp_path)
    assert _fatal(result) == [], _fatal(result)
    notes = [p.what for p in result.problems if not p.fatal]
    assert any("declared its validation records public" in n for n in notes)
    assert any("reserved a DP-SGD step for job job-1 round 3" in n and "counted as spent" in n for n in notes)
    expected = epsilon([DpSgdEvent(2.0, 0.5, 4), DpSgdEvent(5.0, 1.0, 1)] + [DpSgdEvent(2.0, 0.5, 4)] * 2, delta=1e-5)
    spend = result.spends[0]
    assert spend.spent_pld == pytest.approx(expected, rel=0.03, abs=0.02) and spend.spent_pld <= expected
    assert spend.trained == 2 and spend.public_evaluations == 1


def test_recomputed_epsilon_above_the_budget_fails_without_a_margin(tmp_path: Path) -> None:
    # The site claims exactly its budget, 0.015 below the recomputed PLD: within the claim
    # tolerance (so not an under-claim), inside the old audit's upward margin, yet overspent.
    event = DpSgdEvent(2.0, 0.5, 4)
    probe = Site(tmp_path / "probe", "site-0")
    probe.round(JOB, 1, event)
    pld = _audit(tmp_path / "probe", tmp_path / "p").spends[0].spent_pld
    state = tmp_path / "run"
    site = Site(state, "site-0", budget=round(pld - 0.015, 4))
    site.claim_scale = site.budget / epsilon([event], delta=site.delta)
    server(state, JOB, {1: [site.round(JOB, 1, event)]})
    problems = _fatal(_audit(state, tmp_path))
    assert any("budget exceeded: recomputed epsilon" in p and "pessimistic PLD" in p for p in problems), problems
    assert not any("under-claim" in p for p in problems)


def test_under_claims_fail_and_over_claims_pass(tmp_path: Path) -> None:
    for scale, fails in ((0.7, True), (1.5, False)):
        state = tmp_path / f"run-{scale}"
        site = Site(state, "site-0", budget=100, claim_scale=scale)
        server(state, JOB, {1: [site.round(JOB, 1, DpSgdEvent(1.0, 0.1, 50))]})
        problems = _fatal(_audit(state, tmp_path / f"t-{scale}"))
        assert any("under-claim" in p and "line 1 (seq 0)" in p for p in problems) is fails, problems


def test_delta_outside_zero_to_one_over_n_is_fatal(tmp_path: Path) -> None:
    state = tmp_path / "run"
    site = Site(state, "site-0", records=100, delta=0.05, budget=1e3)  # 1/n = 0.01
    server(state, JOB, {1: [site.round(JOB, 1, DpSgdEvent(2.0, 0.5, 4))]})
    problems = _fatal(_audit(state, tmp_path))
    assert any("delta 0.05 is outside (0, 1/n] = (0, 0.01] for n = 100 records" in p for p in problems), problems


def test_reproducible_noise_is_not_private(tmp_path: Path) -> None:
    state = tmp_path / "run"
    site = Site(state, "site-0", noise="insecure-reproducible")
    server(state, JOB, {1: [site.round(JOB, 1, DpSgdEvent(2.0, 0.5, 4))]})
    result = _audit(state, tmp_path)
    assert result.verdict == "NOT PRIVATE" and not result.ok
    assert any(p.not_private and "insecure-reproducible" in p.what for p in result.problems)
    assert result.spends[0].spent_pld == float("inf")


def test_a_release_without_dp_is_not_private(tmp_path: Path) -> None:
    state = tmp_path / "run"
    site = Site(state, "site-0")
    t1 = site.round(JOB, 1, DpSgdEvent(2.0, 0.5, 4))
    t2 = site.train(JOB, 2, None, "e" * 64)
    server(state, JOB, {1: [t1], 2: [t2]})
    result = _audit(state, tmp_path)
    assert result.verdict == "NOT PRIVATE"
    assert any("non-private release" in p.what and "line 3 (seq 2)" in p.where for p in result.problems if p.fatal)


def test_a_raised_budget_fails_and_changed_data_is_noted(tmp_path: Path) -> None:
    state = tmp_path / "run"
    site = Site(state, "site-0", budget=5)
    t1 = site.round(JOB, 1, DpSgdEvent(2.0, 0.5, 4))
    site.budget, site.dataset = 50, "f" * 64
    t2 = site.round(JOB, 2, DpSgdEvent(2.0, 0.5, 4))
    server(state, JOB, {1: [t1], 2: [t2]})
    result = _audit(state, tmp_path)
    assert any("can only be lowered, never raised" in p for p in _fatal(result))
    assert any("data of breast_cancer changed" in p.what and "budget continues" in p.what for p in result.problems)
    # One source, one composition: the second fingerprint did not reset the spend.
    assert len(result.spends) == 1 and len(result.spends[0].datasets) == 2
    assert result.spends[0].spent_pld == pytest.approx(epsilon([DpSgdEvent(2.0, 0.5, 4)] * 2, delta=1e-5), abs=0.02)


def test_a_train_entry_must_complete_the_reservation_it_names(tmp_path: Path) -> None:
    state = tmp_path / "run"
    site = Site(state, "site-0")
    reserved = site.reserve(JOB, 1, DpSgdEvent(2.0, 0.5, 4))
    t1 = site.train(JOB, 1, reserved, "1" * 64)
    # A second update released under the same reservation: counted, and fatal.
    t2 = site.train(JOB, 2, reserved, "2" * 64)
    server(state, JOB, {1: [t1], 2: [t2]})
    result = _audit(state, tmp_path)
    assert any("a second release under reservation seq 0" in p for p in _fatal(result))
    assert result.spends[0].spent_pld == pytest.approx(epsilon([DpSgdEvent(2.0, 0.5, 4)] * 2, delta=1e-5), abs=0.02)
