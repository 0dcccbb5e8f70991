"""The simulation harness's overhead per client-round, against the same local compute in a plain loop.

Runs a real simulation (Flower's simulation engine, the real ClientApp and ServerApp, real
ledgers and Opacus) with profiling on (common/profiling.py: each site process writes where
its client-rounds went to a local file), then the same local training (client.dp_trainer.
train_local on the same sites' records, at the noise each site used) in a plain loop in
this process, and prints both with the breakdown:

    python -m benchmarks.harness_overhead                       # 20 sites x 6 rounds, banks-credit
    python -m benchmarks.harness_overhead --sites 1000 --fraction-train 0.1 --rounds 3 \\
        --set synthetic-records=100000                          # the scale run (see benchmarks.scale)

A site's first client-round also pays one-off costs (noise calibration for the job, its key
pair, its share of the data), reported apart from the steady rounds (a site's later rounds).
Numbers are medians and means over the client-rounds of each kind (the mean is what a run
pays per client-round; a median hides a part that is dear in fewer than half of them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import finish, scenario_config
from common import profiling

COMPUTE = ("sgd steps",)
SETUP = ("opacus setup", "setup")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="banks-credit")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--fraction-train", type=float, default=1.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any scenario setting")
    parser.add_argument("--json", type=Path, default=Path("runs/benchmarks/harness-overhead.json"))
    parser.add_argument("--plain-limit", type=int, default=200, help="client-rounds re-run in the plain loop")
    return parser


def _config(args: argparse.Namespace, out: Path):
    settings = {"sites": args.sites, "rounds": args.rounds, "fraction-train": args.fraction_train}
    return scenario_config(args.scenario, out, settings, args.set, source="benchmarks.harness_overhead")


def _median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values) if values else float("nan")


def breakdown(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind of client-round (a site's first, its later ones): the median of each part, in ms."""
    first_round: dict[int, int] = {}
    for row in rows:
        first_round[row["site"]] = min(first_round.get(row["site"], row["round"]), row["round"])
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for row in rows:
        groups["first" if row["round"] == first_round[row["site"]] else "steady"].append(row["spans"])
    out: dict[str, Any] = {}
    for kind, spans in groups.items():
        names = sorted({k for s in spans for k in s})
        parts = {n: _median_ms([s.get(n, 0.0) for s in spans]) for n in names}
        client = [s["client"] for s in spans]
        compute = [sum(s.get(n, 0.0) for n in COMPUTE) for s in spans]
        overhead = [c - k for c, k in zip(client, compute, strict=True)]
        out[kind] = {
            "client_rounds": len(spans),
            "parts_ms": parts,
            "client_ms": _median_ms(client),
            "compute_ms": _median_ms(compute),
            "overhead_in_site_ms": _median_ms(overhead),
            # the mean is the cost per client-round a run pays; the median hides a part that is
            # dear in fewer than half the rounds (a fresh PRV evaluation where some sites share)
            "parts_mean_ms": {n: 1e3 * statistics.fmean(s.get(n, 0.0) for s in spans) for n in names},
            "overhead_mean_ms": 1e3 * statistics.fmean(overhead),
        }
    return out


def plain_loop(cfg, metrics: dict[str, Any], limit: int) -> dict[str, Any]:
    """The same client-rounds' local training, one after another in this process."""
    from client.dp_trainer import LocalPlan, PrivacyPlan, train_local
    from client.site_ledger import simulation_paths
    from common.federation import model_spec, site_data
    from common.models import build_model
    from common.privacy.noise import secret
    from common.privacy.policy import derived_seed, site_secret

    model = build_model(model_spec(cfg), seed=cfg.seed)
    plan = LocalPlan(cfg.training.local_epochs, cfg.training.batch_size, cfg.training.learning_rate)
    done, whole, steps, setup = 0, [], [], []
    for rnd in metrics["rounds"]:
        for site, info in sorted(rnd["sites"].items(), key=lambda kv: int(kv[0])):
            if not info.get("trained") or done >= limit:
                continue
            name = f"site-{site}"
            secret_bytes = site_secret(simulation_paths(Path(cfg.state_path), name).root)
            data = site_data(
                cfg,
                int(site),
                cfg.federation.sites,
                val_fraction=cfg.policy.val_fraction,
                split_seed=derived_seed(secret_bytes, "split"),
            )
            sigma = float(info["noise_multiplier"])
            privacy = PrivacyPlan(sigma, cfg.privacy.max_grad_norm, cfg.training.grad_sample_mode)
            with profiling.recording():
                profiling.start()
                start = time.perf_counter()
                train_local(model, data.train, plan, privacy=privacy, randomness=secret())
                whole.append(time.perf_counter() - start)
                spans = profiling.take()
            steps.append(spans.get("sgd steps", 0.0))
            setup.append(spans.get("opacus setup", 0.0))
            done += 1
    return {
        "client_rounds": done,
        "train_local_ms": _median_ms(whole),
        "compute_ms": _median_ms(steps),
        "opacus_setup_ms": _median_ms(setup),
    }


