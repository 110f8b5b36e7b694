"""Table-driven tests of the pure file-name sanitiser used by the downloader."""
from __future__ import annotations

import os
import unicodedata

import pytest

from pero_worker.libs.safe_names import (
    MAX_NAME_BYTES,
    dedup_key,
    deduplicate,
    is_reserved,
    is_safe_file_name,
    request_folder_name,
    safe_file_name,
    short_id,
)

SANITISED = [
    # (untrusted name, expected safe name)
    ("page.jpg", "page.jpg"),
    ("page_page.xml", "page_page.xml"),
    ("scan 001.tif", "scan 001.tif"),
    ("Žluťoučký kůň.png", "Žluťoučký kůň.png"),
    ("..", "unnamed"),
    (".", "unnamed"),
    ("...", "unnamed"),
    ("", "unnamed"),
    ("   ", "unnamed"),
    ("../x", "_x"),                     # '..' then '/' -> '.._x' -> leading dots stripped
    ("../../evil", "_.._evil"),
    ("/etc/passwd", "_etc_passwd"),
    ("a/../../b", "a_.._.._b"),
    ("..\\..\\windows\\win.ini", "_.._windows_win.ini"),
    ("C:\\boot.ini", "C__boot.ini"),
    (".bashrc", "bashrc"),
    ("name.", "name"),
    ("name. . ", "name"),
    ("tab\there", "tabhere"),
    ("no\u00a0break", "no break"),
    ("nul\x00byte", "nulbyte"),
    ("new\nline\r.txt", "newline.txt"),
    ("bell\x07\x1b[31m", "bell[31m"),
    ("evil\u202egpj.exe", "evilgpj.exe"),   # right-to-left override dropped: no disguised extension
    ("zero\u200bwidth", "zerowidth"),
    ("a*b?c<d>e|f\"g:h", "a_b_c_d_e_f_g_h"),
    ("CON", "_CON"),
    ("con.txt", "_con.txt"),
    ("Com1.tar.gz", "_Com1.tar.gz"),
    ("LPT9", "_LPT9"),
    ("console.txt", "console.txt"),
    ("COM10", "COM10"),
    ("e\u0301", "\u00e9"),                  # NFC normalised
]


@pytest.mark.parametrize("raw, expected", SANITISED)
def test_safe_file_name(raw: str, expected: str) -> None:
    assert safe_file_name(raw) == expected


@pytest.mark.parametrize("raw, _expected", SANITISED)
def test_result_is_one_harmless_component(raw: str, _expected: str, tmp_path) -> None:
    name = safe_file_name(raw)
    assert name not in ("", ".", "..")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".")
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in name)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    # joined to a folder it stays directly inside that folder
    target = os.path.realpath(os.path.join(tmp_path, name))
    assert os.path.dirname(target) == os.path.realpath(tmp_path)
    # and it can really be created there
    with open(target, "wb") as handle:
        handle.write(b"x")


@pytest.mark.parametrize("raw, _expected", SANITISED)
def test_idempotent(raw: str, _expected: str) -> None:
    once = safe_file_name(raw)
    assert safe_file_name(once) == once
    assert is_safe_file_name(once)


@pytest.mark.parametrize("raw, safe", [
    ("page.jpg", True), ("../x", False), ("/abs", False), ("CON", False), ("", False), (".hidden", False),
    ("a" * (MAX_NAME_BYTES + 1), False), ("a" * MAX_NAME_BYTES, True),
])
def test_is_safe_file_name(raw: str, safe: bool) -> None:
    assert is_safe_file_name(raw) is safe


@pytest.mark.parametrize("raw", [
    "x" * 1000 + ".jpg",
    "ž" * 300 + ".tar.xz",
    "a" * 250,
    "b" * 100 + "." + "c" * 200,
])
def test_long_names_are_shortened_keeping_extension(raw: str) -> None:
    name = safe_file_name(raw)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    name.encode("utf-8").decode("utf-8")  # no broken multi-byte character
    stem_ext = raw.rsplit(".", 1)
    if len(stem_ext) == 2 and len(stem_ext[1]) <= 10:
        assert name.endswith("." + stem_ext[1])
    # two different long names never collapse into one
    assert safe_file_name(raw + "y") != name or raw.endswith("y")


