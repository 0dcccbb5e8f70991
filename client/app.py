"""The ClientApp each site runs.

train: read the site's spend on its dataset back from its ledger and decide (the veto) whether
the planned round fits its budget, before touching the records; if it does, run one round of
local DP-SGD, write the signed ledger entry (fsync-ed), and only then reply with the new
weights and the cumulative (epsilon, delta) of everything this site has released on its data.
A round already answered is answered again with the same update, never retrained.
evaluate: score the global model on the site's own held-out validation records.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.budget import Budget, decide
from client.dp_trainer import LocalPlan, PrivacyPlan, evaluate, sampling, train_local
from client.secagg import make_legacy_fit_adapter, secagg_when_asked
from client.site_ledger import SiteLedger, SitePaths, simulation_paths
from common import records as rk
from common.config import RunConfig, Strategy
from common.crypto import keys
from common.errors import ConfigError
from common.federation import SiteData, local_site_data, model_spec, site_data
from common.hashing import arrays_sha256, dataset_fingerprint
from common.models import build_model, exchanged_keys, load_exchanged, spec_frozen_sha256
from common.privacy.accounting import DpSgdEvent, calibrate_noise, epsilon

_SIGMA_KEY = "fedshield.noise"
_META_KEY = "fedshield.dataset"


@functools.lru_cache(maxsize=4)
def _config_from_run_config(items: tuple) -> RunConfig:
    return RunConfig.from_flat(dict(items), source="run config")


def _node_site(context: Context, cfg: RunConfig) -> SiteData:
    """The site's own records: its data file in a deployment (node config ``data-path``), or its
    partition of the scenario's data in a simulation."""
    node = context.node_config
    site_id = int(node.get("partition-id", 0))
    if "data-path" in node:
        return local_site_data(cfg, str(node["data-path"]), site_id)
    return site_data(cfg, site_id, int(node["num-partitions"]))


def _plan(cfg: RunConfig) -> LocalPlan:
    mu = cfg.proximal_mu if cfg.strategy_kind is Strategy.FEDPROX else 0.0
    return LocalPlan(cfg.local_epochs, cfg.batch_size, cfg.learning_rate, proximal_mu=mu)


@dataclass(frozen=True)
class DatasetMeta:
    fingerprint: str
    records: int


def _dataset_meta(context: Context, cfg: RunConfig) -> DatasetMeta:
    """The site's dataset fingerprint and size, computed once and kept in the node state, so
    the budget check needs no access to the records."""
    if _META_KEY not in context.state:
        train = _node_site(context, cfg).train
        context.state[_META_KEY] = ConfigRecord({"fingerprint": dataset_fingerprint(train), "records": len(train)})
    rec = context.state[_META_KEY]
    return DatasetMeta(str(rec["fingerprint"]), int(rec["records"]))


def _noise_multiplier(
    cfg: RunConfig, ledger: SiteLedger, meta: DatasetMeta, job: str, budget: Budget, context: Context
) -> float | None:
    """The site's noise for this job: given directly, or calibrated once per job so that the
    spend of earlier jobs on this dataset plus all planned rounds of this one stays within the
    budget. ``None`` when no noise level fits (nothing left)."""
    if cfg.noise_multiplier > 0:
        return cfg.noise_multiplier
    cached = context.state.get(_SIGMA_KEY)
    if cached is not None and cached["job"] == job:
        return float(cached["sigma"]) if cached["sigma"] > 0 else None
    sample_rate, steps = sampling(meta.records, _plan(cfg))
    try:
        sigma = calibrate_noise(
            target_epsilon=budget.epsilon,
            delta=budget.delta,
            sample_rate=sample_rate,
            steps=steps * cfg.rounds,
            prior=ledger.spend(meta.fingerprint, exclude_job=job).events,
        )
    except ConfigError:
        sigma = 0.0
    context.state[_SIGMA_KEY] = ConfigRecord({"job": job, "sigma": sigma})
    return sigma if sigma > 0 else None


def _global_model(msg: Message, cfg: RunConfig) -> torch.nn.Module:
    model = build_model(model_spec(cfg), seed=cfg.seed)
    load_exchanged(model, msg.content[rk.ARRAYS].to_torch_state_dict())
    return model


