"""DP-SGD step time vs non-private step time for the zoo models, measured side by side.

Runs the real training path (client.dp_trainer.train_local) with and without privacy on the
same data, alternating the two several times, and prints median seconds per step and the
ratio. Uses CUDA when present. Usage: python -m benchmarks.dp_step_time [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from client.dp_trainer import LocalPlan, PrivacyPlan, sampling, train_local
from common.dataset import Dataset, Modality
from common.evaluation import pick_device
from common.models import ModelKind, ModelSpec, build_model

CASES = {
    "mlp (30-16-2), 4096 records": (ModelSpec(ModelKind.MLP, (30,), 2, hidden=(16,)), (30,), 2, 4096, 256),
    "mlp (784-256-128-10), 4096 records": (
        ModelSpec(ModelKind.MLP, (784,), 10, hidden=(256, 128)),
        (784,),
        10,
        4096,
        256,
    ),
    "cnn GroupNorm (1x28x28, 16-32), 2048 records": (
        ModelSpec(ModelKind.CNN, (1, 28, 28), 10, channels=(16, 32)),
        (1, 28, 28),
        10,
        2048,
        128,
    ),
}


def _data(shape: tuple[int, ...], classes: int, n: int) -> Dataset:
    rng = np.random.default_rng(0)
    modality = Modality.IMAGE if len(shape) == 3 else Modality.TABULAR
    return Dataset(rng.random((n, *shape), dtype=np.float32), rng.integers(0, classes, n), classes, modality, "bench")


def _seconds_per_step(
    spec: ModelSpec, data: Dataset, plan: LocalPlan, privacy: PrivacyPlan | None, device: torch.device
) -> float:
    model = build_model(spec, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_local(model, data, plan, privacy=privacy, seed=0, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / sampling(len(data), plan)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = pick_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; median of {args.repeats} alternating runs")
    print(f"{'model':<46} {'non-private s/step':>18} {'DP s/step':>10} {'DP / non-private':>17}")
    for label, (spec, shape, classes, n, batch) in CASES.items():
        data = _data(shape, classes, n)
        plan = LocalPlan(local_epochs=1, batch_size=batch, learning_rate=0.1)
        privacy = PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0)
        _seconds_per_step(spec, data, plan, privacy, device)  # warm-up (kernels, imports)
        plain, private = [], []
        for _ in range(args.repeats):
            plain.append(_seconds_per_step(spec, data, plan, None, device))
            private.append(_seconds_per_step(spec, data, plan, privacy, device))
        p, d = statistics.median(plain), statistics.median(private)
        print(f"{label:<46} {p:>18.5f} {d:>10.5f} {d / p:>16.2f}x")


if __name__ == "__main__":
    main()
