"""The ledger is tamper-evident: any change, deletion, reordering, duplication, key swap or
forged append is detected and the message names the entry; torn writes are detected."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.crypto import keys
from common.privacy.ledger import (
    GENESIS,
    Ledger,
    LedgerError,
    canonical,
    entry_hash,
    parse_head,
    read_entries,
    verify_entries,
)


def _ledger(tmp_path: Path, n: int = 5) -> tuple[Path, keys.Ed25519PrivateKey]:
    key = keys.generate()
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, key, owner="site-0")
    for i in range(n):
        ledger.append(
            {
                "kind": "train",
                "job": "j1",
                "round": i + 1,
                "epsilon": 0.1 * (i + 1),
                "mechanism": {"noise_multiplier": 1.1, "sample_rate": 0.5, "steps": 3},
            }
        )
    return path, key


def _rewrite(path: Path, entries: list[dict]) -> None:
    path.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))


def _problems(path: Path, key: keys.Ed25519PrivateKey) -> list[str]:
    return verify_entries(path, read_entries(path).entries, key.public_key())


def test_untouched_ledger_verifies(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    entries = read_entries(path).entries
    assert verify_entries(path, entries, key.public_key()) == []
    assert entries[0]["prev"] == GENESIS and [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert all(entries[i]["prev"] == entries[i - 1]["hash"] for i in range(1, 5))


_FIELDS = ["kind", "job", "round", "epsilon", "mechanism", "seq", "prev", "hash", "sig", "ledger"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 4), field=st.sampled_from(_FIELDS))
def test_changing_any_field_of_any_entry_is_detected(tmp_path: Path, index: int, field: str) -> None:
    path, key = _ledger(tmp_path / f"{index}-{field}")
    entries = read_entries(path).entries
    value = entries[index][field]
    if isinstance(value, str):
        entries[index][field] = value[:-1] + ("0" if value[-1] != "0" else "1")
    elif isinstance(value, dict):
        entries[index][field] = {**value, "noise_multiplier": 0.5}
    elif isinstance(value, int):
        entries[index][field] = value + 1
    else:
        entries[index][field] = value * 0.5
    _rewrite(path, entries)
    problems = _problems(path, key)
    assert problems, f"changing {field} of entry {index} went unnoticed"
    assert any(f"line {index + 1} (seq" in p for p in problems), problems


def test_deleting_an_entry_is_detected(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    entries = read_entries(path).entries
    _rewrite(path, entries[:2] + entries[3:])
    problems = _problems(path, key)
    assert any("line 3 (seq 3)" in p and "sequence number 3, expected 2" in p for p in problems), problems
    assert any("line 3 (seq 3)" in p and "chain broken" in p for p in problems)


def test_deleting_the_first_entry_is_detected(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    _rewrite(path, read_entries(path).entries[1:])
    assert any("line 1 (seq 1)" in p and "chain broken" in p for p in _problems(path, key))


def test_reordering_entries_is_detected(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    e = read_entries(path).entries
    _rewrite(path, [e[0], e[2], e[1], e[3], e[4]])
    problems = _problems(path, key)
    assert any("line 2 (seq 2)" in p for p in problems) and any("line 3 (seq 1)" in p for p in problems)


def test_duplicating_an_entry_is_detected(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    e = read_entries(path).entries
    _rewrite(path, [*e[:3], e[2], *e[3:]])
    assert any("line 4 (seq 2)" in p and "expected 3" in p for p in _problems(path, key))


def test_swapped_key_is_detected(tmp_path: Path) -> None:
    path, _ = _ledger(tmp_path)
    other = keys.generate()
    problems = verify_entries(path, read_entries(path).entries, other.public_key())
    assert len(problems) == 5 and all("bad signature" in p for p in problems)


def test_ledger_resigned_with_another_key_is_detected(tmp_path: Path) -> None:
    """An attacker rebuilds the whole chain consistently, but cannot sign with the site's key."""
    path, key = _ledger(tmp_path)
    forger = keys.generate()
    entries = read_entries(path).entries
    entries[1]["epsilon"] = 0.0001
    prev = GENESIS
    for e in entries:
        e["prev"] = prev
        e["hash"] = entry_hash(e)
        e["sig"] = keys.sign(forger, e["hash"].encode())
        prev = e["hash"]
    _rewrite(path, entries)
    problems = _problems(path, key)
    assert problems and all("bad signature" in p for p in problems)


