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

:attr:`NoiseSource.INSECURE_REPRODUCIBLE`: seeds derived from a public seed (tests and papers
only). The ledger records it and the audit reports the release as *not private*.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

import torch


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


def secret() -> Randomness:
    return Randomness(NoiseSource.OS_ENTROPY)


def reproducible(seed: int) -> Randomness:
    """INSECURE: noise anyone who knows ``seed`` can regenerate. Tests and papers only."""
    return Randomness(NoiseSource.INSECURE_REPRODUCIBLE, public_seed=seed)
