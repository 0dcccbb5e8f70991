"""The auditor's recomputation and cross-checks, on ledgers written by the real site and
server ledger code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audit.cli import run_audit
from client.site_ledger import SiteLedger, simulation_paths
from common.privacy.accounting import DpSgdEvent, epsilon
from common.privacy.ledger import canonical, read_entries
from server.server_ledger import ServerLedger
from server.server_ledger import simulation_paths as server_paths

ROOT = Path(__file__).resolve().parents[2]


def _site_history(
    state: Path,
    site: str,
    events: list[DpSgdEvent],
    *,
    delta: float,
    budget: float,
    job: str = "job-1",
    claim_scale: float = 1.0,
) -> list[dict]:
    ledger = SiteLedger(simulation_paths(state, site), site)
    written = []
    for r, event in enumerate(events, start=1):
        claim = epsilon(events[:r], delta=delta) * claim_scale
        written.append(
            ledger.record_training(
                job=job,
                server_round=r,
                dataset="d" * 64,
                records=100,
                budget={"epsilon": budget, "delta": delta},
                event=event,
                max_grad_norm=1.0,
                delta=delta,
                epsilon=claim,
                update_sha256=f"{site}-{job}-{r}".ljust(64, "0"),
            )
        )
    return written


def _server(state: Path, job: str, rounds: dict[int, list[tuple[str, str]]]) -> None:
    ledger = ServerLedger(server_paths(state))
    ledger.record_job(job=job, settings={})
    for r, items in rounds.items():
        ledger.record_round(
            job=job,
            server_round=r,
            asked=[1, 2],
            refused=[],
            dropped=[],
            aggregate_sha256="a" * 64,
            updated=[{"site": s, "node": 1, "update_sha256": h, "num_examples": 100} for s, h in items],
        )


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
def test_recomputed_epsilon_matches_claims_on_a_grid(
    tmp_path: Path, sigma: float, q: float, steps: int, delta: float
) -> None:
    events = [DpSgdEvent(sigma, q, steps)] * 3
    _site_history(tmp_path, "site-0", events, delta=delta, budget=1e6)
    result = run_audit([tmp_path], None)
    assert [p for p in result.problems if p.fatal] == []
    spend = result.spends[0]
    for point in spend.points:
        assert point.claimed == pytest.approx(point.pld, rel=0.03, abs=0.02)
        assert point.rdp >= point.pld - 0.02


def test_inflated_or_deflated_claims_are_flagged(tmp_path: Path) -> None:
    _site_history(tmp_path, "site-0", [DpSgdEvent(1.0, 0.1, 50)] * 2, delta=1e-5, budget=100, claim_scale=0.7)
    result = run_audit([tmp_path], None)
    assert not result.ok
    assert any(
        "claimed epsilon" in p.what and "independent PLD" in p.what and "line 1" in p.where for p in result.problems
    )


def test_overspend_is_flagged(tmp_path: Path) -> None:
    _site_history(tmp_path, "site-0", [DpSgdEvent(1.0, 0.1, 50)] * 3, delta=1e-5, budget=1.0)
    result = run_audit([tmp_path], None)
    assert any("budget exceeded" in p.what for p in result.problems)


def test_site_and_server_ledgers_must_agree(tmp_path: Path) -> None:
    events = [DpSgdEvent(2.0, 0.5, 4)] * 2
    w0 = _site_history(tmp_path, "site-0", events, delta=1e-5, budget=10)
    w1 = _site_history(tmp_path, "site-1", events, delta=1e-5, budget=10)
    _server(
        tmp_path,
        "job-1",
        {
            1: [("site-0", w0[0]["update_sha256"]), ("site-1", w1[0]["update_sha256"])],
            2: [("site-0", w0[1]["update_sha256"]), ("site-1", "f" * 64)],
        },
    )
    result = run_audit([tmp_path], None)
    mismatch = [p for p in result.problems if p.fatal]
    assert len(mismatch) == 2
    assert any("server" in p.where and "site-1 in job job-1 round 2 has hash ffffffffffff" in p.what for p in mismatch)
    assert any("site-1" in p.where and "line 2" in p.where and "does not list" in p.what for p in mismatch)


def test_server_entry_without_site_entry_is_flagged(tmp_path: Path) -> None:
    w0 = _site_history(tmp_path, "site-0", [DpSgdEvent(2.0, 0.5, 4)], delta=1e-5, budget=10)
    _server(tmp_path, "job-1", {1: [("site-0", w0[0]["update_sha256"])], 2: [("site-0", "e" * 64)]})
    problems = [p for p in run_audit([tmp_path], None).problems if p.fatal]
    assert len(problems) == 1 and "has no entry in site-0's ledger" in problems[0].what
    assert "line 3 (seq 2)" in problems[0].where


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", "audit", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_exit_codes_json_and_message_naming_the_entry(tmp_path: Path) -> None:
    w0 = _site_history(tmp_path, "site-0", [DpSgdEvent(2.0, 0.5, 4)] * 2, delta=1e-5, budget=10)
    _server(tmp_path, "job-1", {1: [("site-0", w0[0]["update_sha256"])], 2: [("site-0", w0[1]["update_sha256"])]})
    ok = _run_cli(str(tmp_path), "--json", "--plot", str(tmp_path / "audit.png"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["sites"][0]["site"] == "site-0" and report["sites"][0]["within_budget"]
    assert (tmp_path / "audit.png").read_bytes().startswith(b"\x89PNG")

    ledger = tmp_path / "sites" / "site-0" / "ledger.jsonl"
    entries = read_entries(ledger).entries
    entries[1]["mechanism"]["noise_multiplier"] = 20.0  # pretend more noise was added
    ledger.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))
    bad = _run_cli(str(tmp_path))
    assert bad.returncode == 1
    assert f"{ledger}: line 2 (seq 1): hash mismatch" in bad.stdout
    assert "FAILED" in bad.stdout

    missing = _run_cli(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr and "Traceback" not in missing.stderr
