"""Partitioners: reproducible, exact covers of the records, and alpha means what it says."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import DataError
from common.partition import PartitionKind, PartitionSpec, label_skew, partition

KINDS = [PartitionKind.IID, PartitionKind.DIRICHLET, PartitionKind.QUANTITY]


def _labels(n: int, num_classes: int) -> np.ndarray:
    return (np.arange(n) % num_classes).astype(np.int64)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# Parameters for which every partitioner succeeds with overwhelming probability (alpha not
# tiny, at least 8 records per class), so a DataError here would be a real failure.
cases = st.fixed_dictionaries(
    {
        "n": st.integers(40, 400),
        "sites": st.integers(1, 8),
        "classes": st.integers(2, 5),
        "alpha": st.floats(0.5, 100.0),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@settings(max_examples=40, deadline=None)
@given(case=cases)
def test_same_seed_same_partition_and_exact_cover(kind, case):
    labels = _labels(case["n"], case["classes"])
    spec = PartitionSpec(kind, case["sites"], case["alpha"])
    first = partition(labels, spec, seed=case["seed"])
    second = partition(labels, spec, seed=case["seed"])
    assert _same(first, second)
    assert len(first) == case["sites"]
    for part in first:
        assert np.issubdtype(part.dtype, np.integer)
        assert np.array_equal(part, np.sort(part))
        assert len(part) >= spec.min_records
    # every record index appears exactly once across sites
    everything = np.concatenate(first)
    assert len(everything) == case["n"]
    assert np.array_equal(np.sort(everything), np.arange(case["n"]))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@settings(max_examples=40, deadline=None)
@given(case=cases.filter(lambda c: c["sites"] >= 2))
def test_different_seed_gives_a_different_partition(kind, case):
    labels = _labels(case["n"], case["classes"])
    spec = PartitionSpec(kind, case["sites"], case["alpha"])
    base = partition(labels, spec, seed=case["seed"])
    # A single other seed can coincide by chance for small inputs; several cannot.
    others = [partition(labels, spec, seed=case["seed"] + k) for k in range(1, 5)]
    assert any(not _same(base, other) for other in others)


def _mean_skew(kind: PartitionKind, alpha: float, labels: np.ndarray, num_classes: int) -> float:
    spec = PartitionSpec(kind, 5, alpha)
    return float(np.mean([label_skew(labels, partition(labels, spec, seed=s), num_classes) for s in range(6)]))


def test_dirichlet_respects_alpha():
    labels = _labels(1000, 10)
    skew_small = _mean_skew(PartitionKind.DIRICHLET, 0.1, labels, 10)
    skew_large = _mean_skew(PartitionKind.DIRICHLET, 100.0, labels, 10)
    skew_iid = _mean_skew(PartitionKind.IID, 1.0, labels, 10)
    assert skew_small > 0.4
    assert skew_small > 4 * skew_large
    assert skew_large < 0.15
    assert abs(skew_large - skew_iid) < 0.1


def _mean_size_cv(alpha: float, n: int = 1000, sites: int = 5) -> float:
    labels = _labels(n, 10)
    spec = PartitionSpec(PartitionKind.QUANTITY, sites, alpha)
    cvs = []
    for seed in range(8):
        sizes = np.array([len(p) for p in partition(labels, spec, seed=seed)], dtype=float)
        cvs.append(sizes.std() / sizes.mean())
    return float(np.mean(cvs))


def test_quantity_skew_respects_alpha():
    cv_small, cv_mid, cv_large = _mean_size_cv(0.3), _mean_size_cv(1.0), _mean_size_cv(100.0)
    assert cv_small > cv_mid > cv_large
    assert cv_small > 3 * cv_large
    assert cv_large < 0.2


def test_quantity_skew_keeps_labels_roughly_iid():
    labels = _labels(2000, 4)
    spec = PartitionSpec(PartitionKind.QUANTITY, 4, 100.0)
    assert label_skew(labels, partition(labels, spec, seed=0), 4) < 0.1


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_more_sites_than_records_is_a_data_error(kind):
    labels = _labels(10, 2)
    with pytest.raises(DataError, match="use fewer sites") as info:
        partition(labels, PartitionSpec(kind, 11, 1.0), seed=0)
    assert "10 records" in str(info.value)
    assert "11 sites" in str(info.value)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_min_records_too_many_for_the_pool_is_a_data_error(kind):
    labels = _labels(20, 2)
    with pytest.raises(DataError, match="use fewer sites"):
        partition(labels, PartitionSpec(kind, 5, 1.0, min_records=5), seed=0)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), min_records=st.integers(1, 20), alpha=st.sampled_from([1.0, 5.0]))
def test_min_records_is_honoured(kind, seed, min_records, alpha):
    # 300 records, 5 sites: a draw meeting min_records <= 20 is found well within 100 tries.
    labels = _labels(300, 3)
    parts = partition(labels, PartitionSpec(kind, 5, alpha, min_records=min_records), seed=seed)
    assert min(len(p) for p in parts) >= min_records
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(300))


def test_impossible_skew_is_a_data_error_with_advice():
    # alpha this small puts each class on one site: 2 classes cannot fill 4 sites.
    labels = _labels(200, 2)
    with pytest.raises(DataError, match=r"alpha=0\.001.*raise alpha or use fewer sites"):
        partition(labels, PartitionSpec(PartitionKind.DIRICHLET, 4, 0.001), seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_sites": 0}, "num_sites must be >= 1"),
        ({"num_sites": 2, "alpha": 0.0}, "alpha must be > 0"),
        ({"num_sites": 2, "min_records": 0}, "min_records must be >= 1"),
    ],
)
def test_partition_spec_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PartitionSpec(PartitionKind.IID, **kwargs)
