"""DP-SGD's clipping holds whatever float32 precision the caller allows (client/precision.py).

The attack: a site's process runs with reduced-precision float32 matmuls turned on (TF32 on an
NVIDIA GPU, bf16 on a CPU with bf16 units: ``torch.set_float32_matmul_precision("medium")``, a
common speed setting), and the server crafts a model whose layer input makes one record's
gradient a cancelling sum over positions. Book-keeping computes that record's norm from float64
Gram matrices and its share of the clipped sum by a float32 matmul; rounded at bf16's 2^-8, the
share comes out far from the clipped gradient, and the record moves the sum by more than the
bound C (the sensitivity the accountant assumes). This CPU has no bf16 units, so the rounding
oneDNN would do is applied here by a dispatch mode (:class:`_Bf16Matmuls`); on a GPU the test
runs with TF32 for real.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from client import bookkeeping
from client.bookkeeping import BookKeeping
from client.precision import _fine_grained, ieee_float32

aten = torch.ops.aten
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
BOUND = 1.0


class _Bf16Matmuls(TorchDispatchMode):
    """What oneDNN does on a CPU with bf16 units when float32 matmuls may be bf16: each float32
    input of a matmul rounded to bf16, products summed in float32."""

    OPS = {aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in self.OPS and torch.backends.mkldnn.matmul.fp32_precision == "bf16":
            args = tuple(
                a.to(torch.bfloat16).float() if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a
                for a in args
            )
        return func(*args, **(kwargs or {}))


class _Difference(nn.Module):
    """One trainable Linear over two positions; the output is position 0's minus position 1's, so
    a record with inputs ``a`` and ``a + d`` has the weight gradient ``-g d^T``: a cancelling
    sum of two large outer products."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out[:, 0] - out[:, 1]


def _batch(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight ordinary records and, first, one crafted: positions ``a`` and ``a + d`` with
    ``|d|`` about 1/45 of ``|a|``, so its size sum_t |g_t||a_t| is about 90 times its gradient's
    norm (under the engine's cancellation guard of 100: clipped on its true norm)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 2, 64, generator=gen)
    a = 10 * torch.randn(64, generator=gen)
    d = torch.randn(64, generator=gen)
    d *= a.norm() / (45 * d.norm())
    x[0, 0], x[0, 1] = a, a + d
    y = torch.randn(9, 8, generator=gen)
    return x.to(device), y.to(device)


def _clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    engine = BookKeeping(model, BOUND)
    try:
        engine.clipped_sum(model, nn.MSELoss(), x, y)
        return model.linear.weight.summed_grad.clone()
    finally:
        engine.close()


@pytest.fixture
def reduced_precision() -> None:
    """The caller's process allows TF32 / bf16 float32 matmuls; restored after the test."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("device", DEVICES)
def test_a_crafted_record_moves_the_clipped_sum_by_at_most_the_bound_under_reduced_precision(
    device: str, reduced_precision: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bookkeeping, "use_ghost_norms", lambda *_: True)
    torch.manual_seed(0)
    model = _Difference(64, 8).to(device)
    x, y = _batch(device)
    with _Bf16Matmuls():
        with_record = _clipped_sum(model, x, y)
        without = _clipped_sum(model, x[1:], y[1:])
    moved = float((with_record - without).double().norm())
    assert moved <= BOUND * (1 + 1e-4), f"one record moved the clipped sum by {moved:.4f} > C = {BOUND}"


def test_the_callers_precision_settings_are_restored_even_when_the_body_raises(reduced_precision: None) -> None:
    before = [s.fp32_precision for s in _fine_grained()]
    with pytest.raises(ValueError, match="inside"), ieee_float32():
        assert torch.get_float32_matmul_precision() == "highest"
        assert all(s.fp32_precision == "ieee" for s in _fine_grained())
        raise ValueError("inside")
    assert torch.get_float32_matmul_precision() == "medium"
    assert [s.fp32_precision for s in _fine_grained()] == before


@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch", "bk"])
def test_every_engine_clips_in_float32_proper_and_keeps_the_callers_setting(reduced_precision: None, mode: str) -> None:
    """Opacus computes norms in its hooks and the clipped sum in its optimizer: its whole step
    runs in float32 proper; book-keeping only its reductions
    (the model's own passes keep the caller's setting: the engine clips the values they give)."""
    import numpy as np

    from client.dp_trainer import LocalPlan, PrivacyPlan, train_local
    from common.dataset import Dataset, Modality
    from common.models import ModelKind, ModelSpec, build_model
    from common.privacy.noise import reproducible

    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(16, 6)).astype(np.float32), rng.integers(0, 2, 16), 2, Modality.TABULAR, "t")
    model = build_model(ModelSpec(ModelKind.MLP, (6,), 2, hidden=(8,)), seed=0)
    seen: list[str] = []
    reduce = BookKeeping._reduce

    def record(*args: object) -> torch.Tensor:
        seen.append(torch.get_float32_matmul_precision())
        return reduce(*args)

    model.register_forward_hook(lambda *_: seen.append(torch.get_float32_matmul_precision()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BookKeeping, "_reduce", record)
        plan = LocalPlan(local_epochs=1, batch_size=8, learning_rate=0.1)
        train_local(model, data, plan, privacy=PrivacyPlan(1.0, 1.0, mode), randomness=reproducible(0), own_model=True)
    expected = ["medium", "highest"] * (len(seen) // 2) if mode == "bk" else ["highest"] * len(seen)
    assert seen and seen == expected
    assert torch.get_float32_matmul_precision() == "medium"
