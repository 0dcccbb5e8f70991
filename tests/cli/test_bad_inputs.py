"""The bad-input battery: more than a hundred mistakes a new user or a hostile tester makes,
each run through the real command line (in this process, as ``fedshield`` would run it).

Every case must end with exactly one ``fedshield: error: ...`` line on stderr naming the path,
field or value at fault, exit status 2, no traceback, nothing on stdout, and no run started
(no ``metrics.json``, no Ray). A case that slipped through would start a simulation and fail
here, loudly and slowly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedshield.cli import main

# ---- files a case may need --------------------------------------------------------------

ROWS = "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(60))
SCHEMA = """label = "y"
class-names = ["0", "1"]
[[feature]]
name = "a"
lo = 0.0
hi = 10.0
[[feature]]
name = "b"
lo = 0.0
hi = 10.0
"""


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _schema(tmp: Path) -> Path:
    return _write(tmp / "schema.toml", SCHEMA)


def _csv_case(body: str | bytes, *extra: str) -> Callable[[Path], list[str]]:
    """A --dataset csv run on a file holding ``body``, with the valid schema above."""

    def build(tmp: Path) -> list[str]:
        data = _write(tmp / "data.csv", body)
        return [
            "--dataset",
            "csv",
            "--data-path",
            str(data),
            "--label-column",
            "y",
            "--set",
            f"feature-schema={_schema(tmp)}",
            *extra,
        ]

    return build


def _text_case(body: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        data = _write(tmp / "notes.jsonl", body)
        return [
            "--scenario",
            "clinical-notes",
            "--dataset",
            "text",
            "--data-path",
            str(data),
            "--set",
            "class-names=cardiology,neurology",
        ]

    return build


def _npz_case(arrays: dict[str, np.ndarray] | None, raw: bytes | None = None) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        path = tmp / "images.npz"
        if raw is not None:
            _write(path, raw)
        else:
            np.savez(path, **arrays)
        return [
            "--scenario",
            "hospitals-imaging",
            "--dataset",
            "npz",
            "--data-path",
            str(path),
            "--set",
            "class-names=a,b",
        ]

    return build


def _image_folder_case(make: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        root = tmp / "images"
        root.mkdir()
        make(root)
        return [
            "--scenario",
            "hospitals-imaging",
            "--dataset",
            "image-folder",
            "--data-path",
            str(root),
            "--set",
            "class-names=a,b",
        ]

    return build


def _png(path: Path, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), color=128).save(path)


def _scenario_file(text: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--scenario", str(_write(tmp / "my.toml", text))]


def _a_file(tmp: Path) -> Path:
    return _write(tmp / "a-file", "not a folder\n")


def _made_keys(tmp: Path) -> Path:
    assert main(["keys", "create", "--dir", str(tmp / "k"), "--sites", "1"]) == 0
    return tmp / "k"


def _run_folder(tmp: Path) -> Path:
    """A folder that holds a (one-line, unsigned) site ledger, so that the audit gets as far as
    its key options."""
    _write(tmp / "run" / "sites" / "site-0" / "ledger.jsonl", "{}\n")
    return tmp / "run"


def _checkpointless_state(tmp: Path) -> list[str]:
    return ["--resume", "--state-dir", str(tmp / "empty-state")]


# ---- the battery ---------------------------------------------------------------------
# id -> (argv after "simulate" or a whole argv for other commands, needles in the error line)
Case = tuple[Callable[[Path], list[str]], tuple[str, ...]]


def _flag(flag: str, value: str, *needles: str) -> Case:
    return (lambda tmp: [f"--{flag}", value], needles or (value,))


SIMULATE: dict[str, Case] = {
    # numbers out of range or not numbers
    "sites-zero": _flag("sites", "0", "sites", "0"),
    "sites-negative": _flag("sites", "-1", "sites", "-1"),
    "sites-text": _flag("sites", "abc", "--sites", "'abc'"),
    "sites-float": _flag("sites", "2.5", "--sites", "'2.5'"),
    "sites-too-many": _flag("sites", "1000", "1000 sites"),
    "rounds-zero": _flag("rounds", "0", "rounds", "0"),
    "rounds-negative": _flag("rounds", "-3", "rounds", "-3"),
    "rounds-text": _flag("rounds", "three", "--rounds", "'three'"),
    "rounds-huge": _flag("rounds", "1000000000", "rounds", "1000000000"),
    "plan-too-many-rounds": _flag("rounds", "10000", "too large to account for", "10000 rounds"),
    "plan-too-many-epochs": (
        lambda tmp: ["--rounds", "20", "--local-epochs", "1000"],
        ("too large to account for", "20 rounds", "local-epochs"),
    ),
    "epsilon-zero": _flag("budget-epsilon", "0", "budget-epsilon", "0.0"),
    "epsilon-negative": _flag("budget-epsilon", "-1", "budget-epsilon", "-1.0"),
    "epsilon-nan": _flag("budget-epsilon", "nan", "budget-epsilon", "nan"),
    "epsilon-inf": _flag("budget-epsilon", "inf", "budget-epsilon", "inf"),
    "epsilon-huge": _flag("budget-epsilon", "1e308", "budget-epsilon", "1e+308"),
    "epsilon-text": _flag("budget-epsilon", "one", "--budget-epsilon", "'one'"),
    "delta-zero": _flag("budget-delta", "0", "budget-delta", "0.0"),
    "delta-one": _flag("budget-delta", "1", "budget-delta", "1.0"),
    "delta-negative": _flag("budget-delta", "-0.1", "budget-delta", "-0.1"),
    "delta-nan": _flag("budget-delta", "nan", "budget-delta", "nan"),
    "noise-negative": _flag("noise-multiplier", "-1", "noise-multiplier", "-1.0"),
    "noise-inf": _flag("noise-multiplier", "inf", "noise-multiplier", "inf"),
    "noise-huge": _flag("noise-multiplier", "1e300", "noise-multiplier", "1e+300"),
    "clip-zero": _flag("max-grad-norm", "0", "max-grad-norm", "0.0"),
    "clip-negative": _flag("max-grad-norm", "-1", "max-grad-norm", "-1.0"),
    "clip-inf": _flag("max-grad-norm", "inf", "max-grad-norm", "inf"),
    "seed-text": _flag("seed", "zero", "--seed", "'zero'"),
    "seed-negative": _flag("seed", "-1", "seed", "-1"),
    "seed-huge": _flag("seed", str(2**80), "seed", str(2**80)),
    "strategy-unknown": _flag("strategy", "fedmagic", "strategy", "'fedmagic'", "fedavg"),
    "fraction-zero": _flag("fraction-train", "0", "fraction-train", "0.0"),
    "fraction-above-one": _flag("fraction-train", "1.5", "fraction-train", "1.5"),
    "partition-unknown": _flag("partition", "random", "partition", "'random'", "iid"),
    "alpha-zero": _flag("alpha", "0", "alpha", "0.0"),
    "alpha-negative": _flag("alpha", "-2", "alpha", "-2.0"),
    "epochs-zero": _flag("local-epochs", "0", "local-epochs", "0.0"),
    "epochs-nan": _flag("local-epochs", "nan", "local-epochs", "nan"),
    "epochs-huge": _flag("local-epochs", "1e9", "local-epochs", "1000000000.0"),
    "batch-zero": _flag("batch-size", "0", "batch-size", "0"),
    "batch-negative": _flag("batch-size", "-5", "batch-size", "-5"),
    "batch-float": _flag("batch-size", "1e3", "--batch-size", "'1e3'"),
    "lr-zero": _flag("learning-rate", "0", "learning-rate", "0.0"),
    "lr-negative": _flag("learning-rate", "-1", "learning-rate", "-1.0"),
    "lr-huge": _flag("learning-rate", "1e30", "learning-rate", "1e+30"),
    "lr-nan": _flag("learning-rate", "nan", "learning-rate", "nan"),
    # names
    "dataset-unknown": _flag("dataset", "mnist", "dataset", "'mnist'"),
    "dataset-sklearn-unknown": _flag("dataset", "sklearn:iris", "'sklearn:iris'"),
    "dataset-synthetic-unknown": _flag("dataset", "synthetic:faces", "'synthetic:faces'"),
    "csv-without-path": (lambda tmp: ["--dataset", "csv", "--label-column", "y"], ("data-path",)),
    "npz-without-path": (lambda tmp: ["--dataset", "npz", "--set", "class-names=a,b"], ("data-path",)),
    "images-without-path": (lambda tmp: ["--dataset", "image-folder", "--set", "class-names=a,b"], ("data-path",)),
    "scenario-unknown": _flag("scenario", "no-such-scenario", "'no-such-scenario'", "hospitals-tabular"),
    # per-site budgets
    "budgets-no-equals": _flag("budget-epsilon-by-site", "site-0", "budget-epsilon-by-site", "'site-0'"),
    "budgets-text-value": _flag("budget-epsilon-by-site", "site-0=abc", "budget-epsilon-by-site", "'site-0=abc'"),
    "budgets-negative": _flag("budget-epsilon-by-site", "site-0=-1", "site-0", "-1.0"),
    "budgets-unknown-site": (
        lambda tmp: ["--sites", "2", "--budget-epsilon-by-site", "site-9=0.1"],
        ("site-9", "site-0, site-1"),
    ),
    "budgets-bare-number": (
        lambda tmp: ["--sites", "2", "--budget-epsilon-by-site", "0=0.1"],
        ("'0'", "site-0, site-1"),
    ),
    "budgets-twice": _flag("budget-epsilon-by-site", "site-0=0.1,site-0=0.2", "site-0", "twice"),
    "budgets-huge": _flag("budget-epsilon-by-site", "site-0=1e308", "site-0", "1e+308"),
    # --set
    "set-no-equals": (lambda tmp: ["--set", "hidden"], ("--set", "'hidden'")),
    "set-unknown-key": (lambda tmp: ["--set", "nosuchkey=1"], ("'nosuchkey'", "unknown setting")),
    "set-empty-key": (lambda tmp: ["--set", "=1"], ("unknown setting", "''")),
    "set-bad-int": (lambda tmp: ["--set", "synthetic-records=many"], ("synthetic-records", "'many'")),
    "set-bad-bool": (lambda tmp: ["--set", "dp=maybe"], ("dp", "'maybe'")),
    "set-bad-widths": (lambda tmp: ["--set", "hidden=16,x"], ("hidden", "'16,x'")),
    "set-zero-width": (lambda tmp: ["--set", "hidden=0"], ("hidden", "'0'")),
    "set-grad-mode": (lambda tmp: ["--set", "grad-sample-mode=fast"], ("grad-sample-mode", "'fast'")),
    "set-one-class": (lambda tmp: ["--set", "class-names=only"], ("class-names", "'only'")),
    "set-eval-mode": (lambda tmp: ["--set", "evaluation=always"], ("evaluation", "'always'")),
    "set-renamed-key": (lambda tmp: ["--set", "epsilon=2"], ("'epsilon' is now budget-epsilon", "job-epsilon")),
    "job-epsilon-negative": _flag("job-epsilon", "-1", "job-epsilon", "-1.0"),
    "job-epsilon-huge": _flag("job-epsilon", "1e308", "job-epsilon", "1e+308"),
    "set-text-model-on-table": (lambda tmp: ["--set", "model=transformer"], ("model 'transformer' needs text data",)),
    "set-lora-on-mlp": (lambda tmp: ["--set", "finetune=lora"], ("finetune lora needs model transformer",)),
    "set-max-failed-rounds": (lambda tmp: ["--set", "max-failed-rounds=-1"], ("max-failed-rounds", "-1")),
    # scenario files
    "scenario-missing-file": (lambda tmp: ["--scenario", str(tmp / "nope.toml")], ("nope.toml",)),
    "scenario-malformed": (_scenario_file("rounds = = 3\n"), ("my.toml",)),
    "scenario-unknown-key": (_scenario_file('colour = "blue"\n'), ("my.toml", "'colour'")),
    "scenario-bad-value": (_scenario_file('rounds = "three"\n'), ("my.toml", "rounds", "'three'")),
    "scenario-is-folder": (lambda tmp: ["--scenario", str(tmp)], ("--scenario", "folder")),
    "scenario-binary": (
        lambda tmp: ["--scenario", str(_write(tmp / "bin.toml", b"\xff\xfe\x00rounds"))],
        ("bin.toml",),
    ),
    # output and state folders
    "out-is-a-file": (lambda tmp: ["--out", str(_a_file(tmp))], ("--out", "a-file", "not a folder")),
    "out-under-a-file": (lambda tmp: ["--out", str(_a_file(tmp) / "run")], ("--out", "a-file")),
    "out-unwritable": (lambda tmp: ["--out", "/proc/fedshield-run"], ("--out", "/proc/fedshield-run")),
    "state-is-a-file": (lambda tmp: ["--state-dir", str(_a_file(tmp))], ("--state-dir", "a-file", "not a folder")),
    "state-under-a-file": (lambda tmp: ["--state-dir", str(_a_file(tmp) / "s")], ("--state-dir", "a-file")),
    "state-unwritable": (
        lambda tmp: ["--state-dir", "/proc/fedshield-state"],
        ("--state-dir", "/proc/fedshield-state"),
    ),
    "resume-nothing": (_checkpointless_state, ("--resume", "empty-state", "no checkpoint")),
    # CSV tables
    "csv-missing-file": (
        lambda tmp: ["--dataset", "csv", "--data-path", str(tmp / "x.csv"), "--label-column", "y"],
        ("x.csv", "not found"),
    ),
    "csv-is-folder": (lambda tmp: ["--dataset", "csv", "--data-path", str(tmp), "--label-column", "y"], ("directory",)),
    "csv-empty": (_csv_case(""), ("data.csv", "empty")),
    "csv-header-only": (_csv_case("a,b,y\n"), ("data.csv", "no data rows")),
    "csv-no-label-column": (_csv_case("a,b,c\n" + ROWS), ("data.csv", "'y'", "a, b, c")),
    "csv-no-features": (_csv_case("y\n" + "".join(f"{i % 2}\n" for i in range(60))), ("data.csv", "no feature")),
    "csv-duplicate-header": (_csv_case("a,a,y\n" + ROWS), ("data.csv", "'a'", "twice")),
    "csv-blank-header": (_csv_case("a,,y\n" + ROWS), ("data.csv", "column 2", "no name")),
    "csv-non-numeric": (_csv_case("a,b,y\n1,x,0\n" + ROWS), ("data.csv", "line 2", "'b'", "'x'")),
    "csv-nan": (_csv_case("a,b,y\n1,nan,0\n" + ROWS), ("data.csv", "line 2", "'nan'")),
    "csv-inf": (_csv_case("a,b,y\n1,-inf,0\n" + ROWS), ("data.csv", "line 2", "'-inf'")),
    "csv-missing-cell": (_csv_case("a,b,y\n1,,0\n" + ROWS), ("data.csv", "line 2", "'b'", "missing")),
    "csv-short-row": (_csv_case("a,b,y\n1,0\n" + ROWS), ("data.csv", "line 2", "2 cells")),
    "csv-long-row": (_csv_case("a,b,y\n1,0,1,5\n" + ROWS), ("data.csv", "line 2", "4 cells")),
    "csv-missing-label": (_csv_case("a,b,y\n1,0,\n" + ROWS), ("data.csv", "line 2", "missing label")),
    "csv-unknown-label": (_csv_case("a,b,y\n1,0,7\n" + ROWS), ("data.csv", "'7'")),
    "csv-too-few-rows": (_csv_case("a,b,y\n1,1,0\n2,2,1\n"), ("data.csv", "test split is empty")),
    "csv-huge-field": (_csv_case("a,b,y\n" + "9" * 200_000 + ",1,0\n" + ROWS), ("data.csv", "line 2", "field")),
    "csv-not-utf8": (_csv_case(b"a,b,y\n\xff\xfe,1,0\n"), ("data.csv", "UTF-8")),
    "csv-binary": (_csv_case(b"\x00\x01\x02PK\x03\x04" * 50), ("data.csv",)),
    "csv-unclosed-quote": (_csv_case('a,b,y\n"1,0,1\n' + ROWS), ("data.csv",)),
    "csv-categorical-missing": (
        _csv_case("a,b,y\n" + ROWS, "--set", "categorical-columns=colour"),
        ("data.csv", "'colour'"),
    ),
    "csv-label-as-feature": (_csv_case("a,b,y\n" + ROWS, "--set", "categorical-columns=y"), ("data.csv", "'y'")),
    "csv-without-schema": (
        lambda tmp: [
            "--dataset",
            "csv",
            "--data-path",
            str(_write(tmp / "d.csv", "a,b,y\n" + ROWS)),
            "--label-column",
            "y",
        ],
        ("d.csv", "feature-schema"),
    ),
    "schema-missing": (
        _csv_case("a,b,y\n" + ROWS, "--set", "feature-schema=/nonexistent/schema.toml"),
        ("/nonexistent/schema.toml",),
    ),
    "schema-malformed": (
        lambda tmp: (
            _csv_case("a,b,y\n" + ROWS)(tmp)[:-2] + ["--set", f"feature-schema={_write(tmp / 's.toml', 'x = [')}"]
        ),
        ("s.toml",),
    ),
    "schema-missing-column": (
        lambda tmp: _csv_case("a,c,y\n" + ROWS)(tmp),
        ("'c'", "feature schema"),
    ),
    # text files
    "text-missing": (
        lambda tmp: ["--scenario", "clinical-notes", "--dataset", "text", "--data-path", str(tmp / "n.jsonl")],
        ("n.jsonl", "not found"),
    ),
    "text-bad-json": (
        _text_case('{"text": "a", "label": "cardiology"}\n{"text": b}\n'),
        ("notes.jsonl", "line 2", "JSON"),
    ),
    "text-no-text-field": (_text_case('{"body": "a", "label": "cardiology"}\n'), ("notes.jsonl", "line 1", "'text'")),
    "text-no-label-field": (_text_case('{"text": "a"}\n'), ("notes.jsonl", "line 1", "'label'")),
    "text-not-an-object": (_text_case('["a", "b"]\n'), ("notes.jsonl", "line 1")),
    "text-empty": (_text_case(""), ("notes.jsonl", "no records")),
    "text-unknown-label": (
        _text_case("".join(f'{{"text": "pain {i}", "label": "dermatology"}}\n' for i in range(40))),
        ("notes.jsonl", "'dermatology'"),
    ),
    # image arrays and folders
    "npz-missing": (
        lambda tmp: _npz_case({})(tmp)[:5] + [str(tmp / "none.npz"), "--set", "class-names=a,b"],
        ("none.npz", "not found"),
    ),
    "npz-not-npz": (_npz_case(None, raw=b"hello"), ("images.npz", "not a readable .npz")),
    "npz-no-arrays": (_npz_case({"x": np.zeros(3)}), ("images.npz", "train_images")),
    "npz-length-mismatch": (
        _npz_case({"train_images": np.zeros((10, 8, 8), np.uint8), "train_labels": np.zeros(9, np.int64)}),
        ("images.npz", "10 records", "9"),
    ),
    "npz-float-labels": (
        _npz_case({"train_images": np.zeros((10, 8, 8), np.uint8), "train_labels": np.zeros(10)}),
        ("images.npz", "integer"),
    ),
    "npz-label-out-of-range": (
        _npz_case({"train_images": np.zeros((10, 8, 8), np.uint8), "train_labels": np.full(10, 5)}),
        ("images.npz", "5"),
    ),
    "npz-float-pixels-out-of-range": (
        _npz_case({"train_images": np.full((10, 8, 8), 3.0, np.float32), "train_labels": np.zeros(10, np.int64)}),
        ("images.npz", "[0, 1]"),
    ),
    "images-missing": (
        lambda tmp: [
            "--scenario",
            "hospitals-imaging",
            "--dataset",
            "image-folder",
            "--data-path",
            str(tmp / "no"),
            "--set",
            "class-names=a,b",
        ],
        ("not found",),
    ),
    "images-no-subfolders": (_image_folder_case(lambda root: None), ("images", "no class sub-folders")),
    "images-unknown-class-folder": (_image_folder_case(lambda root: _png(root / "zebra" / "1.png")), ("'zebra'",)),
    "images-corrupt": (
        _image_folder_case(lambda root: (_png(root / "a" / "1.png"), _write(root / "b" / "2.png", b"not png"))),
        ("2.png", "not a readable image"),
    ),
    "images-sizes-differ": (
        _image_folder_case(lambda root: (_png(root / "a" / "1.png", 8), _png(root / "b" / "2.png", 9))),
        ("2.png", "differs"),
    ),
    "resnet-weights-missing": (
        lambda tmp: ["--scenario", "hospitals-resnet", "--set", f"pretrained-path={tmp / 'w.pth'}"],
        ("pretrained-path", "w.pth"),
    ),
    "transformer-weights-missing": (
        lambda tmp: ["--scenario", "clinical-notes", "--set", f"pretrained-path={tmp / 'bert'}"],
        ("pretrained-path", "bert"),
    ),
}

OTHER: dict[str, Case] = {
    "no-command": (lambda tmp: [], ("command",)),
    "unknown-command": (lambda tmp: ["train"], ("'train'",)),
    "unknown-flag": (lambda tmp: ["simulate", "--sitez", "3"], ("--sitez",)),
    "flag-without-value": (lambda tmp: ["simulate", "--sites"], ("--sites",)),
    "audit-missing-path": (lambda tmp: ["audit", str(tmp / "nope")], ("nope",)),
    "audit-keys-missing": (lambda tmp: ["audit", str(_run_folder(tmp)), "--keys", "/nonexistent"], ("/nonexistent",)),
    "audit-keys-a-file": (lambda tmp: ["audit", str(_run_folder(tmp)), "--keys", str(_a_file(tmp))], ("a-file",)),
    "audit-no-ledgers": (lambda tmp: ["audit", str(tmp / "run"), "--keys", str(tmp)], ("run",)),
    "audit-fingerprints-missing": (
        lambda tmp: ["audit", str(_run_folder(tmp)), "--trusted-fingerprints", str(tmp / "fp.json")],
        ("fp.json",),
    ),
    "audit-tolerance-negative": (
        lambda tmp: ["audit", str(_run_folder(tmp)), "--keys", str(tmp), "--abs-tol", "-1"],
        ("abs-tol",),
    ),
    "keys-dir-a-file": (
        lambda tmp: ["keys", "create", "--dir", str(_a_file(tmp)), "--sites", "2"],
        ("--dir", "a-file", "not a folder"),
    ),
    "keys-dir-under-a-file": (
        lambda tmp: ["keys", "create", "--dir", str(_a_file(tmp) / "k"), "--sites", "2"],
        ("--dir", "a-file"),
    ),
    "keys-dir-unwritable": (
        lambda tmp: ["keys", "create", "--dir", "/proc/fedshield-keys", "--sites", "2"],
        ("--dir", "/proc/fedshield-keys"),
    ),
    "keys-bad-site-name": (lambda tmp: ["keys", "create", "--dir", str(tmp / "k"), "--sites", "a b"], ("'a b'",)),
    "keys-nothing": (lambda tmp: ["keys", "create", "--dir", str(tmp / "k")], ("--sites",)),
    "keys-export-empty": (
        lambda tmp: ["keys", "export", "--dir", str(tmp / "k"), "--to", str(tmp / "auditor")],
        ("no public keys",),
    ),
    "keys-export-to-a-file": (
        lambda tmp: ["keys", "export", "--dir", str(_made_keys(tmp)), "--to", str(_a_file(tmp))],
        ("--to", "a-file", "not a folder"),
    ),
}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, out: str, err: str, needles: tuple[str, ...]) -> None:
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("fedshield: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert code == 2, (code, err)
    assert out == "", out


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative default (runs/...) never lands in the repository


@pytest.mark.parametrize("case", sorted(SIMULATE))
def test_simulate_rejects(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build, needles = SIMULATE[case]
    out = tmp_path / "run"
    argv = build(tmp_path)
    if "--out" not in argv:
        argv += ["--out", str(out)]
    code, stdout, stderr = _run(["simulate", *argv], capsys)
    _assert_one_line_error(code, stdout, stderr, needles)
    assert not (out / "metrics.json").exists(), "a simulation ran despite the input error"


@pytest.mark.parametrize("case", sorted(OTHER))
def test_other_commands_reject(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build, needles = OTHER[case]
    code, stdout, stderr = _run(build(tmp_path), capsys)
    _assert_one_line_error(code, stdout, stderr, needles)


def test_the_battery_covers_at_least_a_hundred_kinds_of_input() -> None:
    assert len(SIMULATE) + len(OTHER) >= 100


def test_no_ray_was_started_by_the_battery() -> None:
    import ray

    assert not ray.is_initialized()
    assert "RAY_ADDRESS" not in os.environ
