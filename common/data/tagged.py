"""Tagged text for entity recognition: CoNLL-style and JSON-lines files, tokenized offline.

- **CoNLL** (``.conll``, ``.txt``, ``.tsv``, ``.iob``): one word per line, the word in the first
  column and its tag in the last (whitespace- or tab-separated); a blank line ends a sentence;
  ``-DOCSTART-`` lines are skipped.
- **JSON lines** (``.jsonl``, ``.json``): one object per line with a ``tokens`` list and a
  ``tags`` list of the same length.

Tags must be ``O`` or ``B-TYPE`` / ``I-TYPE`` from the job's tag set (``class-names``, in order),
never read from the files, so that every site maps tags to the same classes. Errors are one
line naming the file, the line and the field.

Tokenization uses the pretrained tokenizer saved beside the transformer (never a download):
each word is split into sub-words, and the word's tag goes on its first sub-word; the other
sub-words, the special tokens and padding get :data:`~common.tasks.token_classification.IGNORE`.
Words beyond ``max-length`` tokens are cut off (and not scored).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.dataset import Dataset, Modality
from common.errors import DataError
from common.loaders import require_file
from common.tasks.token_classification import IGNORE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CONLL_SUFFIXES = (".conll", ".txt", ".tsv", ".iob")
JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class TaggedTable:
    """Sentences as word lists, with one tag per word (``tags`` empty lists when unlabelled)."""

    tokens: list[list[str]]
    tags: list[list[str]]
    source: str
    lines: list[str] = field(default_factory=list)  # where each sentence starts ("line 12"), for errors


def read_tagged(path: str | Path, *, tags: Sequence[str] | None = None, labels_optional: bool = False) -> TaggedTable:
    """Sentences from a CoNLL or JSON-lines file. With ``tags``, every tag must be one of
    them; with ``labels_optional`` (prediction), a CoNLL file of bare words or JSON lines
    without ``tags`` give untagged sentences."""
    path = Path(path)
    require_file(path)
    suffix = path.suffix.lower()
    if suffix not in CONLL_SUFFIXES + JSONL_SUFFIXES:
        raise DataError(
            f"{path}: tagged text must be CoNLL ({', '.join(CONLL_SUFFIXES)}) or JSON lines (.jsonl), "
            f"got {suffix or 'no extension'!r}"
        )
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    reader = _conll if suffix in CONLL_SUFFIXES else _jsonl
    table = reader(path, content, labels_optional)
    if not table.tokens:
        raise DataError(f"{path}: no sentences")
    if tags is not None:
        allowed = set(tags)
        for number, sentence in _numbered(table):
            for tag in sentence:
                if tag not in allowed:
                    raise DataError(f"{path}: {number}, field tag: {tag!r} is not one of the tags {', '.join(tags)}")
    return table


def _numbered(table: TaggedTable) -> list[tuple[str, list[str]]]:
    lines = table.lines or [f"sentence {i + 1}" for i in range(len(table.tags))]
    return list(zip(lines, table.tags, strict=True))


def _conll(path: Path, content: str, labels_optional: bool) -> TaggedTable:
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    lines: list[str] = []
    words: list[str] = []
    labels: list[str] = []
    start = 0
    bare = labels_optional and all(
        len(line.split()) <= 1 for line in content.splitlines() if not line.startswith("-DOCSTART-")
    )
    for number, raw in enumerate(content.splitlines(), start=1):
        parts = raw.split()
        if parts and parts[0] == "-DOCSTART-":
            continue
        if not parts:
            if words:
                tokens.append(words), tags.append(labels), lines.append(f"line {start}")
                words, labels = [], []
            continue
        if not words:
            start = number
        if bare:
            words.append(parts[0])
            continue
        if len(parts) < 2:
            raise DataError(f"{path}: line {number}: expected a word and its tag, got {raw.strip()!r}")
        words.append(parts[0])
        labels.append(parts[-1])
    if words:
        tokens.append(words), tags.append(labels), lines.append(f"line {start}")
    return TaggedTable(tokens, tags if not bare else [[] for _ in tokens], str(path), lines)


def _jsonl(path: Path, content: str, labels_optional: bool) -> TaggedTable:
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    lines: list[str] = []
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
    untagged = labels_optional and all("tags" not in row for _, row in rows)
    for number, row in rows:
        words = _string_list(row, "tokens", path, number)
        if not words:
            raise DataError(f"{path}: line {number}, field 'tokens': empty sentence")
        labels = [] if untagged else _string_list(row, "tags", path, number)
        if not untagged and len(labels) != len(words):
            raise DataError(f"{path}: line {number}, field 'tags': {len(labels)} tags for {len(words)} tokens")
        tokens.append(words), tags.append(labels), lines.append(f"line {number}")
    return TaggedTable(tokens, tags, str(path), lines)


def _string_list(row: dict, name: str, path: Path, line: int) -> list[str]:
    if name not in row:
        raise DataError(f"{path}: line {line}: no field {name!r}; fields are {', '.join(map(str, row))}")
    value = row[name]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{path}: line {line}, field {name!r}: expected a list of non-empty strings")
    return [v.strip() for v in value]


def tokenize_tagged(
    table: TaggedTable, tokenizer: PreTrainedTokenizerBase, *, max_length: int, tags: Sequence[str]
) -> Dataset:
    """Token ids (N, L) right-padded with the pad id, and labels (N, L): the tag's index on
    each word's first sub-word, :data:`IGNORE` elsewhere. Untagged sentences (prediction) get
    tag 0 on first sub-words, so the positions to read are still marked."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("tagged text needs a fast tokenizer (it maps sub-words back to words)")
    index = {t: i for i, t in enumerate(tags)}
    encoded = tokenizer(
        table.tokens, is_split_into_words=True, truncation=True, max_length=max_length, padding="longest"
    )
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    mask = np.asarray(encoded["attention_mask"], dtype=bool)
    ids[~mask] = tokenizer.pad_token_id
    labels = np.full(ids.shape, IGNORE, dtype=np.int64)
    for i, sentence_tags in enumerate(table.tags):
        seen: set[int] = set()
        for position, word in enumerate(encoded.word_ids(i)):
            if word is None or word in seen:
                continue
            seen.add(word)
            labels[i, position] = index[sentence_tags[word]] if sentence_tags else 0
    return Dataset(ids, labels, len(tags), Modality.TEXT, table.source)


def first_subwords(table: TaggedTable, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> list[int]:
    """Per sentence: how many of its words fit in ``max_length`` tokens (the rest are cut)."""
    encoded = tokenizer(table.tokens, is_split_into_words=True, truncation=True, max_length=max_length)
    return [len({w for w in encoded.word_ids(i) if w is not None}) for i in range(len(table.tokens))]
