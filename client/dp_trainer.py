"""Local training at a site: the one DP-SGD path in fedshield, and the only code that
touches Opacus (its per-example-gradient modes; fedshield's own engine is client.bookkeeping).

DP-SGD (Abadi et al. 2016) with Poisson sampling, per-example clipping to ``max_grad_norm``
and Gaussian noise of std ``noise_multiplier * max_grad_norm`` on the sum. Unit of privacy:
one record at this site; neighbouring datasets differ by one record added or removed.

The non-private path (``privacy=None``) runs the same loop with shuffled mini-batches and
no clipping or noise, for comparison runs only.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.bookkeeping import PoissonBatches
from client.canaries import (
    UNCLIPPED_VALUE,
    VALUE_PER_CLIP,
    CanaryInjector,
    CanaryPlan,
    GradientCanaries,
    InputCanaries,
)
from client.precision import ieee_float32, no_autocast, normal_factors
from common import profiling
from common.config.sections import GHOST_REFUSED, SIMULATED_FAULTS, GradSampleMode
from common.dataset import Dataset
from common.evaluation import evaluate, pick_device  # noqa: F401  (evaluate: re-exported)
from common.models import exchanged_state
from common.privacy.accounting import DpSgdEvent
from common.privacy.noise import Randomness
from common.tasks import Task
from common.tasks.classification import Classification


@dataclass(frozen=True)
class LocalPlan:
    """How a site trains in one round (not privacy-relevant except through ``steps``)."""

    local_epochs: float
    batch_size: int
    learning_rate: float
    proximal_mu: float = 0.0  # FedProx; 0 disables
    # The most records put through the model at once; a sampled batch larger than this is
    # processed in chunks whose (clipped) gradient sums add up, one optimizer step per sampled
    # batch as before. 0: the whole batch at once.
    physical_batch: int = 0

    def __post_init__(self) -> None:
        if not self.local_epochs > 0:
            raise ValueError(f"local_epochs must be > 0, got {self.local_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {self.proximal_mu}")
        if self.physical_batch < 0:
            raise ValueError(f"physical_batch must be >= 0, got {self.physical_batch}")


GRAD_SAMPLE_MODES = tuple(m.value for m in GradSampleMode)  # one list: the config's
FAULTS = SIMULATED_FAULTS  # what each does: common.config.sections
CLIP_FAULT_FACTOR = 10.0


@dataclass(frozen=True)
class PrivacyPlan:
    """The mechanism's parameters, and how per-example gradients are clipped: ``bk``
    (fedshield's book-keeping engine, :mod:`client.bookkeeping`: one backward pass, no weight
    gradients from autograd), or Opacus's ``hooks`` (module hooks), ``functorch`` (vmap) or
    ``ew`` (torch expanded weights), whose per-example norms fedshield computes itself
    (:func:`_clip_and_accumulate`); ``auto`` measures them (:mod:`client.modes`). All compute
    the same clipped sum; the mode changes only speed and memory. Opacus's ``ghost`` is refused
    (:data:`common.config.sections.GHOST_REFUSED`)."""

    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str = "hooks"
    # Broken on purpose, for the empirical audit's tests of itself (simulated sites only;
    # client.handlers refuses it in a deployment): see :data:`FAULTS`.
    fault: str = ""

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(repr(f) for f in FAULTS)}, got {self.fault!r}")
        if self.grad_sample_mode == "ghost":
            raise ValueError(f"grad_sample_mode {GHOST_REFUSED}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            modes = ", ".join(GRAD_SAMPLE_MODES)
            raise ValueError(f"grad_sample_mode must be one of {modes}, got {self.grad_sample_mode!r}")
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")


@dataclass(frozen=True)
class LocalResult:
    weights: list[np.ndarray]
    num_examples: int
    event: DpSgdEvent | None  # None when trained without DP


def sampling(num_records: int, plan: LocalPlan) -> tuple[float, int]:
    """(Poisson sample rate, number of steps) for one round of ``plan`` on ``num_records``.

    The sample rate is ``1 / ceil(n / batch_size)``, exactly what Opacus uses, so the expected
    batch is about ``batch_size``; steps cover ``local_epochs`` passes in expectation.
    """
    if num_records < 1:
        raise ValueError(f"num_records must be >= 1, got {num_records}")
    batches_per_epoch = math.ceil(num_records / plan.batch_size)
    return 1.0 / batches_per_epoch, max(1, round(plan.local_epochs * batches_per_epoch))


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The tensors that travel to the server (:func:`common.models.exchanged_keys`), in order."""
    return [v.detach().cpu().numpy().copy() for v in exchanged_state(model).values()]


