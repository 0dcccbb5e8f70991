"""The ClientApp each site runs.

train: receive the global model, run one round of local DP-SGD on the site's own training
records, append the round's mechanism to the site's privacy history, and reply with the new
weights and the cumulative (epsilon, delta) of everything this site has released so far.
evaluate: score the global model on the site's own held-out validation records.
"""

from __future__ import annotations

import functools

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.dp_trainer import LocalPlan, PrivacyPlan, evaluate, sampling, train_local
from client.privacy_state import load_history, save_history
from common import records as rk
from common.accounting import calibrate_noise, epsilon
from common.config import RunConfig, Strategy
from common.federation import SiteData, model_spec, site_data
from common.models import build_model

_SIGMA_KEY = "fedshield.noise"


@functools.lru_cache(maxsize=4)
def _config_from_run_config(items: tuple) -> RunConfig:
    return RunConfig.from_flat(dict(items), source="run config")


def _node_site(context: Context, cfg: RunConfig) -> SiteData:
    site_id = int(context.node_config["partition-id"])
    num_sites = int(context.node_config["num-partitions"])
    return site_data(cfg, site_id, num_sites)


def _plan(cfg: RunConfig) -> LocalPlan:
    mu = cfg.proximal_mu if cfg.strategy_kind is Strategy.FEDPROX else 0.0
    return LocalPlan(cfg.local_epochs, cfg.batch_size, cfg.learning_rate, proximal_mu=mu)


def _noise_multiplier(cfg: RunConfig, site: SiteData, context: Context) -> float:
    """The site's noise for this job: given directly, or calibrated once (and kept) so that
    all planned rounds together spend at most the target epsilon."""
    if cfg.noise_multiplier > 0:
        return cfg.noise_multiplier
    if _SIGMA_KEY in context.state:
        return float(context.state[_SIGMA_KEY]["sigma"])
    sample_rate, steps = sampling(len(site.train), _plan(cfg))
    sigma = calibrate_noise(
        target_epsilon=cfg.epsilon, delta=cfg.delta, sample_rate=sample_rate, steps=steps * cfg.rounds
    )
    context.state[_SIGMA_KEY] = ConfigRecord({"sigma": sigma})
    return sigma


def _global_model(msg: Message, cfg: RunConfig) -> torch.nn.Module:
    model = build_model(model_spec(cfg), seed=cfg.seed)
    model.load_state_dict(msg.content[rk.ARRAYS].to_torch_state_dict(), strict=True)
    return model


def handle_train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    site = _node_site(context, cfg)
    model = _global_model(msg, cfg)
    server_round = int(msg.content[rk.CONFIG][rk.SERVER_ROUND])
    history = load_history(context.state)
    privacy = PrivacyPlan(_noise_multiplier(cfg, site, context), cfg.max_grad_norm) if cfg.dp else None
    result = train_local(
        model,
        site.train,
        _plan(cfg),
        privacy=privacy,
        seed=(cfg.seed * 1_000_003 + site.site_id * 1_009 + server_round) % 2**31,
    )
    metrics: dict[str, float | int] = {
        rk.NUM_EXAMPLES: result.num_examples,
        rk.SITE_ID: site.site_id,
        # No training loss: it is computed from the training records without noise, so
        # releasing it would leak outside the DP guarantee.
    }
    if result.event is not None:
        history = [*history, result.event]
        save_history(context.state, history)
        metrics |= {
            rk.EPSILON: epsilon(history, delta=cfg.delta),
            rk.DELTA: cfg.delta,
            rk.DP_STEPS: sum(e.steps for e in history),
            rk.NOISE_MULTIPLIER: result.event.noise_multiplier,
            rk.SAMPLE_RATE: result.event.sample_rate,
        }
    keys = list(model.state_dict().keys())
    arrays = ArrayRecord({k: torch.as_tensor(w) for k, w in zip(keys, result.weights, strict=True)})
    return Message(RecordDict({rk.ARRAYS: arrays, rk.METRICS: MetricRecord(metrics)}), reply_to=msg)


def handle_evaluate(msg: Message, context: Context, cfg: RunConfig) -> Message:
    site = _node_site(context, cfg)
    loss, accuracy = evaluate(_global_model(msg, cfg), site.val)
    metrics = MetricRecord(
        {rk.NUM_EXAMPLES: len(site.val), rk.SITE_ID: site.site_id, rk.EVAL_LOSS: loss, rk.EVAL_ACCURACY: accuracy}
    )
    return Message(RecordDict({rk.METRICS: metrics}), reply_to=msg)


def make_client_app(cfg: RunConfig | None = None) -> ClientApp:
    """A ClientApp bound to ``cfg``, or (``None``) reading it from Flower's run config."""
    app = ClientApp()

    def resolve(context: Context) -> RunConfig:
        return cfg if cfg is not None else _config_from_run_config(tuple(sorted(context.run_config.items())))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, resolve(context))

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, resolve(context))

    return app


app = make_client_app()
