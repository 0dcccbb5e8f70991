"""A table's public schema: the bounds, categories and classes that preprocessing may use.

Why: standardising features with a scaler fitted on a site's records, or one-hot encoding the
categories a file happens to hold, makes the preprocessing of *every* record depend on every
other record. Two neighbouring datasets (one record added or removed) then give different
inputs for all records, and the DP-SGD guarantee no longer covers the released model. With a
schema the transform of a record depends on that record and on public numbers only; it is the
same at every site and at the server.

The format is TOML (``python -m common.data.schema FILE.csv LABEL`` writes a template from
the CSV's header row only, never its values)::

    # where each bound comes from (a published range, a domain limit, a regulation ...)
    label = "default"                  # the label column (CSV)
    class-names = ["0", "1"]           # label values, in class order

    [[feature]]                        # one table per feature column, in model-input order
    name = "income"
    lo = 0.0                           # public bounds: values outside are clipped to them
    hi = 300.0
    transform = "log"                  # optional: "linear" (default) or "log"
    center = 3.8                       # optional, with scale: a documented population mean and
    scale = 0.5                        #   spread (on the transformed axis): (t(v) - center) / scale

    [[feature]]
    name = "home"
    categories = ["own", "mortgage", "rent"]   # one-hot, in this order

Numeric feature ``v`` becomes ``2 * (t(clip(v, lo, hi)) - t(lo)) / (t(hi) - t(lo)) - 1`` in
[-1, 1], with ``t(v) = v`` ("linear") or ``t(v) = log v`` ("log", for positive measurements
spanning a wide range, such as sizes or incomes; needs lo > 0), or, when the schema gives a
public ``center`` and ``scale`` (a published population mean and standard deviation, never
the records'), ``(t(clip(v, lo, hi)) - center) / scale``. A categorical feature
becomes a one-hot block over its declared categories; a value outside them is an error,
never a new category. Every error is one line naming the schema file, the feature and the
value.

Images need no schema: pixels are scaled by a fixed rule (8-bit / 255, digits' 4-bit / 16;
float images must already lie in [0, 1]), and texts go through a pretrained, public
tokenizer; both are data-independent.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from common.data.labels import class_indices
from common.errors import DataError

SCHEMA_DIR = Path(__file__).parent / "schemas"
# The shipped data sets' public schemas, used when the config names none.
BUILTIN_SCHEMAS = {
    "sklearn:breast_cancer": SCHEMA_DIR / "breast_cancer.toml",
    "synthetic:credit": SCHEMA_DIR / "credit.toml",
}


class Transform(StrEnum):
    LINEAR = "linear"
    LOG = "log"


@dataclass(frozen=True)
class NumericFeature:
    name: str
    lo: float
    hi: float
    transform: Transform = Transform.LINEAR
    # Public standardisation (a documented population mean and spread, on the transformed
    # axis), used instead of the [-1, 1] map when given: never fitted on the records.
    center: float | None = None
    spread: float | None = None

    @property
    def width(self) -> int:
        return 1

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Clip to the public bounds, then map [lo, hi] (or [log lo, log hi]) onto [-1, 1], or
        standardise with the public ``center`` and ``scale``: depends on the record and the
        schema only."""
        v = np.clip(np.asarray(values, dtype=np.float64), self.lo, self.hi)
        lo, hi = self.lo, self.hi
        if self.transform is Transform.LOG:
            v, lo, hi = np.log(v), math.log(lo), math.log(hi)
        if self.center is not None and self.spread is not None:
            return (v - self.center) / self.spread
        return 2.0 * (v - lo) / (hi - lo) - 1.0


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    categories: tuple[str, ...]

    @property
    def width(self) -> int:
        return len(self.categories)


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True)
class RawTable:
    """A table's cells after per-cell checks, before any preprocessing: numeric columns as
    floats, categorical ones as text, labels as text, and the file line of every record."""

    source: str
    lines: tuple[int, ...]
    labels: tuple[str, ...]
    label_column: str
    numeric: Mapping[str, np.ndarray] = field(default_factory=dict)
    categorical: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


