"""TLS for the clients of the suite (ZooKeeper, RabbitMQ AMQPS and HTTPS management).

One rule everywhere: a server is trusted only if its certificate is signed by
the deployment's CA (`ca_cert`) and names the host we connected to.  System CA
bundles are not consulted -- a public certificate for the right name is not
enough to impersonate a pero server.

The other half of this module turns the many ways a handshake fails into one
line an operator can act on (`describe_error`), and tells whether retrying can
help (`is_permanent`): an expired or untrusted certificate will not fix itself,
so clients should stop and say so instead of retrying forever.
"""
from __future__ import annotations

import datetime as dt
import socket
import ssl

__all__ = ["TLSError", "client_context", "describe_error", "is_permanent", "probe", "requests_verify",
           "certificate_not_after"]

# OpenSSL X509_V_ERR_* codes that SSLCertVerificationError.verify_code carries.
_NOT_YET_VALID = 9
_EXPIRED = 10
_SELF_SIGNED_LEAF = 18
_SELF_SIGNED_IN_CHAIN = 19
_NO_LOCAL_ISSUER = 20
_LEAF_UNVERIFIABLE = 21
_SIGNATURE_FAILURE = 7
_REVOKED = 23
_INVALID_PURPOSE = 26
_HOSTNAME_MISMATCH = 62
_IP_MISMATCH = 64
_UNTRUSTED = {_SELF_SIGNED_LEAF, _SELF_SIGNED_IN_CHAIN, _NO_LOCAL_ISSUER, _LEAF_UNVERIFIABLE, _SIGNATURE_FAILURE}


class TLSError(Exception):
    """A TLS problem; str() is one operator-readable line."""


def client_context(ca_cert: str) -> ssl.SSLContext:
    """Context that trusts only `ca_cert`, checks host names and refuses anything older than TLS 1.2."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # CERT_REQUIRED + check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca_cert)
    except FileNotFoundError:
        raise TLSError(f"CA certificate not found: {ca_cert}") from None
    except PermissionError:
        raise TLSError(f"CA certificate {ca_cert} is not readable (permission denied)") from None
    except (ssl.SSLError, OSError, ValueError):
        raise TLSError(f"CA certificate {ca_cert} is not a PEM certificate") from None
    return context


def requests_verify(ca_cert: str | None) -> str | bool:
    """Value for requests' `verify=`: the CA file (only it is trusted), or True (system CAs) without one."""
    return ca_cert if ca_cert else True


def _unwrap(error: BaseException) -> BaseException:
    """Reach the ssl/socket error inside library wrappers (pika, requests/urllib3, kazoo)."""
    seen = 0
    current: BaseException | None = error
    socket_error: BaseException | None = None
    while current is not None and seen < 8:
        if isinstance(current, (ssl.SSLError, ssl.CertificateError)):
            return current
        if isinstance(current, OSError):
            socket_error = current          # the innermost one wins (requests' errors are OSErrors too)
        nested = None
        for arg in getattr(current, "args", ()):
            if isinstance(arg, BaseException):
                nested = arg
                break
        nested = nested or getattr(current, "reason", None) or current.__cause__ or current.__context__
        current = nested if isinstance(nested, BaseException) else None
        seen += 1
    return socket_error or error


def is_permanent(error: BaseException) -> bool:
    """True for failures a retry cannot fix: certificate verification (trust, dates, names)."""
    inner = _unwrap(error)
    return isinstance(inner, (ssl.SSLCertVerificationError, ssl.CertificateError))


def _certificate_problem(inner: ssl.SSLCertVerificationError, where: str, name: str, ca: str) -> str:
    code = inner.verify_code
    if code == _EXPIRED:
        return f"{where}: the server's TLS certificate has expired; renew it (scripts/system_setup.py re-issues it)"
    if code == _NOT_YET_VALID:
        return f"{where}: the server's TLS certificate is not valid yet; check the clocks of both machines"
    if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        return (f"{where}: the server's TLS certificate is not valid for the name {name!r}; connect with a name "
                "the certificate lists or re-issue it with this name")
    if code in _UNTRUSTED:
        return f"{where}: the server's TLS certificate is not signed by {ca} (wrong -e/--ca-cert?)"
    if code == _REVOKED:
        return f"{where}: the server's TLS certificate has been revoked"
    if code == _INVALID_PURPOSE:
        return f"{where}: the server's TLS certificate is not meant for TLS servers (key usage)"
    return f"{where}: the server's TLS certificate was rejected: {inner.verify_message}"


def _handshake_problem(inner: ssl.SSLError, where: str) -> str:
    reason = (inner.reason or str(inner)).upper()
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason or "HTTP_REQUEST" in reason:
        return f"{where}: the server does not speak TLS on this port (is it the TLS port of the service?)"
    if "UNEXPECTED_EOF" in reason or "EOF" in reason:
        return (f"{where}: the server closed the connection during the TLS handshake "
                "(not a TLS port, or the server rejected us)")
    if "ALERT" in reason:
        return f"{where}: the server refused the TLS handshake ({inner.reason})"
    return f"{where}: TLS handshake failed ({inner.reason or inner})"


def describe_error(error: BaseException, *, service: str, address: str, ca_cert: str | None = None,
                   host: str | None = None) -> str:
    """One line that says what went wrong with a TLS connection and what to check."""
    inner = _unwrap(error)
    where = f"{service} at {address}"
    name = host or address.rsplit(":", 1)[0].strip("[]")
    ca = f"the CA in {ca_cert}" if ca_cert else "a trusted CA"
    if isinstance(inner, ssl.SSLCertVerificationError):
        return _certificate_problem(inner, where, name, ca)
    if isinstance(inner, ssl.CertificateError):
        return f"{where}: the server's TLS certificate was rejected: {inner}"
    if isinstance(inner, ssl.SSLError):
        return _handshake_problem(inner, where)
    if isinstance(inner, ConnectionRefusedError):
        return f"{where}: connection refused (is the service running and listening on this port?)"
    if isinstance(inner, (socket.timeout, TimeoutError)):
        return f"{where}: timed out"
    if isinstance(inner, socket.gaierror):
        return f"{where}: cannot resolve the host name ({inner.strerror})"
    if isinstance(inner, OSError):
        return f"{where}: {inner.strerror or inner}"
    return f"{where}: {inner}"


def probe(host: str, port: int, ca_cert: str, *, service: str, timeout: float = 5.0) -> None:
    """Open a TLS connection and close it; TLSError with `describe_error`'s line if the handshake fails.

    Connection-level failures (refused, timeout, unresolvable) are raised as OSError:
    they may be transient, and the caller's retry policy decides.
    """
    context = client_context(ca_cert)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with socket.create_connection((host, port), timeout=timeout) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host.strip("[]")):
                return
        except (ssl.SSLError, ssl.CertificateError, ConnectionResetError) as error:
            raise TLSError(describe_error(error, service=service, address=address, ca_cert=ca_cert,
                                          host=host)) from None


def certificate_not_after(pem_path: str) -> dt.datetime:
    """Expiry of the first certificate in a PEM file (for status tools and warnings)."""
    from cryptography import x509  # paramiko's dependency; imported lazily, only tools need it

    with open(pem_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    return cert.not_valid_after_utc
