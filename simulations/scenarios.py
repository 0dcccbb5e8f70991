"""Scenario files: ``simulations/scenarios/NAME.toml``, kebab-case settings.

A scenario file may set any setting of :class:`~common.config.RunConfig`, at the top level
(``seed``, ``out``, ...) or in the table of its section (``[data]``, ``[model]``, ``[task]``,
``[training]``, ``[federation]``, ``[privacy]``, ``[policy]``); command-line options override it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from common.config import RunConfig
from common.errors import ConfigError

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DEFAULT_SCENARIO = "hospitals-tabular"


def available() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def scenario_path(name: str) -> Path:
    """A scenario by name (from the shipped folder) or by path to a ``.toml`` file."""
    if name.endswith(".toml") or "/" in name:
        path = Path(name)
        if path.is_dir():
            raise ConfigError(f"--scenario {path}: a folder, not a scenario file (.toml)")
        if not path.is_file():
            raise ConfigError(f"{path}: scenario file not found")
        return path
    path = SCENARIO_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown scenario {name!r}; available: {', '.join(available())}")
    return path


def describe(name: str) -> str:
    """A shipped scenario in one line: its data, model and sites, and the first sentence of
    its description."""
    cfg = load_scenario(name)
    values = tomllib.loads(scenario_path(name).read_text(encoding="utf-8"))
    first = str(values.get("description", "")).split(". ")[0].rstrip(".")
    fed = cfg.federation
    return f"{name}: {cfg.data.dataset}, {cfg.model.kind}, {fed.sites} sites, {fed.rounds} rounds. {first}."


def load_scenario(name: str) -> RunConfig:
    path = scenario_path(name)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    values.pop("description", None)
    values.setdefault("scenario", path.stem)
    return RunConfig.from_flat(values, source=str(path))
