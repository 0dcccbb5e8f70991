"""Secure aggregation at the site: Flower's SecAgg+ (``secaggplus_mod``) around the site's own
train handler, so the server only ever receives masked vectors whose sum it can unmask.

Flower 1.41 offers SecAgg+ on its legacy path only: the mod speaks the legacy ``fitins`` /
``fitres`` record layout. ``legacy_fit_adapter`` translates that layout to and from the
Message-API handler the site always runs (DP-SGD, budget veto, ledger entry), which is why the
ledger entry is on disk before the masked update leaves. Metrics (epsilon, the update's hash,
a refusal) travel in clear; only the model update is masked. A refusal is sent as a zero
update of weight zero, which adds exactly nothing to the masked sum.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters, fitres_to_recorddict

from common import records as rk

FITINS_PARAMETERS = "fitins.parameters"
FITINS_CONFIG = "fitins.config"
REPORT_PREFIX = "report."

Handler = Callable[[Message, Context], Message]


def secagg_when_asked(msg: Message, ctxt: Context, call_next: Handler) -> Message:
    """Run SecAgg+ only for rounds the server runs with secure aggregation."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content:
        logging.getLogger("flwr").setLevel(logging.INFO)  # the mod logs every stage at DEBUG
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


Mod = Callable[[Message, Context, Handler], Message]


def make_legacy_fit_adapter(names_for: Callable[[Context], list[str]]) -> Mod:
    """The adapter mod; ``names_for`` gives the model's tensor names (the legacy layout has none)."""

    def adapter(msg: Message, ctxt: Context, call_next: Handler) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or FITINS_PARAMETERS not in msg.content:
            return call_next(msg, ctxt)
        names = names_for(ctxt)
        weights = parameters_to_ndarrays(arrayrecord_to_parameters(msg.content[FITINS_PARAMETERS], keep_input=True))
        secagg_configs = msg.content[RECORD_KEY_CONFIGS]
        msg.content = RecordDict(
            {
                rk.ARRAYS: ArrayRecord(
                    array_dict={n: Array(w.astype(np.float32)) for n, w in zip(names, weights, strict=True)}
                ),
                rk.CONFIG: ConfigRecord(dict(msg.content[FITINS_CONFIG])),
            }
        )
        reply = call_next(msg, ctxt)
        msg.content[RECORD_KEY_CONFIGS] = secagg_configs
        content = reply.content
        metrics: dict = dict(content[rk.METRICS])
        if rk.REFUSAL in content:  # weight 0 and a zero vector: adds nothing to the masked sum
            metrics |= {f"{REPORT_PREFIX}{k}": v for k, v in content[rk.REFUSAL].items()}
            update, examples = [np.zeros_like(w, dtype=np.float32) for w in weights], 0
        else:
            metrics |= {f"{REPORT_PREFIX}{k}": v for k, v in content[rk.SITE_REPORT].items()}
            update, examples = content[rk.ARRAYS].to_numpy_ndarrays(), int(metrics[rk.NUM_EXAMPLES])
        fitres = FitRes(
            Status(Code.OK, "ok"),
            ndarrays_to_parameters(update),
            examples,
            {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bytes, bool))},
        )
        return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)

    return adapter
