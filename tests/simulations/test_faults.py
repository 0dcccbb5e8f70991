"""Faults a job must survive and explain: a site that fails every round ends the job after
``max-failed-rounds`` failed rounds with the reason, counted in the summary and metrics.json;
a site that refuses for a broken ledger is named with that reason, not "budget exhausted"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedshield.cli import main


def test_a_site_failing_every_round_ends_the_job_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["simulate", "--sites", "2", "--rounds", "40", "--out", str(out)]
    code = main([*argv, "--set", "attack=site-0:crash,site-1:crash", "--set", "max-failed-rounds=2"])
    err = capsys.readouterr().err
    assert code != 0
    assert "failed rounds in a row" in err or "dropped out" in err, err[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2  # not 40: the job stopped after 2 failed rounds
    assert metrics["failed_rounds"] == 2 and metrics["failures"] == 4
    assert metrics["stop_reason"].startswith("2 failed rounds in a row")
    assert "dropped out" in metrics["stop_reason"]


def test_one_failing_site_is_counted_and_the_others_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["simulate", "--sites", "2", "--rounds", "3", "--out", str(out), "--set", "attack=site-1:crash"]
    code = main(argv)
    captured = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 1  # the job finished, with failures: not a clean exit
    assert metrics["failures"] == 3 and metrics["failed_rounds"] == 0 and metrics["stop_reason"] is None
    assert all(r["sites"]["0"]["trained"] for r in metrics["rounds"])
    assert "3 site replies failed" in captured.out
    assert "failed site replies" in captured.err


def test_a_site_with_a_broken_ledger_is_named_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    for site in ("site-0", "site-1"):
        (state / "sites" / site).mkdir(parents=True)
        (state / "sites" / site / "ledger.jsonl").write_text("garbage\n")
    argv = ["simulate", "--sites", "2", "--rounds", "5", "--state-dir", str(state), "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "budget exhausted" not in out
    assert "every site has refused; site-" in out and "ledger cannot be trusted" in out


def test_diverging_training_stops_the_job_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The largest learning rate the config accepts, with heavy noise: the aggregate blows up,
    and the server stops the job saying so, keeping the last sane model."""
    out = tmp_path / "run"
    argv = ["simulate", "--sites", "2", "--rounds", "30", "--out", str(out), "--learning-rate", "1000"]
    main([*argv, "--noise-multiplier", "50"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stop_reason"] and metrics["stop_reason"].startswith("training diverged in round")
    assert len(metrics["rounds"]) < 30
    assert "lower learning-rate" in capsys.readouterr().out


_ENGINE_CRASH = """
import sys
from simulations import harness
from simulations.scenarios import load_scenario

real = harness._backend_config
def broken(cfg, ray_address=None):  # Ray cannot start: ray.init() gets runtime_env twice
    config = real(cfg, ray_address)
    config["init_args"]["runtime_env"] = {}
    return config
harness._backend_config = broken
cfg = load_scenario("hospitals-tabular").replace(sites=2, rounds=2, out=sys.argv[1])
try:
    harness.simulate(cfg)
except harness.SimulationFailed as exc:
    print("FAILED:", exc)
"""


def test_a_crashed_engine_ends_the_job_instead_of_waiting_for_ever(tmp_path: Path) -> None:
    """When Flower's simulation engine crashes (here Ray cannot start), the server loop used to
    wait for replies that could never come: the process never exited. Now the job ends at
    once with the engine's own error."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _ENGINE_CRASH, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "FAILED: Flower's simulation engine failed: TypeError" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "runtime_env" in done.stdout
    assert not (tmp_path / "run" / "metrics.json").exists()
