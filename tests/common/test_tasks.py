"""The task seam: pooled metrics from additive statistics equal the metrics of the pooled
records, and the statistics' per-record sensitivity is what a DP release is noised for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from common.config import RunConfig
from common.errors import ConfigError
from common.tasks import flat, pooled, task_for
from common.tasks.binary_risk import BinaryRisk, ClassWeightedCrossEntropy
from common.tasks.classification import Classification


def _credit_like_sites(seed: int, sites: int = 5, rate: float = 0.033) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Logits of a decent risk model on credit-like sites: ~3% positives, scores overlapping."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(sites):
        n = int(rng.integers(200, 3000))
        y = (rng.random(n) < rate).astype(np.int64)
        margin = rng.normal(-3.5, 1.2, n) + y * rng.normal(3.0, 1.0, n)
        logits = np.stack([np.zeros(n), margin], axis=1)
        out.append((torch.tensor(logits), torch.tensor(y)))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_pooled_auc_from_histograms_matches_sklearn_on_pooled_scores(seed: int) -> None:
    task = BinaryRisk(positive=1)
    sites = _credit_like_sites(seed)
    stats = pooled(task.statistics(logits, y) for logits, y in sites)
    metrics = task.metrics(stats)
    scores = torch.cat([task.scores(logits) for logits, _ in sites]).numpy()
    labels = torch.cat([y for _, y in sites]).numpy()
    assert abs(metrics["roc_auc"] - roc_auc_score(labels, scores)) < 0.005
    assert abs(metrics["pr_auc"] - average_precision_score(labels, scores)) < 0.01
    p = 1 / (1 + np.exp(-scores))
    assert metrics["brier"] == pytest.approx(np.mean((p - labels) ** 2), abs=1e-9)
    flagged = p >= 0.5
    recall = (flagged & (labels == 1)).sum() / (labels == 1).sum()
    specificity = (~flagged & (labels == 0)).sum() / (labels == 0).sum()
    assert metrics["recall"] == pytest.approx(recall)
    assert metrics["balanced_accuracy"] == pytest.approx((recall + specificity) / 2)


def test_a_model_that_flags_nobody_has_the_accuracy_of_the_majority_and_balanced_accuracy_one_half() -> None:
    """The bank's trap: 96.7% accuracy from never flagging a defaulter."""
    y = torch.tensor([1] * 33 + [0] * 967)
    margin = torch.linspace(-9, -4, 1000)  # all below the threshold; the ranking is informative
    margin[:33] = torch.linspace(-5, -4.1, 33)  # the defaulters score highest
    stats = BinaryRisk().statistics(torch.stack([torch.zeros(1000), margin], 1), y)
    m = BinaryRisk().metrics(stats)
    assert m["accuracy"] == pytest.approx(0.967) and m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["recall"] == 0.0 and m["roc_auc"] > 0.85


def test_the_positive_class_can_be_class_zero() -> None:
    logits, y = _credit_like_sites(7, sites=1)[0]
    flipped = BinaryRisk(positive=0).metrics(BinaryRisk(positive=0).statistics(logits.flip(1), 1 - y))
    plain = BinaryRisk(positive=1).metrics(BinaryRisk(positive=1).statistics(logits, y))
    assert flipped["roc_auc"] == pytest.approx(plain["roc_auc"]) and flipped["recall"] == pytest.approx(plain["recall"])


@given(
    logits=st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50), st.integers(0, 1)), min_size=1, max_size=40),
    extra=st.tuples(
        st.one_of(st.floats(-1e6, 1e6), st.just(float("nan")), st.just(float("inf"))),
        st.floats(-1e6, 1e6),
        st.integers(0, 1),
    ),
)
@settings(max_examples=200, deadline=None)
def test_one_record_more_moves_the_statistics_by_at_most_the_sensitivity(logits, extra) -> None:
    """Add/remove-one: whatever the record (a crafted model may give it any logits, NaN
    included), every task's statistics move by at most ``task.sensitivity`` in L2."""
    for task in (Classification(), BinaryRisk(positive=1, bins=50)):
        rows = torch.tensor([[a, b] for a, b, _ in logits], dtype=torch.float64)
        y = torch.tensor([c for *_, c in logits])
        more_rows = torch.cat([rows, torch.tensor([[extra[0], extra[1]]], dtype=torch.float64)])
        more_y = torch.cat([y, torch.tensor([extra[2]])])
        move = flat(task.statistics(more_rows, more_y)) - flat(task.statistics(rows, y))
        assert np.isfinite(move).all()
        assert np.linalg.norm(move) <= task.sensitivity + 1e-9


def test_classification_pools_to_the_accuracy_of_all_records() -> None:
    task = Classification()
    rng = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 4, generator=rng), torch.randint(0, 4, (n,), generator=rng)) for n in (5, 50, 300)]
    stats = pooled(task.statistics(x, y) for x, y in batches)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    m = task.metrics(stats)
    assert m["accuracy"] == pytest.approx(float((x.argmax(1) == y).double().mean()))
    assert m["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(x, y)), rel=1e-6)


def test_class_weighted_loss_is_each_records_own_loss_averaged_over_the_batch() -> None:
    logits = torch.randn(6, 2, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 0, 1])
    loss = ClassWeightedCrossEntropy([1.0, 10.0])
    per = torch.nn.functional.cross_entropy(logits, y, reduction="none") * torch.tensor([1.0, 10.0])[y]
    assert torch.allclose(loss(logits, y), per.mean())
    loss.reduction = "none"
    assert torch.allclose(loss(logits, y), per)
    loss.reduction = "sum"
    assert torch.allclose(loss(logits, y), per.sum())


def test_binary_risk_config_errors_name_the_field_and_value() -> None:
    cfg = RunConfig.of(task="binary-risk", positive_label="yes")
    with pytest.raises(ConfigError, match=r"positive-label must be one of the classes 0, 1, got 'yes'"):
        task_for(cfg, ("0", "1"))
    with pytest.raises(ConfigError, match="needs exactly two classes, got 3"):
        task_for(cfg, ("a", "b", "c"))
    with pytest.raises(ConfigError, match="positive-label must name the positive class"):
        RunConfig.of(task="binary-risk")
    with pytest.raises(ConfigError, match="positive-label applies to task binary-risk"):
        RunConfig.of(positive_label="1")
    with pytest.raises(ConfigError, match="class-weights must be comma-separated numbers"):
        RunConfig.of(task="binary-risk", positive_label="1", class_weights="1,x")
    with pytest.raises(ConfigError, match="decision-threshold must be in"):
        RunConfig.of(task="binary-risk", positive_label="1", decision_threshold=1.0)
    with pytest.raises(ConfigError, match="task must be one of classification, binary-risk"):
        RunConfig.of(task="regression")
