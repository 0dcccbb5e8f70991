"""Data loaders: CSV tables, `.npz` arrays (MedMNIST layout), image folders, shipped sets.

Every loader raises :class:`DataError` with a one-line message naming the file, column,
row or value at fault. No loader downloads anything.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from common.dataset import Dataset, Modality
from common.errors import DataError

_MISSING = {"na", "n/a", "null", "none"}  # "nan" in a feature is reported as NaN below
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def load_sklearn(name: str) -> Dataset:
    """A dataset that ships with scikit-learn (no download): ``breast_cancer`` or ``digits``."""
    from sklearn import datasets

    if name == "breast_cancer":
        bunch = datasets.load_breast_cancer()
        return Dataset(
            bunch.data.astype(np.float32),
            bunch.target.astype(np.int64),
            2,
            Modality.TABULAR,
            "sklearn:breast_cancer",
        )
    if name == "digits":
        bunch = datasets.load_digits()
        images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
        return Dataset(images, bunch.target.astype(np.int64), 10, Modality.IMAGE, "sklearn:digits")
    raise DataError(f"unknown scikit-learn dataset {name!r}; choose breast_cancer or digits")


def require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if not path.is_file():
        raise DataError(f"{path}: expected a file, found a directory")


def load_csv(
    path: str | Path,
    *,
    label_column: str,
    categorical_columns: Sequence[str] = (),
) -> Dataset:
    """Load a CSV table with a header row, a named label column and feature columns.

    Numeric columns are parsed as floats; ``categorical_columns`` are one-hot encoded.
    Labels may be numbers or strings; they are mapped to 0..K-1 in sorted order.
    """
    path = Path(path)
    require_file(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataError(f"{path}: file is empty") from None
            rows = [(i + 2, row) for i, row in enumerate(reader) if any(c.strip() for c in row)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    return table_from_rows(
        header, rows, source=str(path), label_column=label_column, categorical_columns=categorical_columns
    )


def table_from_rows(
    header: Sequence[str],
    rows: Iterable[tuple[int, Sequence[str]]],
    *,
    source: str,
    label_column: str,
    categorical_columns: Sequence[str] = (),
) -> Dataset:
    """Turn string cells (``(line_number, cells)`` pairs) into a tabular :class:`Dataset`."""
    if label_column not in header:
        raise DataError(f"{source}: label column {label_column!r} not found; columns are {', '.join(header)}")
    for col in categorical_columns:
        if col not in header:
            raise DataError(f"{source}: categorical column {col!r} not found; columns are {', '.join(header)}")
    if label_column in categorical_columns:
        raise DataError(f"{source}: column {label_column!r} cannot be both the label and a feature")
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

    blocks = [numeric]
    for k, _col in enumerate(cat_idx):
        values = sorted({row[k] for row in cats})
        index = {v: i for i, v in enumerate(values)}
        onehot = np.zeros((len(rows), len(values)))
        onehot[np.arange(len(rows)), [index[row[k]] for row in cats]] = 1.0
        blocks.append(onehot)
    x = np.concatenate(blocks, axis=1).astype(np.float32)
    y, num_classes = encode_labels(labels_raw)
    return Dataset(x, y, num_classes, Modality.TABULAR, source)


def encode_labels(raw: Sequence[str]) -> tuple[np.ndarray, int]:
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


def load_npz(path: str | Path) -> tuple[Dataset, Dataset | None]:
    """Load arrays in the MedMNIST layout: ``{train,val,test}_images`` and ``_labels``.

    Returns (pool, test): train and val records form the pool that sites share; the test
    split, when present, is the held-out global test set.
    """
    path = Path(path)
    require_file(path)
    try:
        arrays = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
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
            parts[split] = (images, labels.astype(np.int64))
    pool_x = np.concatenate([parts[s][0] for s in ("train", "val") if s in parts])
    pool_y = np.concatenate([parts[s][1] for s in ("train", "val") if s in parts])
    all_y = np.concatenate([pool_y] + ([parts["test"][1]] if "test" in parts else []))
    if all_y.min() < 0:
        raise DataError(f"{path}: labels must be >= 0, found {all_y.min()}")
    num_classes = int(all_y.max()) + 1
    pool = Dataset(pool_x, pool_y, num_classes, Modality.IMAGE, str(path))
    test = None
    if "test" in parts:
        test = Dataset(parts["test"][0], parts["test"][1], num_classes, Modality.IMAGE, f"{path}:test")
    return pool, test


def load_image_folder(path: str | Path) -> Dataset:
    """Load ``root/<class name>/<image>`` files; classes are sorted folder names.

    Every image must have the same size; images are converted to grayscale when all are
    grayscale, else to RGB.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: image folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root}: need at least 2 class sub-folders, found {len(classes)}")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
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
    return Dataset(x.astype(np.float32), y, len(classes), Modality.IMAGE, str(root))
