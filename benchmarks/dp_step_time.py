"""DP-SGD step time vs non-private step time for every model family, measured side by side.

Runs the real training path (client.dp_trainer.train_local) with and without privacy on the
same data, alternating the two several times, and prints median seconds per step, the ratio,
and on CUDA the peak memory of each. Uses CUDA when present.

    python -m benchmarks.dp_step_time                       # every family, GPU-sized
    python -m benchmarks.dp_step_time --quick               # small sizes: minutes on a CPU
    python -m benchmarks.dp_step_time --family transformer --modes hooks,ghost

Families: tabular (MLPs), cnn (small GroupNorm CNN), resnet (ResNet-18 GroupNorm, 3x32x32 or
3x224x224), transformer (MiniLM-L6 full fine-tune and LoRA r=8; needs the minilm extra).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from client.dp_trainer import GRAD_SAMPLE_MODES, LocalPlan, PrivacyPlan, sampling, train_local
from common.dataset import Dataset, Modality
from common.evaluation import pick_device
from common.models import ModelKind, ModelSpec, build_model
from common.privacy.noise import secret
from common.transformer import LoraSpec

FAMILIES = ("tabular", "cnn", "resnet", "transformer")


@dataclass(frozen=True)
class Case:
    label: str
    family: str
    spec: ModelSpec
    data: Dataset
    batch: int


def _random(shape: tuple[int, ...], classes: int, n: int) -> Dataset:
    rng = np.random.default_rng(0)
    modality = Modality.IMAGE if len(shape) == 3 else Modality.TABULAR
    return Dataset(rng.random((n, *shape), dtype=np.float32), rng.integers(0, classes, n), classes, modality, "bench")


def _notes(n: int, max_length: int) -> Dataset:
    from common.notes import DEPARTMENTS, synthetic_notes
    from common.text_loaders import TextTable, text_dataset
    from common.transformer import load_tokenizer

    table = synthetic_notes(n, seed=0)
    long_texts = [" ".join([t] * 4) for t in table.texts]  # long enough to fill max_length
    table = TextTable(long_texts, table.labels, table.source)
    return text_dataset(table, load_tokenizer("minilm"), max_length=max_length, classes=DEPARTMENTS)


def cases(quick: bool) -> Iterator[Case]:
    n = 256 if quick else 4096
    yield Case("mlp 30-16-2", "tabular", ModelSpec(ModelKind.MLP, (30,), 2, hidden=(16,)), _random((30,), 2, n), 256)
    yield Case(
        "mlp 784-256-128-10",
        "tabular",
        ModelSpec(ModelKind.MLP, (784,), 10, hidden=(256, 128)),
        _random((784,), 10, n),
        256,
    )
    yield Case(
        "cnn GroupNorm 1x28x28 16-32",
        "cnn",
        ModelSpec(ModelKind.CNN, (1, 28, 28), 10, channels=(16, 32)),
        _random((1, 28, 28), 10, n // 2),
        128,
    )
    side, width, count = (16, 16, 64) if quick else (32, 64, 1024)
    yield Case(
        f"resnet-18 GroupNorm 3x{side}x{side} width {width}",
        "resnet",
        ModelSpec(ModelKind.RESNET, (3, side, side), 10, width=width),
        _random((3, side, side), 10, count),
        32 if quick else 128,
    )
    if not quick:
        yield Case(
            "resnet-18 GroupNorm 3x224x224 width 64",
            "resnet",
            ModelSpec(ModelKind.RESNET, (3, 224, 224), 10, width=64),
            _random((3, 224, 224), 10, 256),
            32,
        )
    length, count, batch = (32, 32, 16) if quick else (128, 512, 32)
    notes = None
    for lora in (None, LoraSpec(rank=8)):
        notes = notes or _notes(count, length)
        spec = ModelSpec(ModelKind.TRANSFORMER, (length,), 4, pretrained_path="minilm", lora=lora)
        how = "LoRA r=8" if lora else "full fine-tune"
        yield Case(f"MiniLM-L6 {how}, {length} tokens", "transformer", spec, notes, batch)


def _run(case: Case, privacy: PrivacyPlan | None, device: torch.device) -> tuple[float, float]:
    """(seconds per step, peak CUDA memory in GiB or nan) of one local round."""
    plan = LocalPlan(local_epochs=1, batch_size=case.batch, learning_rate=0.1)
    model = build_model(case.spec, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train_local(model, case.data, plan, privacy=privacy, randomness=secret(), device=device)
    peak = float("nan")
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    return (time.perf_counter() - start) / sampling(len(case.data), plan)[1], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU finishes in minutes)")
    parser.add_argument("--family", choices=FAMILIES, action="append", help="only these families (repeatable)")
    parser.add_argument("--modes", default="hooks", help=f"comma-separated, of {', '.join(GRAD_SAMPLE_MODES)}")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in GRAD_SAMPLE_MODES]
    if bad:
        parser.error(f"--modes: unknown mode {bad[0]!r}; choose from {', '.join(GRAD_SAMPLE_MODES)}")
    device = pick_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; median of {args.repeats} alternating runs", flush=True)
    header = f"{'model':<44} {'mode':<9} {'plain s/step':>12} {'DP s/step':>10} {'DP/plain':>9}"
    print(header + (f" {'plain GiB':>9} {'DP GiB':>7}" if device.type == "cuda" else ""), flush=True)
    for case in cases(args.quick):
        if args.family and case.family not in args.family:
            continue
        for mode in modes:
            privacy = PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode)
            try:
                _run(case, privacy, device)  # warm-up (kernels, imports, weights into memory)
            except Exception as exc:  # noqa: BLE001  (a mode a model does not support: say so, go on)
                print(f"{case.label:<44} {mode:<9} failed: {type(exc).__name__}: {str(exc)[:80]}", flush=True)
                continue
            plain, private = [], []
            for _ in range(args.repeats):
                plain.append(_run(case, None, device))
                private.append(_run(case, privacy, device))
            p, d = statistics.median(t for t, _ in plain), statistics.median(t for t, _ in private)
            line = f"{case.label:<44} {mode:<9} {p:>12.5f} {d:>10.5f} {d / p:>8.2f}x"
            if device.type == "cuda":
                line += f" {max(m for _, m in plain):>9.2f} {max(m for _, m in private):>7.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
