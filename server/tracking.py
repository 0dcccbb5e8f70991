"""A strategy wrapper that keeps each site's per-round report, handles refusals, and writes
the server ledger.

Flower's strategies average metrics across sites; an auditor needs them per site. The wrapper
reads the replies before the wrapped strategy aggregates them and changes nothing about how
updates are aggregated. Refusals (a site vetoing a round to stay within its budget) are
normal: they are recorded, left out of aggregation, and the round goes on with the others.
Once every site has refused, no more rounds are sent and the job ends cleanly.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import array_record
from common import records as rk
from common.hashing import arrays_sha256
from common.models import MAX_ABS_WEIGHT
from server.server_ledger import ServerLedger
from server.validation import validate_update

# What the server keeps of a site's train reply (plain and SecAgg+ paths).
SITE_TRAIN_KEYS = (
    rk.EPSILON,
    rk.BUDGET_EPSILON,
    rk.BUDGET_DELTA,
    rk.DP_STEPS,
    rk.NOISE_MULTIPLIER,
    rk.SAMPLE_RATE,
    rk.NUM_EXAMPLES,
)


@dataclass
class RoundLog:
    round: int
    sites_asked: int = 0
    train: dict[int, dict[str, float]] = field(default_factory=dict)  # site id -> metrics
    refusals: dict[int, str] = field(default_factory=dict)  # site id -> reason
    resent: set[int] = field(default_factory=set)  # site ids that re-sent an update already released
    rejections: dict[int, str] = field(default_factory=dict)  # site id -> why the server rejected its update
    failures: list[str] = field(default_factory=list)
    budgets: dict[int, tuple[float, float]] = field(default_factory=dict)  # site id -> its (epsilon, delta) budget
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    federated_eval: dict[str, float] = field(default_factory=dict)
    central_eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    # Serialized tensor bytes of this round's training messages: the global model sent to the
    # sites asked, and the updates received (with LoRA, adapters and head only).
    bytes_to_sites: int = 0
    bytes_from_sites: int = 0

    @property
    def answered(self) -> bool:
        """Some site trained, refused or had its update rejected: not a failed round."""
        return bool(self.train or self.refusals or self.rejections)


def parse_claim(raw: object) -> dict[str, Any] | None:
    """The site's claim for a round (``common.records.CLAIM``: its mechanism, noise source,
    epsilon and delta, data source and ledger seq), as the site reported it, for the server
    ledger; ``None`` when the site sent none (an older client). Something unreadable is kept
    as ``{"unreadable": ...}`` so that the audit sees it does not match."""
    if raw is None:
        return None
    try:
        claim = json.loads(str(raw))
    except json.JSONDecodeError:
        return {"unreadable": str(raw)}
    return claim if isinstance(claim, dict) else {"unreadable": str(raw)}


def reported_budget(metrics: Mapping[str, object]) -> tuple[float, float]:
    """The (epsilon, delta) budget a site reported in a reply, as its policy says."""
    return float(metrics[rk.BUDGET_EPSILON]), float(metrics.get(rk.BUDGET_DELTA, math.nan))  # type: ignore[arg-type]


def arrays_hash(arrays: ArrayRecord) -> str:
    return arrays_sha256(zip(arrays.keys(), array_record.to_numpy_ndarrays(arrays), strict=True))


def _largest_weight(arrays: ArrayRecord) -> float:
    """max |w| over the floating-point tensors of ``arrays`` (NaN if any is not finite)."""
    largest = 0.0
    for a in array_record.to_numpy_ndarrays(arrays):
        if a.size and np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                return float("nan")
            largest = max(largest, float(np.abs(a).max()))
    return largest


def arrays_nbytes(arrays: ArrayRecord) -> int:
    """Bytes of the serialized tensors in ``arrays`` (what travels, framing aside)."""
    return sum(len(a.data) for a in arrays.values())


class JobStopped(Exception):
    """Raised from ``configure_train`` once the job is over (every site refused, or too many
    failed rounds): Flower's round loop ends there instead of idling through the rest."""


