"""RunConfig: strict parsing with clear messages, lossless round trips, shipped configs in sync."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from common.config import FederationConfig, RunConfig, Strategy
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
    message = _config_error({"budget-epsilon": 2.0, "nosuchkey": 1}, source="scenario.toml")
    assert message.startswith("scenario.toml: unknown setting 'nosuchkey'")
    assert "known settings:" in message
    assert "budget-epsilon" in message and "max-grad-norm" in message


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
        ("budget-epsilon", "lots", "float"),
        ("budget-epsilon", True, "float"),
        ("job-epsilon", "all", "float"),
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
        ("budget-epsilon", -1.0, "budget-epsilon must be in (0, 100], got -1.0"),
        ("budget-epsilon", 0, "budget-epsilon must be in (0, 100], got 0.0"),
        ("budget-epsilon", 101, "budget-epsilon must be in (0, 100], got 101.0"),
        ("job-epsilon", -1, "job-epsilon must be in [0, 100] (0 = what is left of each site's budget), got -1.0"),
        ("evaluation", "always", "evaluation must be one of off, dp, public, got 'always'"),
        ("eval-noise-multiplier", 0, "eval-noise-multiplier must be > 0, got 0.0"),
        ("sites", 0, "sites must be >= 1, got 0"),
        ("rounds", 0, "rounds must be in 1..10000, got 0"),
        ("budget-delta", 0.0, "budget-delta must be in (0, 1), got 0.0"),
        ("budget-delta", 1, "budget-delta must be in (0, 1), got 1.0"),
        ("noise-multiplier", -0.5, "noise-multiplier must be in [0, 10000] (0 = calibrate to the budget), got -0.5"),
        ("max-grad-norm", 0, "max-grad-norm must be in [1e-06, 1e+06], got 0.0"),
        # a server's bound near float32's subnormals: noise and clipped sums lose their analysis
        ("max-grad-norm", 1e-40, "max-grad-norm must be in [1e-06, 1e+06], got 1e-40"),
        ("test-fraction", 1.0, "test-fraction must be in (0, 1), got 1.0"),
        ("val-fraction", 0, "val-fraction must be in (0, 1), got 0.0"),
        ("alpha", -2, "alpha must be > 0, got -2.0"),
        ("min-site-records", 1, "min-site-records must be >= 2, got 1"),
        ("fraction-train", 0, "fraction-train must be in (0, 1], got 0.0"),
        ("fraction-evaluate", 1.5, "fraction-evaluate must be in [0, 1], or -1 (as fraction-train), got 1.5"),
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
        (
            "grad-sample-mode",
            "fast",
            "grad-sample-mode must be one of hooks, functorch, ew, bk, auto, got 'fast'",
        ),
        ("physical-batch-size", -1, "physical-batch-size must be >= 0 (0: no limit), got -1"),
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


def test_physical_batches_need_an_engine_that_clips_chunk_by_chunk():
    message = _config_error({"physical-batch-size": 16, "grad-sample-mode": "hooks"})
    assert message == (
        "my-source: physical-batch-size needs grad-sample-mode bk or auto (Opacus's hooks puts the whole "
        "sampled batch through at once), got 16"
    )


def test_direct_construction_message_has_no_source():
    with pytest.raises(ConfigError) as info:
        RunConfig(federation=FederationConfig(sites=0))
    assert str(info.value) == "sites must be >= 1, got 0"


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("key", ["alpha", "budget-epsilon", "job-epsilon", "learning-rate", "max-grad-norm"])
def test_non_finite_values_are_rejected(key, value):
    # inf passes the "> 0" checks: alpha=inf reaches the partitioner, which warns about an
    # invalid cast and then advises to "raise alpha"; epsilon=inf makes noise calibration hang.
    message = _config_error({key: value})
    assert message.startswith(f"my-source: {key} ")
    assert value in message


# ---- coercion and round trips -----------------------------------------------------------------


def test_strings_are_coerced_like_command_line_values():
    cfg = RunConfig.from_flat(
        {"sites": "7", "budget-epsilon": "2.5", "dp": "False", "hidden": [32, 16], "rounds": 3.0, "alpha": 2}
    )
    got = (cfg.federation.sites, cfg.policy.budget_epsilon, cfg.privacy.dp, cfg.model.hidden, cfg.federation.rounds)
    assert got == (7, 2.5, False, "32,16", 3) and cfg.data.alpha == 2.0
    assert isinstance(cfg.data.alpha, float) and isinstance(cfg.federation.rounds, int)
    assert cfg.model.hidden_layers == (32, 16)


def test_merged_keeps_earlier_values():
    base = RunConfig.from_flat({"sites": 3, "budget-epsilon": 4.0})
    merged = base.merged({"budget-epsilon": 2.0}, source="cli")
    assert merged.federation.sites == 3 and merged.policy.budget_epsilon == 2.0
    assert base.policy.budget_epsilon == 4.0


def test_derived_views():
    cfg = RunConfig.from_flat({"categorical-columns": " home, purpose ,", "channels": "8,16", "strategy": "fedprox"})
    assert cfg.data.categorical == ("home", "purpose")
    assert cfg.model.channel_layers == (8, 16)
    assert cfg.federation.strategy_kind is Strategy.FEDPROX


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
    "budget-epsilon": 8.0,
    "budget-delta": 1e-6,
    "job-epsilon": 2.0,
    "budget-epsilon-by-site": "site-1=0.5",
    "evaluation": "dp",
    "task": "binary-risk",
    "positive-label": "1",
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
    assert spec.kind is ModelKind(cfg.model.kind)
    assert spec.num_classes >= 2
    sites = site_partitions(cfg, cfg.federation.sites)
    assert len(sites) == cfg.federation.sites
    for site in sites:
        assert len(site.train) >= 1 and len(site.val) >= 1
        if spec.kind is ModelKind.TRANSFORMER:  # token ids, padded to the longest record up to max-length
            assert site.train.record_shape[0] <= spec.input_shape[0] == cfg.data.max_length
        else:
            assert site.train.record_shape == spec.input_shape
        assert site.train.num_classes == spec.num_classes
        assert len(site.train) + len(site.val) >= cfg.data.min_site_records


def test_scenario_by_path_and_errors(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('description = "x"\nsites = 2\nbudget-epsilon = 3.0\n', encoding="utf-8")
    cfg = scenarios.load_scenario(str(good))
    assert (cfg.scenario, cfg.federation.sites, cfg.policy.budget_epsilon) == ("mine", 2, 3.0)

    with pytest.raises(ConfigError, match=r"unknown scenario 'nope'; available: .*hospitals-tabular"):
        scenarios.load_scenario("nope")
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: scenario file not found")):
        scenarios.load_scenario(str(missing))
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("sites = = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{bad_toml}: not valid TOML")):
        scenarios.load_scenario(str(bad_toml))
    misplaced = tmp_path / "misplaced.toml"
    misplaced.write_text("[privacy]\nbudget-epsilon = 1.0\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=re.escape(f"{misplaced}: [privacy] budget-epsilon: budget-epsilon belongs in [policy]")
    ):
        scenarios.load_scenario(str(misplaced))
    table = tmp_path / "table.toml"
    table.write_text("[network]\nrounds = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{table}: unknown table [network]; the tables are data, model")):
        scenarios.load_scenario(str(table))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("epsilonn = 1.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{unknown}: unknown setting 'epsilonn'")):
        scenarios.load_scenario(str(unknown))


# ---- sections ---------------------------------------------------------------------------------


def test_sections_and_flat_keys_give_the_same_config(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text('sites = 2\nmodel = "cnn"\nbudget-epsilon = 3.0\nseed = 4\n', encoding="utf-8")
    sections = tmp_path / "sections.toml"
    sections.write_text(
        'seed = 4\n[federation]\nsites = 2\n[model]\nmodel = "cnn"\n[policy]\nbudget-epsilon = 3.0\n', encoding="utf-8"
    )
    a, b = scenarios.load_scenario(str(flat)), scenarios.load_scenario(str(sections))
    assert a.replace(scenario="x") == b.replace(scenario="x")
    assert (b.federation.sites, b.model.kind, b.policy.budget_epsilon, b.seed) == (2, "cnn", 3.0, 4)


def test_the_resolved_config_file_is_in_sections_and_loads_back(tmp_path):
    from server.report import write_config

    cfg = RunConfig.from_flat(NON_DEFAULT)
    path = write_config(tmp_path, cfg)
    written = tomllib.loads(path.read_text(encoding="utf-8"))
    assert written["policy"]["budget-epsilon"] == 8.0 and written["federation"]["sites"] == 3
    assert written["seed"] == 42 and "budget-epsilon" not in written
    assert scenarios.load_scenario(str(path)) == cfg


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("epsilon", "budget-epsilon"),
        ("delta", "budget-delta"),
        ("site-budgets", "budget-epsilon-by-site"),
        ("site-evaluation", "evaluation"),
    ],
)
def test_a_renamed_key_is_refused_with_its_new_name(old, new):
    assert _config_error({old: 1}).startswith(f"my-source: {old!r} is now {new}")


def test_one_name_for_the_budget_from_the_command_line_to_metrics_json():
    """The budget is budget-epsilon / budget-delta in every flat form (scenario files, CLI flags,
    a site's policy, reply records) and budget_epsilon / budget_delta in metrics.json."""
    from common import records as rk
    from common.privacy.policy import policy_keys
    from fedshield.cli import _FLAGS

    assert {"budget-epsilon", "budget-delta"} <= set(_FLAGS) & set(RunConfig().to_flat()) & policy_keys()
    assert (rk.BUDGET_EPSILON, rk.BUDGET_DELTA) == ("budget-epsilon", "budget-delta")
    assert not {"epsilon", "delta", "site-budgets"} & (set(_FLAGS) | set(RunConfig().to_flat()))


def test_the_policy_section_uses_the_site_policys_own_rules():
    """One rule, one place: a simulated site's budget is checked by SitePolicy itself, so the
    scenario and a deployed site's node config refuse the same values with the same words."""
    from common.privacy.policy import Origin, from_mapping

    for values in (
        {"budget-epsilon": 0.0},
        {"budget-epsilon": 1.0, "budget-delta": 2.0},
        {"budget-epsilon": 1.0, "val-fraction": 1.0},
    ):
        with pytest.raises(ConfigError) as deployed:
            from_mapping(values, source="node", secret=b"x" * 32, origin=Origin.NODE_CONFIG)
        assert str(deployed.value).removeprefix("node: ") == _config_error(values).removeprefix("my-source: ")


def test_a_per_site_budget_error_names_the_site():
    assert _config_error({"budget-epsilon-by-site": "site-1=0"}) == (
        "my-source: budget-epsilon-by-site: site-1: budget-epsilon must be in (0, 100], got 0.0"
    )
