"""common.array_record reads a Flower ArrayRecord as Flower does (the same values, dtypes,
shapes and order) without numpy.load's header parsing, and leaves anything unusual to Flower."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common import array_record

DTYPES = st.sampled_from(["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool"])


ARRAYS = DTYPES.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))


@settings(max_examples=60, deadline=None)
@given(arrays=st.lists(ARRAYS, min_size=1, max_size=5))
def test_the_same_arrays_as_flowers_reader(arrays: list[np.ndarray]) -> None:
    record = ArrayRecord({f"t{i}": Array(a) for i, a in enumerate(arrays)})
    ours, theirs = array_record.to_numpy_ndarrays(record), record.to_numpy_ndarrays()
    for got, want in zip(ours, theirs, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable and got.flags.c_contiguous
    state = array_record.to_torch_state_dict(record)
    assert list(state) == list(record.to_torch_state_dict())
    for got, want in zip(state.values(), record.to_torch_state_dict().values(), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.numpy(), want.numpy())  # NaN equal to NaN


def test_the_values_are_a_copy_of_their_own() -> None:
    record = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    first = array_record.to_torch_state_dict(record)["w"]
    first.add_(100)
    assert float(array_record.to_torch_state_dict(record)["w"][0, 0]) == 0.0


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_other_headers_go_to_flowers_reader() -> None:
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    record = ArrayRecord({"f": Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=_npy(fortran))})
    np.testing.assert_array_equal(array_record.to_numpy_ndarrays(record)[0], fortran)


@pytest.mark.parametrize(
    "declared",
    [("float64", (2, 3)), ("float32", (3, 2)), ("float32", (6,))],
    ids=["dtype", "shape", "rank"],
)
def test_a_header_that_disagrees_with_the_declared_array_is_not_read_fast(declared) -> None:
    """The declared dtype and shape and the byte count must all agree with the header, or
    Flower's reader decides (what the site received before this module)."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    dtype, shape = declared
    record = ArrayRecord({"w": Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=_npy(values))})
    got = array_record.to_numpy_ndarrays(record)[0]
    want = record.to_numpy_ndarrays()[0]
    assert got.dtype == want.dtype and got.shape == want.shape


def test_a_truncated_array_is_refused_as_flower_refuses_it() -> None:
    data = _npy(np.arange(6, dtype=np.float32))[:-4]
    record = ArrayRecord({"w": Array(dtype="float32", shape=(6,), stype="numpy.ndarray", data=data)})
    with pytest.raises(ValueError):
        record.to_numpy_ndarrays()
    with pytest.raises(ValueError):
        array_record.to_numpy_ndarrays(record)


def test_a_pickled_array_is_refused() -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    record = ArrayRecord({"w": Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())})
    with pytest.raises(ValueError):
        array_record.to_numpy_ndarrays(record)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int64", "int8", "uint8", "bool"])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 3, 1, 2)])
def test_what_numpy_writes_for_a_plain_array_is_read_without_numpy_load(monkeypatch, dtype: str, shape) -> None:
    values = np.arange(int(np.prod(shape)) or 0).astype(dtype).reshape(shape)
    record = ArrayRecord({"w": Array(values)})

    def refuse(self) -> np.ndarray:
        raise AssertionError("took Flower's reader")

    monkeypatch.setattr(Array, "numpy", refuse)
    got = array_record.to_numpy_ndarrays(record)[0]
    assert got.dtype == values.dtype and got.shape == values.shape and np.array_equal(got, values)


def _with_header(header: bytes, body: bytes) -> bytes:
    header = header + b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body


def _outcome(read, record: ArrayRecord):
    try:
        arrays = read(record)
    except Exception as exc:  # noqa: BLE001  (the type is what is compared)
        return type(exc)
    return [(a.dtype, a.shape, a.tobytes()) for a in arrays]


@pytest.mark.parametrize(
    "declared_dtype, header",
    [
        ("nonsense", b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"),  # Flower ignores the field
        ("float32", b"{'descr': '<f3', 'fortran_order': False, 'shape': (2,), }"),  # no such dtype
        ("float32", b"{'descr': '<i3', 'fortran_order': False, 'shape': (2,), }"),
        ("float32", b"{'descr': '<f4', 'fortran_order': False, 'shape': (,), }"),  # numpy refuses the shape
        ("float32", b"{'descr': '<f4', 'fortran_order': False, 'shape': (02,), }"),
        ("object", b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"),
    ],
    ids=["declared-nonsense", "f3", "i3", "empty-shape", "leading-zero", "object"],
)
def test_a_crafted_array_is_read_or_refused_as_flower_does(declared_dtype: str, header: bytes) -> None:
    """Found in review: a descr numpy cannot parse, or a declared dtype that names none, raised
    TypeError here where Flower's reader raises ValueError or reads the array; a site catches
    ValueError (a recorded refusal), so anything else would escape as a crash."""
    body = np.arange(2, dtype=np.float32).tobytes()
    array = Array(dtype=declared_dtype, shape=(2,), stype="numpy.ndarray", data=_with_header(header, body))
    record = ArrayRecord({"w": array})
    assert _outcome(array_record.to_numpy_ndarrays, record) == _outcome(lambda r: r.to_numpy_ndarrays(), record)
