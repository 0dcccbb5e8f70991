"""fedshield's own per-example clipping engine (``grad-sample-mode = bk``): book-keeping.

Bu, Wang, Zha & Karypis (2023), "Differentially Private Optimization on Large Model at Small
Cost" (ICML): one forward and one backward pass, as in non-private training, with the weight
gradients left out of autograd's backward. Each trainable layer keeps its input ``a`` (forward)
and the gradient ``g`` of the summed per-example losses at its output (backward); because
records do not interact (no BatchNorm), example ``i``'s gradient of a linear layer is
``g_i^T a_i``. From these the engine computes, per example:

- the squared gradient norm, as ghost norms (``sum_{t,s} (a_t.a_s)(g_t.g_s)``, Li et al. 2022)
  when that is cheaper, else by materialising the per-example gradient (one batched matmul with
  the flops of the ordinary weight gradient);
- the clip factor ``c_i = min(1, C / (||grad_i|| + 1e-6))`` (Opacus's rule, so every mode gives
  the same update); an example whose gradient is not finite gets ``c_i = 0``;
- where the norm and the clipped sum are computed differently (ghost norms, embeddings), two
  guards keep floating point from lifting a record over the bound (a server can craft weights
  whose per-position terms are huge and cancel): the ghost norm is computed in float64 and
  raised by a rigorous bound on its rounding error (Higham 2002, Sec. 3.1: ``|fl(sum x) - sum
  x| <= gamma_n sum |x|``), and the norm clipped on is at least ``S_i / CANCELLATION_BOUND``,
  where ``S_i = sum_t ||g_it|| ||a_it||`` bounds the example's gradient (triangle inequality)
  and the float32 terms its clipped sum adds up, so the sum's rounding error per record stays
  below ``~ T u CANCELLATION_BOUND C`` (``u = 2^-24``);
- the clipped sum ``sum_i c_i grad_i``, as one matmul ``(c * g)^T a`` per layer (book-keeping),
  or from the materialised per-example gradients.

Layers: ``nn.Linear`` (any number of token dimensions), ``nn.Conv2d`` (``groups = 1``, via
unfold), ``nn.Embedding`` (no ``max_norm``), ``nn.LayerNorm``, ``nn.GroupNorm``. A model with a
trainable parameter anywhere else, a parameter shared by two layers or a layer called twice in
one forward pass is refused (:class:`Unsupported`), and ``auto`` then picks an Opacus mode.
What the engine releases is checked like every mode: the brute-force loop of one backward pass
per record in tests/client/test_dp_trainer.py and test_per_sample_grads.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.grad import conv2d_weight

from client.precision import ieee_float32, no_autocast, normal_factors

SUPPORTED = (nn.Linear, nn.Conv2d, nn.Embedding, nn.LayerNorm, nn.GroupNorm)
# An example whose per-position terms sum to less than 1/CANCELLATION_BOUND of their total size
# is clipped as if its norm were that size over CANCELLATION_BOUND: its gradient is then mostly
# cancellation, which float32 cannot compute to the bound. Natural examples stay far from it
# (T positions in general directions give a ratio near sqrt(T)).
CANCELLATION_BOUND = 100.0
_U64 = 2.0**-53  # unit roundoff of float64
# Example gradients of at most this many coordinates are put side by side and reduced together
# (one squared norm and one matmul for all of them instead of a few small operations each: a
# ResNet-18's 20 GroupNorms and small convolutions were 41 layers of dispatch overhead a step).
SMALL = 4096
# Raised when the engine's speed changes, so that ``auto``'s cached choices are measured again
# (client/modes.py keys them by it). 2: Conv2d example gradients by a grouped convolution.
# 3: small example gradients reduced together, GroupNorm's by one fused backward.
REVISION = 3


class Unsupported(ValueError):
    """The model has a trainable parameter the engine cannot compute per-example norms for."""


@dataclass
class _Record:
    module: nn.Module
    a: torch.Tensor  # the layer's input, detached
    g: torch.Tensor | None = None  # gradient of the summed losses at the layer's output


def check(model: nn.Module) -> list[nn.Module]:
    """The layers whose parameters the engine trains; :class:`Unsupported` names the first
    trainable parameter it cannot handle."""
    owner: dict[int, str] = {}
    layers = []
    for name, module in model.named_modules(remove_duplicate=False):
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        where = f"{name or 'model'}.{own[0][0]}"
        if type(module) not in SUPPORTED:
            raise Unsupported(f"book-keeping: no per-example norms for {type(module).__name__} ({where})")
        if isinstance(module, nn.Conv2d) and (
            module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            raise Unsupported(f"book-keeping: Conv2d {where} has groups, a padding mode or string padding")
        if isinstance(module, nn.Embedding) and (
            module.max_norm is not None or module.sparse or module.scale_grad_by_freq
        ):
            raise Unsupported(f"book-keeping: Embedding {where} renormalises, scales by frequency or is sparse")
        for n, p in own:
            if id(p) in owner:
                raise Unsupported(f"book-keeping: parameter {name}.{n} is shared with {owner[id(p)]}")
            owner[id(p)] = f"{name}.{n}"
        layers.append(module)
    unowned = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owner]
    if unowned:
        raise Unsupported(f"book-keeping: trainable parameter {unowned[0]} is not in a supported layer")
    return layers


class BookKeeping:
    """Per-example clipped gradient sums for ``model``, one forward and one backward pass a step."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        self.layers = check(model)
        self.max_grad_norm = max_grad_norm
        self.params = [p for m in self.layers for p in m.parameters(recurse=False) if p.requires_grad]
        self._records: dict[nn.Module, _Record] = {}
        self._active = False
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self.layers]

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def _forward_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self._active:
            return None
        if module in self._records:
            raise Unsupported(f"book-keeping: {type(module).__name__} is called twice in one forward pass")
        record = _Record(module, inputs[0].detach())
        self._records[module] = record

        def keep(grad: torch.Tensor) -> None:
            record.g = grad.detach()

        if output.requires_grad:
            output.register_hook(keep)
            return None
        # Nothing before this layer is trained: its output becomes where the backward pass ends.
        leaf = output.detach().requires_grad_()
        leaf.register_hook(keep)
        return leaf.clone()  # the model may work in place on it; the hook stays on the leaf

    @contextmanager
    def _recording(self) -> Iterator[None]:
        self._records = {}
        frozen = [p for p in self.params if p.requires_grad]
        for p in frozen:  # autograd computes activation gradients only, no weight gradients
            p.requires_grad_(False)
        self._active = True
        try:
            yield
        finally:
            self._active = False
            for p in frozen:
                p.requires_grad_(True)

    def clipped_sum(
        self, model: nn.Module, criterion: nn.Module, xb: torch.Tensor, yb: torch.Tensor, *, accumulate: bool = False
    ) -> torch.Tensor:
        """Set ``p.summed_grad`` = sum over the batch of each example's gradient clipped to
        ``max_grad_norm`` (0 for an example whose gradient is not finite); returns the (B,)
        clip factors. ``accumulate``: add to the ``p.summed_grad`` already there instead (one
        chunk of a larger sampled batch: every example is clipped on its own, so the chunks'
        clipped sums add up to the whole batch's)."""
        if accumulate and not all(isinstance(getattr(p, "summed_grad", None), torch.Tensor) for p in self.params):
            raise RuntimeError("book-keeping: no clipped sum to accumulate into")
        reduction = criterion.reduction
        criterion.reduction = "none"
        try:
            with self._recording(), no_autocast():  # float32 layer inputs and output gradients
                losses = criterion(model(xb), yb)
                if losses.requires_grad:
                    losses.sum().backward()
        finally:
            criterion.reduction = reduction
        records = [r for r in self._records.values() if r.g is not None]
        self._records = {}
        # the norms and the sum add the same float32 values (client/precision.py); convolutions
        # here give materialised rows, whose norms and sums are both read from those rows
        with ieee_float32(convolutions=False):
            return self._reduce(records, len(yb), accumulate)

    def _reduce(self, records: list[_Record], batch: int, accumulate: bool) -> torch.Tensor:
        """The clip factors and clipped sum from the recorded inputs and output gradients."""
        device = self.params[0].device
        parts = [_Part.of(r, batch) for r in records]
        squared = torch.zeros(batch, dtype=torch.float32, device=device)
        size = torch.zeros(batch, dtype=torch.float32, device=device)
        for part in parts:  # norms not computed from materialised example gradients
            own = part.squared_norms()
            if own is not None:
                squared += own
            if part.size is not None:  # computed apart from its clipped sum: guard the cancellation
                size = torch.maximum(size, part.size)
        blocks = _blocks([e for part in parts for e in part.examples])
        for block in blocks:
            squared += _squares(block.rows)
        bad = ~torch.isfinite(squared) | ~torch.isfinite(size)
        norms = torch.maximum(squared.clamp(min=0).sqrt(), size / CANCELLATION_BOUND)
        factors = normal_factors((self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0), torch.float32)
        factors = torch.where(bad, torch.zeros_like(factors), factors)
        dropped = bad if bool(bad.any()) else None  # checked once, not by every layer
        if not accumulate:  # each parameter's first share becomes its sum (no zeros to add to)
            for p in self.params:
                p.summed_grad = None
        for block in blocks:
            block.add_clipped(factors, dropped)
        for part in parts:
            part.add_clipped(factors, dropped)
        for p in self.params:  # a layer the loss did not reach (an empty backward path): nothing
            if p.summed_grad is None:
                p.summed_grad = torch.zeros_like(p)
        return factors


