"""The ClientApp each site runs (``client.app:app`` in ``pyproject.toml``).

Only the wiring lives here: SecAgg+ around the site's train handler, and the handlers
themselves (:mod:`client.handlers`: the veto, the ledger, DP-SGD, the reply), imported when a
message needs them. A deployed SuperNode starts one ``flwr-clientapp`` process per message, and
a round with secure aggregation is four messages of which only one trains: the other three
(key setup, key shares, unmasking) load this module and Flower's SecAgg+ mod only, without
torch and the DP engines (0.4 s against 2.5 s to import, measured on this project's 2-core
machine; ``tests/client/test_client_app.py`` checks that torch stays out).
"""

from __future__ import annotations

import functools

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.secagg import make_legacy_fit_adapter, secagg_when_asked
from common.config import RunConfig


@functools.lru_cache(maxsize=4)
def _config_from_run_config(items: tuple) -> RunConfig:
    return RunConfig.from_flat(dict(items), source="run config")


def make_client_app(cfg: RunConfig | None = None, *, mods: list | None = None, shared_state: bool = False) -> ClientApp:
    """A ClientApp bound to ``cfg``, or (``None``) reading it from Flower's run config.

    SecAgg+ (used when the server runs a round with secure aggregation) wraps the same train
    handler; ``mods`` (e.g. simulated attacks) run outside it. ``shared_state``: the sites run
    on a Ray cluster and check first that they see the harness's state folder."""

    def resolve(context: Context) -> RunConfig:
        return cfg if cfg is not None else _config_from_run_config(tuple(sorted(context.run_config.items())))

    def names_for(context: Context) -> list[str]:
        from client.handlers import exchanged_names

        return exchanged_names(resolve(context))

    app = ClientApp(mods=[*(mods or []), secagg_when_asked, make_legacy_fit_adapter(names_for)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from client import handlers  # torch and the DP engines: only a message that trains needs them

        resolved = resolve(context)
        if shared_state and (refusal := handlers.unshared_state(msg, context, resolved)) is not None:
            return refusal
        return handlers.handle_train(msg, context, resolved)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        from client import handlers

        resolved = resolve(context)
        if shared_state and (refusal := handlers.unshared_state(msg, context, resolved)) is not None:
            return refusal
        return handlers.handle_evaluate(msg, context, resolved)

    return app


app = make_client_app()
