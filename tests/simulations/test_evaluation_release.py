"""Federated evaluation end to end: a site releases evaluation metrics only through a Gaussian
mechanism charged to its budget, the server averages what it receives, and the audit composes
those releases with DP-SGD."""

from __future__ import annotations

from pathlib import Path

from audit.cli import run_audit
from common.privacy.ledger import read_entries
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario


def test_dp_evaluation_is_released_accounted_and_audited(tmp_path: Path) -> None:
    cfg = load_scenario("hospitals-tabular").replace(
        sites=3,
        rounds=2,
        budget_epsilon=4.0,
        fraction_evaluate=1.0,
        evaluation="dp",
        eval_noise_multiplier=20.0,
        out=str(tmp_path),
    )
    metrics = simulate(cfg, progress=lambda _: None)
    for site in range(3):
        entries = read_entries(tmp_path / "sites" / f"site-{site}" / "ledger.jsonl").entries
        evaluations = [e for e in entries if e["kind"] == "evaluate"]
        assert len(evaluations) == 2
        assert all(e["mechanism"] == {"name": "gaussian", "noise_multiplier": 20.0} for e in evaluations)
        assert max(e["epsilon"] for e in entries if e.get("epsilon") is not None) <= 4.0
    assert metrics["final"]["sites"]["0"]["epsilon"] <= 4.0
    audit = run_audit([tmp_path], trusted_keys_for(tmp_path))
    assert audit.ok, [str(p) for p in audit.problems if p.fatal]


def test_sites_refuse_evaluation_by_default_and_the_job_goes_on(tmp_path: Path) -> None:
    cfg = load_scenario("hospitals-tabular").replace(sites=2, rounds=1, fraction_evaluate=1.0, out=str(tmp_path))
    metrics = simulate(cfg, progress=lambda _: None)
    assert metrics["final"]["accuracy"] > 0.5
    for site in range(2):
        kinds = [e["kind"] for e in read_entries(tmp_path / "sites" / f"site-{site}" / "ledger.jsonl").entries]
        assert "evaluate" not in kinds


def test_evaluation_is_sampled_like_training_by_default(tmp_path: Path) -> None:
    """fraction-evaluate follows fraction-train: with 6 sites and fraction-train 0.5, 3 sites
    are asked to evaluate each round (not all 6, which at 1,000 sites costs seconds a round)."""
    cfg = load_scenario("hospitals-tabular").replace(
        sites=6, rounds=2, fraction_train=0.5, evaluation="dp", eval_noise_multiplier=20.0, out=str(tmp_path)
    )
    assert cfg.evaluate_fraction == 0.5
    simulate(cfg, progress=lambda _: None)
    # Flower samples at random: a site asked for nothing in either round has no ledger at all.
    ledgers = sorted((tmp_path / "sites").glob("site-*/ledger.jsonl"))
    assert ledgers
    asked = [e["round"] for ledger in ledgers for e in read_entries(ledger).entries if e["kind"] == "evaluate"]
    assert sorted(asked) == [1, 1, 1, 2, 2, 2]


def test_no_evaluation_is_asked_when_the_job_expects_none() -> None:
    cfg = load_scenario("hospitals-tabular").replace(fraction_train=0.5)
    assert cfg.evaluate_fraction == 0.0  # policy evaluation off: asking would only bring refusals
    assert cfg.replace(fraction_evaluate=0.2).evaluate_fraction == 0.2