@dataclass
class _Block:
    """Materialised example gradients, (B, n) rows: one parameter's, or several small ones side by side."""

    params: list[nn.Parameter]
    rows: torch.Tensor

    def add_clipped(self, factors: torch.Tensor, bad: torch.Tensor | None) -> None:
        total = factors @ _finite(self.rows, bad)
        at = 0
        for p in self.params:
            _add_to_sum(p, total[at : at + p.numel()].view(p.shape))
            at += p.numel()


def _add_to_sum(p: nn.Parameter, share: torch.Tensor) -> None:
    """Add ``share`` (a tensor of the engine's own, not aliased by another parameter's) to
    ``p.summed_grad``, or make it the sum if there is none yet."""
    if p.summed_grad is None:
        p.summed_grad = share
    else:
        p.summed_grad += share


def _blocks(examples: list[tuple[nn.Parameter, torch.Tensor]]) -> list[_Block]:
    """One block per large example gradient, and one for all the small ones side by side."""
    for p, t in examples:  # a block is sliced back by each parameter's size: rows must match it
        if t.dim() != 2 or t.shape[1] != p.numel():
            raise RuntimeError(f"book-keeping: example gradients {tuple(t.shape)} for a parameter of {p.numel()}")
    small = [(p, t) for p, t in examples if t.shape[1] <= SMALL]
    blocks = [_Block([p], t) for p, t in examples if t.shape[1] > SMALL]
    if small:  # one small tensor is its own rows: no copy
        rows = small[0][1] if len(small) == 1 else torch.cat([t for _, t in small], dim=1)
        blocks.append(_Block([p for p, _ in small], rows))
    return blocks


