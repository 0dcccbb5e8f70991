"""``fedshield predict``: apply a run's final global model to new records.

The records get exactly the preprocessing training used, read from the run's own
``config.toml``: the feature schema's public bounds and categories for a table, the fixed pixel
rule for images, the pretrained tokenizer for texts, and the class names. A label column or
field, when the file has one, is used only to report the task's metrics; a file without one is
scored all the same. Predictions stay on the machine that runs this (nothing is released).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.config import RunConfig
from common.data.sources import load_source, source, table_schema
from common.data.tagged import TaggedTable, read_tagged, tokenize_tagged
from common.dataset import Dataset, Modality
from common.errors import ConfigError, DataError
from common.evaluation import pick_device
from common.federation import class_names, job_task, model_spec
from common.loaders import _images_to_chw, read_csv_rows, require_file, table_from_rows
from common.models import build_model, load_exchanged
from common.models.transformer import load_tokenizer
from common.tasks import Task, pooled
from common.tasks.binary_risk import BinaryRisk
from common.tasks.token_classification import TokenClassification, word_tags
from common.text_loaders import read_text_table, text_dataset
from server.report import CONFIG_FILE, METRICS_FILE, MODEL_FILE


@dataclass(frozen=True)
class Predictions:
    classes: tuple[str, ...]
    probabilities: np.ndarray  # (N, classes)
    labelled: bool  # the file had labels: ``metrics`` are the task's on them
    metrics: dict[str, float]
    task: Task
    # token-classification: the sentences read, and each one's predicted tags (one per word
    # that fit in max-length; words past it are left untagged)
    sentences: TaggedTable | None = None
    word_predictions: list[list[str]] | None = None

    @property
    def predicted(self) -> np.ndarray:
        if isinstance(self.task, BinaryRisk):
            flagged = self.probabilities[:, self.task.positive] >= self.task.threshold
            return np.where(flagged, self.task.positive, 1 - self.task.positive)
        return self.probabilities.argmax(1)


def run_config(run_dir: str | Path) -> RunConfig:
    """The configuration a run was trained with (its ``config.toml``)."""
    from simulations.scenarios import load_scenario

    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"--model {run}: not a folder (give the output folder of a fedshield run)")
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (run / name).is_file():
            raise ConfigError(f"--model {run}: no {name}; is this the output folder of a finished fedshield run?")
    return load_scenario(str(run / CONFIG_FILE))


def _classes(cfg: RunConfig) -> tuple[str, ...]:
    names = class_names(cfg)
    if not names:
        raise ConfigError(f"the run's config names no class-names for dataset {cfg.data.dataset!r}; set class-names")
    return names


def _table(cfg: RunConfig, path: Path, classes: tuple[str, ...]) -> tuple[Dataset, bool]:
    schema = table_schema(cfg)
    header, rows = read_csv_rows(path)
    label = cfg.data.label_column or (schema.label if schema else "")
    labelled = label in header
    if not labelled:  # scored all the same: a placeholder label, never reported
        header = [*header, label]
        rows = [(line, [*row, classes[0]]) for line, row in rows]
    data = table_from_rows(
        header,
        rows,
        source=str(path),
        label_column=label,
        schema=schema,
        categorical_columns=cfg.data.categorical,
        class_names=cfg.data.class_name_list,
    )
    return data, labelled


def _texts(cfg: RunConfig, path: Path, classes: tuple[str, ...]) -> tuple[Dataset, bool]:
    table = read_text_table(
        path, text_field=cfg.data.text_field, label_field=cfg.data.label_field, labels_optional=True
    )
    labelled = all(table.labels)
    if not labelled:
        table = type(table)(table.texts, [classes[0]] * len(table.texts), table.source)
    tokenizer = load_tokenizer(cfg.model.pretrained_path)
    return text_dataset(table, tokenizer, max_length=cfg.data.max_length, classes=classes), labelled


def _tagged(cfg: RunConfig, path: Path, tags: tuple[str, ...]) -> tuple[Dataset, bool, TaggedTable]:
    table = read_tagged(path, tags=tags, labels_optional=True)
    labelled = all(table.tags)
    if not labelled:
        table = TaggedTable(table.tokens, [[] for _ in table.tokens], table.source, table.lines)
    tokenizer = load_tokenizer(cfg.model.pretrained_path)
    return tokenize_tagged(table, tokenizer, max_length=cfg.data.max_length, tags=tags), labelled, table


def _npz(cfg: RunConfig, path: Path, classes: tuple[str, ...]) -> tuple[Dataset, bool]:
    require_file(path)
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
        name = next((k for k in ("images", "test_images", "train_images") if k in keys), None)
        if name is None:
            raise DataError(f"{path}: expected an array 'images' (or test_images), found {', '.join(sorted(keys))}")
        raw = np.asarray(arrays[name])
        label_key = name.replace("images", "labels")
        labelled = label_key in keys
        labels = np.asarray(arrays[label_key]).reshape(-1) if labelled else None
    except (ValueError, OSError, EOFError, AttributeError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc or type(exc).__name__})") from None
    if len(raw) == 0:
        raise DataError(f"{path}: {name} holds no images")
    if not source(cfg).user_data and np.issubdtype(raw.dtype, np.integer):
        # A built-in image set has its own pixel rule (digits: 0..16 / 16), not the 8-bit one.
        raise DataError(
            f"{path}: this run trained on {cfg.data.dataset}; give its images as floats already scaled to [0, 1]"
        )
    x = _images_to_chw(raw, f"{path}:{name}")
    if labels is None:
        return Dataset(x, np.zeros(len(x), np.int64), len(classes), Modality.IMAGE, str(path)), False
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {label_key} must be integer class indices, found dtype {labels.dtype}")
    if len(labels) != len(x) or ((labels < 0) | (labels >= len(classes))).any():
        raise DataError(f"{path}: {label_key} must hold one class index in [0, {len(classes)}) per image")
    return Dataset(x, labels.astype(np.int64), len(classes), Modality.IMAGE, str(path)), True


def load_records(cfg: RunConfig, data: str | Path) -> tuple[Dataset, bool]:
    """New records in the format the run was trained on, preprocessed as in training; and
    whether they carry labels."""
    path = Path(data).expanduser().resolve()
    classes = _classes(cfg)
    modality = source(cfg).modality
    if modality is Modality.TABULAR:
        return _table(cfg, path, classes)
    if modality is Modality.TEXT and source(cfg).tagged:
        data, labelled, _ = _tagged(cfg, path, classes)
        return data, labelled
    if modality is Modality.TEXT:
        return _texts(cfg, path, classes)
    if path.is_dir():  # an image folder, one sub-folder per class (the labels)
        folder = cfg.replace(dataset="image-folder", data_path=str(path), class_names=",".join(classes))
        return load_source(folder)[0], True
    return _npz(cfg, path, classes)


def _trained_shape(run_dir: str | Path) -> tuple[int, ...] | None:
    """The record shape the run's model was trained on (metrics.json, model.input_shape)."""
    try:
        shape = json.loads((Path(run_dir) / METRICS_FILE).read_text())["model"]["input_shape"]
        return tuple(int(d) for d in shape)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trained_model(run_dir: str | Path, cfg: RunConfig, record_shape: tuple[int, ...]) -> torch.nn.Module:
    """The run's final global model, ready to score records of ``record_shape`` (eval mode,
    on the device :func:`pick_device` picks)."""
    classes = _classes(cfg)
    shape = ",".join(str(d) for d in record_shape)
    spec = model_spec(cfg.replace(input_shape=shape, num_classes=len(classes)))
    model = build_model(spec, seed=cfg.seed)
    try:
        state = torch.load(Path(run_dir) / MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged or foreign file
        what = type(exc).__name__
        raise ConfigError(f"--model {run_dir}: {MODEL_FILE} is not a readable model file ({what})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"--model {run_dir}: {MODEL_FILE} holds a {type(state).__name__}, not a model's tensors")
    try:
        load_exchanged(model, state)
    except (ValueError, RuntimeError) as exc:  # torch says RuntimeError for a size mismatch
        raise ConfigError(f"--model {run_dir}: {MODEL_FILE} does not fit the run's model ({exc})") from None
    return model.to(pick_device()).eval()


@torch.no_grad()
def predict(run_dir: str | Path, data: str | Path) -> Predictions:
    cfg = run_config(run_dir)
    classes = _classes(cfg)
    sentences = None
    if source(cfg).tagged:
        records, labelled, sentences = _tagged(cfg, Path(data).expanduser().resolve(), classes)
    else:
        records, labelled = load_records(cfg, data)
    if len(records) == 0:
        raise DataError(f"{data}: no records")
    trained = _trained_shape(run_dir)
    if trained is not None and records.modality is not Modality.TEXT and records.record_shape != trained:
        raise DataError(
            f"{data}: records of shape {records.record_shape}, but the run's model was trained on {trained}"
        )
    model = trained_model(run_dir, cfg, records.record_shape)
    device = next(model.parameters()).device
    x = torch.as_tensor(records.x, device=device)
    task = job_task(cfg)
    if isinstance(task, TokenClassification):
        y = torch.as_tensor(records.y)
        parts = [(model(x[i : i + 256]).double().cpu(), y[i : i + 256]) for i in range(0, len(x), 256)]
        metrics = task.metrics(pooled(task.statistics(lg, yb) for lg, yb in parts)) if labelled else {}
        words = [pred for lg, yb in parts for _, pred in word_tags(lg, yb, task.tags)]
        return Predictions(classes, np.zeros((len(words), 0)), labelled, metrics, task, sentences, words)
    logits = torch.cat([model(x[i : i + 256]).double().cpu() for i in range(0, len(x), 256)])
    metrics = task.metrics(task.statistics(logits, torch.as_tensor(records.y))) if labelled else {}
    return Predictions(classes, torch.softmax(logits, 1).numpy(), labelled, metrics, task)


def entity_spans(words: list[str], tags: list[str]) -> list[dict[str, object]]:
    """The entities in one tagged sentence: type, first and last word (0-based) and text."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [
        {"type": kind, "start": start, "end": end, "text": " ".join(words[start : end + 1])}
        for kind, start, end in get_entities(tags)
    ]


def _write_tagged(result: Predictions, out: Path) -> str:
    """Token classification: one row per sentence (CSV) or object per line (.jsonl): its
    words, their predicted tags and the entity spans found."""
    assert result.sentences is not None and result.word_predictions is not None
    rows = []
    for i, (words, tags) in enumerate(zip(result.sentences.tokens, result.word_predictions, strict=True), start=1):
        cut = words[: len(tags)]
        rows.append((i, words, tags + [""] * (len(words) - len(tags)), entity_spans(cut, tags)))
    if out.suffix.lower() in (".jsonl", ".json"):
        return "".join(json.dumps({"record": i, "tokens": w, "tags": t, "entities": e}) + "\n" for i, w, t, e in rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["record", "tokens", "tags", "entities"])
    for i, words, tags, entities in rows:
        spans = "; ".join(f"{e['type']}: {e['text']} ({e['start']}-{e['end']})" for e in entities)
        writer.writerow([i, " ".join(words), " ".join(t or "-" for t in tags), spans])
    return buf.getvalue()


def write_predictions(result: Predictions, out: Path) -> Path:
    """One row per input record, in input order: the predicted class and every class's score
    (for binary-risk also the risk and whether it is flagged at the run's threshold); for token
    classification the tagged words and entity spans of each sentence."""
    if result.word_predictions is not None:
        return _atomic_text(out, _write_tagged(result, out))
    buf = io.StringIO()
    writer = csv.writer(buf)
    risk = isinstance(result.task, BinaryRisk)
    header = ["record", "predicted", *(f"score_{c}" for c in result.classes)]
    writer.writerow([*header, "risk", "flagged"] if risk else header)
    predicted = result.predicted
    for i, (row, k) in enumerate(zip(result.probabilities, predicted, strict=True), start=1):
        cells = [i, result.classes[k], *(f"{p:.6f}" for p in row)]
        if risk:
            p = row[result.task.positive]  # type: ignore[attr-defined]
            cells += [f"{p:.6f}", int(p >= result.task.threshold)]  # type: ignore[attr-defined]
        writer.writerow(cells)
    return _atomic_text(out, buf.getvalue())


def _atomic_text(out: Path, text: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
