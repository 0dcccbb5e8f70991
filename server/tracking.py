"""A strategy wrapper that keeps each site's per-round report (privacy spent, loss, accuracy).

Flower's strategies average metrics across sites; an auditor needs them per site. The wrapper
reads the replies before the wrapped strategy aggregates them and changes nothing about
aggregation. It also prints one progress line per round.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import records as rk

_SITE_TRAIN_KEYS = (rk.EPSILON, rk.DELTA, rk.DP_STEPS, rk.NOISE_MULTIPLIER, rk.SAMPLE_RATE, rk.NUM_EXAMPLES)


@dataclass
class RoundLog:
    round: int
    sites_asked: int = 0
    train: dict[int, dict[str, float]] = field(default_factory=dict)  # site id -> metrics
    failures: list[str] = field(default_factory=list)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    federated_eval: dict[str, float] = field(default_factory=dict)
    central_eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class SiteTracking(Strategy):
    """Delegates every decision to ``inner``; records per-site replies round by round."""

    def __init__(self, inner: Strategy, *, num_rounds: int, progress: Callable[[str], None] | None = None) -> None:
        self.inner = inner
        self.num_rounds = num_rounds
        self.rounds: list[RoundLog] = []
        self._progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self._t0 = time.monotonic()

    def _log(self, server_round: int) -> RoundLog:
        if not self.rounds or self.rounds[-1].round != server_round:
            self.rounds.append(RoundLog(server_round))
        return self.rounds[-1]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._t0 = time.monotonic()
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._log(server_round).sites_asked = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        log = self._log(server_round)
        for msg in replies:
            if msg.has_error():
                log.failures.append(f"node {msg.metadata.src_node_id}: {msg.error.reason}")
                continue
            m = msg.content[rk.METRICS]
            log.train[int(m[rk.SITE_ID])] = {k: float(m[k]) for k in _SITE_TRAIN_KEYS if k in m}
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        log = self._log(server_round)
        for msg in replies:
            if not msg.has_error():
                m = msg.content[rk.METRICS]
                log.evaluate[int(m[rk.SITE_ID])] = {
                    k: float(m[k]) for k in (rk.EVAL_LOSS, rk.EVAL_ACCURACY, rk.NUM_EXAMPLES)
                }
        result = self.inner.aggregate_evaluate(server_round, replies)
        if result is not None:
            log.federated_eval = {k: float(v) for k, v in result.items()}
        log.seconds = time.monotonic() - self._t0
        return result

    def record_central(self, server_round: int, metrics: dict[str, float]) -> None:
        """Called by the centralized evaluation; closes the round's progress line."""
        if server_round == 0:
            return
        log = self._log(server_round)
        log.central_eval = metrics
        log.seconds = time.monotonic() - self._t0
        self._progress(progress_line(log, self.num_rounds))

    def summary(self) -> None:
        self.inner.summary()


def progress_line(log: RoundLog, num_rounds: int) -> str:
    parts = [f"round {log.round}/{num_rounds}", f"{len(log.train)}/{log.sites_asked} sites trained"]
    eps = [m[rk.EPSILON] for m in log.train.values() if rk.EPSILON in m]
    if eps:
        parts.append(f"max epsilon {max(eps):.3f}")
    if log.central_eval:
        parts.append(f"test accuracy {log.central_eval['accuracy']:.3f}")
    elif log.federated_eval:
        parts.append(f"site accuracy {log.federated_eval.get(rk.EVAL_ACCURACY, float('nan')):.3f}")
    parts.append(f"{log.seconds:.1f}s")
    return "  ".join(parts)
