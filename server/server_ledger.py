"""The server's own signed, hash-chained ledger: per round, which sites were asked, which sent
updates (with the hash of each update as received), which refused or dropped, and the hash
of the aggregated model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import keys
from common.ledger import Ledger

LEDGER_FILE = "ledger.jsonl"
KEY_FILE = "server.key"
OWNER = "server"


@dataclass(frozen=True)
class ServerPaths:
    root: Path
    public_key: Path

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER_FILE

    @property
    def private_key(self) -> Path:
        return self.root / KEY_FILE


def simulation_paths(state_dir: Path) -> ServerPaths:
    return ServerPaths(state_dir / "server", state_dir / "keys" / f"{OWNER}{keys.PUBLIC_SUFFIX}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ServerLedger:
    def __init__(self, paths: ServerPaths) -> None:
        key = (
            keys.create_pair(paths.private_key, paths.public_key)
            if not paths.private_key.exists()
            else keys.load_private(paths.private_key)
        )
        self.ledger = Ledger(paths.ledger, key, owner=OWNER)

    def record_job(self, *, job: str, settings: dict[str, Any]) -> dict[str, Any]:
        return self.ledger.append({"kind": "job", "time": _now(), "job": job, "settings": settings})

    def record_round(
        self,
        *,
        job: str,
        server_round: int,
        asked: list[int],
        updated: list[dict[str, Any]],
        refused: list[dict[str, Any]],
        dropped: list[dict[str, Any]],
        aggregate_sha256: str | None,
        rejected: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return self.ledger.append(
            {
                "kind": "round",
                "time": _now(),
                "job": job,
                "round": server_round,
                "asked": sorted(asked),
                "updated": updated,
                "refused": refused,
                "dropped": dropped,
                "rejected": rejected or [],
                "aggregate_sha256": aggregate_sha256,
            }
        )
