"""What a site does with the server's messages: the handlers behind the ClientApp
(:mod:`client.app`, which imports this module only when a message needs it).

train: under the site's ledger lock, read the site's spend on its data source back from its
ledger and decide (the veto) whether the planned round fits the site's own budget, before
touching the records; if it does, reserve the round's spend in the ledger (fsync-ed), run one
round of local DP-SGD with secret noise, write the signed ledger entry with the update's hash,
and only then reply with the new weights and the site's claim (mechanism, noise source,
cumulative epsilon at the site's delta). A round already answered is answered again with the
same update, never retrained.
evaluate: only what the site's policy allows: nothing (the default), a Gaussian-noised count
charged to the same budget, or exact metrics the site declared public.

The site's policy (:mod:`common.privacy.policy`) is the site's: the server's run config can
ask for less (a smaller epsilon for the job), never for more.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from client import last_update
from client.blas import one_blas_thread
from client.budget import Budget, decide
from client.canaries import CanaryPlan, archive_round, input_records, site_plan
from client.dp_trainer import LocalPlan, PrivacyPlan, get_weights, sampling, train_local
from client.site_ledger import SiteLedger, SitePaths, simulation_paths
from common import array_record, profiling
from common import records as rk
from common.config import RunConfig, Strategy
from common.crypto import keys
from common.errors import ConfigError, FedshieldError
from common.federation import SiteData, class_names, local_site_data, model_spec, site_data
from common.hashing import arrays_sha256, salted_fingerprint
from common.models import MAX_ABS_WEIGHT, ModelKind, build_model, exchanged_keys, load_exchanged, spec_frozen_sha256
from common.privacy import noise
from common.privacy.accounting import DpSgdEvent, calibrate_noise, epsilon
from common.privacy.policy import (
    Evaluation,
    Origin,
    SitePolicy,
    derived_seed,
    from_mapping,
    policy_keys,
    read_policy_file,
    site_secret,
)
from common.tasks import Statistics, Task, flat, task_for, unflat

_SIGMA_KEY = "fedshield.noise"
_SIMULATED_NODE_KEYS = frozenset({"partition-id", "num-partitions"})
_META_KEY = "fedshield.dataset"


@dataclass(frozen=True)
class SiteSettings:
    """Who the site is, where it keeps its state, and its policy (``None`` with ``problem``
    when it has none it can use: the site then refuses everything, failing closed)."""

    site_id: int
    name: str
    paths: SitePaths
    policy: SitePolicy | None
    problem: str = ""
    deployed: bool = False
    secret: bytes = b""


def _simulation_policy(cfg: RunConfig, name: str, secret: bytes) -> SitePolicy:
    """In a simulation the scenario stands in for every site's policy (the researcher plays
    every party); the ledger records ``origin = simulation-scenario``."""
    return SitePolicy(
        epsilon=cfg.policy.budget_of(name),
        delta=cfg.policy.budget_delta,
        require_dp=cfg.privacy.dp,
        data_source=cfg.data.data_path or cfg.data.dataset,
        val_fraction=cfg.policy.val_fraction,
        split_seed=derived_seed(secret, "split"),
        class_names=cfg.data.class_name_list,
        feature_schema=cfg.data.feature_schema,
        evaluation=Evaluation(cfg.policy.evaluation),
        eval_noise_multiplier=cfg.policy.eval_noise_multiplier,
        insecure_reproducible_noise=cfg.policy.insecure_reproducible_noise,
        origin=Origin.SIMULATION,
    )


def site_settings(context: Context, cfg: RunConfig) -> SiteSettings:
    """The site's identity, state folder and policy. A deployed site (its node config names a
    ``state-dir``, ``data-path`` or ``site-policy``) reads its policy from its node config or
    policy file and never from the server; without a budget it has no policy."""
    node = context.node_config
    site_id = int(node.get("partition-id", 0))
    name = str(node.get("site-name", f"site-{site_id}"))
    # Flower gives a simulated node only these two keys; anything else is a site configuring
    # itself, whose policy (and state folder) must never come from the server's run config.
    deployed = bool(set(node) - _SIMULATED_NODE_KEYS)
    if deployed and "state-dir" not in node:
        paths = simulation_paths(Path(cfg.state_path), name)
        problem = f"node config of {name}: no state-dir (the folder for this site's key, ledger and secret)"
        return SiteSettings(site_id, name, paths, None, problem, True, b"")
    if "state-dir" in node:
        root = Path(str(node["state-dir"]))
        paths = SitePaths(root, root / f"{name}{keys.PUBLIC_SUFFIX}")
    else:
        paths = simulation_paths(Path(cfg.state_path), name)
    secret = site_secret(paths.root)
    try:
        if "site-policy" in node:
            path = Path(str(node["site-policy"]))
            policy = from_mapping(read_policy_file(path), source=str(path), secret=secret, origin=Origin.POLICY_FILE)
        elif deployed:
            values = {k: v for k, v in node.items() if k in policy_keys()}
            policy = from_mapping(values, source=f"node config of {name}", secret=secret, origin=Origin.NODE_CONFIG)
        else:
            policy = _simulation_policy(cfg, name, secret)
    except ConfigError as exc:
        return SiteSettings(site_id, name, paths, None, str(exc), deployed, secret)
    return SiteSettings(site_id, name, paths, policy, "", deployed, secret)


def _node_site(context: Context, cfg: RunConfig, policy: SitePolicy) -> SiteData:
    """The site's own records, split into train and validation by the site's own policy: its
    data file in a deployment (node config ``data-path``), or its partition of the
    scenario's data in a simulation."""
    node = context.node_config
    if "data-path" in node:
        return local_site_data(
            cfg,
            str(node["data-path"]),
            val_fraction=policy.val_fraction,
            split_seed=policy.split_seed,
            class_names=policy.class_names,
            feature_schema=policy.feature_schema,
            site_id=int(node.get("partition-id", 0)),
        )
    return site_data(
        cfg,
        int(node.get("partition-id", 0)),
        int(node["num-partitions"]),
        val_fraction=policy.val_fraction,
        split_seed=policy.split_seed,
    )


