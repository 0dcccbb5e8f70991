"""Aggregation through the tracking wrapper equals numpy.average, and per-site reports are kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from common import records as rk
from common.config import RunConfig
from common.tasks.binary_risk import BinaryRisk
from common.tasks.classification import Classification
from server.app import build_strategy, summarize_evaluate
from server.tracking import SiteTracking


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    # Flower messages need a task identity; the runtime sets it, a unit test must.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _reply(site: int, weights: list[np.ndarray], n: int, eps: float) -> Message:
    request = Message(RecordDict({rk.CONFIG: ConfigRecord({})}), dst_node_id=100 + site, message_type=MessageType.TRAIN)
    metrics = MetricRecord({rk.NUM_EXAMPLES: n, rk.SITE_ID: site, rk.EPSILON: eps, rk.DP_STEPS: 3})
    return Message(RecordDict({rk.ARRAYS: ArrayRecord(numpy_ndarrays=weights), rk.METRICS: metrics}), reply_to=request)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 500), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_fedavg_equals_numpy_average(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    updates = [[rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=4).astype(np.float32)] for _ in sizes]
    tracking = SiteTracking(build_strategy(RunConfig()), num_rounds=1, progress=lambda _: None)
    replies = [_reply(i, u, n, 0.1 * i) for i, (u, n) in enumerate(zip(updates, sizes, strict=True))]
    arrays, metrics = tracking.aggregate_train(1, replies)
    got = arrays.to_numpy_ndarrays()
    for k in range(2):
        expected = np.average(np.stack([u[k] for u in updates]), axis=0, weights=sizes)
        np.testing.assert_allclose(got[k], expected, rtol=1e-5, atol=1e-6)
    # Per-site reports are kept as sent; the log summary reports the largest epsilon.
    assert {s: v[rk.EPSILON] for s, v in tracking.rounds[0].train.items()} == pytest.approx(
        {i: 0.1 * i for i in range(len(sizes))}
    )
    assert metrics["epsilon-max"] == pytest.approx(0.1 * (len(sizes) - 1))
    assert metrics["sites-trained"] == len(sizes)


def test_failed_replies_are_recorded_and_skipped() -> None:
    from flwr.app import Error

    request = Message(RecordDict({}), dst_node_id=7, message_type=MessageType.TRAIN)
    failed = Message(Error(code=0, reason="site went offline"), reply_to=request)
    ok = _reply(0, [np.ones(2, dtype=np.float32)], 10, 0.5)
    tracking = SiteTracking(build_strategy(RunConfig()), num_rounds=1, progress=lambda _: None)
    arrays, _ = tracking.aggregate_train(1, [ok, failed])
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], np.ones(2))
    assert list(tracking.rounds[0].train) == [0]
    assert "site went offline" in tracking.rounds[0].failures[0]


def test_federated_evaluation_pools_statistics_then_computes_metrics() -> None:
    """Accuracy pooled from counts is the example-weighted mean of the sites' accuracies."""

    def reply(n: int, correct: float, loss_units: float) -> RecordDict:
        stats = {"count": np.array([float(n)]), "correct": np.array([correct]), "loss": np.array([loss_units])}
        return RecordDict({rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: n, **rk.stats_record(stats)})})

    out = summarize_evaluate(Classification())([reply(10, 5, 1.0), reply(30, 27, 6.0)], rk.NUM_EXAMPLES)
    assert out[rk.EVAL_ACCURACY] == pytest.approx(np.average([0.5, 0.9], weights=[10, 30]))
    assert out[rk.EVAL_LOSS] == pytest.approx(np.average([1.0, 2.0], weights=[10, 30]))


def test_federated_auc_is_the_auc_of_all_sites_records_not_a_mean_of_site_aucs() -> None:
    """Site A ranks its own records perfectly and so does site B, but B's scores sit above
    A's: pooled, A's positives rank below B's negatives. A mean of per-site AUCs says 1.0."""
    task = BinaryRisk(positive=1, bins=100)

    def reply(margins: list[float], labels: list[int]) -> RecordDict:
        logits = torch.tensor([[0.0, m] for m in margins])
        stats = task.statistics(logits, torch.tensor(labels))
        return RecordDict({rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: len(labels), **rk.stats_record(stats)})})

    a = reply([-8, -7, -6, -5], [0, 0, 1, 1])
    b = reply([4, 5, 6, 7], [0, 0, 1, 1])
    out = summarize_evaluate(task)([a, b], rk.NUM_EXAMPLES)
    margins = np.array([-8, -7, -6, -5, 4, 5, 6, 7])
    assert out[rk.EVAL_METRIC_PREFIX + "roc_auc"] == pytest.approx(roc_auc_score([0, 0, 1, 1, 0, 0, 1, 1], margins))
    assert out[rk.EVAL_METRIC_PREFIX + "roc_auc"] == pytest.approx(0.75)


