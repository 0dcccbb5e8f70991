"""What a task is: the head it needs, the per-example loss DP-SGD clips, and its metrics as
**additive statistics**.

A site computes statistics of its validation records (counts, sums, per-class score
histograms). They add up exactly across sites, so the server pools them by summing and only
then turns the pooled statistics into metrics: a pooled AUC is the AUC of all the sites'
records together, not an average of per-site AUCs (which would be wrong for AUC and F1, as an
example-weighted mean of accuracies is right only for accuracy).

Each statistic is bounded per record: adding or removing one record (the unit of privacy)
moves every count by at most one and every clipped sum by at most one (the number of records
is itself one of the counts, never released exactly), and :attr:`Task.sensitivity`
is the L2 norm of that change over all of a task's statistics. A DP evaluation release is then
the Gaussian mechanism on the whole vector, with standard deviation ``noise_multiplier *
sensitivity`` on every coordinate (one Gaussian event in the site's ledger).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import ClassVar

import numpy as np
import torch
from torch import nn

# Per-example loss is clipped to [0, LOSS_BOUND] before it is summed (and the sum is released
# in units of the bound), so one record moves the released loss sum by at most one.
LOSS_BOUND = 10.0

Statistics = dict[str, np.ndarray]  # name -> float64 array; sums over records


def bounded_loss(losses: torch.Tensor) -> torch.Tensor:
    """Per-example loss in units of :data:`LOSS_BOUND`, in [0, 1]; a non-finite loss counts as
    the bound (a crafted model cannot turn one record into a NaN release)."""
    clipped = torch.nan_to_num(losses.double(), nan=LOSS_BOUND, posinf=LOSS_BOUND, neginf=0.0)
    return clipped.clamp(0.0, LOSS_BOUND) / LOSS_BOUND


class Task(ABC):
    """One kind of learning problem. Subclasses fill the four parts; the trainer, the sites'
    evaluation, the server's pooling and the report go through them only."""

    kind: ClassVar[str]
    summary: ClassVar[str]
    headline: ClassVar[str]  # the metric a summary leads with
    shown: ClassVar[tuple[str, ...]]  # the metrics the plot shows per round
    sensitivity: ClassVar[float]  # L2 change of all statistics when one record is added/removed
    counts: ClassVar[frozenset[str]]  # statistics that are counts (rounded after noise)

    def criterion(self) -> nn.Module:
        """The per-example loss DP-SGD clips, as a module with a ``reduction`` attribute
        (Opacus's ghost clipping switches it to ``"none"``); ``"mean"`` divides by the batch."""
        return nn.CrossEntropyLoss()

    @abstractmethod
    def statistics(self, logits: torch.Tensor, y: torch.Tensor) -> Statistics:
        """The additive statistics of one batch (exact; noise is the caller's business)."""

    @abstractmethod
    def count(self, stats: Mapping[str, np.ndarray]) -> float:
        """How many records the statistics cover, read from the statistics themselves (so a
        DP release needs no exact count of the site's validation records: that count would
        tell a dataset from its neighbour with one record less)."""

    @abstractmethod
    def metrics(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Metrics from (pooled, possibly noised) statistics."""

    def zero(self) -> Statistics:
        """The statistics of no records."""
        empty = self.statistics(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
        return {k: np.zeros_like(v) for k, v in empty.items()}


def pooled(stats: Iterable[Mapping[str, np.ndarray]]) -> Statistics:
    """The sum of several sites' (or batches') statistics, name by name."""
    total: Statistics = {}
    for s in stats:
        for name, value in s.items():
            value = np.asarray(value, dtype=np.float64)
            total[name] = total[name] + value if name in total else value.copy()
    return total


def flat(stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """All statistics as one vector, in name order (the order noise is drawn in)."""
    return np.concatenate([np.asarray(stats[k], dtype=np.float64).ravel() for k in sorted(stats)])


def unflat(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> Statistics:
    out: Statistics = {}
    at = 0
    for name in sorted(like):
        size = int(np.asarray(like[name]).size)
        out[name] = np.asarray(vector[at : at + size], dtype=np.float64).reshape(np.shape(like[name]))
        at += size
    return out


def l2_sensitivity(*per_record_moves: float) -> float:
    """L2 norm of the largest per-record change of each statistic group."""
    return math.sqrt(sum(m * m for m in per_record_moves))