def _plan(cfg: RunConfig) -> LocalPlan:
    mu = cfg.federation.proximal_mu if cfg.federation.strategy_kind is Strategy.FEDPROX else 0.0
    training = cfg.training
    return LocalPlan(
        training.local_epochs,
        training.batch_size,
        training.learning_rate,
        proximal_mu=mu,
        physical_batch=training.physical_batch_size,
    )


@dataclass(frozen=True)
class DatasetMeta:
    fingerprint: str  # salted with the site's secret: reveals nothing about single records
    records: int  # training records (declared public by the site's policy: FedAvg's weight)


def _dataset_meta(context: Context, cfg: RunConfig, settings: SiteSettings) -> DatasetMeta:
    """The site's dataset fingerprint and size, computed once and kept in the node state, so
    the budget check needs no access to the records."""
    if _META_KEY not in context.state:
        site = _node_site(context, cfg, settings.policy)
        fingerprint = salted_fingerprint(settings.secret, site.train, site.val)
        context.state[_META_KEY] = ConfigRecord({"fingerprint": fingerprint, "records": len(site.train)})
    rec = context.state[_META_KEY]
    return DatasetMeta(str(rec["fingerprint"]), int(rec["records"]))


def _entry_base(job: str, server_round: int, policy: SitePolicy, meta: DatasetMeta) -> dict:
    """The fields every ledger entry of one request carries."""
    return {
        "job": job,
        "server_round": server_round,
        "source": policy.data_source,
        "dataset": meta.fingerprint,
        "records": meta.records,
        "budget": {"epsilon": policy.epsilon, "delta": policy.delta},
    }


def _eval_refusal(site_id: int) -> MetricRecord:
    """An evaluation answer that releases nothing."""
    return MetricRecord({rk.SITE_ID: site_id, rk.EVAL_REFUSED: 1, rk.NUM_EXAMPLES: 0})


