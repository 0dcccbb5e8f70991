"""A first run that explains itself: the banner names the data and the effective split, a
user's own table is split evenly unless asked, and the stored config.toml re-runs from any
folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedshield.cli import _parser, describe_run, resolve_config
from server.report import write_config
from simulations.scenarios import load_scenario

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = 'label = "y"\nclass-names = ["0", "1"]\n[[feature]]\nname = "a"\nlo = 0.0\nhi = 1.0\n'


@pytest.fixture
def bank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "loans.csv").write_text("a,y\n" + "".join(f"0.{i % 10},{i % 2}\n" for i in range(40)))
    (tmp_path / "schema.toml").write_text(SCHEMA)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _resolve(*argv: str):
    return resolve_config(_parser().parse_args(["simulate", *argv]))


def test_a_users_table_is_split_evenly_and_the_banner_says_so(bank: Path) -> None:
    cfg = _resolve("--dataset", "csv", "--data-path", "loans.csv", "--label-column", "y")
    assert cfg.data.partition == "iid"  # not the hospital scenario's Dirichlet label skew
    banner = describe_run(cfg)
    assert f"data csv {bank / 'loans.csv'} (label y)" in banner
    assert "an even (iid) split over 5 sites" in banner and "Dirichlet" not in banner


def test_an_asked_partition_is_kept(bank: Path) -> None:
    cfg = _resolve("--dataset", "csv", "--data-path", "loans.csv", "--label-column", "y", "--partition", "dirichlet")
    assert cfg.data.partition == "dirichlet" and "label skew (Dirichlet alpha=1)" in describe_run(cfg)


def test_the_shipped_scenario_keeps_its_own_split() -> None:
    cfg = _resolve()
    assert cfg.data.partition == "dirichlet" and "data sklearn:breast_cancer;" in describe_run(cfg)


def test_config_toml_reruns_from_any_folder(bank: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _resolve(
        "--dataset", "csv", "--data-path", "loans.csv", "--label-column", "y",
        "--set", "feature-schema=schema.toml", "--out", "runs/bank",
    )  # fmt: skip
    path = write_config(Path(cfg.out), cfg)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = load_scenario(str(path))
    assert again == cfg
    assert (
        Path(again.data.data_path).is_file()
        and Path(again.data.feature_schema).is_file()
        and Path(again.out).is_absolute()
    )


@pytest.mark.slow
def test_a_run_shows_only_fedshields_own_lines(tmp_path: Path) -> None:
    """Two jobs in one process (--compare-no-dp): the engine stops the first job's actors
    while the second starts, and Flower's actors used to print "Manually terminating
    ClientAppActor" twice each. The user sees the banner, progress and results only."""
    done = subprocess.run(
        [sys.executable, "-m", "fedshield", "simulate", "--scenario", "banks-credit", "--sites", "2",
         "--rounds", "1", "--compare-no-dp", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stray = [
        line
        for line in done.stderr.splitlines()
        if not line.startswith(("fedshield: ", "round ", "  round ", "moved the previous run"))
    ]
    assert stray == [], "\n".join(stray)
    assert "Manually terminating" not in done.stderr + done.stdout
    assert "final roc_auc, same run without DP" in done.stdout  # banks-credit is binary risk scoring
