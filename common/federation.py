"""From a run config to data: the global test set, and each site's train/validation split.

Order matters for honesty: the global test set is held out first (stratified), then the
remaining pool is partitioned into sites, then each site splits its own records into train
and validation. Each party (every site, and the server for the test set) standardises its
own tabular features with statistics fitted on its own records only.

The same config and site count always give the same sites (everything is seeded), so every
simulated site can rebuild its own partition without any data crossing processes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from common.config import RunConfig
from common.credit import synthetic_credit
from common.dataset import Dataset, Modality, stratified_split
from common.errors import ConfigError, DataError
from common.loaders import load_csv, load_image_folder, load_npz, load_sklearn
from common.models import ModelKind, ModelSpec
from common.notes import DEPARTMENTS, synthetic_notes
from common.partition import PartitionKind, PartitionSpec, partition
from common.scaling import StandardScaler
from common.text_loaders import TextTable, read_text_table, text_dataset
from common.transformer import LoraSpec, load_tokenizer


@dataclass(frozen=True)
class SiteData:
    site_id: int
    train: Dataset
    val: Dataset


def load_source(cfg: RunConfig) -> tuple[Dataset, Dataset | None]:
    """The configured data as (pool, test); ``test`` is None when the source has no split."""
    kind, _, name = cfg.dataset.partition(":")
    if kind == "sklearn":
        return load_sklearn(name), None
    if cfg.dataset == "synthetic:credit":
        return synthetic_credit(cfg.synthetic_records, seed=cfg.seed), None
    if cfg.dataset == "synthetic:notes":
        table = synthetic_notes(cfg.synthetic_records, seed=cfg.seed)
        return _tokenized(cfg, table, classes=DEPARTMENTS), None
    if cfg.dataset in {"csv", "npz", "image-folder", "text"} and not cfg.data_path:
        raise ConfigError(f"dataset {cfg.dataset!r} needs data-path (--data-path)")
    if cfg.dataset == "csv":
        if not cfg.label_column:
            raise ConfigError("dataset 'csv' needs label-column (--label-column)")
        return load_csv(cfg.data_path, label_column=cfg.label_column, categorical_columns=cfg.categorical), None
    if cfg.dataset == "npz":
        return load_npz(cfg.data_path)
    if cfg.dataset == "image-folder":
        return load_image_folder(cfg.data_path), None
    if cfg.dataset == "text":
        table = read_text_table(cfg.data_path, text_field=cfg.text_field, label_field=cfg.label_field)
        return _tokenized(cfg, table), None
    raise ConfigError(
        f"dataset must be one of sklearn:breast_cancer, sklearn:digits, synthetic:credit, synthetic:notes, csv, "
        f"npz, image-folder, text, got {cfg.dataset!r}"
    )


def _tokenized(cfg: RunConfig, table: TextTable, classes: tuple[str, ...] | None = None) -> Dataset:
    """Text tokenized offline with the tokenizer saved beside the transformer's weights."""
    if cfg.model != "transformer":
        raise ConfigError(f"dataset {cfg.dataset!r} holds text: it needs model 'transformer', not {cfg.model!r}")
    classes = cfg.class_name_list or classes
    return text_dataset(table, load_tokenizer(cfg.pretrained_path), max_length=cfg.max_length, classes=classes)


@functools.lru_cache(maxsize=8)
def pool_and_test(cfg: RunConfig) -> tuple[Dataset, Dataset]:
    """(pool shared out to sites, global test set before scaling)."""
    pool, test = load_source(cfg)
    if test is None:
        rest, held = stratified_split(pool.y, cfg.test_fraction, seed=cfg.seed)
        pool, test = pool.subset(rest), pool.subset(held)
    if len(test) == 0:
        raise DataError(f"{pool.source}: the test split is empty; use more records or a larger test-fraction")
    return pool, test


_MODEL_FOR = {Modality.TABULAR: "mlp", Modality.IMAGE: "cnn or resnet", Modality.TEXT: "transformer"}
_MODALITY_OF = {
    ModelKind.MLP: Modality.TABULAR,
    ModelKind.CNN: Modality.IMAGE,
    ModelKind.RESNET: Modality.IMAGE,
    ModelKind.TRANSFORMER: Modality.TEXT,
}


