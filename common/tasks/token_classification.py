"""Token classification (named entities): one BIO tag per word, judged by entity-level F1.

A record is a sentence or a note: its words are tagged ``O``, ``B-TYPE`` or ``I-TYPE``. The
model emits one score vector per sub-word token; a word's tag is read from its **first**
sub-word, and every other position (later sub-words, special tokens, padding) carries the label
:data:`IGNORE` and counts nowhere.

**Unit of privacy: one record**, however many tokens it has. Its loss is the **mean** over its
tagged words, so DP-SGD clips it as one example, exactly as a classification record.

**Metrics** are entity-level, as ``seqeval`` (default, CoNLL-style mode) computes them: an
entity is a (type, first word, last word) span from :func:`seqeval.metrics.sequence_labeling.
get_entities`; a predicted entity is a true positive only when type and both ends match. Per
type, a site sums true positives, false positives and false negatives over its records; the
server sums those across sites and computes precision, recall and F1 per type and
micro-averaged, which is exactly seqeval's figure on the pooled predictions.

**Sensitivity.** One record moves the counts by its own entities, which are not bounded by the
data. Each record's count vector (TP, FP, FN of every type) is therefore clipped to L2 norm at
most ``entity_bound`` (a record with more entity involvements is scaled down, so its counts
become fractional; the metrics of records within the bound are exact). With the record count
(1) and the clipped loss (at most 1), the L2 sensitivity under add/remove-one is
``sqrt(1 + 1 + entity_bound**2)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.tasks.base import LOSS_BOUND, Statistics, Task, bounded_loss, l2_sensitivity

IGNORE = -100  # label of a position that is not a word's first sub-word


def entity_types(tags: Sequence[str]) -> tuple[str, ...]:
    """The entity types of a BIO tag set, in first-seen order; ValueError when a tag is not
    ``O``, ``B-TYPE`` or ``I-TYPE``, or ``O`` is missing."""
    if "O" not in tags:
        raise ValueError(f"a BIO tag set must contain O, got {', '.join(tags)}")
    types: list[str] = []
    for tag in tags:
        if tag == "O":
            continue
        prefix, sep, kind = tag.partition("-")
        if prefix not in ("B", "I") or not sep or not kind:
            raise ValueError(f"tag {tag!r} is not O, B-TYPE or I-TYPE")
        if kind not in types:
            types.append(kind)
    for kind in types:
        if f"B-{kind}" not in tags:
            raise ValueError(f"tag set has I-{kind} but no B-{kind}")
    return tuple(types)


class TokenLoss(nn.Module):
    """Per record: mean cross-entropy over its tagged positions (0 for a record with none).
    ``reduction`` ("mean", "sum" or "none") then combines records, as Opacus expects."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_record = token_mean_loss(logits, target)
        if self.reduction == "none":
            return per_record
        return per_record.sum() if self.reduction == "sum" else per_record.mean()


def token_mean_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean cross-entropy over each record's tagged positions. ``target`` may be longer
    than ``logits`` (the model cuts a batch to its longest record; the cut part is padding)."""
    target = target[:, : logits.shape[1]]
    mask = target != IGNORE
    losses = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1), reduction="none"
    ).reshape(target.shape)
    losses = losses * mask
    return losses.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def word_tags(logits: torch.Tensor, target: torch.Tensor, tags: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    """Per record: (gold tags, predicted tags) of its words, in order. A record whose scores
    are not finite predicts ``O`` everywhere (it finds nothing, never a NaN)."""
    target = target[:, : logits.shape[1]].cpu()
    finite = torch.isfinite(logits).all(dim=-1).all(dim=-1).cpu()
    predicted = logits.argmax(dim=-1).cpu()
    out = []
    for i in range(len(target)):
        where = target[i] != IGNORE
        gold = [tags[int(t)] for t in target[i][where]]
        pred = [tags[int(t)] for t in predicted[i][where]] if finite[i] else ["O"] * len(gold)
        out.append((gold, pred))
    return out


def entity_counts(gold: list[str], pred: list[str], types: Sequence[str]) -> np.ndarray:
    """(len(types), 3) true positives, false positives, false negatives of one record's
    entities (seqeval's spans; entities of a type outside ``types`` are ignored)."""
    from seqeval.metrics.sequence_labeling import get_entities

    index = {t: i for i, t in enumerate(types)}
    true = {e for e in get_entities(gold) if e[0] in index}
    found = {e for e in get_entities(pred) if e[0] in index}
    counts = np.zeros((len(types), 3))
    for kind, column in ((true & found, 0), (found - true, 1), (true - found, 2)):
        for entity in kind:
            counts[index[entity[0]], column] += 1
    return counts


def prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall, F1 from counts (0 where undefined, as seqeval's zero_division=0)."""
    tp, fp, fn = max(tp, 0.0), max(fp, 0.0), max(fn, 0.0)
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


class TokenClassification(Task):
    kind = "token-classification"
    summary = "a BIO tag per word (named entities): entity-level precision, recall and F1"
    headline = "f1"
    shown = ("f1", "precision", "recall")
    counts = frozenset({"count", "entities"})

    def __init__(self, tags: Sequence[str], *, entity_bound: float = 8.0) -> None:
        self.tags = tuple(tags)
        self.types = entity_types(self.tags)
        if not self.types:
            raise ValueError("a tag set needs at least one entity type (B-TYPE)")
        if not 1 <= entity_bound <= 1e3:
            raise ValueError(f"entity-bound must be in [1, 1000], got {entity_bound}")
        self.entity_bound = float(entity_bound)
        self.sensitivity = l2_sensitivity(1.0, 1.0, self.entity_bound)  # type: ignore[misc]

    def criterion(self) -> nn.Module:
        return TokenLoss()

    def statistics(self, logits: torch.Tensor, y: torch.Tensor) -> Statistics:
        entities = np.zeros((len(self.types), 3))
        for gold, pred in word_tags(logits, y, self.tags):
            counts = entity_counts(gold, pred, self.types)
            norm = float(np.linalg.norm(counts))
            entities += counts * (self.entity_bound / norm if norm > self.entity_bound else 1.0)
        loss = bounded_loss(token_mean_loss(logits.double(), y)) if len(y) else torch.zeros(0)
        return {
            "count": np.array([float(len(y))]),
            "entities": entities,
            "loss": np.array([float(loss.sum())]),
        }

    def zero(self) -> Statistics:
        return {
            "count": np.zeros(1),
            "entities": np.zeros((len(self.types), 3)),
            "loss": np.zeros(1),
        }

    def count(self, stats: Mapping[str, np.ndarray]) -> float:
        return float(stats["count"][0])

    def metrics(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
        entities = np.asarray(stats["entities"], dtype=np.float64).reshape(len(self.types), 3)
        tp, fp, fn = (float(v) for v in entities.sum(axis=0))
        precision, recall, f1 = prf(tp, fp, fn)
        out = {"f1": f1, "precision": precision, "recall": recall}
        for kind, (t, p, n) in zip(self.types, entities, strict=True):
            kp, kr, kf = prf(float(t), float(p), float(n))
            out |= {f"f1:{kind}": kf, f"precision:{kind}": kp, f"recall:{kind}": kr}
        n = max(self.count(stats), 1.0)
        out["loss"] = max(float(stats["loss"][0]) * LOSS_BOUND / n, 0.0)
        return {k: v if math.isfinite(v) else 0.0 for k, v in out.items()}