def _tensors(data: Dataset, device: torch.device) -> TensorDataset:
    return TensorDataset(torch.as_tensor(data.x, device=device), torch.as_tensor(data.y, device=device))


def train_local(
    model: nn.Module,
    data: Dataset,
    plan: LocalPlan,
    *,
    privacy: PrivacyPlan | None,
    randomness: Randomness,
    task: Task | None = None,
    device: torch.device | None = None,
    canaries: CanaryPlan | None = None,
    canary_records: tuple[np.ndarray, np.ndarray] | None = None,
    own_model: bool = False,
) -> LocalResult:
    """Train ``model`` (not modified, unless ``own_model``: the caller hands it over and will
    not use it again) on ``data`` for one round; return the new weights.

    With ``privacy``, this is DP-SGD and ``LocalResult.event`` records the mechanism exactly
    as run (checked against Opacus's own accountant history). ``randomness`` gives the Poisson
    sampler and the noise independent generators, secret unless the site asked for insecure
    reproducible noise (:mod:`common.privacy.noise`). ``canaries``: gradient canaries for the
    empirical audit (:mod:`client.canaries`), records sampled like the others (input canaries:
    their records in ``canary_records``).
    """
    device = device or pick_device()
    from common.models.clone import clone

    model = (model if own_model else clone(model)).to(device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    global_params = [p.detach().clone() for p in _params(model)]
    sample_rate, steps = sampling(len(data), plan)
    # Sampling draws indices on the CPU; noise is drawn where the gradients live, from
    # generators of its own (Randomness.step_noise): it must say nothing about which records
    # were sampled.
    sampling_rng = randomness.sampling_generator()
    optimizer = torch.optim.SGD(_params(model), lr=plan.learning_rate)
    criterion = (task or Classification()).criterion()  # the per-example loss DP-SGD clips
    loss_fn: nn.Module = criterion
    injector: CanaryInjector | None = None
    if canaries is not None and canaries.kind == "input":
        if canary_records is None:
            raise ValueError("input canaries need their records")
        params = [p for _, p in named]
        injector = InputCanaries(
            canaries, canary_records, model, params, criterion, sample_rate, randomness.canary_generator()
        )
    elif canaries is not None:
        value = VALUE_PER_CLIP * privacy.max_grad_norm if privacy is not None else UNCLIPPED_VALUE
        injector = GradientCanaries(canaries, named, sample_rate, randomness.canary_generator(), value)
    recorded_sigma = privacy.noise_multiplier if privacy is not None else 0.0

    if privacy is not None and plan.physical_batch:
        # Only fedshield's engine clips chunk by chunk (Opacus's per-example modes would keep
        # every chunk's per-example gradients until the step): auto means bk here.
        if privacy.grad_sample_mode not in (GradSampleMode.AUTO, GradSampleMode.BK):
            raise ValueError(
                f"physical batches need grad-sample-mode bk or auto, got {privacy.grad_sample_mode!r} "
                "(Opacus's modes put the whole sampled batch through at once)"
            )
        privacy = dataclasses.replace(privacy, grad_sample_mode=GradSampleMode.BK.value)
    if privacy is not None and privacy.grad_sample_mode == GradSampleMode.AUTO:
        from client.modes import choose

        mode = choose(model, data, plan.batch_size, device, task)
        privacy = dataclasses.replace(privacy, grad_sample_mode=mode)
    engine = bookkeeping = None
    if privacy is not None:
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ValueError(f"model is not DP-compatible: {errors[0]}")
    if privacy is not None and privacy.grad_sample_mode == GradSampleMode.BK:
        bookkeeping = _BookKeepingStep(
            model, privacy, sample_rate, len(data), injector, randomness, physical_batch=plan.physical_batch
        )
        recorded_sigma = bookkeeping.sigma
        loader = PoissonBatches(_tensors(data, device).tensors, sample_rate, sampling_rng)
    elif privacy is not None:
        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            # Only this call's notice that Opacus's secure mode (torchcsprng, which has no build
            # for this torch) is off: fedshield supplies secret generators itself (see
            # common.privacy.noise) and turns on secure mode's floating-point defence below.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant="prv")
        loader = DataLoader(_tensors(data, device), batch_size=plan.batch_size, generator=sampling_rng)
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=loss_fn,
            data_loader=loader,
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            poisson_sampling=True,
            # Opacus's own noise step is replaced (_instrument); its generator draws nothing.
            noise_generator=randomness.noise_generator(device),
            grad_sample_mode=privacy.grad_sample_mode,
        )
        model, optimizer, loader = private
        # Each noise coordinate: four draws summed and halved (Opacus's secure-mode sampling),
        # secret, from generators seeded for each step (common.privacy.noise).
        recorded_sigma = _instrument(optimizer, privacy, injector, randomness)
        if isinstance(injector, InputCanaries):
            injector.model = model  # Opacus's wrapper: its hooks are switched off for the canaries
    else:
        loader = ShuffledBatches(_tensors(data, device).tensors, plan.batch_size, sampling_rng)

    model.train()
    profiling.lap("opacus setup" if privacy is not None else "setup")
    # Dropout (transformers) draws from torch's global generator: seeded here, and forked so the
    # caller's generator state is left as it was (secret, or from the public seed when asked).
    # DP steps in float32 (client/precision.py): Opacus's modes compute per-example norms in
    # their hooks and the clipped sum in the optimizer, both in float32 proper whatever the
    # caller's TF32/bf16 settings; book-keeping does so for its own reductions, and lets TF32
    # speed the model's passes, whose values it then clips exactly. Autocast is off for both.
    precise = nullcontext() if privacy is None else no_autocast() if bookkeeping else ieee_float32()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _closing(bookkeeping), precise:
        _seed_dropout(randomness.dropout_seed(), device)
        done = 0
        while done < steps:
            for xb, yb in loader:
                optimizer.zero_grad(set_to_none=True)
                if bookkeeping is not None:
                    bookkeeping.gradients(model, criterion, xb, yb, done)
                elif len(yb) > 0 and privacy is None and 0 < plan.physical_batch < len(yb):
                    # the batch's mean loss, accumulated over chunks of at most physical_batch records
                    for part in _chunks(len(yb), plan.physical_batch):
                        (loss_fn(model(xb[part]), yb[part]) * (len(yb[part]) / len(yb))).backward()
                elif len(yb) > 0:
                    loss = loss_fn(model(xb), yb)
                    with warnings.catch_warnings():
                        # Opacus's hooks fire on module outputs when inputs need no grad: expected.
                        warnings.filterwarnings("ignore", message="Full backward hook is firing")
                        loss.backward()
                    if privacy is not None:
                        _drop_non_finite_examples(model)
                else:
                    # An empty Poisson batch is still a step: Opacus adds pure noise.
                    _empty_step_grads(model, privacy)
                if privacy is None and injector is not None:
                    # unclipped, as one more record of the mean-loss batch
                    injector.add("grad", None, 1.0 / plan.batch_size)
                optimizer.step()
                if plan.proximal_mu > 0:
                    # FedProx's proximal term is data-independent: applied after the private
                    # step as post-processing (adding it to the loss would be lost by Opacus,
                    # which rebuilds the gradient from per-example gradients).
                    with torch.no_grad():
                        for p, g in zip(_params(model), global_params, strict=True):
                            p.sub_(plan.learning_rate * plan.proximal_mu * (p - g))
                done += 1
                if done >= steps:
                    break

    profiling.lap("sgd steps")
    event = None
    if privacy is not None:
        event = DpSgdEvent(privacy.noise_multiplier, sample_rate, steps)
        if bookkeeping is not None:
            recorded = [(recorded_sigma, sample_rate, bookkeeping.steps)]
        else:
            recorded = engine.accountant.history
            model = model._module
        if recorded != [(recorded_sigma, sample_rate, steps)]:
            raise RuntimeError(f"the engine recorded {recorded}, planned {event}: accounting would be wrong")
    return LocalResult(
        weights=get_weights(model),
        num_examples=len(data),
        event=event,
    )


