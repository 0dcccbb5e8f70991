"""float32 computed as float32 where DP-SGD's clipping depends on it.

A clipped sum keeps each record within the bound only if the sum adds the very values whose
norm was clipped, to float32's rounding. Reduced-precision float32 breaks that where the norm
and the sum are computed apart: with TF32 (NVIDIA GPUs: ``torch.backends.cuda.matmul.allow_tf32``,
``torch.set_float32_matmul_precision("high")``, and cuDNN convolutions by default) or bf16
(oneDNN on CPUs with bf16 units, ``set_float32_matmul_precision("medium")``) a matmul rounds
its inputs to 10 or 7 mantissa bits. Book-keeping's ghost-norm layers compute the norm from
float64 Gram matrices and the sum by a float32 matmul; every engine adds the clipped examples
up by a matmul over the batch, whose rounding the bound's margin assumes to be float32's.
(Opacus's own ghost clipping, norms from float32 Gram matrices, is refused whatever the
precision: common.config.sections.GHOST_REFUSED.) Rounded at 2^-11 instead of 2^-24, a
record whose gradient is a cancelling sum over positions (the engine lets through positions
summing to up to ``CANCELLATION_BOUND`` = 100 times the norm) could move the sum by about 5% of
the bound beyond it, with no noise added for that: the sensitivity the accountant assumes
would not hold. :func:`ieee_float32` turns such substitutions off for the work inside it and
restores the caller's settings after, whatever they were (a user's speed setting still applies
to the model's own forward and backward passes, whose values the engine then clips exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")


def _fine_grained(convolutions: bool = True) -> list[object]:
    """The per-backend precision settings (torch's newer API), where this torch has them."""
    b = torch.backends
    names = [(b.cuda, "matmul"), (b.mkldnn, "matmul")]
    if convolutions:
        names += [(b.cudnn, "conv"), (b.cudnn, "rnn"), (b.mkldnn, "conv")]
    return [getattr(o, n) for o, n in names if hasattr(getattr(o, n, None), "fp32_precision")]


@contextmanager
def ieee_float32(*, convolutions: bool = True) -> Iterator[None]:
    """Inside: float32 matmuls (and, with ``convolutions``, convolutions) computed in float32 on
    every backend (no TF32, no bf16), and autocast off (it would run them in bf16 or fp16). The
    settings are restored on exit, also when the body raises; nothing is touched where they
    already say so (torch's defaults for matmuls). They are the process's: a caller running
    training on several threads at once would see one thread's exit restore the settings under
    another's (fedshield trains one site per process at a time)."""
    with no_autocast():
        fine = [(s, s.fp32_precision) for s in _fine_grained(convolutions)]
        matmul = _read(torch.get_float32_matmul_precision)  # torch refuses to read the older settings
        cuda_tf32 = _read(lambda: torch.backends.cuda.matmul.allow_tf32)  # once the newer API set them
        cudnn = _read(lambda: torch.backends.cudnn.allow_tf32) if convolutions else False
        if matmul == "highest" and cudnn is False and all(v in ("ieee", "none") for _, v in fine):
            yield
            return
        torch.set_float32_matmul_precision("highest")  # the older setters keep both APIs consistent
        if convolutions:
            torch.backends.cudnn.allow_tf32 = False
        for setting, _ in fine:
            setting.fp32_precision = "ieee"
        try:
            yield
        finally:
            if matmul is not None:
                torch.set_float32_matmul_precision(matmul)
            elif cuda_tf32 is not None:  # the generic setting was unreadable: CUDA's own still was
                torch.backends.cuda.matmul.allow_tf32 = cuda_tf32
            if convolutions and cudnn is not None:
                torch.backends.cudnn.allow_tf32 = cudnn
            for setting, value in fine:
                setting.fp32_precision = value


@contextmanager
def no_autocast() -> Iterator[None]:
    """Autocast off on the CPU and, where there is one, the GPU (a caller's ``torch.autocast``
    would run the engines' matmuls in bf16 or fp16: found in review, 1.005 C)."""
    if not torch.is_autocast_enabled("cpu") and not (torch.cuda.is_available() and torch.is_autocast_enabled("cuda")):
        yield
        return
    with torch.autocast("cpu", enabled=False):
        if torch.cuda.is_available():
            with torch.autocast("cuda", enabled=False):
                yield
        else:
            yield


def normal_factors(factors: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Clip factors cast to ``dtype``, with those below its smallest normal number set to 0 (the
    example then contributes nothing: a rule on that example alone, so the bound holds). A
    subnormal factor keeps only the bits above 2^-149 and rounds by up to half its value: a
    record whose norm a crafted model drives to 1e37 got a factor of 0.5001 * 2^-149 that
    rounded to 2^-149 and released 2 C (found in review, at C = 1e-6)."""
    out = factors.to(dtype)
    return torch.where(factors.abs() < torch.finfo(dtype).tiny, torch.zeros_like(out), out)


def _read(get: Callable[[], T]) -> T | None:
    try:
        return get()
    except RuntimeError:
        return None
