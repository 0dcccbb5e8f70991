"""Scoring a model on a dataset, and choosing the device (CUDA when present, else CPU)."""

from __future__ import annotations

import torch
from torch import nn

from common.dataset import Dataset


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, device: torch.device | None = None) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``data``."""
    device = device or pick_device()
    model = model.to(device).eval()
    x = torch.as_tensor(data.x, device=device)
    y = torch.as_tensor(data.y, device=device)
    loss_sum, correct = 0.0, 0
    for i in range(0, len(y), 256):
        logits = model(x[i : i + 256])
        loss_sum += float(nn.functional.cross_entropy(logits, y[i : i + 256], reduction="sum"))
        correct += int((logits.argmax(1) == y[i : i + 256]).sum())
    return loss_sum / len(y), correct / len(y)


@torch.no_grad()
def per_example(
    model: nn.Module, data: Dataset, *, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-example cross-entropy losses, per-example correctness) of ``model`` on ``data``, on
    the CPU. Stays at the site: only a mechanism's output of these may leave it."""
    device = device or pick_device()
    model = model.to(device).eval()
    x = torch.as_tensor(data.x, device=device)
    y = torch.as_tensor(data.y, device=device)
    losses, correct = [], []
    for i in range(0, len(y), 256):
        logits = model(x[i : i + 256])
        losses.append(nn.functional.cross_entropy(logits, y[i : i + 256], reduction="none").cpu())
        # A record whose logits are not finite counts as wrong (never as a NaN).
        correct.append(((logits.argmax(1) == y[i : i + 256]) & torch.isfinite(logits).all(1)).cpu())
    return torch.cat(losses), torch.cat(correct)
