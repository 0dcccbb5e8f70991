"""``fedshield audit PATH...``: verify ledgers and recompute spend; exit 0 only if all holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audit.recompute import ABS_TOL, REL_TOL, recompute
from audit.report import AuditResult, plot, to_json, to_text
from audit.verify import cross_check, discover, load


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="verify privacy ledgers and recompute every site's epsilon")
    p.add_argument("paths", nargs="+", type=Path, help="run folders (with server/, sites/, keys/) or ledger files")
    p.add_argument("--keys", type=Path, help="folder of public keys (<owner>.pub); default: <run folder>/keys")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.add_argument("--plot", type=Path, help="write a PNG of epsilon over time here")
    p.add_argument("--abs-tol", type=float, default=ABS_TOL, help="absolute tolerance on epsilon claims")
    p.add_argument("--rel-tol", type=float, default=REL_TOL, help="relative tolerance on epsilon claims")


def run_audit(
    paths: list[Path], keys_dir: Path | None, *, abs_tol: float = ABS_TOL, rel_tol: float = REL_TOL
) -> AuditResult:
    ledger_paths, found_keys = discover(paths, keys_dir)
    ledgers = [load(p, found_keys) for p in ledger_paths]
    problems = [p for lg in ledgers for p in lg.problems]
    spends = []
    for lg in ledgers:
        if not lg.is_server and lg.entries:
            site_spends, site_problems = recompute(lg, abs_tol=abs_tol, rel_tol=rel_tol)
            spends += site_spends
            problems += site_problems
    problems += cross_check(ledgers)
    return AuditResult(ledgers, spends, problems)


def main(args: argparse.Namespace) -> int:
    result = run_audit(args.paths, args.keys, abs_tol=args.abs_tol, rel_tol=args.rel_tol)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(to_json(result), indent=2) if args.json else to_text(result))
    return 0 if result.ok else 1
