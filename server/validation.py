"""Every update is checked before aggregation; a bad one is rejected (and recorded), never
aggregated, and the round goes on with the others."""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord


def validate_update(update: ArrayRecord, global_model: ArrayRecord, *, max_update_norm: float = 0.0) -> str | None:
    """The reason ``update`` must be rejected, or ``None`` if it may be aggregated.

    Checks, in order: the same tensor names, shapes and dtypes as the global model; only finite
    values; and (when ``max_update_norm > 0``) an L2 norm of ``update - global`` within the bound.
    """
    if list(update.keys()) != list(global_model.keys()):
        missing = sorted(set(global_model.keys()) - set(update.keys()))
        extra = sorted(set(update.keys()) - set(global_model.keys()))
        return f"tensor names differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    new, old = update.to_numpy_ndarrays(), global_model.to_numpy_ndarrays()
    squared = 0.0
    for name, a, b in zip(update.keys(), new, old, strict=True):
        if a.shape != b.shape:
            return f"tensor {name!r} has shape {a.shape}, the global model has {b.shape}"
        if a.dtype != b.dtype:
            return f"tensor {name!r} has dtype {a.dtype}, the global model has {b.dtype}"
        if not np.all(np.isfinite(a)):
            return f"tensor {name!r} contains NaN or infinite values"
        squared += float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    norm = math.sqrt(squared)
    if max_update_norm > 0 and norm > max_update_norm:
        return f"update norm {norm:.3g} exceeds the bound {max_update_norm:g}"
    return None
