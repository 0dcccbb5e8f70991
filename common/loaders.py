"""Data loaders: CSV tables, `.npz` arrays (MedMNIST layout), image folders, shipped sets.

Every loader raises :class:`DataError` with a one-line message naming the file, column,
row or value at fault. No loader downloads anything.
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from common.data.labels import class_indices, require_class_names
from common.data.schema import BUILTIN_SCHEMAS, RawTable, TableSchema, load_schema
from common.dataset import Dataset, Modality
from common.errors import DataError

_MISSING = {"na", "n/a", "null", "none"}  # "nan" in a feature is reported as NaN below
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def load_sklearn(name: str, *, schema: TableSchema | None = None, class_names: Sequence[str] = ()) -> Dataset:
    """A dataset that ships with scikit-learn (no download): ``breast_cancer`` or ``digits``.

    Breast cancer is preprocessed with its shipped public schema (``schema`` overrides it),
    digits with the fixed pixel scaling 0..16 -> [0, 1]; neither reads a statistic of the
    records. Labels map by their documented names (``class_names`` may reorder them)."""
    from sklearn import datasets

    if name == "breast_cancer":
        bunch = datasets.load_breast_cancer()
        schema = schema or load_schema(BUILTIN_SCHEMAS["sklearn:breast_cancer"])
        source = "sklearn:breast_cancer"
        table = RawTable(
            source,
            tuple(range(len(bunch.target))),
            tuple(str(bunch.target_names[t]) for t in bunch.target),
            schema.label or "target",
            numeric={str(n): bunch.data[:, j] for j, n in enumerate(bunch.feature_names)},
        )
        y, num_classes = schema.labels_of(table, class_names)
        return Dataset(schema.features_of(table), y, num_classes, Modality.TABULAR, source)
    if name == "digits":
        bunch = datasets.load_digits()
        images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]  # 4-bit pixels: a fixed scale
        names = class_names or tuple(str(d) for d in range(10))
        y = class_indices([str(t) for t in bunch.target], names, source="sklearn:digits")
        return Dataset(images, y, len(names), Modality.IMAGE, "sklearn:digits")
    raise DataError(f"unknown scikit-learn dataset {name!r}; choose breast_cancer or digits")


def require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if not path.is_file():
        raise DataError(f"{path}: expected a file, found a directory")


def read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (stripped) and the non-blank rows as ``(line number, cells)`` of a CSV file;
    a missing, empty, non-UTF-8 or unreadable file is one DataError naming it."""
    require_file(path)
    # utf-8-sig: a byte-order mark (Excel's default for "CSV UTF-8") is dropped, not read as
    # part of the first column's name.
    reader = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataError(f"{path}: file is empty") from None
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:  # a field over the csv module's size limit, a NUL byte, ...
        line = reader.line_num if reader is not None else 1
        raise DataError(f"{path}: line {line}: not a readable CSV row ({exc})") from None
    return header, rows


def load_csv(
    path: str | Path,
    *,
    label_column: str,
    schema: TableSchema | None = None,
    categorical_columns: Sequence[str] = (),
    class_names: Sequence[str] = (),
) -> Dataset:
    """Load a CSV table with a header row, a label column and feature columns.

    Features are preprocessed with the public ``schema`` only (bounds, categories); labels map
    to classes by ``class_names`` or the schema's class-names. Without a schema the file is
    still checked cell by cell, then refused (fail closed): see :func:`table_from_rows`.
    """
    path = Path(path)
    header, rows = read_csv_rows(path)
    return table_from_rows(
        header,
        rows,
        source=str(path),
        label_column=label_column,
        schema=schema,
        categorical_columns=categorical_columns,
        class_names=class_names,
    )


def table_from_rows(
    header: Sequence[str],
    rows: Iterable[tuple[int, Sequence[str]]],
    *,
    source: str,
    label_column: str,
    schema: TableSchema | None = None,
    categorical_columns: Sequence[str] = (),
    class_names: Sequence[str] = (),
) -> Dataset:
    """Turn string cells (``(line_number, cells)`` pairs) into a tabular :class:`Dataset`.

    Categorical columns are the schema's (plus ``categorical_columns``, which must agree with
    it). ``schema=None`` fails closed once the cells have been checked: preprocessing fitted
    on the records (a scaler, the categories or labels found in the file) would void DP.
    """
    label_column = label_column or (schema.label if schema else "")
    if not label_column:
        raise DataError(f"{source}: no label column: set label-column (or label in the feature schema)")
    if schema is not None and schema.label and schema.label != label_column:
        raise DataError(
            f"{source}: label column {label_column!r} differs from label {schema.label!r} of the feature schema "
            f"{schema.source}"
        )
    categorical = list(dict.fromkeys([*(schema.categorical_names if schema else ()), *categorical_columns]))
    table = read_cells(header, rows, source=source, label_column=label_column, categorical_columns=categorical)
    if schema is None:
        raise DataError(
            f"{source}: no feature-schema: a table is preprocessed with public bounds, never statistics of its "
            f"records; write one (template: python -m common.data.schema {source} {label_column} > schema.toml, "
            "then fill in lo/hi and class-names) and set feature-schema to its path"
        )
    y, num_classes = schema.labels_of(table, class_names)
    return Dataset(schema.features_of(table), y, num_classes, Modality.TABULAR, source)


