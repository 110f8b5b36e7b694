"""Turn untrusted names (result names, image names, request ids) into safe file names.

Names in a ProcessingRequest come from whoever published it and from every worker
on the way, so the downloader must treat them as hostile: a result called
'../../.bashrc' or '/etc/passwd' must never be written outside the download
folder.  Everything here is pure (no I/O) so it can be tested exhaustively.

A safe name is a single path component: no separators, not '.' or '..', no
control or invisible formatting characters, not a device name that Windows
treats specially, not ending in a dot or space, and at most MAX_NAME_BYTES long
in UTF-8.  Sanitising keeps as much of the original as possible so the operator
still recognises the file.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_NAME_BYTES = 200          # below every common filesystem limit (255), leaves room for suffixes
DEFAULT_NAME = "unnamed"

# Device names Windows reserves in any folder, with or without an extension.
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in range(10)} | {f"LPT{i}" for i in range(10)}
    | {"COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"}
)
# Characters that are separators or forbidden on some filesystem we may write to.
_FORBIDDEN = set('/\\:*?"<>|')
# Unicode categories that are invisible or not characters at all: controls, formatting
# (bidi overrides that disguise extensions), surrogates, unassigned/private, line separators.
_DROP_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _clean_characters(name: str) -> str:
    out = []
    for char in unicodedata.normalize("NFC", name):
        if char in _FORBIDDEN:
            out.append("_")
        elif unicodedata.category(char) in _DROP_CATEGORIES:
            continue
        elif char.isspace():
            out.append(" ")          # no-break and other exotic spaces become a plain space
        else:
            out.append(char)
    return "".join(out)


def _split_extension(name: str) -> tuple[str, str]:
    """('page', '.tar.xz') style split that keeps short, plain extensions only."""
    match = re.search(r"((?:\.[A-Za-z0-9]{1,10}){1,2})$", name)
    if not match or match.start() == 0:
        return name, ""
    return name[:match.start()], match.group(1)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def _limit_length(name: str, max_bytes: int) -> str:
    """Shorten the stem, keep the extension, add a hash so shortened names stay distinct."""
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    stem, extension = _split_extension(name)
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    room = max_bytes - len(extension.encode("utf-8")) - len(digest) - 1
    if room < 1:  # absurdly long "extension": give up on keeping it
        stem, extension = name, ""
        room = max_bytes - len(digest) - 1
    return f"{_truncate_utf8(stem, room)}~{digest}{extension}"


def is_reserved(name: str) -> bool:
    """True for Windows device names ('CON', 'nul.txt', 'Com1.tar.gz' ...)."""
    base = name.split(".", 1)[0].rstrip(" ").upper()
    return base in _WINDOWS_RESERVED


def safe_file_name(name: str, *, default: str = DEFAULT_NAME, max_bytes: int = MAX_NAME_BYTES) -> str:
    """A single, harmless path component derived from an untrusted name.

    Separators become '_' (so 'a/../../b' stays one component, 'a_.._.._b'), leading
    dots are removed (no '.', '..' or hidden files), invisible characters are
    dropped, reserved device names get a '_' prefix, and long names are shortened
    with a hash suffix.  An empty result becomes `default`.
    """
    text = _clean_characters(name if isinstance(name, str) else str(name))
    text = text.strip(" ").lstrip(".").rstrip(". ")
    if not text:
        text = default
    if is_reserved(text):
        text = "_" + text
    return _limit_length(text, max_bytes)


def is_safe_file_name(name: str, *, max_bytes: int = MAX_NAME_BYTES) -> bool:
    """True when `name` is already what safe_file_name would produce for it."""
    return bool(name) and safe_file_name(name, max_bytes=max_bytes) == name


def deduplicate(name: str, taken: set[str]) -> str:
    """`name`, or 'stem_2.ext', 'stem_3.ext' ... whichever is not in `taken` (compared case-insensitively,
    because the download folder may live on a case-insensitive filesystem).  Adds the result to `taken`."""
    lowered = {item.casefold() for item in taken}
    candidate = name
    stem, extension = _split_extension(name)
    counter = 2
    while candidate.casefold() in lowered:
        suffix = f"_{counter}{extension}"
        candidate = _truncate_utf8(stem, MAX_NAME_BYTES - len(suffix.encode("utf-8"))) + suffix
        counter += 1
    taken.add(candidate)
    return candidate


def short_id(identifier: str, length: int = 8) -> str:
    """A short, filesystem-safe form of an untrusted request id (uuid hex normally).

    Ids that are not plain tokens are replaced by a hash of themselves so that
    two different hostile ids do not collapse into the same short id.
    """
    if _TOKEN.match(identifier or ""):
        return identifier[:length]
    return hashlib.sha256((identifier or "").encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _strip_last_extension(name: str) -> str:
    """'page.3B.tif' -> 'page.3B': only the last short, plain suffix is an extension."""
    match = re.search(r"\.[A-Za-z0-9]{1,10}$", name)
    if not match or match.start() == 0:
        return name
    return name[:match.start()]


def request_folder_name(image_name: str, request_uuid: str) -> str:
    """'<image name without its last extension>_<short uuid>' for one downloaded request.

    Only the last extension goes ('page.3B.tif' -> 'page.3B_<uuid8>'): dots inside
    scan names often carry meaning (volume.page.side) and must not be lost.
    """
    stem = _strip_last_extension(safe_file_name(image_name, default="request"))
    stem = stem.rstrip(". ") or "request"
    suffix = "_" + short_id(request_uuid)
    return safe_file_name(_truncate_utf8(stem, MAX_NAME_BYTES - len(suffix)) + suffix)


def dedup_key(request_uuid: str, body: bytes) -> str:
    """The key under which a downloaded request is remembered (one line of the index file).

    A normal uuid is used as is; an odd one (newlines, huge, empty) is hashed so the
    index file stays one key per line.  Requests without any uuid fall back to the
    hash of the whole message body, which still catches broker redeliveries.
    """
    if _TOKEN.match(request_uuid or ""):
        return request_uuid
    if request_uuid:
        return "uuid-sha256:" + hashlib.sha256(request_uuid.encode("utf-8", "surrogatepass")).hexdigest()
    return "body-sha256:" + hashlib.sha256(body).hexdigest()
