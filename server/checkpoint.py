"""The server's checkpoint after every completed round, so a restarted server resumes from
the last completed round instead of asking sites to train (and spend budget) again."""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.tracking import RoundLog

CHECKPOINT_FILE = "checkpoint.pt"
# Optimiser state a strategy carries between rounds (FedAdam/FedOpt moments and weights).
_STRATEGY_STATE = ("current_arrays", "m_t", "v_t")


@dataclass
class Checkpoint:
    job: str
    completed_round: int
    arrays: dict[str, np.ndarray]
    rounds: list[RoundLog]
    strategy_state: dict[str, Any]
    settings: dict[str, Any]


def strategy_state(strategy: object) -> dict[str, Any]:
    return {k: getattr(strategy, k) for k in _STRATEGY_STATE if hasattr(strategy, k)}


def restore_strategy_state(strategy: object, state: dict[str, Any]) -> None:
    for key, value in state.items():
        setattr(strategy, key, value)


def save(path: Path, ckpt: Checkpoint) -> None:
    """Atomically replace the checkpoint (write, fsync, rename): a crash leaves the old one."""
    import torch

    buf = io.BytesIO()
    torch.save({**dataclasses.asdict(ckpt), "rounds": [dataclasses.asdict(r) for r in ckpt.rounds]}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: Path) -> Checkpoint | None:
    import torch

    if not path.exists():
        return None
    # The server's own file, written by save() above: full unpickling is safe here.
    raw = torch.load(path, weights_only=False)
    raw["rounds"] = [RoundLog(**r) for r in raw["rounds"]]
    return Checkpoint(**raw)
