"""Run a whole federation on one machine with Flower's simulation engine (Ray backend).

Each site is a virtual SuperNode running the real ClientApp; the real ServerApp drives the
rounds. Every site rebuilds its own partition from the config (seeded), so no data crosses
process boundaries.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.errors import FedshieldError
from common.federation import model_spec, server_test_set, site_partitions
from common.models import build_model
from server import report

# Offline by default: Flower's telemetry would try to reach the internet.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# Keep Ray's current device-visibility behaviour without its FutureWarning on every run.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


class _DropDeprecationNotice(logging.Filter):
    """Flower marks the in-process simulation API deprecated; we use it on purpose (one
    process, no SuperLink) and say so in the README, so the notice is not repeated per run."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # No federated evaluation is the default (a site's evaluation is a release): not news.
        return (
            "run_simulation` function is deprecated" not in message
            and "Federated evaluation will be skipped" not in message
        )


class SimulationFailed(FedshieldError):
    """No site could train: the reason reported by the sites is in the message."""


def check_inputs(cfg: RunConfig) -> None:
    """Load and split the data in this process first, so that a user mistake (missing file,
    bad column, too many sites, unreadable weights) is reported as one clear line before any worker starts."""
    build_model(model_spec(cfg), seed=cfg.seed)  # pretrained weights: read (and checked) once, here
    server_test_set(cfg)
    sites = site_partitions(cfg, cfg.federation.sites)
    if cfg.privacy.dp and cfg.privacy.noise_multiplier == 0:
        check_plan_size(cfg, [len(s.train) + len(s.val) for s in sites])
    check_folders(cfg)


# A sanity bound on a job's plan, refused before anything starts. The accountant's cost no
# longer grows with the steps beyond 1,000 (common.privacy.accounting.prv_eps_error): noise
# calibration for 10,000 steps at sample rate 0.5 measured 22 s and 2.2 GB here (before: 157 s
# and 7.9 GB; 100,000 steps did not fit in 24 GB).
MAX_PLANNED_STEPS = 10_000


def check_plan_size(cfg: RunConfig, site_records: list[int]) -> None:
    """Refuse a plan (rounds x local steps) that the accountant cannot calibrate for."""
    from client.dp_trainer import LocalPlan, sampling

    plan = LocalPlan(cfg.training.local_epochs, cfg.training.batch_size, cfg.training.learning_rate)
    rounds = cfg.federation.rounds
    for site_id, n in enumerate(site_records):
        _, steps = sampling(max(n, 1), plan)
        if steps * rounds > MAX_PLANNED_STEPS:
            raise FedshieldError(
                f"the plan is too large to account for: site-{site_id} would take {steps} DP steps per round x "
                f"{rounds} rounds = {steps * rounds} steps (at most {MAX_PLANNED_STEPS}); "
                "use fewer rounds or local-epochs, or a larger batch-size"
            )


def check_folders(cfg: RunConfig) -> None:
    """The output and state folders (and the auditor's key folder beside the state) exist or
    can be created, and can be written; with ``resume``, there is a checkpoint to resume."""
    from common.paths import writable_folder
    from server.checkpoint import CHECKPOINT_FILE
    from server.server_ledger import simulation_paths

    writable_folder(cfg.out, "--out")
    if cfg.state_dir:
        writable_folder(cfg.state_dir, "--state-dir")
    writable_folder(trusted_keys_path(cfg), "the auditor's key folder")
    if cfg.resume:
        ckpt = simulation_paths(Path(cfg.state_path)).root / CHECKPOINT_FILE  # where run_server keeps it
        if not ckpt.is_file():
            raise FedshieldError(
                f"--resume: no checkpoint in {ckpt.parent} (nothing to resume; run without --resume to start a job)"
            )


STATE_PARTS = ("keys", "sites", "server")
TRUSTED_KEYS_SUFFIX = ".trusted-keys"
FINGERPRINTS_FILE = "fingerprints.json"


def trusted_keys_for(state: Path) -> Path:
    """Where the harness provisions the public keys of the parties keeping their state in
    ``state``, for the auditor: a sibling (``<state>.trusted-keys/``), outside every folder the
    audit reads."""
    return state.with_name(state.name + TRUSTED_KEYS_SUFFIX)


