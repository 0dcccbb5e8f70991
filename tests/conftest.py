"""Shared fixtures: tiny, randomly initialised model directories (no download, ever)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest
import torch

from common import notes

# grad-sample-mode = auto measures each model shape once and caches the choice: in a folder of
# the test session's own, so a run starts from nothing and leaves nothing in the home folder.
os.environ.setdefault("FEDSHIELD_CACHE", tempfile.mkdtemp(prefix="fedshield-test-cache-"))
# On a GPU the brute-force references compute their convolutions in float32 proper, as the DP
# engines do (cuDNN's default is TF32, 2^-11: a reference off by more than the tolerances).
torch.backends.cudnn.allow_tf32 = False
# Under pytest-xdist (scripts/test.sh: two workers on two cores) each worker's torch uses one
# thread, or two workers' thread pools oversubscribe the cores (model-heavy tests ran 2.6x
# slower); the processes a test starts (sites, deployments, CLI runs) keep torch's default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def write_tiny_text_model(
    folder: Path, *, hidden: int = 16, layers: int = 2, dropout: float = 0.0, extra_words: tuple[str, ...] = ()
) -> Path:
    """A Hugging Face model directory (config + tokenizer, no weights) for a tiny BERT whose
    vocabulary covers the synthetic clinical notes (and ``extra_words``): load it with
    ``random-init=true``."""
    from transformers import BertConfig, BertTokenizer

    phrases = [*notes.DEPARTMENTS, "year old female male presents with and denies bp hr temp"]
    for table in (notes._FINDINGS, notes._HISTORY, notes._PLAN):
        phrases += [p for options in table.values() for p in options]
    phrases += [*notes._GENERIC_HISTORY, *notes._GENERIC_PLAN, *extra_words]
    words = sorted({w for p in phrases for w in re.findall(r"[a-z]+", p.lower())})
    digits = [str(d) for d in range(10)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", "/", *digits, *(f"##{d}" for d in digits)]
    vocab += words + [w for w in extra_words if w.startswith("##")]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(str(folder))
    BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=128,
        pad_token_id=0,
    ).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_text_model(tmp_path_factory.mktemp("tiny-bert"))


def still_running(procs: list[psutil.Process], grace_s: float) -> list[psutil.Process]:
    """Those of ``procs`` still running (not exited, not zombies) after waiting up to
    ``grace_s`` seconds for them to exit; a process that exits while being looked at is not."""
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    running = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            pass
    return running


def run_deploy_loopback(work: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """scripts/deploy-loopback.sh into ``work`` with ``env`` added, on a base port of this test
    worker's own (the script uses PORT and PORT+2 to PORT+4): under pytest-xdist each worker
    (gw0, gw1, ...) gets ports no other worker uses."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    port = 29092 + 10 * int(worker.removeprefix("gw") or 0)
    script = Path(__file__).resolve().parents[1] / "scripts" / "deploy-loopback.sh"
    return subprocess.run(["bash", str(script), str(work)], cwd=script.parents[1], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env, "PORT": str(port)})  # fmt: skip


def entity_words() -> tuple[str, ...]:
    """Most words of the entity generator (common/data/entities.py); a few stay unknown, and
    "metformin" is split into sub-words, so first-sub-word labelling is exercised."""
    from common.data import entities

    words = [*entities._DRUGS, *entities._CONDITIONS, *entities._FREQUENCIES, *entities._DISTRACTORS]
    words += [t.replace("{", " ").replace("}", " ") for t in entities._TEMPLATES]
    words += ["mg", "mcg", "units", "ml", "met", "##form", "##in"]
    return tuple(w for w in words if w != "metformin")


@pytest.fixture(scope="session")
def tiny_tagger_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_text_model(tmp_path_factory.mktemp("tiny-bert-ner"), extra_words=entity_words())


_SLOW_FOLDERS = ("simulations", "deployment")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests (whole simulations, a real deployment) are ``slow``: ``pytest -m 'not
    slow'`` is the fast subset for development; CI runs everything. A module there marked
    ``unit`` (``pytestmark = pytest.mark.unit``) runs no simulation and stays in the fast subset."""
    for item in items:
        if Path(str(item.fspath)).parent.name in _SLOW_FOLDERS and item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.slow)
    # The end-to-end files first (a stable sort keeps each file's order): with two test workers
    # (scripts/test.sh) the long files start early and the short ones fill in, instead of one
    # long file running alone at the end.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