def model_spec(cfg: RunConfig) -> ModelSpec:
    kind = ModelKind(cfg.model)
    text = kind is ModelKind.TRANSFORMER
    stated_classes = cfg.num_classes or len(cfg.class_name_list)
    if stated_classes and (cfg.input_shape or text):  # stated in the config: no data needed (a deployed server)
        shape, classes, source = cfg.record_shape, stated_classes, "input-shape"
        modality = Modality.TEXT if text else Modality.IMAGE if len(shape) == 3 else Modality.TABULAR
    else:
        pool, _ = pool_and_test(cfg)
        shape, classes, source, modality = pool.record_shape, pool.num_classes, pool.source, pool.modality
    if _MODALITY_OF[kind] is not modality:
        raise ConfigError(
            f"model {kind.value!r} needs {_MODALITY_OF[kind]} data, but {source} holds {modality} "
            f"records; use model {_MODEL_FOR[modality]}"
        )
    if text:
        shape = (cfg.max_length,)  # the records' own padded length does not shape the model
    lora = LoraSpec(cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_names) if cfg.finetune == "lora" else None
    try:
        return ModelSpec(
            kind,
            shape,
            classes,
            cfg.hidden_layers,
            cfg.channel_layers,
            width=cfg.resnet_width,
            pretrained_path=cfg.pretrained_path,
            random_init=cfg.random_init,
            lora=lora,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _scaled(train: Dataset, *others: Dataset) -> list[Dataset]:
    if train.modality is not Modality.TABULAR:
        return [train, *others]  # images are already in [0, 1]: no fitted statistics
    scaler = StandardScaler.fit(train.x)
    return [d.with_features(scaler.transform(d.x)) for d in (train, *others)]


def server_test_set(cfg: RunConfig) -> Dataset:
    """The server's own held-out test set, standardised with its own statistics."""
    _, test = pool_and_test(cfg)
    return _scaled(test)[0]


@functools.lru_cache(maxsize=8)
def site_partitions(cfg: RunConfig, num_sites: int) -> tuple[SiteData, ...]:
    """Every site's data for a federation of ``num_sites`` sites."""
    pool, _ = pool_and_test(cfg)
    spec = PartitionSpec(PartitionKind(cfg.partition), num_sites, cfg.alpha, cfg.min_site_records)
    sites = []
    for site_id, idx in enumerate(partition(pool.y, spec, seed=cfg.seed)):
        local = pool.subset(idx)
        train_idx, val_idx = _site_split(local, cfg, site_id)
        train, val = _scaled(local.subset(train_idx), local.subset(val_idx))
        sites.append(SiteData(site_id, train, val))
    return tuple(sites)


def _site_split(local: Dataset, cfg: RunConfig, site_id: int):
    import numpy as np

    rng = np.random.default_rng([cfg.seed, site_id])
    order = rng.permutation(len(local))
    n_val = max(1, int(round(cfg.val_fraction * len(local))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@functools.lru_cache(maxsize=4)
def local_site_data(cfg: RunConfig, data_path: str, site_id: int = 0) -> SiteData:
    """A deployed site's own data file (node config ``data-path``), in the format the job names
    (csv / npz / image-folder): all of it is the site's, split into train and validation."""
    local, test = load_source(cfg.replace(data_path=data_path))
    if test is not None:  # an npz with a test split: the site keeps it for validation too
        local = Dataset(
            np.concatenate([local.x, test.x]),
            np.concatenate([local.y, test.y]),
            local.num_classes,
            local.modality,
            local.source,
        )
    if len(local) < cfg.min_site_records:
        raise DataError(f"{data_path}: {len(local)} records, fewer than min-site-records={cfg.min_site_records}")
    train_idx, val_idx = _site_split(local, cfg, site_id)
    train, val = _scaled(local.subset(train_idx), local.subset(val_idx))
    return SiteData(site_id, train, val)


def site_data(cfg: RunConfig, site_id: int, num_sites: int) -> SiteData:
    if not 0 <= site_id < num_sites:
        raise ConfigError(f"site id must be in [0, {num_sites}), got {site_id}")
    return site_partitions(cfg, num_sites)[site_id]
