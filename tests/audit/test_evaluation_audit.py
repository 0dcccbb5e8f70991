"""The audit of evaluation releases: the site's own Gaussian release of its task statistics,
run many times on two neighbouring validation sets. Honest at the recorded noise; a release
that adds less noise than it records is caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.evaluation import audit_release, distinguishing_bound, neighbours
from client.handlers import noised_statistics
from common.dataset import Dataset, Modality
from common.privacy import noise
from common.tasks.classification import Classification


def test_the_distinguishing_bound_is_honest_and_powerful_on_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    n = 40_000
    # Gaussian mechanism, sensitivity 1, sigma 1: (about 4.4, 1e-5)-DP; far apart: no privacy at all
    honest, _ = distinguishing_bound(rng.normal(1, 1, n), rng.normal(0, 1, n), delta=1e-5)
    assert 0 < honest < 4.4
    broken, _ = distinguishing_bound(rng.normal(50, 1, n), rng.normal(0, 1, n), delta=1e-5)
    assert broken > 5
    same, _ = distinguishing_bound(rng.normal(0, 1, n), rng.normal(0, 1, n), delta=1e-5)
    assert same < 0.1


def _site() -> tuple[nn.Module, Dataset, Classification]:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return nn.Linear(5, 2), Dataset(x, y, 2, Modality.TABULAR, "val"), Classification()


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_the_site_release_at_its_recorded_noise_is_consistent(sigma: float) -> None:
    model, val, task = _site()
    exact, without = neighbours(model, val, task)
    result = audit_release(
        exact,
        without,
        lambda s: noised_statistics(s, task, sigma, noise.secret().sampling_generator()),
        noise_multiplier=sigma,
        delta=1e-5,
        trials=6000,
    )
    assert result.epsilon_lower <= result.claimed_epsilon
    assert not result.violation


def test_a_release_with_less_noise_than_recorded_is_a_violation() -> None:
    model, val, task = _site()
    exact, without = neighbours(model, val, task)
    recorded = 2.0
    result = audit_release(
        exact,
        without,
        lambda s: noised_statistics(s, task, recorded / 50, noise.secret().sampling_generator()),
        noise_multiplier=recorded,
        delta=1e-5,
        trials=6000,
    )
    assert result.violation, result


def test_identical_neighbours_are_refused() -> None:
    _, _, task = _site()
    stats = task.zero()
    with pytest.raises(ValueError, match="same statistics"):
        audit_release(stats, stats, lambda s: s, noise_multiplier=1.0, delta=1e-5, trials=10)
