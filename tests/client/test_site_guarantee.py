"""The site's guarantee against the server, tested the way a curious or malicious server (or a
careless operator) would try to break it: a fresh budget from another split, a loosened
policy, evaluations as often as asked, concurrent requests, a lost or torn ledger."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import client.handlers as app
from client.handlers import handle_evaluate, handle_train
from client.site_ledger import mechanism_event
from common import records as rk
from common.federation import model_spec
from common.models import build_model
from common.privacy.accounting import epsilon
from common.privacy.ledger import read_entries
from simulations.scenarios import load_scenario


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _sim_context() -> Context:
    return Context(
        run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(), run_config={}
    )


def _deployed_context(state: Path, **policy: object) -> Context:
    node = {"partition-id": 1, "num-partitions": 3, "site-name": "st-marys", "state-dir": str(state), **policy}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def _msg(cfg, server_round: int, job: str = "job-a", kind: str = MessageType.TRAIN) -> Message:
    arrays = ArrayRecord(build_model(model_spec(cfg), seed=cfg.seed).state_dict())
    config = ConfigRecord({rk.SERVER_ROUND: server_round, rk.JOB_ID: job})
    return Message(RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}), dst_node_id=7, message_type=kind)


def _entries(path: Path) -> list[dict]:
    return read_entries(path / "ledger.jsonl").entries


def _cfg(tmp_path: Path, **changes):
    base = load_scenario("hospitals-tabular").replace(sites=3, rounds=2, out=str(tmp_path), state_dir=str(tmp_path))
    return base.replace(**changes)


# ---- 1. secret noise, recorded ----------------------------------------------------------


def test_the_ledger_records_secret_noise_and_identical_requests_give_different_updates(tmp_path: Path) -> None:
    import numpy as np

    a = handle_train(_msg(_cfg(tmp_path / "a"), 1), _sim_context(), _cfg(tmp_path / "a"))
    b = handle_train(_msg(_cfg(tmp_path / "b"), 1), _sim_context(), _cfg(tmp_path / "b"))
    wa, wb = (np.concatenate([v.ravel() for v in r.content[rk.ARRAYS].to_numpy_ndarrays()]) for r in (a, b))
    assert not np.allclose(wa, wb), "the same public inputs regenerated the same update"
    for entry in _entries(tmp_path / "a" / "sites" / "site-1"):
        assert entry["noise"]["source"] == "os-entropy-reseeded" and "public_seed" not in entry["noise"]


def test_insecure_reproducible_noise_is_recorded_as_such(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, insecure_reproducible_noise=True)
    handle_train(_msg(cfg, 1), _sim_context(), cfg)
    reserve, train = _entries(tmp_path / "sites" / "site-1")
    assert reserve["noise"]["source"] == train["noise"]["source"] == "insecure-reproducible"
    assert train["policy"]["insecure_reproducible_noise"] is True


# ---- 2. the budget belongs to the data source ---------------------------------------------


def test_another_split_or_seed_does_not_give_a_fresh_budget(tmp_path: Path) -> None:
    # The attack that worked: a second job with another val-fraction (and seed) trained a strict
    # subset of the same records under a fresh budget (true composed epsilon 1.41 of 1).
    first = _cfg(tmp_path, rounds=1, budget_epsilon=1.0)
    spent = handle_train(_msg(first, 1, job="job-1"), _sim_context(), first).content[rk.METRICS][rk.EPSILON]
    assert 0.9 < spent <= 1.0
    second = first.replace(val_fraction=0.3, seed=1)
    reply = handle_train(_msg(second, 1, job="job-2"), _sim_context(), second)
    # The second job sees the first job's spend: either it is refused, or its noise is so large
    # that the composition of both jobs stays within the one budget.
    entries = _entries(tmp_path / "sites" / "site-1")
    events = [mechanism_event(e["mechanism"]) for e in entries if e["kind"] == "reserve"]
    assert epsilon(events, delta=1e-5) <= 1.0
    if rk.REFUSAL not in reply.content:
        assert len(events) == 2 and reply.content[rk.METRICS][rk.EPSILON] >= spent
        assert reply.content[rk.METRICS][rk.NOISE_MULTIPLIER] > 5 * entries[0]["mechanism"]["noise_multiplier"]


def test_a_changed_file_is_recorded_never_a_reset(tmp_path: Path) -> None:
    first = _cfg(tmp_path, rounds=1, budget_epsilon=2.0, noise_multiplier=3.0)
    handle_train(_msg(first, 1, job="job-1"), _sim_context(), first)
    changed = first.replace(seed=5)  # the simulated world reshuffles: site-1 now holds other records
    reply = handle_train(_msg(changed, 1, job="job-2"), _sim_context(), changed)
    entries = _entries(tmp_path / "sites" / "site-1")
    assert entries[0]["dataset"] != entries[-1]["dataset"] and entries[0]["source"] == entries[-1]["source"]
    one_round = entries[0]["epsilon"]
    assert reply.content[rk.METRICS][rk.EPSILON] > one_round  # the second job's spend composes with the first


def test_a_deployed_sites_split_ignores_the_servers_val_fraction(tmp_path: Path) -> None:
    ctx = _deployed_context(tmp_path / "st", **{"budget-epsilon": 1.0})
    a = app._node_site(ctx, _cfg(tmp_path, val_fraction=0.2), app.site_settings(ctx, _cfg(tmp_path)).policy)
    b = app._node_site(ctx, _cfg(tmp_path, val_fraction=0.5), app.site_settings(ctx, _cfg(tmp_path)).policy)
    assert (a.train.x == b.train.x).all() and len(a.val) == len(b.val)


# ---- 3. the site's policy is the site's -------------------------------------------------


def test_a_deployed_site_without_a_budget_refuses_to_train(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    reply = handle_train(_msg(cfg, 1), _deployed_context(tmp_path / "st"), cfg)
    assert reply.content[rk.METRICS][rk.REFUSED] == 1 and rk.ARRAYS not in reply.content
    assert "no budget-epsilon" in str(reply.content[rk.REFUSAL][rk.REASON])
    assert [e["kind"] for e in _entries(tmp_path / "st")] == ["refusal"]


def test_the_server_cannot_set_delta_or_raise_epsilon(tmp_path: Path) -> None:
    # The attack that worked: delta 0.5 from the server made the site calibrate noise that cost
    # epsilon 15.7 at the site's own delta.
    cfg = _cfg(tmp_path, budget_delta=0.5, budget_epsilon=50.0, job_epsilon=50.0)
    ctx = _deployed_context(tmp_path / "st", **{"budget-epsilon": 1.0})
    metrics = handle_train(_msg(cfg, 1), ctx, cfg).content[rk.METRICS]
    assert metrics[rk.BUDGET_DELTA] == 1e-5
    history = [app.DpSgdEvent(metrics[rk.NOISE_MULTIPLIER], metrics[rk.SAMPLE_RATE], int(metrics[rk.DP_STEPS]))]
    assert epsilon(history * 2, delta=1e-5) <= 1.0  # both planned rounds fit the site's budget


def test_the_server_can_ask_for_less(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, job_epsilon=0.3)
    ctx = _deployed_context(tmp_path / "st", **{"budget-epsilon": 1.0})
    metrics = handle_train(_msg(cfg, 1), ctx, cfg).content[rk.METRICS]
    assert metrics[rk.EPSILON] <= 0.3


def test_a_policy_file_is_read_and_a_bad_one_names_the_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("budget-epsilon = 0.5\nbudget-delta = 1e-6\nval-fraction = 0.25\n")
    cfg = _cfg(tmp_path)
    ctx = _deployed_context(tmp_path / "st", **{"site-policy": str(policy)})
    assert handle_train(_msg(cfg, 1), ctx, cfg).content[rk.METRICS][rk.BUDGET_DELTA] == 1e-6
    policy.write_text("budget-epsilon = 'lots'\n")
    reply = handle_train(_msg(cfg, 2), _deployed_context(tmp_path / "st2", **{"site-policy": str(policy)}), cfg)
    assert f"{policy}: budget-epsilon must be a float, got 'lots'" in str(reply.content[rk.REFUSAL][rk.REASON])


# ---- 4. every release is accounted -------------------------------------------------------


def test_evaluation_is_refused_by_default_without_reading_a_record(tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg(tmp_path)

    def no_data(*_args, **_kwargs):
        raise AssertionError("an evaluation the policy does not allow must not read the records")

    monkeypatch.setattr(app, "site_data", no_data)
    reply = handle_evaluate(_msg(cfg, 1, kind=MessageType.EVALUATE), _sim_context(), cfg)
    assert reply.content[rk.METRICS][rk.EVAL_REFUSED] == 1
    assert rk.EVAL_ACCURACY not in reply.content[rk.METRICS]


def test_dp_evaluation_is_charged_to_the_budget_and_vetoed_when_it_runs_out(tmp_path: Path) -> None:
    # The attack that worked: score any weights on the validation records, as often as asked.
    cfg = _cfg(tmp_path, evaluation="dp", eval_noise_multiplier=2.0, budget_epsilon=3.0)
    answers = [handle_evaluate(_msg(cfg, r, kind=MessageType.EVALUATE), _sim_context(), cfg) for r in range(1, 40)]
    released = [a for a in answers if rk.EVAL_REFUSED not in a.content[rk.METRICS]]
    assert 0 < len(released) < len(answers)  # the budget ran out and the site said no
    entries = _entries(tmp_path / "sites" / "site-1")
    evaluations = [e for e in entries if e["kind"] == "evaluate"]
    assert len(evaluations) == len(released)
    assert all(e["mechanism"] == {"name": "gaussian", "noise_multiplier": 2.0} for e in evaluations)
    assert max(e["epsilon"] for e in evaluations) <= 3.0
    # ... and it is the same budget DP-SGD draws from: training composes with the evaluations.
    metrics = handle_train(_msg(cfg, 1), _sim_context(), cfg).content[rk.METRICS]
    if rk.REFUSED not in metrics:
        assert max(e["epsilon"] for e in evaluations) < metrics[rk.EPSILON] <= 3.0


@pytest.mark.parametrize("task", [{}, {"dataset": "synthetic:credit", "task": "binary-risk", "positive_label": "1"}])
def test_a_dp_evaluation_reply_holds_no_exact_statistic_of_the_records(tmp_path: Path, task: dict) -> None:
    """The attack that worked: the DP evaluation reply carried the exact number of validation
    records (num-examples), which tells a dataset from its neighbour with one record less on
    every reply. Now every value in the reply is a noised statistic or computed from them."""
    from common.federation import job_task, site_data

    cfg = _cfg(tmp_path, evaluation="dp", eval_noise_multiplier=2.0, budget_epsilon=50.0, **task)
    exact_n = len(site_data(cfg, 1, cfg.federation.sites, val_fraction=0.2, split_seed=0).val)
    counts = []
    for r in range(1, 9):
        metrics = handle_evaluate(_msg(cfg, r, kind=MessageType.EVALUATE), _sim_context(), cfg).content[rk.METRICS]
        assert rk.EVAL_REFUSED not in metrics
        counts.append(metrics[rk.NUM_EXAMPLES])
        task_obj = job_task(cfg)
        noisy = rk.stats_from_record(metrics, task_obj.zero())
        assert metrics[rk.NUM_EXAMPLES] == max(round(task_obj.count(noisy)), 0)
    assert len(set(counts)) > 1 and counts.count(exact_n) < len(counts)  # noised, not the exact count
    (entry, *_) = [e for e in _entries(tmp_path / "sites" / "site-1") if e["kind"] == "evaluate"]
    assert rk.NUM_EXAMPLES not in entry["released"]


# ---- 5. no double spend under concurrency ----------------------------------------------


def test_concurrent_requests_cannot_both_pass_the_veto(tmp_path: Path) -> None:
    # Each round alone fits the budget; two do not. Old code: both passed (1.41 of 1).
    cfg = _cfg(tmp_path, noise_multiplier=4.0, budget_epsilon=1.0, rounds=1)
    one = epsilon([app.DpSgdEvent(4.0, 1.0, 1)], delta=1e-5)
    assert one <= 1.0 < epsilon([app.DpSgdEvent(4.0, 1.0, 1)] * 2, delta=1e-5)
    handle_train(_msg(cfg, 1, job="warm-up"), _sim_context(), cfg.replace(budget_epsilon=50.0))  # loads data once
    cfg = cfg.replace(state_dir=str(tmp_path / "fresh"))
    replies: list[Message] = []
    barrier = threading.Barrier(4)

    def request(job: str) -> None:
        barrier.wait()
        replies.append(handle_train(_msg(cfg, 1, job=job), _sim_context(), cfg))

    threads = [threading.Thread(target=request, args=(f"job-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trained = [r for r in replies if rk.REFUSAL not in r.content]
    assert len(trained) == 1, f"{len(trained)} concurrent requests passed a veto that fits one"
    reserves = [e for e in _entries(tmp_path / "fresh" / "sites" / "site-1") if e["kind"] == "reserve"]
    assert len(reserves) == 1


# ---- 7. a crash or a lost ledger never refunds -----------------------------------------


def test_a_crash_after_the_reserve_still_counts_as_spent(tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg(tmp_path, noise_multiplier=4.0, budget_epsilon=1.0)

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("kill -9 mid-round")

    monkeypatch.setattr(app, "train_local", crash)
    with pytest.raises(KeyboardInterrupt):
        handle_train(_msg(cfg, 1), _sim_context(), cfg)
    monkeypatch.undo()
    reply = handle_train(_msg(cfg, 1, job="job-b"), _sim_context(), cfg)  # a new job after the crash
    assert reply.content[rk.METRICS][rk.REFUSED] == 1  # the crashed round's spend is not forgotten
    assert [e["kind"] for e in _entries(tmp_path / "sites" / "site-1")] == ["reserve", "refusal"]


def test_a_deleted_ledger_does_not_give_a_fresh_budget(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, budget_epsilon=1.0, rounds=1)
    handle_train(_msg(cfg, 1), _sim_context(), cfg)
    (tmp_path / "sites" / "site-1" / "ledger.jsonl").unlink()  # keep the key, forget the spend
    reply = handle_train(_msg(cfg, 1, job="job-b"), _sim_context(), cfg)
    assert reply.content[rk.METRICS][rk.REFUSED] == 1 and rk.ARRAYS not in reply.content
    assert "cannot be trusted" in str(reply.content[rk.REFUSAL][rk.REASON])


# ---- found by the adversarial review ------------------------------------------------------


def test_a_site_configuring_itself_without_a_state_dir_is_not_taken_for_a_simulated_one(tmp_path: Path) -> None:
    # Node config with a budget but no state-dir used to fall back to the simulation path, where
    # the server's run config wrote the policy (epsilon 100, no DP).
    cfg = _cfg(tmp_path, budget_epsilon=100.0, dp=False)
    ctx = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "num-partitions": 3, "budget-epsilon": 1.0, "require-dp": True},
        state=RecordDict(),
        run_config={},
    )
    reply = handle_train(_msg(cfg, 1), ctx, cfg)
    assert reply.content[rk.METRICS][rk.REFUSED] == 1 and rk.ARRAYS not in reply.content
    assert "no state-dir" in str(reply.content[rk.REFUSAL][rk.REASON])


def test_a_malformed_or_crafted_model_is_refused_before_anything_is_reserved(tmp_path: Path) -> None:
    import torch

    cfg = _cfg(tmp_path)
    good = build_model(model_spec(cfg), seed=cfg.seed).state_dict()
    config = ConfigRecord({rk.SERVER_ROUND: 1, rk.JOB_ID: "job-a"})
    for arrays in (
        {k: torch.zeros(3) for k in good},  # wrong shapes
        {k: torch.full_like(v, 1e9) for k, v in good.items()},  # weights far outside any trained model
        {k: torch.full_like(v, float("nan")) for k, v in good.items()},
    ):
        msg = Message(
            RecordDict({rk.ARRAYS: ArrayRecord(arrays), rk.CONFIG: config}),
            dst_node_id=7,
            message_type=MessageType.TRAIN,
        )
        reply = handle_train(msg, _sim_context(), cfg)
        assert reply.content[rk.METRICS][rk.REFUSED] == 1
    kinds = [e["kind"] for e in _entries(tmp_path / "sites" / "site-1")]
    assert kinds == ["refusal"] * 3  # no budget drained by bad messages


def test_renaming_the_data_source_does_not_give_the_records_a_fresh_budget(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, rounds=1, budget_epsilon=1.0)
    ctx = _deployed_context(tmp_path / "st", **{"budget-epsilon": 1.0, "data-source": "ward-a"})
    assert rk.REFUSAL not in handle_train(_msg(cfg, 1, job="j1"), ctx, cfg).content
    renamed = _deployed_context(tmp_path / "st", **{"budget-epsilon": 1.0, "data-source": "ward-a-2025"})
    reply = handle_train(_msg(cfg, 1, job="j2"), renamed, cfg)
    assert "were spent under data source 'ward-a'" in str(reply.content[rk.REFUSAL][rk.REASON])


def test_a_deployed_sites_errors_reach_the_server_without_record_values(tmp_path: Path) -> None:
    # The server names a label field whose values are patients' names: the loader's error would
    # have quoted the first one to the server.
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"text": "chest pain", "label": "cardiology", "who": "Jane Q. Doe"}\n' * 10)
    cfg = _cfg(tmp_path, dataset="text", model="transformer", label_field="who", class_names="cardiology,other")
    ctx = _deployed_context(tmp_path / "st", **{"budget-epsilon": 1.0, "data-path": str(notes)})
    reply = handle_train(_msg(_cfg(tmp_path), 1), ctx, cfg)
    reason = str(reply.content[rk.REFUSAL][rk.REASON])
    assert "Jane" not in reason and "details in the site's own log" in reason


def test_public_evaluation_is_recorded_and_released(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, evaluation="public")
    metrics = handle_evaluate(_msg(cfg, 1, kind=MessageType.EVALUATE), _sim_context(), cfg).content[rk.METRICS]
    assert 0.0 <= metrics[rk.EVAL_ACCURACY] <= 1.0
    (entry,) = _entries(tmp_path / "sites" / "site-1")
    assert entry["kind"] == "evaluate" and entry["mechanism"] == {"name": "public"} and entry["epsilon"] is None


def test_a_server_set_noise_multiplier_cannot_spend_more_than_the_job_asked(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, job_epsilon=0.3, noise_multiplier=0.6)  # 0.6 at q=0.5 costs far more than 0.3
    ctx = _deployed_context(tmp_path / "st", **{"budget-epsilon": 5.0})
    reply = handle_train(_msg(cfg, 1), ctx, cfg)
    assert reply.content[rk.METRICS][rk.REFUSED] == 1
    assert "of 0.30" in str(reply.content[rk.REFUSAL][rk.REASON])
