"""DP training cost per model family: non-private, stock Opacus in each mode, fedshield's DP path.

For each family (tabular MLP, GroupNorm CNN, ResNet-18-GN, transformer full fine-tune,
transformer LoRA, token classification) one worker process measures, alternating the
variants side by side ``--repeats`` times:

- ``plain``: non-private training (client.dp_trainer.train_local without privacy);
- ``opacus-<mode>``: a stock Opacus loop (PrivacyEngine.make_private, Poisson sampling), each
  mode (hooks, functorch, ew, ghost; a mode that fails on the model says so);
- ``fedshield``: fedshield's DP path (train_local: grad-sample-mode auto, secret noise
  re-seeded every step, non-finite examples dropped, the accounting cross-check);
- ``fedshield, reproducible noise``: the same with one publicly seeded generator drawing the
  parameters in order on one core (insecure; what the audit regenerates): the difference is
  what drawing secret noise in chunks on every core saves;
- ``fedshield, noise off (insecure)``: the same with the noise left out (the audit's simulated
  ``noise-off`` fault, for measuring only): the difference is the whole cost of the noise, four
  Gaussian draws per coordinate (the defence against floating-point attacks); stock Opacus
  draws once (its secure mode needs torchcsprng, which has no build for this torch).

Steady step time (the median over every step but the first of each run: setup and first
steps are timed apart), samples per second and peak memory (CUDA: the variant's peak
allocation; CPU: the peak RSS of a process that runs that variant alone) are printed with
ratios to ``plain`` and written as JSON (--json):

    python -m benchmarks.dp_step_time --quick       # small sizes, a few minutes on a CPU, < 8 GB
    python -m benchmarks.dp_step_time               # full sizes (a GPU when present)
    python -m benchmarks.dp_step_time --family transformer-lora --modes ghost
    python -m benchmarks.dp_step_time --quick --family transformer-full --batch 64   # a larger DP batch
    python -m benchmarks.dp_step_time --quick --family resnet --batch 64 --physical-batch 16   # memory manager

The transformer families need the minilm extra (MiniLM-L6 weights, offline); ``--random-weights``
needs only its config and tokenizer (a machine the 87 MB of weights cannot be carried to:
scripts/gpu-check.sh).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FAMILIES = ("tabular", "cnn", "resnet", "transformer-full", "transformer-lora", "token-classification")
STOCK_MODES = ("hooks", "functorch", "ew", "ghost")
PHYSICAL = "fedshield, physical batch "  # + the most records through the model at once (bk)


@dataclass(frozen=True)
class Case:
    label: str
    family: str
    spec: Any  # common.models.ModelSpec
    data: Any  # common.dataset.Dataset
    batch: int
    task: Any = None
    notes: dict = field(default_factory=dict)


def _random(shape: tuple[int, ...], classes: int, n: int):
    from common.dataset import Dataset, Modality

    rng = np.random.default_rng(0)
    modality = Modality.IMAGE if len(shape) == 3 else Modality.TABULAR
    return Dataset(rng.random((n, *shape), dtype=np.float32), rng.integers(0, classes, n), classes, modality, "bench")


def _notes(n: int, length: int):
    from common.models.transformer import load_tokenizer
    from common.notes import DEPARTMENTS, synthetic_notes
    from common.text_loaders import TextTable, text_dataset

    table = synthetic_notes(n, seed=0)
    long_texts = [" ".join([t] * 4) for t in table.texts]  # long enough to fill the length
    return text_dataset(TextTable(long_texts, table.labels, table.source), load_tokenizer("minilm"), max_length=length,
                        classes=DEPARTMENTS)  # fmt: skip


def _tagged(n: int, length: int):
    from common.data.entities import ENTITY_TAGS, synthetic_entity_notes
    from common.data.tagged import tokenize_tagged
    from common.models.transformer import load_tokenizer

    return tokenize_tagged(synthetic_entity_notes(n, seed=0), load_tokenizer("minilm"), max_length=length,
                           tags=ENTITY_TAGS)  # fmt: skip


def cases(quick: bool, batch_size: int | None = None, random_weights: bool = False) -> Iterator[Case]:
    """Every family at its size (``batch_size``: the same batch for all, instead of theirs;
    ``random_weights``: the transformers' MiniLM config and tokenizer with weights initialised
    at random, the same shapes and so the same work a step, for a machine without the weights)."""
    from common.models import ModelKind, ModelSpec
    from common.models.transformer import LoraSpec

    steps = 4 if quick else 16
    batch = batch_size or (64 if quick else 256)
    yield Case("mlp 784-256-128-10", "tabular", ModelSpec(ModelKind.MLP, (784,), 10, hidden=(256, 128)),
               _random((784,), 10, steps * batch), batch)  # fmt: skip
    cnn_batch = batch_size or (32 if quick else 128)
    yield Case("cnn GroupNorm 1x28x28 16-32", "cnn", ModelSpec(ModelKind.CNN, (1, 28, 28), 10, channels=(16, 32)),
               _random((1, 28, 28), 10, steps * cnn_batch), cnn_batch)  # fmt: skip
    side, width, res_batch = (32, 16, 16) if quick else (224, 64, 32)
    res_batch = batch_size or res_batch
    yield Case(f"resnet-18 GroupNorm 3x{side}x{side} width {width}", "resnet",
               ModelSpec(ModelKind.RESNET, (3, side, side), 10, width=width),
               _random((3, side, side), 10, steps * res_batch), res_batch)  # fmt: skip
    length, text_batch = (32, 8) if quick else (128, 32)
    text_batch = batch_size or text_batch
    notes = _notes(steps * text_batch, length)
    for family, lora in (("transformer-full", None), ("transformer-lora", LoraSpec(rank=8))):
        how = "LoRA r=8" if lora else "full fine-tune"
        spec = ModelSpec(ModelKind.TRANSFORMER, (length,), 4, pretrained_path="minilm", lora=lora,
                         random_init=random_weights)  # fmt: skip
        yield Case(f"MiniLM-L6 {how}, {length} tokens", family, spec, notes, text_batch)
    from common.data.entities import ENTITY_TAGS
    from common.tasks.token_classification import TokenClassification

    tagged = _tagged(steps * text_batch, length)
    spec = ModelSpec(ModelKind.TRANSFORMER, (length,), len(ENTITY_TAGS), pretrained_path="minilm", per_token=True,
                     random_init=random_weights)  # fmt: skip
    yield Case(f"MiniLM-L6 token tagger, {length} tokens", "token-classification", spec, tagged, text_batch,
               task=TokenClassification(ENTITY_TAGS))  # fmt: skip


# ---- one variant, one run ------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _fedshield(
    case: Case, device: torch.device, private: bool, noise: str, physical: int = 0
) -> tuple[float, list[float]]:
    """(setup seconds, steady steps' seconds) of one train_local round (``physical``: at most that
    many records through the model at once). Steady: every step after the first, each from the
    end of one optimizer step to the end of the next (see :func:`_steady`)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from client.dp_trainer import LocalPlan, PrivacyPlan, train_local
    from common import profiling
    from common.models import build_model
    from common.privacy.noise import reproducible, secret

    plan = LocalPlan(local_epochs=1, batch_size=case.batch, learning_rate=0.05, physical_batch=physical)
    model = build_model(case.spec, seed=0)
    privacy = PrivacyPlan(1.0, 1.0, "auto", fault="noise-off" if noise == "off" else "") if private else None
    _sync(device)
    # Only the reproducible variant samples from a public seed: the others draw their Poisson
    # batches secretly, as a site does (a fixed seed gave `noise off` the same four batch sizes
    # every run, 17.75 records on average against 16 expected).
    rng = reproducible(0) if noise == "reproducible" else secret()
    ends: list[float] = []

    def step_ended(optimizer: torch.optim.Optimizer, *_: object) -> None:
        if type(optimizer) is torch.optim.SGD:  # the plain SGD inside (Opacus's DPOptimizer wraps it)
            _sync(device)
            ends.append(time.perf_counter())

    hook = register_optimizer_step_post_hook(step_ended)
    try:
        with profiling.recording():
            profiling.start()
            train_local(model, case.data, plan, privacy=privacy, randomness=rng, task=case.task, device=device,
                        own_model=True)  # fmt: skip
            spans = profiling.take()
    finally:
        hook.remove()
    return spans.get("opacus setup", spans.get("setup", 0.0)), _steady(ends)


