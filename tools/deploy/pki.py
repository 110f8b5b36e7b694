"""Certificates: a private CA, server certificates per host, Java key stores.

The CA signs one server certificate per TLS service (ZooKeeper, RabbitMQ).
Clients trust only the CA (`ca_cert` in the INI files) and check the host name,
so every name a client may use for a server must be in its subjectAltName.

Re-running keeps what is still good: an existing CA is reused, and a server
certificate is reissued only when it no longer fits (names changed, another
CA, or close to expiry) -- see `reissue_reason`, a pure function.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pero_worker.tools.deploy.secrets_store import write_private

CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class PkiError(Exception):
    """A certificate or key cannot be created or used; the message says which file and why."""


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path
    reissued: bool
    reason: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def subject_alt_names(host: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Names a server certificate must carry for clients that connect to `host`.

    A loopback host also gets the other loopback spellings, because tests and
    single-machine setups reach the same server as localhost, 127.0.0.1 or ::1.
    Order is kept, duplicates dropped.
    """
    names = [host.strip("[]")]
    if names[0] in LOOPBACK_NAMES or names[0].startswith("127."):
        names.extend(LOOPBACK_NAMES)
    names.extend(name.strip("[]") for name in extra)
    seen: list[str] = []
    for name in names:
        if name and name not in seen:
            seen.append(name)
    return seen


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def names_in_certificate(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def reissue_reason(cert: x509.Certificate | None, ca: x509.Certificate, names: list[str],
                   now: dt.datetime) -> str | None:
    """Why an existing server certificate must be replaced, or None to keep it."""
    if cert is None:
        return "no certificate yet"
    if cert.issuer != ca.subject:
        return "issued by another CA"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # InvalidSignature and friends
        return "signature does not verify against the CA"
    if not_after(cert) - now < RENEW_BEFORE:
        return f"expires {not_after(cert):%Y-%m-%d}"
    missing = {str(_normal(name)) for name in names} - names_in_certificate(cert)
    if missing:
        return "missing names " + ", ".join(sorted(missing))
    return None


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def not_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as error:
        raise PkiError(f"cannot read certificate {path}: {error.strerror}") from None
    except ValueError as error:
        raise PkiError(f"{path} is not a PEM certificate: {error}") from None


def load_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)  # type: ignore[return-value]
    except OSError as error:
        raise PkiError(f"cannot read private key {path}: {error.strerror}") from None
    except (ValueError, TypeError) as error:
        raise PkiError(f"{path} is not an unencrypted PEM private key: {error}") from None


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_ca(cert_path: Path, key_path: Path, *, common_name: str = "pero-worker CA",
              days: int = CA_DAYS, now: dt.datetime | None = None) -> None:
    now = now or _now()
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pero-worker")])
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(key_path, _key_pem(key))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(_cert_pem(cert))
    cert_path.chmod(0o644)


def issue_server_cert(ca_cert: x509.Certificate, ca_key, names: list[str], cert_path: Path, key_path: Path, *,
                      days: int = SERVER_DAYS, not_before: dt.datetime | None = None) -> None:
    """A TLS server certificate for `names` (first one is the common name) signed by the CA."""
    start = not_before or (_now() - dt.timedelta(minutes=5))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pero-worker")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(_cert_pem(cert) + _cert_pem(ca_cert))   # chain: leaf then CA
    cert_path.chmod(0o644)


def ensure_ca(cert_path: Path, key_path: Path, *, given_cert: Path | None = None,
              given_key: Path | None = None) -> tuple[x509.Certificate, object, bool]:
    """The CA to sign with: a given one (copied to cert_path), the existing one, or a new one.

    Returns (certificate, private key, created).
    """
    if given_cert or given_key:
        if not (given_cert and given_key):
            raise PkiError("give both --ca-cert and --ca-key to use your own CA")
        cert, key = load_cert(given_cert), load_key(given_key)
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise PkiError(f"CA key {given_key} does not belong to CA certificate {given_cert}")
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        if not cert_path.exists() or cert_path.read_bytes() != given_cert.read_bytes():
            cert_path.write_bytes(_cert_pem(cert))
            cert_path.chmod(0o644)
        return cert, key, False
    created = False
    if not (cert_path.exists() and key_path.exists()):
        create_ca(cert_path, key_path)
        created = True
    return load_cert(cert_path), load_key(key_path), created


def ensure_server_cert(ca_cert: x509.Certificate, ca_key, names: list[str], cert_path: Path,
                       key_path: Path) -> Issued:
    existing = load_cert(cert_path) if cert_path.exists() and key_path.exists() else None
    reason = reissue_reason(existing, ca_cert, names, _now())
    if reason is None:
        return Issued(cert_path, key_path, False, "kept")
    issue_server_cert(ca_cert, ca_key, names, cert_path, key_path)
    return Issued(cert_path, key_path, True, reason)


# --- Java key stores (ZooKeeper) -----------------------------------------------------

def _keytool(args: list[str]) -> None:
    try:
        done = subprocess.run(["keytool", *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise PkiError("keytool not found: install a JDK/JRE (Debian: default-jre-headless)") from None
    if done.returncode != 0:
        detail = (done.stdout + done.stderr).strip().splitlines()
        raise PkiError("keytool failed: " + (detail[-1] if detail else f"exit {done.returncode}"))


def write_java_stores(cert_path: Path, key_path: Path, ca_path: Path, keystore: Path, keystore_pass_file: Path,
                      truststore: Path, truststore_pass_file: Path) -> None:
    """PKCS12 keystore (server key + chain) and truststore (CA), rebuilt from the PEM files.

    Store passwords are read by keytool from files (`:file`), never from its command line.
    """
    key = load_key(key_path)
    chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    store_password = keystore_pass_file.read_text().strip()
    with tempfile.TemporaryDirectory(prefix="pero-pki-") as tmp:
        staging = Path(tmp) / "staging.p12"
        blob = pkcs12.serialize_key_and_certificates(
            b"server", key, chain[0], chain[1:],
            serialization.BestAvailableEncryption(store_password.encode()))
        staging.write_bytes(blob)
        os.chmod(staging, 0o600)
        for path in (keystore, truststore):
            path.unlink(missing_ok=True)
        _keytool(["-importkeystore", "-noprompt", "-srckeystore", str(staging), "-srcstoretype", "PKCS12",
                  "-srcstorepass:file", str(keystore_pass_file), "-destkeystore", str(keystore),
                  "-deststoretype", "PKCS12", "-deststorepass:file", str(keystore_pass_file)])
    _keytool(["-importcert", "-noprompt", "-alias", "pero-ca", "-file", str(ca_path), "-keystore", str(truststore),
              "-storetype", "PKCS12", "-storepass:file", str(truststore_pass_file)])
    keystore.chmod(0o600)
    truststore.chmod(0o644)
