"""Recompute every site's epsilon from the mechanisms its ledger records, with an accountant
independent of the site's (:mod:`audit.pld`: pessimistic PLD, an upper bound), and check the
claims, the budgets, delta and the noise source.

Unit of privacy: one record at one site; neighbouring datasets differ by adding or removing
one record. A site's budget (epsilon, delta) belongs to its data source (the entry's
``source``; ``dataset`` for ledgers without it), whatever split or fingerprint a job used.
The spend of a source after an entry is the composition, in ledger order, of every

- ``reserve`` (the DP-SGD event the site committed to before reading a record),
- ``train`` without a ``reserve`` field (older ledgers: the entry is its own spend; one with
  ``reserve`` completes that reservation and is not a second spend),
- ``evaluate`` with a Gaussian mechanism (``GaussianDpEvent(sigma)``, sensitivity-normalised),

all at the budget's delta. A release without DP, or with noise that can be reproduced from
public values, has no finite epsilon: the audit says NOT PRIVATE.

Checks, each at the budget's delta: the recomputed epsilon never exceeds the budget (no
tolerance: the PLD figure is already an upper bound); a claimed epsilon below the
recomputed one by more than ``max(abs_tol, rel_tol * pld)`` is an under-claim and fails (the
site's PRV accountant, Gopi et al. 2021, is itself an upper bound, normally a little above
the PLD figure); claims above it are conservative and pass; ``0 < delta <= 1/n`` for an
entry over ``n`` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from audit.pld import Composition
from audit.verify import LoadedLedger, Problem
from common.privacy.noise import NoiseSource

ABS_TOL = 0.02
REL_TOL = 0.03
DP_SGD = "dp-sgd-poisson-gaussian"
NO_DP = "none"
GAUSSIAN = "gaussian"
PUBLIC = "public"
SECRET_NOISE = frozenset(s.value for s in NoiseSource if s.private)  # noise only the site can know
REPRODUCIBLE_NOISE = NoiseSource.INSECURE_REPRODUCIBLE.value
_KINDS = ("reserve", "train", "evaluate", "refusal")


@dataclass
class Point:
    """A source's cumulative epsilon (at the budget's delta) after one ledger entry."""

    line: int
    time: str
    kind: str
    job: str
    round: int
    claimed: float | None
    pld: float
    rdp: float
    budget: float


@dataclass
class SourceSpend:
    """Everything one site released from one data source, composed."""

    site: str
    source: str
    delta: float
    budget: float
    datasets: list[str] = field(default_factory=list)
    records: int | None = None
    points: list[Point] = field(default_factory=list)
    trained: int = 0
    refusals: int = 0
    non_private: int = 0
    public_evaluations: int = 0
    jobs: set[str] = field(default_factory=set)
    composition: Composition = field(default_factory=Composition, repr=False)

    @property
    def spent_claimed(self) -> float:
        claims = [p.claimed for p in self.points if p.claimed is not None]
        return max(claims) if claims else 0.0

    @property
    def spent_pld(self) -> float:
        return math.inf if self.composition.non_private else (self.points[-1].pld if self.points else 0.0)

    @property
    def spent_rdp(self) -> float:
        return math.inf if self.composition.non_private else (self.points[-1].rdp if self.points else 0.0)

    @property
    def private(self) -> bool:
        return not self.composition.non_private

    @property
    def within_budget(self) -> bool:
        return self.private and self.spent_pld <= self.budget and self.spent_claimed <= self.budget


@dataclass
class _Reservation:
    line: int
    entry: dict[str, Any]
    completed_by: int | None = None


class _SiteRecompute:
    def __init__(self, ledger: LoadedLedger, abs_tol: float, rel_tol: float) -> None:
        self.ledger = ledger
        self.abs_tol, self.rel_tol = abs_tol, rel_tol
        self.spends: dict[str, SourceSpend] = {}
        self.reservations: dict[tuple[str, int], _Reservation] = {}
        self.problems: list[Problem] = []

    def flag(self, where: str, what: str, *, fatal: bool = True, not_private: bool = False) -> None:
        self.problems.append(Problem(where, what, fatal=fatal, not_private=not_private))

    def run(self) -> None:
        for number, e in enumerate(self.ledger.entries, start=1):
            if e.get("kind") in _KINDS:
                self.entry(number, e)
        for (source, seq), res in self.reservations.items():
            if res.completed_by is None:
                e = res.entry
                self.flag(
                    f"{self.ledger.path}: line {res.line} (seq {seq})",
                    f"reserved a DP-SGD step for job {e.get('job')} round {e.get('round')} on {source} with no "
                    "train entry after it (training started, the update may never have left): counted as spent",
                    fatal=False,
                )

    def _spend_for(self, where: str, e: dict[str, Any]) -> SourceSpend:
        key = str(e.get("source") or e.get("dataset") or "?")
        budget = e.get("budget") or {}
        eps_budget = float(budget.get("epsilon", math.nan))
        delta_budget = float(budget.get("delta", e.get("delta", math.nan)))
        spend = self.spends.get(key)
        if spend is None:
            spend = self.spends[key] = SourceSpend(self.ledger.owner, key, delta_budget, eps_budget)
        elif (eps_budget, delta_budget) != (spend.budget, spend.delta):
            raised = not (eps_budget <= spend.budget and delta_budget <= spend.delta)
            self.flag(
                where,
                f"budget for {key} changed from (epsilon {spend.budget:g}, delta {spend.delta:g}) to "
                f"(epsilon {eps_budget:g}, delta {delta_budget:g})"
                + (": a budget can only be lowered, never raised" if raised else " (lowered)"),
                fatal=raised,
            )
            spend.budget, spend.delta = eps_budget, delta_budget
        dataset = e.get("dataset")
        if dataset is not None and spend.datasets and spend.datasets[-1] != dataset:
            self.flag(
                where,
                f"data of {key} changed (fingerprint {str(spend.datasets[-1])[:12]}… -> {str(dataset)[:12]}…); "
                "the budget continues",
                fatal=False,
            )
        if dataset is not None and (not spend.datasets or spend.datasets[-1] != dataset):
            spend.datasets.append(str(dataset))
        if isinstance(e.get("records"), int):
            spend.records = e["records"]
        return spend

    def _check_noise(self, where: str, e: dict[str, Any], spend: SourceSpend) -> None:
        source = (e.get("noise") or {}).get("source")
        if source == REPRODUCIBLE_NOISE:
            spend.composition.non_private = True
            self.flag(
                where,
                "NOT PRIVATE: the noise was drawn from a seed derived from public values (insecure-reproducible): "
                "anyone who knows the seed can subtract it, so epsilon is infinite",
                not_private=True,
            )
        elif source is None:
            spend.composition.non_private = True
            self.flag(where, "noise source not recorded: nothing shows the noise was secret; no finite epsilon holds")
        elif source not in SECRET_NOISE:
            spend.composition.non_private = True
            self.flag(where, f"unknown noise source {source!r}: nothing shows the noise was secret")

    def _check_delta(self, where: str, e: dict[str, Any], spend: SourceSpend) -> None:
        delta = e.get("delta")
        records = e.get("records", spend.records)
        if not isinstance(delta, (int, float)):
            self.flag(where, "no delta recorded for a DP release")
            return
        if float(delta) != spend.delta:
            self.flag(where, f"entry delta {delta:g} differs from the budget's delta {spend.delta:g}")
        if not isinstance(records, int) or records < 1:
            self.flag(where, "number of records not recorded: delta <= 1/n cannot be checked")
        elif not 0.0 < float(delta) <= 1.0 / records:
            self.flag(
                where,
                f"delta {delta:g} is outside (0, 1/n] = (0, {1.0 / records:.3g}] for n = {records} records: "
                "a delta that large allows releasing a record outright",
            )

    def entry(self, number: int, e: dict[str, Any]) -> None:
        kind = str(e["kind"])
        where = f"{self.ledger.path}: line {number} (seq {e.get('seq')})"
        spend = self._spend_for(where, e)
        spend.jobs.add(str(e.get("job")))
        if kind == "refusal":
            spend.refusals += 1
            return
        if kind == "train":
            spend.trained += 1
        mech = e.get("mechanism") or {}
        name = mech.get("name")
        what = f"{kind} entry of job {e.get('job')} round {e.get('round')}"
        if name == NO_DP:
            spend.non_private += 1
            spend.composition.non_private = True
            self.flag(
                where,
                f"non-private release: the {what} was released without DP; no finite epsilon, the budget is void",
                not_private=True,
            )
            return
        if kind == "evaluate" and name == PUBLIC:
            spend.public_evaluations += 1
            self.flag(
                where,
                f"{what}: the site declared its validation records public; no spend counted",
                fatal=False,
            )
            return
        if kind in ("reserve", "train") or e.get("noise") is not None:
            self._check_noise(where, e, spend)
        self._check_delta(where, e, spend)
        if not self._compose(number, where, kind, e, mech, spend):
            return
        self._check_claim(number, where, e, spend)

    def _compose(
        self, number: int, where: str, kind: str, e: dict[str, Any], mech: dict[str, Any], spend: SourceSpend
    ) -> bool:
        """Add the entry's event to the source's composition (unless it completes a
        reservation); False when the entry cannot be accounted at all."""
        name = mech.get("name")
        try:
            if kind == "evaluate":
                if name != GAUSSIAN:
                    raise ValueError(f"unknown evaluation mechanism {name!r}")
                spend.composition.add_gaussian(float(mech["noise_multiplier"]))
                return True
            if name != DP_SGD:
                raise ValueError(f"unknown training mechanism {name!r}")
            if kind == "train" and e.get("reserve") is not None:
                self._complete_reservation(where, e, spend)
                return True
            if float(mech["noise_multiplier"]) <= 0 or not 0 < float(mech["sample_rate"]) <= 1:
                raise ValueError(f"invalid mechanism parameters {mech}")
            spend.composition.add_dp_sgd(
                float(mech["noise_multiplier"]), float(mech["sample_rate"]), int(mech["steps"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            spend.composition.non_private = True
            self.flag(where, f"cannot account for this {kind} entry ({exc}): no finite epsilon can be shown")
            return False
        if kind == "reserve":
            self.reservations[(spend.source, int(e.get("seq", -1)))] = _Reservation(number, e)
        return True

    def _complete_reservation(self, where: str, e: dict[str, Any], spend: SourceSpend) -> None:
        seq = e["reserve"]
        mech = e["mechanism"]
        res = self.reservations.get((spend.source, seq)) if isinstance(seq, int) else None
        if res is None or res.completed_by is not None:
            # Count the release anyway: a broken reference never lowers a spend.
            spend.composition.add_dp_sgd(
                float(mech["noise_multiplier"]), float(mech["sample_rate"]), int(mech["steps"])
            )
            if res is None:
                self.flag(
                    where, f"completes reservation seq {seq}, which is no earlier reserve entry of {spend.source}"
                )
            else:
                self.flag(where, f"a second release under reservation seq {seq} (first: seq {res.completed_by})")
            return
        res.completed_by = int(e.get("seq", -1))
        reserved = res.entry
        for key in ("job", "round", "mechanism", "noise"):
            if reserved.get(key) != e.get(key):
                self.flag(
                    where,
                    f"{key} {e.get(key)!r} differs from reservation seq {seq} ({reserved.get(key)!r}): "
                    "the release is not the event that was reserved",
                )

    def _check_claim(self, number: int, where: str, e: dict[str, Any], spend: SourceSpend) -> None:
        eps_pld, eps_rdp = spend.composition.epsilon(spend.delta)
        claimed = e.get("epsilon")
        claimed = float(claimed) if isinstance(claimed, (int, float)) else None
        spend.points.append(
            Point(
                number,
                str(e.get("time", "")),
                str(e["kind"]),
                str(e.get("job")),
                int(e.get("round", 0) or 0),
                claimed,
                eps_pld,
                eps_rdp,
                spend.budget,
            )
        )
        if not spend.private:
            return  # already reported: there is no finite epsilon to compare with
        tolerance = max(self.abs_tol, self.rel_tol * eps_pld)
        if claimed is None:
            self.flag(where, "no epsilon claimed for a DP release")
        elif claimed < eps_pld - tolerance:
            self.flag(
                where,
                f"under-claim: claimed epsilon {claimed:.4f} but the independent pessimistic PLD accountant "
                f"gives {eps_pld:.4f} at delta {spend.delta:g} (tolerance max({self.abs_tol}, {self.rel_tol:.0%}))",
            )
        if eps_pld > spend.budget:
            self.flag(
                where,
                f"budget exceeded: recomputed epsilon {eps_pld:.4f} (pessimistic PLD, an upper bound) > budget "
                f"{spend.budget:g} at delta {spend.delta:g}",
            )
        elif claimed is not None and claimed > spend.budget:
            self.flag(where, f"budget exceeded: claimed epsilon {claimed:.4f} > budget {spend.budget:g}")


def recompute(
    ledger: LoadedLedger, *, abs_tol: float = ABS_TOL, rel_tol: float = REL_TOL
) -> tuple[list[SourceSpend], list[Problem]]:
    """Per-source spend of one site ledger (epsilon at the budget's delta, unit: one record,
    add/remove-one), and every check that failed."""
    work = _SiteRecompute(ledger, abs_tol, rel_tol)
    work.run()
    return list(work.spends.values()), work.problems
