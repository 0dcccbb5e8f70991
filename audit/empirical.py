"""The empirical privacy audit of one run: epsilon **lower bounds** from the released models.

``fedshield audit empirical RUN_DIR`` audits a run trained with ``audit-canaries = m``
(:mod:`client.canaries`): every site planted ``m`` gradient canaries, each included with
probability 1/2 by a secret bit kept in the site's state. The auditor scores each canary from
what was released and turns correct membership guesses into a lower bound on epsilon at 95%
confidence for the site's delta (:mod:`audit.one_run`, Steinke, Nasr & Jagielski 2023). Two
views, each against the accountant's upper bound for the same site and run (its ledger):

- **release**: what the site sent, round by round (white-box): canary ``j`` at coordinate ``k``
  scores ``-sum_r (released_r[k] - received_r[k])``, the descent its gradient would cause. The
  site's archive of each round is checked against the update hash in its signed ledger. When the
  ledger says the noise came from a public seed, the auditor regenerates that noise and
  subtracts it first (as any adversary who knows the seed would).
- **aggregate**: what the server's global model shows after aggregation (with or without secure
  aggregation): ``-(global_R[k] - global_0[k])``.

A lower bound above the claimed epsilon is a **violation**: the code does not do what the
accountant was told. A lower bound below the claim proves nothing about the claim's truth
(the audit is a test that can fail, not a proof); it is evidence, and its power is shown by
the broken-on-purpose runs in the tests (noise off, noise from a known seed, a larger clip).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.one_run import AuditResult, audit_bound
from client.canaries import CANARY_FILE, CanaryPlan
from common.errors import FedshieldError
from common.hashing import arrays_sha256
from common.privacy.ledger import LEDGER_FILE, read_entries

P_VALUE = 0.05
REPORT_FILE = "audit-empirical.json"


class EmpiricalAuditError(FedshieldError):
    """The run cannot be audited (missing files, a run without canaries): exit 2."""


@dataclass
class View:
    epsilon: float  # the lower bound at confidence 1 - p
    correct: int
    guesses: int
    k_plus: int
    k_minus: int

    @classmethod
    def of(cls, r: AuditResult) -> View:
        return cls(r.epsilon, r.correct, r.k_plus + r.k_minus, r.k_plus, r.k_minus)


@dataclass
class SiteAudit:
    site: str
    job: str
    kind: str  # of canaries: gradient or input
    canaries: int
    rounds: int  # rounds whose release was audited
    claimed_epsilon: float  # the accountant's, from the site's ledger (inf without DP)
    delta: float
    # lower bounds by what the auditor looked at ("release", "aggregate", and for input
    # canaries each with "gradient alignment" or "loss"), each at p / len(views)
    views: dict[str, View]
    noise_subtracted: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def lower_bound(self) -> float:
        return max((v.epsilon for v in self.views.values()), default=0.0)

    @property
    def best_view(self) -> str:
        return max(self.views, key=lambda k: self.views[k].epsilon, default="")

    @property
    def violation(self) -> bool:
        return self.lower_bound > self.claimed_epsilon


@dataclass
class EmpiricalReport:
    run: str
    job: str
    p: float
    sites: list[SiteAudit]
    evaluations: list[Any] = field(default_factory=list)  # audit.evaluation.SiteReleaseAudit

    @property
    def violations(self) -> list[str]:
        return [s.site for s in self.sites if s.violation] + [e.site for e in self.evaluations if e.audit.violation]

    @property
    def verdict(self) -> str:
        if any(s.problems for s in self.sites):
            return "FAILED"
        return "VIOLATION" if self.violations else "CONSISTENT"


def _state_dir(run: Path) -> Path:
    """Where the run's sites kept their state: the run's ``state-dir`` or the run itself."""
    state = str(_config(run).get("state-dir", "") or "")
    return Path(state) if state and Path(state).is_dir() else run


def _job(run: Path) -> str:
    metrics = run / "metrics.json"
    if not metrics.is_file():
        raise EmpiricalAuditError(f"{metrics}: not found (is {run} a finished run folder?)")
    return str(json.loads(metrics.read_text())["job"])


def _config(run: Path) -> dict[str, Any]:
    config = run / "config.toml"
    if not config.is_file():
        raise EmpiricalAuditError(f"{config}: not found")
    flat: dict[str, Any] = {}
    for key, value in tomllib.loads(config.read_text()).items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def _load(path: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


def regenerated_noise(
    public_seed: int, shapes: list[tuple[str, tuple[int, ...]]], steps: int, std: float
) -> dict[str, np.ndarray]:
    """The sum over ``steps`` of the noise DP-SGD added with insecure reproducible noise: the
    generator re-seeded before step ``t`` from the public seed (:mod:`common.privacy.noise`),
    then each parameter's noise in order, exactly as Opacus draws it in secure mode."""
    from opacus.optimizers.optimizer import _generate_noise

    from common.privacy.noise import _public_seed

    gen = torch.Generator()
    total = {name: torch.zeros(shape, dtype=torch.float32) for name, shape in shapes}
    for t in range(steps):
        gen.manual_seed(_public_seed(public_seed, "noise", t))
        for name, _ in shapes:
            total[name] += _generate_noise(std, total[name], generator=gen, secure_mode=True)
    return {k: v.numpy() for k, v in total.items()}