def test_forged_appended_entry_is_detected(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    entries = read_entries(path).entries
    forged = copy.deepcopy(entries[-1])
    forged.update(seq=5, prev=entries[-1]["hash"], round=6, epsilon=0.01)
    forged["hash"] = entry_hash(forged)
    forged["sig"] = keys.sign(keys.generate(), forged["hash"].encode())
    _rewrite(path, [*entries, forged])
    problems = _problems(path, key)
    assert problems == [f"{path}: line 6 (seq 5): bad signature (not signed by the expected key)"]


def test_owner_refuses_to_open_a_tampered_ledger(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    entries = read_entries(path).entries
    entries[2]["epsilon"] = 0.0
    _rewrite(path, entries)
    with pytest.raises(LedgerError, match=r"line 3 \(seq 2\): hash mismatch"):
        Ledger(path, key, owner="site-0")


def test_torn_last_line_is_detected_then_recovered_without_touching_earlier_entries(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    intact = path.read_bytes()
    with open(path, "ab") as fh:  # a crash in the middle of writing entry 6
        fh.write(b'{"kind":"train","job":"j1","rou')
    result = read_entries(path)
    assert result.torn_tail == b'{"kind":"train","job":"j1","rou' and len(result.entries) == 5
    ledger = Ledger(path, key, owner="site-0")  # the owner reopens after the crash
    assert ledger.recovered_tail == result.torn_tail
    assert path.read_bytes() == intact
    assert (tmp_path / "ledger.jsonl.torn").read_bytes().startswith(b'{"kind":"train"')
    ledger.append({"kind": "train", "job": "j1", "round": 6})
    assert _problems(path, key) == []


def test_malformed_complete_line_names_the_line(tmp_path: Path) -> None:
    path, _ = _ledger(tmp_path)
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"{not json"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(LedgerError, match=r"line 2: not a valid JSON entry"):
        read_entries(path)


def test_entries_are_on_disk_when_append_returns(tmp_path: Path) -> None:
    key = keys.generate()
    ledger = Ledger(tmp_path / "l.jsonl", key, owner="x")
    entry = ledger.append({"kind": "train"})
    assert json.loads((tmp_path / "l.jsonl").read_text().splitlines()[-1]) == entry


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    keys.create_pair(tmp_path / "a.key", tmp_path / "a.pub")
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    assert (
        keys.load_public(tmp_path / "a.pub").public_bytes_raw()
        == keys.load_private(tmp_path / "a.key").public_key().public_bytes_raw()
    )


# ---- fail closed: a lost, emptied or cut ledger never lowers the recorded spend -------------


def _party(tmp_path: Path):
    from common.privacy.ledger import PartyPaths

    return PartyPaths(tmp_path / "site", tmp_path / "keys" / "site-0.pub", "site.key")


def _spend(paths, rounds: int) -> None:
    ledger = paths.open_ledger("site-0")
    for r in range(rounds):
        ledger.append({"kind": "train", "job": "j", "round": r + 1})


def test_deleted_ledger_with_its_key_left_refuses(tmp_path: Path) -> None:
    paths = _party(tmp_path)
    _spend(paths, 2)
    paths.ledger.unlink()  # the attack: forget the spend, keep the identity
    with pytest.raises(LedgerError, match="gone"):
        paths.open_ledger("site-0")


def test_deleted_ledger_and_head_with_the_key_left_refuses(tmp_path: Path) -> None:
    paths = _party(tmp_path)
    _spend(paths, 2)
    paths.ledger.unlink()
    paths.ledger.with_name("ledger.head").unlink()
    with pytest.raises(LedgerError, match="key .* remains"):
        paths.open_ledger("site-0")


def test_emptied_ledger_refuses(tmp_path: Path) -> None:
    paths = _party(tmp_path)
    _spend(paths, 3)
    paths.ledger.write_bytes(b"")
    with pytest.raises(LedgerError, match="signed head says 3"):
        paths.open_ledger("site-0")


def test_hand_cut_last_line_is_not_a_crash(tmp_path: Path) -> None:
    paths = _party(tmp_path)
    _spend(paths, 3)
    data = paths.ledger.read_bytes()
    paths.ledger.write_bytes(data[: len(data) - 20])  # a complete, released entry made "torn"
    with pytest.raises(LedgerError, match="an entry was cut"):
        paths.open_ledger("site-0")
    assert not paths.ledger.with_name("ledger.jsonl.torn").exists()


def test_torn_write_beyond_the_head_is_a_crash_and_is_set_aside(tmp_path: Path) -> None:
    paths = _party(tmp_path)
    _spend(paths, 2)
    with open(paths.ledger, "ab") as fh:  # a crash mid-append: the head was not yet advanced
        fh.write(b'{"kind":"train","job":"j","rou')
    ledger = paths.open_ledger("site-0")
    assert len(ledger.entries) == 2
    assert paths.ledger.with_name("ledger.jsonl.torn").exists()


def test_forged_head_is_refused(tmp_path: Path) -> None:
    paths = _party(tmp_path)
    _spend(paths, 2)
    head_path = paths.ledger.with_name("ledger.head")
    original = head_path.read_bytes()
    head = parse_head(original)
    head["seq"] = 0  # claim fewer entries, to hide the last one after cutting it
    # the forged checkpoint in place of the file, or appended as its newest complete line
    for forged in (canonical(head), original + canonical(head) + b"\n"):
        head_path.write_bytes(forged)
        with pytest.raises(LedgerError, match="not signed"):
            paths.open_ledger("site-0")


def test_a_torn_checkpoint_append_is_a_crash_and_the_previous_checkpoint_holds(tmp_path: Path) -> None:
    paths = _party(tmp_path)
    _spend(paths, 3)
    head_path = paths.ledger.with_name("ledger.head")
    with open(head_path, "ab") as fh:  # a crash mid-append of the next checkpoint
        fh.write(b'{"hash":"ab12","ledger":"site-0","se')
    assert len(paths.open_ledger("site-0").entries) == 3
    assert parse_head(head_path.read_bytes())["seq"] == 2
    _spend(paths, 1)  # the next checkpoint replaces the torn file instead of appending to it
    assert b"se\n" not in head_path.read_bytes() and head_path.read_bytes().endswith(b"\n")
    # and the checkpoints still catch a cut ledger afterwards
    data = paths.ledger.read_bytes()
    paths.ledger.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 1])
    with pytest.raises(LedgerError, match="signed head says 4"):
        paths.open_ledger("site-0")


def test_a_one_object_head_from_before_is_read_and_then_appended_to(tmp_path: Path) -> None:
    paths = _party(tmp_path)
    _spend(paths, 2)
    head_path = paths.ledger.with_name("ledger.head")
    head_path.write_bytes(canonical(parse_head(head_path.read_bytes())))  # the older form: no newline
    _spend(paths, 1)  # replaced by the current form ...
    _spend(paths, 1)  # ... which is appended to
    lines = head_path.read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [2, 3]


def test_the_checkpoint_file_is_compacted_past_its_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import common.privacy.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "HEAD_FILE_MAX", 1000)
    paths = _party(tmp_path)
    _spend(paths, 12)
    head_path = paths.ledger.with_name("ledger.head")
    assert head_path.stat().st_size <= 1000 + 300
    assert parse_head(head_path.read_bytes())["seq"] == 11
    assert len(paths.open_ledger("site-0").entries) == 12