def test_long_names_differing_only_at_the_end_stay_distinct() -> None:
    first = safe_file_name("p" * 400 + "1.jpg")
    second = safe_file_name("p" * 400 + "2.jpg")
    assert first != second


@pytest.mark.parametrize("raw, reserved", [
    ("CON", True), ("con", True), ("nul.txt", True), ("AUX.tar.gz", True), ("com3", True), ("CONIN$", True),
    ("CONX", False), ("xnul", False), ("COM10", False), ("page.jpg", False),
])
def test_is_reserved(raw: str, reserved: bool) -> None:
    assert is_reserved(raw) is reserved


@pytest.mark.parametrize("names, expected", [
    (["a.jpg", "b.jpg"], ["a.jpg", "b.jpg"]),
    (["a.jpg", "a.jpg", "a.jpg"], ["a.jpg", "a_2.jpg", "a_3.jpg"]),
    (["A.jpg", "a.jpg"], ["A.jpg", "a_2.jpg"]),          # case-insensitive filesystems
    (["request_info.txt"], ["request_info_2.txt"]),       # taken by the downloader's own file
    (["x.tar.gz", "x.tar.gz"], ["x.tar.gz", "x_2.tar.gz"]),
])
def test_deduplicate(names: list[str], expected: list[str]) -> None:
    taken = {"request_info.txt"}
    assert [deduplicate(n, taken) for n in names] == expected


@pytest.mark.parametrize("identifier, expected_len, plain", [
    ("0123456789abcdef0123456789abcdef", 8, True),
    ("abc", 3, True),
    ("../../x", 8, False),
    ("", 8, False),
    ("a\nb", 8, False),
])
def test_short_id(identifier: str, expected_len: int, plain: bool) -> None:
    result = short_id(identifier)
    assert len(result) == expected_len
    assert result.isalnum()
    assert (result == identifier[:8]) is plain


@pytest.mark.parametrize("image, uuid, expected", [
    ("page.jpg", "0123456789abcdef0123456789abcdef", "page_01234567"),
    ("scan.tar.gz", "fedcba98", "scan.tar_fedcba98"),
    ("page.3B.tif", "0123456789abcdef", "page.3B_01234567"),
    ("vol1.p0007.r.jpeg", "0123456789abcdef", "vol1.p0007.r_01234567"),
    ("noextension", "0123456789abcdef", "noextension_01234567"),
    ("name.with space.png", "0123456789abcdef", "name.with space_01234567"),
    ("../../evil.jpg", "0123456789abcdef", "_.._evil_01234567"),
    ("", "0123456789abcdef", "request_01234567"),
    ("..", "0123456789abcdef", "request_01234567"),
])
def test_request_folder_name(image: str, uuid: str, expected: str) -> None:
    assert request_folder_name(image, uuid) == expected


def test_request_folder_name_hostile_uuid_is_hashed() -> None:
    name = request_folder_name("page.jpg", "../../../etc")
    assert name.startswith("page_") and "/" not in name and ".." not in name
    assert len(name) == len("page_") + 8


@pytest.mark.parametrize("uuid, body, expected_prefix", [
    ("0123456789abcdef0123456789abcdef", b"x", "0123456789abcdef0123456789abcdef"),
    ("bad\nuuid", b"x", "uuid-sha256:"),
    ("", b"x", "body-sha256:"),
])
def test_dedup_key(uuid: str, body: bytes, expected_prefix: str) -> None:
    key = dedup_key(uuid, body)
    assert key.startswith(expected_prefix)
    assert "\n" not in key
    assert dedup_key("", b"x") != dedup_key("", b"y")
