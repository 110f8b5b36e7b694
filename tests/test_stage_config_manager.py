"""scripts/stage_config_manager.py: pure decisions, then the real ZooKeeper + RabbitMQ + SFTP."""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import pytest

from pero_worker.dev.local_services import SFTP_HOME, write_server_lists
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.mq import MQError, MQSession, MQSettings
from pero_worker.libs.sftp import SftpClient, SftpSettings
from pero_worker.libs.zk import ZooKeeper
from pero_worker.tools import stage_config as scm
from pero_worker.tools.cli import validate_stage_name

NOW = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
CONFIG = "[PAGE_PARSER]\nRUN_LAYOUT_PARSER = yes\n\n[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\n"


# --- pure decisions ------------------------------------------------------------------

@pytest.mark.parametrize("name, ok", [
    ("ocr", True), ("layout_cz-2", True), ("out", True), ("Stage.v2", True), ("ž-stage", True),
    ("", False), (" ocr", False), ("ocr ", False), ("a/b", False), ("..", False), (".", False),
    ("amq.gen", False), ("zookeeper", False), ("tab\there", False), ("x" * 201, False),
    # ZooKeeper refuses these at the write (BadArgumentsError): emoji (beyond U+FFFF), private use, C1 controls.
    ("stage\U0001F600", False), ("priv\ue000", False), ("c1\x85", False), ("x\ufff0", False),
    ("nbsp\xa0x", True),
])
def test_validate_stage_name(name, ok):
    if ok:
        assert validate_stage_name(name) == name
    else:
        with pytest.raises(ValueError):
            validate_stage_name(name)


@pytest.mark.parametrize("text, ok", [
    (CONFIG, True),
    ("", True),                                   # output stage: empty config
    ("[OCR]\nOCR_JSON = ./ocr/config.json\n", True),
    ("[OCR]\nPATH = %(here)s/x\n", True),         # no interpolation: '%' is just text
    ("no section header\n", False),
    ("[A]\nkey = 1\n[A]\nkey = 2\n", False),      # duplicate section
    ("[A]\nkey = 1\nkey = 2\n", False),           # duplicate option
    ("[A\nkey = 1\n", False),
])
def test_validate_config_text(text, ok):
    if ok:
        assert scm.validate_config_text(text) == text
    else:
        with pytest.raises(ValueError):
            scm.validate_config_text(text)


@pytest.mark.parametrize("stage, local, remote, expected", [
    ("ocr", "/tmp/model.tar.xz", None, "pero/ocr/model.tar.xz"),
    ("ocr", None, None, None),
    ("ocr", "/tmp/model.tar.xz", "pero/models", "pero/models/model.tar.xz"),
    ("ocr", "/tmp/model.tar.xz", "pero/models/", "pero/models/model.tar.xz"),
    ("ocr", "/tmp/model.tar.xz", "pero/ocr/v2.tar.xz", "pero/ocr/v2.tar.xz"),
    ("ocr", None, "pero/ocr/existing.zip", "pero/ocr/existing.zip"),
    ("ocr", None, "./pero//ocr/x.tar.gz", "pero/ocr/x.tar.gz"),
    ("ocr", "m.zip", "/srv/models", "/srv/models/m.zip"),
])
def test_resolve_remote_path(stage, local, remote, expected):
    assert scm.resolve_remote_path(stage, local, remote) == expected


@pytest.mark.parametrize("remote", ["../etc/x.tar.gz", "pero/../../x.zip", "", "a\x00b"])
def test_resolve_remote_path_rejects(remote):
    with pytest.raises(ValueError):
        scm.resolve_remote_path("ocr", "/tmp/model.tar.xz", remote)


PLAN_CASES = [
    # exists, current, config, path, prio, -v, keep  ->  config, path, prio, version, init
    (False, "", None, None, None, None, False, "", "", 0, NOW.isoformat(), True),          # output stage
    (False, "", CONFIG, "pero/x/m.zip", 5, None, False, CONFIG, "pero/x/m.zip", 5, NOW.isoformat(), True),
    (False, "", CONFIG, None, None, "v1", False, CONFIG, "", 0, "v1", True),
    (False, "", CONFIG, None, None, None, True, CONFIG, "", 0, NOW.isoformat(), True),     # keep w/o version
    (True, "old", CONFIG, None, None, None, False, CONFIG, None, None, NOW.isoformat(), False),
    (True, "old", None, "p.zip", None, None, False, None, "p.zip", None, NOW.isoformat(), False),
    (True, "old", CONFIG, None, None, None, True, CONFIG, None, None, None, False),         # --keep-version
    (True, "old", None, None, 3, None, False, None, None, 3, None, False),                  # priority only
    (True, "old", None, None, None, "v9", False, None, None, None, "v9", False),            # -v alone
    (True, "old", None, None, None, None, False, None, None, None, None, False),            # nothing
]


