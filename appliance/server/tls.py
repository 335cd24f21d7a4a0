"""HTTPS for `cairn serve`: a self-signed certificate made on first start and kept in <data_dir>/tls/."""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = timedelta(days=3650)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def self_signed(tls_dir: Path, host: str) -> TlsFiles:
    """The data dir's certificate and key, made now if there are none. The certificate names
    localhost, 127.0.0.1, ::1, this machine's name and `host` (the listening address)."""
    files = TlsFiles(tls_dir / "cert.pem", tls_dir / "key.pem")
    if files.cert.exists() and files.key.exists():
        return files
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname() or "cairn"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cairn appliance")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(_alt_names(host)), critical=False)
            # Its own CA, so a client can pin it with `--cacert cert.pem` / `verify=cert.pem`.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(files.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), 0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _alt_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for entry in dict.fromkeys(["localhost", socket.gethostname(), "127.0.0.1", "::1", host]):
        if not entry or entry in ("0.0.0.0", "::"):
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    return names


def _write(path: Path, data: bytes, mode: int) -> None:
    # Written aside and renamed: a crash never leaves a half certificate that blocks the next start.
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(partial, path)
