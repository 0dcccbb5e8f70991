"""Classification into ``num_classes`` classes: softmax cross-entropy; accuracy and loss.

Statistics (per record): ``count`` (1), ``correct`` (0 or 1) and ``loss`` (cross-entropy
clipped to [0, LOSS_BOUND], in units of the bound, so in [0, 1]): L2 sensitivity sqrt(3) under
add/remove-one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from common.tasks.base import LOSS_BOUND, Statistics, Task, bounded_loss, l2_sensitivity


class Classification(Task):
    kind = "classification"
    summary = "one class per record: accuracy and cross-entropy"
    headline = "accuracy"
    shown = ("accuracy",)  # plotted per round
    sensitivity = l2_sensitivity(1.0, 1.0, 1.0)
    counts = frozenset({"count", "correct"})

    def statistics(self, logits: torch.Tensor, y: torch.Tensor) -> Statistics:
        losses = torch.nn.functional.cross_entropy(logits.double(), y, reduction="none")
        # A record whose logits are not finite counts as wrong (never as a NaN).
        correct = (logits.argmax(1) == y) & torch.isfinite(logits).all(1)
        return {
            "count": np.array([float(len(y))]),
            "correct": np.array([float(correct.sum())]),
            "loss": np.array([float(bounded_loss(losses).sum())]),
        }

    def count(self, stats: Mapping[str, np.ndarray]) -> float:
        return float(stats["count"][0])

    def metrics(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
        n = max(self.count(stats), 1.0)
        return {
            "accuracy": min(max(float(stats["correct"][0]) / n, 0.0), 1.0),
            "loss": max(float(stats["loss"][0]) * LOSS_BOUND / n, 0.0),
        }