@pytest.mark.parametrize("exists, current, config, path, prio, requested, keep, "
                         "e_config, e_path, e_prio, e_version, e_init", PLAN_CASES)
def test_plan_update(exists, current, config, path, prio, requested, keep,
                     e_config, e_path, e_prio, e_version, e_init):
    plan = scm.plan_update(exists=exists, current_version=current, config_text=config, config_path=path,
                           priority=prio, requested_version=requested, keep_version=keep, now=NOW)
    assert plan == scm.StageUpdate(config=e_config, config_path=e_path, priority=e_prio, version=e_version,
                                   init_stats=e_init)


def test_new_version_never_repeats_the_current_one():
    assert scm.new_version("", None, NOW) == NOW.isoformat()
    assert scm.new_version(NOW.isoformat(), None, NOW) != NOW.isoformat()
    assert scm.new_version("anything", "v7", NOW) == "v7"


def test_format_table_aligns_columns():
    text = scm.format_table(["A", "BB"], [["long value", "x"], ["y", "z"]])
    lines = text.splitlines()
    assert lines[0].index("BB") == lines[1].index("x") == lines[2].index("z")


# --- against the real services ---------------------------------------------------------

@pytest.fixture
def env(services, zk_root, conn_config, unique_name):
    """Tools run as user `pero` (SASL on ZooKeeper, RabbitMQ user, SFTP password): what an operator does."""
    auth = dataclasses.replace(conn_config, username=services.user, password=services.password)
    zk = ZooKeeper(auth).start()
    write_server_lists(zk, services)
    mq = MQSession(MQSettings(servers=(Address(services.mq_host, services.mq_port),),
                              username=services.user, password=services.password))
    mq.open(retry_for=10)
    sftp = SftpClient(SftpSettings(servers=(Address(services.sftp_host, services.sftp_port),),
                                   username=services.user, password=services.password))
    stages: list[str] = []

    def stage(prefix: str = "stage") -> str:
        name = unique_name(prefix)
        stages.append(name)
        return name

    def run(*args: str) -> int:
        return scm.main(["-z", zk_root, "-u", services.user, "--password-file", str(services.password_file),
                         *args])

    yield SimpleNamespace(zk=zk, mq=mq, sftp=sftp, stage=stage, run=run, services=services, zk_root=zk_root)
    for name in stages:
        try:
            mq.delete_queue(name)
        except MQError:
            pass
        shutil.rmtree(SFTP_HOME / "pero" / name, ignore_errors=True)
    mq.close()
    sftp.close()
    zk.delete("/pero", recursive=True)   # nodes carry our sasl:pero ACL: only we can remove them
    zk.stop()


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        data = b"weights " * 1000
        info = tarfile.TarInfo("model/weights.bin")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def queue_accepts_stage_arguments(mq: MQSession, name: str) -> bool:
    """A declare with other arguments fails against an existing queue, so this checks its arguments."""
    try:
        mq.declare_stage_queue(name)
    except MQError:
        return False
    return True


def test_create_stage_with_config_and_model(env, config_file, model, tmp_path, capsys):
    name = env.stage("ocr")
    assert env.run("--name", name, "--config", str(config_file), "--file", str(model), "-a", "7") == 0
    out = capsys.readouterr().out
    assert f"stage {name} created" in out

    zk = env.zk
    assert zk.get_text(zk_paths.stage_config(name)) == CONFIG
    remote = f"pero/{name}/model.tar.gz"
    assert zk.get_text(zk_paths.stage_config_path(name)) == remote
    version = zk.get_text(zk_paths.stage_config_version(name))
    assert datetime.datetime.fromisoformat(version).tzinfo is not None
    raw_priority = zk.get(zk_paths.stage_admin_priority(name))
    assert raw_priority == (7).to_bytes(4, "big", signed=True)
    # Empty, as the original leaves it: its watchdog then assumes a default time (0.0 made it skip the stage).
    assert zk.get(zk_paths.stage_avg_msg_time(name)) == b""
    assert zk.exists(zk_paths.stage_waiting_since(name))
    assert zk.get_text(zk_paths.stage_waiting_since(name)) == ""

    assert env.mq.queue_length(name) == 0
    assert queue_accepts_stage_arguments(env.mq, name)

    downloaded = tmp_path / "back.tar.gz"
    env.sftp.download(remote, downloaded)
    assert downloaded.read_bytes() == model.read_bytes()
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert env.sftp.read_bytes(remote + ".sha256").decode() == f"{digest}  model.tar.gz\n"