def read_cells(
    header: Sequence[str],
    rows: Iterable[tuple[int, Sequence[str]]],
    *,
    source: str,
    label_column: str,
    categorical_columns: Sequence[str] = (),
) -> RawTable:
    """Check every cell (count, missing, numeric, finite) and keep them unprocessed: numeric
    columns as floats, ``categorical_columns`` and the label as text."""
    header = list(header)
    blank = [i + 1 for i, h in enumerate(header) if not h]
    if blank:
        raise DataError(f"{source}: column {blank[0]} of the header has no name")
    if label_column not in header:
        raise DataError(f"{source}: label column {label_column!r} not found; columns are {', '.join(header)}")
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise DataError(f"{source}: column {dup!r} appears twice in the header")
    for col in categorical_columns:
        if col not in header:
            raise DataError(f"{source}: categorical column {col!r} not found; columns are {', '.join(header)}")
    if label_column in categorical_columns:
        raise DataError(f"{source}: column {label_column!r} cannot be both the label and a feature")
    if len(header) == 1:
        raise DataError(f"{source}: no feature columns: the header holds only the label column {label_column!r}")
    rows = list(rows)
    if not rows:
        raise DataError(f"{source}: no data rows")
    label_idx = header.index(label_column)
    cat_idx = [header.index(c) for c in categorical_columns]
    num_idx = [i for i in range(len(header)) if i != label_idx and i not in cat_idx]

    labels_raw: list[str] = []
    numeric = np.empty((len(rows), len(num_idx)), dtype=np.float64)
    cats: list[list[str]] = []
    for r, (line, cells) in enumerate(rows):
        if len(cells) != len(header):
            raise DataError(f"{source}: line {line} has {len(cells)} cells, header has {len(header)}")
        label = cells[label_idx].strip()
        if label == "" or label.lower() in _MISSING | {"nan"}:
            raise DataError(f"{source}: line {line}, column {label_column!r}: missing label")
        labels_raw.append(label)
        for j, col in enumerate(num_idx):
            cell = cells[col].strip()
            if cell == "" or cell.lower() in _MISSING:
                raise DataError(f"{source}: line {line}, column {header[col]!r}: missing value {cell!r}")
            try:
                value = float(cell)
            except ValueError:
                raise DataError(
                    f"{source}: line {line}, column {header[col]!r}: non-numeric value {cell!r} "
                    "(list the column under categorical-columns if it is a category)"
                ) from None
            if not math.isfinite(value):
                raise DataError(f"{source}: line {line}, column {header[col]!r}: value {cell!r} is NaN or infinite")
            numeric[r, j] = value
        cat_row = []
        for col in cat_idx:
            cell = cells[col].strip()
            if cell == "":
                raise DataError(f"{source}: line {line}, column {header[col]!r}: empty category")
            cat_row.append(cell)
        cats.append(cat_row)
    return RawTable(
        source,
        tuple(line for line, _ in rows),
        tuple(labels_raw),
        label_column,
        numeric={header[col]: numeric[:, j] for j, col in enumerate(num_idx)},
        categorical={header[col]: tuple(row[k] for row in cats) for k, col in enumerate(cat_idx)},
    )


def encode_labels(raw: Sequence[str]) -> tuple[np.ndarray, int]:
    """Labels mapped to 0..K-1 in sorted order. The vocabulary comes from the records: use it
    only where the labels are public; sites' tables, arrays and images use class-names."""
    try:
        numbers = [float(v) for v in raw]
        classes: list = sorted(set(numbers))
        index = {v: i for i, v in enumerate(classes)}
        return np.array([index[v] for v in numbers], dtype=np.int64), len(classes)
    except ValueError:
        classes = sorted(set(raw))
        index = {v: i for i, v in enumerate(classes)}
        return np.array([index[v] for v in raw], dtype=np.int64), len(classes)


