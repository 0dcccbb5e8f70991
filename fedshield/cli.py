"""The ``fedshield`` command line.

User mistakes (bad paths, columns, values) end with one ``fedshield: error: ...`` line and
exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from audit import cli as audit_cli
from common.config import RunConfig
from common.data.sources import SOURCES
from common.errors import FedshieldError
from common.models import MODEL_FAMILIES
from common.partition import PARTITIONS
from common.tasks import TASKS
from fedshield import keys as keys_cli
from server.strategies import STRATEGIES
from simulations import scenarios


def _choices(registry: Mapping[str, Any]) -> str:
    """A registry's names with their one-line summaries, for --help."""
    return "; ".join(f"{name}: {entry.summary}" for name, entry in registry.items())


# CLI flag -> config key; every flag is optional and overrides the scenario file.
_FLAGS: dict[str, tuple[type, str]] = {
    "sites": (int, "number of simulated sites"),
    "rounds": (int, "federated rounds"),
    "budget-epsilon": (
        float,
        "each simulated site's privacy budget for its records, over every job (with --budget-delta)",
    ),
    "budget-delta": (float, "delta of each site's (epsilon, delta) budget"),
    "job-epsilon": (float, "the most this job may spend at a site (default: what is left of its budget)"),
    "noise-multiplier": (float, "use this noise multiplier instead of calibrating to the budget"),
    "max-grad-norm": (float, "per-example clipping bound"),
    "seed": (int, "seed for partitioning, initialisation and noise"),
    "strategy": (str, _choices(STRATEGIES)),
    "fraction-train": (float, "fraction of sites sampled per round"),
    "partition": (str, _choices(PARTITIONS) + "; a user's own data: iid unless given"),
    "alpha": (float, "Dirichlet concentration for label/quantity skew"),
    "dataset": (str, _choices(SOURCES)),
    "model": (str, _choices(MODEL_FAMILIES)),
    "task": (str, _choices(TASKS)),
    "positive-label": (str, "binary-risk: the class (label value) that is the risk, e.g. 1"),
    "data-path": (str, "data file or folder for csv / npz / image-folder"),
    "label-column": (str, "label column of a CSV file"),
    "budget-epsilon-by-site": (str, "budgets of single sites overriding --budget-epsilon, e.g. site-0=0.5,site-3=2"),
    "state-dir": (str, "where sites and server keep keys and ledgers across jobs (default: --out)"),
    "local-epochs": (float, "local passes over the data per round"),
    "batch-size": (int, "expected batch size (Poisson sampling)"),
    "learning-rate": (float, "local learning rate"),
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``fedshield: error: ...`` line (exit 2), like
    every other input error; ``--help`` still prints the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fedshield: error: {self.prog.removeprefix('fedshield').strip() or 'usage'}: {message}\n")


# Settings that name files or folders (resolved against the folder the command runs in).
_PATH_SETTINGS = ("data-path", "feature-schema", "pretrained-path")


def describe_run(cfg: RunConfig) -> str:
    """The banner: what data, split how, over how many sites, under which guarantee."""
    data = cfg.data.dataset + (f" {cfg.data.data_path}" if cfg.data.data_path else "")
    if cfg.data.label_column:
        data += f" (label {cfg.data.label_column})"
    split = {
        "iid": "an even (iid) split",
        "dirichlet": f"label skew (Dirichlet alpha={cfg.data.alpha:g})",
        "quantity": f"size skew (Dirichlet alpha={cfg.data.alpha:g})",
    }[cfg.data.partition]
    privacy = "no DP"
    if cfg.privacy.dp:
        job = f", this job at most {cfg.privacy.job_epsilon:g}" if cfg.privacy.job_epsilon else ""
        budget = f"epsilon<={cfg.policy.budget_epsilon:g} per site (delta={cfg.policy.budget_delta:g})"
        privacy = f"DP, budget {budget}{job}"
    fed = cfg.federation
    return (
        f"fedshield: data {data}; {split} over {fed.sites} sites; "
        f"{fed.rounds} rounds of {cfg.model.kind} / {fed.strategy}; "
        f"{privacy}; other settings from scenario {cfg.scenario}; output in {cfg.out}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="fedshield", description="Privacy-preserving federated learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a scenario with simulated sites on this machine")
    sim.add_argument(
        "--scenario",
        default=scenarios.DEFAULT_SCENARIO,
        help=f"scenario name ({', '.join(scenarios.available())}) or path to a .toml file",
    )
    sim.add_argument("--out", help="output folder (default: runs/<scenario>)")
    sim.add_argument("--no-dp", action="store_true", help="train without differential privacy (no guarantee)")
    sim.add_argument(
        "--compare-no-dp", action="store_true", help="also run the same scenario without DP and show both accuracies"
    )
    sim.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="SecAgg+: the server learns only the sum of the sites' updates (see the README's trade-offs)",
    )
    sim.add_argument(
        "--resume", action="store_true", help="continue the job checkpointed in the state folder from its next round"
    )
    sim.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the sites on an existing Ray cluster (see the README's 'Many machines'); "
        "the state folder must be on storage every machine shares (without it: a Ray of its own on this machine)",
    )
    sim.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any scenario setting, e.g. --set hidden=32 (repeatable)",
    )
    for flag, (kind, help_text) in _FLAGS.items():
        sim.add_argument(f"--{flag}", type=kind, help=help_text)
    sub.add_parser("scenarios", help="list the shipped scenarios")
    pred = sub.add_parser("predict", help="apply a run's final global model to new records")
    pred.add_argument("--model", required=True, metavar="RUN_DIR", help="output folder of a finished run")
    pred.add_argument("--data", required=True, metavar="FILE", help="records in the format the run trained on")
    pred.add_argument("--out", default="predictions.csv", help="where to write one row per record (CSV)")
    mon = sub.add_parser(
        "monitor", help="score a time-ordered stream of texts with a run's sentiment model; alert on negative surges"
    )
    mon.add_argument(
        "--model", required=True, metavar="RUN_DIR", help="output folder of a finished run (a text classifier)"
    )
    mon.add_argument("--texts", required=True, metavar="FILE", help="the stream: JSON lines or CSV with time and text")
    mon.add_argument("--window", default="1h", help="a duration (90s, 30m, 1h, 1d) or a count of texts (default 1h)")
    mon.add_argument("--detector", default="cusum", help="cusum (default) or ewma; see server/monitor.py")
    mon.add_argument("--threshold", type=float, help="cusum: decision interval h (default 8); ewma: L (default 4)")
    mon.add_argument("--drift", type=float, default=1.0, help="allowance k in standard errors (default 1)")
    mon.add_argument("--ewma-lambda", type=float, default=0.2, help="ewma: weight of the newest window (0.2)")
    mon.add_argument("--baseline", type=int, default=24, help="windows that set the baseline share (default 24)")
    mon.add_argument("--baseline-share", type=float, help="the baseline negative share, instead of --baseline")
    mon.add_argument("--negative-label", default="negative", help="the class counted (default negative)")
    mon.add_argument("--time-field", default="time")
    mon.add_argument("--text-field", default="text")
    mon.add_argument("--out", default="monitor", help="folder for alerts.json and monitor.png (default ./monitor)")
    audit_cli.add_parser(sub)
    keys_cli.add_parser(sub)
    return parser


