"""Attacks on the audit, each of which the audit used to pass as VERIFIED: a site or the
server forges, re-signs, deletes or swaps keys; the audit must now fail and name why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from audit_ledgers import Site, provision, prv_epsilon, rewrite, server

from audit.cli import run_audit
from audit.report import AuditResult
from common.privacy.accounting import DpSgdEvent
from common.privacy.ledger import LEDGER_FILE

JOB = "job-1"
EVENT = DpSgdEvent(2.0, 0.5, 4)


def _fatal(result: AuditResult) -> list[str]:
    return [str(p) for p in result.problems if p.fatal]


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    """An honest two-site, two-round run and the keys provisioned for the auditor."""
    state = tmp_path / "run"
    sites = [Site(state, f"site-{i}") for i in range(2)]
    rounds = {r: [s.round(JOB, r, EVENT) for s in sites] for r in (1, 2)}
    server(state, JOB, rounds)
    trusted = provision(state, tmp_path / "trusted")
    assert run_audit([state], trusted).verdict == "VERIFIED"
    return state, trusted


def _more_noise(entries: list[dict]) -> None:
    """The forger claims sigma 4 instead of 2, with the epsilon that sigma would give."""
    history = []
    for e in entries:
        mech = e.get("mechanism", {})
        if "noise_multiplier" in mech:
            mech["noise_multiplier"] = 4.0
        if e["kind"] == "reserve":
            history.append(DpSgdEvent(4.0, mech["sample_rate"], mech["steps"]))
        if e["kind"] in ("reserve", "train"):
            e["epsilon"] = prv_epsilon(tuple(history), e["delta"])


def _site_ledger(state: Path, site: str = "site-0") -> Path:
    return state / "sites" / site / LEDGER_FILE


def test_a_site_re_signing_with_a_new_key_and_swapping_its_pub_fails(run: tuple[Path, Path]) -> None:
    state, trusted = run
    rewrite(_site_ledger(state), _more_noise, new_key=True)  # also replaces run/keys/site-0.pub
    result = run_audit([state], trusted)
    assert not result.ok
    assert any("site-0" in p and "bad signature" in p for p in _fatal(result)), _fatal(result)


def test_a_site_re_signing_with_its_own_key_is_caught_by_the_servers_claim(run: tuple[Path, Path]) -> None:
    state, trusted = run
    rewrite(_site_ledger(state), _more_noise, key_path=state / "sites" / "site-0" / "site.key")
    result = run_audit([state], trusted)
    problems = _fatal(result)
    # Signatures and the recomputation hold; only the server's record of the claim disagrees.
    assert not any("signature" in p or "under-claim" in p for p in problems), problems
    assert any(
        "server" in p and "site-0 reported for job job-1 round 1 mechanism" in p and "'noise_multiplier': 2.0" in p
        for p in problems
    ), problems


def test_a_server_re_signing_its_ledger_with_a_new_key_fails(run: tuple[Path, Path]) -> None:
    state, trusted = run

    def hide_site_1(entries: list[dict]) -> None:
        for e in entries:
            if e["kind"] == "round":
                e["updated"] = [i for i in e["updated"] if i["site"] != "site-1"]

    rewrite(state / "server" / LEDGER_FILE, hide_site_1, new_key=True)
    problems = _fatal(run_audit([state], trusted))
    assert any("server" in p and "bad signature" in p for p in problems)
    assert any("site-1" in p and "does not list" in p for p in problems)


def test_keys_read_from_the_audited_folder_are_refused(run: tuple[Path, Path]) -> None:
    from audit.trust import AuditInputError

    state, _ = run
    with pytest.raises(AuditInputError, match="inside the audited folder"):
        run_audit([state], state / "keys")
    with pytest.raises(AuditInputError, match="no trusted keys"):
        run_audit([state], None)


def test_a_swapped_key_does_not_match_the_pinned_fingerprint(run: tuple[Path, Path], tmp_path: Path) -> None:
    from common.crypto import keys

    state, trusted = run
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({p.stem: keys.fingerprint(keys.load_public(p)) for p in trusted.glob("*.pub")}))
    assert run_audit([state], None, fingerprints=pins).ok  # pins alone: keys found in the folder must match
    assert run_audit([state], state / "keys", fingerprints=pins).ok  # inside, but every key matches its pin
    rewrite(_site_ledger(state), _more_noise, new_key=True)
    problems = _fatal(run_audit([state], None, fingerprints=pins))
    assert any("site-0" in p and "no public key with the pinned fingerprint" in p for p in problems), problems


def test_a_ledger_whose_owner_has_no_trusted_key_fails(run: tuple[Path, Path]) -> None:
    state, trusted = run
    (trusted / "site-1.pub").unlink()
    problems = _fatal(run_audit([state], trusted))
    assert any("site-1" in p and "no trusted key for 'site-1'" in p for p in problems), problems


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_missing_or_empty_site_ledger_fails(run: tuple[Path, Path], how: str) -> None:
    state, trusted = run
    ledger = _site_ledger(state, "site-1")
    if how == "deleted":
        shutil.rmtree(ledger.parent)
    else:
        ledger.write_bytes(b"")
    problems = _fatal(run_audit([state], trusted))
    reason = "ledger was not given (missing)" if how == "deleted" else "ledger is empty"
    assert any("server" in p and f"site-1's {reason}" in p for p in problems), problems


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_missing_or_empty_server_ledger_fails(run: tuple[Path, Path], how: str) -> None:
    state, trusted = run
    ledger = state / "server" / LEDGER_FILE
    if how == "deleted":
        ledger.unlink()
    else:
        ledger.write_bytes(b"")
    problems = _fatal(run_audit([state], trusted))
    assert any("a site claim the server never saw" in p for p in problems), problems


def test_site_ledgers_alone_are_not_verified(run: tuple[Path, Path]) -> None:
    state, trusted = run
    problems = _fatal(run_audit([_site_ledger(state, "site-0"), _site_ledger(state, "site-1")], trusted))
    assert any("no server ledger given" in p for p in problems), problems


def test_a_site_job_the_server_never_saw_fails(run: tuple[Path, Path]) -> None:
    state, trusted = run
    Site(state, "site-0").round("job-elsewhere", 1, EVENT)
    problems = _fatal(run_audit([state], trusted))
    assert any("job job-elsewhere round 1, a job no given server ledger holds" in p for p in problems), problems


def test_a_server_recording_no_claim_fails(run: tuple[Path, Path]) -> None:
    state, trusted = run

    def drop_claims(entries: list[dict]) -> None:
        for e in entries:
            for item in e.get("updated", []):
                item["claim"] = None

    rewrite(state / "server" / LEDGER_FILE, drop_claims, key_path=state / "server" / "server.key")
    problems = _fatal(run_audit([state], trusted))
    assert any("recorded no claim" in p for p in problems), problems


def test_a_compare_no_dp_run_in_the_folder_is_a_non_private_release(run: tuple[Path, Path], tmp_path: Path) -> None:
    state, trusted = run
    no_dp = state / "no-dp"
    site = Site(no_dp, "site-0")
    server(no_dp, JOB, {1: [site.train(JOB, 1, None, "9" * 64)]})
    (no_dp / "metrics.json").write_text(json.dumps({"dp": False}))
    result = run_audit([state], trusted)
    assert result.verdict == "NOT PRIVATE"
    assert any(p.not_private and "no-dp" in p.where and "non-private release" in p.what for p in result.problems)
    own = run_audit([no_dp], provision(no_dp, tmp_path / "no-dp-trusted"))
    assert own.verdict == "NOT PRIVATE"
    # A non-DP run that left no ledgers at all is still not VERIFIED.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.json").write_text(json.dumps({"dp": False}))
    assert run_audit([bare], trusted).verdict == "NOT PRIVATE"


def test_a_ledger_cut_below_its_signed_head_fails(run: tuple[Path, Path]) -> None:
    """Deleting the last entries keeps the hash chain valid; the owner's signed head says
    how many were written. (Cutting a reservation the server never saw lowers the spend.)"""
    state, trusted = run
    Site(state, "site-0").reserve(JOB, 3, EVENT)  # training started, then a crash: still spent
    ledger = _site_ledger(state)
    lines = ledger.read_bytes().splitlines(keepends=True)
    ledger.write_bytes(b"".join(lines[:-1]))
    problems = _fatal(run_audit([state], trusted))
    assert any("site-0" in p and "the signed head says 5 entries were written but only 4" in p for p in problems)


def test_a_release_after_the_servers_last_round_is_an_interrupted_job_not_a_forgery(run: tuple[Path, Path]) -> None:
    # kill -9 between the site's ledger entry and the server's: the spend counts, the audit passes.
    state, trusted = run
    Site(state, "site-0", history=[EVENT, EVENT]).round(JOB, 3, EVENT)  # rounds 1-2 already spent
    result = run_audit([state], trusted)
    assert result.verdict == "VERIFIED", _fatal(result)
    assert any("interrupted before this round was recorded" in str(p) for p in result.problems)


def test_a_release_in_a_round_the_server_skipped_fails(tmp_path: Path) -> None:
    state = tmp_path / "run"
    sites = [Site(state, f"site-{i}") for i in range(2)]
    rounds = {r: [s.round(JOB, r, EVENT) for s in sites] for r in (1, 2, 3)}
    del rounds[2]  # the server hides round 2 but records round 3
    server(state, JOB, rounds)
    problems = _fatal(run_audit([state], provision(state, tmp_path / "trusted")))
    assert any("round 2, but the server ledger has no such round" in p for p in problems), problems
