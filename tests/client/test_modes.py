"""grad-sample-mode = auto: the fastest working Opacus mode for a model shape, measured once
and cached; the choice is one of the modes proven against brute force, and a user's own
choice is used as given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client import modes
from client.dp_trainer import LocalPlan, PrivacyPlan, train_local
from common.dataset import Dataset, Modality
from common.models import ModelKind, ModelSpec, build_model
from common.privacy.noise import reproducible


def _data(n: int = 32) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(rng.random((n, 10), dtype=np.float32), rng.integers(0, 2, n), 2, Modality.TABULAR, "t")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSHIELD_CACHE", str(tmp_path))


def test_auto_measures_once_per_shape_and_then_reads_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(ModelSpec(ModelKind.MLP, (10,), 2, hidden=(8,)), seed=0)
    measured: list[int] = []
    real = modes.measure
    monkeypatch.setattr(modes, "measure", lambda *a, **k: measured.append(1) or real(*a, **k))
    device = torch.device("cpu")
    first = modes.choose(model, _data(), 16, device)
    assert first in modes.CONCRETE and measured == [1]
    entry = json.loads(modes.cache_path().read_text())[modes.shape_key(model, 16, device)]
    assert entry["mode"] == first
    assert all(t is None or t > 0 for t in entry["seconds_per_step"].values())
    assert modes.choose(model, _data(), 16, device) == first and measured == [1]  # cached
    other = build_model(ModelSpec(ModelKind.MLP, (10,), 2, hidden=(12,)), seed=0)
    modes.choose(other, _data(), 16, device)
    assert measured == [1, 1]  # another shape is measured on its own


def test_a_mode_that_fails_on_the_model_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(ModelSpec(ModelKind.MLP, (10,), 2), seed=0)
    monkeypatch.setattr(modes, "measure", lambda *a, **k: {"hooks": None, "functorch": 0.5, "ew": None, "bk": 0.9})
    assert modes.choose(model, _data(), 16, torch.device("cpu")) == "functorch"


def test_auto_trains_like_the_mode_it_chose() -> None:
    """The same seeds, the same update: auto is one of the concrete modes, nothing more."""
    model = build_model(ModelSpec(ModelKind.MLP, (10,), 2, hidden=(8,)), seed=1)
    data, plan = _data(), LocalPlan(local_epochs=1, batch_size=8, learning_rate=0.5)
    chosen = modes.choose(model, data, plan.batch_size, torch.device("cpu"))
    auto = train_local(model, data, plan, privacy=PrivacyPlan(1.0, 1.0, "auto"), randomness=reproducible(3))
    fixed = train_local(model, data, plan, privacy=PrivacyPlan(1.0, 1.0, chosen), randomness=reproducible(3))
    for a, b in zip(auto.weights, fixed.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert auto.event == fixed.event


def test_modes_that_would_hold_every_example_gradient_beyond_memory_are_not_tried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A site's process must not be killed by the measurement itself: at MiniLM-L6's batch of 64
    the per-example modes need 5.8 GB per gradient copy, and a CPU out of memory kills the process
    (seen in the benchmark). With little memory free only the modes without them are tried."""
    model = build_model(ModelSpec(ModelKind.MLP, (10,), 2, hidden=(8,)), seed=0)
    trainable = sum(p.numel() * 4 for p in model.parameters())
    monkeypatch.setattr(modes, "_free_memory", lambda _device: 64 * trainable)  # a quarter: 16 gradients, not 2 x 16
    timings = modes.measure(model, _data(), 16, torch.device("cpu"))
    assert all(timings[m] is None for m in modes.PER_EXAMPLE_MODES)
    assert timings["bk"] is not None and "ghost" not in timings  # refused: never measured, never chosen
