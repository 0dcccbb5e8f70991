"""Integrity of ledgers: signatures, hash chains, and agreement between site and server ledgers.

Nothing here trusts the server or a site: every check uses only the ledger files and the
public keys the auditor received.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.crypto import keys
from common.errors import FedshieldError
from common.privacy.ledger import LedgerError, read_entries, verify_entries

SERVER = "server"


@dataclass(frozen=True)
class Problem:
    """One failed check. ``where`` names the ledger and entry."""

    where: str
    what: str
    fatal: bool = True

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


class AuditInputError(FedshieldError):
    """The auditor's paths do not point at ledgers or keys."""


def discover(paths: list[Path], keys_dir: Path | None) -> tuple[list[Path], Path]:
    """Ledger files and the public-key folder from the auditor's paths (run folders or files)."""
    ledgers: list[Path] = []
    found_keys = keys_dir
    for path in paths:
        if path.is_file():
            ledgers.append(path)
        elif path.is_dir():
            ledgers += sorted(path.glob("server/ledger.jsonl")) + sorted(path.glob("sites/*/ledger.jsonl"))
            if found_keys is None and (path / "keys").is_dir():
                found_keys = path / "keys"
        else:
            raise AuditInputError(f"{path}: no such file or folder")
    if not ledgers:
        raise AuditInputError(
            f"no ledgers found under {', '.join(map(str, paths))} "
            "(expected server/ledger.jsonl and sites/*/ledger.jsonl)"
        )
    if found_keys is None:
        raise AuditInputError("no public keys: pass --keys DIR (the folder of *.pub files you received)")
    return ledgers, found_keys


def load(path: Path, keys_dir: Path) -> LoadedLedger:
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
        ledger.problems.append(Problem(str(path), "ledger is empty", fatal=False))
        return ledger
    key_path = keys_dir / f"{owner}{keys.PUBLIC_SUFFIX}"
    try:
        public_key = keys.load_public(key_path)
    except keys.KeyFileError as exc:
        ledger.problems.append(Problem(str(path), f"cannot check signatures: {exc}"))
        public_key = None
    if public_key is not None:
        ledger.key_id = keys.fingerprint(public_key)
    for text in verify_entries(path, result.entries, public_key):
        where, _, what = text.partition(": line ")
        number, _, rest = what.partition(": ")
        ledger.problems.append(Problem(f"{where}: line {number}", rest))
    return ledger


def cross_check(ledgers: list[LoadedLedger]) -> list[Problem]:
    """Every update the server aggregated has a matching site entry with the same hash, and
    every update a site released appears in the server ledger (or the server recorded a drop)."""
    problems: list[Problem] = []
    servers = [lg for lg in ledgers if lg.is_server]
    sites = {lg.owner: lg for lg in ledgers if not lg.is_server}
    if not servers:
        return [
            Problem("(audit)", "no server ledger given: site updates cannot be matched to aggregation", fatal=False)
        ]
    server = servers[0]
    rounds = {(e["job"], e["round"]): e for e in server.entries if e.get("kind") == "round"}
    server_jobs = {e["job"] for e in server.entries if e.get("kind") == "job"}
    site_updates: dict[tuple[str, str, int], tuple[str, int]] = {}
    for site in sites.values():
        for number, e in enumerate(site.entries, start=1):
            if e.get("kind") == "train":
                site_updates[(site.owner, e["job"], e["round"])] = (e["update_sha256"], number)

    for number, e in enumerate(server.entries, start=1):
        if e.get("kind") != "round":
            continue
        for item in [*e.get("updated", []), *e.get("rejected", [])]:
            where = f"{server.path}: line {number} (seq {e.get('seq')})"
            if "reason" in item:
                problems.append(
                    Problem(
                        where,
                        f"rejected the update from {item['site']} in job {e['job']} round "
                        f"{e['round']}: {item['reason']}",
                        fatal=False,
                    )
                )
            if item["site"] not in sites:
                problems.append(
                    Problem(
                        where,
                        f"aggregated an update from {item['site']} in job {e['job']} round "
                        f"{e['round']}, but that site's ledger was not given",
                        fatal=False,
                    )
                )
                continue
            match = site_updates.get((item["site"], e["job"], e["round"]))
            if match is None:
                problems.append(
                    Problem(
                        where,
                        f"aggregated an update from {item['site']} in job {e['job']} round "
                        f"{e['round']} that has no entry in {item['site']}'s ledger",
                    )
                )
            elif match[0] != item["update_sha256"]:
                problems.append(
                    Problem(
                        where,
                        f"update from {item['site']} in job {e['job']} round {e['round']} "
                        f"has hash {item['update_sha256'][:12]}… but the site recorded "
                        f"{match[0][:12]}… (line {match[1]} of its ledger)",
                    )
                )
    for (site, job, rnd), (digest, number) in site_updates.items():
        if job not in server_jobs:
            continue  # another server's job: not covered by the ledgers given
        where = f"{sites[site].path}: line {number}"
        entry = rounds.get((job, rnd))
        if entry is None:
            problems.append(
                Problem(where, f"released an update in job {job} round {rnd}, but the server ledger has no such round")
            )
            continue
        received = [*entry.get("updated", []), *entry.get("rejected", [])]
        if not any(i["site"] == site and i["update_sha256"] == digest for i in received):
            if entry.get("dropped"):
                problems.append(
                    Problem(
                        where,
                        f"update of job {job} round {rnd} was not aggregated "
                        "(the server recorded a dropped reply); its spend still counts",
                        fatal=False,
                    )
                )
            else:
                problems.append(
                    Problem(where, f"released an update in job {job} round {rnd} that the server ledger does not list")
                )
    return problems
