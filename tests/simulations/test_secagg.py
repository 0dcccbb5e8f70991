"""Secure aggregation (Flower's SecAgg+) with the sites' DP-SGD and ledgers, through Flower's
simulation engine: the server gets only the sum, which equals the weighted average of the
sites' (DP) updates up to quantization; rounds survive dropouts up to the threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audit.cli import run_audit
from client import last_update
from client.site_ledger import LAST_UPDATE_FILE
from common.privacy.ledger import read_entries
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario

QUANTIZATION = 2e-3  # clipping range 8, 2**22 levels, max weight 1000: observed errors ~1e-4


def _run(out: Path, **changes) -> dict:
    cfg = load_scenario("hospitals-tabular").replace(
        sites=4, rounds=2, secure_aggregation=True, out=str(out), **changes
    )
    return simulate(cfg, progress=lambda _: None)


def _released(out: Path, site: int) -> tuple[list[np.ndarray], int, int]:
    saved = last_update.load(out / "sites" / f"site-{site}" / LAST_UPDATE_FILE)
    assert saved is not None
    return saved.weights, int(saved.metrics["num-examples"]), saved.round


def _server_rounds(out: Path) -> list[dict]:
    return [e for e in read_entries(out / "server" / "ledger.jsonl").entries if e["kind"] == "round"]


def test_server_learns_only_the_sum_which_is_the_weighted_average(tmp_path: Path) -> None:
    m = _run(tmp_path)
    assert all(sum(s["trained"] for s in r["sites"].values()) == 4 for r in m["rounds"])
    assert all(0 < s["epsilon"] <= 1.0 for s in m["final"]["sites"].values())
    final = [t.numpy() for t in torch.load(tmp_path / "model.pt").values()]
    updates = [_released(tmp_path, s) for s in range(4)]
    assert {u[2] for u in updates} == {2}
    expected = [
        np.average(np.stack([u[0][k] for u in updates]), axis=0, weights=[u[1] for u in updates])
        for k in range(len(final))
    ]
    for got, want in zip(final, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=QUANTIZATION)
    for entry in _server_rounds(tmp_path):  # the server recorded masked updates, never hashed one itself
        assert entry["secure_aggregation"] and all(u["masked"] for u in entry["updated"])
    audit = run_audit([tmp_path], trusted_keys_for(tmp_path))
    assert audit.ok, [str(p) for p in audit.problems]


def test_a_site_dropping_mid_round_is_tolerated_up_to_the_threshold(tmp_path: Path) -> None:
    m = _run(tmp_path / "one", attack="site-3:drop=2")  # 4 shares, 3 needed: one may drop
    assert [sum(s["trained"] for s in r["sites"].values()) for r in m["rounds"]] == [4, 3]
    final = [t.numpy() for t in torch.load(tmp_path / "one" / "model.pt").values()]
    updates = [_released(tmp_path / "one", s) for s in range(3)]
    expected = [
        np.average(np.stack([u[0][k] for u in updates]), axis=0, weights=[u[1] for u in updates])
        for k in range(len(final))
    ]
    for got, want in zip(final, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=QUANTIZATION)
    site3 = read_entries(tmp_path / "one" / "sites" / "site-3" / "ledger.jsonl").entries
    # It dropped before training: nothing reserved or spent in round 2.
    assert [(e["kind"], e["round"]) for e in site3] == [("reserve", 1), ("train", 1)]
    assert run_audit([tmp_path / "one"], trusted_keys_for(tmp_path / "one")).ok

    m2 = _run(tmp_path / "two", attack="site-2:drop=2,site-3:drop=2")  # two drops: below the threshold
    assert [sum(s["trained"] for s in r["sites"].values()) for r in m2["rounds"]] == [4, 0]
    assert m2["rounds"][1]["failures"] == ["secure aggregation halted: fewer sites than the reconstruction threshold"]
    assert m2["rounds"][1]["accuracy"] == pytest.approx(m2["rounds"][0]["accuracy"])  # the model is unchanged
    halted = _server_rounds(tmp_path / "two")[-1]
    assert (halted["round"], halted["aggregate_sha256"], halted["updated"]) == (2, None, [])
    # Sites 0 and 1 spent in round 2; the ledger says why their updates were not used.
    audit = run_audit([tmp_path / "two"], trusted_keys_for(tmp_path / "two"))
    assert audit.ok and any("was not aggregated" in p.what for p in audit.problems if not p.fatal)
