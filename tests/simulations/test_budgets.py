"""Budgets are enforced by the sites, through Flower's simulation engine, and the resulting
ledgers pass the audit: a small-budget site stops partway while others go on; a server asking
for more rounds than the sites planned gets refusals, not overspend; a second job on the same
data starts from the first job's spend and ends cleanly when no site can train."""

from __future__ import annotations

from pathlib import Path

from audit.cli import run_audit
from common.privacy.ledger import read_entries
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario

QUIET = {"progress": lambda _: None}


def _site_entries(state: Path, site: str) -> list[dict]:
    return read_entries(state / "sites" / site / "ledger.jsonl").entries


def test_small_budget_site_stops_partway_while_others_continue(tmp_path: Path) -> None:
    # Fixed noise 3.0 at sample rate 1 (site 1 holds 94 records, batch 128): epsilon 1.28, 1.88,
    # 2.35, ... after rounds 1, 2, 3.
    cfg = load_scenario("hospitals-tabular").replace(
        sites=3,
        rounds=4,
        batch_size=128,
        noise_multiplier=3.0,
        budget_epsilon=10.0,
        budget_epsilon_by_site="site-1=2.0",
        out=str(tmp_path),
    )
    m = simulate(cfg, **QUIET)
    trained = {s: [r["round"] for r in m["rounds"] if r["sites"][s]["trained"]] for s in ("0", "1", "2")}
    assert trained == {"0": [1, 2, 3, 4], "1": [1, 2], "2": [1, 2, 3, 4]}
    assert m["rounds"][2]["sites"]["1"]["refused"].startswith("budget exhausted: spent 1.88 of 2.00")
    assert m["rounds"][3]["sites_asked"] == 2  # the exhausted site is not asked again
    assert m["final"]["sites"]["1"]["epsilon"] <= 2.0 and m["final"]["sites"]["1"]["refusals"] == 1
    kinds = [e["kind"] for e in _site_entries(tmp_path, "site-1")]
    assert kinds == ["reserve", "train", "reserve", "train", "refusal"]
    audit = run_audit([tmp_path], trusted_keys_for(tmp_path))
    assert audit.ok, [str(p) for p in audit.problems]


def test_more_rounds_than_planned_get_refusals_then_a_second_job_continues_the_spend(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sites_plan = load_scenario("hospitals-tabular").replace(
        sites=3, rounds=2, budget_epsilon=1.0, state_dir=str(state), out=str(tmp_path / "job1")
    )
    # The server asks for 3 rounds; the sites calibrated their noise for the 2 they planned.
    m1 = simulate(sites_plan.replace(rounds=3), site_cfg=sites_plan, **QUIET)
    assert [sum(s["trained"] for s in r["sites"].values()) for r in m1["rounds"]] == [3, 3, 0]
    assert all(s["refused"] for s in m1["rounds"][2]["sites"].values())
    spent_job1 = {s: v["epsilon"] for s, v in m1["final"]["sites"].items()}
    assert all(0.9 < eps <= 1.0 for eps in spent_job1.values())

    # A second job on the same data (same site ledgers), noise fixed by the sites: nothing fits.
    job2 = sites_plan.replace(rounds=3, noise_multiplier=3.0, out=str(tmp_path / "job2"))
    m2 = simulate(job2, **QUIET)
    assert m2["stopped_after_round"] == 1  # the job ends cleanly when no site can train
    assert [r["round"] for r in m2["rounds"]] == [1]
    for site in ("0", "1", "2"):
        reason = m2["rounds"][0]["sites"][site]["refused"]
        assert reason.startswith(f"budget exhausted: spent {spent_job1[site]:.2f} of 1.00"), reason
        entries = _site_entries(state, f"site-{site}")
        assert [e["kind"] for e in entries] == ["reserve", "train", "reserve", "train", "refusal", "refusal"]
        assert len({e["job"] for e in entries}) == 2 and len({e["dataset"] for e in entries}) == 1
    audit = run_audit([state], trusted_keys_for(state))
    assert audit.ok, [str(p) for p in audit.problems]
    assert all(s.spent_claimed <= 1.0 and len(s.jobs) == 2 for s in audit.spends)
