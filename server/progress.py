"""Progress within a round: a grid wrapper that pulls the sites' replies as Flower's own
``send_and_receive`` does, and every few seconds says how many of the sites asked have
answered, so a long round is never silent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

PULL_INTERVAL_S = 0.1
PROGRESS_EVERY_S = 5.0


class EngineStopped(Exception):
    """The simulation engine that runs the sites is gone: no reply will ever come."""


class ProgressGrid:
    """Delegates everything to ``grid``; ``send_and_receive`` reports ``done/asked`` and the
    elapsed time through ``say`` every ``every`` seconds while replies are outstanding, and
    raises :class:`EngineStopped` once ``stop`` is set (the harness sets it when Flower's
    simulation engine ends or crashes, which would otherwise leave this loop waiting for ever)."""

    def __init__(
        self,
        grid: Grid,
        say: Callable[[str], None],
        *,
        every: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._grid = grid
        self._stop = stop
        self._say = say
        self._every = PROGRESS_EVERY_S if every is None else every
        self.label = ""  # e.g. "round 3/10": set by the caller before each exchange

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        pending = set(self._grid.push_messages(messages))
        asked = len(pending)
        start = time.monotonic()
        end = start + timeout if timeout is not None else None
        last_said = start
        replies: list[Message] = []
        while pending and (end is None or time.monotonic() < end):
            if self._stop is not None and self._stop.is_set():
                raise EngineStopped(f"the simulation engine stopped with {len(pending)} of {asked} replies outstanding")
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending:
                break
            now = time.monotonic()
            if now - last_said >= self._every:
                prefix = f"{self.label}: " if self.label else ""
                self._say(f"  {prefix}{asked - len(pending)}/{asked} sites answered, {now - start:.0f}s")
                last_said = now
            time.sleep(PULL_INTERVAL_S)
        return replies
