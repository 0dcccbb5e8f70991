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
    finally:
        cluster.shutdown()
    assert not _still_running(before), "the cluster left processes behind"


def _still_running(before: set[int], grace_s: float = 30.0) -> list[psutil.Process]:
    """This test's child processes (not in ``before``) still running after ``grace_s`` seconds
    of waiting for them to exit (Ray's shutdown signals them; they may take a moment)."""
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=grace_s)
    running = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            pass
    return running


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


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
