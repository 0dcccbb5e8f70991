"""Where a site's randomness comes from: secret by default, reproducible only when asked for.

DP-SGD's guarantee assumes that the Gaussian noise and the Poisson sample are unknown to the
adversary. A seed derived from public values (the job's seed, the site id, the round) lets
anyone who sees an update regenerate the noise bit for bit and subtract it: epsilon is then
infinite, whatever the accountant says.

:attr:`NoiseSource.OS_ENTROPY` (the default): the Poisson sampler gets its own generator seeded
with 64 bits from the operating system's CSPRNG (``secrets``) once per training call; the noise
generator is re-seeded with fresh OS bits before every optimizer step (fedshield's own engine
gives each step a generator of its own, seeded the same way), so no two steps share a
generator state; and each noise coordinate is the sum of four Gaussian draws, halved (Opacus's
secure mode, after Holohan & Braghin 2021, "Secure Random Sampling in Differential Privacy",
Sec. 5.1, against floating-point attacks on a single Gaussian draw). The seeds are never logged,
stored or sent. The two generators are independent: the noise says nothing about which records
were sampled.

:meth:`Randomness.step_noise` draws one optimizer step's noise for every trainable parameter.
Secret noise on a CPU is cut into contiguous chunks, each drawn by a generator of its own seeded
with fresh OS bits, on as many threads as torch computes with: torch's CPU generator draws on one
core, so this is what makes the four-draw defence cost a quarter (two cores: a half) of its serial
wall time, and nothing needs to be drawn ahead on a thread that would fight the step's own
compute for the cores. Every coordinate is still the sum of four independent draws halved, and
no two chunks or steps share a generator state. On a GPU (one generator, fast there) and for
insecure reproducible noise, the parameters are drawn in order from one generator seeded for
the step, bit for bit what Opacus's secure mode draws (so the audit can regenerate known-seed
noise, :func:`audit.empirical.regenerated_noise`).

:attr:`NoiseSource.INSECURE_REPRODUCIBLE`: seeds derived from a public seed (tests and papers
only). The ledger records it and the audit reports the release as *not private*.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

import torch

MIN_CHUNK = 1 << 17  # coordinates per thread below which a thread costs more than it saves
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

    def sampling_generator(self) -> torch.Generator:
        """The Poisson sampler's generator (CPU), independent of the noise generator."""
        return torch.Generator().manual_seed(self._seed("sampling"))

    def noise_generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self._seed("noise", "init"))

    def reseed_noise(self, generator: torch.Generator, step: int) -> None:
        """Before optimizer step ``step``: a fresh secret seed (or the step's public one)."""
        generator.manual_seed(self._seed("noise", step))

    def step_noise(self, std: float, params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """Optimizer step ``step``'s noise, one tensor shaped like each of ``params``: every
        coordinate the sum of four independent N(0, std^2) draws, halved (std ``std``)."""
        device = params[0].device
        same = all(p.device == device and p.dtype == params[0].dtype for p in params)
        total = sum(p.numel() for p in params)
        workers = min(torch.get_num_threads(), total // MIN_CHUNK)
        if self.public_seed is not None or device.type != "cpu" or not same or workers < 2:
            generator = torch.Generator(device=device).manual_seed(self._seed("noise", step))
            return four_draws_in_order(std, params, generator)
        return _four_draws_in_chunks(std, params, workers)

    def canary_generator(self) -> torch.Generator:
        """The audit canaries' Poisson sampler (CPU), independent of the other two."""
        return torch.Generator().manual_seed(self._seed("canaries"))

    def dropout_seed(self) -> int:
        return self._seed("dropout")

    def as_record(self) -> dict[str, object]:
        """What the ledger records: the source, never a secret seed."""
        out: dict[str, object] = {"source": self.source.value, "secure_sampling": "sum-of-4-halved"}
        if self.public_seed is not None:
            out["public_seed"] = self.public_seed
        return out


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
    generators = [torch.Generator().manual_seed(secrets.randbits(63)) for _ in range(workers)]

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