class _Part:
    """One layer's share of a step: its parameters' example gradients where they are
    materialised (``examples``: the engine reduces them, small ones together), and the
    per-example squared norms and clipped sum of the rest (ghost norms, embeddings)."""

    def __init__(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
        self.module, self.a, self.g = module, a, g
        self.examples: list[tuple[nn.Parameter, torch.Tensor]] = []  # (parameter, (B, numel) rows)
        # (B,) sum over positions of ||g_t|| ||a_t||, set by squared_norms where the norm is
        # not computed from the very terms the clipped sum adds (ghost norms, embeddings)
        self.size: torch.Tensor | None = None

    @staticmethod
    def of(record: _Record, batch: int) -> _Part:
        m = record.module
        cls = {nn.Linear: _Linear, nn.Conv2d: _Conv, nn.Embedding: _Embedding}.get(type(m), _Norm)
        assert record.g is not None
        if record.a.shape[0] != batch:
            raise Unsupported(f"book-keeping: {type(m).__name__} input has no batch dimension first")
        return cls(m, record.a, record.g)

    def squared_norms(self) -> torch.Tensor | None:
        """(B,) squared norms of the example gradients not in ``examples``; None if there are none."""
        return None

    def add_clipped(self, factors: torch.Tensor, bad: torch.Tensor | None) -> None:
        """Add ``sum_i factors_i grad_i`` of the gradients not in ``examples`` to the parameters'
        ``summed_grad`` (``bad``: the examples to leave out, whose terms are not finite; ``None``
        when there are none)."""


def use_ghost_norms(tokens: int, d_in: int, d_out: int) -> bool:
    """Ghost norms cost B T^2 (in + out); materialised example gradients B T in out (and B in
    out memory). Both give the same norms (ghost norms in float64, raised by their rounding
    bound, :func:`_ghost_squared_norms`): the choice is speed only."""
    return tokens * (d_in + d_out) < d_in * d_out


def _ghost_squared_norms(aa: torch.Tensor, gg: torch.Tensor, terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared norms, sizes) per example from the float64 Gram matrices of its positions' inputs
    ``aa`` and output gradients ``gg``: ``sum_{t,s} aa_ts gg_ts``, raised by a bound on its
    rounding error (the dot products of length ``terms`` and the sum of their T^2 products err
    by at most ``gamma_n`` times the sum of absolute terms, which is at most ``size^2`` by
    Cauchy-Schwarz; doubled for the float64 products themselves), never below the exact squared
    norm; and ``size = sum_t ||a_t|| ||g_t||``, read off the Grams' diagonals."""
    size = (aa.diagonal(dim1=1, dim2=2).sqrt() * gg.diagonal(dim1=1, dim2=2).sqrt()).sum(dim=1)
    n = terms + aa.shape[1] * aa.shape[2] + 4
    gamma = 2 * n * _U64 / (1 - n * _U64)
    return _raised((aa * gg).sum(dim=(1, 2)).clamp(min=0) + gamma * size**2), size.float()


def _raised(squared: torch.Tensor) -> torch.Tensor:
    """float64 squared norms to float32, rounded up (a cast may round down by 2^-24)."""
    return (squared * (1 + 2.0**-20)).float()


def _outer_squared_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Squared norms of the outer products ``g_i a_i^T`` of the rows of ``a`` (B, in) and ``g``
    (B, out): ``||a_i||^2 ||g_i||^2``, each factor in float64 so that neither underflows nor
    overflows where their product would not (float32 inputs square to within float64's range),
    raised by the float64 sums' rounding bound (``gamma_n``, Higham 2002, Sec. 3.1) and the
    cast. The cast to float64 happens inside the reduction (``vector_norm``'s ``dtype``):
    the same values as squaring a float64 copy, at a third of its time on a CPU (the copy and
    ``pow`` were most of book-keeping's overhead on an MLP)."""
    n = max(a.shape[1], g.shape[1]) + 4
    gamma = 2 * n * _U64 / (1 - n * _U64)
    a_norms = torch.linalg.vector_norm(a, dim=1, dtype=torch.float64)
    g_norms = torch.linalg.vector_norm(g, dim=1, dtype=torch.float64)
    return _raised((a_norms * g_norms).square() * (1 + gamma))


def _squares(rows: torch.Tensor) -> torch.Tensor:
    """Each row's sum of squares: the same values as ``pow(2).sum`` (x * x is exactly x ** 2, and
    ``sum`` reduces in cascades, to about 1e-7 relative), in half its time. Not
    ``vector_norm``: on a CPU its float32 reduction under-estimated a 2.4-million-entry row with a
    few large entries by 0.8% (found in review), which would let a record add 1.008 C."""
    return (rows * rows).sum(dim=1)


def _finite(t: torch.Tensor, bad: torch.Tensor | None) -> torch.Tensor:
    """``t`` with the examples ``bad`` zeroed (``0 * inf`` would be NaN in the sum)."""
    if bad is not None:
        t = t.clone()
        t[bad] = 0
    return t


class _Matmul(_Part):
    """A layer whose example gradient is ``g_i^T a_i`` with ``a_i`` (T, in), ``g_i`` (T, out)."""

    def __init__(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
        super().__init__(module, a, g)
        t, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
        b = a.shape[0]
        # weight: its example gradients materialised, or (None) its norms and sum computed apart
        self.ghost = module.weight.requires_grad and use_ghost_norms(t, d_in, d_out)
        if module.weight.requires_grad and not self.ghost:
            self.examples.append((module.weight, torch.bmm(g.transpose(1, 2), a).reshape(b, -1)))
        if module.bias is not None and module.bias.requires_grad:
            self.examples.append((module.bias, g.sum(dim=1)))

    def squared_norms(self) -> torch.Tensor | None:
        a, g = self.a, self.g
        if not self.ghost:
            return None
        if a.shape[1] == 1:  # one outer product: ||g_i a_i^T|| = ||a_i|| ||g_i||, no cancellation
            return _outer_squared_norms(a[:, 0], g[:, 0])
        a64, g64 = a.double(), g.double()
        aa, gg = torch.bmm(a64, a64.transpose(1, 2)), torch.bmm(g64, g64.transpose(1, 2))
        squared, self.size = _ghost_squared_norms(aa, gg, a.shape[2] + g.shape[2])
        return squared

    def add_clipped(self, factors: torch.Tensor, bad: torch.Tensor | None) -> None:
        if self.ghost:
            weight = self.module.weight
            scaled = _finite(self.g, bad) * factors[:, None, None]
            a = _finite(self.a, bad)
            if a.is_contiguous():  # sum_{i,t} c_i g_it a_it^T as one matmul over the (B*T) rows
                total = scaled.reshape(-1, scaled.shape[-1]).T @ a.reshape(-1, a.shape[-1])
            else:  # a conv's unfolded input, (B, in, T) underneath: einsum reads it where it lies
                total = torch.einsum("bto,bti->oi", scaled, a)
            _add_to_sum(weight, total.reshape(weight.shape))


class _Linear(_Matmul):
    def __init__(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
        b = a.shape[0]
        super().__init__(module, a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1]))


class _Conv(_Matmul):
    """Conv2d as a matmul over its unfolded input patches; where the example gradients are
    materialised, they come from one convolution with the batch as groups instead (the same
    values without the unfold, which copies every input k*k times: 3-10x faster on a CPU at
    high resolution, and the patches' memory is never needed)."""

    def __init__(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
        m = module
        assert isinstance(m, nn.Conv2d)
        b, d_in, d_out = a.shape[0], m.in_channels * math.prod(m.kernel_size), m.out_channels
        positions = g.shape[2] * g.shape[3]
        if use_ghost_norms(positions, d_in, d_out) or not m.weight.requires_grad:
            cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)  # (B, in, L)
            super().__init__(module, cols.transpose(1, 2), g.reshape(b, d_out, -1).transpose(1, 2))
            return
        _Part.__init__(self, module, a, g)
        self.ghost = False
        grouped = conv2d_weight(
            a.reshape(1, b * m.in_channels, *a.shape[2:]),
            (b * d_out, m.in_channels, *m.kernel_size),
            g.reshape(1, b * d_out, *g.shape[2:]),
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=b,
        )
        self.examples.append((m.weight, grouped.reshape(b, -1)))
        if m.bias is not None and m.bias.requires_grad:
            self.examples.append((m.bias, g.sum(dim=(2, 3))))


class _Embedding(_Part):
    def __init__(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
        b = a.shape[0]
        ids = a.reshape(b, -1)
        g = g.reshape(b, ids.shape[1], -1)
        pad = module.padding_idx
        if pad is not None:  # the padding row receives no gradient
            g = g * (ids != pad).unsqueeze(-1).to(g.dtype)
        super().__init__(module, ids, g)

    def squared_norms(self) -> torch.Tensor:
        ids, g64 = self.a, self.g.double()
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(torch.float64)  # one-hot inputs' Gram matrix
        squared, self.size = _ghost_squared_norms(same, torch.bmm(g64, g64.transpose(1, 2)), g64.shape[2])
        return squared

    def add_clipped(self, factors: torch.Tensor, bad: torch.Tensor | None) -> None:
        weight = self.module.weight
        scaled = _finite(self.g, bad) * factors[:, None, None]
        if weight.summed_grad is None:
            weight.summed_grad = torch.zeros_like(weight)
        weight.summed_grad.index_add_(0, self.a.reshape(-1), scaled.reshape(-1, scaled.shape[-1]))


class _Norm(_Part):
    """LayerNorm / GroupNorm: example gradients of the affine parameters, materialised (small)."""

    def __init__(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
        super().__init__(module, a, g)
        m = module
        b = a.shape[0]
        if isinstance(m, nn.LayerNorm):
            normalised = F.layer_norm(a, m.normalized_shape, None, None, m.eps)
            lead = a.dim() - len(m.normalized_shape)
            dims = tuple(range(1, lead))
            w = (g * normalised).sum(dim=dims) if dims else g * normalised
            bias = g.sum(dim=dims) if dims else g
        else:
            assert isinstance(m, nn.GroupNorm)
            w, bias = _group_norm_example_grads(a, g, m.num_groups, m.eps)
        for p, t in ((m.weight, w), (m.bias, bias)):
            if p is not None and p.requires_grad:
                self.examples.append((p, t.reshape(b, -1)))


def _group_norm_example_grads(
    a: torch.Tensor, g: torch.Tensor, groups: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm's per-example (B, C) weight and bias gradients from its input ``a`` (B, C, *)
    and output gradient ``g``: one fused GroupNorm backward over the batch laid out as a single
    example of B*C channels in B*groups groups (each group's statistics are then those of its
    own example and group, as in the forward pass), whose weight and bias gradients are the
    per-example ones side by side. The same values as ``sum(g * group_norm(a))`` and ``sum(g)``
    over the positions to float32 rounding, without the normalised copy and the passes over it."""
    b, c = a.shape[0], a.shape[1]
    positions = math.prod(a.shape[2:])
    # Both kernels read their inputs as contiguous memory (autograd hands them contiguous ones):
    # a strided view, e.g. the gradient of a GroupNorm output later concatenated along its
    # positions or summed over them, would give each record's row from other records' memory
    # (found in review: one record moved the sum by 3.8 C).
    x = a.reshape(1, b * c, positions).contiguous()
    dy = g.reshape(1, b * c, positions).contiguous()
    _, mean, rstd = torch.native_group_norm(x, None, None, 1, b * c, positions, b * groups, eps)
    ones = torch.ones(b * c, dtype=a.dtype, device=a.device)  # the weight: not used for these two
    _, w, bias = torch.ops.aten.native_group_norm_backward(
        dy, x, mean, rstd, ones, 1, b * c, positions, b * groups, [False, True, True]
    )
    return w.reshape(b, c), bias.reshape(b, c)


class PoissonBatches:
    """Poisson sampling as Opacus's ``UniformWithReplacementSampler`` draws it (each record
    independently with probability ``sample_rate`` at every step, from ``generator``), indexed
    in one gather instead of collated record by record. Endless: the caller counts steps."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], sample_rate: float, generator: torch.Generator) -> None:
        self.tensors, self.sample_rate, self.generator = tensors, sample_rate, generator

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.tensors[0])
        while True:
            mask = torch.rand(n, generator=self.generator) < self.sample_rate
            index = mask.nonzero().reshape(-1).to(self.tensors[0].device)
            yield tuple(t[index] for t in self.tensors)


def expected_batch_size(records: int, sample_rate: float) -> int:
    """What the noisy sum is divided by (Opacus's ``int(n * q)``, without its rounding down of
    ``n * (1 / n)`` to 0)."""
    return max(1, math.floor(records * sample_rate + 1e-9))
