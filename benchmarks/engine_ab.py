"""The book-keeping engine against an earlier revision of itself, side by side in one process.

A change to ``client/bookkeeping.py`` is judged by steps of fedshield's real DP path
(``train_local``, secret Poisson batches; the noise left out, the audit's ``noise-off`` fault,
so that only the engine differs), alternating three variants run by run: non-private training,
the engine as it is in the working tree, and the engine of ``--against`` (its
``client/bookkeeping.py`` read with ``git show`` and loaded as a module of its own). Each step
after a run's first is timed (benchmarks.dp_step_time); printed: median ms per step, ratio to
non-private, and the median over rounds of the new engine's time over the old one's (this
machine's speed drifts by 10-25% between runs, so only ratios taken side by side mean much).

    python -m benchmarks.engine_ab --against HEAD~1 --family resnet --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch

from benchmarks import dp_step_time

ROOT = Path(__file__).resolve().parents[1]


def engine_at(revision: str) -> ModuleType:
    """``client/bookkeeping.py`` as it was at ``revision``, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:client/bookkeeping.py"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if source.returncode != 0:
        raise SystemExit(f"--against {revision}: {source.stderr.strip()}")
    module = ModuleType("bookkeeping_then")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source.stdout, f"{revision}:client/bookkeeping.py", "exec"), module.__dict__)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="git revision whose engine to compare with")
    parser.add_argument("--family", choices=dp_step_time.FAMILIES, default="resnet")
    parser.add_argument("--rounds", type=int, default=10, help="runs of each variant, alternating")
    parser.add_argument("--batch", type=int, help="the family's batch size instead of its quick one")
    args = parser.parse_args(argv)

    import client.bookkeeping as now

    then = engine_at(args.against)
    engines = {"now": now.BookKeeping, "then": then.BookKeeping}
    case = next(c for c in dp_step_time.cases(True, args.batch) if c.family == args.family)
    device = torch.device("cpu")

    def run(variant: str) -> list[float]:
        if variant == "plain":
            return dp_step_time._fedshield(case, device, False, "secret")[1]
        now.BookKeeping = engines[variant]  # what client.dp_trainer builds its engine from
        try:
            return dp_step_time._fedshield(case, device, True, "off")[1]
        finally:
            now.BookKeeping = engines["now"]

    variants = ("plain", "then", "now")
    for v in variants:  # warm-up: kernels, the mode auto picks
        run(v)
    steps: dict[str, list[float]] = {v: [] for v in variants}
    per_round: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(args.rounds):
        for v in variants:
            times = run(v)
            steps[v] += times
            per_round[v].append(statistics.median(times))
        print(f"round {i + 1}/{args.rounds}", file=sys.stderr, flush=True)
    plain = statistics.median(steps["plain"])
    print(f"python -m benchmarks.engine_ab {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"{case.label}, batch {case.batch}, noise off, {args.rounds} rounds")
    for v in variants:
        label = {"plain": "non-private", "then": f"engine at {args.against}", "now": "engine now"}[v]
        median = statistics.median(steps[v])
        print(f"  {label:<32} {median * 1e3:8.2f} ms/step  {median / plain:5.2f}x")
    ratio = statistics.median(n / t for n, t in zip(per_round["now"], per_round["then"], strict=True))
    print(f"  now / then, median over rounds: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
