"""A server that survives bad updates, through Flower's simulation engine: one malicious site
(scaled, sign-flipped updates) ruins plain FedAvg but not robust aggregation; a site sending
NaNs is rejected, recorded in the server ledger, and the round goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.cli import run_audit
from common.privacy.ledger import read_entries
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario


def _run(tmp_path: Path, name: str, **changes) -> dict:
    cfg = load_scenario("hospitals-tabular").replace(
        partition="iid", budget_epsilon=4.0, out=str(tmp_path / name), **changes
    )
    return simulate(cfg, progress=lambda _: None)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> float:
    return _run(tmp_path_factory.mktemp("honest"), "run")["final"]["accuracy"]


def test_robust_aggregation_survives_a_sign_flipping_site(tmp_path: Path, honest: float) -> None:
    attacked_fedavg = _run(tmp_path, "fedavg", attack="site-2:scale=-10")["final"]["accuracy"]
    attacked_median = _run(tmp_path, "median", attack="site-2:scale=-10", strategy="median")["final"]["accuracy"]
    assert honest >= 0.9
    assert attacked_fedavg < honest - 0.15, (honest, attacked_fedavg)
    assert attacked_median >= honest - 0.05, (honest, attacked_median)
    # The tampering between the site and the server is visible to the auditor.
    audit = run_audit([tmp_path / "median"], trusted_keys_for(tmp_path / "median"))
    assert not audit.ok
    assert any("site-2" in p.what and "but the site recorded" in p.what for p in audit.problems if p.fatal)


def test_nan_update_is_rejected_recorded_and_the_round_goes_on(tmp_path: Path, honest: float) -> None:
    m = _run(tmp_path, "nan", attack="site-2:nan")
    assert all("contains NaN" in r["sites"]["2"]["rejected"] for r in m["rounds"])
    assert all(sum(s["trained"] for s in r["sites"].values()) == 4 for r in m["rounds"])
    assert m["final"]["accuracy"] >= honest - 0.05
    rounds = [e for e in read_entries(tmp_path / "nan" / "server" / "ledger.jsonl").entries if e["kind"] == "round"]
    assert len(rounds) == len(m["rounds"]) >= 2
    assert all([i["site"] for i in e["rejected"]] == ["site-2"] and "NaN" in e["rejected"][0]["reason"] for e in rounds)
