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


class _TwoReadouts(nn.Module):
    """A trained layer read at two positions by frozen weights of +-1e4 (within a site's weight
    limit): the record's per-position gradients are huge and almost cancel."""

    def __init__(self, d: int, asymmetry: float) -> None:
        super().__init__()
        self.layer = nn.Linear(d, d, bias=False)
        self.p0, self.p1 = nn.Linear(d, 2, bias=False), nn.Linear(d, 2, bias=False)
        with torch.no_grad():
            base = torch.randn(2, d).sign() * 1e4
            self.p0.weight.copy_(base)
            self.p1.weight.copy_(-base)
            self.p0.weight[0, :4] += asymmetry
            self.layer.weight.copy_(torch.randn(d, d) * 1e-3)
        for q in (*self.p0.parameters(), *self.p1.parameters()):
            q.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x)
        return self.p0(h[:, 0]) + self.p1(h[:, 1])


@pytest.mark.parametrize("asymmetry", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("mode", MODES)
def test_a_crafted_cancelling_model_releases_at_most_the_bound(mode: str, asymmetry: float) -> None:
    torch.manual_seed(0)
    model = _TwoReadouts(64, asymmetry)
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
