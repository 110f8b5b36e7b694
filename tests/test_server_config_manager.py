"""scripts/server_config_manager.py against the real ZooKeeper (own chroot per test)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pero_worker.libs import zk_paths
from pero_worker.libs.zk import ZooKeeper
from pero_worker.tools import server_config as scm


@pytest.fixture
def bare_zk(conn_config):
    """ZooKeeper on the test chroot with NO server lists written (unlike the shared `zk` fixture)."""
    client = ZooKeeper(conn_config).start()
    yield client
    client.stop()


def run(zk_root: str, *args: str) -> int:
    return scm.main(["-z", zk_root, *args])


# --- pure parts -------------------------------------------------------------------

@pytest.mark.parametrize("entries, port, expected", [
    (["rabbit1"], 5672, ["rabbit1:5672"]),
    (["rabbit1:5673", "10.0.0.1"], 5672, ["rabbit1:5673", "10.0.0.1:5672"]),
    (["a:1,b:2"], 22, ["a:1", "b:2"]),
    (["[::1]:2222", "::1"], 22, ["[::1]:2222", "[::1]:22"]),
    (["[0:0:0:0:0:0:0:1]:5"], 22, ["[::1]:5"]),     # canonical IPv6 spelling
    (["h:1", "h:1"], 22, ["h:1"]),
])
def test_canonical_addresses(entries, port, expected):
    assert scm.canonical_addresses(entries, port) == expected


@pytest.mark.parametrize("entries", [["host:0"], ["host:99999"], ["bad!host"], ["[::1"], ["h:x"], ["a/b"]])
def test_canonical_addresses_rejects(entries):
    with pytest.raises(ValueError):
        scm.canonical_addresses(entries, 22)


@pytest.mark.parametrize("requested, present, expected_delete, expected_missing", [
    (["all"], ["a:1", "b:2"], ["a:1", "b:2"], []),
    (["ALL"], [], [], []),
    (["a:1"], ["a:1", "b:2"], ["a:1"], []),
    (["a"], ["a:5672"], ["a:5672"], []),               # default port applied
    (["c:3"], ["a:1"], [], ["c:3"]),
    (["junk!!"], ["junk!!"], ["junk!!"], []),            # hand-written bad child removable literally
])
def test_plan_removal(requested, present, expected_delete, expected_missing):
    delete, missing = scm.plan_removal(requested, present, 5672)
    assert delete == expected_delete
    assert missing == expected_missing


def test_plan_removal_rejects_an_invalid_entry_that_is_not_configured():
    with pytest.raises(ValueError):
        scm.plan_removal(["a:1", "bad:port"], ["a:1"], 5672)


# --- against ZooKeeper ------------------------------------------------------------------

def test_add_list_remove_every_kind(zk_root, bare_zk, capsys):
    assert run(zk_root, "--add-mq-servers", "rabbit1", "rabbit2:5673", "--add-ftp-servers", "[::1]:2222",
               "--add-monitoring-servers", "mon1") == 0
    assert bare_zk.children(zk_paths.MQ_SERVERS) == ["rabbit1:5672", "rabbit2:5673"]
    assert bare_zk.children(zk_paths.FTP_SERVERS) == ["[::1]:2222"]
    assert bare_zk.children(zk_paths.MQ_MONITORING_SERVERS) == ["mon1:15672"]

    capsys.readouterr()
    assert run(zk_root, "--list-mq-servers") == 0
    out = capsys.readouterr().out
    assert "rabbit1:5672" in out and "rabbit2:5673" in out and "mon1" not in out

    assert run(zk_root, "--rm-mq-servers", "rabbit1") == 0
    assert bare_zk.children(zk_paths.MQ_SERVERS) == ["rabbit2:5673"]
    assert run(zk_root, "--rm-ftp-servers", "all", "--rm-monitoring-servers", "all") == 0
    assert bare_zk.children(zk_paths.FTP_SERVERS) == []
    assert bare_zk.children(zk_paths.MQ_MONITORING_SERVERS) == []
    assert bare_zk.children(zk_paths.MQ_SERVERS) == ["rabbit2:5673"]


def test_adding_twice_keeps_one_entry(zk_root, bare_zk, capsys):
    assert run(zk_root, "--add-mq-servers", "rabbit1:5672") == 0
    assert run(zk_root, "--add-mq-servers", "rabbit1") == 0
    assert "already configured" in capsys.readouterr().out
    assert bare_zk.children(zk_paths.MQ_SERVERS) == ["rabbit1:5672"]


def test_invalid_address_writes_nothing(zk_root, bare_zk, capsys):
    code = run(zk_root, "--add-mq-servers", "good1", "bad:port")
    assert code == 2
    err = capsys.readouterr().err
    assert "bad:port" in err and err.count("\n") == 1       # one line, no traceback
    assert bare_zk.children(zk_paths.MQ_SERVERS) == []


def test_remove_missing_entry_is_reported_not_fatal(zk_root, bare_zk, capsys):
    assert run(zk_root, "--rm-ftp-servers", "nothere:22") == 0
    assert "was not configured" in capsys.readouterr().err


def test_no_action_lists_everything(zk_root, bare_zk, capsys):
    bare_zk.ensure_path(f"{zk_paths.FTP_SERVERS}/sftp1:22")
    assert run(zk_root) == 0
    out = capsys.readouterr().out
    assert "SFTP servers:" in out and "sftp1:22" in out and "RabbitMQ (AMQP) servers: (none)" in out


def test_unreachable_zookeeper_is_one_line_exit_3(capsys):
    code = scm.main(["-z", "127.0.0.1:1", "--list-mq-servers"])
    assert code == 3
    err = capsys.readouterr().err
    assert "cannot connect to ZooKeeper" in err and "Traceback" not in err


def test_runs_as_a_script(zk_root, bare_zk, repo_root):
    result = subprocess.run([sys.executable, str(repo_root / "scripts" / "server_config_manager.py"),
                             "-z", zk_root, "--add-ftp-servers", "files.example.org:2222", "--list-ftp-servers"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "files.example.org:2222" in result.stdout
    assert bare_zk.children(zk_paths.FTP_SERVERS) == ["files.example.org:2222"]


def test_connection_from_ini_file(zk_root, bare_zk, tmp_path, capsys):
    ini = tmp_path / "tools.ini"
    ini.write_text(f"[WORKER]\nzookeeper_servers = {zk_root}\n")
    assert scm.main(["-c", str(ini), "--add-monitoring-servers", "mon.example.org"]) == 0
    assert bare_zk.children(zk_paths.MQ_MONITORING_SERVERS) == ["mon.example.org:15672"]


def test_bad_ini_file_is_a_usage_error(tmp_path, capsys):
    ini = tmp_path / "tools.ini"
    ini.write_text("[OTHER]\nx = 1\n")
    assert scm.main(["-c", str(ini), "--list-mq-servers"]) == 2
    assert "no [TOOLS] or [WORKER]" in capsys.readouterr().err
