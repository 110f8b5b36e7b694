"""Pure parsing: server addresses, ZooKeeper value encodings, typed config."""
from __future__ import annotations

import argparse
import sys

import pytest

from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address, parse_address, parse_address_list
from pero_worker.libs.config import ConfigError, add_connection_arguments, connection_config


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1", Address("127.0.0.1", 2181)),
    ("127.0.0.1:2182", Address("127.0.0.1", 2182)),
    ("zk-1.example.org:7", Address("zk-1.example.org", 7)),
    ("[::1]:2181", Address("::1", 2181)),
    ("[2001:db8::1]", Address("2001:db8::1", 2181)),
    ("2001:db8::1", Address("2001:db8::1", 2181)),
    ("  localhost  ", Address("localhost", 2181)),
])
def test_parse_address_accepts(text, expected):
    assert parse_address(text, 2181) == expected


@pytest.mark.parametrize("text", [
    "", "host:", "host:0", "host:65536", "host:abc", "[::1", "[::1]x", "[nothost]:1", "bad host:1",
    "a/b:1", "-lead:1", "1.2.3.4:5:6",
])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError):
        parse_address(text, 2181)


def test_address_list_keeps_order_and_drops_duplicates():
    assert parse_address_list(["a:1, b:2", "a:1 [::1]:3"], 9) == [
        Address("a", 1), Address("b", 2), Address("::1", 3)]
    assert str(Address("::1", 3)) == "[::1]:3"


@pytest.mark.parametrize("value", [0, 1, 5, 2**31 - 1, 2**40])
def test_priority_roundtrip_is_big_endian_at_least_4_bytes(value):
    raw = zk_paths.encode_priority(value)
    assert len(raw) >= 4
    assert zk_paths.decode_priority(raw) == value
    assert zk_paths.encode_priority(1) == b"\x00\x00\x00\x01"


def _original_reads(raw: bytes) -> int:
    """How the original watchdog and stage_config_manager decode the node: int.from_bytes(raw, 'big')."""
    return int.from_bytes(raw, "big")


def _original_writes(value: int) -> bytes:
    """How the original stage_config_manager.py -a writes it: int.to_bytes(p, sys.getsizeof(p), 'big')."""
    return int.to_bytes(value, sys.getsizeof(value), "big")


@pytest.mark.parametrize("value", [-1, -2, -(2**31)])
def test_disabled_priority_is_a_missing_node_which_the_original_skips(value):
    """The original can neither write nor read a negative priority (unsigned both ways); a stage without the
    node is skipped by its watchdog.  So -1 is 'no node', and a missing node reads -1 here too."""
    assert zk_paths.encode_priority(value) is None
    assert zk_paths.decode_priority(None) == -1
    with pytest.raises(OverflowError):
        _original_writes(value)


@pytest.mark.parametrize("raw,ours,original", [
    (b"\x00\x00\x00\x00", 0, 0),
    (b"\x00\x00\x00\x03", 3, 3),
    (b"", 0, 0),                                       # just created by the original's ensure_path
    (b"\xff\xff\xff\xff", -1, 4294967295),           # what earlier versions of ours wrote for -1: still -1 here
    (_original_writes(0), 0, 0),                       # 24 zero bytes
    (_original_writes(2), 2, 2),                       # 28 bytes
])
def test_priority_bytes_as_ours_and_the_original_read_them(raw, ours, original):
    assert zk_paths.decode_priority(raw) == ours
    assert _original_reads(raw) == original
    if ours >= 0:
        assert _original_reads(zk_paths.encode_priority(ours)) == ours


def test_float_encoding_is_float_hex_and_tolerates_garbage():
    assert zk_paths.encode_float(0.5) == (0.5).hex().encode()
    assert zk_paths.decode_float(b"0x1.0000000000000p-1") == 0.5
    assert zk_paths.decode_float(b"2.5") == 2.5
    assert zk_paths.decode_float(b"garbage", default=7.0) == 7.0
    assert zk_paths.decode_float(None, default=3.0) == 3.0


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "x\x00"])
def test_paths_refuse_names_that_escape(name):
    with pytest.raises(ValueError):
        zk_paths.stage_config(name)
    with pytest.raises(ValueError):
        zk_paths.worker_queue(name)


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_connection_arguments(parser)
    return parser.parse_args(argv)


