"""The real CLI, run as a user would: every input mistake ends with exactly one
``fedshield: error: ...`` line on stderr, exit status 2, no traceback, and no simulation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60  # each case fails during input checks, in a few seconds


def _run_cli(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "fedshield", "simulate", *args, "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], out: Path, *needles: str) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("fedshield: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == "", result.stdout
    assert not (out / "metrics.json").exists(), "a simulation ran despite the input error"
    return line


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "run"


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_data_file(tmp_path, out):
    missing = tmp_path / "missing.csv"
    result = _run_cli("--dataset", "csv", "--data-path", str(missing), "--label-column", "y", out=out)
    _assert_one_line_error(result, out, str(missing), "not found")


def test_unknown_label_column(tmp_path, out):
    path = _csv(tmp_path, "data.csv", "a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    result = _run_cli("--dataset", "csv", "--data-path", str(path), "--label-column", "target", out=out)
    _assert_one_line_error(result, out, str(path), "'target'", "a, b, y")


def test_non_numeric_cell(tmp_path, out):
    rows = [f"{i},{i % 3},{i % 2}" for i in range(40)]
    rows[6] = "6,seven,0"  # line 8 of the file (header is line 1)
    path = _csv(tmp_path, "data.csv", "a,b,y\n" + "\n".join(rows) + "\n")
    result = _run_cli("--dataset", "csv", "--data-path", str(path), "--label-column", "y", out=out)
    _assert_one_line_error(result, out, str(path), "line 8", "'b'", "'seven'")


@pytest.mark.parametrize("cell", ["nan", "NaN"])
def test_nan_cell(tmp_path, out, cell):
    rows = [f"{i},{i % 3},{i % 2}" for i in range(40)]
    rows[10] = f"10,{cell},1"  # line 12
    path = _csv(tmp_path, "data.csv", "a,b,y\n" + "\n".join(rows) + "\n")
    result = _run_cli("--dataset", "csv", "--data-path", str(path), "--label-column", "y", out=out)
    _assert_one_line_error(result, out, str(path), "line 12", "'b'", repr(cell))


def test_site_left_without_records(out):
    # Dirichlet(0.001) puts each of the 2 classes on a single site: 3 sites cannot all be filled.
    result = _run_cli("--partition", "dirichlet", "--alpha", "0.001", "--sites", "3", out=out)
    _assert_one_line_error(result, out, "alpha=0.001", "raise alpha or use fewer sites")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_epsilon_must_be_positive(out, value):
    result = _run_cli("--budget-epsilon", value, out=out)
    _assert_one_line_error(result, out, f"budget-epsilon must be in (0, 100], got {float(value)!r}")


def test_more_sites_than_records(out):
    result = _run_cli("--sites", "1000", out=out)
    _assert_one_line_error(result, out, "1000 sites", "use fewer sites")


def test_unknown_scenario(out):
    result = _run_cli("--scenario", "no-such-scenario", out=out)
    _assert_one_line_error(result, out, "'no-such-scenario'", "hospitals-tabular")


def test_unknown_setting(out):
    result = _run_cli("--set", "nosuchkey=1", out=out)
    _assert_one_line_error(result, out, "'nosuchkey'", "unknown setting")


def test_missing_text_file(tmp_path, out):
    missing = tmp_path / "notes.jsonl"
    result = _run_cli("--scenario", "clinical-notes", "--dataset", "text", "--data-path", str(missing), out=out)
    _assert_one_line_error(result, out, str(missing), "not found")


def test_bad_json_line_in_text_file(tmp_path, out):
    lines = [f'{{"text": "chest pain {i}", "label": "cardiology"}}' for i in range(30)]
    lines[4] = '{"text": "cough", "label": pulmonology}'
    path = _csv(tmp_path, "notes.jsonl", "\n".join(lines) + "\n")
    result = _run_cli("--scenario", "clinical-notes", "--dataset", "text", "--data-path", str(path), out=out)
    _assert_one_line_error(result, out, str(path), "line 5", "invalid JSON")


def test_text_model_on_tabular_data(out):
    result = _run_cli("--set", "model=transformer", out=out)
    _assert_one_line_error(result, out, "model 'transformer' needs text data", "sklearn:breast_cancer", "use model mlp")


def test_lora_needs_the_transformer(out):
    result = _run_cli("--set", "finetune=lora", out=out)
    _assert_one_line_error(result, out, "finetune lora needs model transformer", "'mlp'")


def test_missing_resnet_weights_file(tmp_path, out):
    missing = tmp_path / "resnet18.pth"
    result = _run_cli("--scenario", "hospitals-resnet", "--set", f"pretrained-path={missing}", out=out)
    _assert_one_line_error(result, out, "pretrained-path", str(missing), "no such file")
