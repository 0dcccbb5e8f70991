"""The simulation harness hands the auditor the parties' public keys outside the run folder
(``<state>.trusted-keys/``): the printed audit command never trusts keys from the folder it audits."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.config import RunConfig
from common.crypto import keys
from simulations.harness import provision_trusted_keys, trusted_keys_path


def _party(state: Path, owner: str) -> Ed25519PublicKey:
    key = keys.generate()
    keys.write_public(state / "keys" / f"{owner}{keys.PUBLIC_SUFFIX}", key.public_key())
    return key.public_key()


def test_keys_are_provisioned_beside_the_state_folder(tmp_path: Path) -> None:
    cfg = RunConfig.of(out=str(tmp_path / "runs" / "demo"))
    assert trusted_keys_path(cfg) == tmp_path / "runs" / "demo.trusted-keys"
    state = Path(cfg.state_path)
    pubs = {o: _party(state, o) for o in ("server", "site-0")}
    dest = provision_trusted_keys(state, trusted_keys_path(cfg), fresh=True, progress=lambda _: None)
    assert not dest.resolve().is_relative_to(state.resolve())
    pins = json.loads((dest / "fingerprints.json").read_text())
    assert pins == {o: keys.fingerprint(k) for o, k in pubs.items()}


def test_a_new_federation_replaces_the_pins_a_continuing_one_keeps_them(tmp_path: Path) -> None:
    state, dest = tmp_path / "state", tmp_path / "state.trusted-keys"
    first = _party(state, "site-0")
    provision_trusted_keys(state, dest, fresh=True, progress=lambda _: None)
    swapped = _party(state, "site-0")  # a key replaced inside the state folder
    said: list[str] = []
    provision_trusted_keys(state, dest, fresh=False, progress=said.append)
    assert keys.fingerprint(keys.load_public(dest / "site-0.pub")) == keys.fingerprint(first)
    assert said and "differs from the key pinned" in said[0]
    provision_trusted_keys(state, dest, fresh=True, progress=lambda _: None)  # a fresh federation: new keys
    assert keys.fingerprint(keys.load_public(dest / "site-0.pub")) == keys.fingerprint(swapped)
