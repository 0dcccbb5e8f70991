"""The in-memory dataset value object every loader returns, and stratified splitting."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from common.errors import DataError


class Modality(StrEnum):
    """What a record looks like: a feature vector, an image (C, H, W) or a text as token ids."""

    TABULAR = "tabular"
    IMAGE = "image"
    TEXT = "text"


@dataclass(frozen=True)
class Dataset:
    """Records held in memory: ``x`` float32 features (int64 token ids for text), ``y`` int64
    labels in [0, num_classes): one per record, or for tagged text one per token position
    (shape (N, L); -100 where a position is not a word's first sub-word).

    Tabular records have shape (d,); image records have shape (C, H, W) with values in [0, 1];
    text records are int64 token ids of shape (L,), right-padded with the tokenizer's pad id.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    modality: Modality
    source: str

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{self.source}: {len(self.x)} records but {len(self.y)} labels")
        if self.num_classes < 2:
            raise DataError(f"{self.source}: need at least 2 classes, found {self.num_classes}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def record_labels(self) -> np.ndarray:
        """One label per record, for stratified splits and label-skew partitions: the label,
        or for tagged text the record's largest tag index (0 when it has none)."""
        if self.y.ndim == 1:
            return self.y
        return np.maximum(self.y.max(axis=1, initial=0), 0) if len(self.y) else np.zeros(0, dtype=np.int64)

    @property
    def record_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.x[indices], self.y[indices], self.num_classes, self.modality, self.source)

    def with_features(self, x: np.ndarray) -> Dataset:
        return Dataset(x.astype(np.float32), self.y, self.num_classes, self.modality, self.source)


def stratified_split(y: np.ndarray, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with ``fraction`` of every class held out.

    Each class keeps at least one record on the "rest" side when it has more than one.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    rest: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_held = int(round(fraction * len(idx)))
        n_held = min(n_held, len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        rest.append(idx[n_held:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))
