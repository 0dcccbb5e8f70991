"""`flwr run .` works: the project is a valid Flower App with a local simulation federation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from audit.cli import run_audit
from common.credit import write_credit_csv
from server.predict import predict
from simulations.harness import provision_trusted_keys

ROOT = Path(__file__).resolve().parents[2]


def _stop_local_superlinks(flwr_home: Path) -> None:
    """`flwr run` leaves the local SuperLink it started running; stop ours by process id."""
    import signal

    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in cmdline and str(flwr_home) in cmdline:
            os.kill(int(proc.name), signal.SIGTERM)


# The bank's job through the Flower App: binary risk scoring on synthetic applicants.
CREDIT = "dataset='synthetic:credit' task='binary-risk' positive-label='1' partition='quantity' alpha=2.0"


def test_flwr_run_local_simulation(tmp_path: Path) -> None:
    flwr = shutil.which("flwr") or str(Path(sys.executable).parent / "flwr")
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\noptions.num-supernodes = 3\n'
    )
    pyproject_before = (ROOT / "pyproject.toml").read_text()
    out = tmp_path / "out"
    # `flwr run` starts `flower-superlink` by name: the venv's bin must be on PATH (CI does not activate it).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
    # Flower's simulation starts Ray with no address, which joins a cluster running on the
    # machine (another test worker's, tests/simulations/test_ray_cluster.py): a Ray of its own.
    env["RAY_ADDRESS"] = "local"
    try:
        proc = subprocess.run(
            [flwr, "run", str(ROOT), "--run-config", f"rounds=1 out='{out}' {CREDIT}", "--stream"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        _stop_local_superlinks(home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1]
    assert set(metrics["final"]["sites"]) == {"0", "1", "2"}
    assert all(0 < s["epsilon"] <= 1.0 for s in metrics["final"]["sites"].values())
    assert (ROOT / "pyproject.toml").read_text() == pyproject_before, "flwr run must not edit tracked files"
    # The job was binary risk scoring: judged by pooled AUC, and its model predicts new records.
    assert metrics["task"] == "binary-risk" and metrics["headline"] == "roc_auc"
    assert 0.5 < metrics["final"]["metrics"]["roc_auc"] <= 1.0
    result = run_audit([out], provision_trusted_keys(out, tmp_path / "trusted", fresh=True))
    assert result.verdict == "VERIFIED", [p.what for p in result.problems]
    applicants = tmp_path / "applicants.csv"
    write_credit_csv(str(applicants), 200, seed=9)
    predicted = predict(out, applicants)
    assert predicted.probabilities.shape == (200, 2) and predicted.metrics["roc_auc"] > 0.5
