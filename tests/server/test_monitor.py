"""The sentiment monitor's stream reader, windows and change detectors, on generated streams
whose truth is known (a planted surge of negative news, or none)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data.headlines import SENTIMENTS, Surge, headline_stream, synthetic_headlines
from common.errors import ConfigError, DataError
from server.monitor import (
    Detector,
    Stream,
    WindowSpec,
    monitor,
    parse_window,
    read_stream,
    windows,
    write_outputs,
)

T0 = 494_444 * 3600.0  # an hour in 2026 (epoch seconds)
SURGE = Surge(start=30 * 3600.0, end=33 * 3600.0, negative_share=0.65)


def _truth(times: np.ndarray, labels: list[str]):
    """A scorer that knows the generated labels (the detector is under test here, not a model)."""
    lookup = {}

    def negative_of(texts: list[str]) -> np.ndarray:
        return np.array([lookup[t] for t in texts])

    return negative_of, lookup


def _stream(surge: Surge | None, seed: int, n: int = 9600) -> tuple[Stream, list[str]]:
    times, table = headline_stream(n, seed=seed, hours=48, negative_share=0.2, surge=surge)
    return Stream(T0 + times, table.texts, "generated"), table.labels


def _run(stream: Stream, labels: list[str], detector: Detector, window: str = "1h"):
    flags = iter(np.array(labels) == "negative")
    return monitor(stream, lambda texts: np.array([next(flags) for _ in texts]), window=parse_window(window),
                   detector=detector)  # fmt: skip


@pytest.mark.parametrize("kind", ["cusum", "ewma"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_planted_surge_is_found_at_the_right_window(kind: str, seed: int) -> None:
    stream, labels = _stream(SURGE, seed)
    result = _run(stream, labels, Detector(kind))
    assert len(result.detection.alerts) == 1, [a.start for a in result.detection.alerts]
    alert = result.detection.alerts[0]
    # the surge starts at hour 30: found within its first two windows, not before it
    assert T0 + SURGE.start <= alert.start <= T0 + SURGE.start + 2 * 3600
    assert T0 + SURGE.end - 3600 <= alert.end <= T0 + SURGE.end + 3 * 3600  # and ends with it
    if kind == "cusum":
        assert T0 + SURGE.start - 3600 <= alert.onset <= alert.start
    assert alert.peak_share > 0.5 and 0.15 < result.detection.baseline < 0.25


@pytest.mark.parametrize("kind", ["cusum", "ewma"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_calm_stream_raises_no_alert(kind: str, seed: int) -> None:
    stream, labels = _stream(None, seed)
    assert _run(stream, labels, Detector(kind)).detection.alerts == []


def test_count_windows_find_the_surge_too() -> None:
    stream, labels = _stream(SURGE, 0)
    result = _run(stream, labels, Detector(), window="200")
    assert len(result.detection.alerts) == 1
    assert T0 + SURGE.start - 3600 <= result.detection.alerts[0].start <= T0 + SURGE.start + 2 * 3600
    assert all(w.texts == 200 for w in result.windows[:-1])


def test_windows_align_to_the_hour_and_keep_empty_ones() -> None:
    times = np.array([T0 + 10, T0 + 20, T0 + 2 * 3600 + 5])
    wins = windows(times, np.array([True, False, True]), WindowSpec(seconds=3600))
    assert [(w.start - T0, w.texts, w.negative, w.share) for w in wins] == [
        (0.0, 2, 1, 0.5), (3600.0, 0, 0, None), (7200.0, 1, 1, 1.0)
    ]  # fmt: skip


def test_a_given_baseline_share_is_used_as_is() -> None:
    stream, labels = _stream(SURGE, 0)
    result = _run(stream, labels, Detector(baseline_share=0.7))
    assert result.detection.baseline == 0.7 and result.detection.alerts == []  # nothing is above 0.7 for long


@pytest.mark.parametrize(
    ("text", "spec"),
    [("1h", WindowSpec(seconds=3600)), ("30m", WindowSpec(seconds=1800)), ("2d", WindowSpec(seconds=172800)),
     ("90s", WindowSpec(seconds=90)), ("500", WindowSpec(count=500)), ("1.5h", WindowSpec(seconds=5400))],
)  # fmt: skip
def test_window_specs(text: str, spec: WindowSpec) -> None:
    assert parse_window(text) == spec


@pytest.mark.parametrize("text", ["0", "h", "1 fortnight", "-1h", "0h", ""])
def test_bad_window_specs_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ConfigError, match="--window must be"):
        parse_window(text)


def test_streams_read_from_jsonl_and_csv_alike(tmp_path: Path) -> None:
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text(
        '{"time": "2026-03-04T10:00:00Z", "text": "a"}\n{"time": "2026-03-04T10:30:00", "text": "b"}\n'
        '{"time": 1772622000, "text": "c"}\n'
    )
    csv_file = tmp_path / "s.csv"
    csv_file.write_text('time,text\n2026-03-04T10:00:00Z,a\n2026-03-04T10:30:00+00:00,b\n1772622000,"c"\n')
    a, b = read_stream(jsonl), read_stream(csv_file)
    assert a.texts == b.texts == ["a", "b", "c"]
    assert list(a.times) == list(b.times) == [1772618400.0, 1772620200.0, 1772622000.0]


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ('{"time": 2, "text": "a"}\n{"time": 1, "text": "b"}\n', ("line 2", "earlier than line 1", "time order")),
        ('{"time": "yesterday", "text": "a"}\n', ("line 1", "field 'time'", "'yesterday'", "ISO 8601")),
        ('{"when": 1, "text": "a"}\n', ("line 1", "no field 'time'", "when, text")),
        ('{"time": 1, "text": 5}\n', ("line 1", "field 'text'", "expected a string")),
        ('{"time": 1,\n', ("line 1", "invalid JSON")),
        ("", ("no texts",)),
    ],
)
def test_bad_streams_name_the_file_line_and_field(tmp_path: Path, content: str, needles) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        read_stream(path)
    assert str(info.value).startswith(str(path))
    for needle in needles:
        assert needle in str(info.value)


def test_bad_detector_settings_are_refused() -> None:
    for bad, message in (
        (dict(kind="shewhart"), "--detector"),
        (dict(threshold=0), "--threshold"),
        (dict(ewma_lambda=0), "--ewma-lambda"),
        (dict(baseline_windows=0), "--baseline"),
        (dict(baseline_share=1.0), "--baseline-share"),
    ):
        with pytest.raises(ConfigError, match=message):
            Detector(**bad)


def test_outputs_are_json_and_a_plot(tmp_path: Path) -> None:
    stream, labels = _stream(SURGE, 0)
    result = _run(stream, labels, Detector())
    alerts, plot = write_outputs(result, tmp_path)
    doc = json.loads(alerts.read_text())
    assert len(doc["alerts"]) == 1 and doc["alerts"][0]["start_utc"].endswith("UTC")
    assert len(doc["windows"]) == 48 and doc["texts"] == 9600
    assert plot.stat().st_size > 10_000


def test_the_generator_is_documented_and_deterministic() -> None:
    a = synthetic_headlines(300, seed=0)
    assert a == synthetic_headlines(300, seed=0) and a != synthetic_headlines(300, seed=1)
    assert set(a.labels) == set(SENTIMENTS)
    assert all(5 <= len(t.split()) <= 16 for t in a.texts)
    shares = np.mean(np.array(synthetic_headlines(3000, seed=0, negative_share=0.6).labels) == "negative")
    assert 0.57 < shares < 0.63
