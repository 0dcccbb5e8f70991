"""The server ledger records each site's claim (mechanism, noise source, epsilon, delta, data
source, ledger seq) as the site reported it, on plain and on secure-aggregation rounds, so the
audit can hold the site's ledger to it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common import records as rk
from common.config import RunConfig
from server.app import build_strategy
from server.secagg import REPORT, TrackedFedAvg
from server.server_ledger import ServerLedger, simulation_paths
from server.tracking import SiteTracking, parse_claim

CLAIM = {
    "mechanism": {"name": "dp-sgd-poisson-gaussian", "noise_multiplier": 1.2, "sample_rate": 0.1, "steps": 30},
    "noise": {"source": "os-entropy-reseeded"},
    "epsilon": 0.73,
    "delta": 1e-5,
    "source": "breast_cancer",
    "ledger_seq": 4,
}


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _reply(site: int, claim: str | None) -> Message:
    request = Message(RecordDict({rk.CONFIG: ConfigRecord({})}), dst_node_id=100 + site, message_type=MessageType.TRAIN)
    report = {rk.SITE_NAME: f"site-{site}", rk.UPDATE_SHA256: "0" * 64}
    if claim is not None:
        report[rk.CLAIM] = claim
    content = RecordDict(
        {
            rk.ARRAYS: ArrayRecord(numpy_ndarrays=[np.full(3, site, dtype=np.float32)]),
            rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: 10, rk.SITE_ID: site}),
            rk.SITE_REPORT: ConfigRecord(report),
        }
    )
    return Message(content, reply_to=request)


def _rounds(state: Path) -> list[dict]:
    ledger = ServerLedger(simulation_paths(state))
    return [e for e in ledger.ledger.entries if e["kind"] == "round"]


def test_plain_rounds_record_each_claim_as_reported(tmp_path: Path) -> None:
    tracking = SiteTracking(
        build_strategy(RunConfig()),
        num_rounds=1,
        job="job-1",
        ledger=ServerLedger(simulation_paths(tmp_path)),
        progress=lambda _: None,
    )
    tracking.aggregate_train(1, [_reply(0, json.dumps(CLAIM)), _reply(1, None), _reply(2, "{not json")])
    (entry,) = _rounds(tmp_path)
    claims = {i["site"]: i["claim"] for i in entry["updated"]}
    assert claims == {"site-0": CLAIM, "site-1": None, "site-2": {"unreadable": "{not json"}}


def test_secure_rounds_record_the_forwarded_claim(tmp_path: Path) -> None:
    tracking = SiteTracking(
        build_strategy(RunConfig()),
        num_rounds=1,
        job="job-1",
        ledger=ServerLedger(simulation_paths(tmp_path)),
        progress=lambda _: None,
    )
    strategy = TrackedFedAvg(tracking, ["w"], fit_metrics_aggregation_fn=lambda _: {})
    from flwr.common import ndarrays_to_parameters

    def fit_res(site: int, claim: str | None) -> tuple:
        metrics = {rk.SITE_ID: site, REPORT + rk.SITE_NAME: f"site-{site}", REPORT + rk.UPDATE_SHA256: "1" * 64}
        if claim is not None:
            metrics[REPORT + rk.CLAIM] = claim
        res = SimpleNamespace(
            metrics=metrics, num_examples=10, parameters=ndarrays_to_parameters([np.ones(3, dtype=np.float32)])
        )
        return SimpleNamespace(node_id=site), res

    strategy.aggregate_fit(1, [fit_res(0, json.dumps(CLAIM)), fit_res(1, None)], [])
    (entry,) = _rounds(tmp_path)
    assert entry["secure_aggregation"] is True
    assert {i["site"]: i["claim"] for i in entry["updated"]} == {"site-0": CLAIM, "site-1": None}


def test_parse_claim() -> None:
    assert parse_claim(None) is None
    assert parse_claim(json.dumps(CLAIM)) == CLAIM
    assert parse_claim("[1, 2]") == {"unreadable": "[1, 2]"}
