"""The model zoo. Every model here passes Opacus's ``ModuleValidator`` unchanged.

No BatchNorm anywhere: it mixes records inside a batch, which voids per-example clipping.
Normalisation is GroupNorm (images); tabular models need none.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import nn


class ModelKind(StrEnum):
    MLP = "mlp"
    CNN = "cnn"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the same model at the server and at every site."""

    kind: ModelKind
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = (32,)
    channels: tuple[int, ...] = (16, 32)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if any(h < 1 for h in self.hidden) or any(c < 1 for c in self.channels):
            raise ValueError(f"layer widths must be >= 1, got hidden={self.hidden} channels={self.channels}")
        if self.kind is ModelKind.CNN and len(self.input_shape) != 3:
            raise ValueError(f"cnn needs image records (C, H, W), got shape {self.input_shape}")
        if self.kind is ModelKind.MLP and len(self.input_shape) != 1:
            raise ValueError(f"mlp needs feature vectors (d,), got shape {self.input_shape}")


class TabularMLP(nn.Module):
    """Feed-forward classifier; tanh activations (bounded activations suit DP-SGD,
    Papernot et al. 2021, "Tempered Sigmoid Activations for Deep Learning with DP")."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GroupNormCNN(nn.Module):
    """Small CNN: [conv3x3 -> GroupNorm -> tanh -> maxpool] per stage, then an adaptive average
    pool to a 2x2 grid (keeps coarse layout, which small scans need), linear head. Works for
    any image size >= 2**stages."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers += [
                nn.Conv2d(width, c, kernel_size=3, padding=1),
                nn.GroupNorm(min(4, c), c),
                nn.Tanh(),
                nn.MaxPool2d(2),
            ]
            width = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def build_model(spec: ModelSpec, *, seed: int) -> nn.Module:
    """Build the model with weights initialised from ``seed`` (same seed, same weights)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if spec.kind is ModelKind.MLP:
            return TabularMLP(spec.input_shape[0], spec.hidden, spec.num_classes)
        return GroupNormCNN(spec.input_shape[0], spec.channels, spec.num_classes)
    finally:
        torch.random.set_rng_state(generator_state)
