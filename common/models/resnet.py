"""ResNet-18 with GroupNorm, written so that every Opacus per-sample-gradient mode works.

torchvision's ResNet cannot be used with DP-SGD as is: its BatchNorm mixes records inside a
batch (voiding per-example clipping), and its residual add and ReLUs work in place on tensors
Opacus hooks, which crashes the hooks, functorch and ghost-clipping modes. Here every
normalisation is GroupNorm and no operation writes in place.

Layout and parameter names follow torchvision's ``resnet18`` (``conv1``, ``layer1.0.conv1``,
``downsample.0``, ``fc`` ...) with ``bn`` renamed ``gn``, so torchvision-layout weights load
with :func:`load_pretrained` (BatchNorm's affine weight and bias become GroupNorm's; running
statistics are dropped).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from common.errors import ConfigError

STAGES = (2, 2, 2, 2)  # ResNet-18: two basic blocks per stage
SMALL_IMAGE = 64  # below this side length the stem keeps full resolution (3x3, stride 1, no pool)


def group_norm(channels: int) -> nn.GroupNorm:
    """At most 32 groups of at least 8 channels (Wu & He 2018 find 8-16 channels per group as
    good as 32 groups). Narrow layers thus still normalise over several values when the feature
    map is small (a 28x28 scan is 4x4 in the last stage); with few channels per group a small
    network trained with DP-SGD learned far less in our runs."""
    return nn.GroupNorm(math.gcd(32, max(1, channels // 8)), channels)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.gn1 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn2 = group_norm(channels)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), group_norm(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)  # a new tensor: never ``out += identity``


class GroupNormResNet(nn.Module):
    """ResNet-18 (four stages of two basic blocks, widths w, 2w, 4w, 8w; w=64 is the standard
    network, 11.2M parameters). Images smaller than 64 pixels get a 3x3 stride-1 stem without
    max-pooling (as for CIFAR), larger ones the ImageNet stem (7x7 stride 2, max-pool)."""

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 64, image_size: int = 224) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.small_stem = image_size < SMALL_IMAGE
        if self.small_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.gn1 = group_norm(width)
        self.relu = nn.ReLU(inplace=False)
        layers = []
        channels = width
        for i, blocks in enumerate(STAGES):
            out = width * 2**i
            stage = [BasicBlock(channels, out, stride=1 if i == 0 else 2)]
            stage += [BasicBlock(out, out, stride=1) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
            channels = out
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.gn2.weight)  # each residual branch starts as identity (Goyal et al. 2017)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.gn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"pretrained-path: no such file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file: one clear line)
        raise ConfigError(f"pretrained-path: cannot read {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"pretrained-path: {path} does not hold a state dict of tensors")
    return state


def load_pretrained(model: GroupNormResNet, path: str | Path) -> list[str]:
    """Copy weights from a local torchvision-layout file (``.pt``/``.pth`` state dict, or
    ``.safetensors``) into ``model``; returns the names of the parameters left as initialised.

    BatchNorm statistics (``running_*``, ``num_batches_tracked``) are dropped. A classifier of a
    different class count is skipped (it is trained from scratch); RGB stem weights are summed
    over colour for grayscale inputs. Any other shape mismatch is an error naming the tensor.
    """
    path = Path(path)
    source = {
        re.sub(r"(^|\.)bn(\d)", r"\1gn\2", k): v
        for k, v in _read_state_dict(path).items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    own = model.state_dict()
    unknown = sorted(set(source) - set(own))
    if unknown:
        raise ConfigError(f"pretrained-path: {path} has tensor {unknown[0]!r}, which a ResNet-18 does not have")
    loaded: dict[str, torch.Tensor] = {}
    for name, tensor in source.items():
        target = own[name]
        if name == "conv1.weight" and target.shape[1] == 1 and tensor.shape[1] == 3:
            tensor = tensor.sum(dim=1, keepdim=True)
        if tensor.shape != target.shape:
            if name.startswith("fc."):
                continue
            raise ConfigError(
                f"pretrained-path: {path}: tensor {name!r} has shape {tuple(tensor.shape)}, the model needs "
                f"{tuple(target.shape)} (check resnet-width and the image size: the stem differs below "
                f"{SMALL_IMAGE} px)"
            )
        loaded[name] = tensor.to(target.dtype)
    model.load_state_dict(loaded, strict=False)
    return sorted(set(own) - set(loaded))
