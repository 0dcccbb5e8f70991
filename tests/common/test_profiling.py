"""The per-site profile: off unless asked, laps split a client-round, flush writes a local file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common import profiling


def test_off_by_default_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(profiling.ENV, raising=False)
    profiling.take()
    profiling.start()
    profiling.lap("x")
    with profiling.span("y"):
        pass
    assert not profiling.enabled() and profiling.take() == {}


def test_laps_split_the_time_and_take_starts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(profiling.ENV, raising=False)
    with profiling.recording():
        profiling.start()
        time.sleep(0.3)
        profiling.lap("first")
        profiling.lap("second")
        spans = profiling.take()
        # the second lap is taken at once: only a 0.3 s stall of this thread would reach the first's
        assert spans["first"] >= 0.3 > spans["second"]
        assert profiling.take() == {}
    assert not profiling.enabled()


def test_flush_appends_one_line_per_client_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(profiling.ENV, str(tmp_path))
    for r in (1, 2):
        profiling.start()
        profiling.lap("ledger")
        profiling.flush("train", site=3, round=r)
    rows = profiling.read(tmp_path)
    assert [(row["kind"], row["site"], row["round"]) for row in rows] == [("train", 3, 1), ("train", 3, 2)]
    assert all(set(row["spans"]) == {"ledger"} for row in rows)