def test_command_line_overrides_ini_and_chroot_is_split(tmp_path, monkeypatch):
    monkeypatch.delenv("PERO_PASSWORD", raising=False)
    ini = {"zookeeper_servers": "10.0.0.1:2181", "username": "file-user", "password": "file-pw"}
    config = connection_config(_parse(["-z", "127.0.0.1:2181,[::1]:2182/tenant", "-u", "cli-user"]), ini)
    assert config.zookeeper_servers == (Address("127.0.0.1", 2181), Address("::1", 2182))
    assert config.zookeeper_chroot == "/tenant"
    assert config.username == "cli-user"
    assert config.password == "file-pw"
    assert "file-pw" not in repr(config)


def test_password_sources_in_order(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("PERO_PASSWORD", "from-env")
    ini = {"zookeeper_servers": "h", "password": "from-ini"}
    assert connection_config(_parse(["-p", "cli"]), ini).password == "cli"
    assert connection_config(_parse(["--password-file", str(secret)]), ini).password == "from-file"
    assert connection_config(_parse([]), ini).password == "from-env"
    monkeypatch.delenv("PERO_PASSWORD")
    assert connection_config(_parse([]), ini).password == "from-ini"
    ini = {"zookeeper_servers": "h", "password_file": str(secret)}
    assert connection_config(_parse([]), ini).password == "from-file"


@pytest.mark.parametrize("argv,env,ini,servers,chroot,user", [
    # PERO_ZK / PERO_USER (what `local_services.py env` exports) are defaults: the command line wins, the INI loses
    ([], {"PERO_ZK": "10.0.0.5:2181/t1", "PERO_USER": "envuser"}, {}, [Address("10.0.0.5", 2181)], "/t1", "envuser"),
    (["-z", "h:1", "-u", "cli"], {"PERO_ZK": "10.0.0.5", "PERO_USER": "envuser"}, {}, [Address("h", 1)], None, "cli"),
    ([], {"PERO_ZK": "10.0.0.5", "PERO_USER": "envuser"}, {"zookeeper_servers": "ini:7", "username": "iniuser"},
     [Address("10.0.0.5", 2181)], None, "envuser"),
    ([], {}, {"zookeeper_servers": "ini:7", "username": "iniuser"}, [Address("ini", 7)], None, "iniuser"),
    ([], {"PERO_ZK": "  ", "PERO_USER": ""}, {"zookeeper_servers": "ini:7"}, [Address("ini", 7)], None, None),
    (["-l", "LIST"], {"PERO_ZK": "10.0.0.5"}, {}, [Address("listed", 2181)], None, None),
])
def test_environment_defaults_for_zookeeper_and_user(tmp_path, monkeypatch, argv, env, ini, servers, chroot, user):
    for name in ("PERO_ZK", "PERO_USER", "PERO_PASSWORD", "PERO_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    listing = tmp_path / "zk.list"
    listing.write_text("listed\n")
    config = connection_config(_parse([str(listing) if a == "LIST" else a for a in argv]), ini)
    assert list(config.zookeeper_servers) == servers
    assert config.zookeeper_chroot == chroot
    assert config.username == user


def test_config_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("PERO_ZK", raising=False)
    with pytest.raises(ConfigError, match="no ZooKeeper servers.*PERO_ZK"):
        connection_config(_parse([]), {})
    with pytest.raises(ConfigError, match="bad ZooKeeper server list"):
        connection_config(_parse(["-z", "host:99999"]), {})
    with pytest.raises(ConfigError, match="CA certificate not found"):
        connection_config(_parse(["-z", "h", "-e", str(tmp_path / "none.pem")]), {})
