"""A site's privacy ledger: every release (and every refusal) it ever had, signed.

The ledger is the source of truth for what a site has spent: on every round the site reads
its spend on the data source back from the ledger (so restarts and later jobs continue from
it), whatever split, seed or subset a job uses.

Entry kinds, in the order a round writes them, all under the site's ledger lock:
- ``reserve``: after the veto, before any record is read: the planned DP-SGD mechanism. It
  counts as spent from then on, whether or not the update is ever released (a crash
  mid-round loses nothing: the spend was recorded before the data was touched).
- ``train``: the released update's hash, completing its reserve (``reserve`` = its seq; not
  a second spend). A release without DP has no reserve and voids the budget.
- ``evaluate``: evaluation metrics released through a Gaussian mechanism (counted), or
  declared public by the site's policy (not covered, recorded as such).
- ``refusal``: the veto said no; nothing was read or released.

Unit of privacy: one record of the data source (add/remove-one); epsilon at the budget's delta.
"""

from __future__ import annotations

import fcntl
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.crypto import keys
from common.privacy.accounting import DpSgdEvent
from common.privacy.ledger import PartyPaths

LAST_UPDATE_FILE = "last-update.bin"
KEY_FILE = "site.key"
LOCK_FILE = "ledger.lock"
DP_SGD = "dp-sgd-poisson-gaussian"
GAUSSIAN = "gaussian"
PUBLIC = "public"
NO_DP = "none"


@dataclass(frozen=True)
class SitePaths(PartyPaths):
    key_file: str = KEY_FILE

    @property
    def last_update(self) -> Path:
        """The update this site released last, kept to re-send it if a round is asked again."""
        return self.root / LAST_UPDATE_FILE

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the site's ledger lock (an exclusive ``flock``, across processes): the veto,
        the work and the ledger append of one request happen inside, so two concurrent
        requests can never both pass a veto that only one of them fits."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def simulation_paths(state_dir: Path, site: str) -> SitePaths:
    return SitePaths(state_dir / "sites" / site, state_dir / "keys" / f"{site}{keys.PUBLIC_SUFFIX}")


@dataclass(frozen=True)
class Spend:
    events: list[DpSgdEvent]  # every DP event on the data source, in order, all jobs
    non_private_jobs: list[str]  # jobs that released updates from the source without DP
    fingerprints: tuple[str, ...] = ()  # the (salted) content fingerprints seen, in order
    sgd_steps: int = 0  # DP-SGD steps among ``events``


def mechanism_event(mech: dict[str, Any]) -> DpSgdEvent:
    """The accounting event of a recorded mechanism. A Gaussian release (sensitivity-normalised
    noise multiplier s) is one step at sample rate 1: the same privacy loss distribution."""
    if mech["name"] == GAUSSIAN:
        return DpSgdEvent(float(mech["noise_multiplier"]), 1.0, 1)
    return DpSgdEvent(float(mech["noise_multiplier"]), float(mech["sample_rate"]), int(mech["steps"]))