@dataclass(frozen=True)
class TableSchema:
    """A parsed, validated schema (see the module docstring for the file format)."""

    source: str
    features: tuple[Feature, ...]
    label: str = ""
    class_names: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def categorical_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if isinstance(f, CategoricalFeature))

    @property
    def width(self) -> int:
        """Length of one preprocessed feature vector."""
        return sum(f.width for f in self.features)

    def features_of(self, table: RawTable) -> np.ndarray:
        """The table's model inputs (float32, shape (N, width)), in schema order."""
        known = set(self.names)
        for col in table.columns:
            if col not in known:
                raise DataError(
                    f"{table.source}: column {col!r} is not in the feature schema {self.source}; "
                    "add it there with public bounds (or categories), or drop the column"
                )
        blocks = []
        for feat in self.features:
            if isinstance(feat, NumericFeature):
                if feat.name in table.categorical:
                    raise DataError(
                        f"{table.source}: column {feat.name!r} is numeric in the feature schema {self.source}, "
                        "not categorical; remove it from categorical-columns"
                    )
                if feat.name not in table.numeric:
                    raise self._missing(table, feat.name)
                blocks.append(feat.scale(table.numeric[feat.name])[:, None])
            else:
                cells = table.categorical.get(feat.name)
                if cells is None:
                    if feat.name in table.numeric:  # read as numbers: categories may be numeric codes
                        cells = tuple(_number_text(v) for v in table.numeric[feat.name])
                    else:
                        raise self._missing(table, feat.name)
                index = {c: i for i, c in enumerate(feat.categories)}
                onehot = np.zeros((len(cells), feat.width))
                for r, value in enumerate(cells):
                    k = index.get(value)
                    if k is None:
                        raise DataError(
                            f"{table.source}: line {table.lines[r]}, column {feat.name!r}: category {value!r} "
                            f"is not one of {', '.join(feat.categories)} (feature schema {self.source})"
                        )
                    onehot[r, k] = 1.0
                blocks.append(onehot)
        if not blocks:
            return np.zeros((len(table.labels), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def labels_of(self, table: RawTable, class_names: Sequence[str] = ()) -> tuple[np.ndarray, int]:
        """Class indices by ``class_names`` (the site's), else the schema's ``class-names``."""
        names = resolve_class_names(class_names, self)
        if not names:
            raise DataError(
                f"{table.source}: no class-names: list the labels in class order in the feature schema "
                f"{self.source} (class-names = [...]) or in the site's class-names"
            )
        where = [f"line {line}, column {table.label_column!r}" for line in table.lines]
        return class_indices(table.labels, names, source=table.source, where=where), len(names)

    def _missing(self, table: RawTable, name: str) -> DataError:
        return DataError(f"{table.source}: no column {name!r}, which the feature schema {self.source} lists")


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def resolve_class_names(given: Sequence[str], schema: TableSchema | None) -> tuple[str, ...]:
    """The site's class names, or the schema's; both given must agree (same labels, same order)."""
    given = tuple(str(c).strip() for c in given)
    declared = schema.class_names if schema is not None else ()
    if given and declared and given != declared:
        raise DataError(
            f"class-names {', '.join(given)} differ from the class-names {', '.join(declared)} "
            f"of the feature schema {schema.source if schema else ''}"
        )
    return given or declared


# ---- reading a schema file -------------------------------------------------------------------

_TOP_KEYS = {"label", "class-names", "feature", "description"}
_FEATURE_KEYS = {"name", "lo", "hi", "transform", "center", "scale", "categories", "source", "note"}


def load_schema(path: str | Path) -> TableSchema:
    """Read and validate a schema file; every problem is one :class:`DataError` line naming the
    file, the feature and the value. A file read before and unchanged since (same size and
    modification time) is not parsed again: a site reads its schema every round."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return _parse_schema(path, None)  # the parser names the problem
    return _parse_schema(path, (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _parse_schema(path: Path, version: tuple[int, int] | None) -> TableSchema:
    src = str(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise DataError(f"{src}: feature schema not found") from None
    except IsADirectoryError:
        raise DataError(f"{src}: expected a feature schema file (TOML), found a directory") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"{src}: not a readable TOML feature schema ({exc})") from None
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise DataError(f"{src}: unknown key {unknown[0]!r}; a schema has {', '.join(sorted(_TOP_KEYS))}")
    label = raw.get("label", "")
    if not isinstance(label, str):
        raise DataError(f"{src}: label must be a column name (text), got {label!r}")
    class_names = _class_names(raw.get("class-names", []), src)
    entries = raw.get("feature")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{src}: no features: list each feature column in a [[feature]] table")
    features: list[Feature] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        feat = _feature(entry, src, i)
        if feat.name in seen:
            raise DataError(f"{src}: feature {feat.name!r} is listed twice")
        if feat.name == label.strip() and label.strip():
            raise DataError(f"{src}: feature {feat.name!r} is also the label")
        seen.add(feat.name)
        features.append(feat)
    return TableSchema(src, tuple(features), label.strip(), class_names)


def _class_names(value: Any, src: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        raise DataError(f'{src}: class-names must be a list of labels, e.g. ["benign", "malignant"], got {value!r}')
    names = tuple(str(v).strip() for v in value)
    if names and (len(names) < 2 or len(set(names)) != len(names) or "" in names):
        raise DataError(f"{src}: class-names must list at least 2 distinct non-empty labels, got {list(names)}")
    return names


def _feature(entry: Any, src: str, i: int) -> Feature:
    if not isinstance(entry, dict):
        raise DataError(f"{src}: feature #{i} must be a [[feature]] table, got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f'{src}: feature #{i} has no name (name = "column")')
    name = name.strip()
    unknown = sorted(set(entry) - _FEATURE_KEYS)
    if unknown:
        raise DataError(
            f"{src}: feature {name!r}: unknown key {unknown[0]!r}; known: {', '.join(sorted(_FEATURE_KEYS))}"
        )
    has_bounds = "lo" in entry or "hi" in entry
    if "categories" in entry:
        if has_bounds or "transform" in entry:
            raise DataError(f"{src}: feature {name!r}: give either categories or lo/hi bounds, not both")
        cats = entry["categories"]
        if (
            not isinstance(cats, list)
            or not cats
            or not all(isinstance(c, str | int) and not isinstance(c, bool) for c in cats)
        ):
            raise DataError(f"{src}: feature {name!r}: categories must be a non-empty list, got {cats!r}")
        values = tuple(str(c).strip() for c in cats)
        if len(set(values)) != len(values) or "" in values:
            raise DataError(f"{src}: feature {name!r}: categories must be distinct and non-empty, got {list(values)}")
        return CategoricalFeature(name, values)
    if not has_bounds:
        raise DataError(f"{src}: feature {name!r}: needs public bounds lo and hi (or categories)")
    lo, hi = (_bound(entry, key, name, src) for key in ("lo", "hi"))
    if not lo < hi:
        raise DataError(f"{src}: feature {name!r}: lo must be < hi, got lo = {lo:g}, hi = {hi:g}")
    try:
        transform = Transform(entry.get("transform", Transform.LINEAR.value))
    except ValueError:
        raise DataError(
            f"{src}: feature {name!r}: transform must be linear or log, got {entry['transform']!r}"
        ) from None
    if transform is Transform.LOG and lo <= 0:
        raise DataError(f"{src}: feature {name!r}: transform log needs lo > 0, got lo = {lo:g}")
    if ("center" in entry) != ("scale" in entry):
        raise DataError(f"{src}: feature {name!r}: center and scale go together (public standardisation)")
    center = spread = None
    if "center" in entry:
        center, spread = (_bound(entry, key, name, src) for key in ("center", "scale"))
        if not spread > 0:
            raise DataError(f"{src}: feature {name!r}: scale must be > 0, got {spread:g}")
    return NumericFeature(name, lo, hi, transform, center, spread)


def _bound(entry: Mapping[str, Any], key: str, name: str, src: str) -> float:
    if key not in entry:
        raise DataError(f"{src}: feature {name!r}: no {key} (public bounds need both lo and hi)")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{src}: feature {name!r}: {key} must be a number, got {value!r}")
    if math.isnan(value):
        raise DataError(
            f"{src}: feature {name!r}: {key} is not filled in (nan); write the public bound, "
            "not the records' own extreme"
        )
    if not math.isfinite(value):
        raise DataError(f"{src}: feature {name!r}: {key} must be finite, got {value!r}")
    return float(value)


# ---- a template for the operator ---------------------------------------------------------------


def schema_template(csv_path: str | Path, label_column: str = "") -> str:
    """A schema template for a CSV file, from its header row only (no value is read): every
    column but the label gets ``lo = nan``/``hi = nan``, which :func:`load_schema` refuses until
    the operator writes public bounds (or replaces them by ``categories``)."""
    path = Path(csv_path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = [h.strip() for h in next(csv.reader(fh), [])]
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({exc})") from None
    if not header:
        raise DataError(f"{path}: file is empty (no header row)")
    if label_column and label_column not in header:
        raise DataError(f"{path}: label column {label_column!r} not found; columns are {', '.join(header)}")
    out = [
        f"# Feature schema for the columns of {path.name} (written from its header row only).",
        "# Fill in PUBLIC bounds for every numeric column (a published range, a physical or",
        "# regulatory limit), never the minimum/maximum of your records; say here where each",
        '# comes from. For a categorical column replace lo/hi by categories = ["a", "b", ...].',
        f"label = {json.dumps(label_column)}",
        'class-names = []  # the label values in class order, e.g. ["no", "yes"]',
    ]
    for col in header:
        if col == label_column:
            continue
        out += ["", "[[feature]]", f"name = {json.dumps(col)}", "lo = nan", "hi = nan"]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m common.data.schema FILE.csv [LABEL_COLUMN]``: print a schema template."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2 or args[0].startswith("-"):
        print("usage: python -m common.data.schema FILE.csv [LABEL_COLUMN] > schema.toml", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(schema_template(args[0], args[1] if len(args) > 1 else ""))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
