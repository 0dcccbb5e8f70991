"""The DP trainer: clipping checked against brute force, noise present, models DP-compatible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from client.dp_trainer import GRAD_SAMPLE_MODES, LocalPlan, PrivacyPlan, get_weights, sampling, train_local
from common.dataset import Dataset, Modality
from common.evaluation import pick_device
from common.models import ModelKind, ModelSpec, build_model
from common.privacy.accounting import DpSgdEvent
from common.privacy.noise import reproducible

DEVICE = pick_device()


def _tabular(n: int = 24, d: int = 6, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) * 3.0
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return Dataset(x, y, 2, Modality.TABULAR, "test")


def _images(n: int = 16, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 3, size=n).astype(np.int64)
    return Dataset(x, y, 3, Modality.IMAGE, "test")


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _brute_force_clipped_mean(model: nn.Module, data: Dataset, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example gradients by a plain loop (one backward per record), each clipped to
    ``bound`` as Opacus does (factor min(1, C / (norm + 1e-6))); returns (mean of clipped,
    per-example norms)."""
    model = model.to(DEVICE)
    clipped, norms = [], []
    for i in range(len(data)):
        model.zero_grad()
        x = torch.as_tensor(data.x[i : i + 1], device=DEVICE)
        y = torch.as_tensor(data.y[i : i + 1], device=DEVICE)
        nn.functional.cross_entropy(model(x), y).backward()
        g = _flat([p.grad for p in model.parameters()])
        norm = g.norm()
        norms.append(norm)
        clipped.append(g * torch.clamp(bound / (norm + 1e-6), max=1.0))
    return torch.stack(clipped).sum(0) / len(data), torch.stack(norms)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
@pytest.mark.parametrize("kind, data", [(ModelKind.MLP, _tabular()), (ModelKind.CNN, _images())], ids=["mlp", "cnn"])
def test_update_equals_brute_force_clipped_mean(kind: ModelKind, data: Dataset, mode: str) -> None:
    spec = ModelSpec(kind, data.record_shape, data.num_classes, hidden=(8,), channels=(4, 8))
    model = build_model(spec, seed=3)
    bound = 0.05
    # batch >= n: sample rate 1, one step, every record in the batch; noise negligible.
    plan = LocalPlan(local_epochs=1, batch_size=len(data), learning_rate=1.0)
    before = _flat([p.detach().clone().to(DEVICE) for p in model.parameters()])
    privacy = PrivacyPlan(1e-9, bound, mode)
    result = train_local(model, data, plan, privacy=privacy, randomness=reproducible(0), device=DEVICE)
    after = torch.cat([torch.as_tensor(w, device=DEVICE).reshape(-1) for w in result.weights])
    update = before - after  # = lr * (sum of clipped per-example gradients) / n

    expected, norms = _brute_force_clipped_mean(build_model(spec, seed=3), data, bound)
    assert (norms > bound).all(), "test must exercise clipping: every gradient larger than the bound"
    torch.testing.assert_close(update, expected, atol=1e-6, rtol=1e-4)
    # Each clipped per-example gradient has norm <= bound, so their mean does too.
    assert update.norm() <= bound * (1 + 1e-5)
    # The unclipped mean is different: this test fails if clipping were skipped.
    unclipped, _ = _brute_force_clipped_mean(build_model(spec, seed=3), data, float("inf"))
    assert not torch.allclose(update, unclipped, atol=1e-4)


def test_noise_present_and_seeded() -> None:
    data = _tabular()
    model = build_model(ModelSpec(ModelKind.MLP, (6,), 2, hidden=(8,)), seed=0)
    plan = LocalPlan(local_epochs=1, batch_size=8, learning_rate=0.5)
    privacy = PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0)
    a = train_local(model, data, plan, privacy=privacy, randomness=reproducible(1), device=DEVICE).weights
    b = train_local(model, data, plan, privacy=privacy, randomness=reproducible(2), device=DEVICE).weights
    a2 = train_local(model, data, plan, privacy=privacy, randomness=reproducible(1), device=DEVICE).weights
    assert any(not np.allclose(x, y) for x, y in zip(a, b, strict=True)), "two seeds gave the same update"
    assert all(np.array_equal(x, y) for x, y in zip(a, a2, strict=True)), "same seed must reproduce"


