"""fedshield's book-keeping engine: every layer it supports, both ways of computing norms, and
the models it must refuse. The reference is always a loop of one backward pass per record."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from client import bookkeeping
from client.bookkeeping import BookKeeping, Unsupported, expected_batch_size
from client.dp_trainer import LocalPlan, PrivacyPlan, train_local
from common.dataset import Dataset, Modality
from common.privacy.noise import reproducible
from tests.client.crafted import TwoReadouts, cancelling_linear


class Tokens(nn.Module):
    """Embedding (with a padding row and repeated ids) -> LayerNorm -> Linear on every token ->
    mean over tokens -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 6, padding_idx=0)
        self.norm = nn.LayerNorm(6)
        self.token = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.token(self.norm(self.embed(ids)))).mean(dim=1))


class Convs(nn.Module):
    """Conv2d (stride, padding) -> GroupNorm -> in-place ReLU -> Conv2d (dilation, no bias) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, dilation=2, padding=2, bias=False)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.relu(self.gn(self.conv1(x)))).flatten(1))


def _batch(model: nn.Module, n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if isinstance(model, Tokens):
        x = torch.randint(0, 4, (n, 9), generator=g)  # ids 0..3: repeats and padding in every record
    else:
        x = torch.rand((n, 2, 8, 8), generator=g)
    return x, torch.randint(0, 3, (n,), generator=g)


def _brute_force(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(y)):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        for t, g in zip(total, grads, strict=True):
            t.add_(g * torch.clamp(bound / (norm + 1e-6), max=1.0))
    return total


def _engine_equals_brute_force(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float, *, all_clipped: bool = True
) -> BookKeeping:
    """Run the engine on the batch and check its clipped sum against the brute-force loop
    (``all_clipped``: every record's factor below 1, or the test does not test clipping);
    returns the engine, still open."""
    expected = _brute_force(model, x, y, bound)
    engine = BookKeeping(model, bound)
    factors = engine.clipped_sum(model, nn.CrossEntropyLoss(), x, y)
    if all_clipped:
        assert (factors < 1).all(), "every record must be clipped, or the test does not test clipping"
    for p, e in zip(engine.params, expected, strict=True):
        torch.testing.assert_close(p.summed_grad, e, atol=1e-6, rtol=1e-4)
    return engine


@pytest.mark.parametrize("ghost", [True, False], ids=["ghost-norms", "materialised"])
@pytest.mark.parametrize("make", [Tokens, Convs])
def test_clipped_sum_equals_brute_force(make, ghost: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bookkeeping, "use_ghost_norms", lambda *_: ghost)
    torch.manual_seed(1)
    model = make()
    x, y = _batch(model)
    engine = _engine_equals_brute_force(model, x, y, 0.1)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    engine.close()
    assert not any(m._forward_hooks for m in model.modules())


class _OddConv(nn.Module):
    """One Conv2d with a non-square kernel, unequal strides, paddings and dilations."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=bias)
        self.head = nn.Linear(3 * 4 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


@pytest.mark.parametrize("ghost", [True, False], ids=["ghost-norms", "grouped-convolution"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_example_gradients_equal_brute_force_for_any_geometry(
    ghost: bool, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grouped convolution (batch as groups) gives each record's own gradient: no record's
    gradient leaks into another's clip factor, whatever the kernel, stride, padding, dilation."""
    monkeypatch.setattr(bookkeeping, "use_ghost_norms", lambda *_: ghost)
    torch.manual_seed(3)
    model = _OddConv(bias)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand((9, 2, 8, 8), generator=g) * 3, torch.randint(0, 3, (9,), generator=g)
    _engine_equals_brute_force(model, x, y, 0.05).close()


class _Grouped(nn.Module):
    """Linear -> GroupNorm on inputs of any rank -> Linear: a batch of (N, C, *positions)."""

    def __init__(self, positions: tuple[int, ...], trainable: str) -> None:
        super().__init__()
        self.positions = positions
        self.lift = nn.Linear(2, 6)
        self.gn = nn.GroupNorm(3, 6)
        self.head = nn.Linear(6 * max(1, int(np.prod(positions))), 3)
        for name in ("weight", "bias"):
            getattr(self.gn, name).requires_grad_(name in trainable)
        with torch.no_grad():  # not the identity affine map, so that the weight's gradient matters
            self.gn.weight.uniform_(0.5, 2.0)
            self.gn.bias.uniform_(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lift(x)  # (N, *positions, 6)
        h = h.movedim(-1, 1)  # (N, 6, *positions): not contiguous
        return self.head(torch.tanh(self.gn(h)).flatten(1))


@pytest.mark.parametrize("positions", [(), (5,), (3, 4), (2, 3, 2)], ids=["NC", "NCL", "NCHW", "NCDHW"])
@pytest.mark.parametrize("trainable", ["weight bias", "weight", "bias"])
def test_group_norm_example_gradients_equal_brute_force(positions: tuple[int, ...], trainable: str) -> None:
    """GroupNorm's example gradients come from one fused backward over the batch laid out as one
    example of N*C channels: each group must keep its own example's statistics, for any rank."""
    torch.manual_seed(4)
    model = _Grouped(positions, trainable)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn((7, *positions, 2), generator=g) * 2, torch.randint(0, 3, (7,), generator=g)
    _engine_equals_brute_force(model, x, y, 0.05).close()


class _AfterGroupNorm(nn.Module):
    """Linear -> GroupNorm over (N, 6, L), then its output concatenated along the positions or
    summed over them: the gradient at the GroupNorm's output is then a strided view (found in
    review: a kernel that read it as contiguous mixed the records' rows)."""

    def __init__(self, after: str, positions: int = 5) -> None:
        super().__init__()
        self.after = after
        self.lift = nn.Linear(2, 6)
        self.gn = nn.GroupNorm(3, 6)
        self.head = nn.Linear(6 * 2 * positions if after == "cat" else 6, 3)
        for name, p in self.named_parameters():  # only the GroupNorm trains: its rows are the whole gradient
            p.requires_grad_(name.startswith("gn."))
        with torch.no_grad():
            self.gn.weight.uniform_(0.5, 2.0)
            self.gn.bias.uniform_(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lift(x).movedim(-1, 1)  # (N, 6, L)
        if self.after == "cat":
            return self.head(torch.cat([self.gn(h), torch.tanh(h)], dim=2).flatten(1))
        return self.head(self.gn(h).sum(dim=2))


@pytest.mark.parametrize("after", ["cat", "sum"])
@pytest.mark.parametrize("n", [1, 4, 16])
def test_group_norm_example_gradients_hold_for_a_strided_output_gradient(after: str, n: int) -> None:
    torch.manual_seed(4)
    model = _AfterGroupNorm(after)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn((n, 5, 2), generator=g) * 2, torch.randint(0, 3, (n,), generator=g)
    _engine_equals_brute_force(model, x, y, 0.05, all_clipped=False).close()


def test_removing_one_record_moves_the_clipped_sum_by_at_most_the_bound() -> None:
    """Add/remove-one neighbours, as an adversary would check the release: with output
    gradients of one sign (a server's choice of head weights) the clipped sums of the batch and
    of the batch without record j may differ by at most C, for every j."""
    torch.manual_seed(4)
    model = _AfterGroupNorm("cat")
    with torch.no_grad():
        model.head.weight.abs_()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn((16, 5, 2), generator=g) * 2, torch.zeros(16, dtype=torch.long)
    bound = 1e-3

    def clipped_sum(keep: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        engine = BookKeeping(model, bound)
        factors = engine.clipped_sum(model, nn.CrossEntropyLoss(), x[keep], y[keep])
        engine.close()
        return [p.summed_grad.double() for p in engine.params], factors

    everyone, factors = clipped_sum(torch.ones(16, dtype=torch.bool))
    assert (factors < 1).all(), "every record must be clipped, or the test does not test the bound"
    for j in range(16):
        rest, _ = clipped_sum(torch.arange(16) != j)
        moved = float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(everyone, rest, strict=True))))
        assert moved <= bound * (1 + 1e-5), (j, moved / bound)


def test_an_example_gradients_squared_norm_is_not_under_estimated() -> None:
    """A row with a few large entries and millions of tiny ones (one ResNet-18 conv layer's
    gradient): a float32 reduction that loses the small terms under-estimates the norm, and the
    record is then clipped to more than C. ``vector_norm`` lost 0.8% here (found in review)."""
    row = torch.full((1, 2_359_296), 1.7e-4)
    row[0, :2] = 0.5**0.5
    exact = float(row.double().pow(2).sum())
    assert float(bookkeeping._squares(row)[0]) >= exact * (1 - 1e-6)


def test_outer_product_norms_hold_where_a_float32_square_would_under_or_overflow() -> None:
    """A crafted MLP: a frozen first layer scaled by 1e-24 and a last layer by 1e22, so that the
    middle layer's inputs square below float32's range (1e-49 -> 0) and its output gradients
    above it (1e44 -> inf), while each record's gradient there is about 0.05. Each factor of
    the norm in float64: every record clipped to the bound as a float64 brute force clips it,
    none dropped as non-finite (0 * inf) and none released unclipped."""
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 4, bias=False), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.mul_(1e-24)
        model[2].weight.mul_(1e22)
    model[0].weight.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand((7, 6), generator=g), torch.randint(0, 3, (7,), generator=g)
    hidden = model[0](x)
    assert float((hidden * hidden).sum(dim=1).max()) == 0.0, "the test needs inputs whose float32 squares vanish"
    bound = 0.01
    expected = _brute_force(copy.deepcopy(model).double(), x.double(), y, bound)
    engine = BookKeeping(model, bound)
    factors = engine.clipped_sum(model, nn.CrossEntropyLoss(), x, y)
    assert (factors > 0).all() and (factors < 1).all(), "every record clipped, none dropped"
    for p, e in zip(engine.params, expected, strict=True):
        torch.testing.assert_close(p.summed_grad.double(), e, atol=1e-12, rtol=1e-4)
    assert float(model[1].weight.summed_grad.norm()) > 1e-6, "the crafted layer must receive its clipped share"
    engine.close()


def test_a_crafted_model_gets_no_more_than_the_bound_from_any_record() -> None:
    """A curious server scales the weights so that one record's gradient is enormous: what that
    record adds to the sum is still at most the clipping bound."""
    torch.manual_seed(2)
    model = Convs()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50.0)
    x, y = _batch(model, n=1)
    engine = BookKeeping(model, 0.5)
    engine.clipped_sum(model, nn.CrossEntropyLoss(), x, y)
    norm = torch.sqrt(sum((p.summed_grad**2).sum() for p in engine.params))
    assert 0.49 < float(norm) <= 0.5 * (1 + 1e-5)


def _released_norm(model: nn.Module, x: torch.Tensor, bound: float) -> float:
    engine = BookKeeping(model, bound)
    try:
        engine.clipped_sum(model, nn.CrossEntropyLoss(), x, torch.tensor([0]))
        return float(torch.sqrt(sum((p.summed_grad.double() ** 2).sum() for p in engine.params)))
    finally:
        engine.close()


@pytest.mark.parametrize("asymmetry", [0.1, 1.0, 3.0, 10.0])
def test_ghost_norms_cannot_be_cancelled_by_crafted_weights(asymmetry: float) -> None:
    """The attack (found in review): a record with two equal positions and opposite read-outs of
    1e4 (within the site's weight limit). Its true gradient is 25-860 C, but in float32 the ghost
    norm's T^2 terms cancel to about 0, the clip factor stays 1 and the whole gradient was
    released (25-859 C, measured on the old code). Whatever the rounding, a record adds at most C."""
    torch.manual_seed(0)
    d = 64
    model = cancelling_linear(d, asymmetry)
    assert bookkeeping.use_ghost_norms(2, d, d)  # the path under attack
    x = torch.randn(1, 1, d).repeat(1, 2, 1) * 30
    assert _released_norm(model, x, 1.0) <= 1.0 + 1e-5


def test_embedding_norms_cannot_be_cancelled_by_a_repeated_token() -> None:
    """The same attack on an embedding: one token twice, opposite read-outs. The server tries
    weight variants offline until the rounding goes its way (the old code released 3 C at the
    first seed that gave a clip factor of 1)."""
    d = 64
    for seed in range(50):
        torch.manual_seed(seed)
        model = TwoReadouts(d, embed=True)
        with torch.no_grad():
            base = torch.randn(2, d).sign() * 1e4
            model.layer.weight.mul_(1e-4)
            model.p0.weight.copy_(base)
            model.p1.weight.copy_(-base)
            model.p0.weight[0, :4] += 3.0
        assert _released_norm(model, torch.tensor([[7, 7]]), 1.0) <= 1.0 + 1e-5, f"seed {seed}"


def test_a_record_that_overflows_adds_nothing_and_the_others_are_kept() -> None:
    torch.manual_seed(3)
    model = Tokens()
    x, y = _batch(model, n=4)
    x = x.clamp(max=2)
    x[1, 2] = x[3, 0] = 3
    with torch.no_grad():
        model.embed.weight[3] = float("inf")  # the records holding id 3 overflow
    poisoned = torch.tensor([False, True, False, True])
    engine = BookKeeping(model, 1.0)
    factors = engine.clipped_sum(model, nn.CrossEntropyLoss(), x, y)
    assert (factors[poisoned] == 0).all() and (factors[~poisoned] > 0).all()
    assert all(bool(torch.isfinite(p.summed_grad).all()) for p in engine.params)
    with torch.no_grad():
        model.embed.weight[3] = 0.0
    keep = ~poisoned
    expected = _brute_force(model, x[keep], y[keep], 1.0)
    for p, e in zip(engine.params, expected, strict=True):  # exactly the clean records' clipped sum
        torch.testing.assert_close(p.summed_grad, e, atol=1e-6, rtol=1e-4)


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.layer(x))[:, :2]


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))[:, :2]


