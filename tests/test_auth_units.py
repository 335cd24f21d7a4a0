"""The pieces under the API's security: password hashes, the SecretBox, the role rule, the certificate."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from appliance.access.passwords import hash_password, verify_password
from appliance.access.roles import Role, required_role
from appliance.access.secrets import SecretBox, SecretError
from appliance.server.tls import self_signed


def test_password_hashes():
    stored = hash_password("s3cret pass")
    assert stored.startswith("scrypt$32768$8$1$") and "s3cret" not in stored
    assert stored != hash_password("s3cret pass")                       # salted
    assert verify_password("s3cret pass", stored)
    assert not verify_password("s3cret pas", stored)
    for garbage in ("", "plain", "scrypt$x$8$1$AAAA$AAAA", "bcrypt$1$2$3$4$5", stored[:-4] + "!!!!"):
        assert not verify_password("s3cret pass", garbage)


def test_secret_box(tmp_path: Path):
    key_file = tmp_path / "secret.key"
    box = SecretBox.open(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    sealed = box.seal("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "OPENSSH" not in sealed
    assert SecretBox.open(key_file).unseal_text(sealed) == "-----BEGIN OPENSSH PRIVATE KEY-----"
    other = SecretBox.open(tmp_path / "other.key")
    with pytest.raises(SecretError, match="does not open with this data dir's key"):
        other.unseal(sealed)
    with pytest.raises(SecretError):
        box.unseal(sealed[:-3] + "AAA")
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(SecretError, match="bad.key does not hold a valid secret key"):
        SecretBox.open(tmp_path / "bad.key")


@pytest.mark.parametrize("method, path, role", [
    ("GET", "/api/v1/health", None),
    ("POST", "/api/v1/auth/login", None),
    ("GET", "/api/v1/vms", Role.VIEWER),
    ("POST", "/api/v1/vms/web1/backups", Role.OPERATOR),
    ("DELETE", "/api/v1/vms/web1/snapshots/s1", Role.OPERATOR),
    ("POST", "/api/v1/auth/totp", Role.VIEWER),
    ("DELETE", "/api/v1/tokens/ck_1", Role.VIEWER),
    ("GET", "/api/v1/users", Role.ADMIN),
    ("GET", "/api/v1/audit", Role.ADMIN),
    ("GET", "/api/v1/store/stats", Role.VIEWER),
    ("POST", "/api/v1/store/gc", Role.ADMIN),
    ("POST", "/api/v1/policies", Role.ADMIN),
    ("POST", "/api/v1/storeroom", Role.OPERATOR),        # prefixes match whole path segments
    ("POST", "/api/v1/backups/b1/restore", Role.OPERATOR),                 # into a new or the same VM
    ("POST", "/api/v1/backups/b1/disks/vda/restore", Role.ADMIN),          # to any path on the host
    ("DELETE", "/api/v1/recycle-bin/r1", Role.ADMIN),
    ("POST", "/api/v1/networks", Role.ADMIN),                                # infrastructure
    ("GET", "/api/v1/networks", Role.VIEWER),
    ("POST", "/api/v1/hosts", Role.ADMIN),
    ("DELETE", "/api/v1/hosts/kvm2", Role.ADMIN),
    ("POST", "/api/v1/hosts/kvm2/vms/web/backups", Role.OPERATOR),
])
def test_required_role(method: str, path: str, role: Role | None):
    assert required_role(method, path) == role


def test_roles_are_ordered():
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMIN)


def test_self_signed_certificate_is_made_once(tmp_path: Path):
    files = self_signed(tmp_path / "tls", "192.0.2.7")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "192.0.2.7"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    pem = files.cert.read_bytes()
    assert self_signed(tmp_path / "tls", "192.0.2.7").cert.read_bytes() == pem