def _steady(ends: list[float]) -> list[float]:
    """Each step's seconds after the first, from the end of one optimizer step to the end of the
    next. The first step is timed with neither setup nor steady steps: it pays what a site's
    process pays once (lazy initialisation; memory and kernels for shapes not seen before, here
    after the memory handed back before every variant, :func:`_release_memory`). Such costs
    weigh more on the engines that keep more per step: a ResNet-18 step on a batch size the
    process had not seen yet took book-keeping 15-20 ms more than the next one at that size,
    plain training 4 ms. The worker takes the median over every steady step of every run."""
    if len(ends) < 2:
        raise RuntimeError(f"{len(ends)} optimizer steps: at least two are needed to time a steady step")
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def _stock(case: Case, device: torch.device, mode: str) -> tuple[float, list[float]]:
    """(setup seconds, steady steps' seconds) of a stock Opacus round (as its tutorials write it)."""
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from common.models import build_model

    model = build_model(case.spec, seed=0).to(device)
    per_token = case.task is not None
    criterion = torch.nn.CrossEntropyLoss(ignore_index=-100) if per_token else torch.nn.CrossEntropyLoss()
    x, y = torch.as_tensor(case.data.x), torch.as_tensor(case.data.y)
    loader = DataLoader(TensorDataset(x, y), batch_size=case.batch)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    _sync(device)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="prv")
        out = engine.make_private(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
                                  max_grad_norm=1.0, poisson_sampling=True, grad_sample_mode=mode,
                                  criterion=criterion)  # fmt: skip
    if mode == "ghost":
        model, optimizer, criterion, loader = out
    else:
        model, optimizer, loader = out
    model.train()
    _sync(device)
    setup = time.perf_counter() - start
    ends: list[float] = []
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        if per_token:
            logits, yb = logits.reshape(-1, logits.shape[-1]), yb.reshape(-1)
        loss = criterion(logits, yb)
        loss.backward()
        optimizer.step()
        _sync(device)
        ends.append(time.perf_counter())
    return setup, _steady(ends)