@pytest.mark.parametrize("name, cls", [("fedavg", "FedAvg"), ("fedprox", "FedProx"), ("fedadam", "FedAdam")])
def test_strategies_are_selectable(name: str, cls: str) -> None:
    strategy = build_strategy(RunConfig.of(strategy=name, fraction_train=0.4))
    assert type(strategy).__name__ == cls
    assert strategy.fraction_train == 0.4


def test_metrics_report_each_sites_budget_as_the_site_reported_it() -> None:
    """A deployed site's budget is its own policy's: the server's config may say 1.0 for every
    site while site 1 holds 0.5. metrics.json shows what the sites said, and marks a site that
    never answered (the config's value is only a guess)."""
    from server.report import build_metrics

    def with_budget(site: int, budget: float) -> Message:
        msg = _reply(site, [np.ones(2, dtype=np.float32)], 10, 0.2)
        msg.content[rk.METRICS][rk.BUDGET_EPSILON] = budget
        msg.content[rk.METRICS][rk.BUDGET_DELTA] = 1e-6
        return msg

    cfg = RunConfig.of(budget_epsilon=1.0)
    tracking = SiteTracking(build_strategy(cfg), num_rounds=1, progress=lambda _: None)
    tracking.aggregate_train(1, [with_budget(0, 3.0), with_budget(1, 0.5)])
    final = build_metrics(cfg, tracking.rounds, num_sites=3)["final"]["sites"]
    assert [final[s]["budget_epsilon"] for s in "012"] == [3.0, 0.5, 1.0]
    assert [final[s]["budget_delta"] for s in "012"] == [1e-6, 1e-6, 1e-5]
    assert [final[s]["budget_reported_by_site"] for s in "012"] == [True, True, False]


def test_a_malformed_evaluation_reply_is_left_out_not_fatal() -> None:
    """One site's reply with a mis-sized statistic used to raise inside Flower's loop and end
    everyone's job; it is now left out, counted as a failure, and the rest is pooled."""
    task = BinaryRisk(positive=1, bins=20)
    request = Message(RecordDict({rk.CONFIG: ConfigRecord({})}), dst_node_id=5, message_type=MessageType.EVALUATE)

    def reply(site: int, stats: dict) -> Message:
        metrics = MetricRecord({rk.NUM_EXAMPLES: 4, rk.SITE_ID: site, **rk.stats_record(stats)})
        return Message(RecordDict({rk.METRICS: metrics}), reply_to=request)

    good = task.statistics(torch.tensor([[0.0, -2.0], [0.0, 2.0], [0.0, -1.0], [0.0, 3.0]]), torch.tensor([0, 1, 0, 1]))
    bad = {**good, "hist": good["hist"][:, :5]}
    cfg = RunConfig()
    tracking = SiteTracking(
        build_strategy(cfg, task), num_rounds=1, progress=lambda _: None, evaluation_shape=task.zero()
    )
    result = tracking.aggregate_evaluate(1, [reply(0, good), reply(1, bad)])
    assert result is not None and result[rk.EVAL_METRIC_PREFIX + "roc_auc"] == pytest.approx(1.0)
    assert list(tracking.rounds[0].evaluate) == [0]
    assert any("evaluation reply left out" in f and "'hist'" in f for f in tracking.rounds[0].failures)


def test_metrics_json_is_strict_json_with_undefined_metrics_as_null(tmp_path) -> None:
    import json

    from server.report import write_metrics

    path = write_metrics(
        tmp_path, {"final": {"metrics": {"precision": float("nan"), "roc_auc": 0.7}}, "x": [float("inf")]}
    )

    def refuse(name: str) -> None:
        raise ValueError(name)

    loaded = json.loads(path.read_text(), parse_constant=refuse)
    assert loaded == {"final": {"metrics": {"precision": None, "roc_auc": 0.7}}, "x": [None]}
