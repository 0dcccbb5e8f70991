"""Where a job's records come from: one registry line per dataset kind, naming what it is,
whether it is the user's own records, whether it is a table, and the loader. ``--help``, the
config check and :func:`load_source` all read :data:`SOURCES`, so a listed kind is a kind that
loads.

Every loader preprocesses record by record with public parameters only (a feature schema's
bounds, a fixed pixel rule, a pretrained tokenizer); labels map to classes by ``class-names``
(or the schema's), never by the labels a file holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.config import RunConfig, TaskKind
from common.credit import synthetic_credit
from common.data.entities import ENTITY_TAGS, synthetic_entity_notes
from common.data.headlines import SENTIMENTS, synthetic_headlines
from common.data.labels import require_class_names
from common.data.schema import BUILTIN_SCHEMAS, TableSchema, load_schema
from common.data.tagged import TaggedTable, read_tagged, tokenize_tagged
from common.dataset import Dataset, Modality
from common.errors import ConfigError
from common.loaders import load_csv, load_image_folder, load_npz, load_sklearn
from common.models.transformer import load_tokenizer
from common.notes import DEPARTMENTS, synthetic_notes
from common.text_loaders import TextTable, read_text_table, text_dataset

# (pool, test): test is None when the source has no split of its own.
Loaded = tuple[Dataset, Dataset | None]


@dataclass(frozen=True)
class DataSource:
    summary: str
    load: Callable[[RunConfig, TableSchema | None], Loaded]
    modality: Modality
    user_data: bool = False  # the user's own records (data-path): split evenly unless asked
    table: bool = False  # a table: a feature-schema applies
    tagged: bool = False  # tagged words (one label per word): task token-classification
    classes: tuple[str, ...] = ()  # the documented classes of a built-in data set (else class-names)


def _sklearn(name: str) -> Callable[[RunConfig, TableSchema | None], Loaded]:
    return lambda cfg, schema: (load_sklearn(name, schema=schema, class_names=cfg.data.class_name_list), None)


def _credit(cfg: RunConfig, schema: TableSchema | None) -> Loaded:
    if cfg.data.class_name_list:
        raise ConfigError("synthetic:credit has the fixed classes of its schema: leave class-names unset")
    return synthetic_credit(cfg.data.synthetic_records, seed=cfg.seed, schema=schema), None


def _notes(cfg: RunConfig, schema: TableSchema | None) -> Loaded:
    return _tokenized(cfg, synthetic_notes(cfg.data.synthetic_records, seed=cfg.seed), classes=DEPARTMENTS), None


def _headlines(cfg: RunConfig, schema: TableSchema | None) -> Loaded:
    return _tokenized(cfg, synthetic_headlines(cfg.data.synthetic_records, seed=cfg.seed), classes=SENTIMENTS), None


def _entity_notes(cfg: RunConfig, schema: TableSchema | None) -> Loaded:
    table = synthetic_entity_notes(cfg.data.synthetic_records, seed=cfg.seed)
    return _tagged_dataset(cfg, table, cfg.data.class_name_list or ENTITY_TAGS), None


def _tagged_file(cfg: RunConfig, schema: TableSchema | None) -> Loaded:
    tags = require_class_names(cfg.data.class_name_list, source=cfg.data.data_path, kind="tagged file")
    return _tagged_dataset(cfg, read_tagged(cfg.data.data_path, tags=tags), tags), None


def _require_transformer(cfg: RunConfig) -> None:
    if cfg.model.kind != "transformer":
        raise ConfigError(
            f"dataset {cfg.data.dataset!r} holds text: it needs model 'transformer', not {cfg.model.kind!r}"
        )


def _tagged_dataset(cfg: RunConfig, table: TaggedTable, tags: tuple[str, ...]) -> Dataset:
    """Tagged words tokenized offline with the pretrained tokenizer; a word's tag on its first
    sub-word (common/data/tagged.py)."""
    _require_transformer(cfg)
    if cfg.task.kind != TaskKind.TOKEN_CLASSIFICATION:
        raise ConfigError(
            f"dataset {cfg.data.dataset!r} holds tagged words: "
            f"it needs task token-classification, not {cfg.task.kind!r}"
        )
    tokenizer = load_tokenizer(cfg.model.pretrained_path)
    return tokenize_tagged(table, tokenizer, max_length=cfg.data.max_length, tags=tags)


def _csv(cfg: RunConfig, schema: TableSchema | None) -> Loaded:
    if not cfg.data.label_column and not (schema and schema.label):
        raise ConfigError("dataset 'csv' needs label-column (--label-column) or a label in its feature-schema")
    table = load_csv(
        cfg.data.data_path,
        label_column=cfg.data.label_column,
        schema=schema,
        categorical_columns=cfg.data.categorical,
        class_names=cfg.data.class_name_list,
    )
    return table, None


def _npz(cfg: RunConfig, schema: TableSchema | None) -> Loaded:
    return load_npz(cfg.data.data_path, class_names=cfg.data.class_name_list)


def _image_folder(cfg: RunConfig, schema: TableSchema | None) -> Loaded:
    return load_image_folder(cfg.data.data_path, class_names=cfg.data.class_name_list), None


def _text(cfg: RunConfig, schema: TableSchema | None) -> Loaded:
    table = read_text_table(cfg.data.data_path, text_field=cfg.data.text_field, label_field=cfg.data.label_field)
    return _tokenized(cfg, table), None


def _tokenized(cfg: RunConfig, table: TextTable, classes: tuple[str, ...] = ()) -> Dataset:
    """Text tokenized offline with the (public, pretrained) tokenizer saved beside the
    transformer's weights; labels by class-names (a user's text file must give them)."""
    _require_transformer(cfg)
    if cfg.task.kind == TaskKind.TOKEN_CLASSIFICATION:
        tagged = ", ".join(name for name, s in SOURCES.items() if s.tagged)
        raise ConfigError(
            f"dataset {cfg.data.dataset!r} has one label per text; task token-classification needs tagged words "
            f"(dataset {tagged})"
        )
    classes = require_class_names(cfg.data.class_name_list or classes, source=table.source, kind="text file")
    return text_dataset(
        table, load_tokenizer(cfg.model.pretrained_path), max_length=cfg.data.max_length, classes=classes
    )


_T, _I, _X = Modality.TABULAR, Modality.IMAGE, Modality.TEXT
SOURCES: dict[str, DataSource] = {
    "sklearn:breast_cancer": DataSource(
        "scikit-learn's breast cancer table (569 x 30)", _sklearn("breast_cancer"), _T, table=True
    ),
    "sklearn:digits": DataSource(
        "scikit-learn's digits (1797 8x8 images)", _sklearn("digits"), _I, classes=tuple(str(d) for d in range(10))
    ),
    "synthetic:credit": DataSource("generated credit applications (common/credit.py)", _credit, _T, table=True),
    "synthetic:notes": DataSource("generated clinical notes (common/notes.py)", _notes, _X, classes=DEPARTMENTS),
    "synthetic:entity-notes": DataSource(
        "generated medication notes, tagged DRUG / DOSE / CONDITION (common/data/entities.py)",
        _entity_notes,
        _X,
        tagged=True,
        classes=ENTITY_TAGS,
    ),
    "synthetic:headlines": DataSource(
        "generated financial headlines with their sentiment (common/data/headlines.py)",
        _headlines,
        _X,
        classes=SENTIMENTS,
    ),
    "csv": DataSource("your CSV table (--data-path, --label-column)", _csv, _T, user_data=True, table=True),
    "npz": DataSource("your NumPy archive (train/val/test _images, _labels)", _npz, _I, user_data=True),
    "image-folder": DataSource("your images, one folder per class", _image_folder, _I, user_data=True),
    "text": DataSource("your texts, CSV or JSONL (text-field, label-field)", _text, _X, user_data=True),
    "tagged": DataSource(
        "your tagged words, CoNLL or JSONL tokens/tags (class-names: the tag set)",
        _tagged_file,
        _X,
        user_data=True,
        tagged=True,
    ),
}


def source(cfg: RunConfig) -> DataSource:
    try:
        return SOURCES[cfg.data.dataset]
    except KeyError:
        raise ConfigError(f"dataset must be one of {', '.join(SOURCES)}, got {cfg.data.dataset!r}") from None


def table_schema(cfg: RunConfig) -> TableSchema | None:
    """The table's public schema: ``feature-schema`` (a path), else the one shipped with a
    built-in data set, else None (a user's table then fails closed when loaded)."""
    tables = ", ".join(name for name, s in SOURCES.items() if s.table)
    if cfg.data.feature_schema and not source(cfg).table:
        raise ConfigError(
            f"feature-schema applies to tables ({tables}), not dataset {cfg.data.dataset!r}: "
            "its preprocessing is already fixed and public"
        )
    if cfg.data.feature_schema:
        return load_schema(cfg.data.feature_schema)
    builtin = BUILTIN_SCHEMAS.get(cfg.data.dataset)
    return load_schema(builtin) if builtin else None


def load_source(cfg: RunConfig) -> Loaded:
    """The configured data as (pool, test); ``test`` is None when the source has no split.
    Already preprocessed, record by record, with public parameters only."""
    entry = source(cfg)
    schema = table_schema(cfg)
    if entry.user_data and not cfg.data.data_path:
        raise ConfigError(f"dataset {cfg.data.dataset!r} needs data-path (--data-path)")
    return entry.load(cfg, schema)
