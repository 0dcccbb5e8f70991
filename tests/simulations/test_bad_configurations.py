"""Runs made with configurations that void or bypass the guarantee: the sites refuse what they
can, and `fedshield audit` exits 1 naming the problem for what they cannot refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedshield.cli import main
from simulations.harness import trusted_keys_for


def _simulate(out: Path, *extra: str) -> None:
    argv = ["simulate", "--scenario", "hospitals-tabular", "--sites", "2", "--rounds", "1", "--out", str(out)]
    assert main([*argv, *extra]) == 0


def _audit(out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", str(out), "--keys", str(trusted_keys_for(out))])
    return code, capsys.readouterr().out


def test_reproducible_noise_run_is_not_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _simulate(tmp_path / "run", "--set", "insecure-reproducible-noise=true")
    code, out = _audit(tmp_path / "run", capsys)
    assert code == 1
    assert "NOT PRIVATE" in out and "insecure-reproducible" in out


def test_a_run_without_dp_is_not_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _simulate(tmp_path / "run", "--no-dp")
    code, out = _audit(tmp_path / "run", capsys)
    assert code == 1 and "NOT PRIVATE" in out


def test_a_delta_above_one_over_n_is_refused_by_every_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _simulate(tmp_path / "run", "--set", "budget-delta=0.5")  # in a simulation the scenario is the site's policy
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    reasons = [s["refused"] for s in metrics["rounds"][0]["sites"].values()]
    assert all(r and "exceeds 1/n" in r for r in reasons), reasons