class SiteLedger:
    def __init__(self, paths: SitePaths, site: str) -> None:
        self.site = site
        self.ledger = paths.open_ledger(site)

    def source_of(self, fingerprint: str) -> str | None:
        """The data source under which these records (this salted fingerprint) were last spent."""
        for entry in reversed(self.ledger.entries):
            if entry.get("dataset") == fingerprint and entry.get("kind") in ("reserve", "train", "evaluate"):
                return entry.get("source")
        return None

    def released(self, job: str, server_round: int) -> dict[str, Any] | None:
        """The training entry of an update already released for (job, round), if any."""
        for entry in reversed(self.ledger.entries):
            if entry.get("kind") == "train" and entry.get("job") == job and entry.get("round") == server_round:
                return entry
        return None

    def spend(self, source: str, *, exclude_job: str | None = None) -> Spend:
        """Every DP event ever recorded on ``source``: reserves (spent from the moment they were
        written), trains without a reserve (older ledgers), Gaussian evaluation releases."""
        events, non_private, prints, steps = [], [], [], 0
        for entry in self.ledger.entries:
            if entry.get("source", entry.get("dataset")) != source:
                continue
            if entry.get("dataset") and (not prints or prints[-1] != entry["dataset"]):
                prints.append(entry["dataset"])
            kind, mech = entry.get("kind"), entry.get("mechanism") or {}
            if entry.get("job") == exclude_job:
                continue
            if kind == "train" and mech.get("name") == NO_DP:
                non_private.append(entry["job"])
            elif (
                kind == "reserve"
                or (kind == "train" and "reserve" not in entry)
                or (kind == "evaluate" and mech.get("name") == GAUSSIAN)
            ):
                events.append(mechanism_event(mech))
                steps += int(mech["steps"]) if mech.get("name") == DP_SGD else 0
        return Spend(events, non_private, tuple(prints), steps)

    def _base(self, *, job: str, server_round: int, source: str, dataset: str, records: int, budget: dict) -> dict:
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "job": job,
            "round": server_round,
            "source": source,
            "dataset": dataset,
            "records": records,
            "budget": budget,
        }

    def record_reserve(
        self,
        *,
        event: DpSgdEvent,
        max_grad_norm: float,
        delta: float,
        epsilon: float,
        noise: dict[str, Any],
        policy: dict[str, Any],
        **base: Any,
    ) -> dict[str, Any]:
        """The planned round's spend, durably, before any record is read."""
        return self.ledger.append(
            {
                **self._base(**base),
                "kind": "reserve",
                "mechanism": _dp_sgd(event, max_grad_norm),
                "noise": noise,
                "accountant": "prv",
                "delta": delta,
                "epsilon": epsilon,
                "policy": policy,
            }
        )

    def record_evaluation(
        self,
        *,
        noise_multiplier: float | None,
        delta: float,
        epsilon: float | None,
        noise: dict[str, Any] | None,
        released: list[str],
        **base: Any,
    ) -> dict[str, Any]:
        """An evaluation release: Gaussian (``noise_multiplier``, counted) or declared public (None)."""
        mechanism: dict[str, Any] = (
            {"name": GAUSSIAN, "noise_multiplier": noise_multiplier}
            if noise_multiplier is not None
            else {"name": PUBLIC}
        )
        return self.ledger.append(
            {
                **self._base(**base),
                "kind": "evaluate",
                "mechanism": mechanism,
                "released": released,
                "noise": noise,
                "accountant": "prv" if noise_multiplier is not None else None,
                "delta": delta,
                "epsilon": epsilon,
            }
        )

    def record_training(
        self,
        *,
        event: DpSgdEvent | None,
        max_grad_norm: float,
        delta: float,
        epsilon: float,
        update_sha256: str,
        noise: dict[str, Any] | None,
        policy: dict[str, Any],
        reserve: int | None,
        canaries: int = 0,
        **base: Any,
    ) -> dict[str, Any]:
        """The released update; with DP it completes the reserve at seq ``reserve``.
        ``canaries``: audit canaries planned at the site (client.canaries), recorded when any."""
        body: dict[str, Any] = {
            **self._base(**base),
            "kind": "train",
            "mechanism": _dp_sgd(event, max_grad_norm) if event is not None else {"name": NO_DP},
            "noise": noise,
            "accountant": "prv" if event is not None else None,
            "delta": delta,
            # JSON has no infinity: a release without DP has no finite epsilon.
            "epsilon": epsilon if event is not None else None,
            "update_sha256": update_sha256,
            "policy": policy,
        }
        if reserve is not None:
            body["reserve"] = reserve
        if canaries:
            body["audit_canaries"] = canaries
        return self.ledger.append(body)

    def record_refusal(self, *, reason: str, spent: float, **base: Any) -> dict[str, Any]:
        return self.ledger.append(
            {
                **self._base(**base),
                "kind": "refusal",
                "reason": reason,
                "epsilon": spent if math.isfinite(spent) else None,
            }
        )


def _dp_sgd(event: DpSgdEvent, max_grad_norm: float) -> dict[str, Any]:
    return {
        "name": DP_SGD,
        "noise_multiplier": event.noise_multiplier,
        "sample_rate": event.sample_rate,
        "steps": event.steps,
        "max_grad_norm": max_grad_norm,
    }
