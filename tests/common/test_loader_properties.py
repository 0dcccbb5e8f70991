"""Property tests for the loaders: whatever bytes a file holds, loading it either gives a
dataset or raises :class:`DataError` (a one-line user error naming the file); never another
exception, which the command line would show as a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.data.schema import load_schema
from common.errors import DataError
from common.loaders import load_csv, load_npz
from common.text_loaders import read_text_table

SCHEMA = 'label = "y"\nclass-names = ["0", "1"]\n[[feature]]\nname = "a"\nlo = 0.0\nhi = 1.0\n'
_CELLS = st.one_of(
    st.sampled_from(["0", "1", "0.5", "", "nan", "inf", "-1e309", "n/a", '"', "\ufeff", "a,b", "1e5"]),
    st.text(max_size=8),
)
_HEADERS = st.lists(st.sampled_from(["a", "y", "b", "", "\ufeffa", " y ", "a"]), min_size=0, max_size=4)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _file(suffix: str, content: str | bytes) -> Path:
    folder = Path(tempfile.mkdtemp())
    path = folder / f"data{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def _loads_or_says_why(load, path: Path) -> None:
    try:
        load(path)
    except DataError as exc:
        assert "\n" not in str(exc)
        assert str(path) in str(exc) or path.name in str(exc)


@_SETTINGS
@given(header=_HEADERS, rows=st.lists(st.lists(_CELLS, max_size=4), max_size=6), bom=st.booleans())
def test_any_csv_table_loads_or_is_one_data_error(header: list[str], rows: list[list[str]], bom: bool) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    text = ("\ufeff" if bom else "") + buffer.getvalue()
    schema = load_schema(_file(".toml", SCHEMA))
    _loads_or_says_why(lambda p: load_csv(p, label_column="y", schema=schema), _file(".csv", text))


@_SETTINGS
@given(content=st.binary(max_size=300))
def test_any_bytes_as_csv_load_or_are_one_data_error(content: bytes) -> None:
    schema = load_schema(_file(".toml", SCHEMA))
    _loads_or_says_why(lambda p: load_csv(p, label_column="y", schema=schema), _file(".csv", content))


@_SETTINGS
@given(
    lines=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.sampled_from(['{"text": "a", "label": "x"}', '{"text": 1, "label": null}', "[]", "{}", '{"text": ""}']),
        ),
        max_size=6,
    )
)
def test_any_jsonl_text_file_loads_or_is_one_data_error(lines: list[str]) -> None:
    _loads_or_says_why(read_text_table, _file(".jsonl", "\n".join(lines)))


@_SETTINGS
@given(content=st.binary(max_size=200))
def test_any_bytes_as_npz_load_or_are_one_data_error(content: bytes) -> None:
    _loads_or_says_why(lambda p: load_npz(p, class_names=("a", "b")), _file(".npz", content))


@_SETTINGS
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=5), labels=st.integers(0, 6))
def test_any_array_shapes_in_an_npz_load_or_are_one_data_error(shape: list[int], labels: int) -> None:
    path = _file(".npz", b"")
    np.savez(path, train_images=np.zeros(shape, np.uint8), train_labels=np.zeros(labels, np.int64))
    _loads_or_says_why(lambda p: load_npz(p, class_names=("a", "b")), path)


@_SETTINGS
@given(content=st.text(max_size=200))
def test_any_schema_text_loads_or_is_one_data_error(content: str) -> None:
    _loads_or_says_why(load_schema, _file(".toml", content))
