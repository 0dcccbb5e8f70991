"""RunConfig: strict parsing with clear messages, lossless round trips, shipped configs in sync."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from common.config import RunConfig, Strategy
from common.errors import ConfigError
from common.federation import model_spec, site_partitions
from common.models import ModelKind
from simulations import scenarios

REPO_ROOT = Path(__file__).resolve().parents[2]


def _config_error(values: dict, source: str = "my-source") -> str:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_flat(values, source=source)
    message = str(info.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message


# ---- rejection ------------------------------------------------------------------------------


def test_unknown_key_names_source_and_key():
    message = _config_error({"epsilon": 2.0, "nosuchkey": 1}, source="scenario.toml")
    assert message.startswith("scenario.toml: unknown setting 'nosuchkey'")
    assert "known settings:" in message
    assert "epsilon" in message and "max-grad-norm" in message


def test_snake_case_keys_are_unknown():
    message = _config_error({"max_grad_norm": 1.0})
    assert "'max_grad_norm'" in message


@pytest.mark.parametrize(
    ("key", "value", "type_name"),
    [
        ("sites", "five", "int"),
        ("sites", 2.5, "int"),
        ("sites", True, "int"),
        ("rounds", "1.5", "int"),
        ("epsilon", "lots", "float"),
        ("epsilon", True, "float"),
        ("dp", "yes", "bool"),
        ("dp", 1, "bool"),
        ("centralized-eval", "0", "bool"),
        ("dataset", True, "str"),
        ("hidden", {"a": 1}, "str"),
    ],
)
def test_wrong_type_names_source_key_and_value(key, value, type_name):
    message = _config_error({key: value})
    assert message == f"my-source: {key} must be a {type_name}, got {value!r}"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("epsilon", -1.0, "epsilon must be > 0, got -1.0"),
        ("epsilon", 0, "epsilon must be > 0, got 0.0"),
        ("sites", 0, "sites must be >= 1, got 0"),
        ("rounds", 0, "rounds must be in 1..10000, got 0"),
        ("delta", 0.0, "delta must be in (0, 1), got 0.0"),
        ("delta", 1, "delta must be in (0, 1), got 1.0"),
        ("noise-multiplier", -0.5, "noise-multiplier must be >= 0 (0 = calibrate to epsilon), got -0.5"),
        ("max-grad-norm", 0, "max-grad-norm must be > 0, got 0.0"),
        ("test-fraction", 1.0, "test-fraction must be in (0, 1), got 1.0"),
        ("val-fraction", 0, "val-fraction must be in (0, 1), got 0.0"),
        ("alpha", -2, "alpha must be > 0, got -2.0"),
        ("min-site-records", 1, "min-site-records must be >= 2, got 1"),
        ("fraction-train", 0, "fraction-train must be in (0, 1], got 0.0"),
        ("fraction-evaluate", 1.5, "fraction-evaluate must be in [0, 1], got 1.5"),
        ("proximal-mu", -1, "proximal-mu must be >= 0, got -1.0"),
        ("server-learning-rate", 0, "server-learning-rate must be > 0, got 0.0"),
        ("local-epochs", 0, "local-epochs must be in (0, 1000], got 0.0"),
        ("batch-size", 0, "batch-size must be >= 1, got 0"),
        ("learning-rate", -0.1, "learning-rate must be in (0, 1000], got -0.1"),
        ("synthetic-records", 9, "synthetic-records must be >= 10, got 9"),
        ("partition", "random", "partition must be one of iid, dirichlet, quantity, got 'random'"),
        ("model", "vit", "model must be one of mlp, cnn, resnet, transformer, got 'vit'"),
        ("finetune", "adapters", "finetune must be full or lora, got 'adapters'"),
        ("finetune", "lora", "finetune lora needs model transformer (model is 'mlp'), got 'lora'"),
        ("grad-sample-mode", "fast", "grad-sample-mode must be one of hooks, functorch, ew, ghost, got 'fast'"),
        ("resnet-width", 0, "resnet-width must be >= 1, got 0"),
        ("lora-rank", 0, "lora-rank must be >= 1, got 0"),
        ("lora-targets", " , ", "lora-targets must name at least one module, got ' , '"),
        ("max-length", 1, "max-length must be >= 2, got 1"),
        ("class-names", "a,a", "class-names must list at least 2 distinct labels, got 'a,a'"),
        (
            "strategy",
            "fedsgd",
            "strategy must be one of fedavg, fedprox, fedadam, trimmed-mean, median, krum, multi-krum, got 'fedsgd'",
        ),
        ("hidden", "16,x", "hidden must be comma-separated positive integers, got '16,x'"),
        ("hidden", "16,0", "hidden must be comma-separated positive integers, got '16,0'"),
        ("channels", "-8", "channels must be comma-separated positive integers, got '-8'"),
    ],
)
def test_out_of_range_values(key, value, expected):
    assert _config_error({key: value}) == f"my-source: {expected}"


def test_direct_construction_message_has_no_source():
    with pytest.raises(ConfigError, match=re.escape("epsilon must be > 0, got -1.0")) as info:
        RunConfig(epsilon=-1.0)
    assert str(info.value) == "epsilon must be > 0, got -1.0"


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("key", ["alpha", "epsilon", "learning-rate", "max-grad-norm"])
def test_non_finite_values_are_rejected(key, value):
    # inf passes the "> 0" checks: alpha=inf reaches the partitioner, which warns about an
    # invalid cast and then advises to "raise alpha"; epsilon=inf makes noise calibration hang.
    message = _config_error({key: value})
    assert message.startswith(f"my-source: {key} ")
    assert value in message


# ---- coercion and round trips -----------------------------------------------------------------


def test_strings_are_coerced_like_command_line_values():
    cfg = RunConfig.from_flat(
        {"sites": "7", "epsilon": "2.5", "dp": "False", "hidden": [32, 16], "rounds": 3.0, "alpha": 2}
    )
    assert (cfg.sites, cfg.epsilon, cfg.dp, cfg.hidden, cfg.rounds, cfg.alpha) == (7, 2.5, False, "32,16", 3, 2.0)
    assert isinstance(cfg.alpha, float) and isinstance(cfg.rounds, int)
    assert cfg.hidden_layers == (32, 16)


def test_merged_keeps_earlier_values():
    base = RunConfig.from_flat({"sites": 3, "epsilon": 4.0})
    merged = base.merged({"epsilon": 2.0}, source="cli")
    assert merged.sites == 3 and merged.epsilon == 2.0
    assert base.epsilon == 4.0


def test_derived_views():
    cfg = RunConfig.from_flat({"categorical-columns": " home, purpose ,", "channels": "8,16", "strategy": "fedprox"})
    assert cfg.categorical == ("home", "purpose")
    assert cfg.channel_layers == (8, 16)
    assert cfg.strategy_kind is Strategy.FEDPROX


NON_DEFAULT = {
    "scenario": "custom",
    "dataset": "csv",
    "data-path": "/data/x.csv",
    "label-column": "y",
    "categorical-columns": "a,b",
    "sites": 3,
    "partition": "quantity",
    "alpha": 0.5,
    "hidden": "32,16",
    "rounds": 2,
    "strategy": "fedadam",
    "proximal-mu": 0.01,
    "centralized-eval": False,
    "local-epochs": 0.5,
    "dp": False,
    "epsilon": 8.0,
    "delta": 1e-6,
    "noise-multiplier": 1.1,
    "seed": 42,
    "out": "runs/x",
}


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["defaults", "non-defaults"])
def test_to_flat_round_trips(values):
    cfg = RunConfig.from_flat(values)
    flat = cfg.to_flat()
    assert all(isinstance(v, str | int | float | bool) for v in flat.values())
    assert all("_" not in k for k in flat)
    assert RunConfig.from_flat(flat) == cfg
    assert RunConfig.from_flat(json.loads(cfg.to_json())) == cfg
    for key, value in values.items():
        assert flat[key] == value


# ---- shipped configurations ---------------------------------------------------------------------


def test_flwr_app_config_matches_default_scenario():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    app_config = pyproject["tool"]["flwr"]["app"]["config"]
    from_pyproject = RunConfig.from_flat(app_config, source="pyproject.toml").to_flat()
    from_scenario = scenarios.load_scenario(scenarios.DEFAULT_SCENARIO).to_flat()
    assert app_config["scenario"] == scenarios.DEFAULT_SCENARIO
    from_pyproject.pop("out")
    from_scenario.pop("out")
    differing = {
        k: (from_pyproject[k], from_scenario[k]) for k in from_scenario if from_pyproject[k] != from_scenario[k]
    }
    assert not differing, f"pyproject [tool.flwr.app.config] vs scenario (pyproject, scenario): {differing}"


def test_shipped_scenarios_are_listed():
    names = scenarios.available()
    assert scenarios.DEFAULT_SCENARIO in names
    assert {"hospitals-tabular", "hospitals-imaging", "banks-credit"} <= set(names)


@pytest.mark.parametrize("name", scenarios.available())
def test_every_shipped_scenario_loads_and_partitions(name):
    cfg = scenarios.load_scenario(name)
    assert cfg.scenario == name
    assert RunConfig.from_flat(cfg.to_flat()) == cfg
    spec = model_spec(cfg)
    assert spec.kind is ModelKind(cfg.model)
    assert spec.num_classes >= 2
    sites = site_partitions(cfg, cfg.sites)
    assert len(sites) == cfg.sites
    for site in sites:
        assert len(site.train) >= 1 and len(site.val) >= 1
        if spec.kind is ModelKind.TRANSFORMER:  # token ids, padded to the longest record up to max-length
            assert site.train.record_shape[0] <= spec.input_shape[0] == cfg.max_length
        else:
            assert site.train.record_shape == spec.input_shape
        assert site.train.num_classes == spec.num_classes
        assert len(site.train) + len(site.val) >= cfg.min_site_records


def test_scenario_by_path_and_errors(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('description = "x"\nsites = 2\nepsilon = 3.0\n', encoding="utf-8")
    cfg = scenarios.load_scenario(str(good))
    assert (cfg.scenario, cfg.sites, cfg.epsilon) == ("mine", 2, 3.0)

    with pytest.raises(ConfigError, match=r"unknown scenario 'nope'; available: .*hospitals-tabular"):
        scenarios.load_scenario("nope")
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: scenario file not found")):
        scenarios.load_scenario(str(missing))
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("sites = = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{bad_toml}: not valid TOML")):
        scenarios.load_scenario(str(bad_toml))
    nested = tmp_path / "nested.toml"
    nested.write_text("[privacy]\nepsilon = 1.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"flat key = value pairs, found section \[privacy\]"):
        scenarios.load_scenario(str(nested))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("epsilonn = 1.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{unknown}: unknown setting 'epsilonn'")):
        scenarios.load_scenario(str(unknown))
