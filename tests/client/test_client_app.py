"""The ClientApp's train handler: spend is read back from the ledger, so a restarted site
(fresh node state) continues where it stopped; the entry is on disk before the reply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.handlers import handle_train
from client.site_ledger import LAST_UPDATE_FILE
from common import records as rk
from common.federation import model_spec
from common.models import build_model
from common.privacy.accounting import DpSgdEvent, epsilon
from common.privacy.ledger import read_entries
from simulations.scenarios import load_scenario

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _context() -> Context:
    return Context(
        run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(), run_config={}
    )


def _train_msg(cfg, server_round: int) -> Message:
    arrays = ArrayRecord(build_model(model_spec(cfg), seed=cfg.seed).state_dict())
    config = ConfigRecord({rk.SERVER_ROUND: server_round, rk.JOB_ID: "job-a"})
    return Message(RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}), dst_node_id=7, message_type=MessageType.TRAIN)


def test_restarted_site_continues_from_its_ledger(tmp_path: Path) -> None:
    cfg = load_scenario("hospitals-tabular").replace(sites=3, rounds=3, budget_epsilon=2.0, out=str(tmp_path))
    first = handle_train(_train_msg(cfg, 1), _context(), cfg).content[rk.METRICS]
    # The site process restarts: its in-memory node state is gone, its ledger is not.
    second = handle_train(_train_msg(cfg, 2), _context(), cfg).content[rk.METRICS]
    assert second[rk.NOISE_MULTIPLIER] == first[rk.NOISE_MULTIPLIER]  # same calibration for the job
    event = DpSgdEvent(first[rk.NOISE_MULTIPLIER], first[rk.SAMPLE_RATE], int(first[rk.DP_STEPS]))
    assert second[rk.EPSILON] == pytest.approx(epsilon([event, event], delta=cfg.policy.budget_delta))
    assert second[rk.DP_STEPS] == 2 * first[rk.DP_STEPS]
    entries = read_entries(tmp_path / "sites" / "site-1" / "ledger.jsonl").entries
    assert [(e["kind"], e["round"], e["epsilon"]) for e in entries] == [
        ("reserve", 1, pytest.approx(first[rk.EPSILON])),
        ("train", 1, pytest.approx(first[rk.EPSILON])),
        ("reserve", 2, pytest.approx(second[rk.EPSILON])),
        ("train", 2, pytest.approx(second[rk.EPSILON])),
    ]
    assert entries[1]["reserve"] == entries[0]["seq"] and entries[3]["reserve"] == entries[2]["seq"]


def test_a_request_runs_numpys_blas_on_one_thread_and_gives_the_threads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accountant's BLAS threads spinning beside torch's stalled small models' steps
    (client/blas.py): inside a request numpy's BLAS has one thread, after it what it had."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import client.handlers

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    seen: list[list[int]] = []
    real = client.handlers.train_local
    monkeypatch.setattr(client.handlers, "train_local", lambda *a, **k: seen.append(blas_threads()) or real(*a, **k))
    cfg = load_scenario("hospitals-tabular").replace(sites=3, rounds=2, out=str(tmp_path))
    with threadpool_limits(2, user_api="blas"):
        reply = handle_train(_train_msg(cfg, 1), _context(), cfg)
        after = blas_threads()
    # numpy's OpenBLAS, and scipy's own copy where scipy is loaded
    assert rk.ARRAYS in reply.content and seen and all(set(threads) == {1} for threads in seen)
    assert after and set(after) == {2}


def test_reply_hash_matches_the_ledger_entry(tmp_path: Path) -> None:
    from server.tracking import arrays_hash

    cfg = load_scenario("hospitals-tabular").replace(sites=3, rounds=2, out=str(tmp_path))
    reply = handle_train(_train_msg(cfg, 1), _context(), cfg)
    entry = read_entries(tmp_path / "sites" / "site-1" / "ledger.jsonl").entries[-1]
    assert arrays_hash(reply.content[rk.ARRAYS]) == entry["update_sha256"]
    assert reply.content[rk.SITE_REPORT][rk.UPDATE_SHA256] == entry["update_sha256"]
    assert entry["mechanism"]["name"] == "dp-sgd-poisson-gaussian" and entry["budget"] == {
        "epsilon": 1.0,
        "delta": 1e-5,
    }


def test_refusal_reads_no_data_and_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_scenario("hospitals-tabular").replace(sites=3, rounds=2, noise_multiplier=0.5, out=str(tmp_path))
    ctx = _context()
    handle_train(_train_msg(cfg, 1), ctx, cfg)  # first contact fingerprints the dataset (cached in node state)

    import client.handlers as app

    def no_data(*_args, **_kwargs):
        raise AssertionError("the veto must not read the records")

    monkeypatch.setattr(app, "site_data", no_data)
    reply = handle_train(_train_msg(cfg, 1), ctx, cfg)  # sigma 0.5 at q=1: one round is far over budget 1
    assert reply.content[rk.METRICS][rk.REFUSED] == 1
    assert str(reply.content[rk.REFUSAL][rk.REASON]).startswith("budget exhausted: spent")
    assert rk.ARRAYS not in reply.content


def test_round_asked_again_resends_the_same_update_without_spending(tmp_path: Path) -> None:
    from server.tracking import arrays_hash

    cfg = load_scenario("hospitals-tabular").replace(sites=3, rounds=3, out=str(tmp_path))
    first = handle_train(_train_msg(cfg, 1), _context(), cfg)
    again = handle_train(_train_msg(cfg, 1), _context(), cfg)  # a restarted server asks for round 1 again
    assert arrays_hash(again.content[rk.ARRAYS]) == arrays_hash(first.content[rk.ARRAYS])
    assert again.content[rk.METRICS][rk.EPSILON] == first.content[rk.METRICS][rk.EPSILON]
    entries = read_entries(tmp_path / "sites" / "site-1" / "ledger.jsonl").entries
    assert [e["kind"] for e in entries] == ["reserve", "train"]  # no second spend
    saved = tmp_path / "sites" / "site-1" / LAST_UPDATE_FILE
    data = bytearray(saved.read_bytes())
    data[-1] ^= 0x40  # an altered weight: not what the ledger says was released
    saved.write_bytes(bytes(data))
    altered = handle_train(_train_msg(cfg, 1), _context(), cfg)
    assert altered.content[rk.METRICS][rk.REFUSED] == 1 and rk.ARRAYS not in altered.content
    saved.unlink()
    lost = handle_train(_train_msg(cfg, 1), _context(), cfg)
    assert lost.content[rk.METRICS][rk.REFUSED] == 1
    assert "training again would spend budget twice" in str(lost.content[rk.REFUSAL][rk.REASON])


def test_a_deployed_site_sets_its_own_budget_and_refuses_training_without_dp(tmp_path: Path) -> None:
    cfg = load_scenario("hospitals-tabular").replace(
        sites=3, rounds=2, budget_epsilon=50.0, budget_delta=0.5, job_epsilon=50.0, out=str(tmp_path)
    )
    ctx = Context(
        run_id=1,
        node_id=7,
        run_config={},
        state=RecordDict(),
        node_config={
            "partition-id": 1,
            "num-partitions": 3,
            "site-name": "st-marys",
            "state-dir": str(tmp_path / "st-marys"),
            "budget-epsilon": 0.5,
            "budget-delta": 1e-6,
        },
    )
    reply = handle_train(_train_msg(cfg, 1), ctx, cfg)  # the server asks for epsilon 50 at delta 0.5
    entry = read_entries(tmp_path / "st-marys" / "ledger.jsonl").entries[-1]
    assert entry["ledger"] == "st-marys" and entry["budget"] == {"epsilon": 0.5, "delta": 1e-6}
    assert entry["delta"] == 1e-6 and entry["epsilon"] <= 0.5  # calibrated to the site's budget, not the job's
    assert reply.content[rk.METRICS][rk.BUDGET_DELTA] == 1e-6
    assert (tmp_path / "st-marys" / "st-marys.pub").exists()
    no_dp = handle_train(_train_msg(cfg.replace(dp=False), 2), ctx, cfg.replace(dp=False))
    assert no_dp.content[rk.METRICS][rk.REFUSED] == 1
    assert "only trains with differential privacy" in str(no_dp.content[rk.REFUSAL][rk.REASON])


def test_lora_site_with_another_base_model_refuses(tmp_path: Path, tiny_text_model: Path) -> None:
    """Under LoRA only adapters travel; a site whose frozen base differs from the server's would
    send adapters for another model, so it refuses (before reading data, spending nothing)."""
    from common.models import exchanged_state, frozen_sha256

    cfg = load_scenario("clinical-notes").replace(
        pretrained_path=str(tiny_text_model), random_init=True, synthetic_records=120, sites=3, out=str(tmp_path)
    )
    model = build_model(model_spec(cfg), seed=cfg.seed)
    other_base = build_model(model_spec(cfg), seed=cfg.seed + 1)  # another random base
    assert frozen_sha256(other_base) != frozen_sha256(model) != ""

    def msg(base: str) -> Message:
        config = ConfigRecord({rk.SERVER_ROUND: 1, rk.JOB_ID: "job-a", rk.FROZEN_SHA256: base})
        arrays = ArrayRecord(exchanged_state(model))
        return Message(
            RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}), dst_node_id=7, message_type=MessageType.TRAIN
        )

    refused = handle_train(msg(frozen_sha256(other_base)), _context(), cfg)
    assert rk.REFUSAL in refused.content
    assert "frozen base model" in str(refused.content[rk.REFUSAL][rk.REASON])
    entries = read_entries(tmp_path / "sites" / "site-1" / "ledger.jsonl").entries
    assert [e["kind"] for e in entries] == ["refusal"]
    accepted = handle_train(msg(frozen_sha256(model)), _context(), cfg)
    assert rk.REFUSAL not in accepted.content and accepted.content[rk.METRICS][rk.EPSILON] > 0
    assert list(accepted.content[rk.ARRAYS].keys()) == list(exchanged_state(model).keys())


def _deployed_context(tmp_path: Path) -> Context:
    node = {
        "partition-id": 1,
        "num-partitions": 3,
        "site-name": "st-marys",
        "state-dir": str(tmp_path / "st-marys"),
        "budget-epsilon": 5.0,
    }
    return Context(run_id=1, node_id=7, run_config={}, state=RecordDict(), node_config=node)


def test_a_deployed_site_refuses_a_simulated_fault(tmp_path: Path) -> None:
    cfg = load_scenario("hospitals-tabular").replace(sites=3, rounds=2, simulated_fault="noise-off", out=str(tmp_path))
    reply = handle_train(_train_msg(cfg, 1), _deployed_context(tmp_path), cfg)
    assert reply.content[rk.METRICS][rk.REFUSED] == 1
    assert "never runs one" in str(reply.content[rk.REFUSAL][rk.REASON])
    assert not (tmp_path / "st-marys" / LAST_UPDATE_FILE).exists()


def test_audit_canaries_stay_at_the_site_and_the_archive_is_the_release(tmp_path: Path) -> None:
    import json

    import numpy as np
    import torch

    from common.hashing import arrays_sha256

    cfg = load_scenario("hospitals-tabular").replace(
        sites=3, rounds=2, hidden="8", audit_canaries=50, out=str(tmp_path)
    )
    plain = handle_train(_train_msg(cfg.replace(audit_canaries=0), 1), _context(), cfg.replace(audit_canaries=0))
    reply = handle_train(
        _train_msg(cfg, 1), Context(1, 7, {"partition-id": 0, "num-partitions": 3}, RecordDict(), {}), cfg
    )
    assert set(reply.content.keys()) == set(plain.content.keys())  # nothing more leaves the site
    assert set(reply.content[rk.METRICS].keys()) == set(plain.content[rk.METRICS].keys())
    folder = tmp_path / "sites" / "site-0" / "audit" / "job-a"
    kept = json.loads((folder / "canaries.json").read_text())
    assert len(kept["included"]) == 50 and set(kept["included"]) == {0, 1}
    entry = read_entries(tmp_path / "sites" / "site-0" / "ledger.jsonl").entries[-1]
    assert entry["audit_canaries"] == 50 and entry["records"] == reply.content[rk.METRICS][rk.NUM_EXAMPLES]
    archive = torch.load(folder / "round-1.pt", weights_only=True)
    released = [np.asarray(w) for w in archive["released"]]
    assert arrays_sha256(zip(archive["names"], released, strict=True)) == entry["update_sha256"]


def test_secure_aggregations_key_stages_run_without_loading_torch() -> None:
    """A deployed SuperNode starts one process per message; SecAgg+'s key setup and key shares
    (like its unmasking, which never reaches a handler either) must not pay for torch and the DP
    engines, only the stage that trains. Two sites' key setups, then one site's key shares,
    through the real app in a fresh process."""
    script = """
