"""Cost of fedshield's secret noise per optimizer step, side by side with a single draw.

fedshield draws each noise coordinate as the sum of four Gaussian draws, halved (Opacus's
secure-mode sampling, against floating-point attacks), from a generator re-seeded with fresh
OS entropy before every step (``common/privacy/noise.py``). This prints the median time of
that and of one plain draw, for every trainable parameter of a model, alternating the two.

    python -m benchmarks.noise_cost            # ResNet-18 GroupNorm at width 16 and 64, CPU or CUDA
"""

from __future__ import annotations

import functools
import statistics
import time

import torch

from common.evaluation import pick_device
from common.models import ModelKind, ModelSpec, build_model
from common.privacy.noise import secret


def _time(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def one_draw(params: list[torch.Tensor], gen: torch.Generator, device: torch.device) -> None:
    for p in params:
        torch.normal(0.0, 1.0, size=p.shape, generator=gen, device=device)


def secret_noise(params: list[torch.Tensor], gen: torch.Generator, device: torch.device, randomness) -> None:
    randomness.reseed_noise(gen, 0)
    for p in params:
        total = torch.zeros(p.shape, device=device)
        for _ in range(4):
            total += torch.normal(0.0, 1.0, size=p.shape, generator=gen, device=device)


def main() -> None:
    device = pick_device()
    cases = {
        "resnet18-gn width 16": ModelSpec(ModelKind.RESNET, (1, 16, 16), 10, width=16),
        "resnet18-gn width 64": ModelSpec(ModelKind.RESNET, (3, 32, 32), 10, width=64),
    }
    print(f"device {device}, {torch.get_num_threads()} threads; median of 5 alternating runs")
    for name, spec in cases.items():
        params = [p for p in build_model(spec, seed=0).to(device).parameters() if p.requires_grad]
        randomness = secret()
        gen = randomness.noise_generator(device)

        one = functools.partial(one_draw, params, gen, device)
        secure = functools.partial(secret_noise, params, gen, device, randomness)
        times: dict[str, list[float]] = {"one": [], "secure": []}
        for _ in range(5):
            times["one"].append(_time(one, device))
            times["secure"].append(_time(secure, device))
        a, b = statistics.median(times["one"]), statistics.median(times["secure"])
        count = sum(p.numel() for p in params)
        print(f"{name}: {count:,} parameters; one draw {a * 1e3:.1f} ms, secret noise {b * 1e3:.1f} ms ({b / a:.1f}x)")


if __name__ == "__main__":
    main()
