"""Gradient canaries for a one-run privacy audit (:mod:`audit.empirical`), at the site.

Steinke, Nasr & Jagielski (2023), "Privacy Auditing with One (1) Training Run": ``m`` canary
records, each included in the site's training data independently with probability 1/2. Here a
canary is a *gradient canary* (a Dirac canary, their Section 6): a record whose gradient is
``value * e_k``, a huge step along one coordinate ``k`` of the model's trainable parameters, and
whatever the model (the white-box setting). Every canary has its own coordinate.

- **Coordinates** are public: drawn from a seed of the site's name and the job (anyone can
  recompute them; knowing where a canary would be says nothing about whether it is there).
- **Inclusion bits** are the site's secret, derived from its secret (``site.secret``) and the
  job, kept in the site's state (``audit/JOB/canaries.json``) and never sent.
- **Training**: an included canary is a record like any other: Poisson-sampled at the round's
  sample rate ``q`` at every step (its own secret generator), its gradient clipped to the bound
  the optimizer actually uses and added to the clipped sum *before* the noise. Without DP it is
  added unclipped, as a real record's gradient would be.

**Accounting.** A canary is one more record sampled at ``q`` under the same DP-SGD event: the
guarantee for every real record is unchanged (DP for one record holds whatever the others are),
no noise is lowered, nothing is refunded and the ledger's spend is exactly the spend without
canaries. The sample rate is planned from the real records (``records`` in the ledger, which
does not count canaries); the entry records ``audit_canaries = m`` (public; the number included
is not). The model of an audited run carries the canaries' steps: audit runs are for auditing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.privacy.policy import derived_seed

CANARY_FILE = "canaries.json"
KINDS = ("gradient", "input")
# A canary's gradient, in units of the clipping bound: huge, so that its clipped contribution
# is exactly the bound the optimizer really applies (a larger bound than recorded shows).
VALUE_PER_CLIP = 1000.0
# Without DP nothing is clipped: the canary's gradient, in absolute units, is then this.
UNCLIPPED_VALUE = 100.0


@dataclass(frozen=True)
class CanaryPlan:
    """One job's canaries at one site: ``names[j]`` / ``indices[j]`` the parameter and flat
    index of canary ``j``'s coordinate; ``included`` its inclusion bit (secret)."""

    job: str
    site: str
    names: tuple[str, ...]
    indices: tuple[int, ...]
    included: tuple[bool, ...]
    kind: str = "gradient"

    @property
    def size(self) -> int:
        return len(self.included)

    def to_json(self) -> dict:
        return {
            "job": self.job,
            "site": self.site,
            "kind": self.kind,
            "names": list(self.names),
            "indices": list(self.indices),
            "included": [int(b) for b in self.included],
            "value_per_clip": VALUE_PER_CLIP,
            "unclipped_value": UNCLIPPED_VALUE,
        }

    @classmethod
    def from_json(cls, data: dict) -> CanaryPlan:
        return cls(
            str(data["job"]),
            str(data["site"]),
            tuple(str(n) for n in data["names"]),
            tuple(int(i) for i in data["indices"]),
            tuple(bool(b) for b in data["included"]),
            str(data.get("kind", "gradient")),
        )


def public_coordinates(site: str, job: str, shapes: Sequence[tuple[str, int]], m: int) -> list[tuple[str, int]]:
    """``m`` distinct coordinates of the parameters ``shapes`` (name, number of elements), from
    a public seed of ``site`` and ``job``."""
    total = sum(n for _, n in shapes)
    if m > total:
        raise ValueError(f"audit-canaries = {m}: the model has only {total} trainable coordinates")
    seed = int.from_bytes(hashlib.sha256(f"fedshield-canaries:{site}:{job}".encode()).digest()[:8], "big")
    flat = np.random.default_rng(seed).choice(total, size=m, replace=False)
    starts = np.cumsum([0, *(n for _, n in shapes)])
    out = []
    for f in flat.tolist():
        i = int(np.searchsorted(starts, f, side="right") - 1)
        out.append((shapes[i][0], int(f - starts[i])))
    return out


def plan_canaries(
    site: str, job: str, secret: bytes, shapes: Sequence[tuple[str, int]], m: int, kind: str = "gradient"
) -> CanaryPlan:
    if kind not in KINDS:
        raise ValueError(f"canary kind must be one of {', '.join(KINDS)}, got {kind!r}")
    bits = np.random.default_rng(derived_seed(secret, f"canaries:{job}")).integers(0, 2, size=m).astype(bool)
    if kind == "input":
        return CanaryPlan(job, site, (), (), tuple(bits.tolist()), kind)
    coords = public_coordinates(site, job, shapes, m)
    return CanaryPlan(job, site, tuple(n for n, _ in coords), tuple(i for _, i in coords), tuple(bits.tolist()))


