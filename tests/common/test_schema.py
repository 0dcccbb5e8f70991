"""Public table schemas: preprocessing that depends on no record, labels by class-names, and
one-line errors naming the file, the feature (or line and column) and the value."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from common.data.schema import BUILTIN_SCHEMAS, load_schema, main, schema_template
from common.errors import DataError
from common.loaders import load_csv

SCHEMA = """\
label = "answer"
class-names = ["no", "yes"]
[[feature]]
name = "x"
lo = 0.0
hi = 10.0
[[feature]]
name = "size"
lo = 1.0
hi = 1000.0
transform = "log"
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message


def test_transform_is_clip_and_scale_to_public_bounds(tmp_path: Path) -> None:
    schema = load_schema(_write(tmp_path / "s.toml", SCHEMA))
    x, size = schema.features
    np.testing.assert_allclose(x.scale(np.array([-5.0, 0.0, 5.0, 10.0, 99.0])), [-1, -1, 0, 1, 1])
    np.testing.assert_allclose(size.scale(np.array([1.0, 10**1.5, 1000.0, 10**6])), [-1, 0, 1, 1])


def test_public_standardisation_uses_the_schemas_center_and_scale(tmp_path: Path) -> None:
    text = SCHEMA.replace('transform = "log"', 'transform = "log"\ncenter = 2.0\nscale = 0.5')
    _, size = load_schema(_write(tmp_path / "s.toml", text)).features
    np.testing.assert_allclose(
        size.scale(np.array([100.0, 10**1.5, 10**6])),
        [(np.log(100) - 2) / 0.5, (np.log(10**1.5) - 2) / 0.5, (np.log(1000) - 2) / 0.5],
    )


def test_shipped_schemas_load() -> None:
    for dataset, path in BUILTIN_SCHEMAS.items():
        schema = load_schema(path)
        assert len(schema.class_names) == 2, dataset
        assert schema.label
    assert load_schema(BUILTIN_SCHEMAS["sklearn:breast_cancer"]).width == 30
    assert load_schema(BUILTIN_SCHEMAS["synthetic:credit"]).width == 6 + 3 + 5


# ---- (a) attack: one far-out record must not move any other record's inputs -------------------


def test_adding_an_outlier_changes_no_other_records_features(tmp_path: Path) -> None:
    """Neighbouring tables (one record added) give every other record the same inputs: the
    transform uses public bounds, not the records' statistics (a fitted scaler fails this)."""
    rng = np.random.default_rng(0)
    rows = [f"{rng.uniform(0, 10):.3f},{rng.uniform(1, 1000):.3f},{'yes' if i % 2 else 'no'}" for i in range(40)]
    schema = load_schema(_write(tmp_path / "s.toml", SCHEMA))
    base = _write(tmp_path / "d.csv", "x,size,answer\n" + "\n".join(rows) + "\n")
    neighbour = _write(tmp_path / "d2.csv", "x,size,answer\n" + "\n".join([*rows, "1e9,-1e9,yes"]) + "\n")
    d = load_csv(base, label_column="answer", schema=schema)
    d2 = load_csv(neighbour, label_column="answer", schema=schema)
    np.testing.assert_array_equal(d2.x[:-1], d.x)
    np.testing.assert_array_equal(d2.y[:-1], d.y)
    np.testing.assert_array_equal(d2.x[-1], [1.0, -1.0])  # the outlier is clipped to the bounds


# ---- (b) labels by class-names, the same at every site ----------------------------------------


