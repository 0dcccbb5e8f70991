"""The update a site released last, kept on disk to re-send it when a round is asked again.

A restarted server may ask again for a round the site already answered: the site sends the
same update (re-releasing it costs no privacy) instead of training and spending twice. The file
is one JSON header line (job, round, metrics, each array's name, dtype and shape) followed by
the arrays' raw bytes: written in one ``write``, read back with ``numpy.frombuffer``. Nothing in
it is executed on reading (no pickle), and a reader never trusts it blindly: the caller checks
the arrays' SHA-256 against the one its signed ledger recorded for that round, so a torn,
stale or altered file is a refusal, never a different release. (``torch.save`` cost 1.2-1.5 ms
a round for the small models the simulations run; this costs about a tenth.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "fedshield-last-update-1"


@dataclass(frozen=True)
class LastUpdate:
    job: str
    round: int
    names: list[str]
    weights: list[np.ndarray]
    metrics: dict[str, float | int]


def save(path: Path, update: LastUpdate) -> None:
    """Write ``update`` to ``path`` (replacing what was there)."""
    arrays = [np.ascontiguousarray(w) for w in update.weights]
    header = {
        "format": FORMAT,
        "job": update.job,
        "round": update.round,
        "metrics": update.metrics,
        "arrays": [
            {"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in zip(update.names, arrays, strict=True)
        ],
    }
    data = b"".join([json.dumps(header).encode() + b"\n", *(a.tobytes() for a in arrays)])
    # Written over the old file in place, then cut to length: not opened with O_TRUNC, because
    # ext4 flushes a file truncated to zero and written again (its ``auto_da_alloc``), which cost
    # 0.2 ms here and as much again in the ledger's next fsync. A crash mid-write leaves a file
    # whose hash no ledger entry matches: a refusal to re-send, never a different release.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(f"{path}: short write")
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def load(path: Path) -> LastUpdate | None:
    """The update in ``path``, or ``None`` when it is missing or cannot be read as one (the
    caller then refuses to re-send; it checks what it gets against its ledger)."""
    try:
        data = path.read_bytes()
        line, _, body = data.partition(b"\n")
        header = json.loads(line)
        if header.get("format") != FORMAT:
            return None
        names, weights, at = [], [], 0
        for spec in header["arrays"]:
            dtype, shape = np.dtype(spec["dtype"]), tuple(int(s) for s in spec["shape"])
            size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            if dtype.hasobject or at + size > len(body):
                return None
            weights.append(np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=at).reshape(shape))
            names.append(str(spec["name"]))
            at += size
        if at != len(body):
            return None
        return LastUpdate(str(header["job"]), int(header["round"]), names, weights, dict(header["metrics"]))
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None
