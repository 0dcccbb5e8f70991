"""From a run config to data: the global test set, and each site's train/validation split.

Order matters for honesty: the global test set is held out first (stratified), then the
remaining pool is partitioned into sites, then each site splits its own records into train
and validation.

Preprocessing never depends on the records (that would void DP: one record more or less would
change every record's inputs). Tables are clipped and scaled with the public bounds of a
feature schema (``feature-schema``; the shipped data sets ship theirs), images by a fixed
pixel rule, texts by a pretrained tokenizer; labels map to classes by ``class-names`` (or the
schema's), never by the labels a file holds. The same transform runs at every site and at the
server, so the server's test set needs no statistics either.

The split into training and validation records is the site's own: its policy's val-fraction
and split seed, given by the caller, never the server's ``seed``/``val-fraction``. The test
split and the partition across simulated sites are the simulation's "world", seeded by
``seed``, so every simulated site can rebuild its own partition without data crossing
processes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

import numpy as np

from common.config import RunConfig, TaskKind
from common.data.sources import load_source, source, table_schema
from common.dataset import Dataset, Modality, stratified_split
from common.errors import ConfigError, DataError
from common.models import MODEL_FAMILIES, ModelKind, ModelSpec
from common.models.transformer import LoraSpec
from common.partition import PartitionKind, PartitionSpec, partition
from common.tasks import TASKS, Task, task_for


@dataclass(frozen=True)
class SiteData:
    site_id: int
    train: Dataset
    val: Dataset


@functools.lru_cache(maxsize=8)
def pool_and_test(cfg: RunConfig) -> tuple[Dataset, Dataset]:
    """(pool shared out to sites, global test set), both preprocessed with public parameters."""
    pool, test = load_source(cfg)
    if test is None:
        rest, held = stratified_split(pool.record_labels, cfg.data.test_fraction, seed=cfg.seed)
        pool, test = pool.subset(rest), pool.subset(held)
    if len(test) == 0:
        raise DataError(f"{pool.source}: the test split is empty; use more records or a larger test-fraction")
    return pool, test


def class_names(cfg: RunConfig) -> tuple[str, ...]:
    """The job's classes in label order, as far as the config and the public schema name them
    (``()`` when only the data would say, e.g. an npz without class-names)."""
    if cfg.data.class_name_list:
        return cfg.data.class_name_list
    schema = table_schema(cfg)
    return schema.class_names if schema is not None and schema.class_names else source(cfg).classes


def job_task(cfg: RunConfig) -> Task:
    """The job's task (:mod:`common.tasks`), with the positive class of binary-risk resolved
    against the job's class names."""
    return task_for(cfg, class_names(cfg))