def _job_target(cfg: RunConfig, policy: SitePolicy, prior: list[DpSgdEvent]) -> float:
    """The cumulative epsilon this job may reach: the site's lifetime budget, or less when the
    job asks to spend at most ``job-epsilon`` (the job can ask for less, never for more).
    ``prior`` is the source's spend before this job."""
    if not cfg.privacy.job_epsilon:
        return policy.epsilon
    return min(policy.epsilon, epsilon(prior, delta=policy.delta) + cfg.privacy.job_epsilon)


def _planned_evaluations(cfg: RunConfig, policy: SitePolicy) -> list[DpSgdEvent]:
    if policy.evaluation is not Evaluation.DP:
        return []
    return [DpSgdEvent(policy.eval_noise_multiplier, 1.0, 1)] * cfg.federation.rounds


def _noise_multiplier(
    cfg: RunConfig, ledger: SiteLedger, policy: SitePolicy, meta: DatasetMeta, job: str, context: Context
) -> float | None:
    """The site's noise for this job: given directly, or calibrated once per job so that the
    spend of earlier jobs on this data source, all planned rounds of this one and the planned
    DP evaluation releases stay within the job's target. ``None`` when no noise level fits."""
    if cfg.privacy.noise_multiplier > 0:
        return cfg.privacy.noise_multiplier
    cached = context.state.get(_SIGMA_KEY)
    if cached is not None and cached["job"] == job:
        return float(cached["sigma"]) if cached["sigma"] > 0 else None
    sample_rate, steps = sampling(meta.records, _plan(cfg))
    prior = ledger.spend(policy.data_source, exclude_job=job).events
    target = _job_target(cfg, policy, prior)
    try:
        sigma = calibrate_noise(
            target_epsilon=target,
            delta=policy.delta,
            sample_rate=sample_rate,
            steps=steps * cfg.federation.rounds,
            prior=[*prior, *_planned_evaluations(cfg, policy)],
        )
    except (ConfigError, MemoryError):  # MemoryError: a plan too long for the accountant (refused below)
        sigma = 0.0
    context.state[_SIGMA_KEY] = ConfigRecord({"job": job, "sigma": sigma})
    return sigma if sigma > 0 else None


def _randomness(cfg: RunConfig, policy: SitePolicy, site_id: int, server_round: int) -> noise.Randomness:
    if policy.insecure_reproducible_noise:
        return noise.reproducible((cfg.seed * 1_000_003 + site_id * 1_009 + server_round) % 2**31)
    return noise.secret()


@functools.lru_cache(maxsize=2)
def _model_template(cfg: RunConfig) -> torch.nn.Module:
    """The job's model as built from its spec (pretrained weights read once per process)."""
    return build_model(model_spec(cfg), seed=cfg.seed)


def _global_model(msg: Message, cfg: RunConfig) -> torch.nn.Module:
    """A fresh copy of the job's model holding the server's weights."""
    from common.models.clone import clone

    model = clone(_model_template(cfg))
    load_exchanged(model, array_record.to_torch_state_dict(msg.content[rk.ARRAYS]))
    return model


def _refusal(msg: Message, site_id: int, site: str, reason: str, spent: float, budget: Budget | None = None) -> Message:
    """A refusal, with what the site has spent and (when it has a policy) its own budget."""
    values: dict[str, float | int] = {rk.SITE_ID: site_id, rk.REFUSED: 1, rk.EPSILON: spent}
    if budget is not None:
        values |= {rk.BUDGET_EPSILON: budget.epsilon, rk.BUDGET_DELTA: budget.delta}
    metrics = MetricRecord(values)
    refusal = ConfigRecord({rk.SITE_NAME: site, rk.REASON: reason})
    return Message(RecordDict({rk.METRICS: metrics, rk.REFUSAL: refusal}), reply_to=msg)