def _site_entries(ledger: Path, job: str) -> dict[int, dict[str, Any]]:
    return {
        int(e["round"]): e for e in read_entries(ledger).entries if e.get("job") == job and e.get("kind") == "train"
    }


@dataclass
class _Round:
    received: dict[str, np.ndarray]
    update: dict[str, np.ndarray]  # released - received (known noise taken out)


def _released_rounds(
    folder: Path, entries: dict[int, dict[str, Any]], cfg: dict[str, Any]
) -> tuple[list[_Round], dict[str, Any], list[str]]:
    """Every archived round checked against the ledger; (rounds, last entry, problems)."""
    rounds, problems, last = [], [], {}
    numbers = sorted(int(f.stem.split("-")[1]) for f in folder.glob("round-*.pt"))
    if not numbers:
        problems.append(f"{folder}: no archived rounds (did the site train in this job?)")
    for r in numbers:
        archive = torch.load(folder / f"round-{r}.pt", weights_only=True)
        names = list(archive["names"])
        received = {n: t.numpy() for n, t in zip(names, archive["received"], strict=True)}
        released = {n: t.numpy() for n, t in zip(names, archive["released"], strict=True)}
        entry = entries.get(r)
        if entry is None:
            problems.append(f"{folder}/round-{r}.pt: no training entry for round {r} in the site's ledger")
            continue
        if arrays_sha256((n, released[n]) for n in names) != entry.get("update_sha256"):
            problems.append(f"{folder}/round-{r}.pt: differs from the update the ledger says was released")
            continue
        update = {n: released[n].astype(np.float64) - received[n] for n in names}
        mech, noise = entry.get("mechanism", {}), entry.get("noise") or {}
        if noise.get("public_seed") is not None and "noise_multiplier" in mech:
            # The adversary who knows the seed regenerates the noise and takes it out.
            batch = int(int(entry["records"]) * float(mech["sample_rate"]))
            std = float(mech["noise_multiplier"]) * float(mech["max_grad_norm"])
            shapes = [(n, received[n].shape) for n in names]
            noise_sum = regenerated_noise(int(noise["public_seed"]), shapes, int(mech["steps"]), std)
            lr = float(cfg["learning-rate"])
            for n in names:
                update[n] += lr / batch * noise_sum[n]
            last = {**entry, "noise_subtracted": True}
        else:
            last = entry
        rounds.append(_Round(received, update))
    return rounds, last, problems


def _global_rounds(run: Path, job: str) -> list[_Round]:
    """The server's global models as rounds: received = global before, update = the change."""
    folder = run / "audit-globals" / job
    numbers = sorted(int(f.stem.split("-")[1]) for f in folder.glob("round-*.pt")) if folder.is_dir() else []
    models = [_load(folder / f"round-{r}.pt") for r in numbers]
    return [
        _Round(before, {n: after[n].astype(np.float64) - before[n] for n in before})
        for before, after in zip(models, models[1:], strict=False)
    ]


def _coordinate_scores(plan: CanaryPlan, rounds: list[_Round]) -> np.ndarray:
    """Gradient canaries: the descent along each canary's coordinate, over all rounds."""
    scores = np.zeros(plan.size)
    for r in rounds:
        scores -= np.array([r.update[n].reshape(-1)[i] for n, i in zip(plan.names, plan.indices, strict=True)])
    return scores


