"""``grad-sample-mode = auto``: the fastest mode that works for a model, measured once: one of
Opacus's per-example modes (hooks, functorch, ew; its ghost clipping is refused), or
fedshield's book-keeping engine (``bk``, :mod:`client.bookkeeping`), which
refuses the models it cannot clip exactly and is then not a candidate.

Every mode computes the same clipped per-example gradients (each is checked against a brute-
force loop in tests/client/test_per_sample_grads.py and test_dp_trainer.py), so choosing one
for speed changes nothing about the guarantee. (One exception, on purpose: where a record's
gradient is mostly cancellation between positions, which only crafted weights give, ``bk``
clips it harder than the others; see :data:`client.bookkeeping.CANCELLATION_BOUND`.) The
choice is measured on the first use of a model shape on a machine (a few DP-SGD steps per
mode on the site's first records; the results are discarded, nothing is released) and kept in
a small JSON file keyed by the model's shape, the batch size, the device and the library
versions; ``FEDSHIELD_CACHE`` names its folder (default ``~/.cache/fedshield``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.config.sections import GradSampleMode

AUTO = GradSampleMode.AUTO.value
CONCRETE = tuple(m.value for m in GradSampleMode if m is not GradSampleMode.AUTO)
CACHE_FILE = "grad-sample-modes.json"
_STEPS = 4
# Opacus modes that hold every example's gradient at once (batch x trainable parameters): at a
# site's batch they can need more memory than the machine has (MiniLM-L6 at batch 64: 5.8 GB per
# copy, and a CPU out of memory kills the site's process instead of raising). Such a mode is not
# measured, and not a candidate, when that would take more than this share of the free memory.
PER_EXAMPLE_MODES = ("hooks", "functorch", "ew")
MEMORY_SHARE = 0.25


# The choices this process has read or made, by cache file and shape key (a speed choice only:
# every mode clips and noises the same way, so a stale entry costs time, never privacy).
_chosen: dict[tuple[str, str], str] = {}


def cache_path() -> Path:
    return Path(os.environ.get("FEDSHIELD_CACHE") or Path.home() / ".cache" / "fedshield") / CACHE_FILE


def shape_key(model: nn.Module, batch_size: int, device: torch.device) -> str:
    """What the speed of a mode depends on: the modules, the trainable shapes, batch, device."""
    import opacus

    from client.bookkeeping import REVISION

    parts = [f"torch {torch.__version__}", f"opacus {opacus.__version__}", f"engines {','.join(CONCRETE)}"]
    parts += [f"bk revision {REVISION}"]  # a faster engine is measured again, not read from an old choice
    parts += [device.type, f"batch {batch_size}"]
    parts += [f"{name}:{type(m).__name__}" for name, m in model.named_modules()]
    parts += [f"{n}:{tuple(p.shape)}:{p.requires_grad}" for n, p in model.named_parameters()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _read() -> dict[str, dict]:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(entries: dict[str, dict]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measured again next time, nothing else changes


def measure(model: nn.Module, data, batch_size: int, device: torch.device, task=None) -> dict[str, float | None]:
    """Seconds per steady DP-SGD step of each mode on ``data``'s first records (``None``: the
    mode fails on this model). Setup is left out: (time of 1 + _STEPS steps) - (time of 1), after one untimed run."""
    from client.dp_trainer import LocalPlan, PrivacyPlan, train_local
    from common.privacy.noise import secret

    n = min(len(data), batch_size)
    sample = data.subset(np.arange(n))
    out: dict[str, float | None] = {}
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    free = _free_memory(device)
    for mode in CONCRETE:
        if mode in PER_EXAMPLE_MODES and 2 * n * trainable > MEMORY_SHARE * free:
            out[mode] = None  # would hold n copies of the gradient (and Opacus makes a second)
            continue
        privacy = PrivacyPlan(1.0, 1.0, mode)
        times = []
        try:
            # untimed first: a mode's first call in a process pays one-off costs (imports, lazy
            # set-up) that would otherwise be charged to its 1-step run and make it look faster
            for epochs in (1.0, 1.0, 1.0 + _STEPS):  # batch >= records: sample rate 1, one step per epoch
                plan = LocalPlan(local_epochs=epochs, batch_size=n, learning_rate=1e-9)
                start = time.perf_counter()
                train_local(model, sample, plan, privacy=privacy, randomness=secret(), task=task, device=device)
                times.append(time.perf_counter() - start)
        except Exception:  # noqa: BLE001  (a mode this model does not support: not a candidate)
            out[mode] = None
            continue
        finally:
            # Opacus's wrapped copies hold their per-example gradients in reference cycles (its
            # hooks): freed now, not when the collector next runs, or the modes' copies pile up
            # (measuring MiniLM-L6 at batch 8: a 6.0 GB peak without this, 4.1 GB with it)
            gc.collect()
        out[mode] = max(times[2] - times[1], 1e-9) / _STEPS
    return out


def _free_memory(device: torch.device) -> float:
    """Bytes free where the model trains."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    import psutil

    return float(psutil.virtual_memory().available)


def choose(model: nn.Module, data, batch_size: int, device: torch.device, task=None) -> str:
    """The fastest working mode for this model shape (measured once, then read from the cache)."""
    key = shape_key(model, batch_size, device)
    memo = (str(cache_path()), key)
    if memo in _chosen:  # this process read or measured it already: no file read per round
        return _chosen[memo]
    entries = _read()
    known = entries.get(key, {}).get("mode")
    if known in CONCRETE:
        _chosen[memo] = str(known)
        return str(known)
    timings = measure(model, data, batch_size, device, task)
    working = {m: t for m, t in timings.items() if t is not None}
    if not working:
        raise ValueError(f"no grad-sample mode ({', '.join(CONCRETE)}) works for this model")
    mode = min(working, key=working.__getitem__)
    _chosen[memo] = mode
    entries = _read()
    entries[key] = {"mode": mode, "seconds_per_step": timings}
    _write(entries)
    return mode
