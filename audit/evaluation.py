"""Empirical audit of the evaluation releases: the site's own release code, run many times on
two neighbouring validation sets, must not let a distinguisher tell them apart better than its
epsilon allows.

A site under ``evaluation = "dp"`` releases its task's additive statistics through the Gaussian
mechanism (``client.handlers.noised_statistics``; one release per round, charged to its budget). For
(epsilon, delta)-DP, every set ``S`` of outputs satisfies ``P[M(D) in S] <= e^epsilon P[M(D') in
S] + delta`` for neighbours ``D, D'`` (one record removed). The auditor draws ``trials`` releases
on each, scores each release by its projection on the direction in which the two exact
statistics differ, and for thresholds ``t`` on a fixed grid bounds ``TPR = P[score > t | D]``
from below and ``FPR = P[score > t | D']`` from above (Clopper-Pearson, Bonferroni over the grid,
95% overall): ``epsilon >= ln((TPR_low - delta) / FPR_high)``, the standard distinguishing audit
(Jagielski, Ullman & Oprea 2020, "Auditing Differentially Private Machine Learning: How Private
is Private SGD?", Section 3). It is compared with the epsilon of one release at the site's delta.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from common.dataset import Dataset
from common.privacy.accounting import DpSgdEvent, epsilon
from common.tasks import Statistics, Task, flat

Release = Callable[[Statistics], Statistics]


@dataclass(frozen=True)
class ReleaseAudit:
    epsilon_lower: float  # at confidence 1 - p
    claimed_epsilon: float  # of one release, at ``delta``
    delta: float
    trials: int
    threshold: float

    @property
    def violation(self) -> bool:
        return self.epsilon_lower > self.claimed_epsilon


def distinguishing_bound(
    scores_d: np.ndarray, scores_d2: np.ndarray, *, delta: float, p: float = 0.05, grid: int = 20
) -> tuple[float, float]:
    """(epsilon lower bound, threshold) from scores of releases on ``D`` (``scores_d``) and on
    ``D'``. The ``grid`` thresholds are quantiles of a first half of ``D'``'s scores (a pilot);
    the rates are counted on the second halves only, so the thresholds do not depend on them."""
    scores_d, scores_d2 = np.asarray(scores_d, float), np.asarray(scores_d2, float)
    half = len(scores_d2) // 2
    pilot, test_d2 = scores_d2[:half], scores_d2[half:]
    test_d = scores_d[half:]
    # from the median to the pilot's largest score, denser in the tail (where large epsilons show)
    thresholds = np.quantile(pilot, 1 - np.geomspace(0.5, 1 / max(half, 2), grid))
    alpha = p / (2 * grid)  # two one-sided intervals per threshold
    best, where = 0.0, float("nan")
    n1, n2 = len(test_d), len(test_d2)
    for t in thresholds:
        x, y = int((test_d > t).sum()), int((test_d2 > t).sum())
        tpr_low = float(scipy_stats.beta.ppf(alpha, x, n1 - x + 1)) if x > 0 else 0.0
        fpr_high = float(scipy_stats.beta.ppf(1 - alpha, y + 1, n2 - y)) if y < n2 else 1.0
        if tpr_low - delta > 0 and fpr_high > 0:
            eps = math.log((tpr_low - delta) / fpr_high)
            if eps > best:
                best, where = eps, float(t)
    return best, where


def audit_release(
    exact_d: Statistics,
    exact_d2: Statistics,
    release: Release,
    *,
    noise_multiplier: float,
    delta: float,
    trials: int = 20_000,
    p: float = 0.05,
) -> ReleaseAudit:
    """Run ``release`` ``trials`` times on each of the exact statistics of ``D`` and ``D'``."""
    a, b = flat(exact_d).astype(float), flat(exact_d2).astype(float)
    direction = a - b
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        raise ValueError("the two neighbouring data sets have the same statistics: pick another record")
    direction /= norm
    mid = (a + b) / 2

    def scores(exact: Statistics) -> np.ndarray:
        return np.array([float((flat(release(exact)) - mid) @ direction) for _ in range(trials)])

    lower, threshold = distinguishing_bound(scores(exact_d), scores(exact_d2), delta=delta, p=p)
    claimed = epsilon([DpSgdEvent(noise_multiplier, 1.0, 1)], delta=delta)
    return ReleaseAudit(lower, claimed, delta, trials, threshold)


def neighbours(model, data: Dataset, task: Task, *, candidates: int = 50) -> tuple[Statistics, Statistics]:
    """The exact statistics of ``data`` and of ``data`` without the record (among the first
    ``candidates``) whose removal changes them most: the auditor's choice of neighbour."""
    from common.evaluation import statistics

    full = statistics(model, data, task)
    best, best_norm = None, -1.0
    for i in range(min(candidates, len(data))):
        keep = np.arange(len(data)) != i
        without = statistics(model, dataclasses.replace(data, x=data.x[keep], y=data.y[keep]), task)
        change = float(np.linalg.norm(flat(full) - flat(without)))
        if change > best_norm:
            best, best_norm = without, change
    assert best is not None
    return full, best


@dataclass(frozen=True)
class SiteReleaseAudit:
    site: str
    audit: ReleaseAudit


def audit_run_evaluations(run, *, trials: int = 20_000, p: float = 0.05) -> list[SiteReleaseAudit]:
    """Audit every simulated site's DP evaluation release in ``run`` with the site's own code:
    its validation split rebuilt from its secret, the run's final model, ``noised_statistics``
    with the site's noise multiplier from fresh secret generators. A deployed site runs this
    itself (the auditor does not hold its records)."""
    from pathlib import Path

    import torch

    from client.handlers import _simulation_policy, _task, noised_statistics
    from client.site_ledger import simulation_paths
    from common.federation import model_spec, site_data
    from common.models import build_model, load_exchanged
    from common.privacy import noise
    from common.privacy.policy import Evaluation, site_secret
    from server.predict import run_config
    from server.report import MODEL_FILE

    run = Path(run)
    cfg = run_config(run)
    if Evaluation(cfg.policy.evaluation) is not Evaluation.DP:
        return []
    model = build_model(model_spec(cfg), seed=cfg.seed)
    load_exchanged(model, torch.load(run / MODEL_FILE, map_location="cpu", weights_only=True))
    out = []
    for site_id in range(cfg.federation.sites):
        name = f"site-{site_id}"
        root = simulation_paths(Path(cfg.state_path), name).root
        if not (root / "site.secret").is_file():
            continue
        policy = _simulation_policy(cfg, name, site_secret(root))
        val = site_data(
            cfg, site_id, cfg.federation.sites, val_fraction=policy.val_fraction, split_seed=policy.split_seed
        ).val
        task = _task(cfg, policy)
        exact_d, exact_d2 = neighbours(model, val, task)
        sigma = policy.eval_noise_multiplier

        def release(s: Statistics, task: Task = task, sigma: float = sigma) -> Statistics:
            return noised_statistics(s, task, sigma, noise.secret().sampling_generator())

        result = audit_release(
            exact_d, exact_d2, release, noise_multiplier=sigma, delta=policy.delta, trials=trials, p=p
        )
        out.append(SiteReleaseAudit(name, result))
    return out