def _refusal(msg: Message, site_id: int, site: str, reason: str, spent: float) -> Message:
    metrics = MetricRecord({rk.SITE_ID: site_id, rk.REFUSED: 1, rk.EPSILON: spent})
    refusal = ConfigRecord({rk.SITE_NAME: site, rk.REASON: reason})
    return Message(RecordDict({rk.METRICS: metrics, rk.REFUSAL: refusal}), reply_to=msg)


def _resend(msg: Message, paths: SitePaths, entry: dict, site_id: int, site: str) -> Message:
    saved = torch.load(paths.last_update, weights_only=False) if paths.last_update.exists() else None
    if (
        saved is None
        or (saved["job"], saved["round"]) != (entry["job"], entry["round"])
        or arrays_sha256(zip(saved["names"], saved["weights"], strict=True)) != entry["update_sha256"]
    ):
        reason = (
            f"already released an update for job {entry['job']} round {entry['round']}; "
            "it is no longer stored, and training again would spend budget twice"
        )
        return _refusal(msg, site_id, site, reason, float(entry["epsilon"] or 0.0))
    arrays = ArrayRecord({k: torch.as_tensor(w) for k, w in zip(saved["names"], saved["weights"], strict=True)})
    report = ConfigRecord({rk.SITE_NAME: site, rk.UPDATE_SHA256: entry["update_sha256"]})
    return Message(
        RecordDict({rk.ARRAYS: arrays, rk.METRICS: MetricRecord(saved["metrics"]), rk.SITE_REPORT: report}),
        reply_to=msg,
    )


@dataclass(frozen=True)
class SiteSettings:
    """What the site itself decides, from its node config; in a simulation (no such keys) the
    scenario stands in for every site. The server's run config can never loosen these."""

    site_id: int
    name: str
    paths: SitePaths
    budget: Budget
    require_dp: bool


def site_settings(context: Context, cfg: RunConfig) -> SiteSettings:
    node = context.node_config
    site_id = int(node.get("partition-id", 0))
    name = str(node.get("site-name", f"site-{site_id}"))
    if "state-dir" in node:
        root = Path(str(node["state-dir"]))
        paths = SitePaths(root, root / f"{name}{keys.PUBLIC_SUFFIX}")
    else:
        paths = simulation_paths(Path(cfg.state_path), name)
    budget = Budget(
        float(node.get("budget-epsilon", cfg.budget_epsilon(name))), float(node.get("budget-delta", cfg.delta))
    )
    # A site that sets its own budget only ever trains with DP, whatever the run config says.
    require_dp = bool(node.get("require-dp", "budget-epsilon" in node))
    return SiteSettings(site_id, name, paths, budget, require_dp)


