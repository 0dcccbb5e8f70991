"""Append-only, hash-chained, Ed25519-signed JSON-lines ledgers.

One entry per line. Each entry carries ``seq`` (0, 1, 2, ...), ``prev`` (the previous entry's
hash; 64 zeros for the first), ``hash`` (SHA-256 of the entry's canonical JSON without
``hash`` and ``sig``) and ``sig`` (the owner's Ed25519 signature of ``hash``). Changing,
deleting, reordering or duplicating an entry breaks the chain or a hash; an entry appended
without the owner's private key has no valid signature.

Durability: an entry is written with one ``write`` on an ``O_APPEND`` descriptor and
``fsync``-ed before :meth:`Ledger.append` returns, so the caller can release what the entry
describes only after it is on disk. A crash mid-write can only leave a torn *last* line;
earlier entries are never rewritten.

Fail closed: after every append the owner also appends a signed checkpoint of the chain head
to ``ledger.head`` (one line each: the last seq and its hash; the newest complete line is the
checkpoint, a torn last line is a crash mid-append and is skipped, a complete line that does
not verify is refused). A checkpoint is appended only after the entry it names is ``fsync``-ed,
and is not ``fsync``-ed itself: a crash can lose only checkpoint lines, never an entry, and a
checkpoint older than the entries is re-written when the ledger next opens (as after a crash
between the two writes); the spend is in the entries. (Its own ``fsync`` cost 0.5-1 ms per
entry, two entries per round.) The file is replaced atomically, and ``fsync``-ed, only when it
is new, torn, in the older one-object form, or past :data:`HEAD_FILE_MAX` bytes. A
ledger that is gone, emptied, cut short or rewritten below its checkpoint (or gone while the
owner's key remains) does not open: the owner refuses to act until an operator restores it,
so a lost ledger never lowers the recorded spend. Only a torn line *beyond* the checkpoint is
a crash mid-write, whose release never happened; it is set aside (kept in
``ledger.jsonl.torn``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.crypto import keys
from common.errors import FedshieldError

GENESIS = "0" * 64
_RESERVED = ("seq", "prev", "hash", "sig")


class LedgerError(FedshieldError):
    """The ledger file is damaged or fails verification; the message names file and entry."""


def canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k not in ("hash", "sig")})).hexdigest()


@dataclass(frozen=True)
class ReadResult:
    entries: list[dict[str, Any]]
    torn_tail: bytes  # bytes after the last newline (a crash mid-write); b"" when clean


def read_entries(path: Path) -> ReadResult:
    """Parse every complete line; report (not raise) a torn last line. Malformed complete
    lines raise :class:`LedgerError` naming the line."""
    if not path.is_file():
        raise LedgerError(f"{path}: ledger not found")
    return parse_entries(path, path.read_bytes())


def parse_entries(path: Path, data: bytes, *, first_line: int = 1) -> ReadResult:
    """:func:`read_entries` on ``data`` (lines numbered from ``first_line``)."""
    body, sep, tail = data.rpartition(b"\n")
    if not sep:  # no newline at all: everything is a torn first line
        body, tail = b"", data
    entries = []
    for number, line in enumerate(body.split(b"\n") if body else [], start=first_line):
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LedgerError(f"{path}: line {number}: not a valid JSON entry") from None
        if not isinstance(entry, dict):
            raise LedgerError(f"{path}: line {number}: entry is not a JSON object")
        entries.append(entry)
    return ReadResult(entries, tail)


def verify_entries(
    path: Path,
    entries: list[dict[str, Any]],
    public_key: Ed25519PublicKey | None,
    *,
    start: int = 0,
    prev: str = GENESIS,
) -> list[str]:
    """Every problem found, each naming the file and the entry (line and seq). Empty = valid.

    ``start`` and ``prev``: ``entries`` continue a chain already verified up to seq
    ``start - 1``, whose hash is ``prev``."""
    problems = []
    for number, entry in enumerate(entries, start=start + 1):
        where = f"{path}: line {number} (seq {entry.get('seq', '?')})"
        if entry.get("seq") != number - 1:
            problems.append(
                f"{where}: sequence number {entry.get('seq')!r}, expected {number - 1} "
                "(an entry was deleted, duplicated or reordered)"
            )
        if entry.get("prev") != prev:
            problems.append(f"{where}: chain broken: prev does not match the hash of the entry before it")
        try:
            recomputed = entry_hash(entry)
        except (TypeError, ValueError):
            recomputed = None
        if entry.get("hash") != recomputed:
            problems.append(f"{where}: hash mismatch: the entry was changed after it was written")
        if public_key is not None and not keys.verify(
            public_key, str(entry.get("hash", "")).encode(), str(entry.get("sig", ""))
        ):
            problems.append(f"{where}: bad signature (not signed by the expected key)")
        prev = str(entry.get("hash"))
    return problems


LEDGER_FILE = "ledger.jsonl"
HEAD_FILE = "ledger.head"
HEAD_FILE_MAX = 1 << 20  # the head file is rewritten as one line beyond this size
_HEAD_TAIL = 1 << 16  # bytes read from the end of a head file (a checkpoint line is ~200)


def parse_head(data: bytes, *, partial_start: bool = False) -> dict[str, Any]:
    """The newest checkpoint in (the tail of) a head file: its last complete line. A last line
    with no newline is a torn append (a crash) and is skipped, unless it is the whole file (the
    one-object form written before checkpoints were appended). ``partial_start``: ``data``
    starts mid-file, so its first line is cut. Raises ValueError when there is none."""
    lines = data.split(b"\n")
    if partial_start:
        lines = lines[1:]
    if len(lines) > 1 or partial_start:
        lines = lines[:-1]  # after the last newline: nothing, or a torn append
    complete = [line for line in lines if line.strip()]
    if not complete:
        raise ValueError("no checkpoint")
    head = json.loads(complete[-1])
    if not isinstance(head, dict):
        raise ValueError("not a checkpoint")
    return head


# What this process has already verified of each ledger: its bytes and their entries, keyed by
# file and owner key. A ledger re-opened (every round) whose file still starts with those exact
# bytes has only its new lines parsed and their signatures checked; any other change (a line
# edited, cut, reordered, the file replaced) fails the byte comparison and the whole file is
# verified again. The cache is this process's memory, which the file's writer cannot reach.
_VERIFIED_LEDGERS = 1024
_verified: OrderedDict[tuple[str, bytes], tuple[bytes, list[dict[str, Any]]]] = OrderedDict()


def _remember(key: tuple[str, bytes], data: bytes, entries: list[dict[str, Any]]) -> None:
    _verified[key] = (data, list(entries))
    _verified.move_to_end(key)
    while len(_verified) > _VERIFIED_LEDGERS:
        _verified.popitem(last=False)


@dataclass(frozen=True)
class PartyPaths:
    """Where a party (a site or the server) keeps its private key and ledger, and where its
    public key is exported for the auditor."""

    root: Path
    public_key: Path
    key_file: str

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER_FILE

    @property
    def private_key(self) -> Path:
        return self.root / self.key_file

    def open_ledger(self, owner: str) -> Ledger:
        """The party's ledger, signed with its key (made on first use; only the public half
        is exported). A key without its ledger or head checkpoint means state was lost: refuse."""
        key_existed = self.private_key.exists()
        head = self.ledger.with_name(HEAD_FILE)
        if key_existed and not self.ledger.exists() and not head.exists():
            raise LedgerError(
                f"{self.ledger}: ledger and its head checkpoint are gone but the key {self.private_key} "
                "remains: this party has history it can no longer show; restore both from a backup "
                "(it will not act until then)"
            )
        return Ledger(self.ledger, keys.create_pair(self.private_key, self.public_key), owner=owner)


class Ledger:
    """The owner's handle on its ledger: verified on open, appended durably."""

    def __init__(self, path: Path, private_key: Ed25519PrivateKey, *, owner: str) -> None:
        self.path = path
        self.owner = owner
        self._key = private_key
        self.entries: list[dict[str, Any]] = []
        self.recovered_tail = b""
        self._data = b""  # the file's verified bytes, as this handle last read or wrote them
        self._head_appendable = False  # set by _read_head / _write_head
        checkpoint = self._read_head()
        if path.exists():
            self._load(checkpoint)
        elif checkpoint is not None and checkpoint["seq"] >= 0:
            raise LedgerError(
                f"{path}: ledger is gone but its signed head says {checkpoint['seq'] + 1} entries were "
                "written: restore it from a backup (nothing will be done until then)"
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if checkpoint is None:
                self._write_head()  # genesis: from now on a missing ledger is detected

    @property
    def head_path(self) -> Path:
        return self.path.with_name(HEAD_FILE)

    def _read_head(self) -> dict[str, Any] | None:
        if not self.head_path.exists():
            return None
        try:
            with open(self.head_path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - _HEAD_TAIL))
                data = fh.read()
            # appends may go on only after a clean, current-form file
            self._head_appendable = data.endswith(b"\n") and size <= HEAD_FILE_MAX
            head = parse_head(data, partial_start=size > _HEAD_TAIL)
            body = {k: head[k] for k in ("ledger", "seq", "hash")}
            ok = keys.verify(self._key.public_key(), canonical(body), str(head["sig"]))
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise LedgerError(f"{self.head_path}: head checkpoint unreadable or not signed by this ledger's key")
        return head

    def _write_head(self) -> None:
        body = {"ledger": self.owner, "seq": len(self.entries) - 1, "hash": self.head}
        data = canonical({**body, "sig": keys.sign(self._key, canonical(body))}) + b"\n"
        if self._head_appendable:
            fd = os.open(self.head_path, os.O_WRONLY | os.O_APPEND)
            try:
                written = os.write(fd, data)  # no fsync: see the module's docstring
                end = os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
            if written != len(data):
                raise OSError(f"{self.head_path}: short write ({written} of {len(data)} bytes)")
            self._head_appendable = end <= HEAD_FILE_MAX
            return
        tmp = self.head_path.with_name(HEAD_FILE + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.head_path)
        _fsync_dir(self.head_path.parent)
        self._head_appendable = True

    @functools.cached_property
    def _cache_key(self) -> tuple[str, bytes]:
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return (str(self.path.resolve()), raw)

    def _read_verified(self) -> ReadResult:
        """The file's entries, verified: only the lines after the bytes this process already
        verified (when the file still starts with them), else all of them."""
        data = self.path.read_bytes()
        known = _verified.get(self._cache_key)
        if known is not None and data.startswith(known[0]):
            done, entries = known
            fresh = parse_entries(self.path, data[len(done) :], first_line=len(entries) + 1)
            prev = entries[-1]["hash"] if entries else GENESIS
            problems = verify_entries(self.path, fresh.entries, self._key.public_key(), start=len(entries), prev=prev)
            if problems:
                raise LedgerError(problems[0])
            result = ReadResult([*entries, *fresh.entries], fresh.torn_tail)
        else:
            result = parse_entries(self.path, data)
            problems = verify_entries(self.path, result.entries, self._key.public_key())
            if problems:
                raise LedgerError(problems[0])
        self._data = data[: len(data) - len(result.torn_tail)]
        _remember(self._cache_key, self._data, result.entries)
        return result

    def _load(self, checkpoint: dict[str, Any] | None) -> None:
        result = self._read_verified()
        known = -1 if checkpoint is None else int(checkpoint["seq"])
        if len(result.entries) - 1 < known:
            raise LedgerError(
                f"{self.path}: holds {len(result.entries)} complete entries but its signed head says "
                f"{known + 1} were written (an entry was cut or the file emptied): restore it from a "
                "backup (nothing will be done until then)"
            )
        if result.torn_tail:
            # A crash mid-append: the torn entry's release never happened (entries are
            # fsync-ed before release). Keep the bytes for forensics, then cut them off.
            torn = self.path.with_name(self.path.name + ".torn")
            with open(torn, "ab") as fh:
                fh.write(result.torn_tail + b"\n")
                os.fsync(fh.fileno())
            with open(self.path, "r+b") as fh:
                fh.truncate(self.path.stat().st_size - len(result.torn_tail))
                os.fsync(fh.fileno())
            self.recovered_tail = result.torn_tail
        if checkpoint is not None and known >= 0 and result.entries[known].get("hash") != checkpoint["hash"]:
            raise LedgerError(f"{self.path}: entry seq {known} differs from the signed head: the ledger was rewritten")
        self.entries = result.entries
        if checkpoint is None or known != len(self.entries) - 1:
            self._write_head()

    @property
    def head(self) -> str:
        return self.entries[-1]["hash"] if self.entries else GENESIS

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Sign, chain and durably append one entry; returns it as written."""
        clash = [k for k in _RESERVED if k in body]
        if clash:
            raise ValueError(f"entry body must not set {clash}")
        entry: dict[str, Any] = {**body, "ledger": self.owner, "seq": len(self.entries), "prev": self.head}
        entry["hash"] = entry_hash(entry)
        entry["sig"] = keys.sign(self._key, entry["hash"].encode())
        line = canonical(entry) + b"\n"
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.path.parent)
        self.entries.append(entry)
        self._data += line
        _remember(self._cache_key, self._data, self.entries)
        self._write_head()
        return entry


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
