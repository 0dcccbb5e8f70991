"""Integrity of ledgers: which ledgers are under audit, and their signatures and hash chains.

Nothing here trusts the server or a site: every check uses only the ledger files and the
public keys the auditor was given from outside the audited folders (:mod:`audit.trust`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.trust import AuditInputError, TrustedKeys
from common.crypto import keys
from common.privacy.ledger import (
    HEAD_FILE,
    LEDGER_FILE,
    LedgerError,
    canonical,
    parse_head,
    read_entries,
    verify_entries,
)

SERVER = "server"
METRICS_FILE = "metrics.json"  # a run's summary; ``"dp": false`` marks a run without DP
_RUN_PARTS = ("server", "sites", "keys", "archive")

__all__ = ["AuditInputError", "Discovery", "LoadedLedger", "Problem", "discover", "load"]


@dataclass(frozen=True)
class Problem:
    """One finding. ``where`` names the ledger and entry. ``fatal`` findings fail the audit;
    ``not_private`` ones say that a release has no finite epsilon (no DP, or noise that
    anyone can reproduce), which the report calls NOT PRIVATE."""

    where: str
    what: str
    fatal: bool = True
    not_private: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class LoadedLedger:
    path: Path
    owner: str
    entries: list[dict[str, Any]]
    key_id: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def is_server(self) -> bool:
        return self.owner == SERVER


@dataclass
class Discovery:
    """What the auditor's paths hold: ledger files, the folders under audit (a trusted key
    must come from outside them), where pinned keys may be looked up, and findings made
    before any ledger is read (a run folder that trained without DP)."""

    ledgers: list[Path]
    audited: list[Path]
    key_search: list[Path]
    problems: list[Problem] = field(default_factory=list)


def _run_ledgers(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"server/{LEDGER_FILE}")) + sorted(folder.glob(f"sites/*/{LEDGER_FILE}"))


def _metrics_say_no_dp(folder: Path) -> bool:
    metrics = folder / METRICS_FILE
    if not metrics.is_file():
        return False
    try:
        return json.loads(metrics.read_text()).get("dp") is False
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return False


def _trained_without_dp(folder: Path) -> bool:
    if _metrics_say_no_dp(folder):
        return True
    for ledger in sorted(folder.glob(f"sites/*/{LEDGER_FILE}")):
        try:
            entries = read_entries(ledger).entries
        except LedgerError:
            continue
        if any(e.get("kind") == "train" and (e.get("mechanism") or {}).get("name") == "none" for e in entries):
            return True
    return False


def _nested_runs(folder: Path) -> list[Problem]:
    """Other runs kept inside a run folder (``--compare-no-dp`` writes ``no-dp/``): one that
    trained without DP released the same records without any guarantee."""
    problems = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in _RUN_PARTS):
        if not (_run_ledgers(sub) or (sub / METRICS_FILE).is_file()):
            continue
        if _trained_without_dp(sub):
            problems.append(
                Problem(
                    str(sub),
                    "non-private release: this run trained on the same records without DP "
                    "(e.g. --compare-no-dp); its model and updates carry no finite epsilon",
                    not_private=True,
                )
            )
        else:
            problems.append(Problem(str(sub), "another run's ledgers are kept here; audit it separately", fatal=False))
    return problems


def discover(paths: list[Path]) -> Discovery:
    """Ledger files from the auditor's paths (run folders or ledger files)."""
    found = Discovery([], [], [])
    for path in paths:
        if path.is_file():
            found.ledgers.append(path)
            found.audited.append(path.parent)
            found.key_search += [path.parent, path.parent / "keys", path.parent.parent.parent / "keys"]
        elif path.is_dir():
            found.ledgers += _run_ledgers(path)
            found.audited.append(path)
            found.key_search += [path / "keys", path]
            if _metrics_say_no_dp(path):
                found.problems.append(
                    Problem(
                        str(path),
                        "non-private release: this run trained without DP; no finite epsilon holds for its records",
                        not_private=True,
                    )
                )
            found.problems += _nested_runs(path)
        else:
            raise AuditInputError(f"{path}: no such file or folder")
    if not found.ledgers and not any(p.fatal for p in found.problems):
        raise AuditInputError(
            f"no ledgers found under {', '.join(map(str, paths))} "
            "(expected server/ledger.jsonl and sites/*/ledger.jsonl)"
        )
    return found


def load(path: Path, trust: TrustedKeys) -> LoadedLedger:
    """Read one ledger and check its chain and every signature against the owner's trusted key."""
    try:
        result = read_entries(path)
    except LedgerError as exc:
        return LoadedLedger(path, "?", [], problems=[Problem(str(path), str(exc).removeprefix(f"{path}: "))])
    owners = {str(e.get("ledger")) for e in result.entries}
    owner = owners.pop() if len(owners) == 1 else "?"
    ledger = LoadedLedger(path, owner, result.entries)
    if result.torn_tail:
        ledger.problems.append(
            Problem(
                f"{path}: line {len(result.entries) + 1}",
                f"torn last entry ({len(result.torn_tail)} bytes without a newline): a write was interrupted",
            )
        )
    torn = path.with_name(path.name + ".torn")
    if torn.exists():
        ledger.problems.append(
            Problem(
                str(torn),
                "a torn entry was cut from this ledger after a crash and kept here; its update was never released",
                fatal=False,
            )
        )
    if len(owners) > 0:
        ledger.problems.append(Problem(str(path), "entries name more than one owner in their 'ledger' field"))
        return ledger
    if not result.entries:
        # Named by where it lies, so that what references it finds it empty, not missing.
        if path.parent.name == SERVER:
            ledger.owner = SERVER
        elif path.parent.parent.name == "sites":
            ledger.owner = path.parent.name
    public_key, why = trust.key_for(ledger.owner)
    if public_key is not None:
        ledger.key_id = keys.fingerprint(public_key)
        ledger.problems += _check_head(path, result.entries, public_key)
    if not result.entries:
        # Ledgers are created by their first entry: an empty one lost what it held.
        ledger.problems.append(Problem(str(path), "ledger is empty: whatever it recorded is lost"))
        return ledger
    if public_key is None:
        ledger.problems.append(Problem(str(path), f"cannot check signatures: {why}"))
    for text in verify_entries(path, result.entries, public_key):
        where, _, what = text.partition(": line ")
        number, _, rest = what.partition(": ")
        ledger.problems.append(Problem(f"{where}: line {number}", rest))
    return ledger


def _check_head(path: Path, entries: list[dict[str, Any]], public_key: Any) -> list[Problem]:
    """The owner's signed checkpoint of its chain head (``ledger.head``), when there is one:
    a ledger holding fewer entries than it says were written was cut."""
    head_path = path.with_name(HEAD_FILE)
    if not head_path.is_file():
        return []
    try:
        head = parse_head(head_path.read_bytes())
        body = {k: head[k] for k in ("ledger", "seq", "hash")}
        signed = keys.verify(public_key, canonical(body), str(head["sig"]))
        seq = int(head["seq"])
    except (ValueError, KeyError, TypeError):
        return [Problem(str(head_path), "head checkpoint unreadable")]
    if not signed:
        return [Problem(str(head_path), "head checkpoint not signed by the trusted key")]
    if seq > len(entries) - 1:
        return [
            Problem(
                str(path),
                f"the signed head says {seq + 1} entries were written but only {len(entries)} are here: "
                "entries were cut or the file emptied",
            )
        ]
    if seq >= 0 and entries[seq].get("hash") != head["hash"]:
        return [Problem(str(path), f"entry seq {seq} differs from the signed head: the ledger was rewritten")]
    return []