def test_output_stage_is_queue_and_empty_config(env):
    name = env.stage("out")
    assert env.run("--name", name) == 0
    assert env.mq.queue_length(name) == 0
    assert env.zk.get_text(zk_paths.stage_config(name), default="MISSING") == ""
    assert env.zk.get_text(zk_paths.stage_config_path(name), default="MISSING") == ""
    assert env.zk.get_text(zk_paths.stage_config_version(name)) != ""
    assert zk_paths.decode_priority(env.zk.get(zk_paths.stage_admin_priority(name))) == 0
    # No avg_msg_time: the original watchdog skips a stage without it, so it never schedules the output stage.
    assert not env.zk.exists(zk_paths.stage_avg_msg_time(name))
    assert env.zk.get_text(zk_paths.stage_waiting_since(name), default="MISSING") == ""


def test_output_stage_given_a_config_becomes_a_processing_stage_and_back(env, config_file, tmp_path):
    name = env.stage("out")
    assert env.run("--name", name) == 0
    assert env.run("--name", name, "--config", str(config_file)) == 0
    assert env.zk.get(zk_paths.stage_avg_msg_time(name)) == b""
    empty = tmp_path / "empty.ini"
    empty.write_text("")
    assert env.run("--name", name, "--config", str(empty)) == 0
    assert not env.zk.exists(zk_paths.stage_avg_msg_time(name))


def test_versions_on_update(env, config_file, tmp_path):
    name = env.stage()
    assert env.run("--name", name, "--config", str(config_file), "-v", "v1") == 0
    version = lambda: env.zk.get_text(zk_paths.stage_config_version(name))  # noqa: E731
    assert version() == "v1"

    changed = tmp_path / "changed.ini"
    changed.write_text(CONFIG + "\n[OCR]\nX = 1\n")
    assert env.run("--name", name, "--config", str(changed), "--keep-version") == 0
    assert version() == "v1"
    assert "[OCR]" in env.zk.get_text(zk_paths.stage_config(name))

    assert env.run("--name", name, "-a", "-1") == 0           # priority only: no reload
    assert version() == "v1"
    assert zk_paths.decode_priority(env.zk.get(zk_paths.stage_admin_priority(name))) == -1
    # Disabled = no node: the original reads the node unsigned (ff ff ff ff would be its highest
    # priority) and its watchdog skips a stage without it.
    assert not env.zk.exists(zk_paths.stage_admin_priority(name))
    assert env.run("--name", name, "-a", "2") == 0
    assert env.zk.get(zk_paths.stage_admin_priority(name)) == b"\x00\x00\x00\x02"
    assert env.run("--name", name, "-a", "-1") == 0

    assert env.run("--name", name, "--config", str(config_file)) == 0
    assert version() not in ("v1", "")


def test_invalid_config_writes_nothing(env, tmp_path, capsys):
    name = env.stage()
    bad = tmp_path / "bad.ini"
    bad.write_text("this is not ini\n")
    assert env.run("--name", name, "--config", str(bad)) == 2
    err = capsys.readouterr().err
    assert "not a valid INI" in err and "Traceback" not in err
    assert not env.zk.exists(zk_paths.stage_root(name))
    assert env.mq.queue_length(name) is None


def test_missing_remote_archive_is_refused(env):
    name = env.stage()
    assert env.run("--name", name, "--remote-path", f"pero/{name}/nothere.tar.xz") == 1
    assert not env.zk.exists(zk_paths.stage_root(name))