def test_sites_with_labels_in_different_orders_map_to_the_same_classes(tmp_path: Path) -> None:
    schema = load_schema(_write(tmp_path / "s.toml", SCHEMA))
    a = _write(tmp_path / "a.csv", "x,size,answer\n1,2,yes\n2,3,no\n3,4,yes\n")
    b = _write(tmp_path / "b.csv", "x,size,answer\n1,2,no\n2,3,no\n3,4,yes\n")
    only_yes = _write(tmp_path / "c.csv", "x,size,answer\n1,2,yes\n2,3,yes\n")
    np.testing.assert_array_equal(load_csv(a, label_column="answer", schema=schema).y, [1, 0, 1])
    np.testing.assert_array_equal(load_csv(b, label_column="answer", schema=schema).y, [0, 0, 1])
    site_c = load_csv(only_yes, label_column="answer", schema=schema)
    assert site_c.num_classes == 2 and list(site_c.y) == [1, 1]  # sorted labels would have made "yes" class 0
    # the site's class-names (its policy) give the mapping when the schema lists none
    bare = load_schema(_write(tmp_path / "bare.toml", SCHEMA.replace('class-names = ["no", "yes"]\n', "")))
    np.testing.assert_array_equal(
        load_csv(b, label_column="answer", schema=bare, class_names=("no", "yes")).y, [0, 0, 1]
    )


def test_a_label_outside_class_names_names_file_line_and_value(tmp_path: Path) -> None:
    schema = load_schema(_write(tmp_path / "s.toml", SCHEMA))
    path = _write(tmp_path / "d.csv", "x,size,answer\n1,2,yes\n2,3,maybe\n")
    message = _error(load_csv, path, label_column="answer", schema=schema)
    assert message.startswith(f"{path}: line 3, column 'answer': label 'maybe'") and "no, yes" in message


def test_class_names_that_contradict_the_schema_are_refused(tmp_path: Path) -> None:
    schema = load_schema(_write(tmp_path / "s.toml", SCHEMA))
    path = _write(tmp_path / "d.csv", "x,size,answer\n1,2,yes\n2,3,no\n")
    assert "differ" in _error(load_csv, path, label_column="answer", schema=schema, class_names=("yes", "no"))


def test_a_table_without_class_names_fails_closed(tmp_path: Path) -> None:
    bare = load_schema(_write(tmp_path / "bare.toml", SCHEMA.replace('class-names = ["no", "yes"]\n', "")))
    path = _write(tmp_path / "d.csv", "x,size,answer\n1,2,yes\n2,3,no\n")
    message = _error(load_csv, path, label_column="answer", schema=bare)
    assert str(path) in message and "class-names" in message


# ---- columns against the schema -------------------------------------------------------------


def test_csv_columns_must_match_the_schema(tmp_path: Path) -> None:
    schema = load_schema(_write(tmp_path / "s.toml", SCHEMA))
    extra = _write(tmp_path / "extra.csv", "x,size,zip,answer\n1,2,3,yes\n")
    message = _error(load_csv, extra, label_column="answer", schema=schema)
    assert str(extra) in message and "'zip'" in message and str(schema.source) in message
    missing = _write(tmp_path / "missing.csv", "x,answer\n1,yes\n")
    message = _error(load_csv, missing, label_column="answer", schema=schema)
    assert str(missing) in message and "'size'" in message


def test_a_category_outside_the_schema_names_line_column_and_value(tmp_path: Path) -> None:
    text = SCHEMA + '[[feature]]\nname = "home"\ncategories = ["own", "rent"]\n'
    schema = load_schema(_write(tmp_path / "s.toml", text))
    path = _write(tmp_path / "d.csv", "x,size,home,answer\n1,2,own,yes\n1,2,boat,no\n")
    message = _error(load_csv, path, label_column="answer", schema=schema)
    assert message.startswith(f"{path}: line 3, column 'home': category 'boat'")


def test_a_table_without_a_schema_fails_closed_and_says_how_to_write_one(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "x,size,answer\n1,2,yes\n2,3,no\n")
    message = _error(load_csv, path, label_column="answer")
    assert str(path) in message and "feature-schema" in message and "python -m common.data.schema" in message


