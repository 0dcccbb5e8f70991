"""An honest crash: the whole simulation is killed (kill -9) in the middle of a job, then a new
job runs on the same state folder. Nothing already spent is forgotten, and the audit passes,
saying what happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from audit.cli import run_audit
from client.site_ledger import SiteLedger, simulation_paths
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario
from tests.conftest import still_running

pytestmark = pytest.mark.slow


def _kinds(ledger: Path) -> list[str]:
    if not ledger.exists():
        return []
    return [json.loads(line)["kind"] for line in ledger.read_bytes().split(b"\n") if line.strip().endswith(b"}")]


def _kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 the run and everything it started (Ray's workers included), by process id."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)


def test_killed_mid_job_then_a_new_job_passes_the_audit(tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "run-1"
    cmd = [
        sys.executable,
        "-m",
        "fedshield",
        "simulate",
        "--scenario",
        "hospitals-tabular",
        "--sites",
        "2",
        "--rounds",
        "40",
        "--budget-epsilon",
        "4",
        "--state-dir",
        str(state),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    ledger = state / "sites" / "site-0" / "ledger.jsonl"
    try:
        deadline = time.monotonic() + 240
        while _kinds(ledger).count("reserve") < 3:  # killed while round 3 or later is under way
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no third round within 240 s"
            time.sleep(0.05)
    finally:
        _kill_tree(proc)
    before = SiteLedger(simulation_paths(state, "site-0"), "site-0").spend("sklearn:breast_cancer").events

    cfg = load_scenario("hospitals-tabular").replace(
        sites=2, rounds=1, budget_epsilon=4.0, state_dir=str(state), out=str(tmp_path / "run-2")
    )
    simulate(cfg, progress=lambda _: None)
    after = SiteLedger(simulation_paths(state, "site-0"), "site-0").spend("sklearn:breast_cancer").events
    assert after[: len(before)] == before  # nothing the killed job spent was forgotten
    audit = run_audit([state], trusted_keys_for(state))
    assert audit.ok, [str(p) for p in audit.problems if p.fatal]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killing_only_the_main_process_leaves_no_worker_behind(tmp_path: Path, how: signal.Signals) -> None:
    """kill -9 (or a timeout's SIGTERM) of the main process alone, as a user or a scheduler
    does it: every process the run started is gone soon after, and no site writes to its
    ledger any more."""
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "fedshield", "simulate", "--sites", "2", "--rounds", "200"]
    cmd += ["--state-dir", str(state), "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ledger = state / "sites" / "site-0" / "ledger.jsonl"
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while _kinds(ledger).count("reserve") < 2:  # Ray's workers are training
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no second round within 240 s"
            time.sleep(0.05)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("ray" in " ".join(p.cmdline()).lower() for p in started), "no Ray process to watch"
        os.kill(proc.pid, how)  # the main process only
        proc.wait(timeout=30)
        survivors = still_running(started, grace_s=60)
        assert not survivors, [" ".join(p.cmdline())[:120] for p in survivors]
        entries = len(_kinds(ledger))
        time.sleep(3)
        assert len(_kinds(ledger)) == entries, "a site kept training after the run was killed"
    finally:
        for p in started:  # clean up by process id whatever happened
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            _kill_tree(proc)
