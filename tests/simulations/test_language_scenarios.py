"""Entity recognition and sentiment monitoring end to end, through Flower's simulation engine:
DP LoRA training, the audit, `fedshield predict` on tagged files and `fedshield monitor` on
streams with and without a planted surge."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from audit.cli import run_audit
from common.data.entities import ENTITY_TAGS, synthetic_entity_notes
from common.data.headlines import Surge, headline_stream
from server.predict import predict, write_predictions
from simulations.harness import simulate, trusted_keys_for
from simulations.scenarios import load_scenario
from tests.conftest import write_tiny_text_model

ROOT = Path(__file__).resolve().parents[2]
T0 = 494_444 * 3600.0  # 2026-05-28 20:00 UTC
SURGE = Surge(start=30 * 3600.0, end=33 * 3600.0, negative_share=0.65)


def _run(cfg) -> dict:
    simulate(cfg, progress=lambda _: None)
    return json.loads((Path(cfg.out) / "metrics.json").read_text())


def _audited(out: Path) -> None:
    result = run_audit([out], trusted_keys_for(out))
    assert result.ok, [f"{p.where}: {p.what}" for p in result.problems]
    assert result.spends, "the audit found nothing to recompute"


def _conll(path: Path, n: int, seed: int, *, tagged: bool = True) -> Path:
    table = synthetic_entity_notes(n, seed=seed)
    lines = [
        [f"{w} {t}" if tagged else w for w, t in zip(ws, ts, strict=True)]
        for ws, ts in zip(table.tokens, table.tags, strict=True)
    ]
    path.write_text("-DOCSTART- O\n\n" + "\n\n".join("\n".join(s) for s in lines) + "\n")
    return path


def _stream(path: Path, n: int, surge: Surge | None, seed: int = 7) -> Path:
    times, table = headline_stream(n, seed=seed, hours=48, negative_share=0.2, surge=surge)
    with path.open("w") as fh:
        for t, text in zip(times, table.texts, strict=True):
            when = datetime.fromtimestamp(T0 + t, UTC).isoformat().replace("+00:00", "Z")
            fh.write(json.dumps({"time": when, "text": text}) + "\n")
    return path


def _fedshield(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedshield", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)  # fmt: skip


def test_entity_recognition_with_pretrained_minilm_is_verified_and_tags_new_notes(tmp_path: Path) -> None:
    """The shipped scenario, small: DP LoRA on MiniLM finds drugs, doses and conditions.

    Measured with the scenario's own settings (1,200 notes, 3 sites, 3 rounds, epsilon 8):
    entity F1 0.842 (DRUG 0.864, DOSE 0.847, CONDITION 0.821). Here 500 notes, 2 sites, 2 rounds."""
    out = tmp_path / "run"
    cfg = load_scenario("clinical-entities").replace(synthetic_records=500, sites=2, rounds=2, out=str(out))
    m = _run(cfg)
    assert (m["task"], m["headline"], m["shown_metrics"]) == (
        "token-classification",
        "f1",
        ["f1", "precision", "recall"],
    )
    final = m["final"]["metrics"]
    assert final["f1"] > 0.4, final
    assert {f"f1:{t}" for t in ("DRUG", "DOSE", "CONDITION")} <= set(final)
    assert m["model"]["update_bytes"] < 1_000_000  # adapters and the token head only
    _audited(out)

    labelled = predict(out, _conll(tmp_path / "new.conll", 40, seed=99))
    assert labelled.labelled and labelled.metrics["f1"] > 0.4
    bare = predict(out, _conll(tmp_path / "bare.conll", 40, seed=99, tagged=False))
    assert not bare.labelled and bare.word_predictions == labelled.word_predictions
    csv_out = write_predictions(bare, tmp_path / "tagged.csv").read_text().splitlines()
    assert csv_out[0] == "record,tokens,tags,entities" and len(csv_out) == 41
    jsonl = [json.loads(line) for line in write_predictions(bare, tmp_path / "tagged.jsonl").read_text().splitlines()]
    assert len(jsonl) == 40 and all(len(r["tokens"]) == len(r["tags"]) for r in jsonl)
    found = [e for r in jsonl for e in r["entities"]]
    assert found and all(e["type"] in ("DRUG", "DOSE", "CONDITION") for e in found)
    assert all(e["text"] == " ".join(r["tokens"][e["start"] : e["end"] + 1]) for r in jsonl for e in r["entities"])


def test_your_own_conll_file_trains_through_the_same_loader(tmp_path: Path) -> None:
    from tests.conftest import entity_words

    model = write_tiny_text_model(tmp_path / "tiny", extra_words=entity_words())
    data = _conll(tmp_path / "mine.conll", 300, seed=5)
    out = tmp_path / "run"
    cfg = load_scenario("clinical-entities").replace(
        dataset="tagged", data_path=str(data), class_names=",".join(ENTITY_TAGS), pretrained_path=str(model),
        random_init=True, sites=2, rounds=1, out=str(out), finetune="full", learning_rate=0.5,
    )  # fmt: skip
    m = _run(cfg)
    assert m["task"] == "token-classification" and m["final"]["metrics"]["f1"] is not None
    _audited(out)


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sentiment") / "run"
    # 1,500 headlines: at 900 the model's accuracy ranged 0.73-0.89 over four runs (the noise is
    # secret, so every run differs), 0.84-0.88 over three at 1,500, whose monitor alarmed in the
    # surge's first hour each time
    cfg = load_scenario("banks-sentiment").replace(synthetic_records=1500, sites=2, rounds=2, out=str(out))
    m = _run(cfg)
    # measured with the scenario's own settings (1,500 headlines, 3 sites, 3 rounds): 0.934
    assert m["final"]["metrics"]["accuracy"] > 0.7, m["final"]["metrics"]
    return out


def test_sentiment_run_is_verified(sentiment_run: Path) -> None:
    _audited(sentiment_run)


def test_the_monitor_finds_a_planted_surge_at_the_right_window(sentiment_run: Path, tmp_path: Path) -> None:
    stream = _stream(tmp_path / "news.jsonl", 10_000, SURGE)
    proc = _fedshield("monitor", "--model", str(sentiment_run), "--texts", str(stream), "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    alerts = [line for line in proc.stdout.splitlines() if line.startswith("ALERT")]
    assert len(alerts) == 1, proc.stdout
    # The CUSUM's change-point estimate is the surge's first hour. The alarm itself comes once the
    # statistic passes the limit: in the surge's first hour with a strong model, an hour later with a
    # weaker one (the DP noise is secret, so the fixture's model differs from run to run: with 900
    # headlines, accuracy 0.73-0.89 and alarms at 02:00, 03:00, 02:00, 02:00 in four runs, the rise
    # dated 02:00 in all four; with the fixture's 1,500, 0.84-0.88 and 02:00 in three of three).
    assert alerts[0].endswith("rise began 2026-05-30 02:00 UTC"), alerts[0]
    assert alerts[0].startswith(("ALERT 2026-05-30 02:00 UTC", "ALERT 2026-05-30 03:00 UTC")), alerts[0]
    doc = json.loads((tmp_path / "m" / "alerts.json").read_text())
    assert doc["alerts"][0]["onset"] == T0 + SURGE.start and doc["texts"] == 10_000
    assert T0 + SURGE.start <= doc["alerts"][0]["start"] < T0 + SURGE.end
    assert (tmp_path / "m" / "monitor.png").stat().st_size > 10_000
    assert "texts/s" in proc.stdout


def test_the_monitor_raises_no_alert_on_a_calm_stream(sentiment_run: Path, tmp_path: Path) -> None:
    stream = _stream(tmp_path / "calm.jsonl", 10_000, None)
    proc = _fedshield("monitor", "--model", str(sentiment_run), "--texts", str(stream), "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ALERT" not in proc.stdout and "0 alert(s) in 10,000 texts" in proc.stdout


def test_the_monitor_scores_a_stream_of_100k_texts(tmp_path: Path) -> None:
    """Throughput of the whole pipeline (reading, tokenizing, scoring, windows, detector) on
    100,000 texts, with a tiny model trained for one round (MiniLM-L6's throughput here is in the
    README)."""
    from common.data import headlines

    words = [*headlines.COMPANIES, *(t for ts in headlines._TEMPLATES.values() for t in ts), *headlines._TAGS]
    model = write_tiny_text_model(
        tmp_path / "tiny", extra_words=tuple(w.replace("{", " ").replace("}", " ") for w in words)
    )
    out = tmp_path / "run"
    cfg = load_scenario("banks-sentiment").replace(
        pretrained_path=str(model), random_init=True, synthetic_records=300, sites=2, rounds=1, out=str(out)
    )
    _run(cfg)
    stream = _stream(tmp_path / "big.jsonl", 100_000, SURGE)
    proc = _fedshield("monitor", "--model", str(out), "--texts", str(stream), "--out", str(tmp_path / "m"),
                      "--window", "30m")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "m" / "alerts.json").read_text())
    assert doc["texts"] == 100_000 and len(doc["windows"]) == 96 and doc["texts_per_second"] > 0
    assert "scored 100,000 of 100,000 texts" in proc.stderr
    print(f"monitor throughput on 100,000 texts (tiny model): {doc['texts_per_second']:,.0f} texts/s")
