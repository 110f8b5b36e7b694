"""Secrets on disk: created 0600 from the first byte, kept across runs, never logged."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

GENERATED_LENGTH = 24   # bytes of randomness -> 32 URL-safe characters


class SecretError(Exception):
    """A secret that cannot be stored or is unusable; the message never contains the secret."""


def write_private(path: Path, data: bytes, *, owner: tuple[int, int] | None = None) -> None:
    """Write `data` to `path` atomically; the file is 0600 before any byte is in it.

    An existing file keeps its owner (an engine's account may own its secret).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if owner is None and os.geteuid() == 0:
        try:
            st = path.stat()
            owner = (st.st_uid, st.st_gid)
        except FileNotFoundError:
            pass
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def check_password(password: str, what: str) -> str:
    """Refuse passwords that the generated files cannot carry safely (JAAS quoting, one-line files)."""
    if not password:
        raise SecretError(f"the {what} password is empty")
    bad = [c for c in password if c in '"\\\n\r\x00' or not c.isprintable()]
    if bad:
        raise SecretError(f"the {what} password contains a character that cannot be used "
                          "(quote, backslash, control character)")
    return password


def ensure_password(path: Path, given: str | None, what: str) -> tuple[str, str]:
    """The password stored at `path`: the given one (stored), the existing one, or a new random one.

    Returns (password, what happened: 'given' / 'kept' / 'generated').
    """
    if given is not None:
        password = check_password(given.strip(), what)
        if not path.exists() or path.read_text(encoding="utf-8").strip() != password:
            write_private(path, (password + "\n").encode())
        else:
            path.chmod(0o600)
        return password, "given"
    if path.exists():
        password = path.read_text(encoding="utf-8").strip()
        if password:
            path.chmod(0o600)
            return check_password(password, what), "kept"
    password = secrets.token_urlsafe(GENERATED_LENGTH)
    write_private(path, (password + "\n").encode())
    return password, "generated"