class _Bare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.layer = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x * self.scale)


@pytest.mark.parametrize(
    "model, message",
    [
        (nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2)), "Conv1d"),
        (_Bare(), r"_Bare \(model.scale\)"),
        (_Tied(), "shared"),
        (nn.Sequential(nn.Embedding(5, 4, max_norm=1.0), nn.Flatten(), nn.Linear(8, 2)), "renormalises"),
    ],
    ids=["conv1d", "bare-parameter", "tied-weights", "embedding-max-norm"],
)
def test_what_it_cannot_clip_is_refused_by_name(model: nn.Module, message: str) -> None:
    with pytest.raises(Unsupported, match=message):
        BookKeeping(model, 1.0)


def test_a_layer_used_twice_in_one_pass_is_refused_and_the_model_is_left_trainable() -> None:
    model = _Twice()
    engine = BookKeeping(model, 1.0)
    with pytest.raises(Unsupported, match="called twice"):
        engine.clipped_sum(model, nn.CrossEntropyLoss(), torch.rand(3, 4), torch.tensor([0, 1, 0]))
    assert all(p.requires_grad for p in model.parameters())


def test_train_local_with_bk_refuses_an_unsupported_model_and_auto_falls_back() -> None:
    model = _Bare()
    rng = np.random.default_rng(0)
    data = Dataset(rng.random((8, 4), dtype=np.float32), rng.integers(0, 2, 8), 2, Modality.TABULAR, "t")
    plan = LocalPlan(local_epochs=1, batch_size=8, learning_rate=0.1)
    with pytest.raises(Unsupported):
        train_local(model, data, plan, privacy=PrivacyPlan(1.0, 1.0, "bk"), randomness=reproducible(0))
    result = train_local(model, data, plan, privacy=PrivacyPlan(1.0, 1.0, "auto"), randomness=reproducible(0))
    assert result.event is not None and result.event.steps == 1


def test_expected_batch_size_is_never_zero() -> None:
    assert expected_batch_size(49, 1 / 49) == 1  # 49 * (1 / 49) is 0.999... in floating point
    assert expected_batch_size(100, 0.25) == 25
    assert expected_batch_size(10, 0.25) == 2
