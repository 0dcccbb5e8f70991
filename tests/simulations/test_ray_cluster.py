"""The same simulation on a multi-node Ray cluster (what Flower's simulation engine supports
for more than one machine), here two Ray nodes on loopback: the sites train on the cluster's
workers, every ledger lands in the shared state folder, the audit verifies, and no process of
the run or of the cluster is left behind."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from audit.cli import run_audit
from client.handlers import SHARED_STATE_FILE, unshared_state
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario
from tests.conftest import still_running


def test_a_simulation_runs_on_a_two_node_ray_cluster(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    # Two Ray nodes on loopback (127.0.0.2: Ray rewrites 127.0.0.1 to the outward address).

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.2"})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.2")
        cluster.wait_for_nodes()
        cfg = load_scenario("hospitals-tabular").replace(sites=4, rounds=2, out=str(tmp_path))
        metrics = simulate(cfg, progress=lambda _: None, ray_address=cluster.address)
        assert [sum(s["trained"] for s in r["sites"].values()) for r in metrics["rounds"]] == [4, 4]
        assert (tmp_path / SHARED_STATE_FILE).exists()
        audit = run_audit([tmp_path], trusted_keys_for(tmp_path))
        assert audit.ok, [str(p) for p in audit.problems if p.fatal]
        # Without --ray-address a simulation runs on a Ray of its own, even while a cluster runs
        # on this machine (Ray's default would join it, and fail: a joining driver may not set CPUs).
        alone = simulate(cfg.replace(sites=2, rounds=1, out=str(tmp_path / "alone")), progress=lambda _: None)
        assert sum(s["trained"] for s in alone["rounds"][0]["sites"].values()) == 2
    finally:
        cluster.shutdown()
    # Ray's shutdown signals its processes; they may take a moment to exit
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not still_running(left, grace_s=30), "the cluster left processes behind"


def test_a_site_that_cannot_see_the_state_folder_refuses(tmp_path: Path) -> None:
    """On a cluster whose machines do not share the state folder, a site would open a fresh
    ledger there (a fresh budget): it refuses instead."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

    from common import records as rk

    cfg = load_scenario("hospitals-tabular").replace(out=str(tmp_path / "not-shared"))
    msg = Message(
        RecordDict({rk.CONFIG: ConfigRecord({rk.SERVER_ROUND: 1})}), dst_node_id=1, message_type=MessageType.TRAIN
    )
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 2, "num-partitions": 3}, state=RecordDict(), run_config={}
    )
    refusal = unshared_state(msg, context, cfg)
    assert refusal is not None and "cannot see the simulation's state folder" in str(
        refusal.content[rk.REFUSAL][rk.REASON]
    )
    (tmp_path / "not-shared").mkdir()
    (tmp_path / "not-shared" / SHARED_STATE_FILE).write_text("{}")
    assert unshared_state(msg, context, cfg) is None


def test_a_dp_evaluation_on_a_machine_without_the_state_folder_releases_nothing(tmp_path: Path) -> None:
    """The attack: on a cluster node without the shared folder, ask a site whose policy allows
    DP evaluation to evaluate. It would open a fresh ledger there and release against an empty
    history (a fresh budget) as often as asked; it must refuse, release nothing, write nothing."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

    from client.app import make_client_app
    from common import records as rk
    from common.federation import model_spec
    from common.models import build_model

    state = tmp_path / "not-shared"
    cfg = load_scenario("hospitals-tabular").replace(
        sites=3, out=str(state), evaluation="dp", eval_noise_multiplier=2.0, budget_epsilon=3.0
    )
    arrays = ArrayRecord(build_model(model_spec(cfg), seed=cfg.seed).state_dict())
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(), run_config={}
    )
    app = make_client_app(cfg, shared_state=True)
    for server_round in (1, 2, 3):
        config = ConfigRecord({rk.SERVER_ROUND: server_round, rk.JOB_ID: "job-a"})
        msg = Message(
            RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}), dst_node_id=1, message_type=MessageType.EVALUATE
        )
        metrics = app(msg, context).content[rk.METRICS]
        assert metrics[rk.EVAL_REFUSED] == 1 and metrics[rk.NUM_EXAMPLES] == 0
        assert set(metrics) == {rk.SITE_ID, rk.EVAL_REFUSED, rk.NUM_EXAMPLES}  # no statistic of the records
    assert not list(state.rglob("ledger.jsonl"))  # no fresh ledger, no fresh budget


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
