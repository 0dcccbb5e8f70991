"""A site's own privacy policy: what the site decides, never the server.

The budget (epsilon at delta, for the site's data source over its whole life), whether DP is
required, the site's own train/validation split, the label set and the table's public schema,
and what the site lets out besides DP updates. A deployed site reads it from its node config
(``budget-epsilon = 1.0`` ...) or from a policy file (node config ``site-policy = PATH``, a TOML
file with the same kebab-case keys). In a simulation the scenario stands in for every site (the
researcher plays every party), and the ledger records that it did.

The server's job config can only ask for less: a smaller epsilon for the job, DP when the site
would allow none; it can never loosen a policy, and it never sets delta, the split or the
schema of a deployed site.

Unit of privacy: one record of the site's data source (add/remove-one neighbours).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from common.codec import check, check_class_names, coerce_value
from common.errors import ConfigError

SECRET_FILE = "site.secret"
# The largest epsilon a policy may hold: beyond this the accountants overflow, and no
# meaningful guarantee is left anyway.
MAX_EPSILON = 100.0


class Evaluation(StrEnum):
    """What a site answers when the server asks it to evaluate a model on its validation records."""

    OFF = "off"  # refuse: no record is read, nothing is released (the default)
    DP = "dp"  # release a noised count of correct predictions, charged to the budget
    PUBLIC = "public"  # release exact loss and accuracy: the site declares its validation records public


class Origin(StrEnum):
    NODE_CONFIG = "node-config"
    POLICY_FILE = "policy-file"
    SIMULATION = "simulation-scenario"  # the scenario stands in for the site


@dataclass(frozen=True)
class SitePolicy:
    """The site's policy, validated. ``split_seed`` is resolved (from the site's secret when the
    operator does not set one), so the same site always splits its records the same way."""

    epsilon: float
    delta: float = 1e-5
    require_dp: bool = True
    data_source: str = "default"
    val_fraction: float = 0.2
    split_seed: int = 0
    class_names: tuple[str, ...] = ()
    feature_schema: str = ""  # path of the table's public schema (column bounds); "" = none
    evaluation: Evaluation = Evaluation.OFF
    eval_noise_multiplier: float = 10.0
    insecure_reproducible_noise: bool = False
    origin: Origin = Origin.NODE_CONFIG
    # What the site declares public (released exactly, outside the DP guarantee). The record
    # count is public by default: FedAvg weights by it and the Poisson sample rate is derived
    # from it, as in every DP-SGD deployment (Opacus, TF Privacy); see the README.
    declared_public: tuple[str, ...] = field(default=("record-count",))

    def __post_init__(self) -> None:
        check(
            0 < self.epsilon <= MAX_EPSILON and math.isfinite(self.epsilon),
            "budget-epsilon",
            f"must be in (0, {MAX_EPSILON:g}]",
            self.epsilon,
        )
        check(0 < self.delta < 1, "budget-delta", "must be in (0, 1)", self.delta)
        check(0 < self.val_fraction < 1, "val-fraction", "must be in (0, 1)", self.val_fraction)
        check(bool(self.data_source.strip()), "data-source", "must be a non-empty name", self.data_source)
        check(self.eval_noise_multiplier > 0, "eval-noise-multiplier", "must be > 0", self.eval_noise_multiplier)
        check_class_names(self.class_names)

    def as_record(self) -> dict[str, Any]:
        """What the ledger records of the policy (no secret: the split seed is left out)."""
        return {
            "origin": self.origin.value,
            "require_dp": self.require_dp,
            "data_source": self.data_source,
            "val_fraction": self.val_fraction,
            "evaluation": self.evaluation.value,
            "insecure_reproducible_noise": self.insecure_reproducible_noise,
            "declared_public": list(self.declared_public),
        }


# The keys a site may set (node config or policy file), and how each is read.
_KEYS = {
    "budget-epsilon": float,
    "budget-delta": float,
    "require-dp": bool,
    "data-source": str,
    "val-fraction": float,
    "split-seed": int,
    "class-names": str,
    "feature-schema": str,
    "evaluation": str,
    "eval-noise-multiplier": float,
    "insecure-reproducible-noise": bool,
}


def policy_keys() -> frozenset[str]:
    """The kebab-case keys a site's policy may hold."""
    return frozenset(_KEYS)


def site_secret(root: Path) -> bytes:
    """The site's own 32 random bytes (created on first use, 0600, never sent or logged): the
    seed of its train/validation split and the salt of its dataset fingerprints."""
    path = root / SECRET_FILE
    if path.exists():
        data = path.read_bytes()
        if len(data) != 32:
            raise ConfigError(f"{path}: a site secret is 32 bytes, found {len(data)}; restore it from a backup")
        return data
    root.mkdir(parents=True, exist_ok=True)
    # Written whole under a private name, then linked into place: the secret appears complete
    # or not at all, and of two first requests racing, one links and both read the same bytes.
    tmp = root / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(32))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another request created it first: use that one
    finally:
        tmp.unlink(missing_ok=True)
    return site_secret(root)


def derived_seed(secret: bytes, purpose: str) -> int:
    """A 63-bit seed for ``purpose``, derived from the site's secret (HMAC-SHA256)."""
    return int.from_bytes(hmac.new(secret, purpose.encode(), hashlib.sha256).digest()[:8], "big") >> 1


def from_mapping(values: Mapping[str, Any], *, source: str, secret: bytes, origin: Origin) -> SitePolicy:
    """A policy from kebab-case ``values`` (node config or policy file). Fails closed: a site
    without ``budget-epsilon`` has no policy and will not train."""
    unknown = sorted(k for k in values if k not in _KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown policy setting {unknown[0]!r}; known: {', '.join(sorted(_KEYS))}")
    if "budget-epsilon" not in values:
        raise ConfigError(
            f"{source}: no budget-epsilon: this site has no privacy budget and refuses to train "
            "(set budget-epsilon in its node config or its site-policy file)"
        )
    typed = {k: coerce_value(v, _KEYS[k], k, source) for k, v in values.items()}
    try:
        evaluation = Evaluation(typed.get("evaluation", Evaluation.OFF.value))
    except ValueError:
        allowed = ", ".join(e.value for e in Evaluation)
        raise ConfigError(f"{source}: evaluation must be one of {allowed}, got {typed['evaluation']!r}") from None
    try:
        return SitePolicy(
            epsilon=typed["budget-epsilon"],
            delta=typed.get("budget-delta", 1e-5),
            require_dp=typed.get("require-dp", True),
            data_source=typed.get("data-source", "default"),
            val_fraction=typed.get("val-fraction", 0.2),
            split_seed=typed.get("split-seed", derived_seed(secret, "split")),
            class_names=tuple(c.strip() for c in typed.get("class-names", "").split(",") if c.strip()),
            feature_schema=typed.get("feature-schema", ""),
            evaluation=evaluation,
            eval_noise_multiplier=typed.get("eval-noise-multiplier", 10.0),
            insecure_reproducible_noise=typed.get("insecure-reproducible-noise", False),
            origin=origin,
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def read_policy_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: site policy file not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML policy ({exc})") from None
