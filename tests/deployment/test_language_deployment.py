"""The entity-recognition and sentiment jobs in the real loopback deployment (TLS, SuperNode
authentication, secure aggregation, sites with their own budgets and ledgers), audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_deploy_loopback

MINILM_LORA = "model='transformer' pretrained-path='minilm' finetune='lora'"  # the script runs 2 rounds
JOBS = {
    "entity-recognition": (
        f"dataset='synthetic:entity-notes' task='token-classification' max-length=48 synthetic-records=300 "
        f"partition='iid' {MINILM_LORA}",
        "token-classification",
        "f1",
    ),
    "sentiment": (
        f"dataset='synthetic:headlines' max-length=32 synthetic-records=300 partition='iid' {MINILM_LORA}",
        "classification",
        "accuracy",
    ),
}


@pytest.mark.parametrize("name", list(JOBS))
def test_language_job_deploys_and_is_verified(tmp_path: Path, name: str) -> None:
    job, task, headline = JOBS[name]
    work = tmp_path / "deployment"
    proc = run_deploy_loopback(work, JOB=job, INTRUDERS="0")
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "finished:completed" in out and "VERIFIED" in out and out.count("  OK") == 2
    metrics = json.loads((work / "server" / "metrics.json").read_text())
    assert (metrics["task"], metrics["headline"]) == (task, headline)
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert metrics["final"]["metrics"][headline] is not None
    assert all(0 < s["epsilon"] <= 1.0 for s in metrics["final"]["sites"].values())
