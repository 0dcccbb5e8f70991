"""Text records: CSV or JSON-lines files with a text field and a label field, tokenized offline.

Tokenization uses the tokenizer saved in the model directory (never a download). Each text is
truncated to ``max_length`` tokens; records are stored right-padded with the pad id to the
longest record, and the model cuts every batch to its own longest record, so padding is per
batch. Errors are one line naming the file, the line and the field at fault.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.dataset import Dataset, Modality
from common.errors import DataError
from common.loaders import encode_labels, require_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEXT_SUFFIXES = (".csv", ".jsonl", ".json")


@dataclass(frozen=True)
class TextTable:
    texts: list[str]
    labels: list[str]
    source: str


def read_text_table(
    path: str | Path, *, text_field: str = "text", label_field: str = "label", labels_optional: bool = False
) -> TextTable:
    """Texts and raw labels from a ``.csv`` (header row) or ``.jsonl``/``.json`` (one JSON
    object per line) file. With ``labels_optional`` (prediction), a file whose records have no
    label field at all gives empty labels."""
    path = Path(path)
    require_file(path)
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: text data must be a .csv or .jsonl file, got {suffix or 'no extension'!r}")
    if text_field == label_field:
        raise DataError(f"{path}: text-field and label-field are both {text_field!r}")
    try:
        content = path.read_text(encoding="utf-8-sig")  # a byte-order mark is dropped
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    rows = _csv_rows(path, content) if suffix == ".csv" else _jsonl_rows(path, content)
    texts, labels = [], []
    unlabelled = labels_optional and all(row.get(label_field) in (None, "") for _, row in rows)
    for line, row in rows:
        text = _field(row, text_field, path, line, kind="text")
        label = "" if unlabelled else _field(row, label_field, path, line, kind="label")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DataError(f"{path}: no records")
    return TextTable(texts, labels, str(path))


def _csv_rows(path: Path, content: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(content.splitlines())
    if not reader.fieldnames:
        raise DataError(f"{path}: empty file (expected a header row)")
    rows = []
    try:
        for row in reader:
            if None in row:
                raise DataError(f"{path}: line {reader.line_num}: more cells than header columns")
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not a readable CSV row ({exc})") from None
    return rows


def _jsonl_rows(path: Path, content: str) -> list[tuple[int, dict]]:
    rows = []
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _field(row: dict, name: str, path: Path, line: int, *, kind: str) -> str:
    if name not in row or row[name] is None:
        fields = ", ".join(str(k) for k in row if k is not None)
        raise DataError(f"{path}: line {line}: no {kind} field {name!r}; fields are {fields}")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{path}: line {line}, field {name!r}: expected a {kind}, got {json.dumps(value)[:40]}")
    if kind == "text" and not isinstance(value, str):
        raise DataError(f"{path}: line {line}, field {name!r}: expected a string, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    value = str(value).strip()
    if not value:
        raise DataError(f"{path}: line {line}, field {name!r}: empty {kind}")
    return value


def tokenize(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> np.ndarray:
    """Token ids (int64), right-padded with the pad id to the longest text, truncated to
    ``max_length`` tokens (special tokens included)."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding="longest", return_tensors="np")
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    mask = np.asarray(encoded["attention_mask"], dtype=bool)
    ids[~mask] = tokenizer.pad_token_id
    if (ids[mask] == tokenizer.pad_token_id).any():
        raise DataError("the tokenizer maps some text to its pad token; its pad id cannot mark padding")
    return ids


def text_dataset(
    table: TextTable, tokenizer: PreTrainedTokenizerBase, *, max_length: int, classes: Sequence[str] | None = None
) -> Dataset:
    """A tokenized :class:`Dataset` of ``table``. Labels are mapped to 0..K-1 in sorted order,
    or by their position in ``classes`` when given (every site must agree on the mapping)."""
    if classes is None:
        y, num_classes = encode_labels(table.labels)
    else:
        index = {str(c): i for i, c in enumerate(classes)}
        unknown = sorted(set(table.labels) - set(index))
        if unknown:
            raise DataError(f"{table.source}: label {unknown[0]!r} is not one of the classes {', '.join(index)}")
        y, num_classes = np.array([index[v] for v in table.labels], dtype=np.int64), len(index)
    x = tokenize(table.texts, tokenizer, max_length=max_length)
    return Dataset(x, y, num_classes, Modality.TEXT, table.source)