def test_existing_remote_archive_can_be_referenced(env, model):
    first = env.stage()
    assert env.run("--name", first, "--file", str(model)) == 0
    second = env.stage()
    assert env.run("--name", second, "--remote-path", f"pero/{first}/model.tar.gz") == 0
    assert env.zk.get_text(zk_paths.stage_config_path(second)) == f"pero/{first}/model.tar.gz"


def test_list_and_show(env, config_file, model, capsys):
    ocr = env.stage("ocr")
    out = env.stage("out")
    assert env.run("--name", ocr, "--config", str(config_file), "--file", str(model), "-v", "v3", "-a", "2") == 0
    assert env.run("--name", out) == 0
    env.mq.publish_and_wait(ocr, b"x")
    env.mq.publish_and_wait(ocr, b"y")
    capsys.readouterr()

    assert env.run("--list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["STAGE", "KIND", "VERSION", "PRIORITY", "QUEUED", "MODEL"]
    rows = {line.split()[0]: line.split() for line in table[1:-1]}
    assert rows[ocr] == [ocr, "processing", "v3", "2", "2", f"pero/{ocr}/model.tar.gz"]
    assert rows[out][1] == "output" and rows[out][3:6] == ["-", "0", "-"]

    assert env.run("--show", ocr) == 0
    shown = capsys.readouterr().out
    assert "v3" in shown and "2 message(s) ready" in shown and "RUN_LAYOUT_PARSER = yes" in shown

    assert env.run("--show", env.stage("missing")) == 1


def test_delete(env, config_file, model, capsys):
    name = env.stage()
    assert env.run("--name", name, "--config", str(config_file), "--file", str(model)) == 0
    remote = f"pero/{name}/model.tar.gz"
    env.mq.publish_and_wait(name, b"pending request")

    assert env.run("--delete", name) == 1                     # would lose a request
    assert "still holds 1 request" in capsys.readouterr().err
    assert env.mq.queue_length(name) == 1

    assert env.run("--delete", name, "--keep-config", "--force") == 0
    assert env.mq.queue_length(name) is None
    assert env.zk.exists(zk_paths.stage_root(name)) and env.sftp.exists(remote)

    assert env.run("--name", name, "--keep-version") == 0     # re-created from the kept config
    assert env.mq.queue_length(name) == 0
    assert env.run("--delete", name) == 0
    assert env.mq.queue_length(name) is None
    assert not env.zk.exists(zk_paths.stage_root(name))
    assert not env.sftp.exists(remote) and not env.sftp.exists(remote + ".sha256")


def test_delete_keeps_a_model_another_stage_uses(env, model, capsys):
    first, second = env.stage(), env.stage()
    assert env.run("--name", first, "--file", str(model)) == 0
    assert env.run("--name", second, "--remote-path", f"pero/{first}/model.tar.gz") == 0
    assert env.run("--delete", first) == 0
    assert f"still used by {second}" in capsys.readouterr().out
    assert env.sftp.exists(f"pero/{first}/model.tar.gz")


@pytest.mark.parametrize("args", [
    [],                                       # no action
    ["--list", "--name", "x"],
    ["--list", "--config", "c.ini"],
    ["--name", "x", "--keep-config"],
    ["--name", "a/b"],
])
def test_usage_errors(env, args, capsys):
    assert env.run(*args) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_name_zookeeper_refuses_leaves_no_queue(env, capsys):
    name = env.stage("emoji") + "\U0001F600"
    assert env.run("--name", name) == 2
    err = capsys.readouterr().err
    assert "ZooKeeper does not accept the character U+1F600" in err and "Traceback" not in err
    assert env.mq.queue_length(name) is None


def test_zookeeper_is_written_before_the_queue_is_declared(env, services, capsys):
    from kazoo.security import ACL, Id, Permissions
    # /pero/queue readable but not writable by the tool's user: the ZooKeeper write fails ...
    name = env.stage("readonly")
    env.zk.ensure_path(zk_paths.QUEUE_ROOT)
    before, _ = env.zk.client.get_acls(zk_paths.QUEUE_ROOT)
    env.zk.client.set_acls(zk_paths.QUEUE_ROOT, [ACL(Permissions.READ | Permissions.ADMIN,
                                                     Id("sasl", services.user))])
    try:
        assert env.run("--name", name) == ExitCode.ACCESS_REFUSED
        err = capsys.readouterr().err
        assert "ZooKeeper refused access" in err and "Traceback" not in err
        # ... and no queue was declared for it.
        assert env.mq.queue_length(name) is None
    finally:
        env.zk.client.set_acls(zk_paths.QUEUE_ROOT, before)


def test_a_refused_queue_declare_removes_the_new_stage_nodes(env, capsys):
    name = env.stage("clash")
    env.mq.declare_plain_queue(name)        # a queue of that name without the stage arguments
    assert env.run("--name", name) == 1
    err = capsys.readouterr().err
    assert "PRECONDITION_FAILED" in err and "Traceback" not in err
    assert not env.zk.exists(zk_paths.stage_root(name))


def test_runs_as_a_script(env, repo_root):
    name = env.stage("out")
    command = [sys.executable, str(repo_root / "scripts" / "stage_config_manager.py"), "-z", env.zk_root,
               "-u", env.services.user, "--password-file", str(env.services.password_file)]
    created = subprocess.run(command + ["--name", name], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    listed = subprocess.run(command + ["-i"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout


def original_watchdog_reads(zk, stage: str):
    """What the original watchdog reads of a stage (its zk_get_queues rules): waiting_since and avg_msg_time as
    UTF-8 text, an empty avg_msg_time meaning its default time, administrative_priority as an unsigned
    big-endian int; a stage missing any of the three nodes is skipped from scheduling (None here)."""
    nodes = [zk.get(path) for path in (zk_paths.stage_waiting_since(stage), zk_paths.stage_avg_msg_time(stage),
                                       zk_paths.stage_admin_priority(stage))]
    if any(raw is None for raw in nodes):
        return None
    waiting, avg, priority = nodes
    return {"waiting_since": waiting.decode(), "avg_msg_time": float.fromhex(avg.decode()) if avg else "default",
            "administrative_priority": int.from_bytes(priority, "big")}


def test_the_original_watchdog_schedules_our_processing_stages_and_skips_the_output_and_disabled_ones(
        env, config_file):
    """Issue 8.3: with avg_msg_time 0.0 the original computed priority 0 for our stages ('All queues are empty,
    skipping scheduling'); with ff ff ff ff for -1 it read 4294967295, its highest priority."""
    ocr, out, off = env.stage("ocr"), env.stage("out"), env.stage("off")
    assert env.run("--name", ocr, "--config", str(config_file)) == 0
    assert env.run("--name", out) == 0
    assert env.run("--name", off, "--config", str(config_file), "-a", "-1") == 0
    assert original_watchdog_reads(env.zk, ocr) == {
        "waiting_since": "", "avg_msg_time": "default", "administrative_priority": 0}
    assert original_watchdog_reads(env.zk, out) is None, "the output stage is never scheduled by the original"
    assert original_watchdog_reads(env.zk, off) is None, "a disabled stage is skipped by the original"
    assert env.run("--name", off, "-a", "3") == 0
    assert original_watchdog_reads(env.zk, off)["administrative_priority"] == 3


def test_pero_zk_and_pero_user_are_defaults_the_command_line_overrides(env, repo_root):
    """`eval "$(local_services.py env)"` exports PERO_ZK, PERO_USER and PERO_PASSWORD_FILE: the tools use them."""
    name = env.stage("out")
    script = [sys.executable, str(repo_root / "scripts" / "stage_config_manager.py")]
    environment = {**os.environ, "PERO_ZK": env.zk_root, "PERO_USER": env.services.user,
                   "PERO_PASSWORD_FILE": str(env.services.password_file)}
    environment.pop("PERO_PASSWORD", None)
    created = subprocess.run(script + ["--name", name], capture_output=True, text=True, timeout=60, env=environment)
    assert created.returncode == 0, created.stderr
    listed = subprocess.run(script + ["--list"], capture_output=True, text=True, timeout=60, env=environment)
    assert listed.returncode == 0 and name in listed.stdout, listed.stderr
    # Nodes are created with the sasl:pero ACL: reading them worked only because PERO_USER was used.
    assert env.zk.exists(zk_paths.stage_root(name))
    elsewhere = subprocess.run(script + ["-z", "127.0.0.1:1", "--list"], capture_output=True, text=True,
                               timeout=60, env=environment)
    assert elsewhere.returncode == 3 and "127.0.0.1:1" in elsewhere.stderr, "-z wins over PERO_ZK"
    assert "Traceback" not in elsewhere.stderr
