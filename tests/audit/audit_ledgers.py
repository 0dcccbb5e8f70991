"""Hand-built site and server ledgers in the format the audit checks (the site-ledger
contract: ``reserve`` / ``train`` / ``evaluate`` / ``refusal`` entries), signed with real keys,
plus the attacker's tools: rewrite a ledger and re-sign it with any key."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from common.crypto import keys
from common.privacy.accounting import DpSgdEvent, epsilon
from common.privacy.ledger import GENESIS, HEAD_FILE, PartyPaths, canonical, entry_hash, read_entries
from server.server_ledger import ServerLedger
from server.server_ledger import simulation_paths as server_paths

SECRET = "os-entropy-reseeded"
REPRODUCIBLE = "insecure-reproducible"
DP_SGD = "dp-sgd-poisson-gaussian"


@cache
def prv_epsilon(history: tuple[DpSgdEvent, ...], delta: float) -> float:
    """The site's accountant (PRV), cached: the tests replay the same histories often."""
    return epsilon(list(history), delta=delta)


def site_paths(state: Path, site: str) -> PartyPaths:
    return PartyPaths(state / "sites" / site, state / "keys" / f"{site}{keys.PUBLIC_SUFFIX}", "site.key")


def provision(state: Path, trusted: Path) -> Path:
    """What a deployment hands the auditor: a copy of the public keys, outside ``state``."""
    trusted.mkdir(parents=True, exist_ok=True)
    for pub in (state / "keys").glob("*.pub"):
        shutil.copy(pub, trusted / pub.name)
    return trusted


def mechanism(event: DpSgdEvent) -> dict[str, Any]:
    return {
        "name": DP_SGD,
        "noise_multiplier": event.noise_multiplier,
        "sample_rate": event.sample_rate,
        "steps": event.steps,
        "max_grad_norm": 1.0,
    }


@dataclass
class Site:
    """One site writing its ledger the way the site code does (claims from the PRV accountant)."""

    state: Path
    name: str
    source: str = "breast_cancer"
    dataset: str = "d" * 64
    records: int = 100
    budget: float = 10.0
    delta: float = 1e-5
    noise: str = SECRET
    claim_scale: float = 1.0
    history: list[DpSgdEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ledger = site_paths(self.state, self.name).open_ledger(self.name)

    def _base(self, job: str, rnd: int) -> dict[str, Any]:
        return {
            "time": "2026-12-01T00:00:00.000+00:00",
            "job": job,
            "round": rnd,
            "source": self.source,
            "dataset": self.dataset,
            "records": self.records,
            "budget": {"epsilon": self.budget, "delta": self.delta},
            "delta": self.delta,
        }

    def _spent(self) -> float:
        return prv_epsilon(tuple(self.history), self.delta) * self.claim_scale

    def reserve(self, job: str, rnd: int, event: DpSgdEvent) -> dict[str, Any]:
        self.history.append(event)
        return self.ledger.append(
            {
                **self._base(job, rnd),
                "kind": "reserve",
                "mechanism": mechanism(event),
                "noise": {"source": self.noise},
                "accountant": "prv",
                "epsilon": self._spent(),
                "policy": {"origin": "test", "require_dp": True},
            }
        )

    def train(self, job: str, rnd: int, reserved: dict[str, Any] | None, update: str) -> dict[str, Any]:
        body = {
            **self._base(job, rnd),
            "kind": "train",
            "mechanism": reserved["mechanism"] if reserved else {"name": "none"},
            "noise": reserved["noise"] if reserved else None,
            "accountant": "prv" if reserved else None,
            "epsilon": self._spent() if reserved else None,
            "update_sha256": update,
            "policy": {"origin": "test", "require_dp": reserved is not None},
        }
        if reserved is not None:
            body["reserve"] = reserved["seq"]
        return self.ledger.append(body)

    def round(self, job: str, rnd: int, event: DpSgdEvent) -> dict[str, Any]:
        """An honest DP round: reserve, then the released update."""
        return self.train(job, rnd, self.reserve(job, rnd, event), f"{self.name}-{job}-{rnd}".ljust(64, "0"))

    def evaluate(self, job: str, rnd: int, sigma: float | None) -> dict[str, Any]:
        if sigma is not None:
            self.history.append(DpSgdEvent(sigma, 1.0, 1))  # a Gaussian release, as the site accounts it
        return self.ledger.append(
            {
                **self._base(job, rnd),
                "kind": "evaluate",
                "mechanism": {"name": "gaussian", "noise_multiplier": sigma} if sigma else {"name": "public"},
                "noise": {"source": self.noise} if sigma else None,
                "released": ["eval-correct"],
                "accountant": "prv" if sigma else None,
                "epsilon": self._spent(),
            }
        )


def claim(entry: dict[str, Any]) -> dict[str, Any]:
    """What the site reports to the server with its update: a copy of its train entry."""
    return {
        "mechanism": entry["mechanism"],
        "noise": entry["noise"],
        "epsilon": entry["epsilon"],
        "delta": entry["delta"],
        "source": entry["source"],
        "ledger_seq": entry["seq"],
    }


def server(state: Path, job: str, rounds: dict[int, list[dict[str, Any]]]) -> ServerLedger:
    """The server's ledger: per round, the site train entries it received (hash and claim)."""
    ledger = ServerLedger(server_paths(state))
    ledger.record_job(job=job, settings={})
    for rnd, trains in rounds.items():
        ledger.record_round(
            job=job,
            server_round=rnd,
            asked=[1, 2],
            refused=[],
            dropped=[],
            aggregate_sha256="a" * 64,
            updated=[
                {
                    "site": t["ledger"],
                    "node": 1,
                    "update_sha256": t["update_sha256"],
                    "num_examples": t["records"],
                    "claim": claim(t),
                }
                for t in trains
            ],
        )
    return ledger


def rewrite(path: Path, change: Any, *, key_path: Path | None = None, new_key: bool = False) -> Path:
    """The attacker's rewrite: ``change(entries)`` edits the entries in place, then every
    entry is re-chained, re-hashed and re-signed (and the signed head with them), with the owner's own private key
    (``key_path``) or a fresh one (``new_key``: its public half replaces the one in the run
    folder). Returns the path of the public key that now verifies the ledger."""
    entries = read_entries(path).entries
    change(entries)
    if new_key:
        private = keys.generate()
    else:
        assert key_path is not None
        private = keys.load_private(key_path)
    prev = GENESIS
    for seq, e in enumerate(entries):
        e.pop("hash", None)
        e.pop("sig", None)
        e["seq"], e["prev"] = seq, prev
        e["hash"] = entry_hash(e)
        e["sig"] = keys.sign(private, e["hash"].encode())
        prev = e["hash"]
    path.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))
    head = {"ledger": entries[-1]["ledger"], "seq": len(entries) - 1, "hash": prev}
    path.with_name(HEAD_FILE).write_bytes(canonical({**head, "sig": keys.sign(private, canonical(head))}))
    owner = entries[0]["ledger"]
    state = path.parents[1] if path.parent.name == "server" else path.parents[2]
    pub = state / "keys" / f"{owner}{keys.PUBLIC_SUFFIX}"
    if new_key:
        keys.write_public(pub, private.public_key())
    return pub