def model_spec(cfg: RunConfig) -> ModelSpec:
    kind = ModelKind(cfg.model.kind)
    text = kind is ModelKind.TRANSFORMER
    stated_classes = cfg.model.num_classes or len(cfg.data.class_name_list)
    if stated_classes and (cfg.model.input_shape or text):  # stated in the config: no data needed (a deployed server)
        shape, classes, source = cfg.model.record_shape, stated_classes, "input-shape"
        modality = Modality.TEXT if text else Modality.IMAGE if len(shape) == 3 else Modality.TABULAR
    else:
        pool, _ = pool_and_test(cfg)
        shape, classes, source, modality = pool.record_shape, pool.num_classes, pool.source, pool.modality
    needs = MODEL_FAMILIES[kind].modality
    if needs is not modality:
        fits = " or ".join(k.value for k, f in MODEL_FAMILIES.items() if f.modality is modality)
        raise ConfigError(
            f"model {kind.value!r} needs {needs} data, but {source} holds {modality} records; use model {fits}"
        )
    if text:
        shape = (cfg.data.max_length,)  # the records' own padded length does not shape the model
    lora = (
        LoraSpec(cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.lora_target_names)
        if cfg.model.finetune == "lora"
        else None
    )
    try:
        return ModelSpec(
            kind,
            shape,
            classes,
            cfg.model.hidden_layers,
            cfg.model.channel_layers,
            width=cfg.model.resnet_width,
            pretrained_path=cfg.model.pretrained_path,
            random_init=cfg.model.random_init,
            lora=lora,
            per_token=TASKS[TaskKind(cfg.task.kind)].per_token,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def server_test_set(cfg: RunConfig) -> Dataset:
    """The server's own held-out test set, preprocessed by the same public transform as the
    sites' records (no statistics of its own)."""
    _, test = pool_and_test(cfg)
    return test


# The split a caller gets when it gives none (the harness's input check, tests): fixed, and
# independent of the server's settings. A site's policy gives its own.
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0


def split_records(local: Dataset, *, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of ``local``, from the site's own split spec only.

    Each record is assigned by itself: to validation iff HMAC-SHA256(seed, the record's bytes)
    falls below ``val_fraction``. Adding or removing one record therefore moves no other
    record across the split, so neighbouring datasets stay neighbours (add/remove-one) in
    their training part too; a permutation of all records would reshuffle them. The same
    spec and records always give the same split, in every job. Only when the hash puts every
    record on one side does the record nearest the threshold cross over.
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val-fraction must be in (0, 1), got {val_fraction!r}")
    n = len(local)
    if n < 2:
        raise DataError(f"{n} records cannot be split into training and validation records")
    key = int(split_seed).to_bytes(16, "big", signed=True)
    u = _keyed_hashes(key, np.ascontiguousarray(local.x), np.ascontiguousarray(local.y)) / 2**64
    is_val = u < val_fraction
    if is_val.all():
        is_val[np.argmax(u)] = False  # a site keeps at least one training record
    elif not is_val.any():
        is_val[np.argmin(u)] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _keyed_hashes(key: bytes, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The first 8 bytes (big-endian, as float64) of HMAC-SHA256(``key``, ``x[i]`` bytes +
    ``y[i]`` bytes) for every record ``i``: one keyed HMAC object copied per record (the bytes
    ``hmac.new(key, msg, sha256)`` gives, in about half its time: it pads and hashes the key
    again for every record, 7 ms for 1,500 records here, paid by every process that splits a
    site's data). Records are read through byte views of the C-contiguous arrays (no copy of
    the dataset); other dtypes (non-native byte order, strings, objects: ``x[i].tobytes()`` is
    then not a slice of the array's bytes) take ``hmac.new`` per record."""
    if not all(a.flags.c_contiguous and a.dtype.isnative and a.dtype.kind in "biuf" for a in (x, y)):
        return np.array(
            [int.from_bytes(hmac.new(key, x[i].tobytes() + y[i].tobytes(), hashlib.sha256).digest()[:8], "big")
             for i in range(len(x))],
            dtype=np.float64,
        )  # fmt: skip
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    xb, yb = memoryview(x.reshape(-1).view(np.uint8)), memoryview(y.reshape(-1).view(np.uint8))
    sx, sy = (x.nbytes // len(x), y.nbytes // len(y)) if len(x) else (0, 0)
    out = np.empty(len(x), dtype=np.float64)
    for i in range(len(x)):
        h = keyed.copy()
        h.update(xb[i * sx : (i + 1) * sx])
        h.update(yb[i * sy : (i + 1) * sy])
        out[i] = int.from_bytes(h.digest()[:8], "big")
    return out


def _split(site_id: int, local: Dataset, val_fraction: float, split_seed: int) -> SiteData:
    train_idx, val_idx = split_records(local, val_fraction=val_fraction, split_seed=split_seed)
    return SiteData(site_id, local.subset(train_idx), local.subset(val_idx))


@functools.lru_cache(maxsize=8)
def _site_records(cfg: RunConfig, num_sites: int) -> tuple[Dataset, ...]:
    """Each simulated site's records: the pool partitioned by the scenario's seed (the world)."""
    pool, _ = pool_and_test(cfg)
    spec = PartitionSpec(PartitionKind(cfg.data.partition), num_sites, cfg.data.alpha, cfg.data.min_site_records)
    return tuple(pool.subset(idx) for idx in partition(pool.record_labels, spec, seed=cfg.seed))


def site_partitions(
    cfg: RunConfig,
    num_sites: int,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    split_seed: int = DEFAULT_SPLIT_SEED,
) -> tuple[SiteData, ...]:
    """Every site's data for a federation of ``num_sites`` sites, each split with the same
    given spec (a fixed one by default; a simulated site's own comes via :func:`site_data`)."""
    return tuple(
        _split(site_id, local, val_fraction, split_seed) for site_id, local in enumerate(_site_records(cfg, num_sites))
    )


@functools.lru_cache(maxsize=2048)
def site_data(cfg: RunConfig, site_id: int, num_sites: int, *, val_fraction: float, split_seed: int) -> SiteData:
    """A simulated site's records (its part of the scenario's world), split by the site's own
    spec (its policy's val-fraction and split seed); kept for the site's later rounds in this
    process (the split hashes every record)."""
    if not 0 <= site_id < num_sites:
        raise ConfigError(f"site id must be in [0, {num_sites}), got {site_id}")
    return _split(site_id, _site_records(cfg, num_sites)[site_id], val_fraction, split_seed)


@functools.lru_cache(maxsize=4)
def local_site_data(
    cfg: RunConfig,
    data_path: str,
    *,
    val_fraction: float,
    split_seed: int,
    class_names: tuple[str, ...],
    feature_schema: str,
    site_id: int = 0,
) -> SiteData:
    """A deployed site's own data file (node config ``data-path``), in the format the job names
    (csv / npz / image-folder / text): all of it is the site's, split into train and validation
    by the site's spec. ``class_names`` and ``feature_schema`` are the site's policy's; the
    job's own class-names, when set, must agree (the model's head is built from them)."""
    classes = tuple(c.strip() for c in class_names)
    if cfg.data.class_name_list and classes and cfg.data.class_name_list != classes:
        raise ConfigError(
            f"the job's class-names {', '.join(cfg.data.class_name_list)} differ from this site's "
            f"class-names {', '.join(classes)}"
        )
    site_cfg = cfg.replace(data_path=data_path, class_names=",".join(classes), feature_schema=feature_schema)
    local, test = load_source(site_cfg)
    if test is not None:  # an npz with a test split: the site keeps it for validation too
        local = Dataset(
            np.concatenate([local.x, test.x]),
            np.concatenate([local.y, test.y]),
            local.num_classes,
            local.modality,
            local.source,
        )
    if len(local) < cfg.data.min_site_records:
        raise DataError(f"{data_path}: {len(local)} records, fewer than min-site-records={cfg.data.min_site_records}")
    return _split(site_id, local, val_fraction, split_seed)
