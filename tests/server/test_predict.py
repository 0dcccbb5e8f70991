"""``fedshield predict``: a run's final model applied to new records with exactly the
preprocessing training used; labels, when present, only score the predictions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from common.credit import synthetic_credit, write_credit_csv
from common.federation import model_spec
from common.models import build_model, exchanged_state
from fedshield import cli
from server.predict import predict
from server.report import write_config, write_model
from simulations.scenarios import load_scenario


@pytest.fixture
def bank_run(tmp_path: Path) -> Path:
    """A run folder as a finished banks-credit run leaves it: config.toml and model.pt."""
    cfg = load_scenario("banks-credit").replace(out=str(tmp_path / "run"))
    model = build_model(model_spec(cfg), seed=cfg.seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # not the initial weights: the file must be read
    write_config(Path(cfg.out), cfg)
    write_model(Path(cfg.out), exchanged_state(model))
    return Path(cfg.out)


def _expected(run: Path, n: int, seed: int) -> np.ndarray:
    cfg = load_scenario(str(run / "config.toml"))
    model = build_model(model_spec(cfg), seed=cfg.seed)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    records = synthetic_credit(n, seed=seed)  # the training loader's preprocessing, schema and all
    with torch.no_grad():
        return torch.softmax(model(torch.as_tensor(records.x)).double(), 1).numpy()


def test_predictions_use_the_training_preprocessing_and_model(bank_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "applicants.csv"
    write_credit_csv(str(data), 300, seed=11)
    result = predict(bank_run, data)
    np.testing.assert_allclose(result.probabilities, _expected(bank_run, 300, 11), atol=1e-6)
    assert result.labelled and set(result.metrics) >= {"roc_auc", "pr_auc", "brier", "balanced_accuracy"}


def test_a_file_without_the_label_column_is_scored_the_same(bank_run: Path, tmp_path: Path, capsys) -> None:
    data, unlabelled = tmp_path / "applicants.csv", tmp_path / "new.csv"
    write_credit_csv(str(data), 120, seed=5)
    rows = list(csv.reader(data.open()))
    label = rows[0].index("default")
    with unlabelled.open("w", newline="") as fh:
        csv.writer(fh).writerows([r[:label] + r[label + 1 :] for r in rows])
    out = tmp_path / "predictions.csv"
    assert cli.main(["predict", "--model", str(bank_run), "--data", str(unlabelled), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 120 predictions" in printed and "roc_auc" not in printed
    written = list(csv.DictReader(out.open()))
    assert [r["record"] for r in written] == [str(i) for i in range(1, 121)]
    risk = np.array([float(r["risk"]) for r in written])
    np.testing.assert_allclose(risk, _expected(bank_run, 120, 5)[:, 1], atol=1e-5)
    assert all(r["flagged"] == str(int(float(r["risk"]) >= 0.5)) for r in written)
    assert all(r["predicted"] == ("1" if r["flagged"] == "1" else "0") for r in written)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda tmp, run: ["--model", str(tmp / "nothing"), "--data", "x.csv"], "not a folder"),
        (lambda tmp, run: ["--model", str(tmp), "--data", "x.csv"], "no config.toml"),
        (lambda tmp, run: ["--model", str(run), "--data", str(tmp / "missing.csv")], "missing.csv: data file not"),
        (lambda tmp, run: ["--model", str(run), "--data", str(_write(tmp / "b.csv", "age,income\n30,x\n"))], "b.csv"),
        (lambda tmp, run: ["--model", str(run), "--data", str(_write(tmp / "e.csv", ""))], "e.csv: file is empty"),
        (lambda tmp, run: ["--model", str(run), "--data", str(run / "model.pt"), "--out", str(tmp)], "a folder"),
    ],
)
def test_bad_input_is_one_line_exit_2(bank_run: Path, tmp_path: Path, capsys, make, needle: str) -> None:
    assert cli.main(["predict", *make(tmp_path, bank_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedshield: error: ") and needle in err, err
    assert "Traceback" not in err


def test_a_model_file_of_another_architecture_is_refused(bank_run: Path, tmp_path: Path, capsys) -> None:
    torch.save({"head.weight": torch.zeros(2, 3)}, bank_run / "model.pt")
    data = tmp_path / "a.csv"
    write_credit_csv(str(data), 10, seed=1)
    assert cli.main(["predict", "--model", str(bank_run), "--data", str(data)]) == 2
    assert "model.pt does not fit the run's model" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"not a model", b"PK\x03\x04broken"])
def test_a_damaged_model_file_is_one_line(bank_run: Path, tmp_path: Path, capsys, content: bytes) -> None:
    (bank_run / "model.pt").write_bytes(content)
    data = tmp_path / "a.csv"
    write_credit_csv(str(data), 10, seed=1)
    assert cli.main(["predict", "--model", str(bank_run), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.pt is not a readable model file" in err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_images_in_an_npz_are_scored_with_the_runs_model(tmp_path: Path, capsys) -> None:
    from common.loaders import load_sklearn

    cfg = load_scenario("hospitals-imaging").replace(out=str(tmp_path / "run"))
    model = build_model(model_spec(cfg), seed=cfg.seed)
    write_config(Path(cfg.out), cfg)
    write_model(Path(cfg.out), exchanged_state(model))
    digits = load_sklearn("digits").subset(np.arange(50))
    images = digits.x[:, 0].astype(np.float32)  # the MedMNIST layout: (N, H, W), channels last
    np.savez(tmp_path / "scans.npz", images=images, labels=digits.y)
    result = predict(cfg.out, tmp_path / "scans.npz")
    with torch.no_grad():
        expected = torch.softmax(model(torch.as_tensor(digits.x)).double(), 1).numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    assert result.labelled
    assert result.metrics["accuracy"] == pytest.approx(float((expected.argmax(1) == digits.y).mean()))
    np.savez(tmp_path / "unlabelled.npz", images=images)
    assert cli.main(["predict", "--model", cfg.out, "--data", str(tmp_path / "unlabelled.npz"),
                     "--out", str(tmp_path / "p.csv")]) == 0  # fmt: skip
    assert "wrote 50 predictions" in capsys.readouterr().out


def test_texts_are_tokenized_as_in_training(tmp_path: Path, tiny_text_model: Path, capsys) -> None:
    import json

    from common.models.transformer import load_tokenizer
    from common.notes import synthetic_notes
    from common.text_loaders import text_dataset

    cfg = load_scenario("clinical-notes").replace(
        pretrained_path=str(tiny_text_model), random_init=True, synthetic_records=40, out=str(tmp_path / "run")
    )
    model = build_model(model_spec(cfg), seed=cfg.seed)
    write_config(Path(cfg.out), cfg)
    write_model(Path(cfg.out), exchanged_state(model))
    notes = synthetic_notes(20, seed=3)
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in notes.texts))
    result = predict(cfg.out, tmp_path / "notes.jsonl")
    records = text_dataset(
        notes, load_tokenizer(cfg.model.pretrained_path), max_length=cfg.data.max_length, classes=cfg_classes(cfg)
    )
    with torch.no_grad():
        expected = torch.softmax(model(torch.as_tensor(records.x)).double(), 1).numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    assert not result.labelled
    labelled = tmp_path / "labelled.jsonl"
    pairs = zip(notes.texts, notes.labels, strict=True)
    labelled.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in pairs))
    assert cli.main(["predict", "--model", cfg.out, "--data", str(labelled), "--out", str(tmp_path / "p.csv")]) == 0
    assert "accuracy" in capsys.readouterr().out


def cfg_classes(cfg) -> tuple[str, ...]:
    from common.federation import class_names

    return class_names(cfg)


@pytest.fixture
def digits_run(tmp_path: Path) -> Path:
    import json

    cfg = load_scenario("hospitals-imaging").replace(out=str(tmp_path / "digits-run"))
    model = build_model(model_spec(cfg), seed=cfg.seed)
    write_config(Path(cfg.out), cfg)
    write_model(Path(cfg.out), exchanged_state(model))
    (Path(cfg.out) / "metrics.json").write_text(json.dumps({"model": {"input_shape": [1, 8, 8]}}))
    return Path(cfg.out)


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"images": np.zeros((0, 8, 8), np.float32)}, "holds no images"),
        ({"images": np.zeros((3, 8, 8, 3), np.float32)}, "records of shape (3, 8, 8)"),  # RGB for a gray model
        ({"images": np.zeros((3, 28, 28), np.float32)}, "trained on (1, 8, 8)"),  # another size
        ({"images": np.zeros((3, 8, 8), np.uint8)}, "floats already scaled to [0, 1]"),  # digits' own pixel rule
        ({"images": np.zeros((3, 8, 8), np.float32), "labels": np.array(["a", "b", "c"])}, "integer class indices"),
        ({"images": np.zeros((3, 8, 8), np.float32), "labels": np.array([0.5, 1.7, 2.0])}, "integer class indices"),
    ],
)
def test_bad_images_are_one_line_errors(digits_run: Path, tmp_path: Path, capsys, arrays, needle: str) -> None:
    np.savez(tmp_path / "scans.npz", **arrays)
    assert cli.main(["predict", "--model", str(digits_run), "--data", str(tmp_path / "scans.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize("content", [b"PK\x03\x04broken", b"\x00" * 10])
def test_a_damaged_npz_is_one_line(digits_run: Path, tmp_path: Path, capsys, content: bytes) -> None:
    (tmp_path / "scans.npz").write_bytes(content)
    assert cli.main(["predict", "--model", str(digits_run), "--data", str(tmp_path / "scans.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable .npz" in err, err