def test_a_new_party_opens_and_reopens(tmp_path: Path) -> None:
    paths = _party(tmp_path)
    assert paths.open_ledger("site-0").entries == []
    assert paths.open_ledger("site-0").entries == []  # genesis head, no entries: fine
    _spend(paths, 1)
    assert len(paths.open_ledger("site-0").entries) == 1


# A process re-opens its ledger every round and verifies only what was appended since it last
# verified it. An adversary with the file (not the process) tries to slip a change past that:


def _reopened_after(tmp_path: Path, tamper) -> None:
    """Open (so this process has verified it), tamper with the file, re-open."""
    path, key = _ledger(tmp_path)
    Ledger(path, key, owner="site-0")
    tamper(path, key)
    Ledger(path, key, owner="site-0")


def test_an_edit_of_an_already_verified_entry_is_caught_on_reopen(tmp_path: Path) -> None:
    def lower_noise_use(path: Path, key: keys.Ed25519PrivateKey) -> None:
        entries = read_entries(path).entries
        entries[1]["mechanism"]["steps"] = 1  # the site would then count less spend
        _rewrite(path, entries)

    with pytest.raises(LedgerError, match="seq 1.*hash mismatch"):
        _reopened_after(tmp_path, lower_noise_use)


def test_a_same_length_byte_flip_in_a_verified_entry_is_caught_on_reopen(tmp_path: Path) -> None:
    def flip(path: Path, key: keys.Ed25519PrivateKey) -> None:
        data = path.read_bytes()
        path.write_bytes(data.replace(b'"steps":3', b'"steps":2', 1))

    with pytest.raises(LedgerError, match="seq 0"):
        _reopened_after(tmp_path, flip)


