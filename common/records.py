"""Names of the records and metrics that travel between server and sites, in one place."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ARRAYS = "arrays"  # ArrayRecord: model weights
CONFIG = "config"  # ConfigRecord: round instructions
METRICS = "metrics"  # MetricRecord: a site's reply

SERVER_ROUND = "server-round"
NUM_EXAMPLES = "num-examples"  # FedAvg weights by this
SITE_ID = "site-id"
# An evaluation reply: the task's additive statistics (noised under DP evaluation), one list of
# floats each under EVAL_STAT_PREFIX + name, and the site's metrics computed from them under
# EVAL_METRIC_PREFIX + name (post-processing; the server pools the statistics, not these).
EVAL_STAT_PREFIX = "eval-stat-"
EVAL_METRIC_PREFIX = "eval-"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
# Privacy accounting of a site (cumulative over every step it has taken in this job):
EPSILON = "epsilon"  # spent, at BUDGET_DELTA
DP_STEPS = "dp-steps"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
# The site's own budget for its data source, as its policy says (keys as in the policy):
BUDGET_EPSILON = "budget-epsilon"
BUDGET_DELTA = "budget-delta"

JOB_ID = "job-id"  # in the train config: the job a round belongs to (ledgers record it)
# In the train config when part of the model is frozen (LoRA): the SHA-256 of the server's
# frozen tensors; a site whose own frozen base differs refuses (its update would not fit).
FROZEN_SHA256 = "frozen-sha256"
REFUSED = "refused"  # metric = 1 when a site vetoed the round
RESENT = "resent"  # metric = 1 when a site answered with the update it had already released
REFUSAL = "refusal"  # ConfigRecord with SITE_NAME and REASON
SITE_REPORT = "site-report"  # ConfigRecord with SITE_NAME and UPDATE_SHA256
SITE_NAME = "site"
REASON = "reason"
UPDATE_SHA256 = "update-sha256"
# In SITE_REPORT (train replies): the site's claim for this round, as a JSON string
# {"mechanism": {...}, "noise": {"source": ...}, "epsilon": e, "delta": d, "source": name,
#  "ledger_seq": n}: exactly what the site wrote in its ledger entry. The server records it
# in its own ledger so that the auditor can check the two ledgers against each other.
CLAIM = "claim"
# An evaluation reply that the site's policy does not allow (no records were read).
EVAL_REFUSED = "eval-refused"


def stats_record(stats: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """A task's statistics as MetricRecord values (flattened lists of floats)."""
    return {EVAL_STAT_PREFIX + k: [float(v) for v in np.asarray(a).ravel()] for k, a in stats.items()}


def stats_from_record(metrics: Mapping[str, object], like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The statistics in a reply, shaped as ``like`` (the task's statistics of no records);
    a missing or mis-sized one is a ValueError naming it."""
    out = {}
    for name, template in like.items():
        value = metrics.get(EVAL_STAT_PREFIX + name)
        array = np.asarray(value if isinstance(value, list) else [value], dtype=np.float64)
        if value is None or array.size != np.asarray(template).size or not np.isfinite(array).all():
            raise ValueError(f"evaluation reply: statistic {name!r} missing, mis-sized or not finite")
        out[name] = array.reshape(np.shape(template))
    return out
