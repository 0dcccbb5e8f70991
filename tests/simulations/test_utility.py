"""The utility the default scenario must reach, scored on the server's held-out test set:
5 hospitals, Dirichlet(1.0) label skew, delta 1e-5: accuracy >= 0.90 at epsilon 1 and >= 0.95
at epsilon 8 (seed 0, the shipped settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.harness import simulate
from simulations.scenarios import load_scenario


@pytest.mark.parametrize("epsilon, floor", [(1.0, 0.90), (8.0, 0.95)])
def test_default_scenario_reaches_its_accuracy(tmp_path: Path, epsilon: float, floor: float) -> None:
    cfg = load_scenario("hospitals-tabular").replace(budget_epsilon=epsilon, out=str(tmp_path))
    assert (cfg.federation.sites, cfg.data.partition, cfg.data.alpha, cfg.policy.budget_delta) == (
        5,
        "dirichlet",
        1.0,
        1e-5,
    )
    m = simulate(cfg, progress=lambda _: None)
    assert m["accuracy_scored_on"] == "server test set"
    assert all(s["epsilon"] <= epsilon for s in m["final"]["sites"].values())
    assert m["final"]["accuracy"] >= floor
