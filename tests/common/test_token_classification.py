"""Token classification: seqeval's entity F1 from pooled counts, the per-record loss, the
sensitivity bound, and the readers of tagged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from common.data.entities import ENTITY_TAGS, synthetic_entity_notes
from common.data.tagged import read_tagged, tokenize_tagged
from common.errors import DataError
from common.models.transformer import load_tokenizer
from common.tasks import flat, pooled
from common.tasks.token_classification import IGNORE, TokenClassification, TokenLoss, entity_types, token_mean_loss

TAGS = ENTITY_TAGS
TASK = TokenClassification(TAGS)


def _as_tensors(gold: list[list[str]], pred: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that predict ``pred`` and labels for ``gold``, padded with IGNORE and with an
    ignored position between words (as a later sub-word would be)."""
    width = 2 * max(len(s) for s in gold) + 1
    index = {t: i for i, t in enumerate(TAGS)}
    logits = torch.randn(len(gold), width, len(TAGS))
    y = torch.full((len(gold), width), IGNORE)
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        for j, (gt, pt) in enumerate(zip(g, p, strict=True)):
            y[i, 2 * j + 1] = index[gt]
            logits[i, 2 * j + 1, index[pt]] += 100.0
    return logits, y


def _sentences(draw_tags):  # a list of (gold, pred) sentences of equal lengths
    return st.lists(
        st.integers(1, 8).flatmap(lambda n: st.tuples(st.lists(draw_tags, min_size=n, max_size=n),
                                                      st.lists(draw_tags, min_size=n, max_size=n))),
        min_size=1,
        max_size=12,
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(sites=st.lists(_sentences(st.sampled_from(TAGS)), min_size=1, max_size=4))
def test_pooled_counts_reproduce_seqeval_on_the_pooled_predictions(sites):
    """Each site counts its own records; the server sums; the F1 is seqeval's on everything."""
    per_site, all_gold, all_pred = [], [], []
    for sentences in sites:
        gold = [g for g, _ in sentences]
        pred = [p for _, p in sentences]
        per_site.append(TASK.statistics(*_as_tensors(gold, pred)))
        all_gold += gold
        all_pred += pred
    got = TASK.metrics(pooled(per_site))
    expected = (
        f1_score(all_gold, all_pred, zero_division=0),
        precision_score(all_gold, all_pred, zero_division=0),
        recall_score(all_gold, all_pred, zero_division=0),
    )
    assert (got["f1"], got["precision"], got["recall"]) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    report = classification_report(all_gold, all_pred, output_dict=True, zero_division=0)
    for kind in TASK.types:
        if kind in report:
            assert got[f"f1:{kind}"] == pytest.approx(report[kind]["f1-score"], rel=1e-12, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 5),
    width=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1.0, 1e3, float("inf"), float("nan")]),
)
def test_one_record_moves_the_statistics_by_at_most_the_sensitivity(n, width, seed, scale):
    """The DP release's noise is calibrated to TASK.sensitivity: any one record (any tags, any
    scores, non-finite ones included) may move the statistics by no more than that."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n + 1, width, len(TAGS), generator=gen) * scale
    y = torch.randint(-1, len(TAGS), (n + 1, width), generator=gen)
    y[y < 0] = IGNORE
    with_record = flat(TASK.statistics(logits, y))
    without = flat(TASK.statistics(logits[:n], y[:n]) if n else TASK.zero())
    assert np.linalg.norm(with_record - without) <= TASK.sensitivity + 1e-9


def test_a_record_with_many_entities_is_clipped_to_the_bound():
    gold = [["B-DRUG", "O"] * 20]  # 20 entities, all found: 20 true positives
    stats = TASK.statistics(*_as_tensors(gold, gold))
    assert np.linalg.norm(stats["entities"]) == pytest.approx(TASK.entity_bound)
    assert TASK.metrics(stats)["f1"] == 1.0  # scaled, not distorted: precision and recall stay 1


def test_the_loss_is_the_mean_over_a_records_tagged_words():
    logits = torch.randn(2, 5, len(TAGS))
    y = torch.tensor([[IGNORE, 1, IGNORE, 0, IGNORE], [IGNORE, 3, IGNORE, IGNORE, IGNORE]])
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, len(TAGS)), y.clamp(min=0).reshape(-1), reduction="none"
    )
    per_token = per_token.reshape(2, 5)
    expected = torch.stack([(per_token[0, 1] + per_token[0, 3]) / 2, per_token[1, 1]])
    torch.testing.assert_close(token_mean_loss(logits, y), expected)
    loss = TokenLoss()
    torch.testing.assert_close(loss(logits, y), expected.mean())
    loss.reduction = "none"  # as Opacus's ghost clipping sets it
    torch.testing.assert_close(loss(logits, y), expected)
    # labels longer than the model's cut batch: the cut part is padding
    torch.testing.assert_close(token_mean_loss(logits[:, :4], torch.cat([y, torch.full((2, 3), IGNORE)], 1)), expected)


def test_a_tag_set_must_be_bio():
    assert entity_types(TAGS) == ("DRUG", "DOSE", "CONDITION")
    for bad, message in (
        (("B-X", "I-X"), "must contain O"),
        (("O", "X"), "'X' is not O, B-TYPE or I-TYPE"),
        (("O", "I-X"), "I-X but no B-X"),
    ):
        with pytest.raises(ValueError, match=message):
            entity_types(bad)


# ---- files -------------------------------------------------------------------------------------


def test_conll_files_are_read_and_docstart_is_skipped(tmp_path: Path):
    path = tmp_path / "notes.conll"
    path.write_text(
        "-DOCSTART- -X- O O\n\nStarted O\nmetformin B-DRUG\n500 B-DOSE\nmg I-DOSE\n\nStop O\nwarfarin B-DRUG\n"
    )
    table = read_tagged(path, tags=TAGS)
    assert table.tokens == [["Started", "metformin", "500", "mg"], ["Stop", "warfarin"]]
    assert table.tags == [["O", "B-DRUG", "B-DOSE", "I-DOSE"], ["O", "B-DRUG"]]


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("a.conll", "Started O\nmetformin\n", ("line 2", "expected a word and its tag", "'metformin'")),
        ("a.conll", "Started O\nmetformin B-MEDICINE\n", ("line 1", "field tag", "'B-MEDICINE'", "B-DRUG")),
        ("a.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', ("line 1", "field 'tags'", "1 tags for 2 tokens")),
        ("a.jsonl", '{"tokens": ["a"]}\n', ("line 1", "no field 'tags'")),
        ("a.jsonl", '{"tokens": "a b", "tags": ["O"]}\n', ("line 1", "field 'tokens'", "list of non-empty strings")),
        ("a.jsonl", "{not json\n", ("line 1", "invalid JSON")),
        ("a.jsonl", "[1, 2]\n", ("line 1", "expected a JSON object")),
        ("a.csv", "x\n", ("CoNLL", ".jsonl", "'.csv'")),
        ("a.conll", "\n\n", ("no sentences",)),
    ],
)
def test_bad_tagged_files_name_the_file_line_and_field(tmp_path: Path, name, content, needles):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as info:
        read_tagged(path, tags=TAGS)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_untagged_files_are_read_for_prediction(tmp_path: Path):
    conll = tmp_path / "bare.conll"
    conll.write_text("-DOCSTART- -X- O O\n\nStarted\nmetformin\n\nStop\nwarfarin\n")
    jsonl = tmp_path / "bare.jsonl"
    jsonl.write_text('{"tokens": ["Started", "metformin"]}\n{"tokens": ["Stop", "warfarin"]}\n')
    for path in (conll, jsonl):
        table = read_tagged(path, tags=TAGS, labels_optional=True)
        assert table.tokens == [["Started", "metformin"], ["Stop", "warfarin"]] and table.tags == [[], []]
    with pytest.raises(DataError, match="line 3: expected a word and its tag"):
        read_tagged(conll, tags=TAGS)  # training needs the tags


def test_jsonl_and_conll_give_the_same_sentences(tmp_path: Path):
    table = synthetic_entity_notes(20, seed=3)
    pairs = list(zip(table.tokens, table.tags, strict=True))
    conll = tmp_path / "n.conll"
    conll.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(ws, ts, strict=True)) for ws, ts in pairs))
    jsonl = tmp_path / "n.jsonl"
    jsonl.write_text("\n".join(json.dumps({"tokens": ws, "tags": ts}) for ws, ts in pairs))
    a, b = read_tagged(conll, tags=TAGS), read_tagged(jsonl, tags=TAGS)
    assert a.tokens == b.tokens == table.tokens and a.tags == b.tags == table.tags


def test_the_generator_is_documented_and_deterministic():
    a, b = synthetic_entity_notes(200, seed=0), synthetic_entity_notes(200, seed=0)
    assert a == b and a != synthetic_entity_notes(200, seed=1)
    used = {t for s in a.tags for t in s}
    assert used == set(TAGS)  # every type, multi-word entities included
    assert all(6 <= len(s) <= 20 for s in a.tokens)
    assert all(len(w) == len(t) for w, t in zip(a.tokens, a.tags, strict=False))


def test_a_words_tag_goes_on_its_first_sub_word_only():
    tokenizer = load_tokenizer("minilm")
    table = synthetic_entity_notes(30, seed=0)
    data = tokenize_tagged(table, tokenizer, max_length=64, tags=TAGS)
    assert data.x.shape == data.y.shape and data.num_classes == len(TAGS)
    for i, (words, tags) in enumerate(zip(table.tokens, table.tags, strict=False)):
        tagged = data.y[i][data.y[i] != IGNORE]
        assert [TAGS[t] for t in tagged] == tags  # one label per word, in order
        first = tokenizer(words, is_split_into_words=True)
        starts = [
            j for j, w in enumerate(first.word_ids()) if w is not None and (j == 0 or first.word_ids()[j - 1] != w)
        ]
        assert list(np.flatnonzero(data.y[i] != IGNORE)) == starts
    assert (data.y[data.x == tokenizer.pad_token_id] == IGNORE).all()
    assert any(len(tokenizer.tokenize(w)) > 1 for s in table.tokens for w in s), "sub-words must be exercised"