def test_event_records_the_mechanism_as_run() -> None:
    data = _tabular(n=50)
    plan = LocalPlan(local_epochs=2, batch_size=10, learning_rate=0.1)
    model = build_model(ModelSpec(ModelKind.MLP, (6,), 2), seed=0)
    result = train_local(model, data, plan, privacy=PrivacyPlan(1.3, 0.7), randomness=reproducible(0), device=DEVICE)
    assert sampling(50, plan) == (0.2, 10)
    assert result.event == DpSgdEvent(noise_multiplier=1.3, sample_rate=0.2, steps=10)


def test_input_model_is_not_modified() -> None:
    model = build_model(ModelSpec(ModelKind.MLP, (6,), 2), seed=0)
    before = get_weights(model)
    train_local(
        model,
        _tabular(),
        LocalPlan(1, 8, 0.5),
        privacy=PrivacyPlan(1.0, 1.0),
        randomness=reproducible(0),
        device=DEVICE,
    )
    assert all(np.array_equal(x, y) for x, y in zip(before, get_weights(model), strict=True))


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_tiny_sample_rate_handles_empty_batches(mode: str) -> None:
    data = _tabular(n=6)
    plan = LocalPlan(local_epochs=3, batch_size=1, learning_rate=0.1)  # q = 1/6: empty batches are likely
    model = build_model(ModelSpec(ModelKind.MLP, (6,), 2), seed=0)
    result = train_local(
        model, data, plan, privacy=PrivacyPlan(1.0, 1.0, mode), randomness=reproducible(5), device=DEVICE
    )
    assert result.event == DpSgdEvent(1.0, 1 / 6, 18)
    assert all(np.isfinite(w).all() for w in result.weights)


@pytest.mark.parametrize(
    "spec",
    [ModelSpec(ModelKind.MLP, (30,), 2, hidden=(16, 8)), ModelSpec(ModelKind.CNN, (3, 28, 28), 9)],
    ids=["mlp", "cnn"],
)
def test_zoo_models_pass_the_opacus_validator(spec: ModelSpec) -> None:
    assert ModuleValidator.validate(build_model(spec, seed=0), strict=True) == []


def test_batchnorm_model_is_refused() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="not DP-compatible"):
        train_local(
            model,
            _tabular(),
            LocalPlan(1, 8, 0.1),
            privacy=PrivacyPlan(1.0, 1.0),
            randomness=reproducible(0),
            device=DEVICE,
        )


def test_fedprox_term_pulls_towards_the_global_model() -> None:
    data = _tabular()
    model = build_model(ModelSpec(ModelKind.MLP, (6,), 2), seed=0)
    start = np.concatenate([w.ravel() for w in get_weights(model)])

    def drift(mu: float) -> float:
        plan = LocalPlan(local_epochs=3, batch_size=8, learning_rate=0.5, proximal_mu=mu)
        res = train_local(model, data, plan, privacy=PrivacyPlan(0.5, 1.0), randomness=reproducible(0), device=DEVICE)
        return float(np.linalg.norm(np.concatenate([w.ravel() for w in res.weights]) - start))

    assert drift(1.0) < drift(0.0)


def test_non_private_path_has_no_event() -> None:
    model = build_model(ModelSpec(ModelKind.MLP, (6,), 2), seed=0)
    result = train_local(
        model, _tabular(), LocalPlan(1, 8, 0.5), privacy=None, randomness=reproducible(0), device=DEVICE
    )
    assert result.event is None


