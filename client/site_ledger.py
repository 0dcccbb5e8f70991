"""A site's privacy ledger: every training event (and every refusal) it ever had, signed.

The ledger is the source of truth for what a site has spent: on every round the site reads
its spend for the dataset back from the ledger (so restarts and later jobs continue from
it), and it appends the round's entry, durably, before the update leaves the site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.crypto import keys
from common.privacy.accounting import DpSgdEvent
from common.privacy.ledger import PartyPaths

LAST_UPDATE_FILE = "last-update.pt"
KEY_FILE = "site.key"
DP_SGD = "dp-sgd-poisson-gaussian"
NO_DP = "none"


@dataclass(frozen=True)
class SitePaths(PartyPaths):
    key_file: str = KEY_FILE

    @property
    def last_update(self) -> Path:
        """The update this site released last, kept to re-send it if a round is asked again."""
        return self.root / LAST_UPDATE_FILE


def simulation_paths(state_dir: Path, site: str) -> SitePaths:
    return SitePaths(state_dir / "sites" / site, state_dir / "keys" / f"{site}{keys.PUBLIC_SUFFIX}")


@dataclass(frozen=True)
class Spend:
    events: list[DpSgdEvent]  # every DP-SGD event on the dataset, in order, all jobs
    non_private_jobs: list[str]  # jobs that released updates from the dataset without DP


class SiteLedger:
    def __init__(self, paths: SitePaths, site: str) -> None:
        self.site = site
        self.ledger = paths.open_ledger(site)

    def released(self, job: str, server_round: int) -> dict[str, Any] | None:
        """The training entry of an update already released for (job, round), if any."""
        for entry in reversed(self.ledger.entries):
            if entry.get("kind") == "train" and entry.get("job") == job and entry.get("round") == server_round:
                return entry
        return None

    def spend(self, dataset: str, *, exclude_job: str | None = None) -> Spend:
        events, non_private = [], []
        for entry in self.ledger.entries:
            if entry.get("kind") != "train" or entry.get("dataset") != dataset or entry.get("job") == exclude_job:
                continue
            mech = entry["mechanism"]
            if mech["name"] == NO_DP:
                non_private.append(entry["job"])
            else:
                events.append(DpSgdEvent(mech["noise_multiplier"], mech["sample_rate"], mech["steps"]))
        return Spend(events, non_private)

    def _base(self, *, job: str, server_round: int, dataset: str, records: int, budget: dict[str, float]) -> dict:
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "job": job,
            "round": server_round,
            "dataset": dataset,
            "records": records,
            "budget": budget,
        }

    def record_training(
        self,
        *,
        job: str,
        server_round: int,
        dataset: str,
        records: int,
        budget: dict[str, float],
        event: DpSgdEvent | None,
        max_grad_norm: float,
        delta: float,
        epsilon: float,
        update_sha256: str,
    ) -> dict[str, Any]:
        mechanism: dict[str, Any] = {"name": NO_DP}
        if event is not None:
            mechanism = {
                "name": DP_SGD,
                "noise_multiplier": event.noise_multiplier,
                "sample_rate": event.sample_rate,
                "steps": event.steps,
                "max_grad_norm": max_grad_norm,
            }
        return self.ledger.append(
            {
                **self._base(job=job, server_round=server_round, dataset=dataset, records=records, budget=budget),
                "kind": "train",
                "mechanism": mechanism,
                "accountant": "prv" if event is not None else None,
                "delta": delta,
                # JSON has no infinity: a release without DP has no finite epsilon.
                "epsilon": epsilon if event is not None else None,
                "update_sha256": update_sha256,
            }
        )

    def record_refusal(
        self,
        *,
        job: str,
        server_round: int,
        dataset: str,
        records: int,
        budget: dict[str, float],
        reason: str,
        spent: float,
    ) -> dict[str, Any]:
        return self.ledger.append(
            {
                **self._base(job=job, server_round=server_round, dataset=dataset, records=records, budget=budget),
                "kind": "refusal",
                "reason": reason,
                "epsilon": spent if math.isfinite(spent) else None,
            }
        )