def _applied(privacy: PrivacyPlan) -> tuple[float, float]:
    """(clipping bound, noise multiplier) the engine really applies: the plan's, except under
    the simulated ``clip-larger`` fault: clipped to factor x C, with the noise std sigma x C as
    recorded (std = multiplier x bound), so the recorded multiplier is sigma / factor."""
    if privacy.fault == "clip-larger":
        return CLIP_FAULT_FACTOR * privacy.max_grad_norm, privacy.noise_multiplier / CLIP_FAULT_FACTOR
    return privacy.max_grad_norm, privacy.noise_multiplier


def _seed_dropout(seed: int, device: torch.device) -> None:
    """Seed the generator dropout draws from on ``device`` (only that one: ``torch.manual_seed``
    also queues a lazy seeding of every accelerator backend, a stack trace each, ~1 ms a round)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


@contextmanager
def _closing(step: _BookKeepingStep | None) -> Iterator[None]:
    """The engine's hooks are gone when training ends, however it ends."""
    try:
        yield
    finally:
        if step is not None:
            step.close()


def _chunks(records: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` of a batch of ``records`` (a physical batch each)."""
    for start in range(0, records, size):
        yield slice(start, start + size)


class ShuffledBatches:
    """Non-private mini-batches: a fresh permutation per pass (what ``DataLoader(shuffle=True)``
    draws), indexed in one gather per batch instead of collated record by record."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, generator: torch.Generator) -> None:
        self.tensors, self.batch_size, self.generator = tensors, batch_size, generator

    def __iter__(self):
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator).to(self.tensors[0].device)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield tuple(t[index] for t in self.tensors)


class _BookKeepingStep:
    """One DP-SGD step's gradients with fedshield's own engine (:mod:`client.bookkeeping`):
    the clipped sum, the canaries, then the step's noise (:meth:`Randomness.step_noise`) and the
    division by the expected batch size, into ``p.grad`` for the plain SGD optimizer."""

    def __init__(
        self,
        model: nn.Module,
        privacy: PrivacyPlan,
        sample_rate: float,
        records: int,
        injector: CanaryInjector | None,
        randomness: Randomness,
        *,
        physical_batch: int = 0,
    ) -> None:
        from client.bookkeeping import BookKeeping, expected_batch_size

        self.bound, self.sigma = _applied(privacy)
        self.engine = BookKeeping(model, self.bound)
        self.expected = expected_batch_size(records, sample_rate)
        self.injector = injector
        self.randomness, self.std = randomness, self.sigma * self.bound
        self.noise_off = privacy.fault == "noise-off"
        self.physical_batch = physical_batch
        self.steps = 0

    def gradients(self, model: nn.Module, criterion: nn.Module, xb: torch.Tensor, yb: torch.Tensor, step: int) -> None:
        params = self.engine.params
        if len(yb) > 0:
            # chunk by chunk when the sampled batch is larger than the physical batch: each
            # example is clipped on its own, so the chunks' clipped sums add up to the batch's
            for part in _chunks(len(yb), self.physical_batch or len(yb)):
                self.engine.clipped_sum(model, criterion, xb[part], yb[part], accumulate=part.start > 0)
        else:  # an empty Poisson batch is still a step: pure noise
            for p in params:
                p.summed_grad = torch.zeros_like(p)
        if self.injector is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                self.injector.add("summed_grad", self.bound, 1.0)
        noise = None if self.noise_off else self.randomness.step_noise(self.std, params, step)
        for i, p in enumerate(params):
            total = p.summed_grad if noise is None else noise[i].add_(p.summed_grad)
            p.grad = total.div_(self.expected)
            p.summed_grad = None
        self.steps += 1

    def close(self) -> None:
        self.engine.close()


def _instrument(optimizer, privacy: PrivacyPlan, injector: CanaryInjector | None, randomness: Randomness) -> float:
    """Opacus's noise step, replaced by fedshield's: the canaries' clipped gradients added to the
    clipped sum before the noise, a simulated fault applied, then the step's noise from
    :meth:`Randomness.step_noise` (the same draws as fedshield's own engine: secret, four per
    coordinate, a fresh generator per step). Returns the noise multiplier Opacus will record."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    bound, sigma = _applied(privacy)
    if privacy.fault == "clip-larger":
        optimizer.max_grad_norm, optimizer.noise_multiplier = bound, sigma
    optimizer.clip_and_accumulate = functools.partial(_clip_and_accumulate, optimizer)
    steps = itertools.count()

    def add_noise() -> None:
        step = next(steps)
        if injector is not None:
            # each sampled canary's gradient, clipped to the bound really applied
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                injector.add("summed_grad", optimizer.max_grad_norm, 1.0)
        summed = [p.summed_grad for p in optimizer.params]
        for s in summed:
            _check_processed_flag(s)
        if privacy.fault == "noise-off":
            noised = [s.clone() for s in summed]
        else:
            std = optimizer.noise_multiplier * optimizer.max_grad_norm
            noised = [n.add_(s) for n, s in zip(randomness.step_noise(std, summed, step), summed, strict=True)]
        for p, s, g in zip(optimizer.params, summed, noised, strict=True):
            p.grad = g.view_as(p)
            _mark_as_processed(s)

    optimizer.add_noise = add_noise
    return sigma


def _clip_and_accumulate(optimizer) -> None:  # noqa: ANN001  (Opacus's DPOptimizer)
    """Opacus's ``DPOptimizer.clip_and_accumulate`` with each example's norm accumulated in
    float64. Opacus clips on torch's float32 ``vector_norm``, whose reduction under-estimated a
    long row with a few large entries (found in review: a record with 8 inputs of 128 and 1.2
    million of 128 * 2^-12 added 1.0045 C in every per-example mode); bk's norms avoid it too.
    A factor below the parameters' smallest normal number leaves its example out
    (:func:`client.precision.normal_factors`)."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    samples = optimizer.grad_samples
    if len(samples[0]) == 0:  # an empty Poisson batch
        factors = torch.zeros((0,), device=samples[0].device)
    else:
        device = samples[0].device
        squared = sum(
            torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1, dtype=torch.float64).to(device).square()
            for g in samples
        )
        factors = (optimizer.max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
    for p in optimizer.params:
        _check_processed_flag(p.grad_sample)
        sample = optimizer._get_flat_grad_sample(p).to(p.dtype)
        grad = torch.einsum("i,i...", normal_factors(factors, p.dtype).to(sample.device), sample)
        if p.summed_grad is not None:
            p.summed_grad += grad
        else:
            p.summed_grad = grad
        _mark_as_processed(p.grad_sample)


def _drop_non_finite_examples(model: nn.Module) -> None:
    """An example whose gradient is not finite contributes nothing (before clipping).

    Without this, a server could craft a global model that overflows on one record only: that
    example's NaN would pass through clipping (NaN * coefficient) and make the whole update NaN
    exactly when the record was sampled, a noise-free membership bit per step. Zeroing an
    example by a rule on that example alone keeps its contribution within the clipping bound,
    so the accounting is unchanged."""
    params = _params(model)
    samples = [p.grad_sample for p in params if isinstance(getattr(p, "grad_sample", None), torch.Tensor)]
    if not samples:
        return
    bad = torch.zeros(samples[0].shape[0], dtype=torch.bool, device=samples[0].device)
    for gs in samples:
        bad |= ~torch.isfinite(gs.reshape(gs.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        for gs in samples:
            gs[bad] = 0


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _empty_step_grads(model: nn.Module, privacy: PrivacyPlan | None) -> None:
    """Gradients of an empty batch, in the form the mode's optimizer reads: per-example
    gradients (none)."""
    if privacy is None:
        return
    for p in _params(model):
        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