def _release_memory() -> None:
    """Give freed memory back to the system between variants, so that one worker's peak is the
    largest variant's, not the sum of the heap fragments every variant left behind."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _variant(case: Case, device: torch.device, name: str) -> tuple[float, list[float]]:
    _release_memory()
    if name == "fedshield, noise off (insecure)":
        return _fedshield(case, device, True, "off")
    if name == "plain":
        return _fedshield(case, device, False, "secret")
    if name == "fedshield":
        return _fedshield(case, device, True, "secret")
    if name == "fedshield, reproducible noise":
        return _fedshield(case, device, True, "reproducible")
    if name.startswith(PHYSICAL):
        return _fedshield(case, device, True, "secret", physical=int(name.removeprefix(PHYSICAL)))
    return _stock(case, device, name.removeprefix("opacus-"))


# ---- the worker: one case, every variant ---------------------------------------------------


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def worker(
    label: str,
    quick: bool,
    variants: list[str],
    repeats: int,
    memory_only: bool,
    batch: int | None = None,
    random_weights: bool = False,
) -> dict[str, Any]:
    from common.evaluation import pick_device

    device = pick_device()
    case = next(c for c in cases(quick, batch, random_weights) if c.label == label)
    out: dict[str, Any] = {"variants": {}}
    alive = []
    for name in variants:  # warm-up: kernels, weights into memory, auto mode measured once
        try:
            _variant(case, device, name)
            alive.append(name)
        except Exception as exc:  # noqa: BLE001  (a mode a model does not support: say so, go on)
            out["variants"][name] = {"failed": f"{type(exc).__name__}: {str(exc)[:120]}"}
    if memory_only:
        out["peak_rss_gib"] = _peak_rss_gib()
        return out
    runs: dict[str, list[tuple[float, list[float], float]]] = {n: [] for n in alive}
    for _ in range(repeats):
        for name in alive:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            setup, steady = _variant(case, device, name)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            runs[name].append((setup, steady, peak))
    for name, rows in runs.items():
        per_step = statistics.median(s for _, steady, _ in rows for s in steady)
        out["variants"][name] = {
            "step_s": per_step,
            "setup_s": statistics.median(r[0] for r in rows),
            "samples_per_s": case.batch / per_step if per_step > 0 else float("inf"),
            "peak_gpu_gib": max(r[2] for r in rows),
        }
    if "fedshield" in alive:  # the mode auto chose (measured in the warm-up, now in the cache)
        from client.modes import choose
        from common.models import build_model

        out["fedshield_mode"] = choose(build_model(case.spec, seed=0), case.data, case.batch, device, case.task)
    out["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


def _run_worker(label: str, args: argparse.Namespace, variants: list[str], memory_only: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.dp_step_time", "--worker", label, "--repeats", str(args.repeats),
               "--variants", "|".join(variants)] + (["--quick"] if args.quick else []) + (
                   ["--memory-only"] if memory_only else []) + (
                   ["--batch", str(args.batch)] if args.batch else []) + (
                   ["--random-weights"] if args.random_weights else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"variants": {v: {"failed": f"worker exited {done.returncode}: {done.stderr[-200:]}"} for v in variants}}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes: minutes on a CPU, under 8 GB")
    parser.add_argument("--family", choices=FAMILIES, action="append", help="only these families (repeatable)")
    parser.add_argument("--batch", type=int, help="one batch size for every family instead of each one's own")
    parser.add_argument("--modes", default=",".join(STOCK_MODES), help="stock Opacus modes to compare")
    parser.add_argument(
        "--physical-batch",
        type=int,
        action="append",
        default=[],
        help="also run fedshield's path with at most this many records through the model at once (repeatable)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="transformers: MiniLM's config and tokenizer, weights initialised at random (same shapes, same work)",
    )
    parser.add_argument("--json", type=Path, default=Path("runs/benchmarks/dp-step-time.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--variants", help=argparse.SUPPRESS)
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        variants = args.variants.split("|")
        measured = worker(
            args.worker, args.quick, variants, args.repeats, args.memory_only, args.batch, args.random_weights
        )
        print(json.dumps(measured))
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in STOCK_MODES]
    if bad:
        parser.error(f"--modes: unknown mode {bad[0]!r}; choose from {', '.join(STOCK_MODES)}")
    variants = ["plain", *(f"opacus-{m}" for m in modes), "fedshield", "fedshield, reproducible noise"]
    variants.append("fedshield, noise off (insecure)")
    variants += [f"{PHYSICAL}{n}" for n in args.physical_batch if n > 0]
    command = " ".join(["python", "-m", "benchmarks.dp_step_time", *(argv if argv is not None else sys.argv[1:])])
    results: dict[str, Any] = {"command": command, "cases": []}
    print(command, flush=True)
    print(
        f"{'model':<40} {'variant':<38} {'step ms':>9} {'x plain':>8} {'samples/s':>10} {'setup ms':>9} {'peak GiB':>9}"
    )
    started = time.perf_counter()
    for case in cases(args.quick, args.batch, args.random_weights):
        if args.family and case.family not in args.family:
            continue
        measured = _run_worker(case.label, args, variants, memory_only=False)
        device = measured.get("device", "cpu")
        if device == "cpu":  # CPU memory: each variant alone in a process of its own
            for name in variants:
                if "failed" not in measured["variants"].get(name, {"failed": 1}):
                    alone = _run_worker(case.label, args, [name], memory_only=True)
                    measured["variants"][name]["peak_rss_gib"] = alone.get("peak_rss_gib", float("nan"))
        plain = measured["variants"].get("plain", {}).get("step_s")
        for name in variants:
            info = measured["variants"].get(name, {})
            if "failed" in info:
                print(f"{case.label:<40} {name:<38} failed: {info['failed'][:70]}", flush=True)
                continue
            info["ratio_to_plain"] = info["step_s"] / plain if plain else float("nan")
            memory = info.get("peak_gpu_gib") if device != "cpu" else info.get("peak_rss_gib", float("nan"))
            shown = (
                f"fedshield ({measured['fedshield_mode']})"
                if name == "fedshield" and "fedshield_mode" in measured
                else name
            )
            row = (case.label, shown, 1e3 * info["step_s"], info["ratio_to_plain"], info["samples_per_s"])
            row += (1e3 * info["setup_s"], memory)
            print("{:<40} {:<38} {:>9.2f} {:>7.2f}x {:>10.0f} {:>9.1f} {:>9.2f}".format(*row), flush=True)
        results["cases"].append({"label": case.label, "family": case.family, "batch": case.batch, **measured})
    results["seconds"] = time.perf_counter() - started
    results["peak_rss_gib_any_process"] = max(
        [c.get("peak_rss_gib", 0.0) for c in results["cases"]]
        + [v.get("peak_rss_gib", 0.0) for c in results["cases"] for v in c["variants"].values()]
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"peak memory of any one process: {results['peak_rss_gib_any_process']:.2f} GiB; {results['seconds']:.0f} s")
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
