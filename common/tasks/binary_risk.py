"""Binary risk scoring (credit default, readmission): rank records by their risk, judged by
ROC-AUC, PR-AUC and the Brier score, and by recall/precision at a decision threshold.

The score of a record is the model's log-odds of the positive class, ``s = logit[pos] -
logit[neg]`` (so ``p = sigmoid(s)``). Statistics (per record):

- ``hist``: a (2, bins) count of records by class (row 0 negative, row 1 positive) and score
  bin; bins are even in log-odds on [-SCORE_RANGE, SCORE_RANGE] with open end bins, so rare
  positives scored near 0 or 1 still fall apart. One record: one cell moves by one.
- ``confusion``: (tp, fp, fn, tn) at ``p >= threshold``. One record: one cell moves by one.
- ``loss``: cross-entropy clipped to [0, LOSS_BOUND], in units of the bound (in [0, 1]).
- ``brier``: (p - y)^2, in [0, 1].

So the L2 sensitivity of all statistics together is sqrt(1 + 1 + 1 + 1) = 2 under
add/remove-one; the number of records is the sum of the confusion cells (no exact count is
released). The pooled AUC
from the histograms counts a positive and a negative in the same bin as half a correct pair
(ties), which is what ``sklearn.metrics.roc_auc_score`` does for tied scores; PR-AUC is the
average precision (sklearn's ``average_precision_score``) over the bin edges as thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.tasks.base import LOSS_BOUND, Statistics, Task, bounded_loss, l2_sensitivity

SCORE_RANGE = 12.0  # log-odds; p in [6e-6, 0.999994] gets bins of its own
DEFAULT_BINS = 1000


class ClassWeightedCrossEntropy(nn.Module):
    """Cross-entropy with a public weight per class, averaged over the batch (not over the
    weights, as ``nn.CrossEntropyLoss(weight=...)`` does): each record's loss is its own, so
    DP-SGD's per-example gradients and clipping are those of this loss. ``reduction`` is an
    attribute, as Opacus's ghost clipping expects."""

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per = nn.functional.cross_entropy(logits, y, reduction="none") * self.weights.to(logits.device)[y]
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()


class BinaryRisk(Task):
    kind = "binary-risk"
    summary = "two classes, one positive (positive-label): ROC-AUC, PR-AUC, Brier, recall/precision at a threshold"
    headline = "roc_auc"
    shown = ("roc_auc", "pr_auc", "balanced_accuracy")  # plotted per round
    sensitivity = l2_sensitivity(1.0, 1.0, 1.0, 1.0)
    counts = frozenset({"hist", "confusion"})

    def __init__(
        self,
        *,
        positive: int = 1,
        threshold: float = 0.5,
        bins: int = DEFAULT_BINS,
        class_weights: Sequence[float] = (),
    ) -> None:
        if positive not in (0, 1):
            raise ValueError(f"positive class index must be 0 or 1, got {positive}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"decision-threshold must be in (0, 1), got {threshold}")
        if not 2 <= bins <= 10_000:
            raise ValueError(f"score-bins must be in [2, 10000], got {bins}")
        if class_weights and (len(class_weights) != 2 or not all(0 < w <= 1e3 for w in class_weights)):
            raise ValueError(f"class-weights must be two weights in (0, 1000], got {list(class_weights)}")
        self.positive = positive
        self.threshold = threshold
        self.bins = bins
        self.class_weights = tuple(float(w) for w in class_weights)
        self.edges = torch.linspace(-SCORE_RANGE, SCORE_RANGE, bins - 1, dtype=torch.float64)

    def criterion(self) -> nn.Module:
        return ClassWeightedCrossEntropy(self.class_weights) if self.class_weights else nn.CrossEntropyLoss()

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-odds of the positive class; a non-finite one counts as the least risky."""
        logits = logits.double()
        s = logits[:, self.positive] - logits[:, 1 - self.positive]
        return torch.nan_to_num(s, nan=-SCORE_RANGE - 1, posinf=SCORE_RANGE + 1, neginf=-SCORE_RANGE - 1)

    def statistics(self, logits: torch.Tensor, y: torch.Tensor) -> Statistics:
        s = self.scores(logits).cpu()
        y = y.cpu()
        is_pos = y == self.positive
        hist = np.zeros((2, self.bins))
        cells = torch.bucketize(s, self.edges, right=True).numpy()
        np.add.at(hist, (is_pos.numpy().astype(int), cells), 1.0)
        p = torch.sigmoid(s)
        flagged = p >= self.threshold
        confusion = np.array(
            [
                float((flagged & is_pos).sum()),
                float((flagged & ~is_pos).sum()),
                float((~flagged & is_pos).sum()),
                float((~flagged & ~is_pos).sum()),
            ]
        )
        losses = nn.functional.cross_entropy(logits.double().cpu(), y, reduction="none")
        return {
            "hist": hist,
            "confusion": confusion,
            "loss": np.array([float(bounded_loss(losses).sum())]),
            "brier": np.array([float(((p - is_pos.double()) ** 2).sum())]),
        }

    def count(self, stats: Mapping[str, np.ndarray]) -> float:
        return float(np.asarray(stats["confusion"]).sum())  # every record is in one cell

    def metrics(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
        hist = np.clip(np.asarray(stats["hist"], dtype=np.float64), 0.0, None)  # noise can go below 0
        tp, fp, fn, tn = np.clip(np.asarray(stats["confusion"], dtype=np.float64), 0.0, None)
        n = max(float(tp + fp + fn + tn), 1.0)
        recall = tp / (tp + fn) if tp + fn > 0 else float("nan")
        specificity = tn / (tn + fp) if tn + fp > 0 else float("nan")
        return {
            "roc_auc": roc_auc_from_histograms(hist[1], hist[0]),
            "pr_auc": average_precision_from_histograms(hist[1], hist[0]),
            "brier": min(max(float(stats["brier"][0]) / n, 0.0), 1.0),
            "balanced_accuracy": (recall + specificity) / 2,
            "recall": recall,
            "precision": tp / (tp + fp) if tp + fp > 0 else float("nan"),
            "accuracy": min(max((tp + tn) / n, 0.0), 1.0),
            "loss": max(float(stats["loss"][0]) * LOSS_BOUND / n, 0.0),
        }


def roc_auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie), from counts per score bin
    (bins in increasing score order); NaN when a class is absent."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    total = pos.sum() * neg.sum()
    if total <= 0:
        return float("nan")
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / total)


def average_precision_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision, sum over thresholds of (R_k - R_{k-1}) * P_k, with each bin's lower
    edge as a threshold from the top bin down (sklearn's definition with scores binned)."""
    pos, neg = np.asarray(pos, dtype=np.float64)[::-1], np.asarray(neg, dtype=np.float64)[::-1]
    total_pos = pos.sum()
    if total_pos <= 0:
        return float("nan")
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    seen = (tp + fp) > 0
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=seen)
    recall = tp / total_pos
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))
