"""Secure aggregation at the server: Flower's SecAgg+ workflow, so the server learns only the
(weighted) sum of the sites' updates, never one site's update.

Flower 1.41 runs SecAgg+ on its legacy path only (``SecAggPlusWorkflow`` over a
``LegacyContext`` with a legacy ``FedAvg``); this module drives it round by round from the
ServerApp, and feeds what the server may legitimately see (each site's metrics, its refusal,
the hash it reports for its own update, who dropped out) into the same tracking, server
ledger and checkpoints as plain rounds.

What the server learns: the aggregate, the set of contributing sites, and their clear-text
metrics. It cannot validate or robustly aggregate individual updates (they are masked), and
the update hash in its ledger is the site's claim, which the audit matches with the site's own
ledger. Up to ``shares - threshold`` sites may drop out of a round; with more, the round is
abandoned and the model stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import parameters_to_arrayrecord
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common import records as rk
from common.config import RunConfig
from server.tracking import SITE_TRAIN_KEYS, SiteTracking, parse_claim, reported_budget

REPORT = "report."


class DropoutTolerantSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower 1.41 keeps a site that dropped during setup or key sharing among the sampled
    nodes; at unmasking every survivor then fails (it holds no share of that site's key) and the
    round halts although enough sites remain. Nobody masked with such a site, so forget it once
    each of those two stages ends."""

    @staticmethod
    def _forget_early_dropouts(state: Any) -> None:
        alive = set(state.active_node_ids)
        state.sampled_node_ids = alive
        state.nid_to_neighbours = {n: nb & alive for n, nb in state.nid_to_neighbours.items() if n in alive}

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        super().setup_stage(grid, context, state)
        if not state.nid_to_neighbours:
            return False
        self._forget_early_dropouts(state)
        return self._check_threshold(state)

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        super().share_keys_stage(grid, context, state)
        self._forget_early_dropouts(state)
        return self._check_threshold(state)