def trusted_keys_path(cfg: RunConfig) -> Path:
    return trusted_keys_for(Path(cfg.state_path))


def provision_trusted_keys(
    state: Path, dest: Path, *, fresh: bool, progress: Callable[[str], None] | None = None
) -> Path:
    """Copy the public keys the parties exported to ``state/keys/`` into ``dest``, with a
    ``fingerprints.json`` of them, as a deployment hands keys to its auditor.

    ``fresh`` (a new federation, new keys): ``dest`` is cleared first. Otherwise the keys
    already there stay pinned (trust on first use): a party whose key in ``state`` changed is
    named, and its ledger will fail the audit against the pinned key.
    """
    from common.crypto import keys

    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    dest.mkdir(parents=True, exist_ok=True)
    if fresh:
        for old in dest.glob(f"*{keys.PUBLIC_SUFFIX}"):
            old.unlink()
    pins: dict[str, str] = {}
    for source in sorted((state / "keys").glob(f"*{keys.PUBLIC_SUFFIX}")):
        target = dest / source.name
        key = keys.load_public(source)
        if target.exists():
            pinned = keys.load_public(target)
            if keys.fingerprint(pinned) != keys.fingerprint(key):
                say(f"warning: {source} differs from the key pinned in {target}; the pinned key stays")
        else:
            keys.write_public(target, key)
    for target in sorted(dest.glob(f"*{keys.PUBLIC_SUFFIX}")):
        pins[target.name.removesuffix(keys.PUBLIC_SUFFIX)] = keys.fingerprint(keys.load_public(target))
    (dest / FINGERPRINTS_FILE).write_text(json.dumps(pins, indent=2, sort_keys=True) + "\n")
    return dest


def archive_previous_state(out: Path, *, progress: Callable[[str], None] | None = None) -> Path | None:
    """Without ``--state-dir`` every simulation is a fresh federation: a previous run's keys and
    ledgers in ``out`` are moved (never deleted) to ``out/archive/<time>/``. With ``--state-dir``
    the sites keep their ledgers, and their spend, across jobs."""
    present = [out / p for p in STATE_PARTS if (out / p).exists()]
    if not present:
        return None
    from datetime import UTC, datetime

    dest = out / "archive" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    dest.mkdir(parents=True)
    for part in present:
        part.rename(dest / part.name)
    (progress or (lambda line: print(line, file=sys.stderr, flush=True)))(
        f"moved the previous run's ledgers and keys to {dest} (use --state-dir to let sites keep spending across jobs)"
    )
    return dest


def _backend_config(cfg: RunConfig, ray_address: str | None = None) -> dict[str, Any]:
    """Flower's Ray backend: a local Ray on this machine's CPUs (and its GPU, a quarter per
    site at most), or, with ``ray_address``, an existing Ray cluster of one or more machines,
    whose nodes bring their own CPUs and GPUs."""
    import torch

    gpus = 1.0 / min(cfg.federation.sites, 4) if torch.cuda.is_available() else 0.0
    init: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": True, "include_dashboard": False}
    if ray_address:
        init["address"] = ray_address
        host = ray_address.rpartition(":")[0].strip("[]")
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_loopback:
                # A cluster on this machine's loopback (tests): the driver joins it there.
                # (Ray turns exactly 127.0.0.1 into the machine's outward address, so such a
                # cluster's nodes are started on another loopback address, e.g. 127.0.0.2.)
                init["_node_ip_address"] = host
    else:
        # "local": a Ray of its own, even where a cluster started with `ray start` (or a test's)
        # is running on this machine or RAY_ADDRESS is set: Ray would otherwise try to join that
        # cluster and fail (a joining driver may not set num_cpus); --ray-address joins one.
        init |= {"address": "local", "num_cpus": os.cpu_count() or 1, "num_gpus": 1 if gpus else 0}
    return {"client_resources": {"num_cpus": 1, "num_gpus": gpus}, "init_args": init}