def _claim(entry: dict) -> str:
    """What the site claims for a released update: exactly its ledger entry's accounting."""
    return json.dumps(
        {
            "mechanism": entry["mechanism"],
            "noise": entry.get("noise"),
            "epsilon": entry.get("epsilon"),
            "delta": entry.get("delta"),
            "source": entry.get("source"),
            "ledger_seq": entry["seq"],
        },
        sort_keys=True,
    )


def _site_report(site: str, entry: dict) -> ConfigRecord:
    return ConfigRecord({rk.SITE_NAME: site, rk.UPDATE_SHA256: entry["update_sha256"], rk.CLAIM: _claim(entry)})


def _resend(msg: Message, paths: SitePaths, entry: dict, site_id: int, site: str) -> Message:
    saved = last_update.load(paths.last_update)
    if (
        saved is None
        or (saved.job, saved.round) != (entry["job"], entry["round"])
        or arrays_sha256(zip(saved.names, saved.weights, strict=True)) != entry["update_sha256"]
    ):
        reason = (
            f"already released an update for job {entry['job']} round {entry['round']}; "
            "it is no longer stored, and training again would spend budget twice"
        )
        return _refusal(msg, site_id, site, reason, float(entry["epsilon"] or 0.0))
    arrays = ArrayRecord({k: torch.as_tensor(w.copy()) for k, w in zip(saved.names, saved.weights, strict=True)})
    return Message(
        RecordDict(
            {
                rk.ARRAYS: arrays,
                rk.METRICS: MetricRecord({**saved.metrics, rk.RESENT: 1}),
                rk.SITE_REPORT: _site_report(site, entry),
            }
        ),
        reply_to=msg,
    )


def _unusable(msg: Message, settings: SiteSettings, job: str, server_round: int) -> Message:
    """No usable policy (or no readable ledger): refuse without reading a record. The refusal
    is written to the ledger when the ledger itself can be opened."""
    reason = f"{settings.name} has no usable privacy policy and will not train: {settings.problem}"
    if settings.deployed and "no state-dir" in settings.problem:
        return _refusal(msg, settings.site_id, settings.name, reason, float("nan"))
    try:
        with settings.paths.locked():
            SiteLedger(settings.paths, settings.name).record_refusal(
                job=job,
                server_round=server_round,
                source="unknown",
                dataset="",
                records=0,
                budget={},
                reason=reason,
                spent=float("nan"),
            )
    except FedshieldError:
        pass  # the ledger is unreadable too: the refusal still goes out
    return _refusal(msg, settings.site_id, settings.name, reason, float("nan"))


def _guarded(handler):
    """A deployed site answers a failure with a generic refusal and keeps the details in its own
    log: an exception's text can quote a record (a label, a cell) and would reach the server
    verbatim. In a simulation (the researcher is every party) errors propagate as they are."""

    @functools.wraps(handler)
    def run(msg: Message, context: Context, cfg: RunConfig) -> Message:
        with one_blas_thread():  # the accountant's BLAS threads would stall torch's (client/blas.py)
            return _run(msg, context, cfg)

    def _run(msg: Message, context: Context, cfg: RunConfig) -> Message:
        if not (set(context.node_config) - _SIMULATED_NODE_KEYS):
            return handler(msg, context, cfg)
        try:
            return handler(msg, context, cfg)
        except Exception:  # noqa: BLE001 (every failure, reported only locally)
            import logging

            logging.getLogger("fedshield.site").exception("request failed (details stay at the site)")
            site = str(context.node_config.get("site-name", "site"))
            site_id = int(context.node_config.get("partition-id", 0))
            reason = f"{site} could not complete this request (details in the site's own log)"
            return _refusal(msg, site_id, site, reason, float("nan"))

    return run


@_guarded
def handle_train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    profiling.start()
    try:
        with profiling.span("client"):
            return _handle_train(msg, context, cfg)
    finally:
        if profiling.enabled():
            server_round = int(msg.content[rk.CONFIG].get(rk.SERVER_ROUND, 0)) if rk.CONFIG in msg.content else 0
            profiling.flush("train", site=int(context.node_config.get("partition-id", 0)), round=server_round)


