"""Recompute every site's epsilon from the mechanism parameters its ledger records, with an
accountant independent of the one the site used (Google's ``dp-accounting``: PLD and RDP),
and check the claims and the budgets.

Unit of privacy: one record at one site (add/remove-one). Each ``train`` entry is the event
``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)``; a dataset's spend after an entry
is the composition of every entry on that dataset fingerprint up to it, across all jobs.

Tolerance: the site's number comes from the PRV accountant (Gopi et al. 2021) and ours from
the PLD accountant (Meiser & Mohammadi 2018; Doroshenko et al. 2022); both are numerical
upper bounds of the same quantity, so a claim passes when
``|claimed - pld| <= max(abs_tol, rel_tol * pld)``. RDP (Mironov 2017) is a looser upper bound
and is reported, not compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from audit.verify import LoadedLedger, Problem

ABS_TOL = 0.02
REL_TOL = 0.03


@dataclass
class Point:
    """The state of one dataset after one ledger entry."""

    line: int
    time: str
    job: str
    round: int
    claimed: float | None
    pld: float
    rdp: float
    budget: float


@dataclass
class DatasetSpend:
    site: str
    dataset: str
    delta: float
    budget: float
    points: list[Point] = field(default_factory=list)
    refusals: int = 0
    non_private: int = 0
    jobs: set[str] = field(default_factory=set)

    @property
    def spent_claimed(self) -> float:
        return (self.points[-1].claimed or 0.0) if self.points else 0.0

    @property
    def spent_pld(self) -> float:
        return math.inf if self.non_private else (self.points[-1].pld if self.points else 0.0)

    @property
    def spent_rdp(self) -> float:
        return math.inf if self.non_private else (self.points[-1].rdp if self.points else 0.0)


def _event(mechanism: dict[str, Any]):
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            float(mechanism["sample_rate"]), dp_accounting.GaussianDpEvent(float(mechanism["noise_multiplier"]))
        ),
        int(mechanism["steps"]),
    )


def recompute(
    ledger: LoadedLedger, *, abs_tol: float = ABS_TOL, rel_tol: float = REL_TOL
) -> tuple[list[DatasetSpend], list[Problem]]:
    """Per-dataset spend of one site ledger, and every claim or budget check that failed."""
    import logging
    import warnings

    from dp_accounting import pld, rdp

    # dp-accounting logs each RDP order it drops as a warning; the result is still an upper bound.
    logging.getLogger("absl").setLevel(logging.ERROR)

    spends: dict[str, DatasetSpend] = {}
    accountants: dict[str, tuple[Any, Any]] = {}
    problems: list[Problem] = []
    for number, e in enumerate(ledger.entries, start=1):
        where = f"{ledger.path}: line {number} (seq {e.get('seq')})"
        if e.get("kind") not in ("train", "refusal"):
            continue
        budget = e.get("budget") or {}
        ds = spends.setdefault(
            e["dataset"],
            DatasetSpend(
                ledger.owner,
                e["dataset"],
                float(budget.get("delta", e.get("delta", 0))),
                float(budget.get("epsilon", math.nan)),
            ),
        )
        ds.jobs.add(e["job"])
        if float(budget.get("epsilon", math.nan)) != ds.budget or float(budget.get("delta", ds.delta)) != ds.delta:
            problems.append(
                Problem(
                    where,
                    f"budget changed from ({ds.budget:g}, {ds.delta:g}) to "
                    f"({budget.get('epsilon')}, {budget.get('delta')}) for the same dataset",
                    fatal=False,
                )
            )
            ds.budget, ds.delta = float(budget.get("epsilon", ds.budget)), float(budget.get("delta", ds.delta))
        if e["kind"] == "refusal":
            ds.refusals += 1
            continue
        mech = e.get("mechanism", {})
        if mech.get("name") == "none":
            ds.non_private += 1
            problems.append(
                Problem(
                    where,
                    f"job {e['job']} round {e['round']} released an update trained "
                    "without DP: no finite epsilon, the budget is void",
                )
            )
            continue
        if float(e.get("delta", -1)) != ds.delta:
            problems.append(Problem(where, f"entry delta {e.get('delta')} differs from the budget's delta {ds.delta}"))
        acc_pld, acc_rdp = accountants.setdefault(e["dataset"], (pld.PLDAccountant(), rdp.RdpAccountant()))
        event = _event(mech)
        acc_pld.compose(event)
        acc_rdp.compose(event)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RDP's "optimal order is the largest alpha" notice
            eps_pld = float(acc_pld.get_epsilon(ds.delta))
            eps_rdp = float(acc_rdp.get_epsilon(ds.delta))
        claimed = e.get("epsilon")
        ds.points.append(
            Point(number, e.get("time", ""), e["job"], int(e["round"]), claimed, eps_pld, eps_rdp, ds.budget)
        )
        if claimed is None:
            problems.append(Problem(where, "no epsilon claimed for a DP training entry"))
        elif abs(claimed - eps_pld) > max(abs_tol, rel_tol * eps_pld):
            problems.append(
                Problem(
                    where,
                    f"claimed epsilon {claimed:.4f} but the independent PLD accountant "
                    f"gives {eps_pld:.4f} (tolerance max({abs_tol}, {rel_tol:.0%}))",
                )
            )
        if claimed is not None and claimed > ds.budget:
            problems.append(Problem(where, f"budget exceeded: claimed epsilon {claimed:.4f} > budget {ds.budget:g}"))
        elif eps_pld > ds.budget + max(abs_tol, rel_tol * ds.budget):
            problems.append(Problem(where, f"budget exceeded: recomputed epsilon {eps_pld:.4f} > budget {ds.budget:g}"))
    return list(spends.values()), problems
