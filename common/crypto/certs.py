"""What a real deployment needs besides the ledger keys: a certificate authority, the
SuperLink's TLS certificate (with the names sites connect to), and each site's SuperNode
authentication key.

Flower 1.41 expects SuperNode keys as OpenSSH EC keys on a NIST curve (it loads them with
``load_ssh_private_key`` / ``load_ssh_public_key``); TLS material is PEM. Private keys are
written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVE = ec.SECP384R1()
VALIDITY = dt.timedelta(days=365)
_KEY_USAGE = dict(
    content_commitment=False, key_encipherment=False, data_encipherment=False, encipher_only=False, decipher_only=False
)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def create_ca(directory: Path, *, name: str = "fedshield CA") -> tuple[Path, Path]:
    """A self-signed CA (kept if it exists): returns (ca.crt, ca.key)."""
    crt, key_path = directory / "ca.crt", directory / "ca.key"
    if crt.exists() and key_path.exists():
        return crt, key_path
    key = ec.generate_private_key(CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_agreement=False, key_cert_sign=True, crl_sign=True, **_KEY_USAGE),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(key_path, _pem(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_path


def create_server_cert(directory: Path, ca_crt: Path, ca_key: Path, *, names: Sequence[str]) -> tuple[Path, Path]:
    """The SuperLink's TLS certificate, signed by the CA, valid for ``names`` (host names and IP
    addresses the sites and the CLI connect to). Returns (server.crt, server.key)."""
    if not names:
        raise ValueError("the server certificate needs at least one name")
    ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    issuer_key = _load_key(ca_key)
    key = ec.generate_private_key(CURVE)
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_agreement=True, key_cert_sign=False, crl_sign=False, **_KEY_USAGE
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA384())
    )
    crt, key_path = directory / "server.crt", directory / "server.key"
    _write_private(key_path, _pem(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_path


def create_supernode_key(directory: Path, site: str) -> tuple[Path, Path]:
    """A site's SuperNode authentication key pair (kept if it exists): (private .key, public .pub).
    The public key is what the SuperLink operator registers with ``flwr supernode register``."""
    private, public = directory / f"{site}.key", directory / f"{site}.pub"
    if private.exists() and public.exists():
        return private, public
    key = ec.generate_private_key(CURVE)
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    openssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public.write_bytes(openssh + f" {site}\n".encode())
    return private, public
