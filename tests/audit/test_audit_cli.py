"""``fedshield audit``: exit codes (0 VERIFIED, 1 FAILED / NOT PRIVATE, 2 bad inputs), the
JSON report and plot, and how trusted keys and fingerprints are given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from audit_ledgers import Site, provision, server

from audit.trust import AuditInputError, read_fingerprints
from common.crypto import keys
from common.privacy.accounting import DpSgdEvent
from common.privacy.ledger import canonical, read_entries

ROOT = Path(__file__).resolve().parents[2]
JOB = "job-1"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedshield", "audit", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "run"
    site = Site(state, "site-0")
    server(state, JOB, {r: [site.round(JOB, r, DpSgdEvent(2.0, 0.5, 4))] for r in (1, 2)})
    return state, provision(state, tmp_path / "trusted")


def test_exit_codes_json_plot_and_the_entry_named(run: tuple[Path, Path], tmp_path: Path) -> None:
    state, trusted = run
    ok = _cli(str(state), "--keys", str(trusted), "--json", "--plot", str(tmp_path / "audit.png"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["verdict"] == "VERIFIED"
    assert report["sites"][0]["site"] == "site-0" and report["sites"][0]["within_budget"]
    assert "one record at one site" in report["unit_of_privacy"]
    assert (tmp_path / "audit.png").read_bytes().startswith(b"\x89PNG")

    ledger = state / "sites" / "site-0" / "ledger.jsonl"
    entries = read_entries(ledger).entries
    entries[1]["mechanism"]["noise_multiplier"] = 20.0  # pretend more noise was added
    ledger.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))
    bad = _cli(str(state), "--keys", str(trusted))
    assert bad.returncode == 1
    assert f"{ledger}: line 2 (seq 1): hash mismatch" in bad.stdout
    assert "FAILED" in bad.stdout and "VERIFIED" not in bad.stdout


def test_bad_inputs_exit_2_with_one_line(run: tuple[Path, Path], tmp_path: Path) -> None:
    state, trusted = run
    for args, says in (
        ([str(state)], "no trusted keys: pass --keys DIR"),
        ([str(state), "--keys", str(state / "keys")], "lies inside the audited folder"),
        ([str(state), "--keys", str(tmp_path / "nowhere")], "trusted keys folder not found"),
        ([str(tmp_path / "nowhere"), "--keys", str(trusted)], "no such file or folder"),
        ([str(state), "--trusted-fingerprints", str(tmp_path / "none.json")], "fingerprints file not found"),
    ):
        proc = _cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert says in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_not_private_is_said_in_text_and_json(tmp_path: Path) -> None:
    state = tmp_path / "run"
    site = Site(state, "site-0", noise="insecure-reproducible")
    server(state, JOB, {1: [site.round(JOB, 1, DpSgdEvent(2.0, 0.5, 4))]})
    trusted = provision(state, tmp_path / "trusted")
    text = _cli(str(state), "--keys", str(trusted), "--plot", str(tmp_path / "p.png"))
    assert text.returncode == 1 and "NOT PRIVATE" in text.stdout and "VERIFIED" not in text.stdout
    report = json.loads(_cli(str(state), "--keys", str(trusted), "--json").stdout)
    assert report["verdict"] == "NOT PRIVATE" and report["sites"][0]["verdict"] == "NOT PRIVATE"
    assert report["sites"][0]["spent"]["pld"] == "inf"


def test_fingerprint_files_as_json_or_lines(run: tuple[Path, Path], tmp_path: Path) -> None:
    state, trusted = run
    pins = {p.stem: keys.fingerprint(keys.load_public(p)) for p in trusted.glob("*.pub")}
    as_json = tmp_path / "pins.json"
    as_json.write_text(json.dumps(pins))
    as_lines = tmp_path / "pins.txt"
    as_lines.write_text("# owner fingerprint\n" + "".join(f"{o} {f.upper()}\n" for o, f in pins.items()))
    assert read_fingerprints(as_json) == read_fingerprints(as_lines) == pins
    proc = _cli(str(state), "--trusted-fingerprints", str(as_lines))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("site-0 0123456789abcdef\n")
    with pytest.raises(AuditInputError, match="do not match the trusted fingerprints"):
        from audit.cli import run_audit

        run_audit([state], trusted, fingerprints=wrong)