def mark_shared_state(cfg: RunConfig) -> None:
    """Write the state folder's marker, which every simulated site checks before it opens its
    ledger (client.handlers): on a cluster of machines, a site placed on a machine that does not
    see this folder (not on shared storage) refuses instead of starting a fresh ledger."""
    from client.handlers import SHARED_STATE_FILE

    state = Path(cfg.state_path)
    state.mkdir(parents=True, exist_ok=True)
    marker = state / SHARED_STATE_FILE
    if not marker.exists():
        marker.write_text(json.dumps({"state": str(state.resolve())}) + "\n")


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _worker_environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in the environment while the engine starts its workers (they inherit it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def simulate(
    cfg: RunConfig,
    *,
    site_cfg: RunConfig | None = None,
    progress: Callable[[str], None] | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` with ``cfg.federation.sites`` simulated sites; return the metrics written to ``cfg.out``.

    The parties' public keys are provisioned to :func:`trusted_keys_path` for the auditor.

    ``site_cfg`` are the sites' own settings (budgets, planned rounds, noise) when they differ
    from the server's, as in a deployment where each site configures itself; default ``cfg``.

    ``ray_address``: run the sites on an existing Ray cluster (``ray start --head`` on one
    machine, ``ray start --address=HEAD:PORT`` on the others; every machine with fedshield
    installed and the state folder on shared storage). Default: a local Ray on this machine.
    """
    from flwr.simulation import run_simulation

    from client.app import make_client_app
    from server.app import make_server_app
    from simulations.attacks import attack_mod, parse_attacks
    from simulations.engine_polling import polled_once_per_sweep
    from simulations.site_worker import WORKER_ENV, quiet_flower
    from simulations.watchdog import leave_nothing_behind

    check_inputs(cfg)
    parse_attacks(cfg.federation.attack)
    out = Path(cfg.out)
    if not cfg.state_dir and not cfg.resume:
        archive_previous_state(out, progress=progress)
    mark_shared_state(cfg)
    metrics_path = out / report.METRICS_FILE
    if metrics_path.exists():
        metrics_path.unlink()  # never report a previous run's numbers as this run's
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    notice_filter = _DropDeprecationNotice()
    for handler in flwr_logger.handlers:
        handler.addFilter(notice_filter)
    mods = [quiet_flower, *([attack_mod(cfg.federation.attack)] if cfg.federation.attack else [])]
    engine_gone = threading.Event()  # tells the server loop that no reply will come
    try:
        # No Ray process outlives this run, even after kill -9.
        # Flower's engine as it ships, but its message thread sweeps the link state once per
        # poll instead of once per registered site (simulations/engine_polling.py).
        with leave_nothing_behind(), _worker_environment(WORKER_ENV), polled_once_per_sweep():
            try:
                run_simulation(
                    server_app=make_server_app(cfg, progress=progress, stop=engine_gone),
                    client_app=make_client_app(site_cfg or cfg, mods=mods, shared_state=bool(ray_address)),
                    num_supernodes=cfg.federation.sites,
                    backend_config=_backend_config(cfg, ray_address),
                )
            except RuntimeError as exc:
                if "Ending simulation" not in str(exc):  # not the engine's: a bug to show in full
                    raise
                raise SimulationFailed(f"Flower's simulation engine failed: {_root_cause(exc)}") from None
            finally:
                engine_gone.set()
    finally:
        flwr_logger.setLevel(level)
        for handler in flwr_logger.handlers:
            handler.removeFilter(notice_filter)
        provision_trusted_keys(
            Path(cfg.state_path), trusted_keys_path(cfg), fresh=not cfg.state_dir and not cfg.resume, progress=progress
        )
    if not metrics_path.exists():
        raise SimulationFailed(f"the simulation ended without writing {metrics_path}; see the log above")
    metrics = json.loads(metrics_path.read_text())
    trained = [r for r in metrics["rounds"] if any(s["trained"] or s["resent"] for s in r["sites"].values())]
    refused = [r for r in metrics["rounds"] if any(s["refused"] for s in r["sites"].values())]
    if not trained and not refused:  # every site refusing for lack of budget is a clean end
        reasons = [f for r in metrics["rounds"] for f in r["failures"]]
        raise SimulationFailed("no site trained in any round" + (f": {reasons[0]}" if reasons else ""))
    return metrics
