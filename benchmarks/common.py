"""What the simulation benchmarks share: a scenario with command-line settings, and their output."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def scenario_config(scenario: str, out: Path, settings: dict[str, Any], set_items: list[str], *, source: str):
    """``scenario`` writing to ``out``, with ``settings`` (flat keys) and ``--set KEY=VALUE`` items."""
    from common.config import RunConfig
    from simulations.scenarios import load_scenario

    cfg = load_scenario(scenario).replace(out=str(out))
    flat = dict(settings)
    for item in set_items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        flat[key.strip()] = value.strip()
    return RunConfig.from_flat({**cfg.to_flat(), **flat}, source=source) if flat else cfg


def finish(result: dict[str, Any], path: Path, report: Callable[[dict[str, Any]], str]) -> int:
    """Write ``result`` as JSON to ``path``, print its report and where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"written: {path}")
    return 0
