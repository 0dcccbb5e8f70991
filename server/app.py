"""The ServerApp: sample sites, aggregate their private updates, evaluate, write the results."""

from __future__ import annotations

import secrets
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from common import records as rk
from common.config import RunConfig
from common.evaluation import evaluate
from common.federation import job_task, model_spec, server_test_set
from common.models import (
    build_model,
    exchanged_bytes,
    exchanged_keys,
    exchanged_state,
    frozen_sha256,
    load_exchanged,
    tensor_bytes,
)
from common.tasks import Task, pooled
from server import checkpoint, report, secagg
from server.progress import EngineStopped, ProgressGrid
from server.server_ledger import ServerLedger, simulation_paths
from server.strategies import STRATEGIES
from server.tracking import JobStopped, SiteTracking


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def summarize_train(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Round summary for Flower's log: the largest cumulative epsilon any site reports (an
    average of epsilons would mean nothing) and how many sites trained."""
    metrics = [r[rk.METRICS] for r in replies]
    out: dict[str, float | int] = {"sites-trained": len(metrics)}
    eps = [float(m[rk.EPSILON]) for m in metrics if rk.EPSILON in m]
    if eps:
        out["epsilon-max"] = max(eps)
    return MetricRecord(out)


def summarize_evaluate(task: Task) -> Callable[[list[RecordDict], str], MetricRecord]:
    """Pool the sites' evaluation statistics by summing them, then turn the pooled statistics
    into the task's metrics (an AUC of all the sites' records, not a mean of per-site AUCs)."""
    like = task.zero()

    def summarize(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
        metrics = [r[rk.METRICS] for r in replies]
        stats = pooled(rk.stats_from_record(m, like) for m in metrics)
        return MetricRecord({rk.EVAL_METRIC_PREFIX + k: v for k, v in task.metrics(stats).items()})

    return summarize


def build_strategy(cfg: RunConfig, task: Task | None = None) -> Strategy:
    """The job's aggregation rule from :data:`server.strategies.STRATEGIES`, sampling
    ``fraction-train`` of the sites."""
    common: dict[str, Any] = {
        "train_metrics_aggr_fn": summarize_train,
        "evaluate_metrics_aggr_fn": summarize_evaluate(task or job_task(cfg)),
        "fraction_train": cfg.federation.fraction_train,
        "fraction_evaluate": cfg.evaluate_fraction,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if cfg.evaluate_fraction > 0 else 0,
        "min_available_nodes": 1,
    }
    return STRATEGIES[cfg.federation.strategy_kind].build(cfg, common)


def central_evaluation(cfg: RunConfig, tracking: SiteTracking) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """Score the global model on the server's own test set (when enabled) after each round."""
    test = server_test_set(cfg) if cfg.federation.centralized_eval else None
    spec = model_spec(cfg)
    task = job_task(cfg)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics: dict[str, float] = {}
        if test is not None:
            model = build_model(spec, seed=cfg.seed)
            load_exchanged(model, arrays.to_torch_state_dict())
            metrics = evaluate(model, test, task)
        tracking.record_central(server_round, arrays, metrics)
        return MetricRecord(metrics) if metrics else None

    return evaluate_fn


def model_summary(cfg: RunConfig, model: torch.nn.Module) -> dict[str, Any]:
    """What the model is and what one update weighs (with LoRA, far less than the model)."""
    params = list(model.parameters())
    return {
        "kind": cfg.model.kind,
        "input_shape": list(model_spec(cfg).input_shape),  # what `fedshield predict` must be given
        "finetune": cfg.model.finetune if cfg.model.kind == "transformer" else "full",
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "update_tensors": len(exchanged_keys(model)),
        "update_bytes": exchanged_bytes(model),
        "model_bytes": tensor_bytes(model.state_dict().values()),
    }


