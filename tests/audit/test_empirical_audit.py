"""The empirical audit end to end, as an auditor runs it: real simulations (Flower's engine,
real Opacus) with gradient canaries, then ``fedshield audit empirical RUN_DIR``.

Power and honesty: without DP the lower bound is clearly positive; with DP at epsilon 1, 3 and
8 it never exceeds the claim (two sites, each its own canaries and secret, per epsilon); and
each broken-on-purpose run is flagged (noise off, noise from a seed the auditor knows and
subtracts, a larger clip than recorded). Small settings: the Wisconsin data (569 records), an
MLP of 2,178 parameters, 1,000 canaries per site, 3 rounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.config import RunConfig
from fedshield.cli import main
from simulations.harness import simulate

pytestmark = pytest.mark.slow

CANARIES = 1000


def _run(out: Path, **changes: Any) -> tuple[int, dict[str, Any]]:
    settings: dict[str, Any] = {
        "dataset": "sklearn:breast_cancer",
        "partition": "iid",
        "model": "mlp",
        "hidden": "64",
        "sites": 3,
        "rounds": 3,
        "batch_size": 64,
        "learning_rate": 4.0,
        "budget_epsilon": 1.0,
        "audit_canaries": CANARIES,
        "centralized_eval": False,
        "out": str(out),
    }
    simulate(RunConfig.of(**{**settings, **changes}))
    return main(["audit", "empirical", str(out), "--json", "--plot", str(out / "audit.png")]), json.loads(
        (out / "audit-empirical.json").read_text()
    )


def _bounds(report: dict[str, Any]) -> dict[str, tuple[float, float, float | None]]:
    return {
        s["site"]: (s["views"]["release"]["epsilon"], s["views"]["aggregate"]["epsilon"], s["claimed_epsilon"])
        for s in report["sites"]
    }


def test_without_dp_the_lower_bound_is_clearly_positive(tmp_path: Path) -> None:
    code, report = _run(tmp_path / "run", dp=False)
    assert code == 0  # no claim to violate: epsilon is infinite
    for site, (release, aggregate, claimed) in _bounds(report).items():
        assert claimed is None
        assert release >= 1.0, (site, release)
        assert aggregate >= 1.0, (site, aggregate)  # the server's view, no secure aggregation
    assert (tmp_path / "run" / "audit.png").stat().st_size > 0


def test_with_dp_the_lower_bound_never_exceeds_the_claim(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, report = _run(
        tmp_path / "run",
        sites=6,
        budget_epsilon_by_site="site-0=1,site-1=1,site-2=3,site-3=3,site-4=8,site-5=8",
        budget_epsilon=8.0,
        secure_aggregation=True,  # the aggregate view is what the server sees under SecAgg+
        evaluation="dp",
        fraction_evaluate=1.0,
    )
    assert code == 0, report
    bounds = _bounds(report)
    assert len(bounds) == 6
    for site, (release, aggregate, claimed) in bounds.items():
        assert claimed is not None and release <= claimed and aggregate <= claimed, (site, release, aggregate, claimed)
    assert len(report["evaluation_releases"]) == 6
    assert not any(e["violation"] for e in report["evaluation_releases"])
    # the ledger audit shows the empirical bounds beside its own verdict
    capsys.readouterr()
    keys = f"{tmp_path / 'run'}.trusted-keys"
    main(["audit", str(tmp_path / "run"), "--keys", keys])
    assert "audited lower bound" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fault",
    [{"simulated_fault": "noise-off"}, {"simulated_fault": "clip-larger"}, {"insecure_reproducible_noise": True}],
    ids=["noise-off", "clip-larger", "known-seed"],
)
def test_a_broken_run_is_flagged_as_a_violation(tmp_path: Path, fault: dict[str, Any]) -> None:
    code, report = _run(tmp_path / "run", **fault)
    assert code == 1 and report["verdict"] == "VIOLATION"
    for site, (release, _, claimed) in _bounds(report).items():
        assert claimed is not None and release > claimed, (site, release, claimed)


def test_input_canaries_are_scored_black_box_and_white_box(tmp_path: Path) -> None:
    code, report = _run(tmp_path / "run", sites=2, rounds=2, audit_canary_kind="input", audit_canaries=300)
    assert code == 0
    for site in report["sites"]:
        assert site["kind"] == "input" and site["canaries"] == 300
        assert set(site["views"]) == {
            "release, gradient alignment",
            "release, loss",
            "aggregate, gradient alignment",
            "aggregate, loss",
        }
        assert site["lower_bound"] <= site["claimed_epsilon"]
