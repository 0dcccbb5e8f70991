"""The keys the auditor trusts, given from outside the audited folders.

A ledger proves nothing if the key that checks it comes from the same place as the ledger:
whoever can rewrite a ledger can also replace the public key next to it. So the auditor is
given the trusted keys as they were provisioned: a folder of ``<owner>.pub`` files
(``--keys``) and/or pinned fingerprints (``--trusted-fingerprints``, as
:func:`common.crypto.keys.fingerprint` prints them). With fingerprints only, a key file found
in the audited folders is used when, and only when, its fingerprint matches the pin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.crypto import keys
from common.errors import FedshieldError

HOW = (
    "pass --keys DIR (the <owner>.pub files as provisioned to you, kept outside the audited folders) "
    "and/or --trusted-fingerprints FILE"
)


class AuditInputError(FedshieldError):
    """The auditor's paths do not point at ledgers or trusted keys."""


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def read_fingerprints(path: Path) -> dict[str, str]:
    """``{owner: fingerprint}`` from a JSON object or from lines ``owner fingerprint``
    (blank lines and ``#`` comments ignored)."""
    if not path.is_file():
        raise AuditInputError(f"{path}: trusted fingerprints file not found")
    text = path.read_text()
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AuditInputError(f"{path}: not valid JSON ({exc})") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise AuditInputError(f"{path}: expected a JSON object of owner -> fingerprint strings")
        return {k: v.strip().lower() for k, v in data.items()}
    pins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise AuditInputError(f"{path}: line {number}: expected 'owner fingerprint', got {line!r}")
        pins[parts[0]] = parts[1].lower()
    if not pins:
        raise AuditInputError(f"{path}: no fingerprints in the file")
    return pins


def read_key_folder(folder: Path) -> dict[str, Ed25519PublicKey]:
    if not folder.is_dir():
        raise AuditInputError(f"{folder}: trusted keys folder not found")
    found = {}
    for path in sorted(folder.glob(f"*{keys.PUBLIC_SUFFIX}")):
        try:
            found[path.name.removesuffix(keys.PUBLIC_SUFFIX)] = keys.load_public(path)
        except keys.KeyFileError as exc:
            raise AuditInputError(str(exc)) from None
    if not found:
        raise AuditInputError(f"{folder}: no *{keys.PUBLIC_SUFFIX} files in the trusted keys folder")
    return found


@dataclass
class TrustedKeys:
    """Owner -> the one public key that may sign that owner's ledger."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)
    # Folders (inside the audited ones) where a key file is used only if it matches a pin.
    search: list[Path] = field(default_factory=list)

    def key_for(self, owner: str) -> tuple[Ed25519PublicKey | None, str]:
        """The trusted key of ``owner``, or ``None`` and why there is none."""
        if owner in self.keys:
            return self.keys[owner], ""
        if owner not in self.pins:
            return None, f"no trusted key for {owner!r} (not among the keys or fingerprints given)"
        looked = []
        for folder in self.search:
            path = folder / f"{owner}{keys.PUBLIC_SUFFIX}"
            if not path.is_file():
                continue
            looked.append(str(path))
            try:
                candidate = keys.load_public(path)
            except keys.KeyFileError:
                continue
            if keys.fingerprint(candidate) == self.pins[owner]:
                return candidate, ""
        where = f" (checked {', '.join(looked)})" if looked else ""
        return None, f"no public key with the pinned fingerprint {self.pins[owner]} for {owner!r}{where}"


def load_trust(
    keys_dir: Path | None, fingerprints_file: Path | None, audited: list[Path], search: list[Path]
) -> TrustedKeys:
    """The trusted keys, or :class:`AuditInputError` (exit 2) when the inputs cannot give any.

    ``audited`` are the folders under audit: a ``--keys`` folder inside one of them is refused
    unless every key in it matches a pinned fingerprint.
    """
    if keys_dir is None and fingerprints_file is None:
        raise AuditInputError(f"no trusted keys: {HOW}")
    pins = read_fingerprints(fingerprints_file) if fingerprints_file is not None else {}
    trusted: dict[str, Ed25519PublicKey] = {}
    if keys_dir is not None:
        trusted = read_key_folder(keys_dir)
        mismatched = [owner for owner, key in trusted.items() if owner in pins and keys.fingerprint(key) != pins[owner]]
        if mismatched:
            raise AuditInputError(
                f"{keys_dir}: the keys of {', '.join(mismatched)} do not match the trusted fingerprints"
            )
        inside = [folder for folder in audited if _inside(keys_dir, folder)]
        if inside:
            unpinned = [owner for owner in trusted if owner not in pins]
            if fingerprints_file is None or unpinned:
                raise AuditInputError(
                    f"{keys_dir} lies inside the audited folder {inside[0]}: whoever wrote the ledgers could "
                    f"have replaced these keys; {HOW}"
                    + (f" (no fingerprint pinned for {', '.join(unpinned)})" if unpinned else "")
                )
    return TrustedKeys(trusted, pins, search)
