"""Per-example gradients proven, not assumed, for every model family and Opacus mode.

One DP-SGD step with every record in the batch (sample rate 1) and negligible noise must move
the weights by exactly the mean of the per-example gradients, each clipped to the bound, as a
plain loop of one backward pass per record computes them. Text records go through the loop
unpadded, so this also proves that padding changes nothing. (LoRA under Opacus has failed
silently elsewhere: opacus#820.)
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from client.dp_trainer import GRAD_SAMPLE_MODES, LocalPlan, PrivacyPlan, train_local
from common.dataset import Dataset, Modality
from common.evaluation import pick_device
from common.models import ModelKind, ModelSpec, build_model, exchanged_keys
from common.models.transformer import LoraSpec, load_tokenizer
from common.notes import synthetic_notes
from common.privacy.noise import reproducible
from common.text_loaders import text_dataset

DEVICE = pick_device()
MODES = GRAD_SAMPLE_MODES  # hooks, functorch, ew, bk (fedshield book-keeping), auto


def _images(n: int = 6, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    return Dataset(x, rng.integers(0, 3, size=n).astype(np.int64), 3, Modality.IMAGE, "test")


def _texts(model_dir: Path, n: int = 6) -> Dataset:
    table = synthetic_notes(n, seed=1)
    data = text_dataset(table, load_tokenizer(str(model_dir)), max_length=48)
    lengths = (data.x != 0).sum(1)
    assert lengths.min() < lengths.max(), "records of different lengths: padding must be exercised"
    return data


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _brute_force_clipped_mean(model: nn.Module, data: Dataset, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped per-example gradients by a loop (factor min(1, C / (norm + 1e-6)), as Opacus);
    returns (mean of the clipped gradients, per-example norms)."""
    model = model.to(DEVICE).train()
    clipped, norms = [], []
    for i in range(len(data)):
        model.zero_grad()
        x = torch.as_tensor(data.x[i : i + 1], device=DEVICE)
        if data.modality is Modality.TEXT:
            x = x[:, : int((x != 0).sum())]  # the record alone, without padding
        nn.functional.cross_entropy(model(x), torch.as_tensor(data.y[i : i + 1], device=DEVICE)).backward()
        g = torch.cat([p.grad.reshape(-1) for p in _trainable(model)])
        norms.append(g.norm())
        clipped.append(g * torch.clamp(bound / (g.norm() + 1e-6), max=1.0))
    return torch.stack(clipped).sum(0) / len(data), torch.stack(norms)


def _check_one_private_step(model: nn.Module, data: Dataset, mode: str, bound: float) -> None:
    plan = LocalPlan(local_epochs=1, batch_size=len(data), learning_rate=1.0)
    keys = exchanged_keys(model)
    state = model.state_dict()
    before = torch.cat([state[k].reshape(-1).float() for k in keys]).to(DEVICE)
    result = train_local(
        model, data, plan, privacy=PrivacyPlan(1e-9, bound, mode), randomness=reproducible(0), device=DEVICE
    )
    after = torch.cat([torch.as_tensor(w, device=DEVICE).reshape(-1) for w in result.weights])
    update = before - after

    expected, norms = _brute_force_clipped_mean(copy.deepcopy(model), data, bound)
    assert (norms > bound).all(), "the test must exercise clipping: every gradient above the bound"
    torch.testing.assert_close(update, expected, atol=2e-6, rtol=2e-4)
    unclipped, _ = _brute_force_clipped_mean(copy.deepcopy(model), data, float("inf"))
    assert not torch.allclose(update, unclipped, atol=1e-4), "clipping skipped"


def _resnet() -> nn.Module:
    model = build_model(ModelSpec(ModelKind.RESNET, (1, 8, 8), 3, width=4), seed=2)
    for module in model.modules():  # break the identity-at-init so every layer has gradient
        if isinstance(module, nn.GroupNorm):
            nn.init.normal_(module.weight, 1.0, 0.3)
    return model


@pytest.mark.parametrize("mode", MODES)
def test_resnet_every_opacus_mode_matches_brute_force(mode: str) -> None:
    model = _resnet()
    assert ModuleValidator.validate(model, strict=True) == []
    _check_one_private_step(model, _images(), mode, bound=0.05)


@pytest.mark.parametrize("mode", MODES)
def test_transformer_full_fine_tune_matches_brute_force(tiny_text_model: Path, mode: str) -> None:
    spec = ModelSpec(ModelKind.TRANSFORMER, (48,), 4, pretrained_path=str(tiny_text_model), random_init=True)
    model = build_model(spec, seed=0)
    assert exchanged_keys(model) == list(model.state_dict().keys())
    _check_one_private_step(model, _texts(tiny_text_model), mode, bound=0.05)


