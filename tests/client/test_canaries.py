"""Gradient canaries for the empirical audit: public coordinates, secret bits, and exactly the
clipped contribution of one more Poisson-sampled record (real Opacus, every mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from client.canaries import (
    UNCLIPPED_VALUE,
    CanaryPlan,
    input_records,
    plan_canaries,
    public_coordinates,
    site_plan,
)
from client.dp_trainer import CLIP_FAULT_FACTOR, GRAD_SAMPLE_MODES, LocalPlan, PrivacyPlan, train_local
from common.dataset import Dataset, Modality
from common.privacy.noise import reproducible, secret

SHAPES = [("0.weight", 40), ("0.bias", 4), ("2.weight", 8), ("2.bias", 2)]


def test_coordinates_are_public_distinct_and_in_range() -> None:
    a = public_coordinates("site-0", "job-1", SHAPES, 30)
    assert a == public_coordinates("site-0", "job-1", SHAPES, 30)  # anyone can recompute them
    assert a != public_coordinates("site-1", "job-1", SHAPES, 30)
    assert len(set(a)) == 30
    sizes = dict(SHAPES)
    assert all(0 <= i < sizes[n] for n, i in a)
    with pytest.raises(ValueError, match="only 54 trainable coordinates"):
        public_coordinates("site-0", "job-1", SHAPES, 55)


def test_inclusion_bits_come_from_the_site_secret() -> None:
    one = plan_canaries("site-0", "job", b"\x01" * 32, SHAPES, 54)
    two = plan_canaries("site-0", "job", b"\x02" * 32, SHAPES, 54)
    assert (one.names, one.indices) == (two.names, two.indices)  # coordinates: public
    assert one.included != two.included  # bits: a server without the secret cannot compute them
    big = plan_canaries("site-0", "job", b"\x01" * 32, [("w", 10_000)], 4000)
    assert 0.45 < np.mean(big.included) < 0.55


def test_the_plan_is_kept_and_read_back(tmp_path) -> None:
    plan = site_plan(tmp_path, "site-0", "job", b"\x03" * 32, SHAPES, 20)
    again = site_plan(tmp_path, "site-0", "job", b"\x09" * 32, SHAPES, 20)  # read back, not re-planned
    assert again == plan
    assert CanaryPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="20 gradient canaries planned"):
        site_plan(tmp_path, "site-0", "job", b"\x03" * 32, SHAPES, 21)


def _zero_input_data(n: int = 40) -> Dataset:
    """Inputs all zero: the first layer's weights get no gradient from the data, so any change
    there is the canaries' (or the noise's)."""
    x = np.zeros((n, 10), dtype=np.float32)
    y = (np.arange(n) % 2).astype(np.int64)
    return Dataset(x, y, 2, Modality.TABULAR, "zeros")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2))


def _weights_moved(
    privacy: PrivacyPlan | None, plan: CanaryPlan, lr: float = 0.5, batch: int = 8, records=None
) -> np.ndarray:
    model = _model()
    before = model[0].weight.detach().clone().reshape(-1)
    result = train_local(
        model,
        _zero_input_data(),
        LocalPlan(2.0, batch, lr),
        privacy=privacy,
        randomness=secret(),
        canaries=plan,
        canary_records=records,
        device=torch.device("cpu"),
    )
    after = torch.as_tensor(result.weights[0]).reshape(-1)
    return (before - after).numpy()  # the descent: lr / B x (sum of the step's gradients)


def _plan(included: list[bool]) -> CanaryPlan:
    return CanaryPlan("job", "site-0", ("0.weight",) * len(included), tuple(range(len(included))), tuple(included))


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_an_included_canary_adds_exactly_the_clipped_bound_per_sample(mode: str) -> None:
    included = [True, False] * 10
    lr, batch, clip = 0.5, 8, 1.0
    privacy = PrivacyPlan(1e-9, clip, mode)  # noise negligible: the contributions show exactly
    moved = _weights_moved(privacy, _plan(included), lr, batch)[:20]
    unit = lr * clip / batch  # one sampled canary, clipped to C, in a mean-loss step
    counts = moved / unit
    assert np.allclose(counts, np.round(counts), atol=1e-4), counts
    assert np.all(np.round(counts)[1::2] == 0)  # excluded canaries: nothing
    assert np.round(counts)[0::2].sum() > 0  # included ones were sampled, each time exactly C


def test_a_larger_clip_than_recorded_lets_more_of_a_canary_through() -> None:
    included = [True] * 20
    privacy = PrivacyPlan(1e-9, 1.0, "hooks", fault="clip-larger")
    counts = _weights_moved(privacy, _plan(included))[:20] / (0.5 * CLIP_FAULT_FACTOR / 8)
    assert np.allclose(counts, np.round(counts), atol=1e-4) and counts.sum() > 0


def test_without_dp_a_canary_is_not_clipped() -> None:
    counts = _weights_moved(None, _plan([True] * 20))[:20] / (0.5 * UNCLIPPED_VALUE / 8)
    assert np.allclose(counts, np.round(counts), atol=1e-4) and counts.sum() > 0


def test_noise_off_fault_removes_the_noise_the_plan_claims() -> None:
    honest = _weights_moved(PrivacyPlan(1.0, 1.0, "hooks"), _plan([False]))
    broken = _weights_moved(PrivacyPlan(1.0, 1.0, "hooks", fault="noise-off"), _plan([False]))
    assert np.abs(honest).max() > 1e-3  # noise std 1 x C on weights the data does not move
    assert np.abs(broken).max() == 0.0


def test_canary_sampling_is_independent_of_the_other_generators() -> None:
    r = reproducible(7)
    a = torch.rand(5, generator=r.canary_generator())
    b = torch.rand(5, generator=r.sampling_generator())
    assert not torch.equal(a, b)


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="fault must be one of"):
        PrivacyPlan(1.0, 1.0, "hooks", fault="typo")


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_included_input_canaries_move_the_weights_the_data_cannot(mode: str) -> None:
    """The data's inputs are zero, so the first layer's weights move only by the canaries'
    (clipped) gradients: none at all when no canary is included."""
    x, y = input_records("site-0", "job", 30, (10,), 2)
    none = CanaryPlan("job", "site-0", (), (), (False,) * 30, "input")
    every = CanaryPlan("job", "site-0", (), (), (True,) * 30, "input")
    privacy = PrivacyPlan(1e-9, 1.0, mode)
    assert np.abs(_weights_moved(privacy, none, records=(x, y))).max() < 1e-6
    moved = _weights_moved(privacy, every, records=(x, y))
    assert np.abs(moved).max() > 1e-3
    # each sampled canary contributes at most the clipping bound: lr / B x C x (samples)
    steps = 2 * 5  # 2 epochs of 40 records in batches of 8
    assert np.linalg.norm(moved) <= 0.5 / 8 * 1.0 * 30 * steps


def test_input_canaries_refuse_text_models(tmp_path) -> None:
    from client.handlers import _canary_records
    from common.config import RunConfig

    cfg = RunConfig.of(model="transformer", dataset="synthetic:notes", audit_canaries=5, audit_canary_kind="input")
    with pytest.raises(ValueError, match="float features"):
        _canary_records(cfg, CanaryPlan("job", "site-0", (), (), (True,) * 5, "input"))