class _InputScorer:
    """Input canaries under models of the run: each canary's loss, and its clipped gradient."""

    def __init__(self, run: Path, plan: CanaryPlan, clip: float) -> None:
        from client.canaries import input_records
        from common.federation import class_names, model_spec
        from common.models import build_model
        from common.tasks import task_for
        from simulations.scenarios import load_scenario

        cfg = load_scenario(str(run / "config.toml"))
        spec = model_spec(cfg)
        self.model = build_model(spec, seed=cfg.seed).eval()
        x, y = input_records(plan.site, plan.job, plan.size, spec.input_shape, spec.num_classes)
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y)
        self.criterion = task_for(cfg, class_names(cfg)).criterion()
        self.clip = clip

    def _load(self, weights: dict[str, np.ndarray]) -> list[str]:
        from common.models import load_exchanged

        load_exchanged(self.model, {k: torch.as_tensor(v, dtype=torch.float32) for k, v in weights.items()})
        return list(weights)

    @torch.no_grad()
    def losses(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        self._load(weights)
        per = [float(self.criterion(self.model(self.x[j : j + 1]), self.y[j : j + 1])) for j in range(len(self.y))]
        return np.array(per, dtype=np.float64)

    def alignments(self, rounds: list[_Round]) -> np.ndarray:
        """sum over rounds of <-update, canary's clipped gradient at the received model>."""
        scores = np.zeros(len(self.y))
        for r in rounds:
            names = self._load({n: v for n, v in r.received.items()})
            params = dict(self.model.named_parameters())
            step = [torch.as_tensor(-r.update[n], dtype=torch.float32) for n in names]
            for j in range(len(self.y)):
                loss = self.criterion(self.model(self.x[j : j + 1]), self.y[j : j + 1])
                grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
                grads = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads, strict=True)]
                norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
                factor = min(1.0, self.clip / (norm + 1e-6))
                scores[j] += factor * float(sum((g * s).sum() for g, s in zip(grads, step, strict=True)))
        return scores


def _input_views(run: Path, plan: CanaryPlan, views: dict[str, list[_Round]], clip: float) -> dict[str, np.ndarray]:
    scorer = _InputScorer(run, plan, clip)
    out = {}
    for name, rounds in views.items():
        if not rounds:
            continue
        first = rounds[0].received
        final = {n: rounds[-1].received[n] + rounds[-1].update[n] for n in first}
        out[f"{name}, gradient alignment"] = scorer.alignments(rounds)
        out[f"{name}, loss"] = scorer.losses(first) - scorer.losses(final)  # how much the run learnt each canary
    return out


def audit_site(site_root: Path, job: str, run: Path, cfg: dict[str, Any], *, p: float = P_VALUE) -> SiteAudit:
    folder = site_root / "audit" / job
    plan = CanaryPlan.from_json(json.loads((folder / CANARY_FILE).read_text()))
    released, last, problems = _released_rounds(folder, _site_entries(site_root / LEDGER_FILE, job), cfg)
    claimed = math.inf if last.get("epsilon", 0) is None else float(last.get("epsilon", 0.0))
    delta = float(last.get("delta") or 0.0)
    clip = float(last.get("mechanism", {}).get("max_grad_norm", cfg.get("max-grad-norm", 1.0)))
    aggregated = _global_rounds(run, job)
    sources = {"release": released, "aggregate": aggregated}
    if plan.kind == "input":
        scores = _input_views(run, plan, sources, clip)
    else:
        scores = {name: _coordinate_scores(plan, rounds) for name, rounds in sources.items() if rounds}
    included = np.array(plan.included)
    delta_audit = delta if math.isfinite(claimed) else 0.0
    # Several views of the same canaries: Bonferroni over them too.
    views = {
        name: View.of(audit_bound(s, included, delta=delta_audit, p=p / len(scores), grid=_grid(plan.size)))
        for name, s in scores.items()
    }
    return SiteAudit(
        plan.site,
        job,
        plan.kind,
        plan.size,
        len(released),
        claimed,
        delta,
        views,
        bool(last.get("noise_subtracted")),
        problems,
    )


def _grid(m: int) -> list[tuple[int, int]]:
    """Symmetric guesses (k, k), and top-only guesses (k, 0): an included canary that was never
    sampled looks excluded, so the bottom scores are weaker evidence than the top ones."""
    fractions = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
    pairs = {(max(1, int(f * m / 2)),) * 2 for f in fractions} | {(max(1, int(f * m)), 0) for f in fractions}
    return sorted(pairs)


def audit_run(run: Path, *, p: float = P_VALUE) -> EmpiricalReport:
    if not run.is_dir():
        raise EmpiricalAuditError(f"{run}: no such run folder")
    job, cfg = _job(run), _config(run)
    sites_dir = _state_dir(run) / "sites"
    roots = sorted(d for d in sites_dir.glob("*") if (d / "audit" / job / CANARY_FILE).is_file())
    if not roots:
        raise EmpiricalAuditError(
            f"{run}: no site planted audit canaries in job {job} (run it with audit-canaries = m, e.g. 1000)"
        )
    return EmpiricalReport(str(run), job, p, [audit_site(r, job, run, cfg, p=p) for r in roots])


