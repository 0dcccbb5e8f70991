"""The run configuration: every knob of a run on one screen, in sections, validated once.

``RunConfig`` holds the run's own bookkeeping (scenario, seed, output folder) and one section
each for the data, the model, the task, local training, the federation, the job's privacy ask
and the policy the simulated sites hold (:mod:`common.config.sections`). Each section checks
its own fields; ``RunConfig`` checks only the rules that span sections.

The flat kebab-case form (``rounds = 5``, ``budget-epsilon = 2.0``) is the codec at the edges:
scenario files, the command line and Flower's run config, whose values must be str, int, float
or bool. Lists (layer widths, class names) are comma-separated strings. Scenario files may also
group keys under ``[data]``, ``[model]``, ... tables named as the sections.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.codec import check, coerce_value
from common.config.sections import (
    FOLLOW_TRAIN,
    MAX_SEED,
    DataConfig,
    FederationConfig,
    GradSampleMode,
    ModelConfig,
    ModelKind,
    PolicyConfig,
    PrivacyConfig,
    Section,
    Strategy,
    TaskConfig,
    TaskKind,
    TrainingConfig,
    key_of,
)
from common.errors import ConfigError

__all__ = [
    "DataConfig",
    "FederationConfig",
    "GradSampleMode",
    "ModelConfig",
    "ModelKind",
    "PolicyConfig",
    "PrivacyConfig",
    "RunConfig",
    "Strategy",
    "TaskConfig",
    "TaskKind",
    "TrainingConfig",
    "coerce_value",
]

# Keys of earlier versions, and what replaced them: an old scenario file gets told, not ignored.
RENAMED = {
    "epsilon": "budget-epsilon (each site's budget) or job-epsilon (the most this job may spend at a site)",
    "delta": "budget-delta",
    "site-budgets": "budget-epsilon-by-site",
    "site-evaluation": "evaluation",
}


@dataclass(frozen=True)
class RunConfig:
    """A whole federated run. A site's budget is epsilon at delta for its data source over every
    job; the unit of privacy is one record at one site (add/remove-one neighbouring relation)."""

    scenario: str = "hospitals-tabular"
    seed: int = 0
    out: str = "runs/latest"
    state_dir: str = ""  # where sites and server keep keys and ledgers; "" = inside `out`
    resume: bool = False  # continue the job in the server's checkpoint (after a crash or stop)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        check(0 <= self.seed <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED}", self.seed)
        names = self.data.class_name_list
        check(
            not names or self.model.num_classes in (0, len(names)),
            "num-classes",
            f"must match the {len(names)} class-names",
            self.model.num_classes,
        )
        sites = self.federation.site_names
        for site in self.policy.budgets:
            shown = f"{', '.join(sites[:5])}{', ...' if len(sites) > 5 else ''}"
            check(site in sites, "budget-epsilon-by-site", f"names no simulated site (the sites are {shown})", site)

    @property
    def state_path(self) -> str:
        return self.state_dir or self.out

    @property
    def evaluate_fraction(self) -> float:
        """The fraction of sites asked to evaluate each round (``fraction-evaluate``; by default
        that of training, when the job expects sites to evaluate at all)."""
        if self.federation.fraction_evaluate != FOLLOW_TRAIN:
            return self.federation.fraction_evaluate
        return self.federation.fraction_train if self.policy.evaluation != "off" else 0.0

    # The flat codec ---------------------------------------------------------------------
    def to_flat(self) -> dict[str, str | int | float | bool]:
        """Kebab-case mapping, as written in scenario files and Flower's run config."""
        return {key: getattr(self._holder(where), name) for key, (where, name) in _KEYS.items()}

    def to_sections(self) -> dict[str, Any]:
        """The nested form: top-level keys, then one table per section (what config.toml holds)."""
        out: dict[str, Any] = {}
        for key, (where, name) in _KEYS.items():
            value = getattr(self._holder(where), name)
            (out.setdefault(where, {}) if where else out)[key] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_sections(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with settings changed, named by their keys in snake case (``rounds=3``,
        ``model="cnn"``, ``budget_epsilon=2.0``)."""
        return self.merged({k.replace("_", "-"): v for k, v in changes.items()}, source="replace()")

    @classmethod
    def of(cls, **changes: Any) -> RunConfig:
        """The defaults with ``changes`` (as :meth:`replace`)."""
        return cls().replace(**changes)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], *, source: str = "config") -> RunConfig:
        """Build from kebab-case keys (flat, or grouped in section tables); unknown keys and
        wrong types name ``source`` and the key."""
        return cls().merged(values, source=source)

    def merged(self, values: Mapping[str, Any], *, source: str) -> RunConfig:
        """A copy with ``values`` (kebab-case keys, flat or in section tables) applied on top."""
        changes: dict[str | None, dict[str, Any]] = {}
        for key, value, table in _flatten(values, source):
            if key in RENAMED:
                raise ConfigError(f"{source}: {key!r} is now {RENAMED[key]}")
            if key not in _KEYS:
                raise ConfigError(f"{source}: unknown setting {key!r}; known settings: {', '.join(sorted(_KEYS))}")
            where, name = _KEYS[key]
            if table is not None and table != where:
                raise ConfigError(
                    f"{source}: [{table}] {key}: {key} belongs in [{where}]"
                    if where
                    else f"{source}: [{table}] {key}: {key} is a top-level setting, outside any table"
                )
            current = getattr(self._holder(where), name)
            changes.setdefault(where, {})[name] = coerce_value(value, type(current), key, source)
        try:
            sections = {
                where: dataclasses.replace(getattr(self, where), **fields)
                for where, fields in changes.items()
                if where is not None
            }
            return dataclasses.replace(self, **changes.get(None, {}), **sections)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def _holder(self, where: str | None) -> Any:
        return getattr(self, where) if where else self


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.default_factory is not dataclasses.MISSING)


def _keys() -> dict[str, tuple[str | None, str]]:
    """Every kebab-case key -> (section or None for a top-level setting, field name)."""
    out: dict[str, tuple[str | None, str]] = {}
    for f in dataclasses.fields(RunConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        pairs = (
            [(key_of(sf), f.name, sf.name) for sf in dataclasses.fields(default)]
            if isinstance(default, Section)
            else [(key_of(f), None, f.name)]
        )
        for key, where, name in pairs:
            if key in out:
                raise RuntimeError(f"setting {key!r} is defined twice ({out[key][0]} and {where})")
            out[key] = (where, name)
    return out


_KEYS = _keys()


def _flatten(values: Mapping[str, Any], source: str) -> list[tuple[str, Any, str | None]]:
    """(key, value, table) for flat keys (table None) and keys inside section tables."""
    out: list[tuple[str, Any, str | None]] = []
    for key, value in values.items():
        if isinstance(value, Mapping) and (key in SECTIONS or key not in _KEYS):
            if key not in SECTIONS:
                raise ConfigError(f"{source}: unknown table [{key}]; the tables are {', '.join(SECTIONS)}")
            out.extend((k, v, key) for k, v in value.items())
        else:
            out.append((key, value, None))
    return out


def setting_keys() -> tuple[str, ...]:
    """Every setting's kebab-case key, in section order."""
    return tuple(_KEYS)
