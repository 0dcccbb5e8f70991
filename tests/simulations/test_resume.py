"""A server that crashes after a round resumes from its checkpoint; no site trains (or
spends) twice for a completed round, and the ledgers still pass the audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.cli import run_audit
from common.privacy.accounting import DpSgdEvent, epsilon
from common.privacy.ledger import read_entries
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario


class ServerCrash(Exception):
    pass


def test_restarted_server_resumes_after_the_last_completed_round(tmp_path: Path) -> None:
    cfg = load_scenario("hospitals-tabular").replace(sites=3, rounds=4, out=str(tmp_path))

    def crash_after_round_2(line: str) -> None:
        if line.startswith("round 2/4"):
            raise ServerCrash("power cut")

    with pytest.raises(ServerCrash):
        simulate(cfg, progress=crash_after_round_2)
    assert not (tmp_path / "metrics.json").exists()

    lines: list[str] = []
    m = simulate(cfg.replace(resume=True), progress=lines.append)
    assert any(line.startswith("resuming job") and "after round 2" in line for line in lines)
    assert [r["round"] for r in m["rounds"]] == [1, 2, 3, 4]
    for site in ("0", "1", "2"):
        entries = [
            e
            for e in read_entries(tmp_path / "sites" / f"site-{site}" / "ledger.jsonl").entries
            if e["kind"] == "train"
        ]
        assert [e["round"] for e in entries] == [1, 2, 3, 4]  # each round trained (and spent) once
        assert len({e["job"] for e in entries}) == 1
        mech = entries[0]["mechanism"]
        event = DpSgdEvent(mech["noise_multiplier"], mech["sample_rate"], mech["steps"])
        assert m["final"]["sites"][site]["epsilon"] == pytest.approx(
            epsilon([event] * 4, delta=cfg.policy.budget_delta)
        )
        assert m["final"]["sites"][site]["epsilon"] <= cfg.policy.budget_epsilon
    audit = run_audit([tmp_path], trusted_keys_for(tmp_path))
    assert audit.ok, [str(p) for p in audit.problems]
