"""``fedshield monitor``: score a time-ordered stream of texts with a run's sentiment model, and
raise an alert when the share of negative texts surges.

The stream is JSON lines (``{"time": ..., "text": ...}``) or a CSV with those columns; a time is
an ISO 8601 date-time (``2026-03-04T10:15:00Z``; without a zone it is UTC) or seconds since the
epoch. Texts are grouped into windows, by time (``--window 1h``, ``30m``, ``1d``, ``90s``;
aligned to the epoch, so hours start on the hour) or by count (``--window 500``: every 500
texts). Per window: the number of texts and the share predicted ``negative``.

**Change detection** against a baseline share ``p0`` (the pooled share of the first
``baseline`` windows, or a share given with ``--baseline-share``). A window of ``n`` texts with
share ``x`` gives the standardised excess ``z = (x - p0) / sqrt(p0 (1 - p0) / n)`` (binomial
standard error, so small windows weigh less):

- ``cusum`` (default; Page 1954, "Continuous inspection schemes", Biometrika 41): one-sided
  upper CUSUM ``S_t = max(0, S_{t-1} + z_t - k)`` with allowance ``k`` (``--drift``, default 1)
  and decision interval ``h`` (``--threshold``, default 8): an alert starts when ``S_t > h``;
- ``ewma`` (Roberts 1959, "Control chart tests based on geometric moving averages",
  Technometrics 1): ``E_t = lam x_t + (1 - lam) E_{t-1}``, ``E_0 = p0``, alert when
  ``E_t > p0 + L sigma_t sqrt(lam / (2 - lam))`` with ``lam`` (``--ewma-lambda``, 0.2) and ``L``
  (``--threshold``, default 4).

The defaults were chosen on generated streams (``tests/server/test_monitor.py``; 48 hourly
windows of about 200 headlines, 20% negative): no false alarm in 40 calm streams for either
detector, and a 3-hour surge to 65% negative found in its first window in 20 of 20 (CUSUM).

One alert covers one excursion: it starts at the first window past the limit and lasts until
a window is back in control (its excess ``z`` within the allowance ``k``), after which the
chart restarts (CUSUM at 0, EWMA at ``p0``). The CUSUM also estimates when
the rise began (the window after the statistic was last 0: ``onset``). Windows without texts are
skipped. Nothing here is released to anyone: the scores stay on the machine that runs it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError
from common.loaders import require_file

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "day": 86400}


@dataclass(frozen=True)
class WindowSpec:
    seconds: float = 0.0  # time windows of this length, or
    count: int = 0  # windows of this many texts

    def __str__(self) -> str:
        return f"{self.count} texts" if self.count else _duration(self.seconds)


def parse_window(text: str) -> WindowSpec:
    """``"1h"``, ``"30m"``, ``"2d"``, ``"90s"`` (time) or ``"500"`` (count)."""
    value = text.strip().lower()
    if value.isdigit():
        if int(value) < 1:
            raise ConfigError(f"--window must be a positive count or a duration such as 1h, got {text!r}")
        return WindowSpec(count=int(value))
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", value)
    if not match or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"--window must be a count (500) or a duration (90s, 30m, 1h, 1d), got {text!r}")
    return WindowSpec(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Stream:
    times: np.ndarray  # seconds since the epoch, non-decreasing
    texts: list[str]
    source: str


def _parse_time(value: object, path: Path, line: int, field_name: str) -> float:
    if isinstance(value, bool):
        raise DataError(f"{path}: line {line}, field {field_name!r}: expected a time, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise DataError(f"{path}: line {line}, field {field_name!r}: expected a time, got {value!r}")
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise DataError(
            f"{path}: line {line}, field {field_name!r}: {text[:40]!r} is not an ISO 8601 time or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def read_stream(path: str | Path, *, time_field: str = "time", text_field: str = "text") -> Stream:
    """The stream's times and texts, in file order; a time earlier than the line before it is
    an error naming both lines (the monitor reads a stream in order)."""
    path = Path(path)
    require_file(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise DataError(f"{path}: a stream must be JSON lines (.jsonl) or CSV, got {suffix or 'no extension'!r}")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    rows: list[tuple[int, dict]] = []
    if suffix == ".csv":
        reader = csv.DictReader(content.splitlines())
        if not reader.fieldnames:
            raise DataError(f"{path}: empty file (expected a header row with {time_field}, {text_field})")
        rows = [(reader.line_num, row) for row in reader]
    else:
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
    if not rows:
        raise DataError(f"{path}: no texts")
    times = np.empty(len(rows))
    texts: list[str] = []
    previous = (-math.inf, 0)
    for i, (line, row) in enumerate(rows):
        for name in (time_field, text_field):
            if row.get(name) in (None, ""):
                fields = ", ".join(str(k) for k in row if k is not None)
                raise DataError(f"{path}: line {line}: no field {name!r} (fields are {fields})")
        moment = _parse_time(row[time_field], path, line, time_field)
        if moment < previous[0]:
            raise DataError(
                f"{path}: line {line}, field {time_field!r}: earlier than line {previous[1]}; "
                "the stream must be in time order (sort it first)"
            )
        if not isinstance(row[text_field], str):
            raise DataError(f"{path}: line {line}, field {text_field!r}: expected a string, got {row[text_field]!r}")
        times[i] = moment
        previous = (moment, line)
        texts.append(row[text_field])
    return Stream(times, texts, str(path))


@dataclass
class Window:
    start: float  # seconds since the epoch (count windows: time of the first text)
    end: float
    texts: int
    negative: int
    share: float | None  # None when the window has no texts
    statistic: float | None = None  # the detector's statistic after this window
    limit: float | None = None
    alert: bool = False  # inside an alert


def windows(times: np.ndarray, negative: np.ndarray, spec: WindowSpec) -> list[Window]:
    """Per window: texts, negative texts and their share (time windows include empty ones)."""
    out: list[Window] = []
    if spec.count:
        for at in range(0, len(times), spec.count):
            n = min(spec.count, len(times) - at)
            neg = int(negative[at : at + n].sum())
            out.append(Window(float(times[at]), float(times[at + n - 1]), n, neg, neg / n))
        return out
    width = spec.seconds
    index = np.floor(times / width).astype(np.int64)
    first, last = int(index[0]), int(index[-1])
    if last - first > 1_000_000:
        raise ConfigError(f"--window {_duration(width)} gives {last - first + 1:,} windows; use a longer window")
    counts = np.bincount(index - first, minlength=last - first + 1)
    negatives = np.bincount(index - first, weights=negative.astype(np.float64), minlength=last - first + 1)
    for k, (n, neg) in enumerate(zip(counts, negatives, strict=True)):
        start = (first + k) * width
        out.append(Window(start, start + width, int(n), int(neg), float(neg) / n if n else None))
    return out


@dataclass(frozen=True)
class Detector:
    kind: str = "cusum"  # cusum | ewma
    threshold: float | None = None  # h (cusum, default 5) or L (ewma, default 3)
    drift: float = 1.0  # allowance k (standard errors): cusum's, and the "back in control" rule
    ewma_lambda: float = 0.2
    baseline_windows: int = 24
    baseline_share: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("cusum", "ewma"):
            raise ConfigError(f"--detector must be cusum or ewma, got {self.kind!r}")
        if self.threshold is not None and not self.threshold > 0:
            raise ConfigError(f"--threshold must be > 0, got {self.threshold}")
        if not self.drift >= 0:
            raise ConfigError(f"--drift must be >= 0, got {self.drift}")
        if not 0 < self.ewma_lambda <= 1:
            raise ConfigError(f"--ewma-lambda must be in (0, 1], got {self.ewma_lambda}")
        if self.baseline_windows < 1:
            raise ConfigError(f"--baseline must be >= 1 window, got {self.baseline_windows}")
        if self.baseline_share is not None and not 0 < self.baseline_share < 1:
            raise ConfigError(f"--baseline-share must be in (0, 1), got {self.baseline_share}")

    @property
    def limit(self) -> float:
        return self.threshold if self.threshold is not None else (8.0 if self.kind == "cusum" else 4.0)


@dataclass
class Alert:
    start: float  # the first window past the limit
    end: float  # the end of the last window of the excursion
    detected_window: int  # its index
    onset: float = 0.0  # cusum: the start of the rise that led to the alert (the change-point estimate)
    windows: int = 1
    peak_share: float = 0.0
    texts: int = 0
    negative: int = 0


@dataclass
class Detection:
    baseline: float
    baseline_from: str
    alerts: list[Alert] = field(default_factory=list)


def detect(wins: list[Window], detector: Detector) -> Detection:
    """Run the detector over ``wins`` (filling each window's statistic); the alerts found."""
    if detector.baseline_share is not None:
        p0, origin = detector.baseline_share, "given (--baseline-share)"
    else:
        base = [w for w in wins[: detector.baseline_windows] if w.texts]
        if not base:
            raise DataError(f"the first {detector.baseline_windows} windows hold no texts: no baseline to compare with")
        total = sum(w.texts for w in base)
        p0 = sum(w.negative for w in base) / total
        p0 = min(max(p0, 0.5 / total), 1 - 0.5 / total)  # a share of 0 or 1 has no spread
        origin = f"first {min(detector.baseline_windows, len(wins))} windows ({total} texts)"
    result = Detection(p0, origin)
    state = 0.0 if detector.kind == "cusum" else p0
    current: Alert | None = None
    rising_since = 0  # cusum: the window after the statistic was last 0 (the change-point estimate)
    for i, w in enumerate(wins):
        if not w.texts or w.share is None:
            continue
        sigma = math.sqrt(p0 * (1 - p0) / w.texts)
        z = (w.share - p0) / sigma
        back = current is not None and z <= detector.drift  # this window is back in control
        if detector.kind == "cusum":
            state = 0.0 if back else max(0.0, state + z - detector.drift)  # restart after an excursion
            if state == 0.0:
                rising_since = i + 1
            limit = detector.limit
        else:
            lam = detector.ewma_lambda
            state = p0 if back else lam * w.share + (1 - lam) * state
            limit = p0 + detector.limit * sigma * math.sqrt(lam / (2 - lam))
        over = state > limit
        w.statistic, w.limit = state, limit
        if current is None and over:
            onset = wins[min(rising_since, i)].start if detector.kind == "cusum" else w.start
            current = Alert(w.start, w.end, i, onset=onset)
            result.alerts.append(current)
        if current is not None:
            if back:
                current = None
                continue
            w.alert = True
            current.end, current.windows = w.end, i - current.detected_window + 1
            current.peak_share = max(current.peak_share, w.share)
            current.texts += w.texts
            current.negative += w.negative
    return result


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S").removesuffix(":00") + " UTC"


def alert_line(alert: Alert, detection: Detection, detector: Detector) -> str:
    rise = f"; rise began {_when(alert.onset)}" if detector.kind == "cusum" else ""
    return (
        f"ALERT {_when(alert.start)} to {_when(alert.end)}: negative share up to {alert.peak_share:.2f} "
        f"(baseline {detection.baseline:.2f}); {alert.negative} of {alert.texts} texts negative over "
        f"{alert.windows} window(s); {detector.kind} past {detector.limit:g}{rise}"
    )


@dataclass(frozen=True)
class MonitorResult:
    stream: str
    window: str
    detector: Detector
    detection: Detection
    windows: list[Window]
    texts: int
    seconds: float  # scoring time (tokenizing and the model)

    @property
    def throughput(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else math.inf

    def as_json(self) -> dict:
        return {
            "stream": self.stream,
            "window": self.window,
            "detector": asdict(self.detector) | {"limit": self.detector.limit},
            "baseline_share": self.detection.baseline,
            "baseline_from": self.detection.baseline_from,
            "texts": self.texts,
            "scoring_seconds": round(self.seconds, 3),
            "texts_per_second": round(self.throughput, 1),
            "alerts": [
                asdict(a) | {"start_utc": _when(a.start), "end_utc": _when(a.end)} for a in self.detection.alerts
            ],
            "windows": [asdict(w) for w in self.windows],
        }


def monitor(
    stream: Stream,
    negative_of: Callable[[list[str]], np.ndarray],
    *,
    window: WindowSpec,
    detector: Detector,
    progress: Callable[[str], None] | None = None,
    batch: int = 1024,
) -> MonitorResult:
    """Score ``stream`` in batches with ``negative_of`` (texts -> bool array: predicted
    negative) and run the detector over its windows."""
    started = time.perf_counter()
    flags = np.zeros(len(stream.texts), dtype=bool)
    shown = started
    for at in range(0, len(stream.texts), batch):
        flags[at : at + batch] = negative_of(stream.texts[at : at + batch])
        now = time.perf_counter()
        if progress is not None and (now - shown > 5 or at + batch >= len(stream.texts)):
            done = min(at + batch, len(stream.texts))
            progress(f"scored {done:,} of {len(stream.texts):,} texts ({done / (now - started):,.0f}/s)")
            shown = now
    seconds = time.perf_counter() - started
    wins = windows(stream.times, flags, window)
    detection = detect(wins, detector)
    return MonitorResult(stream.source, str(window), detector, detection, wins, len(stream.texts), seconds)


def write_outputs(result: MonitorResult, out: Path) -> tuple[Path, Path]:
    """``alerts.json`` (windows, baseline, alerts) and ``monitor.png`` (the negative share per
    window, the baseline, and the alerts shaded) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / "alerts.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.as_json(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    fig, ax = plt.subplots(figsize=(11, 4))
    shown = [w for w in result.windows if w.share is not None]
    hours = [(w.start - result.windows[0].start) / 3600 for w in shown]
    ax.plot(hours, [w.share for w in shown], marker=".", lw=1, label="negative share per window")
    ax.axhline(result.detection.baseline, color="grey", ls="--", label=f"baseline {result.detection.baseline:.2f}")
    for i, alert in enumerate(result.detection.alerts):
        left = (alert.start - result.windows[0].start) / 3600
        right = (alert.end - result.windows[0].start) / 3600
        ax.axvspan(left, max(right, left + 1e-3), color="red", alpha=0.2, label="alert" if i == 0 else None)
        ax.axvline(left, color="red", lw=1)
    ax.set_xlabel(f"hours since {_when(result.windows[0].start)}")
    ax.set_ylabel("share negative")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"Sentiment monitor: {len(result.detection.alerts)} alert(s), {result.detector.kind}, window {result.window}"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    plot = out / "monitor.png"
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    return path, plot


def print_progress(line: str) -> None:
    print(f"fedshield: {line}", file=sys.stderr, flush=True)


def text_scorer(run_dir: str | Path, negative_label: str = "negative") -> Callable[[list[str]], np.ndarray]:
    """texts -> whether the run's final model predicts ``negative_label`` for each, with the
    run's own tokenizer and max-length."""
    import torch

    from common.config import TaskKind
    from common.data.sources import source
    from common.dataset import Modality
    from common.models.transformer import load_tokenizer
    from common.text_loaders import tokenize
    from server.predict import _classes, run_config, trained_model

    cfg = run_config(run_dir)
    if source(cfg).modality is not Modality.TEXT or cfg.task.kind != TaskKind.CLASSIFICATION:
        raise ConfigError(
            f"--model {run_dir}: the run classifies {source(cfg).modality} records with task {cfg.task.kind!r}; "
            "the monitor needs a text classifier (e.g. scenario banks-sentiment)"
        )
    classes = _classes(cfg)
    if negative_label not in classes:
        raise ConfigError(f"--negative-label {negative_label!r} is not one of the run's classes {', '.join(classes)}")
    negative = classes.index(negative_label)
    tokenizer = load_tokenizer(cfg.model.pretrained_path)
    model = trained_model(run_dir, cfg, (cfg.data.max_length,))
    device = next(model.parameters()).device

    @torch.no_grad()
    def negative_of(texts: list[str]) -> np.ndarray:
        ids = torch.as_tensor(tokenize(texts, tokenizer, max_length=cfg.data.max_length), device=device)
        predicted = torch.cat([model(ids[i : i + 256]).argmax(1) for i in range(0, len(ids), 256)])
        return (predicted == negative).cpu().numpy()

    return negative_of