def client_app_loop(cfg, metrics: dict[str, Any], state: Path) -> dict[str, Any]:
    """The real ClientApp's train handler (client.handlers.handle_train: veto, ledger, data, model,
    DP-SGD, reply) for the same client-rounds, called one after another in this process with
    the server's messages built here: fedshield's own cost per client-round without the
    engine's messaging, and without sites competing for the CPUs."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client.handlers import handle_train
    from common import records as rk
    from common.federation import model_spec
    from common.models import build_model, spec_frozen_sha256

    cfg = cfg.replace(out=str(state))
    arrays = ArrayRecord(build_model(model_spec(cfg), seed=cfg.seed).state_dict())
    frozen = spec_frozen_sha256(model_spec(cfg), cfg.seed)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    contexts: dict[int, Any] = {}
    # The accountant's memo starts empty, as in a fresh site process: this process may have
    # computed the same histories' epsilons already (the simulation's report, in the driver).
    from common.privacy import prv

    prv.prv_epsilon.cache_clear()
    folder = state / "profile"
    os.environ[profiling.ENV] = str(folder)
    try:
        for number, rnd in enumerate(metrics["rounds"], start=1):
            for site, info in sorted(rnd["sites"].items(), key=lambda kv: int(kv[0])):
                if not info.get("trained"):
                    continue
                node = int(site)
                config = ConfigRecord({rk.SERVER_ROUND: number, rk.JOB_ID: "bench"})
                if frozen:
                    config[rk.FROZEN_SHA256] = frozen
                message = Message(
                    RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}), dst_node_id=node, message_type=MessageType.TRAIN
                )
                context = contexts.setdefault(
                    node,
                    Context(
                        run_id=1,
                        node_id=node,
                        node_config={"partition-id": node, "num-partitions": cfg.federation.sites},
                        state=RecordDict(),
                        run_config={},
                    ),
                )
                reply = handle_train(message, context, cfg)
                if rk.ARRAYS not in reply.content:
                    raise RuntimeError(f"site {node} round {number} did not train: {dict(reply.content[rk.METRICS])}")
    finally:
        os.environ.pop(profiling.ENV, None)
    return breakdown(profiling.read(folder))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from simulations.harness import simulate

    work = Path(tempfile.mkdtemp(prefix="fedshield-bench-"))
    cfg = _config(args, work / "run")
    profile = work / "profile"
    os.environ[profiling.ENV] = str(profile)  # the engine's workers inherit it
    start = time.perf_counter()
    try:
        metrics = simulate(cfg, progress=lambda _line: None)
    finally:
        os.environ.pop(profiling.ENV, None)
    wall = time.perf_counter() - start
    rows = profiling.read(profile)
    rounds = metrics["rounds"]
    per_round = [float(r["seconds"]) for r in rounds]
    trained = [sum(1 for s in r["sites"].values() if s.get("trained")) for r in rounds]
    steady = [(s, n) for s, n in zip(per_round[1:], trained[1:], strict=True) if n]
    result = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], "-m", "benchmarks.harness_overhead", *sys.argv[1:]]),
        "scenario": args.scenario,
        "sites": cfg.federation.sites,
        "rounds": cfg.federation.rounds,
        "fraction_train": cfg.federation.fraction_train,
        "cpus": os.cpu_count(),
        "wall_s": wall,
        "round_s": per_round,
        "sites_trained_per_round": trained,
        # the engine runs sites in parallel (one per CPU): wall per client-round, not CPU time
        "steady_wall_ms_per_client_round": 1e3 * sum(s for s, _ in steady) / max(sum(n for _, n in steady), 1),
        "in_site": breakdown(rows),
        "plain_loop": plain_loop(cfg, metrics, args.plain_limit),
        "client_app_loop": client_app_loop(cfg, metrics, work / "loop"),
    }
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['command']}",
        f"{result['sites']} sites, {result['rounds']} rounds, fraction-train {result['fraction_train']}, "
        f"{result['cpus']} CPUs: whole run {result['wall_s']:.1f} s; rounds "
        + ", ".join(f"{s:.1f}" for s in result["round_s"])
        + " s",
    ]
    plain = result["plain_loop"]
    lines.append(
        f"plain loop (train_local only, one process): {plain['train_local_ms']:.1f} ms per client-round "
        f"(SGD steps {plain['compute_ms']:.1f}, Opacus setup {plain['opacus_setup_ms']:.1f})"
    )
    for kind in ("steady", "first"):
        info = result["in_site"].get(kind)
        if not info:
            continue
        lines.append(
            f"{kind} client-rounds ({info['client_rounds']}), median inside the site: {info['client_ms']:.1f} ms, "
            f"of which SGD steps {info['compute_ms']:.1f} ms; "
            f"overhead over the compute {info['overhead_in_site_ms']:.1f} ms (mean {info['overhead_mean_ms']:.1f} ms)"
        )
        lines += _parts(info, skip=("client",))
    loop = result["client_app_loop"].get("steady")
    if loop:
        lines.append(
            f"the real ClientApp handler in a plain loop (no engine, one site at a time), steady client-rounds "
            f"({loop['client_rounds']}): {loop['client_ms']:.1f} ms, of which SGD steps {loop['compute_ms']:.1f} ms; "
            f"fedshield's overhead over the compute {loop['overhead_in_site_ms']:.1f} ms "
            f"(mean {loop['overhead_mean_ms']:.1f} ms)"
        )
        lines += _parts(loop, skip=("client", "sgd steps"))
    wall = result["steady_wall_ms_per_client_round"]
    lines.append(
        f"steady rounds, wall per client-round (sites run in parallel): {wall:.1f} ms"
        f" vs {plain['train_local_ms']:.1f} ms in the plain loop"
    )
    return "\n".join(lines)


def _parts(info: dict[str, Any], skip: tuple[str, ...]) -> list[str]:
    lines = [f"    {'part':<26} {'median':>8}    {'mean':>8}"]
    means = info["parts_mean_ms"]
    for name, ms in sorted(info["parts_ms"].items(), key=lambda kv: -means[kv[0]]):
        if name not in skip and means[name] >= 0.05:
            lines.append(f"    {name:<26} {ms:8.2f} ms {means[name]:8.2f} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return finish(run(args), args.json, report)


if __name__ == "__main__":
    raise SystemExit(main())
