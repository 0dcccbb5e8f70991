"""The last released update, kept to re-send it: read back exactly, and nothing else is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client import last_update
from client.last_update import LastUpdate


def _update() -> LastUpdate:
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((3, 4)).astype(np.float32), np.zeros(0, np.float32), np.float64(2.5) * np.ones(2)]
    return LastUpdate("job-1", 3, ["w", "empty", "b"], weights, {"num-examples": 40, "epsilon": 0.5})


def test_an_update_reads_back_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "last"
    last_update.save(path, _update())
    back = last_update.load(path)
    assert back is not None
    assert (back.job, back.round, back.names, back.metrics) == ("job-1", 3, ["w", "empty", "b"], _update().metrics)
    for got, want in zip(back.weights, _update().weights, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-3],  # torn: a crash mid-write
        lambda data: data + b"\0",  # bytes beyond the arrays
        lambda data: b"not json\n" + data,
        lambda data: data.replace(b'"<f4"', b'"|O8"', 1),  # an object array would unpickle
        lambda data: b"",
        lambda data: data.replace(b'"shape": [3, 4]', b'"shape": [1e999, 4]', 1),
        lambda data: data.replace(b'"shape": [3, 4]', b'"shape": [1180591620717411303424, 4]', 1),
        lambda data: data.replace(b'"round": 3', b'"round": 1e999', 1),
        lambda data: b"[" * 100_000 + b"\n" + data,
    ],
    ids=["torn", "trailing", "header", "object-dtype", "empty", "inf-shape", "huge-shape", "inf-round", "deep"],
)
def test_a_damaged_file_is_no_update(tmp_path: Path, damage) -> None:
    path = tmp_path / "last"
    last_update.save(path, _update())
    path.write_bytes(damage(path.read_bytes()))
    assert last_update.load(path) is None


def test_a_missing_file_is_no_update(tmp_path: Path) -> None:
    assert last_update.load(tmp_path / "absent") is None


def test_a_smaller_update_written_over_a_larger_one_reads_back_alone(tmp_path: Path) -> None:
    """The file is overwritten in place (no truncation to zero): nothing of the older, larger
    update may remain after the newer one."""
    path = tmp_path / "last"
    large = LastUpdate("job-long-name", 12, ["w"], [np.ones((50, 50), np.float32)], {"epsilon": 0.25})
    last_update.save(path, large)
    last_update.save(path, _update())
    back = last_update.load(path)
    assert back is not None and back.job == "job-1" and back.names == ["w", "empty", "b"]
    assert path.stat().st_size < 2500 * 4
    last_update.save(path, large)
    again = last_update.load(path)
    assert again is not None and np.array_equal(again.weights[0], large.weights[0])