def handle_train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    settings = site_settings(context, cfg)
    site_id, site, paths, budget = settings.site_id, settings.name, settings.paths, settings.budget
    config = msg.content[rk.CONFIG]
    server_round = int(config[rk.SERVER_ROUND])
    job = str(config.get(rk.JOB_ID, f"run-{context.run_id}"))
    meta = _dataset_meta(context, cfg)
    ledger = SiteLedger(paths, site)
    released = ledger.released(job, server_round)
    if released is not None:
        # A restarted server asks again for a round this site already answered: send the same
        # update again (re-releasing it costs no privacy) rather than training and spending twice.
        return _resend(msg, paths, released, site_id, site)
    entry_common = {
        "job": job,
        "server_round": server_round,
        "dataset": meta.fingerprint,
        "records": meta.records,
        "budget": {"epsilon": budget.epsilon, "delta": budget.delta},
    }

    def refuse(reason: str, spent: float, *, reported: float | None = None) -> Message:
        """Record the refusal in the ledger (with ``spent``), then reply with it."""
        ledger.record_refusal(**entry_common, reason=reason, spent=spent)
        return _refusal(msg, site_id, site, reason, spent if reported is None else reported)

    def spent_so_far() -> float:
        return epsilon(ledger.spend(meta.fingerprint).events, delta=budget.delta)

    server_base = str(config.get(rk.FROZEN_SHA256, ""))
    own_base = spec_frozen_sha256(model_spec(cfg), cfg.seed)
    if server_base != own_base:
        # LoRA adapters trained on another base model would be meaningless to the server.
        reason = (
            f"this site's frozen base model (sha256 {own_base[:12] or 'none'}) differs from the server's "
            f"({server_base[:12] or 'none'}); check pretrained-path on both sides"
        )
        return refuse(reason, spent_so_far())
    plan = _plan(cfg)
    history: list[DpSgdEvent] = []
    privacy = None
    planned_epsilon = float("nan")
    if settings.require_dp and not cfg.dp:
        reason = "this site only trains with differential privacy; the job asked for none"
        return refuse(reason, spent_so_far(), reported=float("nan"))
    if cfg.dp:
        # The veto: decided from the ledger and the planned mechanism, before the data is read.
        spend = ledger.spend(meta.fingerprint)
        history = spend.events
        if spend.non_private_jobs:
            reason = f"budget void: job {spend.non_private_jobs[0]} released updates from this dataset without DP"
            return refuse(reason, float("inf"))
        sigma = _noise_multiplier(cfg, ledger, meta, job, budget, context)
        sample_rate, steps = sampling(meta.records, plan)
        decision = decide(history, DpSgdEvent(sigma, sample_rate, steps) if sigma else None, budget)
        if not decision.allowed:
            return refuse(decision.reason, decision.spent)
        privacy = PrivacyPlan(sigma, cfg.max_grad_norm, cfg.grad_sample_mode)
        planned_epsilon = decision.after

    model = _global_model(msg, cfg)
    train = _node_site(context, cfg).train
    seed = (cfg.seed * 1_000_003 + site_id * 1_009 + server_round) % 2**31
    result = train_local(model, train, plan, privacy=privacy, seed=seed)
    names = exchanged_keys(model)
    update_sha256 = arrays_sha256(zip(names, result.weights, strict=True))
    metrics: dict[str, float | int] = {
        rk.NUM_EXAMPLES: result.num_examples,
        rk.SITE_ID: site_id,
        # No training loss: it is computed from the training records without noise, so
        # releasing it would leak outside the DP guarantee.
    }
    spent = float("nan")
    if result.event is not None:
        history = [*history, result.event]
        # The trainer checks that the event run is the event planned, so the veto's figure
        # for "after" is exactly the composition of the updated history.
        spent = planned_epsilon
        metrics |= {
            rk.EPSILON: spent,
            rk.DELTA: budget.delta,
            rk.DP_STEPS: sum(e.steps for e in history),
            rk.NOISE_MULTIPLIER: result.event.noise_multiplier,
            rk.SAMPLE_RATE: result.event.sample_rate,
        }
    # Durably on disk before the update leaves the site.
    ledger.record_training(
        **entry_common,
        event=result.event,
        max_grad_norm=cfg.max_grad_norm,
        delta=budget.delta,
        epsilon=spent,
        update_sha256=update_sha256,
    )
    arrays = ArrayRecord({k: torch.as_tensor(w) for k, w in zip(names, result.weights, strict=True)})
    report = ConfigRecord({rk.SITE_NAME: site, rk.UPDATE_SHA256: update_sha256})
    torch.save(
        {"job": job, "round": server_round, "names": names, "weights": result.weights, "metrics": metrics},
        paths.last_update,
    )
    return Message(
        RecordDict({rk.ARRAYS: arrays, rk.METRICS: MetricRecord(metrics), rk.SITE_REPORT: report}), reply_to=msg
    )


def handle_evaluate(msg: Message, context: Context, cfg: RunConfig) -> Message:
    site = _node_site(context, cfg)
    loss, accuracy = evaluate(_global_model(msg, cfg), site.val)
    metrics = MetricRecord(
        {rk.NUM_EXAMPLES: len(site.val), rk.SITE_ID: site.site_id, rk.EVAL_LOSS: loss, rk.EVAL_ACCURACY: accuracy}
    )
    return Message(RecordDict({rk.METRICS: metrics}), reply_to=msg)


def make_client_app(cfg: RunConfig | None = None, *, mods: list | None = None) -> ClientApp:
    """A ClientApp bound to ``cfg``, or (``None``) reading it from Flower's run config.

    SecAgg+ (used when the server runs a round with secure aggregation) wraps the same train
    handler; ``mods`` (e.g. simulated attacks) run outside it."""

    def resolve(context: Context) -> RunConfig:
        return cfg if cfg is not None else _config_from_run_config(tuple(sorted(context.run_config.items())))

    def names_for(context: Context) -> list[str]:
        resolved = resolve(context)
        return exchanged_keys(build_model(model_spec(resolved), seed=resolved.seed))

    app = ClientApp(mods=[*(mods or []), secagg_when_asked, make_legacy_fit_adapter(names_for)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, resolve(context))

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, resolve(context))

    return app


app = make_client_app()
