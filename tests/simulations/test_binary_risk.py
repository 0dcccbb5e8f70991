"""The bank's job end to end in simulation: binary risk scoring judged by pooled AUC (never by
accuracy alone), audited, then the run's model predicts new applicants."""

from __future__ import annotations

from pathlib import Path

from audit.cli import run_audit
from common.credit import write_credit_csv
from server.predict import predict
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario


def test_banks_credit_reports_risk_metrics_is_verified_and_predicts(tmp_path: Path) -> None:
    cfg = load_scenario("banks-credit").replace(rounds=3, out=str(tmp_path / "run"))
    metrics = simulate(cfg)
    assert metrics["task"] == "binary-risk" and metrics["headline"] == "roc_auc"
    final = metrics["final"]["metrics"]
    assert set(final) >= {"roc_auc", "pr_auc", "brier", "balanced_accuracy", "recall", "precision"}
    assert final["roc_auc"] > 0.62  # measured 0.69-0.70 at 5 rounds, chance 0.5
    assert all(r["metrics"]["roc_auc"] is not None for r in metrics["rounds"])
    assert (tmp_path / "run" / "training.png").stat().st_size > 10_000
    result = run_audit([Path(cfg.out)], trusted_keys_for(Path(cfg.out)))
    assert result.verdict == "VERIFIED", [p.what for p in result.problems]
    applicants = tmp_path / "applicants.csv"
    write_credit_csv(str(applicants), 400, seed=21)
    predicted = predict(cfg.out, applicants)
    assert predicted.labelled and abs(predicted.metrics["roc_auc"] - final["roc_auc"]) < 0.1
