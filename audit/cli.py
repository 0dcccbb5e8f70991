"""``fedshield audit PATH... --keys DIR``: verify ledgers against trusted keys, check site and
server ledgers against each other, recompute every site's epsilon (unit: one record at one
site, add/remove-one; at the budget's delta).

Exit 0 only when VERIFIED; 1 on any fatal finding (FAILED or NOT PRIVATE); 2 when the inputs
cannot be audited (no trusted keys, a path that does not exist).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from audit import empirical
from audit.crosscheck import cross_check
from audit.recompute import ABS_TOL, REL_TOL, recompute
from audit.report import AuditResult, plot, to_json, to_text
from audit.trust import AuditInputError, load_trust
from audit.verify import discover, load


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="verify privacy ledgers and recompute every site's epsilon (and: audit empirical RUN_DIR)",
        epilog="fedshield audit empirical RUN_DIR: the one-run canary audit of a run (see its --help)",
    )
    p.add_argument("paths", nargs="+", type=Path, help="run folders (with server/, sites/) or ledger files")
    p.add_argument(
        "--keys",
        type=Path,
        help="folder of trusted public keys (<owner>.pub) as provisioned to you, outside the audited folders",
    )
    p.add_argument(
        "--trusted-fingerprints",
        type=Path,
        help="file of pinned key fingerprints: JSON {owner: fingerprint} or lines 'owner fingerprint'",
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.add_argument("--plot", type=Path, help="write a PNG of epsilon over time here")
    p.add_argument("--abs-tol", type=float, default=ABS_TOL, help="absolute tolerance on under-claimed epsilon")
    p.add_argument("--rel-tol", type=float, default=REL_TOL, help="relative tolerance on under-claimed epsilon")


def run_audit(
    paths: list[Path],
    keys_dir: Path | None,
    *,
    fingerprints: Path | None = None,
    abs_tol: float = ABS_TOL,
    rel_tol: float = REL_TOL,
) -> AuditResult:
    """Audit the ledgers under ``paths`` with the trusted keys in ``keys_dir`` and/or the
    pinned ``fingerprints``; raises :class:`audit.trust.AuditInputError` on unusable inputs."""
    _check_inputs(keys_dir, fingerprints, abs_tol, rel_tol)
    found = discover(paths)
    trust = load_trust(keys_dir, fingerprints, found.audited, found.key_search)
    ledgers = [load(p, trust) for p in found.ledgers]
    problems = [*found.problems, *(p for lg in ledgers for p in lg.problems)]
    spends = []
    for lg in ledgers:
        if not lg.is_server and lg.entries:
            site_spends, site_problems = recompute(lg, abs_tol=abs_tol, rel_tol=rel_tol)
            spends += site_spends
            problems += site_problems
    problems += cross_check(ledgers)
    return AuditResult(ledgers, spends, problems)


def _check_inputs(keys_dir: Path | None, fingerprints: Path | None, abs_tol: float, rel_tol: float) -> None:
    """The auditor's own inputs, before any ledger is read (a wrong path is exit 2, not a finding)."""
    if keys_dir is not None and not keys_dir.is_dir():
        what = "is a file, not a folder of trusted keys" if keys_dir.exists() else "trusted keys folder not found"
        raise AuditInputError(f"--keys {keys_dir}: {what}")
    if fingerprints is not None and not fingerprints.is_file():
        raise AuditInputError(f"--trusted-fingerprints {fingerprints}: trusted fingerprints file not found")
    for flag, value in (("--abs-tol", abs_tol), ("--rel-tol", rel_tol)):
        if not (value >= 0 and math.isfinite(value)):
            raise AuditInputError(f"{flag} must be a finite number >= 0, got {value!r}")


def main(args: argparse.Namespace) -> int:
    result = run_audit(
        args.paths, args.keys, fingerprints=args.trusted_fingerprints, abs_tol=args.abs_tol, rel_tol=args.rel_tol
    )
    if args.plot:
        plot(result, args.plot)
    found = [line for path in args.paths if path.is_dir() for line in empirical.summary_lines(path)]
    if args.json:
        print(json.dumps({**to_json(result), "empirical": found} if found else to_json(result), indent=2))
    else:
        print("\n".join([to_text(result), *found]))
    return 0 if result.ok else 1
