"""`fedshield keys`: create key pairs (private 0600), export only the public halves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.crypto import keys

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedshield", "keys", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_create_and_export(tmp_path: Path) -> None:
    out = _cli("create", "--dir", str(tmp_path / "k"), "--sites", "2", "--server")
    assert out.returncode == 0, out.stderr
    private = sorted(p.name for p in (tmp_path / "k" / "private").iterdir())
    assert private == ["server.key", "site-0.key", "site-1.key"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (tmp_path / "k" / "private").iterdir())
    assert (tmp_path / "k" / "private").stat().st_mode & 0o777 == 0o700
    first = (tmp_path / "k" / "private" / "site-0.key").read_bytes()
    assert _cli("create", "--dir", str(tmp_path / "k"), "--sites", "site-0").returncode == 0
    assert (tmp_path / "k" / "private" / "site-0.key").read_bytes() == first  # existing keys are kept

    exported = _cli("export", "--dir", str(tmp_path / "k"), "--to", str(tmp_path / "auditor"))
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in (tmp_path / "auditor").iterdir()) == ["server.pub", "site-0.pub", "site-1.pub"]
    pub = keys.load_public(tmp_path / "auditor" / "site-0.pub")
    assert keys.fingerprint(pub) == keys.fingerprint(
        keys.load_private(tmp_path / "k" / "private" / "site-0.key").public_key()
    )


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    bad = _cli("create", "--dir", str(tmp_path), "--sites", "a/b")
    assert bad.returncode == 2 and bad.stderr.startswith("fedshield: error: --sites: site name 'a/b'")
    empty = _cli("export", "--dir", str(tmp_path / "none"), "--to", str(tmp_path / "x"))
    assert empty.returncode == 2 and "no public keys to export" in empty.stderr


def test_tls_provisioning_for_a_deployment(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    out = _cli(
        "create",
        "--dir",
        str(tmp_path),
        "--sites",
        "site-0,site-1",
        "--tls",
        "--server-names",
        "fl.hospital.example,10.0.0.5",
        "--superlink",
        "fl.hospital.example:9092",
    )
    assert out.returncode == 0, out.stderr
    ca = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "tls" / "server.crt").read_bytes())
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.hospital.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    for site in ("site-0", "site-1"):
        key = serialization.load_ssh_private_key((tmp_path / "supernode" / f"{site}.key").read_bytes(), None)
        assert key.curve.name == "secp384r1"
        assert (tmp_path / "supernode" / f"{site}.key").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "supernode" / f"{site}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
        assert (
            f"flwr supernode register {tmp_path / 'supernode' / (site + '.pub')} fedshield --name {site}" in out.stdout
        )
    assert (tmp_path / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
    assert "flower-superlink --ssl-ca-certfile" in out.stdout and "--enable-supernode-auth" in out.stdout
    assert out.stdout.count("flower-supernode --root-certificates") == 2
