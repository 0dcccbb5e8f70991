"""The audit's verdict as text for a person, JSON for a machine, and a plot of epsilon."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.recompute import ABS_TOL, REL_TOL, DatasetSpend
from audit.verify import LoadedLedger, Problem


@dataclass
class AuditResult:
    ledgers: list[LoadedLedger]
    spends: list[DatasetSpend]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not any(p.fatal for p in self.problems)


def _num(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else "inf"


def to_json(result: AuditResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "tolerance": {"abs": ABS_TOL, "rel": REL_TOL, "reference_accountant": "dp-accounting PLD"},
        "ledgers": [
            {"path": str(lg.path), "owner": lg.owner, "entries": len(lg.entries), "key_id": lg.key_id}
            for lg in result.ledgers
        ],
        "sites": [
            {
                "site": s.site,
                "dataset": s.dataset,
                "budget": {"epsilon": s.budget, "delta": s.delta},
                "spent": {"claimed": _num(s.spent_claimed), "pld": _num(s.spent_pld), "rdp": _num(s.spent_rdp)},
                "rounds_trained": len(s.points) + s.non_private,
                "refusals": s.refusals,
                "jobs": sorted(s.jobs),
                "within_budget": s.non_private == 0 and s.spent_claimed <= s.budget,
            }
            for s in result.spends
        ],
        "problems": [{"where": p.where, "what": p.what, "fatal": p.fatal} for p in result.problems],
    }


def to_text(result: AuditResult) -> str:
    lines = ["Ledgers"]
    for lg in result.ledgers:
        key = f"key {lg.key_id}" if lg.key_id else "key not verified"
        lines.append(f"  {lg.owner:<10} {len(lg.entries):>5} entries  {key}  {lg.path}")
    lines += [
        "",
        "Privacy spend per site and dataset (epsilon at the budget's delta)",
        f"  {'site':<10} {'dataset':<14} {'claimed':>8} {'PLD':>8} {'RDP':>8} {'budget':>7} {'delta':>7} "
        f"{'rounds':>6} {'refused':>7} {'jobs':>4}  verdict",
    ]
    for s in result.spends:
        verdict = "no DP!" if s.non_private else ("OK" if s.spent_claimed <= s.budget else "OVERSPENT")
        lines.append(
            f"  {s.site:<10} {s.dataset[:12] + '…':<14} {s.spent_claimed:>8.3f} {s.spent_pld:>8.3f} "
            f"{s.spent_rdp:>8.3f} {s.budget:>7g} {s.delta:>7.0e} {len(s.points) + s.non_private:>6} "
            f"{s.refusals:>7} {len(s.jobs):>4}  {verdict}"
        )
    fatal = [p for p in result.problems if p.fatal]
    notes = [p for p in result.problems if not p.fatal]
    if notes:
        lines += ["", "Notes"] + [f"  {p}" for p in notes]
    if fatal:
        lines += ["", f"FAILED: {len(fatal)} problem(s)"] + [f"  {p}" for p in fatal]
    else:
        lines += [
            "",
            "VERIFIED: every signature and chain link holds, site and server ledgers agree, every "
            f"claimed epsilon matches the independent PLD accountant (tolerance max({ABS_TOL}, "
            f"{REL_TOL:.0%})), and no budget was exceeded.",
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
        ax.plot(
            x,
            [p.claimed if p.claimed is not None else math.nan for p in s.points],
            marker="o",
            color=color,
            label=f"{s.site} claimed",
        )
        ax.plot(x, [p.pld for p in s.points], linestyle="--", color=color, alpha=0.7, label=f"{s.site} PLD")
        ax.axhline(s.budget, color=color, linestyle=":", alpha=0.6)
    ax.set_xlabel("training entry in the site's ledger (all jobs, in order)")
    ax.set_ylabel("cumulative epsilon")
    ax.set_title("Privacy spend per site: claimed (PRV) vs recomputed (PLD); dotted = budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
