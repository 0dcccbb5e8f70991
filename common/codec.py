"""The flat kebab-case form of settings, as a command line, a node config or Flower's run
config gives them: typed reading of one value, and the uniform error message of a rule."""

from __future__ import annotations

from typing import Any

from common.errors import ConfigError


def coerce_value(value: Any, target: type, key: str, source: str) -> Any:
    """``value`` as ``target`` (bool, int, float or str), accepting the string forms a command
    line or node config gives; a wrong type raises naming ``source`` and ``key``."""
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
    elif target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif target is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif target is str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{source}: {key} must be a {target.__name__}, got {value!r}")


def check(ok: bool, key: str, rule: str, value: object) -> None:
    """Raise ``"<key> <rule>, got <value>"`` unless ``ok``: one message shape for every rule."""
    if not ok:
        raise ConfigError(f"{key} {rule}, got {value!r}")


def int_list(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v.strip())


def name_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def check_class_names(names: tuple[str, ...], key: str = "class-names") -> None:
    check(
        not names or (len(names) >= 2 and len(set(names)) == len(names)),
        key,
        "must list at least 2 distinct labels",
        ",".join(names),
    )
