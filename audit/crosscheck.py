"""Site and server ledgers checked against each other, in both directions.

The server records, for every update it received, the hash of the update and the site's
claim as the site reported it in its reply (mechanism, noise source, epsilon and delta, data
source, and the seq of the site's ledger entry). So neither party can rewrite its own
ledger alone: a site that re-signs its ledger with a different noise multiplier no longer
matches the claim the server recorded, and a server that invents or hides an update no
longer matches the sites' ledgers.

- Every update in a server round (aggregated or rejected) has a site ``train`` entry with the
  same update hash and the same claim; the site's ledger must be given and not be empty.
- Every site ``train`` entry appears in a server round of a job the given server ledgers
  hold (or the server recorded a drop for that round): a release that no given server ledger
  ever saw fails.
- Site releases with no server ledger at all fail.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from audit.verify import LoadedLedger, Problem

# The claim the server recorded is a copy of what the site wrote: only JSON float noise.
CLAIM_REL_TOL = 1e-9
CLAIM_ABS_TOL = 1e-12
_CLAIM_FIELDS = ("mechanism", "noise", "delta", "source")


def claim_differences(claim: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """How the server's record of a site's claim differs from the site's ledger entry."""
    out = []
    if claim.get("ledger_seq") != entry.get("seq"):
        out.append(f"ledger seq {claim.get('ledger_seq')!r} (the entry is seq {entry.get('seq')!r})")
    for key in _CLAIM_FIELDS:
        if claim.get(key) != entry.get(key):
            out.append(f"{key} {claim.get(key)!r} (the site's ledger says {entry.get(key)!r})")
    told, wrote = claim.get("epsilon"), entry.get("epsilon")
    same = (told is None and wrote is None) or (
        isinstance(told, (int, float))
        and isinstance(wrote, (int, float))
        and math.isclose(told, wrote, rel_tol=CLAIM_REL_TOL, abs_tol=CLAIM_ABS_TOL)
    )
    if not same:
        out.append(f"epsilon {told!r} (the site's ledger says {wrote!r})")
    return out


def _where(ledger: LoadedLedger, number: int, entry: dict[str, Any]) -> str:
    return f"{ledger.path}: line {number} (seq {entry.get('seq')})"


