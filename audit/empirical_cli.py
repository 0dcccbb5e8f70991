"""``fedshield audit empirical RUN_DIR``: the one-run canary audit of a finished run
(:mod:`audit.empirical`) and the audit of its evaluation releases (:mod:`audit.evaluation`).

Exit 0 when every audited lower bound is at most the claimed epsilon; 1 on a violation (or an
archive that does not match the ledger); 2 when the run cannot be audited.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from audit import empirical
from common.errors import FedshieldError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedshield audit empirical",
        description=(
            "Empirical privacy audit of one run (Steinke, Nasr & Jagielski 2023): epsilon lower bounds "
            "at 95%% confidence from the canaries the sites planted (run with audit-canaries = m), "
            "beside the accountant's epsilon per site; a lower bound above it is a violation."
        ),
    )
    p.add_argument("run", type=Path, help="the run's output folder (with metrics.json and config.toml)")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.add_argument("--plot", type=Path, help="write a PNG of lower bounds beside claimed epsilons here")
    p.add_argument(
        "--evaluation-trials",
        type=int,
        default=20_000,
        help="releases drawn on each of two neighbouring validation sets to audit DP evaluation (0 = skip)",
    )
    p.add_argument("--p", type=float, default=empirical.P_VALUE, help="1 - confidence (default 0.05)")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        if not 0 < args.p < 1:
            raise FedshieldError(f"--p must be in (0, 1), got {args.p}")
        if args.evaluation_trials < 0:
            raise FedshieldError(f"--evaluation-trials must be >= 0, got {args.evaluation_trials}")
        report = empirical.audit_run(args.run, p=args.p)
        if args.evaluation_trials:
            from audit.evaluation import audit_run_evaluations

            report.evaluations = audit_run_evaluations(args.run, trials=args.evaluation_trials, p=args.p)
    except FedshieldError as exc:
        print(f"fedshield audit empirical: error: {exc}", file=sys.stderr)
        return 2
    text = empirical.to_json(report)
    (args.run / empirical.REPORT_FILE).write_text(text)
    if args.plot:
        empirical.plot(report, args.plot)
    print(text if args.json else empirical.to_text(report))
    return 0 if report.verdict == "CONSISTENT" else 1