def _finite(value: Any) -> Any:
    """JSON has no infinity: an unbounded epsilon is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def to_json(report: EmpiricalReport) -> str:
    def site(s: SiteAudit) -> dict[str, Any]:
        d = asdict(s)
        d["claimed_epsilon"] = None if not math.isfinite(s.claimed_epsilon) else s.claimed_epsilon
        d |= {"lower_bound": s.lower_bound, "violation": s.violation}
        return d

    evaluations = [{"site": e.site, **asdict(e.audit), "violation": e.audit.violation} for e in report.evaluations]
    return json.dumps(
        _finite(
            {
                "run": report.run,
                "job": report.job,
                "p": report.p,
                "verdict": report.verdict,
                "sites": [site(s) for s in report.sites],
                "evaluation_releases": evaluations,
            }
        ),
        indent=1,
    )


def _eps(value: float) -> str:
    return "inf (no DP)" if not math.isfinite(value) else f"{value:.3f}"


def to_text(report: EmpiricalReport) -> str:
    lines = [
        f"empirical audit of {report.run} (job {report.job}): one-run canary audit, "
        f"lower bounds at {1 - report.p:.0%} confidence",
        f"{'site':<12} {'canaries':>12} {'rounds':>6} {'lower bound':>11} {'claimed eps':>12}  verdict",
    ]
    for s in report.sites:
        verdict = "VIOLATION" if s.violation else "consistent"
        note = " (known noise seed subtracted)" if s.noise_subtracted else ""
        lines.append(
            f"{s.site:<12} {f'{s.canaries} {s.kind}':>12} {s.rounds:>6} {s.lower_bound:>11.3f} "
            f"{_eps(s.claimed_epsilon):>12}  {verdict}{note}"
        )
        for name, v in s.views.items():
            detail = f"{v.correct} of {v.guesses} guesses right" if v.guesses else "no guess count bounds it above 0"
            lines.append(f"  {name:<32} {v.epsilon:.3f}  ({detail})")
        lines += [f"  problem: {p}" for p in s.problems]
    for e in report.evaluations:
        a = e.audit
        verdict = "VIOLATION" if a.violation else "consistent"
        lines.append(
            f"{e.site:<12} evaluation release: lower bound {a.epsilon_lower:.3f} vs {a.claimed_epsilon:.3f} "
            f"for one release ({a.trials} releases on each of two neighbours)  {verdict}"
        )
    lines.append(f"verdict: {report.verdict}")
    if report.verdict == "VIOLATION":
        lines.append(
            "a lower bound above the claimed epsilon: what was released is less private than the accountant says"
        )
    return "\n".join(lines)


def plot(report: EmpiricalReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = report.sites
    x = np.arange(len(sites))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(sites) + 2), 3.5))
    best = [max((v.epsilon for k, v in s.views.items() if k.startswith("release")), default=0.0) for s in sites]
    agg = [max((v.epsilon for k, v in s.views.items() if k.startswith("aggregate")), default=0.0) for s in sites]
    ax.bar(x - 0.2, best, 0.4, label="audited lower bound (site's release)")
    ax.bar(x + 0.2, agg, 0.4, label="lower bound (server's aggregate)")
    finite = [s.claimed_epsilon for s in sites if math.isfinite(s.claimed_epsilon)]
    top = max([*finite, *(s.lower_bound for s in sites), 1.0]) * 1.15
    for i, s in enumerate(sites):
        claim = s.claimed_epsilon if math.isfinite(s.claimed_epsilon) else top
        ax.hlines(
            claim, i - 0.45, i + 0.45, colors="black", linestyles="--", label="claimed epsilon" if i == 0 else None
        )
    ax.set_xticks(x, [s.site for s in sites])
    ax.set_ylim(0, top)
    ax.set_ylabel("epsilon")
    ax.set_title(f"empirical audit: {report.verdict}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_lines(run: Path) -> list[str]:
    """What a saved empirical audit of ``run`` found, for the ledger audit's report."""
    path = run / REPORT_FILE
    if not path.is_file():
        return []
    data = json.loads(path.read_text())

    def eps(v: float | None) -> str:
        return "inf" if v is None else f"{v:.3f}"

    lines = [f"empirical audit ({path}): {data['verdict']}"]
    for s in data["sites"]:
        relation = "ABOVE" if s["violation"] else "<="
        lines.append(
            f"  {s['site']}: audited lower bound {eps(s['lower_bound'])} {relation} claimed {eps(s['claimed_epsilon'])}"
        )
    for e in data.get("evaluation_releases", []):
        relation = "ABOVE" if e["violation"] else "<="
        lines.append(
            f"  {e['site']} evaluation release: lower bound {eps(e['epsilon_lower'])} {relation} "
            f"{eps(e['claimed_epsilon'])}"
        )
    return lines
