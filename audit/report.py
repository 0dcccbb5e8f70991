"""The audit's verdict as text for a person, JSON for a machine, and a plot of epsilon.

Epsilon is always at the budget's delta; unit of privacy: one record at one site
(add/remove-one). The verdict is one of VERIFIED (every check held), FAILED (a check failed)
and NOT PRIVATE (some release has no finite epsilon: no DP, or reproducible noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.recompute import ABS_TOL, REL_TOL, SourceSpend
from audit.verify import LoadedLedger, Problem

VERIFIED = "VERIFIED"
FAILED = "FAILED"
NOT_PRIVATE = "NOT PRIVATE"


@dataclass
class AuditResult:
    ledgers: list[LoadedLedger]
    spends: list[SourceSpend]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not any(p.fatal for p in self.problems)

    @property
    def verdict(self) -> str:
        if any(p.fatal and p.not_private for p in self.problems) or not all(s.private for s in self.spends):
            return NOT_PRIVATE
        return VERIFIED if self.ok else FAILED


def _num(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else "inf"


def _site_verdict(s: SourceSpend) -> str:
    if not s.private:
        return "NOT PRIVATE"
    return "OK" if s.within_budget else "OVERSPENT"


def to_json(result: AuditResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "verdict": result.verdict,
        "unit_of_privacy": "one record at one site (add/remove-one); epsilon at the budget's delta",
        "tolerance": {"abs": ABS_TOL, "rel": REL_TOL, "reference_accountant": "dp-accounting pessimistic PLD"},
        "ledgers": [
            {"path": str(lg.path), "owner": lg.owner, "entries": len(lg.entries), "key_id": lg.key_id}
            for lg in result.ledgers
        ],
        "sites": [
            {
                "site": s.site,
                "source": s.source,
                "datasets": s.datasets,
                "budget": {"epsilon": s.budget, "delta": s.delta},
                "spent": {"claimed": _num(s.spent_claimed), "pld": _num(s.spent_pld), "rdp": _num(s.spent_rdp)},
                "rounds_trained": s.trained,
                "refusals": s.refusals,
                "non_private_releases": s.non_private,
                "public_evaluations": s.public_evaluations,
                "jobs": sorted(s.jobs),
                "private": s.private,
                "within_budget": s.within_budget,
                "verdict": _site_verdict(s),
            }
            for s in result.spends
        ],
        "problems": [
            {"where": p.where, "what": p.what, "fatal": p.fatal, "not_private": p.not_private} for p in result.problems
        ],
    }


def to_text(result: AuditResult) -> str:
    lines = ["Ledgers"]
    for lg in result.ledgers:
        key = f"key {lg.key_id}" if lg.key_id else "key NOT TRUSTED"
        lines.append(f"  {lg.owner:<10} {len(lg.entries):>5} entries  {key}  {lg.path}")
    lines += [
        "",
        "Privacy spend per site and data source (unit: one record; epsilon at the budget's delta)",
        f"  {'site':<10} {'source':<24} {'claimed':>8} {'PLD':>8} {'RDP':>8} {'budget':>7} {'delta':>7} "
        f"{'rounds':>6} {'refused':>7} {'jobs':>4}  verdict",
    ]
    for s in result.spends:
        source = s.source if len(s.source) <= 24 else s.source[:23] + "…"
        lines.append(
            f"  {s.site:<10} {source:<24} {s.spent_claimed:>8.3f} {s.spent_pld:>8.3f} "
            f"{s.spent_rdp:>8.3f} {s.budget:>7g} {s.delta:>7.0e} {s.trained:>6} "
            f"{s.refusals:>7} {len(s.jobs):>4}  {_site_verdict(s)}"
        )
    fatal = [p for p in result.problems if p.fatal]
    notes = [p for p in result.problems if not p.fatal]
    if notes:
        lines += ["", "Notes"] + [f"  {p}" for p in notes]
    verdict = result.verdict
    if verdict == NOT_PRIVATE:
        reasons = [p for p in fatal if p.not_private]
        lines += ["", f"NOT PRIVATE: {len(reasons)} release(s) without a finite epsilon"]
        lines += [f"  {p}" for p in reasons]
        others = [p for p in fatal if not p.not_private]
        if others:
            lines += [f"FAILED as well: {len(others)} other problem(s)"] + [f"  {p}" for p in others]
    elif verdict == FAILED:
        lines += ["", f"FAILED: {len(fatal)} problem(s)"] + [f"  {p}" for p in fatal]
    else:
        lines += [
            "",
            "VERIFIED: every signature (against the trusted keys) and chain link holds, site and server "
            "ledgers agree in both directions, every claimed epsilon is at least the independent "
            f"pessimistic PLD figure (tolerance max({ABS_TOL}, {REL_TOL:.0%})), no recomputed epsilon "
            "exceeds its budget, and every delta is in (0, 1/n].",
        ]
    return "\n".join(lines)


def plot(result: AuditResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, s in enumerate(result.spends):
        color = f"C{i % 10}"
        x = list(range(1, len(s.points) + 1))
        label = s.site if s.private else f"{s.site} (NOT PRIVATE)"
        ax.plot(
            x,
            [p.claimed if p.claimed is not None else math.nan for p in s.points],
            marker="o",
            color=color,
            label=f"{label} claimed",
        )
        ax.plot(
            x,
            [p.pld if math.isfinite(p.pld) else math.nan for p in s.points],
            linestyle="--",
            color=color,
            alpha=0.7,
            label=f"{label} PLD",
        )
        ax.axhline(s.budget, color=color, linestyle=":", alpha=0.6)
    ax.set_xlabel("privacy event in the site's ledger (reserve, train, evaluate; all jobs, in order)")
    ax.set_ylabel("cumulative epsilon at the budget's delta")
    ax.set_title(f"{result.verdict}: claimed (site) vs recomputed (pessimistic PLD); dotted = budget")
    ax.grid(alpha=0.3)
    if result.spends:
        ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