class _CrossCheck:
    def __init__(self, ledgers: list[LoadedLedger]) -> None:
        self.servers = [lg for lg in ledgers if lg.is_server]
        self.sites: dict[str, LoadedLedger] = {}
        self.problems: list[Problem] = []
        for lg in ledgers:
            if lg.is_server or lg.owner == "?":
                continue
            if lg.owner in self.sites:
                self.flag(str(lg.path), f"a second ledger for {lg.owner} (first: {self.sites[lg.owner].path})")
                continue
            self.sites[lg.owner] = lg
        self.trains: dict[tuple[str, str, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        self.refusals: set[tuple[str, str, int]] = set()
        for site in self.sites.values():
            for number, e in enumerate(site.entries, start=1):
                key = (site.owner, str(e.get("job")), int(e.get("round", 0) or 0))
                if e.get("kind") == "train":
                    self.trains[key].append((number, e))
                elif e.get("kind") == "refusal":
                    self.refusals.add(key)
        self.rounds: dict[tuple[str, int], dict[str, Any]] = {}
        self.jobs: set[str] = set()
        for server in self.servers:
            for e in server.entries:
                if e.get("kind") == "job":
                    self.jobs.add(str(e.get("job")))
                elif e.get("kind") == "round":
                    self.rounds[(str(e.get("job")), int(e.get("round", 0) or 0))] = e

    def flag(self, where: str, what: str, *, fatal: bool = True) -> None:
        self.problems.append(Problem(where, what, fatal=fatal))

    def run(self) -> list[Problem]:
        if not any(s.entries for s in self.servers):
            releases = sum(len(v) for v in self.trains.values())
            if releases:
                given = "the server ledger given is empty" if self.servers else "no server ledger given"
                self.flag(
                    "(audit)",
                    f"{given}: {releases} update(s) the sites released cannot be matched to what the server "
                    "received (a site claim the server never saw)",
                )
            return self.problems
        for server in self.servers:
            for number, e in enumerate(server.entries, start=1):
                if e.get("kind") == "round":
                    self.server_round(server, number, e)
        for (site, job, rnd), trains in self.trains.items():
            for number, e in trains:
                self.site_release(self.sites[site], number, e, job, rnd)
        return self.problems

    def _site_ledger(self, where: str, site: str, what: str) -> LoadedLedger | None:
        ledger = self.sites.get(site)
        if ledger is None:
            self.flag(where, f"{what}, but {site}'s ledger was not given (missing)")
        elif not ledger.entries:
            self.flag(where, f"{what}, but {site}'s ledger is empty")
            return None
        return ledger

    def server_round(self, server: LoadedLedger, number: int, e: dict[str, Any]) -> None:
        where = _where(server, number, e)
        job, rnd = str(e.get("job")), int(e.get("round", 0) or 0)
        for item in e.get("refused", []):
            site = str(item.get("site"))
            if self._site_ledger(where, site, f"recorded a refusal from {site} in job {job} round {rnd}") is None:
                continue
            if (site, job, rnd) not in self.refusals:
                self.flag(
                    where,
                    f"recorded a refusal from {site} in job {job} round {rnd} that {site}'s ledger does not hold",
                    fatal=False,
                )
        for item in [*e.get("updated", []), *e.get("rejected", [])]:
            site = str(item.get("site"))
            what = f"received an update from {site} in job {job} round {rnd}"
            if "reason" in item:
                self.flag(
                    where, f"rejected the update from {site} in job {job} round {rnd}: {item['reason']}", fatal=False
                )
            if self._site_ledger(where, site, what) is None:
                continue
            trains = self.trains.get((site, job, rnd), [])
            match = [(n, t) for n, t in trains if t.get("update_sha256") == item.get("update_sha256")]
            if not trains:
                self.flag(where, f"{what} that has no entry in {site}'s ledger")
                continue
            if not match:
                n, t = trains[-1]
                self.flag(
                    where,
                    f"update from {site} in job {job} round {rnd} has hash {str(item.get('update_sha256'))[:12]}… "
                    f"but the site recorded {str(t.get('update_sha256'))[:12]}… (line {n} of its ledger)",
                )
                continue
            n, t = match[0]
            claim = item.get("claim")
            if not isinstance(claim, dict):
                self.flag(
                    where,
                    f"{what} but recorded no claim of its mechanism and epsilon: line {n} of {site}'s ledger "
                    "cannot be matched to what the site reported",
                )
                continue
            diffs = claim_differences(claim, t)
            if diffs:
                self.flag(
                    where,
                    f"{site} reported for job {job} round {rnd} "
                    + "; ".join(diffs)
                    + f" (line {n} of its ledger): one of the two ledgers was rewritten",
                )

    def site_release(self, site: LoadedLedger, number: int, e: dict[str, Any], job: str, rnd: int) -> None:
        where = _where(site, number, e)
        if job not in self.jobs:
            self.flag(
                where,
                f"released an update in job {job} round {rnd}, a job no given server ledger holds "
                "(a site claim the server never saw)",
            )
            return
        entry = self.rounds.get((job, rnd))
        if entry is None:
            last = max((r for (j, r) in self.rounds if j == job), default=0)
            if rnd > last:
                # An honest crash: the server stopped (or was killed) after the site released this
                # update and before it could record the round. The site's spend counts all the same.
                self.flag(
                    where,
                    f"released an update in job {job} round {rnd}; the server's record of that job ends at "
                    f"round {last} (interrupted before this round was recorded); the spend counts",
                    fatal=False,
                )
            else:
                self.flag(
                    where, f"released an update in job {job} round {rnd}, but the server ledger has no such round"
                )
            return
        received = [*entry.get("updated", []), *entry.get("rejected", [])]
        if any(i.get("site") == site.owner and i.get("update_sha256") == e.get("update_sha256") for i in received):
            return
        if entry.get("dropped"):
            self.flag(
                where,
                f"update of job {job} round {rnd} was not aggregated (the server recorded a dropped reply); "
                "its spend still counts",
                fatal=False,
            )
        else:
            self.flag(where, f"released an update in job {job} round {rnd} that the server ledger does not list")


def cross_check(ledgers: list[LoadedLedger]) -> list[Problem]:
    """Every disagreement between the site ledgers and the server ledgers given."""
    return _CrossCheck(ledgers).run()
