"""Scoring a model on a dataset through its task, and choosing the device (CUDA when present,
else CPU)."""

from __future__ import annotations

import torch
from torch import nn

from common.dataset import Dataset
from common.tasks import Statistics, Task, pooled
from common.tasks.classification import Classification


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def statistics(model: nn.Module, data: Dataset, task: Task, *, device: torch.device | None = None) -> Statistics:
    """The task's additive statistics of ``model`` on ``data`` (exact). Stays at the site: only
    a mechanism's output of these may leave it, unless the records are declared public."""
    device = device or pick_device()
    model = model.to(device).eval()
    x = torch.as_tensor(data.x, device=device)
    y = torch.as_tensor(data.y, device=device)
    parts = [task.statistics(model(x[i : i + 256]), y[i : i + 256]) for i in range(0, len(y), 256)]
    return pooled(parts) if parts else task.zero()


def evaluate(
    model: nn.Module, data: Dataset, task: Task | None = None, *, device: torch.device | None = None
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``data`` (classification: accuracy and loss)."""
    task = task or Classification()
    return task.metrics(statistics(model, data, task, device=device))