def input_records(
    site: str, job: str, m: int, record_shape: Sequence[int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` input canaries of ``site`` in ``job`` (public): features uniform in [0, 1] (the
    range of scaled table features and of image pixels), labels uniform over the classes."""
    seed = int.from_bytes(hashlib.sha256(f"fedshield-input-canaries:{site}:{job}".encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    x = rng.random((m, *record_shape), dtype=np.float32)
    return x, rng.integers(0, num_classes, size=m).astype(np.int64)


def audit_dir(root: Path, job: str) -> Path:
    return root / "audit" / job


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def site_plan(
    root: Path, site: str, job: str, secret: bytes, shapes: Sequence[tuple[str, int]], m: int, kind: str = "gradient"
) -> CanaryPlan:
    """The job's canaries at this site: planned once, then read back (the same every round)."""
    path = audit_dir(root, job) / CANARY_FILE
    if path.exists():
        plan = CanaryPlan.from_json(json.loads(path.read_text()))
        if (plan.size, plan.kind) != (m, kind):
            raise ValueError(
                f"{path}: {plan.size} {plan.kind} canaries planned for job {job}, the job now asks for {m} {kind}"
            )
        return plan
    plan = plan_canaries(site, job, secret, shapes, m, kind)
    _write_json(path, plan.to_json())
    return plan


def archive_round(
    root: Path, job: str, server_round: int, names: list[str], received: list[np.ndarray], released: list[np.ndarray]
) -> Path:
    """Keep what the site received and released in ``server_round`` for the auditor."""
    path = audit_dir(root, job) / f"round-{server_round}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    torch.save(
        {
            "round": server_round,
            "names": names,
            "received": [torch.as_tensor(np.asarray(w)) for w in received],
            "released": [torch.as_tensor(np.asarray(w)) for w in released],
        },
        tmp,
    )
    os.replace(tmp, path)
    return path


class CanaryInjector:
    """Adds the sampled included canaries' gradients at each step (see the module's docstring).
    Each step draws a Poisson sample of all ``m`` canaries (so the draws do not depend on the
    secret bits) from its own generator and keeps the included ones."""

    def __init__(self, plan: CanaryPlan, sample_rate: float, generator: torch.Generator) -> None:
        self.included = torch.tensor(plan.included, dtype=torch.bool)
        self.sample_rate = sample_rate
        self.generator = generator

    def _sampled(self) -> np.ndarray:
        draws = torch.rand(len(self.included), generator=self.generator) < self.sample_rate
        return torch.nonzero(draws & self.included).flatten().numpy()

    def add(self, attr: str, clip: float | None, scale: float) -> None:
        """Add ``scale`` x each sampled canary's gradient, clipped to ``clip`` (``None``: not
        clipped), to ``p.<attr>`` (``summed_grad`` or ``grad``)."""
        raise NotImplementedError


def _target(p: torch.nn.Parameter, attr: str) -> torch.Tensor:
    target = getattr(p, attr)
    if target is None:
        target = torch.zeros_like(p)
        setattr(p, attr, target)
    return target


class GradientCanaries(CanaryInjector):
    """Canary ``j``'s gradient is ``value * e_k`` at its coordinate ``k``."""

    def __init__(
        self,
        plan: CanaryPlan,
        params: Sequence[tuple[str, torch.nn.Parameter]],
        sample_rate: float,
        generator: torch.Generator,
        value: float,
    ) -> None:
        super().__init__(plan, sample_rate, generator)
        index = {name: i for i, (name, _) in enumerate(params)}
        missing = sorted(set(plan.names) - set(index))
        if missing:
            raise ValueError(f"canary coordinates in parameters the model does not train: {missing[:3]}")
        self.params = [p for _, p in params]
        self.param_of = np.array([index[n] for n in plan.names], dtype=np.int64)
        self.flat = np.array(plan.indices, dtype=np.int64)
        self.value = value

    def add(self, attr: str, clip: float | None, scale: float) -> None:
        magnitude = (self.value if clip is None else min(self.value, clip)) * scale
        for j in self._sampled():
            _target(self.params[self.param_of[j]], attr).view(-1)[self.flat[j]] += magnitude


class InputCanaries(CanaryInjector):
    """Canary ``j`` is the record ``(x[j], y[j])``: its gradient at the current model, computed
    one record at a time with Opacus's hooks off, clipped like every record's."""

    def __init__(
        self,
        plan: CanaryPlan,
        records: tuple[np.ndarray, np.ndarray],
        model: torch.nn.Module,
        params: Sequence[torch.nn.Parameter],
        criterion: torch.nn.Module,
        sample_rate: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__(plan, sample_rate, generator)
        self.x, self.y = (torch.as_tensor(a) for a in records)
        self.model, self.params, self.criterion = model, list(params), criterion

    def add(self, attr: str, clip: float | None, scale: float) -> None:
        picked = self._sampled()
        if len(picked) == 0:
            return
        device = self.params[0].device
        module = getattr(self.model, "_module", self.model)  # the plain model under Opacus's wrapper
        hooked = hasattr(self.model, "disable_hooks")
        if hooked:
            self.model.disable_hooks()
        try:
            for j in picked:
                with torch.enable_grad():
                    loss = self.criterion(module(self.x[j : j + 1].to(device)), self.y[j : j + 1].to(device))
                    grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
                if not all(bool(torch.isfinite(g).all()) for g in grads):
                    continue  # as a real record's: nothing (0 * inf would make the whole sum NaN)
                norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
                factor = scale * (1.0 if clip is None else min(1.0, clip / (norm + 1e-6)))
                if factor < torch.finfo(self.params[0].dtype).tiny:
                    continue  # a subnormal factor rounds by up to half its value (client/precision.py)
                for p, g in zip(self.params, grads, strict=True):
                    _target(p, attr).add_(g, alpha=factor)
        finally:
            if hooked:
                self.model.enable_hooks()
