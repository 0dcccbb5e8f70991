"""Ed25519 signing keys for the ledgers (``cryptography``).

Private keys are written with owner-only permissions (0600) and never leave their owner;
public keys are what an auditor receives. Keys are generated here or by the tests, never
committed.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.errors import FedshieldError

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


class KeyFileError(FedshieldError):
    """A key file is missing, unreadable, or of the wrong kind."""


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 from the start (no window where others could read it).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_public(path: Path, key: Ed25519PublicKey) -> None:
    """Export ``key`` to ``path`` (left untouched when it already holds exactly that key)."""
    data = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# Private keys this process has read, by file and the file's identity (inode, size, mtime): a
# key file replaced or rewritten is read again. Parties re-open their key every round.
_loaded: dict[str, tuple[tuple[int, int, int], Ed25519PrivateKey]] = {}


def create_pair(private_path: Path, public_path: Path) -> Ed25519PrivateKey:
    """Create a key pair unless ``private_path`` exists (then load it and refresh the public key)."""
    if private_path.exists():
        stat = private_path.stat()
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        known = _loaded.get(str(private_path))
        key = known[1] if known is not None and known[0] == identity else load_private(private_path)
        _loaded[str(private_path)] = (identity, key)
    else:
        key = generate()
        _write_private(private_path, key)
    write_public(public_path, key.public_key())
    return key


def load_private(path: Path) -> Ed25519PrivateKey:
    if not path.is_file():
        raise KeyFileError(f"{path}: private key not found (create it with 'fedshield keys create')")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 private key, found {type(key).__name__}")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    if not path.is_file():
        raise KeyFileError(f"{path}: public key not found")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: expected an Ed25519 public key, found {type(key).__name__}")
    return key


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode()


# Signatures this process has verified, by (public key, message, signature): a site re-opens
# its ledger every round and checks the same head checkpoint again (an Ed25519 verification is
# ~60 us). Only successes are kept, under the exact bytes checked, so a memo can never make a
# different message, signature or key pass.
_VERIFIED_MAX = 4096
_verified: OrderedDict[tuple[bytes, bytes, str], None] = OrderedDict()


def verify(key: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    memo = (key.public_bytes_raw(), bytes(message), signature)
    if memo in _verified:
        return True
    try:
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    _verified[memo] = None
    while len(_verified) > _VERIFIED_MAX:
        _verified.popitem(last=False)
    return True


def fingerprint(key: Ed25519PublicKey) -> str:
    """Short hex id of a public key (first 16 hex digits of SHA-256 of its raw bytes)."""
    import hashlib

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