def resolve_config(args: argparse.Namespace) -> RunConfig:
    cfg = scenarios.load_scenario(args.scenario)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise FedshieldError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    for flag in _FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            overrides[flag] = value
    if args.no_dp:
        overrides["dp"] = False
    if args.resume:
        overrides["resume"] = True
    if args.secure_aggregation:
        overrides["secure-aggregation"] = True
    dataset = overrides.get("dataset", cfg.data.dataset)
    if (
        dataset in SOURCES
        and SOURCES[dataset].user_data
        and "partition" not in overrides
        and dataset != cfg.data.dataset
    ):
        # The user's own records: an even split, not the scenario's simulated skew, unless asked.
        overrides["partition"] = "iid"
    for key in _PATH_SETTINGS:  # config.toml must re-run from any folder: paths are stored resolved
        value = str(overrides.get(key, cfg.to_flat()[key]))
        if value and (key != "pretrained-path" or value != "minilm"):
            overrides[key] = str(Path(value).expanduser().resolve())
    explicit = args.budget_epsilon is not None or args.job_epsilon is not None or args.budget_epsilon_by_site
    if explicit and args.noise_multiplier is None:
        overrides["noise-multiplier"] = 0.0  # an explicit budget means: calibrate to it
    # Absolute: the simulated sites run in worker processes that may not share our cwd.
    overrides["out"] = str(Path(args.out or f"runs/{cfg.scenario}").resolve())
    if args.state_dir:
        overrides["state-dir"] = str(Path(args.state_dir).resolve())
    return cfg.merged(overrides, source="command line")


