"""``--help`` and ``fedshield scenarios`` are generated from the registries the code runs
from, so they can never list a choice that does not run, nor miss one that does."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from common.config import ModelKind
from common.config import Strategy as StrategyKind
from common.data.sources import SOURCES
from common.models import MODEL_FAMILIES
from common.partition import PARTITIONS, PartitionKind
from fedshield import cli
from server.strategies import STRATEGIES
from simulations import scenarios


def test_every_kind_has_exactly_one_registry_entry():
    assert set(STRATEGIES) == set(StrategyKind) and len(STRATEGIES) == 7
    assert set(MODEL_FAMILIES) == set(ModelKind)
    assert set(PARTITIONS) == set(PartitionKind)
    assert {"csv", "npz", "image-folder", "text", "sklearn:digits"} <= set(SOURCES)


def _simulate_help() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "fedshield", "simulate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return "".join(done.stdout.split())  # argparse wraps lines (at hyphens too): compare without spaces


@pytest.fixture(scope="module")
def simulate_help() -> str:
    return _simulate_help()


@pytest.mark.parametrize(
    ("flag", "registry"),
    [("--strategy", STRATEGIES), ("--dataset", SOURCES), ("--model", MODEL_FAMILIES), ("--partition", PARTITIONS)],
)
def test_help_lists_every_registered_choice_with_its_summary(simulate_help, flag, registry):
    for name, entry in registry.items():
        assert "".join(f"{name}: {entry.summary}".split()) in simulate_help, (flag, name)


def test_help_lists_the_shipped_scenarios(simulate_help):
    for name in scenarios.available():
        assert name in simulate_help


def test_an_unregistered_choice_is_refused_naming_the_registered_ones(capsys):
    assert cli.main(["simulate", "--strategy", "fedbest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "strategy" in err and "multi-krum" in err
    assert cli.main(["simulate", "--dataset", "parquet"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in SOURCES)


def test_scenarios_command_describes_each_shipped_scenario(capsys):
    assert cli.main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == scenarios.available()
    for line in lines:
        name = line.split(":", 1)[0]
        cfg = scenarios.load_scenario(name)
        assert re.search(rf"{re.escape(cfg.data.dataset)}, {cfg.model.kind}, {cfg.federation.sites} sites", line), line
