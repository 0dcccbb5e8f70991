"""The scale run: many simulated sites, a sample of them per round, on this machine.

Runs a real simulation (Flower's simulation engine, the real ClientApp and ServerApp, real
ledgers, Opacus) of the ``banks-credit-1000`` scenario by default, and samples the memory of
the whole process tree (this process, Ray's services and every worker) twice a second:

    python -m benchmarks.scale                                   # 1,000 sites, 100 per round
    python -m benchmarks.scale --sites 10000 --per-round 100 --set synthetic-records=300000   # 10,000 registered
    python -m benchmarks.scale --engine-polling flower          # Flower's engine polling, for the ratio

Prints and writes (--json) rounds per minute (steady: every round after the first, which
also starts the workers), seconds per round, and the peak resident memory of the tree (the sum
of the processes' RSS: an upper bound, shared pages counted once per process).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import finish, scenario_config


class TreeMemory:
    """Peak of the summed RSS of this process and all its descendants, sampled in a thread.

    The descendants are listed again every ``rescan`` samples (psutil reads every process's
    parent id in /proc to list them: the sampler used a sixth of a core here when it did so
    twice a second); their memory is read at every sample."""

    def __init__(self, interval: float = 0.5, rescan: int = 4) -> None:
        self.interval = interval
        self.rescan = rescan
        self.peak = 0
        self.peak_processes = 0
        self._tree: list[psutil.Process] = []
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        if self._samples % self.rescan == 0:
            me = psutil.Process()
            self._tree = [me, *me.children(recursive=True)]
        self._samples += 1
        total, count = 0, 0
        for proc in self._tree:
            try:
                total += proc.memory_info().rss
                count += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if total > self.peak:
            self.peak, self.peak_processes = total, count
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="banks-credit-1000")
    parser.add_argument("--sites", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--per-round", type=int, help="sites sampled per round (default: the scenario's fraction)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any scenario setting")
    parser.add_argument(
        "--engine-polling",
        choices=("sweep", "flower"),
        default="sweep",
        help="the engine's message thread: one sweep per poll (fedshield's default) or Flower's per-site calls",
    )
    parser.add_argument("--json", type=Path, default=Path("runs/benchmarks/scale.json"))
    return parser


def _config(args: argparse.Namespace, out: Path):
    settings: dict[str, Any] = {"sites": args.sites, "rounds": args.rounds}
    settings = {k: v for k, v in settings.items() if v}
    if args.per_round:
        from simulations.scenarios import load_scenario

        settings["fraction-train"] = args.per_round / (args.sites or load_scenario(args.scenario).federation.sites)
    return scenario_config(args.scenario, out, settings, args.set, source="benchmarks.scale")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from simulations import engine_polling
    from simulations.harness import simulate

    work = Path(tempfile.mkdtemp(prefix="fedshield-scale-"))
    cfg = _config(args, work / "run")
    os.environ[engine_polling.ENV] = args.engine_polling
    start = time.perf_counter()
    try:
        with TreeMemory() as memory:
            metrics = simulate(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        os.environ.pop(engine_polling.ENV, None)
    wall = time.perf_counter() - start
    rounds = metrics["rounds"]
    seconds = [float(r["seconds"]) for r in rounds]
    trained = [sum(1 for s in r["sites"].values() if s.get("trained")) for r in rounds]
    steady = seconds[1:]
    ledgers = sum(f.stat().st_size for f in (work / "run" / "sites").glob("*/ledger.jsonl"))
    return {
        "command": " ".join(["python", "-m", "benchmarks.scale", *sys.argv[1:]]),
        "scenario": args.scenario,
        "engine_polling": args.engine_polling,
        "sites": cfg.federation.sites,
        "sampled_per_round": trained,
        "rounds": len(rounds),
        "cpus": os.cpu_count(),
        "wall_s": wall,
        "round_s": seconds,
        "rounds_per_minute_steady": 60.0 * len(steady) / sum(steady) if steady else float("nan"),
        "rounds_per_minute_overall": 60.0 * len(rounds) / wall,
        "peak_tree_rss_gib": memory.peak / 2**30,
        "processes_at_peak": memory.peak_processes,
        "ledgers_bytes": ledgers,
        "final": {k: v for k, v in metrics["final"].items() if isinstance(v, (int, float))},
    }


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            result["command"],
            f"{result['sites']} sites registered, {max(result['sampled_per_round'])} trained per round, "
            f"{result['rounds']} rounds on {result['cpus']} CPUs: {result['wall_s']:.1f} s in all "
            f"(engine polling: {result['engine_polling']})",
            "seconds per round: " + ", ".join(f"{s:.1f}" for s in result["round_s"]),
            f"rounds per minute: {result['rounds_per_minute_steady']:.1f} steady (after round 1), "
            f"{result['rounds_per_minute_overall']:.1f} overall",
            f"peak memory of the process tree: {result['peak_tree_rss_gib']:.2f} GiB "
            f"({result['processes_at_peak']} processes; summed RSS); ledgers {result['ledgers_bytes'] / 2**20:.1f} MiB",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return finish(run(args), args.json, report)


if __name__ == "__main__":
    raise SystemExit(main())