import sys
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity
from client.app import app
assert "torch" not in sys.modules, "importing client.app loaded torch"
TaskIdentity.run_id, TaskIdentity.task_id = 1, 1
def stage(node, ctx, configs):
    TaskIdentity.node_id = node
    msg = Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(configs)}), dst_node_id=node,
                  message_type=MessageType.TRAIN)
    reply = app(msg, ctx)
    assert not reply.has_error(), reply.error
    return reply.content.config_records[RECORD_KEY_CONFIGS]
contexts = {node: Context(run_id=1, node_id=node, node_config={"partition-id": i, "num-partitions": 2},
                          state=RecordDict(), run_config={}) for i, node in enumerate((7, 8))}
setup = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 2, Key.SHARE_NUMBER: 2, Key.THRESHOLD: 2,
         Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 1e4}
keys = {node: stage(node, ctx, dict(setup)) for node, ctx in contexts.items()}
shares = stage(7, contexts[7], {Key.STAGE: Stage.SHARE_KEYS,
               **{str(n): [k[Key.PUBLIC_KEY_1], k[Key.PUBLIC_KEY_2]] for n, k in keys.items()}})
assert len(shares[Key.CIPHERTEXT_LIST]) == 1 and list(shares[Key.DESTINATION_LIST]) == [8]
assert "torch" not in sys.modules, "a key stage loaded torch"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout[-2000:] + proc.stderr[-3000:]