def test_dropout_is_seeded_too(tmp_path) -> None:
    """Transformers use dropout, which draws from torch's global generator: the trainer seeds it,
    so a site's round is reproducible from its seed (and the caller's generator is untouched)."""
    from conftest import write_tiny_text_model

    from common.models.transformer import load_tokenizer
    from common.notes import synthetic_notes
    from common.text_loaders import text_dataset

    folder = write_tiny_text_model(tmp_path / "bert", dropout=0.3)
    data = text_dataset(synthetic_notes(24, seed=0), load_tokenizer(str(folder)), max_length=32)
    spec = ModelSpec(ModelKind.TRANSFORMER, (32,), 4, pretrained_path=str(folder), random_init=True)
    model = build_model(spec, seed=0)
    plan, privacy = LocalPlan(1, 8, 0.5), PrivacyPlan(1e-9, 1.0)  # noise negligible: dropout decides
    state = torch.random.get_rng_state()
    a = train_local(model, data, plan, privacy=privacy, randomness=reproducible(1), device=DEVICE).weights
    assert torch.equal(torch.random.get_rng_state(), state)
    a2 = train_local(model, data, plan, privacy=privacy, randomness=reproducible(1), device=DEVICE).weights
    b = train_local(model, data, plan, privacy=privacy, randomness=reproducible(2), device=DEVICE).weights
    assert all(np.array_equal(x, y) for x, y in zip(a, a2, strict=True)), "same seed must reproduce"
    assert any(not np.allclose(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("physical", [1, 5, 16])
@pytest.mark.parametrize("kind, data", [(ModelKind.MLP, _tabular()), (ModelKind.CNN, _images())], ids=["mlp", "cnn"])
def test_physical_batches_give_the_brute_force_clipped_mean(kind: ModelKind, data: Dataset, physical: int) -> None:
    """A sampled batch put through the model in chunks of ``physical`` records (the memory
    manager) is clipped example by example as a whole batch is: the update is still the
    brute-force mean of clipped per-example gradients, chunk sizes that divide the batch or not."""
    spec = ModelSpec(kind, data.record_shape, data.num_classes, hidden=(8,), channels=(4, 8))
    bound = 0.05
    plan = LocalPlan(local_epochs=1, batch_size=len(data), learning_rate=1.0, physical_batch=physical)
    before = _flat([p.detach().clone().to(DEVICE) for p in build_model(spec, seed=3).parameters()])
    privacy = PrivacyPlan(1e-9, bound, "auto")  # auto means bk with physical batches
    result = train_local(
        build_model(spec, seed=3), data, plan, privacy=privacy, randomness=reproducible(0), device=DEVICE
    )
    after = torch.cat([torch.as_tensor(w, device=DEVICE).reshape(-1) for w in result.weights])
    expected, norms = _brute_force_clipped_mean(build_model(spec, seed=3), data, bound)
    assert (norms > bound).all()
    torch.testing.assert_close(before - after, expected, atol=1e-6, rtol=1e-4)


def test_physical_batches_change_nothing_but_memory() -> None:
    """Same sampled batches, same secret-free noise (a public seed), same update: chunking only
    changes how many records go through the model at once."""
    data = _tabular(n=40)
    spec = ModelSpec(ModelKind.MLP, data.record_shape, data.num_classes, hidden=(8,))
    privacy = PrivacyPlan(1.1, 0.5, "bk")
    results = []
    for physical in (0, 3):
        plan = LocalPlan(local_epochs=2, batch_size=10, learning_rate=0.5, physical_batch=physical)
        results.append(train_local(build_model(spec, seed=1), data, plan, privacy=privacy, randomness=reproducible(7)))
    assert results[0].event == results[1].event
    for whole, chunked in zip(results[0].weights, results[1].weights, strict=True):
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    plain = [
        train_local(
            build_model(spec, seed=1),
            data,
            LocalPlan(local_epochs=2, batch_size=10, learning_rate=0.5, physical_batch=physical),
            privacy=None,
            randomness=reproducible(7),
        ).weights
        for physical in (0, 4)
    ]
    for whole, chunked in zip(*plain, strict=True):
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_physical_batches_refuse_an_engine_that_would_keep_every_chunk() -> None:
    data = _tabular()
    spec = ModelSpec(ModelKind.MLP, data.record_shape, data.num_classes, hidden=(8,))
    plan = LocalPlan(local_epochs=1, batch_size=8, learning_rate=0.5, physical_batch=4)
    with pytest.raises(ValueError, match="physical batches need grad-sample-mode bk or auto, got 'hooks'"):
        train_local(
            build_model(spec, seed=1), data, plan, privacy=PrivacyPlan(1.0, 1.0, "hooks"), randomness=reproducible(0)
        )
