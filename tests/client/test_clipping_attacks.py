"""Attacks on the clipping bound through train_local, every mode fedshield offers.

The claim: whatever the server's model and the site's records, one record moves the clipped sum
(what DP-SGD then noises and releases) by at most the bound C. Each test runs one record at
sample rate 1, one step, learning rate 1 and (almost) no noise, so the weights' change is the
released clipped sum. Found in review (on the code before these fixes):

- Opacus's ghost clipping computes each record's norm from float32 Gram matrices: a crafted
  model whose two positions cancel made it about 0 and released 25-859 C. Refused since
  (common.config.sections.GHOST_REFUSED); book-keeping's guarded ghost norms hold.
- Opacus's per-example modes clipped on torch's float32 ``vector_norm``, which under-estimates a
  long row with a few large entries: 1.0045 C in hooks, functorch and ew. Their norms are now
  accumulated in float64 (client.dp_trainer._clip_and_accumulate).
- A caller's ``torch.autocast`` ran book-keeping's sums in bf16: 1.0020 C. DP steps now turn it off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from client.dp_trainer import GRAD_SAMPLE_MODES, LocalPlan, PrivacyPlan, train_local
from common.dataset import Dataset, Modality
from common.privacy.noise import reproducible
from tests.client.crafted import cancelling_linear

MODES = [m for m in GRAD_SAMPLE_MODES if m != "auto"]  # bk, hooks, functorch, ew
ONE_STEP = LocalPlan(local_epochs=1, batch_size=1, learning_rate=1.0)


def _released(model: nn.Module, data: Dataset, mode: str, **plan: object) -> float:
    """||weights after - weights before|| of one DP step on ``data``'s one record, C = 1 (the
    weights that travel: the trainable ones, in order)."""
    before = [p.detach().double().clone() for p in model.parameters() if p.requires_grad]
    privacy = PrivacyPlan(plan.pop("noise", 1e-9), 1.0, mode, **plan)
    result = train_local(model, data, ONE_STEP, privacy=privacy, randomness=reproducible(0), device=torch.device("cpu"))
    return float(
        np.sqrt(
            sum(
                ((np.asarray(w, np.float64) - b.numpy()) ** 2).sum()
                for w, b in zip(result.weights, before, strict=True)
            )
        )
    )


@pytest.mark.parametrize("asymmetry", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("mode", MODES)
def test_a_crafted_cancelling_model_releases_at_most_the_bound(mode: str, asymmetry: float) -> None:
    torch.manual_seed(0)
    model = cancelling_linear(64, asymmetry)
    x = (torch.randn(1, 1, 64).repeat(1, 2, 1) * 30).numpy().astype(np.float32)
    moved = _released(model, Dataset(x, np.array([0]), 2, Modality.TABULAR, "t"), mode, noise=1.0, fault="noise-off")
    assert moved <= 1.0 + 1e-5, f"{mode}: one record released {moved:.4f} C"


@pytest.mark.parametrize("mode", MODES)
def test_a_long_row_with_a_few_large_entries_is_clipped_on_its_true_norm(mode: str) -> None:
    d = 1_200_000  # 8 inputs of 128, the rest 128 * 2^-12: float32 vector_norm read 0.99 of the norm
    x = np.full((1, d), 128 * 2.0**-12, dtype=np.float32)
    x[0, :8] = 128.0
    model = nn.Sequential(nn.Linear(d, 2, bias=False))
    with torch.no_grad():
        model[0].weight.zero_()
    moved = _released(model, Dataset(x, np.array([0]), 2, Modality.TABULAR, "t"), mode)
    assert moved <= 1.0 + 1e-6, f"{mode}: one record released {moved:.6f} C"


@pytest.mark.parametrize("mode", MODES)
def test_a_callers_autocast_does_not_lift_a_record_over_the_bound(mode: str) -> None:
    x = np.full((1, 64), 1 + 2**-8 + 2**-18, dtype=np.float32)  # just above bf16 rounding midpoints
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        moved = _released(model, Dataset(x, np.array([0]), 2, Modality.TABULAR, "t"), mode)
    assert moved <= 1.0 + 1e-6, f"{mode}: one record released {moved:.6f} C under autocast"


def test_opacus_ghost_clipping_is_refused() -> None:
    with pytest.raises(ValueError, match="'ghost' .*not offered"):
        PrivacyPlan(1.0, 1.0, "ghost")


# ---- clip factors below float32's normal range (found in the review of the fixes above) -----


@pytest.mark.parametrize("mode", MODES)
def test_a_record_whose_clip_factor_would_be_subnormal_contributes_nothing(mode: str) -> None:
    """Entries of 1e36 give a norm of 4.5e37: at C = 1e-6 the factor is below 2^-126, where
    float32 keeps only multiples of 2^-149 and rounds by up to half the value (float64 norms
    made it reachable in the per-example modes: 1.0146 C released here, 2 C with a crafted zoo
    MLP). Such a record is left out, as a record with a non-finite gradient is."""
    d, bound = 4096, 1e-6
    x = np.full((1, d), 1e36, dtype=np.float32)
    model = nn.Sequential(nn.Linear(d, 2, bias=False))
    with torch.no_grad():
        model[0].weight.zero_()
    before = model[0].weight.detach().double().clone()
    privacy = PrivacyPlan(1.0, bound, mode, fault="noise-off")
    data = Dataset(x, np.array([0]), 2, Modality.TABULAR, "t")
    result = train_local(model, data, ONE_STEP, privacy=privacy, randomness=reproducible(0), device=torch.device("cpu"))
    moved = float(np.linalg.norm(np.asarray(result.weights[0], np.float64) - before.numpy()))
    assert moved <= bound * (1 + 1e-5), f"{mode}: one record released {moved / bound:.4f} C"


def _overflowing_mlp(label: int, scale: float, readout: float) -> nn.Module:
    """A zoo MLP whose hidden pre-activations are 0 (first layer zero) while the backward signal
    grows by ``scale`` x 256 per layer: the gradient of the first layer is huge, or infinite."""
    from common.models import TabularMLP

    model = TabularMLP(64, (256,) * 7, 2)
    layers = [m for m in model.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for layer in layers:
            layer.bias.zero_()
        layers[0].weight.zero_()
        for layer in layers[1:-1]:
            layer.weight.fill_(scale)
        sign = 1.0 if label == 0 else -1.0
        layers[-1].weight[0].fill_(-sign * readout)
        layers[-1].weight[1].fill_(sign * readout)
    return model


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_an_input_canary_with_an_unclippable_gradient_contributes_nothing(mode: str) -> None:
    """The empirical audit's input canaries are clipped by client.canaries, apart from the
    engines: a canary whose gradient overflows put 0 * inf = NaN into the update exactly when it
    was included (a noise-free signal of the audit's secret), and one whose factor was subnormal
    released 2 C. Both are now left out, as a real record would be."""
    from client.canaries import CanaryPlan, input_records

    cx, cy = input_records("site-0", "job", 1, (64,), 2)
    x = np.ones((1, 64), np.float32)
    data = Dataset(x, np.array([0]), 2, Modality.TABULAR, "t")
    for scale, readout, bound in ((1e4, 1e4, 1.0), (1400.0, 8669.0, 1e-6)):  # overflowing; subnormal factor
        released = []
        for included in (True, False):
            model = _overflowing_mlp(int(cy[0]), scale, readout)
            before = [p.detach().double().clone() for p in model.parameters()]
            result = train_local(
                model,
                data,
                ONE_STEP,
                privacy=PrivacyPlan(1.0, bound, mode, fault="noise-off"),
                randomness=reproducible(0),
                device=torch.device("cpu"),
                canaries=CanaryPlan("job", "site-0", (), (), (included,), "input"),
                canary_records=(cx, cy),
            )
            weights = [np.asarray(w, np.float64) for w in result.weights]
            assert all(np.isfinite(w).all() for w in weights), f"{mode}: non-finite update (canary {included})"
            released.append(
                float(np.sqrt(sum(((w - b.numpy()) ** 2).sum() for w, b in zip(weights, before, strict=True))))
            )
        assert abs(released[0] - released[1]) <= bound * (1 + 1e-5), f"{mode}: the canary moved it by {released}"
