"""Where a site's randomness comes from: secret by default, reproducible only when asked for.

DP-SGD's guarantee assumes that the Gaussian noise and the Poisson sample are unknown to the
adversary. A seed derived from public values (the job's seed, the site id, the round) lets
anyone who sees an update regenerate the noise bit for bit and subtract it: epsilon is then
infinite, whatever the accountant says.

:attr:`NoiseSource.OS_ENTROPY` (the default): every generator's state comes from the operating
system's CSPRNG (:func:`_reseed`: on a CPU all 624 words of the MT19937 state, since torch's
``manual_seed`` keeps only 32 bits of a seed; on a GPU a 64-bit Philox seed). The Poisson sampler
gets its own once per training call; every optimizer step's noise is drawn from generators of
its own, so no two steps share a generator state; and each noise coordinate is the sum of four
Gaussian draws, halved (Opacus's secure mode, after Holohan & Braghin 2021, "Secure Random
Sampling in Differential Privacy", Sec. 5.1, against floating-point attacks on a single
Gaussian draw). Nothing secret is logged, stored or sent. The generators are independent: the
noise says nothing about which records were sampled.

:meth:`Randomness.step_noise` draws one optimizer step's noise for every trainable parameter.
Secret noise on a CPU is cut into contiguous chunks, each drawn by a secret generator of its
own, on as many threads as torch computes with: torch's CPU generator draws on one core, so this
is what makes the four-draw defence cost a quarter (two cores: a half) of its serial wall time,
and nothing needs to be drawn ahead on a thread that would fight the step's own compute for the
cores. Every coordinate is still the sum of four independent draws halved, and no two chunks or
steps share a generator state. On a GPU (one generator, fast there) and for insecure
reproducible noise, the parameters are drawn in order from one generator made for the step, bit
for bit what Opacus's secure mode draws (so the audit can regenerate known-seed noise,
:func:`audit.empirical.regenerated_noise`).

:attr:`NoiseSource.INSECURE_REPRODUCIBLE`: seeds derived from a public seed (tests and papers
only). The ledger records it and the audit reports the release as *not private*.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

MIN_CHUNK = 1 << 15  # coordinates per thread below which a thread costs more than it saves (~50 us)
_BLOCK = 1 << 18  # coordinates drawn and summed at a time inside a chunk (stays in cache)


class NoiseSource(StrEnum):
    OS_ENTROPY = "os-entropy-reseeded"
    INSECURE_REPRODUCIBLE = "insecure-reproducible"

    @property
    def private(self) -> bool:
        return self is NoiseSource.OS_ENTROPY


def _public_seed(seed: int, *purpose: object) -> int:
    text = ":".join(str(p) for p in (seed, *purpose)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class Randomness:
    """The randomness of one training call. Build with :func:`secret` or :func:`reproducible`."""

    source: NoiseSource
    public_seed: int | None = None  # only for INSECURE_REPRODUCIBLE

    def __post_init__(self) -> None:
        if (self.source is NoiseSource.INSECURE_REPRODUCIBLE) != (self.public_seed is not None):
            raise ValueError("a public seed is needed for, and only for, insecure reproducible noise")

    def _seed(self, *purpose: object) -> int:
        if self.public_seed is None:
            return secrets.randbits(63)
        return _public_seed(self.public_seed, *purpose)

    def _generator(self, device: torch.device | str, *purpose: object) -> torch.Generator:
        """A generator for ``purpose``: from its public seed, or wholly secret (:func:`_reseed`)."""
        generator = torch.Generator(device=device)
        if self.public_seed is None:
            return _reseed(generator)
        return generator.manual_seed(_public_seed(self.public_seed, *purpose))

    def sampling_generator(self) -> torch.Generator:
        """The Poisson sampler's generator (CPU), independent of the noise generator."""
        return self._generator("cpu", "sampling")

    def noise_generator(self, device: torch.device) -> torch.Generator:
        return self._generator(device, "noise", "init")

    def reseed_noise(self, generator: torch.Generator, step: int) -> None:
        """Before optimizer step ``step``: a fresh secret state (or the step's public seed)."""
        if self.public_seed is None:
            _reseed(generator)
        else:
            generator.manual_seed(_public_seed(self.public_seed, "noise", step))

    def step_noise(self, std: float, params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """Optimizer step ``step``'s noise, one tensor shaped like each of ``params``: every
        coordinate the sum of four independent N(0, std^2) draws, halved (std ``std``)."""
        device = params[0].device
        same = all(p.device == device and p.dtype == params[0].dtype for p in params)
        total = sum(p.numel() for p in params)
        workers = min(torch.get_num_threads(), total // MIN_CHUNK)
        if self.public_seed is not None or device.type != "cpu" or not same or workers < 2:
            return four_draws_in_order(std, params, self._generator(device, "noise", step))
        return _four_draws_in_chunks(std, params, workers)

    def canary_generator(self) -> torch.Generator:
        """The audit canaries' Poisson sampler (CPU), independent of the other two."""
        return self._generator("cpu", "canaries")

    def dropout_seed(self) -> int:
        return self._seed("dropout")

    def as_record(self) -> dict[str, object]:
        """What the ledger records: the source, never a secret seed."""
        out: dict[str, object] = {"source": self.source.value, "secure_sampling": "sum-of-4-halved"}
        if self.public_seed is not None:
            out["public_seed"] = self.public_seed
        return out


# torch's CPU generator state (get_state / set_state: its CPUGeneratorImplStateLegacy): the
# MT19937 seed (uint64) at 0, ``left`` (int32) at 8, ``seeded`` (int32) at 12, ``next`` (uint64)
# at 16, then the 624 state words, each in a uint64 slot, from 24.
_MT_WORDS = 624
_MT_LEFT, _MT_NEXT, _MT_STATE = 8, 16, 24


def _reseed(generator: torch.Generator) -> torch.Generator:
    """Give ``generator`` a state no one else can compute, in place, and return it.

    CPU: all 624 words of the MT19937 state from the operating system's CSPRNG (19,937 bits
    used: MT19937 reads only the top bit of the first word), and no cached normal sample.
    ``manual_seed`` is not enough there: torch keeps only the low 32 bits of a seed, so a
    63-bit secret seed gave 2^32 possible noise streams, which an adversary can search in a few
    core-hours and subtract (found in review). CUDA: Philox's 64-bit seed and its 64-bit counter
    offset, both secret."""
    if generator.device.type != "cpu":
        # Philox: a 64-bit key and a 64-bit counter offset (a multiple of 4), both secret
        return generator.manual_seed(secrets.randbits(64)).set_offset(4 * secrets.randbits(60))
    state = generator.get_state()
    raw = state.numpy()
    _check_layout(raw)
    words = np.frombuffer(os.urandom(4 * _MT_WORDS), dtype="<u4").astype("<u8")
    raw[_MT_STATE : _MT_STATE + 8 * _MT_WORDS] = words.view(np.uint8)
    raw[_MT_LEFT : _MT_LEFT + 4] = np.array([1], dtype="<i4").view(np.uint8)  # twist before the first output
    raw[_MT_NEXT : _MT_NEXT + 8] = 0
    raw[_MT_STATE + 8 * _MT_WORDS :] = 0  # no cached normal sample (Box-Muller's second value) carried over
    generator.set_state(state)
    words_at = slice(_MT_STATE, _MT_STATE + 8 * _MT_WORDS)
    if not torch.equal(generator.get_state()[words_at], state[words_at]):
        raise RuntimeError("torch did not take the secret generator state")
    return generator


@functools.lru_cache(maxsize=1)
def _layout_checked() -> bool:
    """The state layout :func:`_reseed` writes, checked once against what ``manual_seed`` sets."""
    seed = 0x9E3779B9
    raw = torch.Generator().manual_seed(seed).get_state().numpy()
    first = int(raw[_MT_STATE : _MT_STATE + 8].view("<u8")[0])
    left = int(raw[_MT_LEFT : _MT_LEFT + 4].view("<i4")[0])
    if raw.size < _MT_STATE + 8 * _MT_WORDS or first != seed or left != 1:
        raise RuntimeError(
            f"torch {torch.__version__}: unexpected CPU generator state layout; secret generators cannot be made"
        )
    return True


def _check_layout(raw: np.ndarray) -> None:
    if raw.dtype != np.uint8 or not _layout_checked():
        raise RuntimeError("unexpected CPU generator state")


def four_draws_in_order(std: float, params: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Noise of std ``std`` shaped like each of ``params``, every coordinate the sum of four
    N(0, std^2) draws halved: bit for bit what Opacus's secure mode (``_generate_noise``) draws
    from ``generator``, in the same order (one discarded draw, then four per parameter)."""
    out = []
    for p in params:
        torch.normal(0.0, std, size=(1, 1), device=p.device, generator=generator)  # discarded, as Opacus does
        total = torch.normal(0.0, std, size=p.shape, device=p.device, generator=generator, dtype=p.dtype)
        draw = torch.empty_like(total)
        for _ in range(3):
            total.add_(torch.normal(0.0, std, size=p.shape, device=p.device, generator=generator, out=draw))
        out.append(total.div_(2))
    return out


def _four_draws_into(out: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """Fill the 1-d ``out`` with sums of four N(0, std^2) draws halved, a cache-sized block at a time."""
    spare = torch.empty(min(_BLOCK, out.numel()), dtype=out.dtype)
    for start in range(0, out.numel(), _BLOCK):
        block = out[start : start + _BLOCK]
        draw = spare[: block.numel()]
        block.normal_(0.0, std, generator=generator)
        for _ in range(3):
            block.add_(draw.normal_(0.0, std, generator=generator))
        block.div_(2)


_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool): a forked child makes its own


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
        _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="fedshield-noise"))
    return _pool[2]


def _four_draws_in_chunks(std: float, params: list[torch.Tensor], workers: int) -> list[torch.Tensor]:
    """Secret noise drawn in ``workers`` contiguous chunks at once, each chunk from a generator
    of its own seeded with fresh OS bits (torch's CPU generator draws on one core)."""
    flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype)
    bounds = [len(flat) * i // workers for i in range(workers + 1)]
    generators = [_reseed(torch.Generator()) for _ in range(workers)]

    def draw(i: int) -> None:
        _four_draws_into(flat[bounds[i] : bounds[i + 1]], std, generators[i])

    list(_executor(workers).map(draw, range(workers)))  # re-raises a worker's error here
    out, at = [], 0
    for p in params:
        out.append(flat[at : at + p.numel()].view(p.shape))
        at += p.numel()
    return out


def secret() -> Randomness:
    return Randomness(NoiseSource.OS_ENTROPY)


def reproducible(seed: int) -> Randomness:
    """INSECURE: noise anyone who knows ``seed`` can regenerate. Tests and papers only."""
    return Randomness(NoiseSource.INSECURE_REPRODUCIBLE, public_seed=seed)