def _new_job_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def run_server(
    grid: Grid,
    cfg: RunConfig,
    out: Path,
    *,
    progress: Callable[[str], None] | None = None,
    context: Context | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run the whole job on ``grid`` and write its results under ``out``; returns the metrics.

    After every completed round the server checkpoints; with ``resume`` it continues the
    checkpointed job from the next round (sites are never asked for a completed round again).
    """
    out.mkdir(parents=True, exist_ok=True)
    report.write_config(out, cfg)
    model = build_model(model_spec(cfg), seed=cfg.seed)
    paths = simulation_paths(Path(cfg.state_path))
    ledger = ServerLedger(paths)
    ckpt_path = paths.root / checkpoint.CHECKPOINT_FILE
    ckpt = checkpoint.load(ckpt_path) if cfg.resume else None
    task = job_task(cfg)
    strategy = build_strategy(cfg, task)
    initial = ArrayRecord(exchanged_state(model))
    job, done = _new_job_id(), 0
    if ckpt is not None:
        job, done = ckpt.job, ckpt.completed_round
        initial = ArrayRecord(array_dict={k: Array(v) for k, v in ckpt.arrays.items()})
        checkpoint.restore_strategy_state(strategy, ckpt.strategy_state)
        (progress or _stderr)(f"resuming job {job} after round {done} (from {ckpt_path})")
    ledger.record_job(job=job, settings={**cfg.to_flat(), "resumed-after-round": done})

    if cfg.privacy.audit_canaries and ckpt is None:
        report.write_audit_global(out, job, 0, initial.to_torch_state_dict())

    def save_checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        if cfg.privacy.audit_canaries:  # every round's global model, for the empirical audit
            report.write_audit_global(out, job, server_round, arrays.to_torch_state_dict())
        named = zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True)
        state = checkpoint.strategy_state(strategy)
        checkpoint.save(
            ckpt_path,
            checkpoint.Checkpoint(job, server_round, dict(named), tracking.rounds, state, cfg.to_flat()),
        )

    tracking = SiteTracking(
        strategy,
        num_rounds=cfg.federation.rounds,
        job=job,
        ledger=ledger,
        progress=progress,
        max_update_norm=cfg.federation.max_update_norm,
        headline=task.headline,
        evaluation_shape=task.zero(),
        round_offset=done,
        on_round_end=save_checkpoint,
        frozen_sha256=frozen_sha256(model),
        max_failed_rounds=cfg.federation.max_failed_rounds,
    )
    if ckpt is not None:
        tracking.rounds = ckpt.rounds
    if cfg.federation.secure_aggregation:
        tracking.offset = 0  # the secure loop counts rounds itself
        final = secagg.run_secure_rounds(
            ProgressGrid(grid, progress or _stderr, every=float("inf"), stop=stop),  # type: ignore[arg-type]
            context or Context(0, 0, {}, RecordDict(), {}),
            cfg,
            tracking,
            initial,
            start_round=done,
            evaluate_fn=central_evaluation(cfg, tracking),
        )
    else:
        progress_grid = ProgressGrid(grid, progress or _stderr, stop=stop)
        tracking.progress_grid = progress_grid
        try:
            result = tracking.start(
                grid=progress_grid,  # type: ignore[arg-type]  # a Grid by delegation
                initial_arrays=initial,
                num_rounds=max(cfg.federation.rounds - done, 0),
                train_config=ConfigRecord({}),
                evaluate_fn=central_evaluation(cfg, tracking),
            )
            final = result.arrays or initial
        except JobStopped:
            final = tracking.latest or initial
    # Counted after the rounds: at start-up not every site may have connected yet.
    seen = [site for log in tracking.rounds for part in (log.train, log.refusals, log.rejections) for site in part]
    num_sites = max(len(list(grid.get_node_ids())), max(seen, default=-1) + 1)
    metrics = report.build_metrics(
        cfg,
        tracking.rounds,
        num_sites=num_sites,
        job=job,
        stopped_after=tracking.stopped_after,
        stop_reason=tracking.stop_reason,
        model=model_summary(cfg, model),
        headline=task.headline,
        shown_metrics=task.shown,
    )
    report.write_metrics(out, metrics)
    report.write_model(out, final.to_torch_state_dict())
    report.write_plot(out, metrics)
    return metrics


def make_server_app(
    cfg: RunConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp bound to ``cfg``, or (``None``) reading it from Flower's run config.
    ``stop``: set by the simulation harness when the engine is gone (the job then ends
    without results; the harness reports why)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved = cfg if cfg is not None else RunConfig.from_flat(context.run_config, source="run config")
        torch.manual_seed(resolved.seed)
        try:
            run_server(grid, resolved, Path(resolved.out), progress=progress, context=context, stop=stop)
        except EngineStopped:
            return  # nothing more can happen; the harness raises the engine's own error

    return app


app = make_server_app()
