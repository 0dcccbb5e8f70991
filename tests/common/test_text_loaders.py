"""Text records: CSV / JSON lines, offline tokenization, per-batch padding, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import DataError
from common.models import ModelKind, ModelSpec, build_model
from common.models.transformer import load_tokenizer
from common.notes import DEPARTMENTS, synthetic_notes
from common.text_loaders import read_text_table, text_dataset, tokenize


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_and_jsonl_give_the_same_table(tmp_path: Path) -> None:
    rows = [("chest pain and palpitations", "cardiology"), ('a "quoted", comma note', "neurology")]
    csv_file = _write(
        tmp_path / "notes.csv", "note,dept\n" + "".join(f'"{t.replace(chr(34), 2 * chr(34))}",{d}\n' for t, d in rows)
    )
    jsonl = _write(tmp_path / "notes.jsonl", "".join(json.dumps({"note": t, "dept": d}) + "\n\n" for t, d in rows))
    a = read_text_table(csv_file, text_field="note", label_field="dept")
    b = read_text_table(jsonl, text_field="note", label_field="dept")
    assert a.texts == b.texts == [t for t, _ in rows]
    assert a.labels == b.labels == ["cardiology", "neurology"]


def test_integer_labels_in_json_are_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0.0}\n')
    assert read_text_table(path).labels == ["1", "0"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.csv", None, "data file not found"),
        ("notes.txt", "text,label\na,b\n", "must be a .csv or .jsonl file, got '.txt'"),
        ("empty.csv", "", "empty file"),
        ("header-only.csv", "text,label\n", "no records"),
        ("nofield.csv", "body,label\nhello,1\n", "line 2: no text field 'text'; fields are body, label"),
        ("nolabel.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', "line 2: no label field 'label'"),
        ("badjson.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 2}\n', "line 2: invalid JSON"),
        ("list.jsonl", '["a", 1]\n', "line 1: expected a JSON object, got list"),
        ("emptytext.csv", "text,label\n   ,1\n", "line 2, field 'text': empty text"),
        ("numtext.jsonl", '{"text": 5, "label": 1}\n', "line 1, field 'text': expected a string, got 5"),
        ("dictlabel.jsonl", '{"text": "a", "label": {"x": 1}}\n', "line 1, field 'label': expected a label"),
        ("extra.csv", "text,label\na,1,oops\n", "line 2: more cells than header columns"),
    ],
)
def test_bad_files_give_one_line_errors_naming_file_and_place(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        _write(path, content)
    with pytest.raises(DataError) as info:
        read_text_table(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_non_utf8_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_text_table(path)


def test_tokenization_truncates_and_pads_with_the_pad_id(tiny_text_model: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_text_model))
    ids = tokenize(["chest pain", "chest pain " * 40], tokenizer, max_length=16)
    assert ids.shape == (2, 16) and ids.dtype == np.int64
    assert (ids[1] != tokenizer.pad_token_id).all()  # truncated to exactly max_length
    short = ids[0][ids[0] != tokenizer.pad_token_id]
    assert len(short) == 4 and (ids[0][4:] == tokenizer.pad_token_id).all()  # [CLS] chest pain [SEP], then pads


def test_labels_follow_the_given_classes(tiny_text_model: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_text_model))
    table = synthetic_notes(40, seed=0)
    data = text_dataset(table, tokenizer, max_length=32, classes=DEPARTMENTS)
    assert data.num_classes == 4
    assert [DEPARTMENTS[i] for i in data.y] == table.labels
    with pytest.raises(DataError, match="label 'cardiology' is not one of the classes"):
        text_dataset(table, tokenizer, max_length=32, classes=("neurology", "other"))


def test_padding_is_per_batch_and_changes_nothing(tiny_text_model: Path) -> None:
    """A batch is cut to its longest record, and each record's logits are those it gets alone."""
    tokenizer = load_tokenizer(str(tiny_text_model))
    data = text_dataset(synthetic_notes(8, seed=3), tokenizer, max_length=64)
    spec = ModelSpec(ModelKind.TRANSFORMER, (64,), 4, pretrained_path=str(tiny_text_model), random_init=True)
    model = build_model(spec, seed=0).eval()
    x = torch.as_tensor(data.x)
    padded = torch.cat([x, torch.zeros((len(x), 20), dtype=x.dtype)], dim=1)  # extra padding columns
    with torch.no_grad():
        batch = model(padded)
        alone = torch.cat([model(x[i : i + 1, : int((x[i] != 0).sum())]) for i in range(len(x))])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-4)


def test_notes_generator_is_seeded_and_documented_classes() -> None:
    a, b = synthetic_notes(50, seed=7), synthetic_notes(50, seed=7)
    assert a.texts == b.texts and a.labels == b.labels
    assert set(a.labels) <= set(DEPARTMENTS)
    assert synthetic_notes(50, seed=8).texts != a.texts
    assert all(20 <= len(t.split()) <= 60 for t in a.texts)
