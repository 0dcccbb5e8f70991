"""Flower's simulation engine, polled once per sweep instead of once per registered site.

Flower 1.41's Simulation Runtime hands messages to its workers from one thread
(``vce_api.add_messages_to_queue``): every 0.1 s it asks the in-memory link state, for each
registered node in turn, for that node's next undelivered message (``get_message_ins(node,
limit=1)``), and each of those calls checks every stored message (expiry, federation) before
filtering by destination. With 1,000 registered sites and 100 messages in flight that is 100,000
checks per sweep: measured here, that thread kept most of one of the machine's two cores busy
during every round, growing with the number of registered sites (the scale axis), not with the
number sampled.

:func:`polled_once_per_sweep` swaps that thread's function, for the duration of a simulation in
this process, for one that gives the same result from one pass over the stored messages: each
message checked once (``_check_stored_messages``, which purges an expired or foreign one as
before), then, for each node in the engine's own order, its first undelivered message, marked
delivered and queued, as the per-node calls would have. Nothing else of the engine changes: the
same link state, queue, workers, Ray backend and ClientApp.

It touches Flower's internals, so it is installed only where Flower's two functions are exactly
the source it was written against (their SHA-256 below); for any other Flower version, or a link
state other than the in-memory one, the engine runs as it ships (and where
``FEDSHIELD_ENGINE_POLLING=flower`` asks for it).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from queue import Queue
from typing import Any

log = logging.getLogger(__name__)
# ``flower``: leave the engine's polling as Flower ships it (to measure the two side by side:
# ``python -m benchmarks.scale --engine-polling flower``).
ENV = "FEDSHIELD_ENGINE_POLLING"

# inspect.getsource of flwr 1.41.0's vce_api.add_messages_to_queue and
# InMemoryLinkState.get_message_ins (the behaviour :func:`deliver_once` reproduces).
_KNOWN_SOURCES = {
    "add_messages_to_queue": "953f4bd41a931a7779a4a670ab17b633f6e20b08a0128535328674466419777a",
    "get_message_ins": "6547c8dcbc62e12f5b2aa5c69f4de8c7c7072c10d6c0876512cf37197d941056",
}


def _sha256(fn: Any) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()


def deliver_once(state: Any, queue: Queue[Any], node_ids: Iterable[int]) -> int:
    """One sweep: every stored message checked once, then each node's (in ``node_ids`` order)
    first undelivered message marked delivered and put on ``queue``. Returns how many."""
    from flwr.supercore.date import now

    with state.lock:
        first: dict[int, Any] = {}
        for msg_id in list(state.message_ins_store.keys()):
            state._check_stored_messages({msg_id})  # purges it if expired or foreign, as Flower does
            msg = state.message_ins_store.get(msg_id)
            if msg is not None and msg.metadata.delivered_at == "":
                first.setdefault(msg.metadata.dst_node_id, msg)
        chosen = [first[node] for node in node_ids if node in first]
    delivered_at = now().isoformat()
    for msg in chosen:
        msg.metadata.delivered_at = delivered_at
        queue.put(msg)
    return len(chosen)


def _add_messages_to_queue(
    state: Any, queue: Queue[Any], nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """``vce_api.add_messages_to_queue`` with one :func:`deliver_once` per sweep."""
    while not f_stop.is_set():
        deliver_once(state, queue, nodes_mapping.keys())
        f_stop.wait(0.1)


def applicable() -> str:
    """Why the swap does not apply here ("" when it does)."""
    if os.environ.get(ENV) == "flower":
        return f"{ENV}=flower asks for Flower's own polling"
    try:
        from flwr.server.superlink.fleet.vce import vce_api
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    except ImportError as exc:  # another Flower layout
        return f"Flower's engine is laid out differently ({exc})"
    try:
        found = {
            "add_messages_to_queue": _sha256(vce_api.add_messages_to_queue),
            "get_message_ins": _sha256(InMemoryLinkState.get_message_ins),
        }
    except (OSError, TypeError) as exc:  # installed without its .py sources: nothing to compare
        return f"Flower's source cannot be read ({exc})"
    changed = [name for name, sha in found.items() if sha != _KNOWN_SOURCES[name]]
    return f"Flower's {', '.join(changed)} differ from the version this was written for" if changed else ""


@contextmanager
def polled_once_per_sweep() -> Iterator[bool]:
    """Within: the engine's message thread sweeps once per poll (True), or, where
    :func:`applicable` says no, the engine as it ships (False)."""
    reason = applicable()
    if reason:
        log.debug("engine polling left as Flower ships it: %s", reason)
        yield False
        return
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    original = vce_api.add_messages_to_queue

    def dispatch(state: Any, queue: Queue[Any], nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
        if type(state) is InMemoryLinkState:
            return _add_messages_to_queue(state, queue, nodes_mapping, f_stop)
        return original(state, queue, nodes_mapping, f_stop)

    vce_api.add_messages_to_queue = dispatch
    try:
        yield True
    finally:
        vce_api.add_messages_to_queue = original