# ---- (d) schema file errors: one line, naming file, feature and value ---------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[[feature]]\nname = "x"\nlo = 5.0\nhi = 1.0\n', "feature 'x': lo must be < hi, got lo = 5, hi = 1"),
        ('[[feature]]\nname = "x"\nlo = "low"\nhi = 1.0\n', "feature 'x': lo must be a number, got 'low'"),
        ('[[feature]]\nname = "x"\nlo = nan\nhi = 1.0\n', "feature 'x': lo is not filled in (nan)"),
        ('[[feature]]\nname = "x"\nlo = 0.0\n', "feature 'x': no hi"),
        ('[[feature]]\nname = "x"\n', "feature 'x': needs public bounds lo and hi"),
        (
            '[[feature]]\nname = "x"\nlo = 0.0\nhi = 1.0\ntransform = "sqrt"\n',
            "transform must be linear or log, got 'sqrt'",
        ),
        ('[[feature]]\nname = "x"\nlo = 0.0\nhi = 9.0\ntransform = "log"\n', "feature 'x': transform log needs lo > 0"),
        ('[[feature]]\nname = "x"\nlo = 0.0\nhi = 1.0\nhigh = 2\n', "feature 'x': unknown key 'high'"),
        ('[[feature]]\nname = "c"\ncategories = []\n', "feature 'c': categories must be a non-empty list"),
        ('[[feature]]\nname = "c"\ncategories = ["a", "a"]\n', "feature 'c': categories must be distinct"),
        ("[[feature]]\nlo = 0.0\nhi = 1.0\n", "feature #1 has no name"),
        ('[[feature]]\nname = "x"\nlo = 0\nhi = 1\n[[feature]]\nname = "x"\nlo = 0\nhi = 1\n', "'x' is listed twice"),
        ('class-names = ["yes"]\n[[feature]]\nname = "x"\nlo = 0\nhi = 1\n', "class-names must list at least 2"),
        ('label = "x"\n[[feature]]\nname = "x"\nlo = 0\nhi = 1\n', "feature 'x' is also the label"),
        ("labels = 1\n", "unknown key 'labels'"),
        ('label = "y"\n', "no features"),
        ("lo = = 1\n", "not a readable TOML feature schema"),
        ('[[feature]]\nname = "x"\nlo = 0\nhi = 1\ncenter = 0.5\n', "feature 'x': center and scale go together"),
        ('[[feature]]\nname = "x"\nlo = 0\nhi = 1\ncenter = 0.5\nscale = 0\n', "feature 'x': scale must be > 0"),
    ],
)
def test_schema_errors_are_one_line_naming_file_feature_and_value(tmp_path: Path, body: str, expected: str) -> None:
    path = _write(tmp_path / "bad.toml", body)
    message = _error(load_schema, path)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_missing_schema_file(tmp_path: Path) -> None:
    assert "feature schema not found" in _error(load_schema, tmp_path / "nope.toml")


# ---- the template ---------------------------------------------------------------------------


def test_template_reads_the_header_only_and_refuses_to_load_until_filled(tmp_path: Path, capsys) -> None:
    # The second line is no valid record at all: only the header row is read.
    path = _write(tmp_path / "site.csv", "age,income,label\nthis row is not even parsed\n")
    text = schema_template(path, "label")
    assert "1e6" not in text and "parsed" not in text
    template = _write(tmp_path / "schema.toml", text)
    assert re.search(r"feature 'age': lo is not filled in", _error(load_schema, template))
    filled = (
        text.replace("lo = nan", "lo = 0.0")
        .replace("hi = nan", "hi = 1.0")
        .replace("class-names = []", 'class-names = ["a", "b"]')
    )
    schema = load_schema(_write(tmp_path / "filled.toml", filled))
    assert schema.names == ("age", "income") and schema.label == "label"
    assert main([str(path), "label"]) == 0 and "[[feature]]" in capsys.readouterr().out
    assert main([str(tmp_path / "nope.csv")]) == 1
