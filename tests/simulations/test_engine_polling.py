"""The engine's message thread swept once per poll gives what Flower's per-node calls give."""

from __future__ import annotations

from collections.abc import Iterator
from queue import Queue
from typing import Any

import pytest

from simulations import engine_polling

pytestmark = pytest.mark.unit  # no simulation runs here: in the fast subset


@pytest.fixture
def link_state() -> Iterator[tuple[Any, Any, dict[int, int]]]:
    """A real in-memory link state with 6 registered nodes and a run, as run_simulation makes it,
    and a grid to push messages with (Flower's own InMemoryGrid)."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.task_pb2 import Task  # type: ignore[attr-defined]
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    mapping = _register_nodes(6, factory)
    state = factory.state()
    run = Run.create_empty(run_id=7)
    run.primary_task_id, run.federation_id = 9, NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[9] = Task(task_id=9, run_id=7)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 9, 7, SUPERLINK_NODE_ID
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    try:
        yield state, grid, mapping
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _push(grid: Any, nodes: list[int], plan: list[int]) -> None:
    from flwr.app import ConfigRecord, Message, RecordDict

    messages = [
        Message(RecordDict({"c": ConfigRecord({"i": i})}), dst_node_id=nodes[k], message_type="train")
        for i, k in enumerate(plan)
    ]
    grid.push_messages(messages)


def _flower_sweep(state: Any, queue: Queue[Any], mapping: dict[int, int]) -> None:
    """One pass of Flower's own loop body (vce_api.add_messages_to_queue)."""
    for node_id in mapping.keys():
        for msg in state.get_message_ins(node_id=node_id, limit=1):
            queue.put(msg)


def _seen(queue: Queue[Any]) -> list[tuple[int, int]]:
    return [(m.metadata.dst_node_id, int(m.content["c"]["i"])) for m in list(queue.queue)]


# node index per message: two messages for node 0, none for nodes 3 and 5, three for node 4
PLAN = [0, 1, 4, 0, 2, 4, 4]


def _run(link_state: tuple[Any, Any, dict[int, int]], sweep: str, rounds: int = 4) -> list[list[tuple[int, int]]]:
    state, grid, mapping = link_state
    _push(grid, list(mapping), PLAN)
    out = []
    for _ in range(rounds):
        queue: Queue[Any] = Queue()
        if sweep == "flower":
            _flower_sweep(state, queue, mapping)
        else:
            engine_polling.deliver_once(state, queue, mapping.keys())
        out.append(_seen(queue))
    return out


def _expected(nodes: list[int]) -> list[list[tuple[int, int]]]:
    """Sweep by sweep, each node's first undelivered message, nodes in the engine's order."""
    return [[(nodes[0], 0), (nodes[1], 1), (nodes[2], 4), (nodes[4], 2)], [(nodes[0], 3), (nodes[4], 5)],
            [(nodes[4], 6)], []]  # fmt: skip


def test_one_sweep_delivers_what_flowers_per_node_calls_deliver(link_state) -> None:  # type: ignore[no-untyped-def]
    state = link_state[0]
    mine = _run(link_state, "once")
    assert all(m.metadata.delivered_at for m in state.message_ins_store.values())
    assert mine[0] and sum(len(s) for s in mine) == len(PLAN) and mine[-1] == []


def test_flowers_own_calls_agree(link_state) -> None:  # type: ignore[no-untyped-def]
    """The reference for the test above, run on an identical fresh state: the same messages in
    the same order, sweep by sweep (each node's first undelivered message, nodes in order)."""
    flower = _run(link_state, "flower")
    nodes = list(link_state[2])
    assert flower == _expected(nodes)


def test_both_sweeps_give_the_same_sequence(link_state) -> None:  # type: ignore[no-untyped-def]
    nodes = list(link_state[2])
    mine = _run(link_state, "once")
    assert mine == _expected(nodes)


def test_an_expired_message_is_purged_and_never_delivered(link_state) -> None:  # type: ignore[no-untyped-def]
    state, grid, mapping = link_state
    _push(grid, list(mapping), [1, 2])
    first = next(iter(state.message_ins_store.values()))
    first.metadata.ttl = 0.0  # expired: created_at + 0 <= now
    queue: Queue[Any] = Queue()
    engine_polling.deliver_once(state, queue, mapping.keys())
    assert [int(m.content["c"]["i"]) for m in list(queue.queue)] == [1]
    assert len(state.message_ins_store) == 1


def test_installed_for_this_flower_and_removed_after() -> None:
    """The swap is active with the Flower this project pins (a newer Flower whose two functions
    changed makes this fail: re-check deliver_once against its source, then update the hashes)."""
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    assert engine_polling.applicable() == ""
    with engine_polling.polled_once_per_sweep() as active:
        assert active and vce_api.add_messages_to_queue is not original
    assert vce_api.add_messages_to_queue is original


def test_left_as_flower_ships_it_when_its_source_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    monkeypatch.setitem(engine_polling._KNOWN_SOURCES, "get_message_ins", "0" * 64)
    original = vce_api.add_messages_to_queue
    assert "get_message_ins" in engine_polling.applicable()
    with engine_polling.polled_once_per_sweep() as active:
        assert not active and vce_api.add_messages_to_queue is original


def test_left_as_flower_ships_it_when_its_source_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_source(_fn: object) -> str:
        raise OSError("could not get source code")

    monkeypatch.setattr(engine_polling.inspect, "getsource", no_source)
    assert "cannot be read" in engine_polling.applicable()
    with engine_polling.polled_once_per_sweep() as active:
        assert not active
