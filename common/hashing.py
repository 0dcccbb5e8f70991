"""Content hashes that both sides compute identically: of a model update and of a dataset."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

import numpy as np

from common.dataset import Dataset


def arrays_sha256(named: Iterable[tuple[str, np.ndarray]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each array, in the given order."""
    digest = hashlib.sha256()
    for name, array in named:
        array = np.ascontiguousarray(array)
        digest.update(name.encode() + b"\0" + array.dtype.str.encode() + b"\0" + repr(array.shape).encode() + b"\0")
        digest.update(array.tobytes())
    return digest.hexdigest()


def salted_fingerprint(secret: bytes, *parts: Dataset) -> str:
    """HMAC-SHA256 of the records under the site's secret: the same records give the same
    fingerprint at this site (so a changed file is noticed), while the ledger reveals nothing
    about individual records to anyone without the secret (no guessing a record and
    checking a hash)."""
    named = [(f"{name}{i}", arr) for i, d in enumerate(parts) for name, arr in (("x", d.x), ("y", d.y))]
    return hmac.new(secret, arrays_sha256(named).encode(), hashlib.sha256).hexdigest()