def _handle_train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    settings = site_settings(context, cfg)
    profiling.lap("site settings")
    config = msg.content[rk.CONFIG]
    server_round = int(config[rk.SERVER_ROUND])
    job = str(config.get(rk.JOB_ID, f"run-{context.run_id}"))
    if settings.policy is None:
        return _unusable(msg, settings, job, server_round)
    with settings.paths.locked():
        try:
            ledger = SiteLedger(settings.paths, settings.name)
            profiling.lap("ledger: open and verify")
        except FedshieldError as exc:
            reason = f"{settings.name} will not train: its ledger cannot be trusted ({exc})"
            return _refusal(msg, settings.site_id, settings.name, reason, float("nan"))
        return _train_locked(msg, context, cfg, settings, ledger, job, server_round)


def _train_locked(
    msg: Message,
    context: Context,
    cfg: RunConfig,
    settings: SiteSettings,
    ledger: SiteLedger,
    job: str,
    server_round: int,
) -> Message:
    policy = settings.policy
    assert policy is not None  # checked by the caller (not input validation)
    site_id, site, paths = settings.site_id, settings.name, settings.paths
    config = msg.content[rk.CONFIG]
    released = ledger.released(job, server_round)
    if released is not None:
        # A restarted server asks again for a round this site already answered: send the same
        # update again (re-releasing it costs no privacy) rather than training and spending twice.
        return _resend(msg, paths, released, site_id, site)
    profiling.lap("ledger: read spend")
    meta = _dataset_meta(context, cfg, settings)
    profiling.lap("data")
    budget = Budget(policy.epsilon, policy.delta)
    spend = ledger.spend(policy.data_source)
    base = _entry_base(job, server_round, policy, meta)
    profiling.lap("ledger: read spend")

    def refuse(reason: str, spent: float, *, reported: float | None = None) -> Message:
        """Record the refusal in the ledger (with ``spent``), then reply with it."""
        ledger.record_refusal(**base, reason=reason, spent=spent)
        return _refusal(msg, site_id, site, reason, spent if reported is None else reported, budget)

    def spent_so_far() -> float:
        return float("inf") if spend.non_private_jobs else epsilon(spend.events, delta=budget.delta)

    server_base = str(config.get(rk.FROZEN_SHA256, ""))
    own_base = spec_frozen_sha256(model_spec(cfg), cfg.seed)
    if server_base != own_base:
        # LoRA adapters trained on another base model would be meaningless to the server.
        reason = (
            f"this site's frozen base model (sha256 {own_base[:12] or 'none'}) differs from the server's "
            f"({server_base[:12] or 'none'}); check pretrained-path on both sides"
        )
        return refuse(reason, spent_so_far())
    if policy.delta > 1.0 / meta.records:
        reason = f"budget delta {policy.delta:g} exceeds 1/n = {1.0 / meta.records:.3g} for {meta.records} records"
        return refuse(reason, spent_so_far())
    renamed = ledger.source_of(meta.fingerprint)
    if renamed is not None and renamed != policy.data_source:
        reason = (
            f"these records were spent under data source {renamed!r}; renaming it {policy.data_source!r} "
            "would not give them a fresh budget"
        )
        return refuse(reason, spent_so_far())
    try:  # the server's model is parsed and checked before anything is reserved or read
        model = _global_model(msg, cfg)
    except (KeyError, RuntimeError, ValueError) as exc:
        return refuse(f"the server's model does not fit this site's ({type(exc).__name__})", spent_so_far())
    weights = [t for t in model.state_dict().values() if t.is_floating_point() and t.numel() > 0]
    if not all(bool(torch.isfinite(t).all()) and float(t.abs().max()) <= MAX_ABS_WEIGHT for t in weights):
        return refuse(f"the server's model has non-finite weights or weights above {MAX_ABS_WEIGHT:g}", spent_so_far())
    profiling.lap("model: build and load")
    plan = _plan(cfg)
    randomness = _randomness(cfg, policy, site_id, server_round)
    if cfg.privacy.simulated_fault and settings.deployed:
        reason = f"the job asks for a simulated fault ({cfg.privacy.simulated_fault}); a deployed site never runs one"
        return refuse(reason, spent_so_far())
    try:
        canaries = _canaries(cfg, settings, job, model)
        canary_records = _canary_records(cfg, canaries)
    except ValueError as exc:
        return refuse(f"audit canaries: {exc}", spent_so_far())
    if policy.require_dp and not cfg.privacy.dp:
        reason = "this site only trains with differential privacy; the job asked for none"
        return refuse(reason, spent_so_far(), reported=float("nan"))
    privacy, reserve, planned_epsilon = None, None, float("nan")
    if cfg.privacy.dp:
        # The veto: decided from the ledger and the planned mechanism, before the data is read.
        if spend.non_private_jobs:
            reason = f"budget void: job {spend.non_private_jobs[0]} released updates from this dataset without DP"
            return refuse(reason, float("inf"))
        profiling.lap("canaries and checks")
        sigma = _noise_multiplier(cfg, ledger, policy, meta, job, context)
        profiling.lap("accountant: calibrate")
        sample_rate, steps = sampling(meta.records, plan)
        # A deployed site also holds the job to what its server asked for (a server-set noise
        # multiplier included): the job's cap, within the site's lifetime budget.
        prior = ledger.spend(policy.data_source, exclude_job=job).events
        profiling.lap("ledger: read spend")
        cap = Budget(_job_target(cfg, policy, prior), budget.delta)
        decision = decide(spend.events, DpSgdEvent(sigma, sample_rate, steps) if sigma else None, cap)
        if not decision.allowed:
            return refuse(decision.reason, decision.spent)
        privacy = PrivacyPlan(
            sigma, cfg.privacy.max_grad_norm, cfg.training.grad_sample_mode, fault=cfg.privacy.simulated_fault
        )
        planned_epsilon = decision.after
        profiling.lap("accountant: epsilon")
        # Spent from this moment: if anything below fails or the site crashes, the ledger
        # still holds this round's spend (a lost update is never a refund).
        reserve = ledger.record_reserve(
            **base,
            event=DpSgdEvent(sigma, sample_rate, steps),
            max_grad_norm=cfg.privacy.max_grad_norm,
            delta=budget.delta,
            epsilon=planned_epsilon,
            noise=randomness.as_record(),
            policy=policy.as_record(),
        )
        profiling.lap("ledger: sign and write")

    train = _node_site(context, cfg, policy).train
    if len(train) != meta.records:
        # The file changed since the round was planned: the reserve stays spent, nothing is
        # released, and the next request plans from the records as they are now.
        del context.state[_META_KEY]
        reason = (
            f"the site's data changed ({meta.records} -> {len(train)} training records) since this round was planned"
        )
        return refuse(reason, float("nan"))
    received = get_weights(model)
    names = exchanged_keys(model)
    task = _task(cfg, policy)
    profiling.lap("data")
    result = train_local(
        model,
        train,
        plan,
        privacy=privacy,
        randomness=randomness,
        task=task,
        canaries=canaries,
        canary_records=canary_records,
        own_model=True,  # built for this request from the server's weights; only its names are used after
    )
    profiling.lap("weights out")
    update_sha256 = arrays_sha256(zip(names, result.weights, strict=True))
    profiling.lap("hash update")
    metrics: dict[str, float | int] = {
        rk.NUM_EXAMPLES: result.num_examples,  # declared public by the site's policy
        rk.SITE_ID: site_id,
        # No training loss: it is computed from the training records without noise, so
        # releasing it would leak outside the DP guarantee.
    }
    if result.event is not None:
        metrics |= {
            rk.EPSILON: planned_epsilon,  # the trainer checked: the event run is the event planned
            # the site's own budget, as its policy says (not the server's guess)
            rk.BUDGET_EPSILON: budget.epsilon,
            rk.BUDGET_DELTA: budget.delta,
            rk.DP_STEPS: spend.sgd_steps + result.event.steps,
            rk.NOISE_MULTIPLIER: result.event.noise_multiplier,
            rk.SAMPLE_RATE: result.event.sample_rate,
        }
    # Durably on disk before the update leaves the site.
    entry = ledger.record_training(
        **base,
        event=result.event,
        max_grad_norm=cfg.privacy.max_grad_norm,
        delta=budget.delta,
        epsilon=planned_epsilon,
        update_sha256=update_sha256,
        noise=randomness.as_record() if result.event is not None else None,
        policy=policy.as_record(),
        reserve=None if reserve is None else int(reserve["seq"]),
        canaries=cfg.privacy.audit_canaries,
    )
    profiling.lap("ledger: sign and write")
    if canaries is not None:  # for the site's own empirical audit: kept at the site, never sent
        archive_round(paths.root, job, server_round, names, received, result.weights)
    arrays = ArrayRecord({k: torch.as_tensor(w) for k, w in zip(names, result.weights, strict=True)})
    last_update.save(paths.last_update, last_update.LastUpdate(job, server_round, names, result.weights, metrics))
    profiling.lap("save update")
    reply = Message(
        RecordDict({rk.ARRAYS: arrays, rk.METRICS: MetricRecord(metrics), rk.SITE_REPORT: _site_report(site, entry)}),
        reply_to=msg,
    )
    profiling.lap("reply")
    return reply