def format_summary(metrics: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    lines = []
    final = metrics["final"]
    if metrics["dp"]:
        lines.append(
            f"{'site':>4}  {'records':>7}  {'epsilon spent':>13}  {'budget':>6}  {'delta':>7}  {'steps':>5}"
            f"  {'refused':>7}"
        )
        for site, s in final["sites"].items():
            records = s["records"] if s["records"] is not None else "-"
            lines.append(
                f"{site:>4}  {records:>7}  {s['epsilon']:>13.3f}  {s['budget_epsilon']:>6g}  "
                f"{s['budget_delta']:>7.0e}  {s['dp_steps']:>5}  {s['refusals']:>7}"
            )
    else:
        lines.append(f"{'site':>4}  {'records':>7}  privacy")
        for site, s in final["sites"].items():
            records = s["records"] if s["records"] is not None else "-"
            lines.append(f"{site:>4}  {records:>7}  none (trained without DP)")
    if metrics.get("failures"):
        first = next(f for r in metrics["rounds"] for f in r["failures"])
        lines.append(
            f"{metrics['failures']} site replies failed ({metrics.get('failed_rounds', 0)} rounds with no answer); "
            f"first: {first}"
        )
    if metrics.get("stopped_after_round") is not None:
        reason = metrics.get("stop_reason") or "every site refused (budget exhausted)"
        lines.append(f"stopped after round {metrics['stopped_after_round']}: {reason}")
    where = metrics["accuracy_scored_on"]
    label = "private model" if metrics["dp"] else "non-private model"
    headline = metrics.get("headline", "accuracy")
    scores = final.get("metrics") or {"accuracy": final["accuracy"]}
    if scores.get(headline) is not None:
        lines.append(f"final {headline}, {label}: {scores[headline]:.3f}  ({where})")
        others = [f"{k} {v:.3f}" for k, v in scores.items() if k not in (headline, "loss") and v is not None]
        if others and len(metrics.get("shown_metrics", [])) > 1:
            lines.append("  " + "  ".join(others))
    if baseline is not None:
        base = baseline["final"].get("metrics") or {"accuracy": baseline["final"]["accuracy"]}
        lines.append(f"final {headline}, same run without DP: {base.get(headline, float('nan')):.3f}")
    elif metrics["dp"]:
        lines.append("for the same run without DP, add --compare-no-dp (or run with --no-dp)")
    return "\n".join(lines)


def _simulate(args: argparse.Namespace) -> int:
    from simulations.harness import check_inputs, simulate, trusted_keys_path

    cfg = resolve_config(args)
    check_inputs(cfg)  # a bad file or value fails here, before anything is announced or started
    print(describe_run(cfg), file=sys.stderr, flush=True)
    print(
        f"fedshield: starting Flower's simulation engine (Ray) with {cfg.federation.sites} sites; this takes 10-30 s",
        file=sys.stderr,
        flush=True,
    )
    metrics = simulate(cfg, ray_address=args.ray_address)
    baseline = None
    if args.compare_no_dp and cfg.privacy.dp:
        print("fedshield: the same run without DP, for comparison", file=sys.stderr, flush=True)
        baseline_cfg = cfg.replace(dp=False, out=str(Path(cfg.out) / "no-dp"))
        baseline = simulate(baseline_cfg, ray_address=args.ray_address)
    print(format_summary(metrics, baseline))
    print(f"results: {Path(cfg.out) / 'metrics.json'}, plot: {Path(cfg.out) / 'training.png'}")
    trusted = trusted_keys_path(cfg)
    print(f"ledgers: {cfg.state_path}; public keys provisioned for the auditor: {trusted}")
    print(f"verify with: fedshield audit {cfg.state_path} --keys {trusted}")
    if baseline is not None:
        print(
            f"the run without DP released the same records with no guarantee ({baseline_cfg.out}): "
            f"the audit of {cfg.state_path} says NOT PRIVATE"
        )
    if metrics.get("failures"):
        print(
            f"fedshield: the job ended with {metrics['failures']} failed site replies (see the summary)",
            file=sys.stderr,
        )
        return 1
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from server import monitor as mon

    window = mon.parse_window(args.window)
    detector = mon.Detector(
        args.detector, args.threshold, args.drift, args.ewma_lambda, args.baseline, args.baseline_share
    )
    stream = mon.read_stream(args.texts, time_field=args.time_field, text_field=args.text_field)
    scorer = mon.text_scorer(args.model, args.negative_label)
    result = mon.monitor(stream, scorer, window=window, detector=detector, progress=mon.print_progress)
    for alert in result.detection.alerts:
        print(mon.alert_line(alert, result.detection, detector))
    alerts, plot = mon.write_outputs(result, Path(args.out))
    print(
        f"{len(result.detection.alerts)} alert(s) in {result.texts:,} texts, {len(result.windows)} windows of "
        f"{result.window}; baseline negative share {result.detection.baseline:.3f} ({result.detection.baseline_from}); "
        f"scored {result.throughput:,.0f} texts/s"
    )
    print(f"alerts: {alerts}, plot: {plot}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from common.paths import writable_folder
    from server.predict import predict, write_predictions

    out = Path(args.out).expanduser().resolve()
    if out.is_dir():
        raise FedshieldError(f"--out {out}: a folder; give the predictions file to write (e.g. predictions.csv)")
    writable_folder(out.parent, "--out")
    result = predict(args.model, args.data)
    path = write_predictions(result, out)
    print(f"wrote {len(result.probabilities)} predictions to {path}")
    if result.labelled:
        scores = "  ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
        print(f"on the labels in {args.data}: {scores}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["audit", "empirical"]:  # its own parser: a run folder, not ledgers and keys
        from audit import empirical_cli

        return empirical_cli.main(argv[2:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "scenarios":
            for name in scenarios.available():
                print(scenarios.describe(name))
            return 0
        if args.command == "predict":
            return _predict(args)
        if args.command == "monitor":
            return _monitor(args)
        if args.command == "audit":
            return audit_cli.main(args)
        if args.command == "keys":
            return keys_cli.main(args)
        return _simulate(args)
    except FedshieldError as exc:
        print(f"fedshield: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
