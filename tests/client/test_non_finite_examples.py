"""The NaN oracle: a server crafts a global model that overflows on one record only. Without a
per-example rule the NaN passes clipping and the whole update is NaN exactly when that record
was sampled (a noise-free membership bit). With it, the record contributes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.dp_trainer import GRAD_SAMPLE_MODES, LocalPlan, PrivacyPlan, train_local
from common.dataset import Dataset, Modality
from common.models import ModelKind, ModelSpec, build_model
from common.privacy.noise import reproducible

CPU = torch.device("cpu")


def _data(with_target: bool) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(40, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    if with_target:  # appended last, so the other records' Poisson draws are unchanged
        x = np.vstack([x, np.full((1, 6), np.inf, dtype=np.float32)])  # as if the model overflowed on it
        y = np.append(y, 1)
    return Dataset(x, y, 2, Modality.TABULAR, "test")


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_a_record_that_overflows_contributes_nothing(mode: str) -> None:
    model = build_model(ModelSpec(ModelKind.MLP, (6,), 2, hidden=(8,)), seed=0)
    plan = LocalPlan(local_epochs=1, batch_size=45, learning_rate=0.5)  # q = 1, one step, 40 or 41 records
    privacy = PrivacyPlan(1e-9, 1.0, mode)  # noise negligible: the data decides
    start = [p.detach().numpy().copy() for p in model.parameters()]
    with_target = train_local(model, _data(True), plan, privacy=privacy, randomness=reproducible(3), device=CPU)
    without = train_local(model, _data(False), plan, privacy=privacy, randomness=reproducible(3), device=CPU)
    for w0, a, b in zip(start, with_target.weights, without.weights, strict=True):
        assert np.isfinite(a).all(), f"{mode}: the overflowing record made the update non-finite"
        # The same clipped sum; only the mean's divisor (the expected batch, n * q) differs.
        np.testing.assert_allclose((a - w0) * 41, (b - w0) * 40, atol=1e-5)