class SiteTracking(Strategy):
    """Delegates every decision to ``inner``; records per-site replies round by round."""

    def __init__(
        self,
        inner: Strategy,
        *,
        num_rounds: int,
        job: str = "",
        ledger: ServerLedger | None = None,
        progress: Callable[[str], None] | None = None,
        max_update_norm: float = 0.0,
        round_offset: int = 0,
        on_round_end: Callable[[int, ArrayRecord], None] | None = None,
        frozen_sha256: str = "",
        max_failed_rounds: int = 3,
        headline: str = "accuracy",
        evaluation_shape: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.inner = inner
        # The task's statistics of no records: a site's evaluation reply must carry each of them
        # in this shape, finite, or it is left out (one bad reply must not end everyone's job).
        self.evaluation_shape = evaluation_shape
        self.headline = headline  # the task's metric the progress line shows
        self.max_failed_rounds = max_failed_rounds
        self.failed_in_a_row = 0
        self.stop_reason = ""
        self.latest: ArrayRecord | None = None  # the global model after the last aggregated round
        self.progress_grid: Any = None  # a server.progress.ProgressGrid: told which round runs
        self.frozen_sha256 = frozen_sha256  # sent with every round when part of the model is frozen
        self.offset = round_offset  # rounds already completed before a resume
        self.on_round_end = on_round_end
        self.max_update_norm = max_update_norm
        self._global: ArrayRecord | None = None
        self.num_rounds = num_rounds
        self.job = job
        self.ledger = ledger
        self.rounds: list[RoundLog] = []
        self.refusal_reasons: dict[int, str] = {}  # node id -> the site's last refusal reason
        self.stopped_after: int | None = None
        self._asked: list[int] = []
        self._progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self._t0 = time.monotonic()

    def _log(self, server_round: int) -> RoundLog:
        if not self.rounds or self.rounds[-1].round != server_round:
            self.rounds.append(RoundLog(server_round))
        return self.rounds[-1]

    @property
    def exhausted(self) -> set[int]:
        """Node ids of the sites that refused: they would only refuse again, so are not asked."""
        return set(self.refusal_reasons)

    def refused_by(self, node: int, reason: str) -> None:
        self.refusal_reasons[node] = reason

    @property
    def stopped(self) -> bool:
        return self.stopped_after is not None

    def log_for(self, server_round: int) -> RoundLog:
        return self._log(server_round)

    def round_started(self) -> None:
        self._t0 = time.monotonic()

    def should_stop(self, server_round: int, grid: Grid) -> bool:
        """True (and the job is marked stopped) once every site has refused for lack of budget."""
        exhausted = self.exhausted
        if not self.stopped and exhausted and exhausted >= set(grid.get_node_ids()):
            reasons = sorted(set(self.refusal_reasons.values()))
            more = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
            self.stop(server_round - 1, f"every site has refused; {reasons[0]}{more}")
        return self.stopped

    def stop(self, after_round: int, reason: str) -> None:
        self.stopped_after, self.stop_reason = after_round, reason
        self._progress(f"stopping after round {after_round}: {reason}")

    def _count_failed_round(self, server_round: int, log: RoundLog) -> None:
        """A round in which no site trained, refused or was rejected, only failed (errors or no
        reply at all): after ``max_failed_rounds`` of them in a row the job stops with the reason."""
        if log.answered:
            self.failed_in_a_row = 0
            return
        self.failed_in_a_row += 1
        if self.failed_in_a_row >= self.max_failed_rounds:
            why = log.failures[0] if log.failures else "no site replied"
            self.stop(server_round, f"{self.failed_in_a_row} failed rounds in a row (max-failed-rounds); last: {why}")

    def asked(self, server_round: int, nodes: list[int]) -> None:
        self._asked = list(nodes)
        self._log(server_round).sites_asked = len(nodes)

    def record_round(
        self,
        server_round: int,
        *,
        updated: list[dict],
        refused: list[dict],
        dropped: list[dict],
        rejected: list[dict] | None = None,
        aggregate: ArrayRecord | None = None,
        secure_aggregation: bool = False,
    ) -> None:
        """The round's entry in the server ledger (when there is one)."""
        if self.ledger is None:
            return
        self.ledger.record_round(
            job=self.job,
            server_round=server_round,
            asked=self._asked,
            updated=updated,
            refused=refused,
            dropped=dropped,
            rejected=rejected,
            secure_aggregation=secure_aggregation,
            aggregate_sha256=arrays_hash(aggregate) if aggregate is not None else None,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.offset
        self.round_started()
        if self.progress_grid is not None:
            self.progress_grid.label = f"round {server_round}/{self.num_rounds}"
        if self.latest is None:
            self.latest = arrays
        if self.should_stop(server_round, grid):
            raise JobStopped(self.stop_reason)
        config[rk.JOB_ID] = self.job
        if self.frozen_sha256:
            config[rk.FROZEN_SHA256] = self.frozen_sha256
        self._global = arrays
        # A site that refused for lack of budget would only refuse again: don't ask it.
        exhausted = self.exhausted
        messages = [
            m
            for m in self.inner.configure_train(server_round, arrays, config, grid)
            if m.metadata.dst_node_id not in exhausted
        ]
        self.asked(server_round, [m.metadata.dst_node_id for m in messages])
        self._log(server_round).bytes_to_sites = arrays_nbytes(arrays) * len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.offset
        if self.stopped:
            return None, None
        log = self._log(server_round)
        updates, updated, refused, dropped, rejected = [], [], [], [], []
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                log.failures.append(f"node {node}: {msg.error.reason}")
                dropped.append({"node": node, "reason": msg.error.reason})
                continue
            m = msg.content[rk.METRICS]
            site_id = int(m[rk.SITE_ID])
            if rk.BUDGET_EPSILON in m:
                log.budgets[site_id] = reported_budget(m)
            if rk.REFUSAL in msg.content:
                refusal = msg.content[rk.REFUSAL]
                log.refusals[site_id] = str(refusal[rk.REASON])
                self.refused_by(node, str(refusal[rk.REASON]))
                refused.append({"site": str(refusal[rk.SITE_NAME]), "node": node, "reason": str(refusal[rk.REASON])})
                continue
            report = msg.content[rk.SITE_REPORT] if rk.SITE_REPORT in msg.content else None
            site = str(report[rk.SITE_NAME]) if report is not None else str(site_id)
            log.bytes_from_sites += arrays_nbytes(msg.content[rk.ARRAYS])
            # The hash of the update as received, computed here (not taken from the site), and
            # the site's claim as it reported it (the audit matches it with the site's ledger).
            item = {
                "site": site,
                "node": node,
                "update_sha256": arrays_hash(msg.content[rk.ARRAYS]),
                "claim": parse_claim(report.get(rk.CLAIM) if report is not None else None),
            }
            reason = None
            if self._global is not None:
                reason = validate_update(msg.content[rk.ARRAYS], self._global, max_update_norm=self.max_update_norm)
            if reason is not None:
                log.rejections[site_id] = reason
                rejected.append({**item, "reason": reason})
                continue
            log.train[site_id] = {k: float(m[k]) for k in SITE_TRAIN_KEYS if k in m}
            if rk.RESENT in m:
                log.resent.add(site_id)
            updated.append({**item, "num_examples": int(m[rk.NUM_EXAMPLES])})
            updates.append(msg)
        arrays, metrics = self.inner.aggregate_train(server_round, updates) if updates else (None, None)
        self.record_round(
            server_round, updated=updated, refused=refused, dropped=dropped, rejected=rejected, aggregate=arrays
        )
        largest = _largest_weight(arrays) if arrays is not None else 0.0
        if not largest <= MAX_ABS_WEIGHT:  # NaN included
            self.stop(
                server_round,
                f"training diverged in round {server_round}: the aggregated model has weights of size {largest:.3g} "
                f"(above {MAX_ABS_WEIGHT:g}, or not finite); the previous model is kept; lower learning-rate",
            )
            return None, metrics
        if arrays is not None:
            self.latest = arrays
        self._count_failed_round(server_round, log)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.stopped:
            return []
        config[rk.JOB_ID] = self.job  # the site's ledger records an evaluation release per job
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.offset
        if self.stopped:
            return None
        log = self._log(server_round)
        # A site whose policy does not allow evaluation (the default), or whose budget cannot pay
        # for one, answers with a refusal: it released nothing, and is left out of the average.
        replies = [msg for msg in replies if msg.has_error() or rk.EVAL_REFUSED not in msg.content[rk.METRICS]]
        if self.evaluation_shape is not None:
            replies = [msg for msg in replies if msg.has_error() or self._usable_evaluation(msg, log)]
        for msg in replies:
            if not msg.has_error():
                m = msg.content[rk.METRICS]
                log.evaluate[int(m[rk.SITE_ID])] = {
                    k: float(v)  # type: ignore[arg-type]
                    for k, v in m.items()
                    if k == rk.NUM_EXAMPLES
                    or (k.startswith(rk.EVAL_METRIC_PREFIX) and not k.startswith(rk.EVAL_STAT_PREFIX))
                }
        if not any(not msg.has_error() for msg in replies):
            log.seconds = time.monotonic() - self._t0
            return None
        result = self.inner.aggregate_evaluate(server_round, replies)
        if result is not None:
            log.federated_eval = {k: float(v) for k, v in result.items()}
        log.seconds = time.monotonic() - self._t0
        return result

    def _usable_evaluation(self, msg: Message, log: RoundLog) -> bool:
        assert self.evaluation_shape is not None
        m = msg.content[rk.METRICS]
        try:
            rk.stats_from_record(m, self.evaluation_shape)
            int(m[rk.NUM_EXAMPLES])  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError) as exc:
            log.failures.append(f"node {msg.metadata.src_node_id}: evaluation reply left out ({exc})")
            return False
        return True

    def record_central(self, server_round: int, arrays: ArrayRecord, metrics: dict[str, float]) -> None:
        """Called after each round's evaluation (round numbers as Flower counts them): closes
        the round (checkpoint first, then the progress line)."""
        server_round += self.offset
        if server_round == self.offset or self.stopped:
            return
        log = self._log(server_round)
        log.central_eval = metrics
        log.seconds = time.monotonic() - self._t0
        if self.on_round_end is not None:
            self.on_round_end(server_round, arrays)
        self._progress(progress_line(log, self.num_rounds, self.headline))

    def summary(self) -> None:
        self.inner.summary()


def progress_line(log: RoundLog, num_rounds: int, headline: str = "accuracy") -> str:
    trained = len(log.train) - len(log.resent)
    parts = [f"round {log.round}/{num_rounds}", f"{trained}/{log.sites_asked} sites trained"]
    if log.resent:  # a resumed round: the sites answered with the update they had already released
        parts.append(f"{len(log.resent)} re-sent")
    if log.refusals:
        parts.append(f"{len(log.refusals)} refused")
    if log.rejections:
        parts.append(f"{len(log.rejections)} rejected")
    eps = [m[rk.EPSILON] for m in log.train.values() if rk.EPSILON in m]
    if eps:
        parts.append(f"max epsilon {max(eps):.3f}")
    label = headline.replace("_", "-")
    if log.central_eval:
        parts.append(f"test {label} {log.central_eval.get(headline, float('nan')):.3f}")
    elif log.federated_eval:
        parts.append(f"site {label} {log.federated_eval.get(rk.EVAL_METRIC_PREFIX + headline, float('nan')):.3f}")
    parts.append(f"{log.seconds:.1f}s")
    return "  ".join(parts)