def test_a_forged_append_after_the_verified_bytes_is_caught_on_reopen(tmp_path: Path) -> None:
    def forge(path: Path, key: keys.Ed25519PrivateKey) -> None:
        entries = read_entries(path).entries
        forged = {**entries[-1], "seq": 5, "prev": entries[-1]["hash"], "round": 6}
        forged["hash"] = entry_hash(forged)
        forged["sig"] = keys.sign(keys.generate(), forged["hash"].encode())
        with open(path, "ab") as fh:
            fh.write(canonical(forged) + b"\n")

    with pytest.raises(LedgerError, match="seq 5.*bad signature"):
        _reopened_after(tmp_path, forge)


def test_a_rollback_to_an_older_copy_is_caught_on_reopen(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path, 3)
    old = path.read_bytes()
    ledger = Ledger(path, key, owner="site-0")
    ledger.append({"kind": "train", "job": "j1", "round": 4, "epsilon": 0.4})
    path.write_bytes(old)  # an older copy: a valid chain, but shorter than the signed head
    with pytest.raises(LedgerError, match="signed head says 4"):
        Ledger(path, key, owner="site-0")


def test_reopening_checks_only_the_new_entries_signatures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, key = _ledger(tmp_path, 50)
    Ledger(path, key, owner="site-0").append({"kind": "train", "job": "j1", "round": 51})
    checked: list[int] = []
    real = keys.verify
    monkeypatch.setattr(keys, "verify", lambda *a: checked.append(1) or real(*a))
    ledger = Ledger(path, key, owner="site-0")
    assert len(ledger.entries) == 51 and ledger.entries[-1]["round"] == 51
    assert len(checked) == 1  # the signed head only: every entry was verified in this process
    with open(path, "ab") as fh:  # another writer's line: verified on the next open
        entry = {**ledger.entries[-1], "seq": 51, "prev": ledger.entries[-1]["hash"], "round": 52}
        entry["hash"] = entry_hash(entry)
        entry["sig"] = keys.sign(key, entry["hash"].encode())
        fh.write(canonical(entry) + b"\n")
    checked.clear()
    assert len(Ledger(path, key, owner="site-0").entries) == 52
    assert len(checked) == 2  # the head and the one new entry


def test_a_remembered_signature_never_lets_another_message_key_or_signature_pass() -> None:
    """keys.verify keeps the signatures it has checked (a site re-checks its head checkpoint
    every round): only exact successes, so an attacker cannot ride on a remembered one."""
    from common.crypto import keys

    owner, other = keys.generate(), keys.generate()
    message = b"seq 7 hash abc"
    signature = keys.sign(owner, message)
    assert keys.verify(owner.public_key(), message, signature)
    assert keys.verify(owner.public_key(), message, signature)  # from the memo
    assert not keys.verify(owner.public_key(), message + b"!", signature)
    assert not keys.verify(other.public_key(), message, signature)
    assert not keys.verify(owner.public_key(), message, keys.sign(other, message))
    forged = keys.sign(other, b"seq 8")
    assert not keys.verify(owner.public_key(), b"seq 8", forged)
    assert not keys.verify(owner.public_key(), b"seq 8", forged)  # a failure is never remembered
