"""Updates are validated before aggregation; rejections are recorded and the round goes on."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common import records as rk
from common.config import RunConfig
from server.app import build_strategy
from server.tracking import SiteTracking
from server.validation import validate_update


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _rec(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()})


GLOBAL = _rec(w=np.zeros((2, 3), np.float32), b=np.zeros(3, np.float32))


@pytest.mark.parametrize(
    "update, message",
    [
        (_rec(w=np.zeros((2, 3), np.float32)), "tensor names differ"),
        (
            _rec(w=np.zeros((3, 2), np.float32), b=np.zeros(3, np.float32)),
            "'w' has shape (3, 2), the global model has (2, 3)",
        ),
        (_rec(w=np.zeros((2, 3), np.float64), b=np.zeros(3, np.float32)), "'w' has dtype float64"),
        (_rec(w=np.full((2, 3), np.nan, np.float32), b=np.zeros(3, np.float32)), "'w' contains NaN or infinite"),
        (_rec(w=np.zeros((2, 3), np.float32), b=np.array([0, np.inf, 0], np.float32)), "'b' contains NaN"),
        (_rec(w=np.full((2, 3), 3.0, np.float32), b=np.zeros(3, np.float32)), "update norm 7.35 exceeds the bound 5"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(update: ArrayRecord, message: str) -> None:
    reason = validate_update(update, GLOBAL, max_update_norm=5.0)
    assert reason is not None and message in reason


def test_good_update_passes() -> None:
    assert (
        validate_update(_rec(w=np.ones((2, 3), np.float32), b=np.ones(3, np.float32)), GLOBAL, max_update_norm=5.0)
        is None
    )


def _reply(request: Message, site: int, arrays: ArrayRecord) -> Message:
    metrics = MetricRecord({rk.NUM_EXAMPLES: 10, rk.SITE_ID: site})
    report = ConfigRecord({rk.SITE_NAME: f"site-{site}", rk.UPDATE_SHA256: "x"})
    return Message(RecordDict({rk.ARRAYS: arrays, rk.METRICS: metrics, rk.SITE_REPORT: report}), reply_to=request)


def test_tracking_rejects_bad_update_and_aggregates_the_rest() -> None:
    class OneRoundGrid:
        def get_node_ids(self) -> list[int]:
            return [1, 2, 3]

    tracking = SiteTracking(
        build_strategy(RunConfig.of(fraction_train=1.0)), num_rounds=1, progress=lambda _: None, max_update_norm=100.0
    )
    messages = list(tracking.configure_train(1, GLOBAL, ConfigRecord({}), OneRoundGrid()))
    good = _rec(w=np.ones((2, 3), np.float32), b=np.ones(3, np.float32))
    nan = _rec(w=np.full((2, 3), np.nan, np.float32), b=np.ones(3, np.float32))
    replies = [_reply(messages[0], 0, good), _reply(messages[1], 1, nan), _reply(messages[2], 2, good)]
    arrays, _ = tracking.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], np.ones((2, 3)))
    assert set(tracking.rounds[0].train) == {0, 2}
    assert "contains NaN" in tracking.rounds[0].rejections[1]
