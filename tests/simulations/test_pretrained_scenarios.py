"""The transformer and ResNet families end to end, through Flower's simulation engine: DP
rounds, what travels (LoRA: adapters and head only, bytes in the metrics), and the audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.cli import run_audit
from common.errors import ConfigError
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario


def _run(cfg) -> dict:
    simulate(cfg, progress=lambda _: None)
    return json.loads((Path(cfg.out) / "metrics.json").read_text())


def _audited(out: Path) -> None:
    result = run_audit([out], trusted_keys_for(out))
    assert result.ok, [f"{p.where}: {p.what}" for p in result.problems]
    assert result.spends, "the audit found nothing to recompute"


def _tiny_notes(model_dir: Path, out: Path, **changes):
    """The clinical-notes scenario on the tiny random BERT, with ``changes``."""
    return load_scenario("clinical-notes").replace(
        pretrained_path=str(model_dir), random_init=True, out=str(out), **changes
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = _tiny_notes(tiny_text_model, out, synthetic_records=300, sites=2, rounds=2, lora_rank=4, max_length=48)
    return out, _run(cfg)


def test_lora_sends_only_adapters_and_head_and_reports_bytes(lora_run: tuple[Path, dict]) -> None:
    _, m = lora_run
    model = m["model"]
    assert model["kind"] == "transformer" and model["finetune"] == "lora"
    assert model["trainable_parameters"] < model["parameters"] / 5
    assert model["update_bytes"] < model["model_bytes"] / 5
    for r in m["rounds"]:
        trained = sum(s["trained"] for s in r["sites"].values())
        assert trained == 2
        # serialized tensors: the raw bytes plus a small header per tensor
        assert model["update_bytes"] * trained <= r["bytes_from_sites"] < model["model_bytes"]
        assert r["bytes_to_sites"] == r["bytes_from_sites"]  # same tensors both ways
    for site in m["final"]["sites"].values():
        assert 0 < site["epsilon"] <= site["budget_epsilon"]


def test_lora_run_passes_the_audit(lora_run: tuple[Path, dict]) -> None:
    _audited(lora_run[0])


def test_full_fine_tune_sends_the_whole_model(tmp_path: Path, tiny_text_model: Path) -> None:
    cfg = _tiny_notes(
        tiny_text_model, tmp_path / "run", finetune="full", synthetic_records=200, sites=2, rounds=1, max_length=32
    )
    m = _run(cfg)
    assert m["model"]["update_bytes"] == m["model"]["model_bytes"]
    assert m["rounds"][0]["bytes_from_sites"] >= 2 * m["model"]["model_bytes"]
    _audited(tmp_path / "run")


def test_clinical_notes_with_pretrained_minilm(tmp_path: Path) -> None:
    """The shipped scenario's model, the real MiniLM-L6 weights (the minilm extra), small and
    split evenly: two rounds of DP LoRA route notes far better than chance (0.25).

    The noise and each site's train/validation split are secret, so every run differs. The
    scenario's own Dirichlet split of two sites gave 0.43-0.73 over four runs (0.433 failed a
    full run of the suite here); split evenly, as here, 0.63-0.76 over three (one round gave
    0.40-0.70, too wide to test). 0.45 is above what a chance router reaches on the 120 test
    notes at 99.9% (binomial, about 0.37)."""
    cfg = load_scenario("clinical-notes").replace(
        synthetic_records=600, sites=2, rounds=2, partition="iid", out=str(tmp_path / "run")
    )
    m = _run(cfg)
    assert m["model"]["parameters"] > 20_000_000 and m["model"]["update_bytes"] < 1_000_000
    assert m["final"]["accuracy"] > 0.45
    _audited(tmp_path / "run")


@pytest.mark.unit
def test_opacus_ghost_clipping_is_refused_with_the_reason() -> None:
    """Its float32 norms cancel under a crafted model (tests/client/test_clipping_attacks.py)."""
    with pytest.raises(ConfigError, match="'ghost' .*not offered.*'bk' is fedshield's ghost clipping"):
        load_scenario("hospitals-resnet").replace(grad_sample_mode="ghost")


def test_lora_under_secure_aggregation(tmp_path: Path, tiny_text_model: Path) -> None:
    """SecAgg+ masks only what travels (adapters and head); the frozen-base check still runs."""
    cfg = _tiny_notes(
        tiny_text_model,
        tmp_path / "run",
        synthetic_records=300,
        sites=3,
        rounds=1,
        max_length=32,
        secure_aggregation=True,
    )
    m = _run(cfg)
    (r,) = m["rounds"]
    assert sum(s["trained"] for s in r["sites"].values()) == 3
    assert r["bytes_from_sites"] is None  # masked vectors travel inside the protocol: not counted
    assert m["model"]["update_bytes"] * 3 <= r["bytes_to_sites"] < m["model"]["model_bytes"]
    _audited(tmp_path / "run")
