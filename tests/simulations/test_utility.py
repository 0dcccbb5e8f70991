"""The utility the default scenario must reach, scored on the server's held-out test set:
5 hospitals, Dirichlet(1.0) label skew, delta 1e-5: accuracy >= 0.90 at epsilon 1 and >= 0.95
at epsilon 8 (seed 0, the shipped settings).

Each run's noise and sampling are secret, so a run's accuracy is a random draw: at epsilon 1,
14 runs on 2026-12-05 scored 0.867 once and 0.92-0.98 otherwise. The floor is a claim about a
typical run, so it is checked on the median of three runs; a first run at or above it settles
the check (the median of three can then only fail if both others fall below: about 1% where one
run in 14 does), and a run below it is never ignored: it takes two more above the floor."""

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
    scores = []
    for attempt in range(3):
        run = cfg.replace(out=str(tmp_path / f"run-{attempt}"))
        m = simulate(run, progress=lambda _: None)
        assert m["accuracy_scored_on"] == "server test set"
        assert all(s["epsilon"] <= epsilon for s in m["final"]["sites"].values())
        scores.append(m["final"]["accuracy"])
        if scores[0] >= floor or sum(a >= floor for a in scores) >= 2 or sum(a < floor for a in scores) >= 2:
            break
    assert sorted(scores)[len(scores) // 2] >= floor, scores  # the median (two runs: both below)
