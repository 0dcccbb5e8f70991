"""What a run leaves behind in its output folder: metrics.json, config.toml, the final model,
and a plot of accuracy and per-site epsilon over rounds.

Only aggregate values appear here: per-site cumulative (epsilon, delta), step counts, losses
and accuracies. No record and no per-example value is ever written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from common import records as rk
from common.config import RunConfig
from server.tracking import RoundLog

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.toml"
MODEL_FILE = "model.pt"
PLOT_FILE = "training.png"


def build_metrics(
    cfg: RunConfig,
    rounds: list[RoundLog],
    *,
    num_sites: int,
    job: str = "",
    stopped_after: int | None = None,
    stop_reason: str = "",
    model: dict[str, Any] | None = None,
    headline: str = "accuracy",
    shown_metrics: tuple[str, ...] = ("accuracy",),
) -> dict[str, Any]:
    """The metrics document: one entry per round, and a ``final`` section."""
    last_site: dict[int, dict[str, float]] = {}
    records: dict[int, int] = {}
    budgets: dict[int, tuple[float, float]] = {}  # (epsilon, delta), as each site last reported it
    out_rounds = []
    for log in rounds:
        budgets.update(log.budgets)
        sites = {}
        for site_id in range(num_sites):
            delta = budgets.get(site_id, (0.0, cfg.policy.budget_delta))[1]
            if site_id in log.train:
                last_site[site_id] = log.train[site_id]
                records[site_id] = int(log.train[site_id][rk.NUM_EXAMPLES])
            prev = last_site.get(site_id, {})
            sites[str(site_id)] = {
                "trained": site_id in log.train and site_id not in log.resent,
                "resent": site_id in log.resent,
                "refused": log.refusals.get(site_id),
                "rejected": log.rejections.get(site_id),
                "epsilon": prev.get(rk.EPSILON, 0.0) if cfg.privacy.dp else None,  # spent, at budget_delta
                "budget_delta": delta if cfg.privacy.dp else None,
                "dp_steps": int(prev.get(rk.DP_STEPS, 0)),
                # The mechanism of this round's steps, so epsilon can be recomputed:
                "noise_multiplier": log.train[site_id].get(rk.NOISE_MULTIPLIER) if site_id in log.train else None,
                "sample_rate": log.train[site_id].get(rk.SAMPLE_RATE) if site_id in log.train else None,
            }
        federated = {k.removeprefix(rk.EVAL_METRIC_PREFIX): v for k, v in log.federated_eval.items()}
        global_eval = log.central_eval or federated
        out_rounds.append(
            {
                "round": log.round,
                # every metric of the job's task (common/tasks), pooled from the sites' statistics
                # (federated_metrics) or computed on the server's test set (metrics)
                "metrics": dict(global_eval),
                "federated_metrics": federated,
                "loss": global_eval.get("loss"),
                "accuracy": global_eval.get("accuracy"),
                "federated_loss": log.federated_eval.get(rk.EVAL_LOSS),
                "federated_accuracy": log.federated_eval.get(rk.EVAL_ACCURACY),
                "sites_asked": log.sites_asked,
                "failures": log.failures,
                "seconds": round(log.seconds, 3),
                "bytes_to_sites": log.bytes_to_sites,
                # masked SecAgg+ vectors travel inside the protocol's stages: not counted here
                "bytes_from_sites": None if cfg.federation.secure_aggregation else log.bytes_from_sites,
                "sites": sites,
            }
        )
    final_round = out_rounds[-1] if out_rounds else {}
    refusals = {s: sum(1 for log in rounds if s in log.refusals) for s in range(num_sites)}
    return {
        "scenario": cfg.scenario,
        "job": job,
        "stopped_after_round": stopped_after,
        "stop_reason": stop_reason or None,
        # replies that were errors (a site that crashed, timed out or could not read its state)
        "failures": sum(len(log.failures) for log in rounds),
        "failed_rounds": sum(1 for log in rounds if log.failures and not log.answered),
        "dp": cfg.privacy.dp,
        "accountant": "prv" if cfg.privacy.dp else None,
        "unit_of_privacy": "one record at one site (add/remove-one)",
        # what the job asked each site to spend at most (None: what was left of its budget);
        # each site's own budget is in final.sites
        "job_epsilon": (cfg.privacy.job_epsilon or None) if cfg.privacy.dp else None,
        "accuracy_scored_on": "server test set" if cfg.federation.centralized_eval else "sites' validation splits",
        "task": cfg.task.kind,
        "headline": headline,
        "shown_metrics": list(shown_metrics),
        "model": model or {},
        "rounds": out_rounds,
        "final": {
            "round": final_round.get("round"),
            "accuracy": final_round.get("accuracy"),
            "loss": final_round.get("loss"),
            "federated_accuracy": final_round.get("federated_accuracy"),
            "metrics": final_round.get("metrics", {}),
            "sites": {
                str(s): {
                    "records": records.get(s),
                    "epsilon": final_round["sites"][str(s)]["epsilon"] if final_round else None,
                    "dp_steps": final_round["sites"][str(s)]["dp_steps"] if final_round else 0,
                    # the site's own budget as it reported it; the job's setting for a site that
                    # never answered (marked by budget_reported_by_site)
                    "budget_epsilon": _budget(cfg, budgets, s)[0] if cfg.privacy.dp else None,
                    "budget_delta": _budget(cfg, budgets, s)[1] if cfg.privacy.dp else None,
                    "budget_reported_by_site": s in budgets,
                    "refusals": refusals[s],
                }
                for s in range(num_sites)
            },
        },
    }


def _budget(cfg: RunConfig, reported: dict[int, tuple[float, float]], site: int) -> tuple[float, float]:
    """A site's (epsilon, delta) budget as it reported it, else the scenario's for the site."""
    return reported.get(site, (cfg.policy.budget_of(f"site-{site}"), cfg.policy.budget_delta))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_metrics(out: Path, metrics: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / METRICS_FILE
    # Strict JSON: a metric that is undefined (NaN: e.g. precision when nobody is flagged) is null.
    _atomic_write(path, json.dumps(_finite_or_null(metrics), indent=2, allow_nan=False).encode())
    return path


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def write_config(out: Path, cfg: RunConfig) -> Path:
    import tomli_w

    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    header = (
        b"# Resolved configuration of this run; re-run with: fedshield simulate --scenario "
        + str(path).encode()
        + b"\n"
    )
    _atomic_write(path, header + tomli_w.dumps(cfg.to_sections()).encode())
    return path


AUDIT_GLOBALS = "audit-globals"  # JOB/round-R.pt: the global model after round R (0: the initial one)


def write_audit_global(out: Path, job: str, server_round: int, state_dict: dict) -> Path:
    """The global model after ``server_round``, kept when the job runs audit canaries."""
    path = out / AUDIT_GLOBALS / job / f"round-{server_round}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_tensors(path, state_dict)


def _write_tensors(path: Path, state_dict: dict) -> Path:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state_dict, buf)
    _atomic_write(path, buf.getvalue())
    return path


def write_model(out: Path, state_dict: dict) -> Path:
    return _write_tensors(out / MODEL_FILE, state_dict)


LABELLED_SITES = 12  # beyond this many sites the epsilon plot shows the largest and the median


def write_plot(out: Path, metrics: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in metrics["rounds"]]
    fig, (ax_acc, ax_eps) = plt.subplots(1, 2, figsize=(11, 4.2))
    shown = metrics.get("shown_metrics") or ["accuracy"]
    for name in shown:
        values = [r.get("metrics", {}).get(name, r.get(name)) for r in metrics["rounds"]]
        ax_acc.plot(rounds, [v if v is not None else float("nan") for v in values], marker="o", label=f"{name}")
    fed = [r.get("federated_metrics", {}).get(shown[0]) for r in metrics["rounds"]]
    if any(v is not None for v in fed) and metrics["accuracy_scored_on"] == "server test set":
        ax_acc.plot(
            rounds,
            [v if v is not None else float("nan") for v in fed],
            marker=".",
            linestyle="--",
            label=f"{shown[0]}, sites' validation (federated)",
        )
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel(", ".join(shown) if len(shown) > 1 else shown[0])
    ax_acc.set_title(f"{metrics.get('task', 'classification')} ({metrics['accuracy_scored_on']})")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    if metrics["dp"]:
        curves = {site: [r["sites"][site]["epsilon"] for r in metrics["rounds"]] for site in metrics["final"]["sites"]}
        if len(curves) <= LABELLED_SITES:
            for site, eps in curves.items():
                ax_eps.plot(rounds, eps, marker=".", label=f"site {site}")
        else:  # many sites: each one a faint line, the largest and the median named
            from matplotlib.collections import LineCollection

            lines = [list(zip(rounds, eps, strict=True)) for eps in curves.values()]
            ax_eps.add_collection(LineCollection(lines, colors="grey", alpha=0.15, linewidths=0.6))
            by_round = list(zip(*curves.values(), strict=True))
            ax_eps.plot(rounds, [max(v) for v in by_round], marker=".", label=f"largest of {len(curves)} sites")
            ax_eps.plot(rounds, [sorted(v)[len(v) // 2] for v in by_round], marker=".", label="median site")
        final_sites = metrics["final"]["sites"].values()
        for i, budget in enumerate(sorted({s["budget_epsilon"] for s in final_sites})):
            ax_eps.axhline(budget, color="red", linestyle=":", label="budget" if i == 0 else None)
        deltas = sorted({s["budget_delta"] for s in final_sites})
        at = f"delta={deltas[0]:g}" if len(deltas) == 1 else "at each site's delta"
        ax_eps.set_title(f"Cumulative epsilon per site ({at}, PRV)")
        ax_eps.legend(fontsize="small", ncol=2, loc="upper left")
    else:
        ax_eps.text(
            0.5, 0.5, "trained without DP:\nno privacy guarantee", ha="center", va="center", transform=ax_eps.transAxes
        )
        ax_eps.set_title("Cumulative epsilon per site")
    ax_eps.set_xlabel("round")
    ax_eps.set_ylabel("epsilon")
    ax_eps.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_acc, ax_eps):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_eps.set_ylim(bottom=0)
    fig.suptitle(f"fedshield — {metrics['scenario']}")
    fig.tight_layout()
    path = out / PLOT_FILE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