def _images_to_chw(images: np.ndarray, source: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim == 4:
        images = np.transpose(images, (0, 3, 1, 2))  # MedMNIST stores (N, H, W, C)
    else:
        raise DataError(f"{source}: images must have shape (N, H, W) or (N, H, W, C), got {images.shape}")
    integer = np.issubdtype(images.dtype, np.integer)
    images = images.astype(np.float32)
    if not np.all(np.isfinite(images)):
        raise DataError(f"{source}: images contain NaN or infinite values")
    if integer:
        return images / 255.0  # 8-bit pixels, whatever the largest value in this split
    if images.min(initial=0.0) < 0.0 or images.max(initial=0.0) > 1.0:
        raise DataError(
            f"{source}: float images must lie in [0, 1] (or store uint8 pixels), "
            f"found values in [{images.min():g}, {images.max():g}]"
        )
    return images


def load_npz(path: str | Path, *, class_names: Sequence[str]) -> tuple[Dataset, Dataset | None]:
    """Load arrays in the MedMNIST layout: ``{train,val,test}_images`` and ``_labels``.

    Labels are class indices into ``class_names`` (required: the class count must not be read
    from the largest label in the file). Pixels are scaled by a fixed rule (uint8 / 255; floats
    must already lie in [0, 1]), never by the records' own range.
    Returns (pool, test): train and val records form the pool that sites share; the test
    split, when present, is the held-out global test set.
    """
    path = Path(path)
    require_file(path)
    names = require_class_names(class_names, source=str(path), kind="npz file")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc or type(exc).__name__})") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not a .npz archive (a single .npy array); save with numpy.savez")
    try:
        return _npz_splits(path, arrays, names)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # a damaged member, read lazily
        raise DataError(f"{path}: not a readable .npz file ({exc or type(exc).__name__})") from None


def _npz_splits(path: Path, arrays: np.lib.npyio.NpzFile, names: Sequence[str]) -> tuple[Dataset, Dataset | None]:
    keys = set(arrays.files)
    if "train_images" not in keys or "train_labels" not in keys:
        raise DataError(f"{path}: expected arrays train_images and train_labels, found {', '.join(sorted(keys))}")
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "val", "test"):
        if f"{split}_images" in keys:
            if f"{split}_labels" not in keys:
                raise DataError(f"{path}: {split}_images has no matching {split}_labels")
            images = _images_to_chw(arrays[f"{split}_images"], f"{path}:{split}_images")
            labels = np.asarray(arrays[f"{split}_labels"]).reshape(-1)
            if len(labels) != len(images):
                raise DataError(f"{path}: {split}_images has {len(images)} records, {split}_labels {len(labels)}")
            if not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{path}: {split}_labels must be integer class indices, found dtype {labels.dtype}")
            bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
            if len(bad):
                raise DataError(
                    f"{path}: {split}_labels[{bad[0]}] = {labels[bad[0]]} is not a class index 0..{len(names) - 1} "
                    f"of the {len(names)} class-names"
                )
            parts[split] = (images, labels.astype(np.int64))
    pool_x = np.concatenate([parts[s][0] for s in ("train", "val") if s in parts])
    pool_y = np.concatenate([parts[s][1] for s in ("train", "val") if s in parts])
    pool = Dataset(pool_x, pool_y, len(names), Modality.IMAGE, str(path))
    test = None
    if "test" in parts:
        test = Dataset(parts["test"][0], parts["test"][1], len(names), Modality.IMAGE, f"{path}:test")
    return pool, test


def load_image_folder(path: str | Path, *, class_names: Sequence[str]) -> Dataset:
    """Load ``root/<class name>/<image>`` files; a folder's class is its name's position in
    ``class_names`` (required: a site may lack a class, and the folders it happens to hold
    must not decide the classes).

    Every image must have the same size; images are converted to grayscale when all are
    grayscale, else to RGB, and scaled by the fixed rule 8-bit / 255 (no statistic of the
    records).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: image folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder with one sub-folder per class")
    names = require_class_names(class_names, source=str(root), kind="image folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root}: no class sub-folders (one per class: {', '.join(names)})")
    labels = class_indices(folders, names, source=str(root), where=[f"folder {f!r}" for f in folders])
    files: list[tuple[Path, int]] = []
    for label, name in zip(labels.tolist(), folders, strict=True):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, label))
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    images = []
    modes = set()
    for f, _ in files:
        try:
            with Image.open(f) as img:
                img.load()
                modes.add("L" if img.mode in {"1", "L", "I", "I;16", "F"} else "RGB")
                images.append(img.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{f}: not a readable image ({exc})") from None
    mode = "L" if modes == {"L"} else "RGB"
    size = images[0].size
    arrays = []
    for (f, _), img in zip(files, images, strict=True):
        if img.size != size:
            raise DataError(f"{f}: image size {img.size} differs from {size} of {files[0][0]}")
        arrays.append(np.asarray(img.convert(mode), dtype=np.float32) / 255.0)
    x = np.stack(arrays)
    x = x[:, None, :, :] if mode == "L" else np.transpose(x, (0, 3, 1, 2))
    y = np.array([label for _, label in files], dtype=np.int64)
    return Dataset(x.astype(np.float32), y, len(names), Modality.IMAGE, str(root))
