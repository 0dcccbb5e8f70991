"""Reproducible partitioners that split one pool of records into sites.

Every partitioner returns a list of sorted index arrays, one per site, that together cover
every record exactly once. The same seed always gives the same partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from common.errors import DataError

_MAX_TRIES = 100


class PartitionKind(StrEnum):
    IID = "iid"
    DIRICHLET = "dirichlet"  # label skew: each class spread over sites by Dirichlet(alpha)
    QUANTITY = "quantity"  # size skew: site sizes drawn from Dirichlet(alpha), labels IID


@dataclass(frozen=True)
class PartitionSpec:
    kind: PartitionKind
    num_sites: int
    alpha: float = 1.0
    min_records: int = 1

    def __post_init__(self) -> None:
        if self.num_sites < 1:
            raise ValueError(f"num_sites must be >= 1, got {self.num_sites}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.min_records < 1:
            raise ValueError(f"min_records must be >= 1, got {self.min_records}")


def partition(labels: np.ndarray, spec: PartitionSpec, *, seed: int) -> list[np.ndarray]:
    """Split record indices ``0..len(labels)-1`` into ``spec.num_sites`` sites.

    Raises :class:`DataError` when a site would be left with fewer than ``spec.min_records``
    records (there are too few records, or alpha is so small that no draw in 100 works).
    """
    n = len(labels)
    if spec.num_sites * spec.min_records > n:
        raise DataError(
            f"cannot split {n} records into {spec.num_sites} sites with at least "
            f"{spec.min_records} records each; use fewer sites"
        )
    rng = np.random.default_rng(seed)
    rule = PARTITIONS[spec.kind]
    for _ in range(_MAX_TRIES):
        parts = rule.draw(labels, spec, rng)
        if min(len(p) for p in parts) >= spec.min_records:
            return [np.sort(p) for p in parts]
    raise DataError(
        f"{spec.kind.value} partition with alpha={spec.alpha} left a site with fewer than "
        f"{spec.min_records} records in {_MAX_TRIES} draws; raise alpha or use fewer sites"
    )


def _iid(labels: np.ndarray, spec: PartitionSpec, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(len(labels)), spec.num_sites))


@dataclass(frozen=True)
class PartitionRule:
    summary: str
    # (labels, spec, rng) -> one index array per site; redrawn while a site is too small
    draw: Callable[[np.ndarray, PartitionSpec, np.random.Generator], list[np.ndarray]]


# One registry line per way of sharing a pool out to simulated sites (config check, --help).
PARTITIONS: dict[PartitionKind, PartitionRule] = {
    PartitionKind.IID: PartitionRule("an even random split", _iid),
    PartitionKind.DIRICHLET: PartitionRule(
        "label skew: each class spread over sites by Dirichlet(alpha)",
        lambda labels, spec, rng: _dirichlet_label_skew(labels, spec.num_sites, spec.alpha, rng),
    ),
    PartitionKind.QUANTITY: PartitionRule(
        "size skew: site sizes by Dirichlet(alpha), labels iid",
        lambda labels, spec, rng: _quantity_skew(len(labels), spec.num_sites, spec.alpha, rng),
    ),
}


def _split_by_proportions(idx: np.ndarray, proportions: np.ndarray) -> list[np.ndarray]:
    cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
    return np.split(idx, cuts)


def _dirichlet_label_skew(
    labels: np.ndarray, num_sites: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    # Hsu et al. 2019, "Measuring the effects of non-identical data distribution": for each
    # class c, draw p_c ~ Dir(alpha * 1_K) and give site k a fraction p_c[k] of class c.
    buckets: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_sites, alpha))
        for site, chunk in enumerate(_split_by_proportions(idx, proportions)):
            buckets[site].append(chunk)
    return [np.concatenate(b) for b in buckets]


def _quantity_skew(n: int, num_sites: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    proportions = rng.dirichlet(np.full(num_sites, alpha))
    return _split_by_proportions(rng.permutation(n), proportions)


def label_skew(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each site's label distribution and the pool's.

    0 means every site has the pool's label mix; 1 means sites hold disjoint classes.
    """
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    distances = []
    for p in parts:
        local = np.bincount(labels[p], minlength=num_classes) / max(len(p), 1)
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))
