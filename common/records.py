"""Names of the records and metrics that travel between server and sites, in one place."""

from __future__ import annotations

ARRAYS = "arrays"  # ArrayRecord: model weights
CONFIG = "config"  # ConfigRecord: round instructions
METRICS = "metrics"  # MetricRecord: a site's reply

SERVER_ROUND = "server-round"
NUM_EXAMPLES = "num-examples"  # FedAvg weights by this
SITE_ID = "site-id"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
# Privacy accounting of a site (cumulative over every step it has taken in this job):
EPSILON = "epsilon"
DELTA = "delta"
DP_STEPS = "dp-steps"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