@pytest.mark.parametrize("mode", MODES)
def test_lora_matches_brute_force_and_only_adapters_and_head_travel(tiny_text_model: Path, mode: str) -> None:
    spec = ModelSpec(
        ModelKind.TRANSFORMER, (48,), 4, pretrained_path=str(tiny_text_model), random_init=True, lora=LoraSpec(rank=2)
    )
    model = build_model(spec, seed=0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would hide A's gradient from the check
            nn.init.normal_(p, 0.0, 0.5)
    keys = exchanged_keys(model)
    assert keys and all("lora_" in k or k.startswith("head.") for k in keys)
    assert any(k.startswith("head.") for k in keys) and any("lora_A" in k for k in keys)
    total = sum(t.numel() for t in model.state_dict().values())
    assert sum(model.state_dict()[k].numel() for k in keys) < 0.2 * total
    _check_one_private_step(model, _texts(tiny_text_model), mode, bound=0.05)


# ---- token classification: one record (a sentence) is one example -------------------------------


def _tagged(model_dir: Path, n: int = 6) -> Dataset:
    from common.data.entities import ENTITY_TAGS, synthetic_entity_notes
    from common.data.tagged import tokenize_tagged

    data = tokenize_tagged(synthetic_entity_notes(n, seed=2), load_tokenizer(str(model_dir)), max_length=48,
                           tags=ENTITY_TAGS)  # fmt: skip
    lengths = (data.x != 0).sum(1)
    assert lengths.min() < lengths.max(), "records of different lengths: padding must be exercised"
    return data


def _tagger_check(model: nn.Module, data: Dataset, mode: str, bound: float) -> None:
    from common.data.entities import ENTITY_TAGS
    from common.tasks.token_classification import TokenClassification, token_mean_loss

    task = TokenClassification(ENTITY_TAGS)
    plan = LocalPlan(local_epochs=1, batch_size=len(data), learning_rate=1.0)
    keys = exchanged_keys(model)
    before = torch.cat([model.state_dict()[k].reshape(-1).float() for k in keys]).to(DEVICE)
    result = train_local(
        model, data, plan, privacy=PrivacyPlan(1e-9, bound, mode), randomness=reproducible(0), task=task, device=DEVICE
    )
    update = before - torch.cat([torch.as_tensor(w, device=DEVICE).reshape(-1) for w in result.weights])

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # the record's mean over its words
        return token_mean_loss(m(x), y).sum()

    expected, norms = _brute_force(copy.deepcopy(model), data, bound, loss)
    assert (norms > bound).all(), "the test must exercise clipping: every gradient above the bound"
    torch.testing.assert_close(update, expected, atol=2e-6, rtol=2e-4)


def _brute_force(model: nn.Module, data: Dataset, bound: float, loss) -> tuple[torch.Tensor, torch.Tensor]:
    model = model.to(DEVICE).train()
    clipped, norms = [], []
    for i in range(len(data)):
        model.zero_grad()
        x = torch.as_tensor(data.x[i : i + 1], device=DEVICE)
        x = x[:, : int((x != 0).sum())]  # the record alone, without padding
        loss(model, x, torch.as_tensor(data.y[i : i + 1], device=DEVICE)).backward()
        g = torch.cat([p.grad.reshape(-1) for p in _trainable(model)])
        norms.append(g.norm())
        clipped.append(g * torch.clamp(bound / (g.norm() + 1e-6), max=1.0))
    return torch.stack(clipped).sum(0) / len(data), torch.stack(norms)


@pytest.mark.parametrize("mode", MODES)
def test_token_tagger_full_fine_tune_matches_brute_force(tiny_tagger_model: Path, mode: str) -> None:
    spec = ModelSpec(ModelKind.TRANSFORMER, (48,), 7, pretrained_path=str(tiny_tagger_model), random_init=True,
                     per_token=True)  # fmt: skip
    model = build_model(spec, seed=0)
    data = _tagged(tiny_tagger_model)
    assert model(torch.as_tensor(data.x[:2])).shape[-1] == 7  # a score vector per token
    _tagger_check(model, data, mode, bound=0.05)


@pytest.mark.parametrize("mode", MODES)
def test_token_tagger_lora_matches_brute_force(tiny_tagger_model: Path, mode: str) -> None:
    spec = ModelSpec(ModelKind.TRANSFORMER, (48,), 7, pretrained_path=str(tiny_tagger_model), random_init=True,
                     lora=LoraSpec(rank=2), per_token=True)  # fmt: skip
    model = build_model(spec, seed=0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, 0.0, 0.5)
    keys = exchanged_keys(model)
    assert keys and all("lora_" in k or k.startswith("head.") for k in keys)
    _tagger_check(model, _tagged(tiny_tagger_model), mode, bound=0.05)