class TrackedFedAvg(LegacyFedAvg):
    """Legacy FedAvg (what the workflow needs) reporting into the fedshield tracking/ledger."""

    def __init__(self, tracking: SiteTracking, names: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tracking = tracking
        self.names = names
        self.completed: set[int] = set()

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
        exhausted = self.tracking.exhausted
        instructions = [
            (proxy, fitins)
            for proxy, fitins in super().configure_fit(server_round, parameters, client_manager)
            if proxy.node_id not in exhausted
        ]
        for _, fitins in instructions:
            fitins.config[rk.SERVER_ROUND] = server_round
            fitins.config[rk.JOB_ID] = self.tracking.job
            if self.tracking.frozen_sha256:
                fitins.config[rk.FROZEN_SHA256] = self.tracking.frozen_sha256
        self.tracking.asked(server_round, [proxy.node_id for proxy, _ in instructions])
        self.tracking.log_for(server_round).bytes_to_sites = sum(
            len(t) for _, fitins in instructions for t in fitins.parameters.tensors
        )
        return instructions

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        log = self.tracking.log_for(server_round)
        updated, refused, dropped, contributing = [], [], [], []
        for proxy, res in results:
            m = res.metrics
            site_id = int(m[rk.SITE_ID])
            if rk.BUDGET_EPSILON in m:
                log.budgets[site_id] = reported_budget(m)
            if int(m.get(rk.REFUSED, 0)):
                log.refusals[site_id] = str(m.get(REPORT + rk.REASON, "refused"))
                self.tracking.refused_by(proxy.node_id, log.refusals[site_id])
                refused.append(
                    {"site": str(m.get(REPORT + rk.SITE_NAME)), "node": proxy.node_id, "reason": log.refusals[site_id]}
                )
                continue
            log.train[site_id] = {k: float(m[k]) for k in SITE_TRAIN_KEYS if k in m}
            # Masked: the server cannot hash what it never sees; it records the site's claim.
            updated.append(
                {
                    "site": str(m[REPORT + rk.SITE_NAME]),
                    "node": proxy.node_id,
                    "update_sha256": str(m[REPORT + rk.UPDATE_SHA256]),
                    "num_examples": res.num_examples,
                    "masked": True,
                    "claim": parse_claim(m.get(REPORT + rk.CLAIM)),
                }
            )
            contributing.append((proxy, res))
        for failure in failures:
            reason = str(failure[1].status.message) if isinstance(failure, tuple) else repr(failure)
            log.failures.append(reason)
            dropped.append({"reason": reason})
        params, metrics = super().aggregate_fit(server_round, contributing, []) if contributing else (None, {})
        aggregate = None
        if params is not None:
            self.completed.add(server_round)
            aggregate = self.to_arrays(parameters_to_ndarrays(params))
        self.tracking.record_round(
            server_round,
            updated=updated,
            refused=refused,
            dropped=dropped,
            aggregate=aggregate,
            secure_aggregation=True,
        )
        return params, metrics

    def record_halted(self, server_round: int) -> None:
        """The protocol gave up (too few sites left to unmask): nothing was aggregated, the model
        stays as it was; sites that trained have spent, and the ledger says why their updates
        were not used."""
        reason = "secure aggregation halted: fewer sites than the reconstruction threshold"
        self.tracking.log_for(server_round).failures.append(reason)
        self.tracking.record_round(
            server_round, updated=[], refused=[], dropped=[{"reason": reason}], secure_aggregation=True
        )

    def to_arrays(self, weights: list[np.ndarray]) -> ArrayRecord:
        return ArrayRecord(
            array_dict={n: Array(w.astype(np.float32)) for n, w in zip(self.names, weights, strict=True)}
        )


def _count_or_fraction(value: float) -> int | float:
    return int(value) if value > 1 else float(value)


def run_secure_rounds(
    grid: Grid,
    context: Context,
    cfg: RunConfig,
    tracking: SiteTracking,
    initial: ArrayRecord,
    *,
    start_round: int,
    evaluate_fn: Callable[[int, ArrayRecord], Any],
) -> ArrayRecord:
    """Rounds ``start_round + 1 .. cfg.federation.rounds`` with SecAgg+; returns the final global model."""
    names = list(initial.keys())
    strategy = TrackedFedAvg(
        tracking,
        names,
        fraction_fit=cfg.federation.fraction_train,
        fraction_evaluate=0.0,
        min_fit_clients=2,
        min_evaluate_clients=0,
        min_available_clients=2,
        fit_metrics_aggregation_fn=lambda _: {},
    )
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=cfg.federation.rounds), strategy=strategy)
    thread, stop, connected = start_update_client_manager_thread(grid, legacy.client_manager)
    connected.wait()
    workflow = DropoutTolerantSecAggPlusWorkflow(
        num_shares=_count_or_fraction(cfg.federation.secagg_shares),
        reconstruction_threshold=_count_or_fraction(cfg.federation.secagg_threshold),
        max_weight=cfg.federation.secagg_max_weight,
        clipping_range=cfg.federation.secagg_clipping_range,
        timeout=cfg.federation.secagg_timeout or None,
    )
    current = initial
    round_config = ConfigRecord()
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = round_config
    try:
        for server_round in range(start_round + 1, cfg.federation.rounds + 1):
            if tracking.should_stop(server_round, grid):
                break
            tracking.round_started()
            weights = current.to_numpy_ndarrays()
            legacy.state.array_records[MAIN_PARAMS_RECORD] = parameters_to_arrayrecord(
                ndarrays_to_parameters(weights), keep_input=True
            )
            round_config[WorkflowKey.CURRENT_ROUND] = server_round
            workflow(grid, legacy)  # setup, share keys, collect masked updates, unmask
            if server_round in strategy.completed:
                current = strategy.to_arrays(legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays())
            else:
                strategy.record_halted(server_round)
            messages = list(tracking.configure_evaluate(server_round, current, ConfigRecord({}), grid))
            replies = grid.send_and_receive(messages) if messages else []
            tracking.aggregate_evaluate(server_round, replies)
            evaluate_fn(server_round, current)
    finally:
        stop.set()
        thread.join()
    return current
