"""End to end: three sites, two rounds, through Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.federation import model_spec
from common.models import build_model
from common.privacy.accounting import DpSgdEvent, epsilon
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim") / "run"
    cfg = load_scenario("hospitals-tabular").replace(sites=3, rounds=2, out=str(out))
    simulate(cfg, progress=lambda _: None)
    return out, json.loads((out / "metrics.json").read_text())


def test_metrics_have_every_round_and_site(run: tuple[Path, dict]) -> None:
    _, m = run
    assert [r["round"] for r in m["rounds"]] == [1, 2]
    for r in m["rounds"]:
        assert set(r["sites"]) == {"0", "1", "2"}
        assert all(s["trained"] for s in r["sites"].values())
        assert 0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0
        assert r["federated_accuracy"] is None  # sites release no evaluation unless their policy allows it
    assert m["final"]["accuracy"] == m["rounds"][-1]["accuracy"]
    assert m["final"]["accuracy"] >= 0.85


def test_epsilon_is_cumulative_within_budget_and_recomputable(run: tuple[Path, dict]) -> None:
    _, m = run
    for site in ("0", "1", "2"):
        per_round = [r["sites"][site] for r in m["rounds"]]
        eps = [s["epsilon"] for s in per_round]
        assert 0 < eps[0] < eps[1] <= m["final"]["sites"][site]["budget_epsilon"]  # composed, never reset
        assert per_round[1]["dp_steps"] == 2 * per_round[0]["dp_steps"]
        assert per_round[1]["budget_delta"] == m["final"]["sites"][site]["budget_delta"] == 1e-5
        history = [DpSgdEvent(s["noise_multiplier"], s["sample_rate"], per_round[0]["dp_steps"]) for s in per_round]
        assert eps[1] == pytest.approx(epsilon(history, delta=1e-5), rel=1e-6)
        assert m["final"]["sites"][site]["epsilon"] == eps[1]
        assert m["final"]["sites"][site]["records"] > 0


def test_run_folder_holds_config_model_and_plot(run: tuple[Path, dict]) -> None:
    out, m = run
    cfg = load_scenario(str(out / "config.toml"))
    assert (cfg.federation.sites, cfg.federation.rounds, cfg.out) == (3, 2, str(out))
    model = build_model(model_spec(cfg), seed=0)
    model.load_state_dict(torch.load(out / "model.pt"), strict=True)
    png = (out / "training.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_simulation_output_passes_the_audit(run: tuple[Path, dict]) -> None:
    import subprocess
    import sys

    out, _ = run
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "fedshield", "audit", str(out), "--keys", str(trusted_keys_for(out))],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFIED" in proc.stdout and proc.stdout.count("  OK") == 3
