"""Where a site's round goes: named spans, timed in each process, for the harness benchmark.

Off (a no-op) unless the environment variable ``FEDSHIELD_PROFILE`` names a folder, as
``benchmarks/harness_overhead.py`` sets it. Then every process appends one JSON line per
client-round to ``FOLDER/<pid>.jsonl``: ``{"kind": "train", "spans": {name: seconds}}``.
Timings go to that local file only, never into a message: how long a round took says
something about a site's records (its number of steps), so it is not released.

Laps (:func:`lap`) split a client-round into consecutive parts; a span (:func:`span`) may hold
others and is reported on its own (``client`` holds a whole request).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "FEDSHIELD_PROFILE"

_spans: defaultdict[str, float] = defaultdict(float)
_recording = [False]


def enabled() -> bool:
    return _recording[0] or bool(os.environ.get(ENV))


@contextmanager
def recording() -> Iterator[None]:
    """Time laps and spans in this process (read them with :func:`take`), whatever ``ENV`` says."""
    previous, _recording[0] = _recording[0], True
    _spans.clear()
    try:
        yield
    finally:
        _recording[0] = previous


def take() -> dict[str, float]:
    """The spans timed since the last :func:`take` (or :func:`flush`), and start again."""
    out = dict(_spans)
    _spans.clear()
    return out


@contextmanager
def span(name: str) -> Iterator[None]:
    """Add the time spent inside to ``name`` (when profiling is on)."""
    if not enabled():
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _spans[name] += time.perf_counter() - start


_last = [0.0]


def start() -> None:
    """Start a client-round's laps (see :func:`lap`)."""
    if enabled():
        _last[0] = time.perf_counter()


def lap(name: str) -> None:
    """Add the time since the last lap (or :func:`start`) to ``name``."""
    if enabled():
        now = time.perf_counter()
        _spans[name] += now - _last[0]
        _last[0] = now


def flush(kind: str, **tags: int | str) -> None:
    """Write this client-round's spans (when profiling is on) and start the next; ``tags``
    (site, round) say which client-round it was."""
    folder = os.environ.get(ENV)
    if not folder or not _spans:
        _spans.clear()
        return
    line = json.dumps({"kind": kind, "pid": os.getpid(), **tags, "spans": take()})
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"{os.getpid()}.jsonl", "a") as fh:
        fh.write(line + "\n")


def read(folder: Path) -> list[dict]:
    """Every client-round written under ``folder``."""
    rows: list[dict] = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows
