"""Loaders: good files load correctly; bad files raise one DataError naming the culprit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from common.credit import CREDIT_COLUMNS, credit_schema, generate_credit_rows, synthetic_credit, write_credit_csv
from common.data.schema import TableSchema, load_schema
from common.dataset import Modality
from common.errors import DataError
from common.loaders import load_csv, load_image_folder, load_npz, load_sklearn


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- CSV ------------------------------------------------------------------------------

GOOD_CSV = """\
age,color,score,outcome
30,red,1.5,yes
41,blue,2.0,no
25,green,-0.5,maybe
60,red,3.25,yes
"""


GOOD_SCHEMA = """\
label = "outcome"
class-names = ["no", "maybe", "yes"]
[[feature]]
name = "age"
lo = 20.0
hi = 60.0
[[feature]]
name = "color"
categories = ["red", "green", "blue"]
[[feature]]
name = "score"
lo = -1.0
hi = 3.0
"""


def _schema(tmp_path: Path, text: str = GOOD_SCHEMA) -> TableSchema:
    return load_schema(_write(tmp_path / "schema.toml", text))


def test_csv_is_preprocessed_with_the_public_schema_only(tmp_path):
    path = _write(tmp_path / "good.csv", GOOD_CSV)
    ds = load_csv(path, label_column="outcome", schema=_schema(tmp_path))
    assert ds.modality is Modality.TABULAR
    assert ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64
    # schema order: age to [-1, 1] over [20, 60], color one-hot (red, green, blue), score over [-1, 3]
    expected = np.array(
        [
            [-0.5, 1, 0, 0, 0.25],
            [0.05, 0, 0, 1, 0.5],
            [-0.75, 0, 1, 0, -0.75],
            [1.0, 1, 0, 0, 1.0],  # age 60 is the public upper bound; 3.25 is clipped to 3
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(ds.x, expected, atol=1e-6)
    np.testing.assert_array_equal(ds.y, [2, 0, 1, 2])  # by class-names: no=0, maybe=1, yes=2
    assert ds.num_classes == 3
    assert ds.source == str(path)


def test_csv_numeric_labels_map_by_class_names(tmp_path):
    path = _write(tmp_path / "num.csv", "a,y\n1,5\n2,-1\n3,5.0\n4,2\n")
    schema = _schema(tmp_path, '[[feature]]\nname = "a"\nlo = 0\nhi = 4\n')
    ds = load_csv(path, label_column="y", schema=schema, class_names=("5", "2", "-1"))
    np.testing.assert_array_equal(ds.y, [0, 2, 0, 1])
    assert ds.num_classes == 3
    np.testing.assert_allclose(ds.x[:, 0], [-0.5, 0.0, 0.5, 1.0])


def test_csv_skips_blank_rows_and_strips_spaces(tmp_path):
    path = _write(tmp_path / "spaced.csv", " a , y \n 1 , 0 \n\n 2 , 1 \n")
    schema = _schema(tmp_path, 'class-names = ["0", "1"]\n[[feature]]\nname = "a"\nlo = 0\nhi = 2\n')
    ds = load_csv(path, label_column="y", schema=schema)
    assert len(ds) == 2
    np.testing.assert_allclose(ds.x[:, 0], [0.0, 1.0])


def _data_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message


def test_csv_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    message = _data_error(load_csv, path, label_column="y")
    assert str(path) in message
    assert "not found" in message


def test_csv_path_is_a_directory(tmp_path):
    message = _data_error(load_csv, tmp_path, label_column="y")
    assert str(tmp_path) in message


def test_csv_unknown_label_column_lists_columns(tmp_path):
    path = _write(tmp_path / "good.csv", GOOD_CSV)
    message = _data_error(load_csv, path, label_column="target")
    assert str(path) in message
    assert "'target'" in message
    assert "age, color, score, outcome" in message


def test_csv_unknown_categorical_column(tmp_path):
    path = _write(tmp_path / "good.csv", GOOD_CSV)
    message = _data_error(load_csv, path, label_column="outcome", categorical_columns=("colour",))
    assert str(path) in message
    assert "'colour'" in message
    assert "age, color, score, outcome" in message


def test_csv_non_numeric_cell_names_column_line_and_value(tmp_path):
    path = _write(tmp_path / "bad.csv", "a,b,y\n1,2,0\n3,oops,1\n")
    message = _data_error(load_csv, path, label_column="y")
    assert str(path) in message
    assert "line 3" in message
    assert "'b'" in message
    assert "'oops'" in message


def test_csv_line_numbers_count_blank_lines(tmp_path):
    path = _write(tmp_path / "bad.csv", "a,y\n1,0\n\n2,1\nx,0\n")
    message = _data_error(load_csv, path, label_column="y")
    assert re.search(r"\bline 5\b", message), message


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-inf"])
def test_csv_nan_or_infinite_cell(tmp_path, cell):
    path = _write(tmp_path / "nan.csv", f"a,b,y\n1,2,0\n3,{cell},1\n")
    message = _data_error(load_csv, path, label_column="y")
    assert str(path) in message
    assert "line 3" in message
    assert "'b'" in message
    assert repr(cell) in message


def test_csv_empty_cell(tmp_path):
    path = _write(tmp_path / "empty.csv", "a,b,y\n1,2,0\n3,,1\n")
    message = _data_error(load_csv, path, label_column="y")
    assert str(path) in message
    assert "line 3" in message
    assert "'b'" in message


def test_csv_empty_cell_is_reported_as_missing(tmp_path):
    # An empty numeric cell is a missing value, not a category: the message should say so
    # rather than call '' a non-numeric value and suggest listing the column as categorical.
    path = _write(tmp_path / "empty.csv", "a,b,y\n1,2,0\n3,,1\n")
    message = _data_error(load_csv, path, label_column="y")
    assert "empty" in message or "missing" in message, message
    assert "categorical" not in message, message


def test_csv_empty_category(tmp_path):
    path = _write(tmp_path / "cat.csv", "a,c,y\n1,x,0\n3,,1\n")
    message = _data_error(load_csv, path, label_column="y", categorical_columns=("c",))
    assert str(path) in message
    assert "line 3" in message
    assert "'c'" in message


@pytest.mark.parametrize("label", ["", "nan", "NA", "null"])
def test_csv_missing_label(tmp_path, label):
    path = _write(tmp_path / "label.csv", f"a,y\n1,0\n2,{label}\n3,1\n")
    message = _data_error(load_csv, path, label_column="y")
    assert str(path) in message
    assert "line 3" in message
    assert "'y'" in message
    assert "missing label" in message


def test_csv_ragged_row(tmp_path):
    path = _write(tmp_path / "ragged.csv", "a,b,y\n1,2,0\n3,1\n")
    message = _data_error(load_csv, path, label_column="y")
    assert str(path) in message
    assert "line 3" in message


def test_csv_empty_file_and_header_only(tmp_path):
    empty = _write(tmp_path / "empty.csv", "")
    assert str(empty) in _data_error(load_csv, empty, label_column="y")
    header = _write(tmp_path / "header.csv", "a,y\n")
    message = _data_error(load_csv, header, label_column="y")
    assert str(header) in message
    assert "no data rows" in message


def test_csv_with_one_class_keeps_the_federation_classes(tmp_path):
    """A site holding one class still has the federation's classes (from class-names)."""
    path = _write(tmp_path / "one.csv", "a,y\n1,0\n2,0\n")
    schema = _schema(tmp_path, 'class-names = ["0", "1"]\n[[feature]]\nname = "a"\nlo = 0\nhi = 2\n')
    ds = load_csv(path, label_column="y", schema=schema)
    assert ds.num_classes == 2 and set(ds.y) == {0}


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,y\n1,caf\u00e9\n".encode("latin-1"))
    message = _data_error(load_csv, path, label_column="y")
    assert str(path) in message
    assert "UTF-8" in message


# ---- npz (MedMNIST layout) --------------------------------------------------------------

MED_CLASSES = ("normal", "benign", "malignant")


def _medmnist_arrays(rng: np.random.Generator, h: int = 6, w: int = 5) -> dict[str, np.ndarray]:
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 5)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1).astype(np.uint8)
    arrays["train_images"][0, 0, 0] = 255  # the max is reached: scaling to [0, 1] is exact
    return arrays


def test_npz_medmnist_layout(tmp_path):
    arrays = _medmnist_arrays(np.random.default_rng(0))
    path = tmp_path / "med.npz"
    np.savez(path, **arrays)
    pool, test = load_npz(path, class_names=MED_CLASSES)
    assert test is not None
    assert pool.modality is Modality.IMAGE and test.modality is Modality.IMAGE
    assert pool.x.shape == (16, 1, 6, 5)
    assert test.x.shape == (5, 1, 6, 5)
    assert pool.x.dtype == np.float32
    for ds in (pool, test):
        assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0
    np.testing.assert_allclose(pool.x[:12, 0], arrays["train_images"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(pool.x[12:, 0], arrays["val_images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(pool.y, np.concatenate([arrays["train_labels"], arrays["val_labels"]]).ravel())
    np.testing.assert_array_equal(test.y, arrays["test_labels"].ravel())
    assert pool.y.dtype == np.int64
    assert pool.num_classes == test.num_classes == 3


def test_npz_rgb_layout_is_channels_first(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 4, 5, 3), dtype=np.uint8)
    path = tmp_path / "rgb.npz"
    np.savez(path, train_images=images, train_labels=np.array([0, 1] * 3).reshape(6, 1))
    pool, test = load_npz(path, class_names=MED_CLASSES)
    assert test is None
    assert pool.x.shape == (6, 3, 4, 5)
    np.testing.assert_allclose(pool.x[2, 1], images[2, :, :, 1] / 255.0, rtol=1e-6)


def test_npz_missing_train_labels(tmp_path):
    arrays = _medmnist_arrays(np.random.default_rng(0))
    del arrays["train_labels"]
    path = tmp_path / "nolabels.npz"
    np.savez(path, **arrays)
    message = _data_error(load_npz, path, class_names=MED_CLASSES)
    assert str(path) in message
    assert "train_labels" in message


def test_npz_split_without_labels(tmp_path):
    arrays = _medmnist_arrays(np.random.default_rng(0))
    del arrays["val_labels"]
    path = tmp_path / "noval.npz"
    np.savez(path, **arrays)
    message = _data_error(load_npz, path, class_names=MED_CLASSES)
    assert str(path) in message
    assert "val_labels" in message


def test_npz_length_mismatch(tmp_path):
    arrays = _medmnist_arrays(np.random.default_rng(0))
    arrays["train_labels"] = arrays["train_labels"][:-1]
    path = tmp_path / "short.npz"
    np.savez(path, **arrays)
    message = _data_error(load_npz, path, class_names=MED_CLASSES)
    assert str(path) in message
    assert "train_labels" in message


def test_npz_missing_and_unreadable(tmp_path):
    missing = tmp_path / "missing.npz"
    assert str(missing) in _data_error(load_npz, missing, class_names=MED_CLASSES)
    garbage = _write(tmp_path / "garbage.npz", "this is not a zip file")
    message = _data_error(load_npz, garbage, class_names=MED_CLASSES)
    assert str(garbage) in message


# ---- image folder --------------------------------------------------------------------------


def _png(path: Path, size: tuple[int, int], value: int, mode: str = "L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, color=color).save(path)


def test_image_folder_loads_labels_and_shape(tmp_path):
    root = tmp_path / "images"
    for i in range(3):
        _png(root / "benign" / f"b{i}.png", (6, 4), 10 * i)
    for i in range(2):
        _png(root / "malignant" / f"m{i}.png", (6, 4), 255)
    (root / "malignant" / "notes.txt").write_text("not an image")
    ds = load_image_folder(root, class_names=("benign", "malignant"))
    assert ds.modality is Modality.IMAGE
    assert ds.num_classes == 2
    assert ds.x.shape == (5, 1, 4, 6)  # (N, C, H, W); PIL sizes are (W, H)
    assert ds.x.dtype == np.float32
    assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 1, 1])
    np.testing.assert_allclose(ds.x[1], 10 / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.x[4], 1.0)


def test_image_folder_rgb(tmp_path):
    root = tmp_path / "rgb"
    _png(root / "a" / "1.png", (3, 3), 0, mode="RGB")
    _png(root / "b" / "1.png", (3, 3), 255, mode="RGB")
    ds = load_image_folder(root, class_names=("a", "b"))
    assert ds.x.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(ds.x[1, :, 0, 0], [1.0, 0.0, 0.0])


def test_image_folder_different_sizes_names_the_file(tmp_path):
    root = tmp_path / "images"
    _png(root / "a" / "1.png", (6, 4), 0)
    _png(root / "a" / "2.png", (6, 4), 0)
    odd = root / "b" / "odd.png"
    _png(odd, (7, 4), 0)
    message = _data_error(load_image_folder, root, class_names=("a", "b"))
    assert str(odd) in message


def test_image_folder_unreadable_image_names_the_file(tmp_path):
    root = tmp_path / "images"
    _png(root / "a" / "1.png", (4, 4), 0)
    broken = root / "b" / "broken.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a png")
    message = _data_error(load_image_folder, root, class_names=("a", "b"))
    assert str(broken) in message


def test_image_folder_structure_errors(tmp_path):
    missing = tmp_path / "missing"
    assert str(missing) in _data_error(load_image_folder, missing, class_names=("a", "b"))
    unknown = tmp_path / "unknown"
    _png(unknown / "only" / "1.png", (4, 4), 0)
    message = _data_error(load_image_folder, unknown, class_names=("a", "b"))
    assert str(unknown) in message and "folder 'only'" in message and "class-names a, b" in message
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    assert str(empty) in _data_error(load_image_folder, empty, class_names=("a", "b"))


# ---- shipped sets -------------------------------------------------------------------------


def test_sklearn_breast_cancer():
    ds = load_sklearn("breast_cancer")
    assert len(ds) == 569
    assert ds.x.shape == (569, 30)
    assert ds.num_classes == 2
    assert ds.modality is Modality.TABULAR
    assert set(np.unique(ds.y)) == {0, 1}


def test_sklearn_digits():
    ds = load_sklearn("digits")
    assert ds.x.shape == (1797, 1, 8, 8)
    assert ds.num_classes == 10
    assert ds.modality is Modality.IMAGE
    assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0


def test_sklearn_unknown_name():
    message = _data_error(load_sklearn, "iris")
    assert "'iris'" in message


# ---- synthetic credit -------------------------------------------------------------------------


def test_credit_rows_are_deterministic():
    assert generate_credit_rows(50, seed=7) == generate_credit_rows(50, seed=7)
    assert generate_credit_rows(50, seed=7) != generate_credit_rows(50, seed=8)
    rows = generate_credit_rows(50, seed=7)
    assert all(len(r) == len(CREDIT_COLUMNS) for r in rows)


def test_synthetic_credit_is_deterministic():
    a, b = synthetic_credit(300, seed=3), synthetic_credit(300, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    c = synthetic_credit(300, seed=4)
    assert not np.array_equal(a.x, c.x)
    assert a.num_classes == 2
    assert a.modality is Modality.TABULAR
    # 6 numeric columns + 3 home categories + 5 purposes
    assert a.x.shape == (300, 6 + 3 + 5)
    assert 0.05 < a.y.mean() < 0.95


def test_credit_csv_round_trips_through_load_csv(tmp_path):
    path = tmp_path / "credit.csv"
    write_credit_csv(str(path), 400, seed=11)
    loaded = load_csv(path, label_column="default", schema=credit_schema())
    direct = synthetic_credit(400, seed=11)
    np.testing.assert_array_equal(loaded.x, direct.x)
    np.testing.assert_array_equal(loaded.y, direct.y)
    assert loaded.num_classes == direct.num_classes
    assert loaded.modality is direct.modality


def test_credit_rejects_non_positive_n():
    with pytest.raises(ValueError, match="n must be >= 1"):
        generate_credit_rows(0, seed=0)
