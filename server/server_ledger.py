"""The server's own signed, hash-chained ledger: per round, which sites were asked, which sent
updates (with the hash of each update as received), which refused or dropped, and the hash
of the aggregated model."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.crypto import keys
from common.privacy.ledger import PartyPaths

KEY_FILE = "server.key"
OWNER = "server"


def simulation_paths(state_dir: Path) -> PartyPaths:
    return PartyPaths(state_dir / "server", state_dir / "keys" / f"{OWNER}{keys.PUBLIC_SUFFIX}", KEY_FILE)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ServerLedger:
    def __init__(self, paths: PartyPaths) -> None:
        self.paths = paths
        self.ledger = paths.open_ledger(OWNER)

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
        secure_aggregation: bool = False,
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
                "secure_aggregation": secure_aggregation,
                "aggregate_sha256": aggregate_sha256,
            }
        )