def _canaries(cfg: RunConfig, settings: SiteSettings, job: str, model: torch.nn.Module) -> CanaryPlan | None:
    """The job's gradient canaries at this site (``audit-canaries``), or ``None``."""
    m = cfg.privacy.audit_canaries
    if m == 0:
        return None
    shapes = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    kind = cfg.privacy.audit_canary_kind
    return site_plan(settings.paths.root, settings.name, job, settings.secret, shapes, m, kind)


def _canary_records(cfg: RunConfig, plan: CanaryPlan | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The public records of input canaries, shaped as the model's inputs, or ``None``."""
    if plan is None or plan.kind != "input":
        return None
    spec = model_spec(cfg)
    if spec.kind is ModelKind.TRANSFORMER:
        raise ValueError("input canaries need float features (tables, images); use audit-canary-kind = 'gradient'")
    return input_records(plan.site, plan.job, plan.size, spec.input_shape, spec.num_classes)


def _task(cfg: RunConfig, policy: SitePolicy) -> Task:
    """The job's task over this site's classes (its policy's class-names, when it names them:
    the positive class of binary-risk is then the site's own)."""
    return task_for(cfg, policy.class_names or class_names(cfg))


# Evaluation releases the task's additive statistics (common/tasks): each bounded per record,
# with L2 sensitivity ``task.sensitivity`` under add/remove-one, noised as one Gaussian mechanism.


@_guarded
def handle_evaluate(msg: Message, context: Context, cfg: RunConfig) -> Message:
    settings = site_settings(context, cfg)
    policy = settings.policy
    if policy is None or policy.evaluation is Evaluation.OFF:
        return Message(RecordDict({rk.METRICS: _eval_refusal(settings.site_id)}), reply_to=msg)
    config = msg.content.get(rk.CONFIG) or ConfigRecord({})
    job = str(config.get(rk.JOB_ID, f"run-{context.run_id}"))
    server_round = int(config.get(rk.SERVER_ROUND, 0))
    with settings.paths.locked():
        ledger = SiteLedger(settings.paths, settings.name)
        return _evaluate_locked(msg, context, cfg, settings, ledger, job, server_round)


def _evaluate_locked(
    msg: Message,
    context: Context,
    cfg: RunConfig,
    settings: SiteSettings,
    ledger: SiteLedger,
    job: str,
    server_round: int,
) -> Message:
    from common.evaluation import statistics

    policy = settings.policy
    assert policy is not None
    meta = _dataset_meta(context, cfg, settings)
    budget = Budget(policy.epsilon, policy.delta)
    spend = ledger.spend(policy.data_source)
    base = _entry_base(job, server_round, policy, meta)
    task = _task(cfg, policy)
    if policy.evaluation is Evaluation.DP:
        event = DpSgdEvent(policy.eval_noise_multiplier, 1.0, 1)
        decision = decide(spend.events, event, budget)
        if spend.non_private_jobs or not decision.allowed:
            ledger.record_refusal(**base, reason=f"evaluation: {decision.reason}", spent=decision.spent)
            return Message(RecordDict({rk.METRICS: _eval_refusal(settings.site_id)}), reply_to=msg)
        randomness = _randomness(cfg, policy, settings.site_id, server_round)
        ledger.record_evaluation(
            **base,
            noise_multiplier=policy.eval_noise_multiplier,
            delta=budget.delta,
            epsilon=decision.after,
            noise=randomness.as_record(),
            released=list(rk.stats_record(task.zero())),
        )
    else:
        ledger.record_evaluation(
            **base, noise_multiplier=None, delta=budget.delta, epsilon=None, noise=None, released=["all"]
        )
    val = _node_site(context, cfg, policy).val
    stats = statistics(_global_model(msg, cfg), val, task)
    if policy.evaluation is Evaluation.DP:
        stats = noised_statistics(stats, task, policy.eval_noise_multiplier, randomness.sampling_generator())
    metrics = MetricRecord(
        {
            # Under DP, the noised count (the statistics' own): the exact number of validation
            # records is not released. Flower's strategies weight by this key.
            rk.NUM_EXAMPLES: max(int(round(task.count(stats))), 0),
            rk.SITE_ID: settings.site_id,
            **rk.stats_record(stats),
            # post-processing of what is released above
            **{rk.EVAL_METRIC_PREFIX + k: v for k, v in task.metrics(stats).items()},
        }
    )
    return Message(RecordDict({rk.METRICS: metrics}), reply_to=msg)


def noised_statistics(stats: Statistics, task: Task, noise_multiplier: float, gen: torch.Generator) -> Statistics:
    """The Gaussian mechanism on all of ``stats`` at once: std ``noise_multiplier *
    task.sensitivity`` per coordinate, from the site's secret generator. Each coordinate is four
    draws summed and halved, in float64 (the floating-point defence used for training noise),
    then rounded (counts to integers, sums to 1/100): the low-order bits of a float say nothing."""
    vector = flat(stats)
    std = noise_multiplier * task.sensitivity
    draws = torch.normal(0.0, std, size=(4, vector.size), generator=gen, dtype=torch.float64).sum(0) / 2
    noisy = unflat(vector + draws.numpy(), stats)
    return {k: np.round(v) if k in task.counts else np.round(v, 2) for k, v in noisy.items()}


SHARED_STATE_FILE = "federation.json"  # written by the harness in the state folder (simulations.harness)


def unshared_state(msg: Message, context: Context, cfg: RunConfig) -> Message | None:
    """A refusal when this machine does not see the simulation's state folder (a Ray cluster
    node without the shared storage): a site there would start a fresh ledger, a fresh budget,
    for training and for a DP evaluation release alike (an evaluation is refused releasing
    nothing: the reason cannot go into a ledger this machine cannot see)."""
    marker = Path(cfg.state_path) / SHARED_STATE_FILE
    if marker.exists():
        return None
    site_id = int(context.node_config.get("partition-id", 0))
    if msg.metadata.message_type == MessageType.EVALUATE:
        return Message(RecordDict({rk.METRICS: _eval_refusal(site_id)}), reply_to=msg)
    reason = (
        f"site-{site_id} cannot see the simulation's state folder {cfg.state_path} on this machine "
        f"(no {SHARED_STATE_FILE}): on a Ray cluster it must be on storage every machine shares"
    )
    return _refusal(msg, site_id, f"site-{site_id}", reason, float("nan"))


def exchanged_names(cfg: RunConfig) -> list[str]:
    """The names of the tensors the site exchanges, in order (SecAgg+'s legacy layout has none)."""
    return exchanged_keys(build_model(model_spec(cfg), seed=cfg.seed))
