"""The aggregation rules a job can use: one registry line each, name -> what it is and how
Flower's strategy is built from the job's settings. ``--help`` and the config's validation read
this registry, so a rule listed there is a rule that runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, MultiKrum, Strategy

from common.config import RunConfig
from common.config import Strategy as StrategyKind


@dataclass(frozen=True)
class StrategyEntry:
    summary: str
    build: Callable[[RunConfig, dict[str, Any]], Strategy]


STRATEGIES: dict[StrategyKind, StrategyEntry] = {
    StrategyKind.FEDAVG: StrategyEntry("example-weighted mean (FedAvg)", lambda cfg, kw: FedAvg(**kw)),
    StrategyKind.FEDPROX: StrategyEntry(
        "FedAvg with a proximal term at the sites (proximal-mu)",
        lambda cfg, kw: FedProx(**kw, proximal_mu=cfg.federation.proximal_mu),
    ),
    StrategyKind.FEDADAM: StrategyEntry(
        "Adam on the server over the mean update (server-learning-rate)",
        lambda cfg, kw: FedAdam(**kw, eta=cfg.federation.server_learning_rate, eta_l=cfg.training.learning_rate),
    ),
    StrategyKind.TRIMMED_MEAN: StrategyEntry(
        "coordinate-wise trimmed mean (trim-fraction)",
        lambda cfg, kw: FedTrimmedAvg(**kw, beta=cfg.federation.trim_fraction),
    ),
    StrategyKind.MEDIAN: StrategyEntry("coordinate-wise median", lambda cfg, kw: FedMedian(**kw)),
    StrategyKind.KRUM: StrategyEntry(
        "Krum: the update closest to its neighbours (num-malicious)",
        lambda cfg, kw: Krum(**kw, num_malicious_nodes=cfg.federation.num_malicious),
    ),
    StrategyKind.MULTI_KRUM: StrategyEntry(
        "mean of the krum-select updates Krum scores best (num-malicious)",
        lambda cfg, kw: MultiKrum(
            **kw, num_malicious_nodes=cfg.federation.num_malicious, num_nodes_to_select=cfg.federation.krum_select
        ),
    ),
}
