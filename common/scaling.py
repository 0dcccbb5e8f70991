"""Per-site feature standardisation for tabular records.

A site fits its scaler on its own training records only, never on other sites' data, and
applies it to its own evaluation records. The statistics never leave the site.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StandardScaler:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> StandardScaler:
        if len(x) == 0:
            raise ValueError("cannot fit a scaler on zero records")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        # Constant columns (std 0) are centred but not divided: dividing would blow up.
        return cls(mean=mean, scale=np.where(std > 1e-12, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale).astype(np.float32)
