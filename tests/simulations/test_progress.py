"""A long round is never silent: while sites train, the server says how many of the sites
asked have answered, and how long the round has taken (every 5 s; every 0.2 s here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server import progress
from simulations.harness import simulate
from simulations.scenarios import load_scenario


def test_progress_within_a_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.2)
    lines: list[str] = []
    cfg = load_scenario("hospitals-tabular").replace(sites=3, rounds=2, out=str(tmp_path / "run"))
    simulate(cfg, progress=lines.append)
    within = [line for line in lines if "sites answered" in line]
    assert within, lines  # round 1 waits seconds for Ray's workers to start
    assert all(re.fullmatch(r"  round [12]/2: [0-3]/3 sites answered, \d+s", line) for line in within), within
    assert [line.split()[1] for line in lines if line.startswith("round ")] == ["1/2", "2/2"]
