"""The console's pure parts: what the page shows from a snapshot, log parsing, settings."""
from __future__ import annotations

import argparse
import math

import pytest

from pero_worker.console.settings import build_parser, build_settings, parse_listen
from pero_worker.console.view import (
    Extras,
    LogProblem,
    build_view,
    duration,
    failure_lines,
    parse_problems,
    stage_rows,
    worker_rows,
)
from pero_worker.libs import zk_paths
from pero_worker.tools.cli import CliError
from pero_worker.tools.dead_letters import DeadLetter
from pero_worker.watchdog.planning import Move, Plan, PlannerSettings, StageView, WorkerView, plan
from pero_worker.watchdog.state import Snapshot, StageRecord, WorkerRecord

NOW = 10_000.0


def snapshot() -> Snapshot:
    shot = Snapshot(time=NOW, depth_source="amqp+management", other_stages={"out": "empty config (output stage)"})
    shot.workers = [
        WorkerRecord(WorkerView("w1", "ocr", zk_paths.PROCESSING, True, True, NOW + 30)),
        WorkerRecord(WorkerView("w2", "", zk_paths.IDLE, True, True, 0.0)),
        WorkerRecord(WorkerView("w3", "ocr", zk_paths.CONFIGURATION_FAILED, True, True, 0.0)),
        WorkerRecord(WorkerView("w4", "layout", zk_paths.DEAD, False, False, 0.0)),
    ]
    shot.stages = {
        "ocr": StageRecord(StageView("ocr", ready=100, unacked=2, avg_msg_time=2.0, admin_priority=0),
                           consumers=2, deliver_rate=1.5),
        "layout": StageRecord(StageView("layout", ready=10, avg_msg_time=1.0, waiting_since=NOW - 90),
                              consumers=0, deliver_rate=None),
        "off": StageRecord(StageView("off", admin_priority=-1), queue_exists=False),
    }
    return shot


def test_stage_rows_use_the_watchdogs_drain_time():
    rows = {row.name: row for row in stage_rows(snapshot(), PlannerSettings())}
    ocr = rows["ocr"]
    # (100 + 2) messages * 2 s / 2 workers (w1 and w3 are connected, enabled and on the stage)
    assert (ocr.ready, ocr.unacked, ocr.workers, ocr.rate, ocr.eta) == ("100", 2, 2, "1.5/s", "102 s")
    assert (rows["layout"].eta, rows["layout"].waiting, rows["layout"].rate) == ("never (no worker)", "90 s", "-")
    assert (rows["off"].priority, rows["off"].ready, rows["off"].eta) == ("disabled", "no queue", "-")


def test_worker_rows_show_host_uptime_lock_and_last_error():
    extras = Extras(uptimes={"w1": NOW - 3600, "w4": NOW - 60}, hosts={"w1": "10.0.0.7"},
                    problems=(LogProblem("t1", "w1", "ERROR", "old"), LogProblem("t2", "w1", "WARNING", "newest")))
    rows = {row.worker_id: row for row in worker_rows(snapshot(), extras)}
    w1 = rows["w1"]
    assert (w1.host, w1.uptime, w1.locked, w1.last_error, w1.failed) == ("10.0.0.7", "60 min", "30 s", "t2: newest",
                                                                          False)
    assert (rows["w2"].host, rows["w2"].uptime, rows["w2"].stage) == ("?", "-", "")
    assert rows["w3"].last_error == zk_paths.CONFIGURATION_FAILED and rows["w3"].failed
    assert rows["w4"].uptime == "-" and rows["w4"].failed and not rows["w4"].enabled   # disconnected


def test_failures_list_failed_workers_first_then_newest_log_lines():
    extras = Extras(problems=(LogProblem("t1", "w1", "ERROR", "a"), LogProblem("t2", "w2", "WARNING", "b")))
    lines = failure_lines(worker_rows(snapshot(), extras), extras)
    assert lines == ["worker w3: CONFIGURATION_FAILED", "t2 w2 WARNING: b", "t1 w1 ERROR: a"]


def test_build_view_shows_the_planners_moves_and_the_watchdog():
    shot = snapshot()
    planned = plan(shot.worker_views, shot.stage_views, NOW)
    letter = DeadLetter(position=1, body=b"x", headers={"reason": "unparsable: x", "source_queue": "ocr"},
                        message_id="m.1", timestamp=NOW - 5)
    view = build_view(shot, planned, Extras(contenders=("host:1", "host:2"), dead_letter_depth=7,
                                            dead_letters=(letter,)))
    assert view.watchdog == "host:1" and view.standby == ("host:2",)
    # The idle w2 goes to the starving layout stage: the same move the watchdog makes.
    assert [(m.worker_id, m.to_stage) for m in view.moves] == [(m.worker_id, m.to_queue) for m in planned.moves
                                                               if m.to_queue != m.from_queue]
    assert ("w2", "layout") in [(m.worker_id, m.to_stage) for m in view.moves]
    assert view.dead_letter_depth == "7"
    assert [(d.id, d.reason, d.source, d.age) for d in view.dead_letters] == [("m.1", "unparsable", "ocr", "5 s")]
    assert view.processing_stages == ("layout", "ocr")   # 'off' is disabled: not offered as a target
    assert view.updated.endswith("UTC")


def test_wakes_are_not_shown_as_moves():
    view = build_view(snapshot(), Plan(moves=(Move("w1", "ocr", "ocr", 0.0, "wake"),)), Extras())
    assert view.moves == () and view.dead_letter_depth == "?"


@pytest.mark.parametrize("line, expected", [
    ("2026-11-29 11:00:00,123 w1 ERROR pero_worker.worker: model failed: x: y",
     LogProblem("2026-11-29 11:00:00,123", "w1", "ERROR", "model failed: x: y")),
    ("2026-11-29 11:00:00,123 w1 WARNING pero.x: slow\n", LogProblem("2026-11-29 11:00:00,123", "w1", "WARNING",
                                                                       "slow")),
    ("2026-11-29 11:00:00,123 w1 INFO pero.x: fine", None),
    ("garbage", None),
])
def test_parse_problems(line, expected):
    assert parse_problems([line]) == ([expected] if expected else [])


@pytest.mark.parametrize("seconds, text", [(None, "-"), (math.inf, "never (no worker)"), (0, "0 s"), (90, "90 s")])
def test_duration(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize("text, expected", [("127.0.0.1:8088", ("127.0.0.1", 8088)), ("[::1]:9", ("::1", 9)),
                                            (":80", ("127.0.0.1", 80))])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8088", "host:", "host:70000", "host:x"])
def test_parse_listen_refuses(text):
    with pytest.raises(CliError):
        parse_listen(text)


def settings_from(*argv: str, env: dict[str, str] | None = None, monkeypatch=None):
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    args: argparse.Namespace = build_parser().parse_args(["-z", "127.0.0.1:2181", *argv])
    return build_settings(args)


def test_login_is_the_deployments_user(monkeypatch, tmp_path):
    for key in ("PERO_USER", "PERO_PASSWORD", "PERO_PASSWORD_FILE", "PERO_CONSOLE_LISTEN"):
        monkeypatch.delenv(key, raising=False)
    plain = settings_from()
    assert (plain.login_user, plain.login_password, plain.host, plain.port) == ("guest", "guest", "127.0.0.1", 8088)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    named = settings_from("-u", "pero", "--password-file", str(secret), "--listen", "0.0.0.0:9000")
    assert (named.login_user, named.login_password, named.port) == ("pero", "s3cret", 9000)
    from_env = settings_from(env={"PERO_CONSOLE_LISTEN": "127.0.0.1:9100"}, monkeypatch=monkeypatch)
    assert from_env.port == 9100
    assert settings_from("--listen", "127.0.0.1:9200", env={"PERO_CONSOLE_LISTEN": "127.0.0.1:9100"},
                         monkeypatch=monkeypatch).port == 9200   # the command line wins


@pytest.mark.parametrize("argv, why", [
    (["--cert", "x.pem"], "go together"),
    (["--cert", "/nonexistent.pem", "--key", "/nonexistent.key"], "no such file"),
    (["--refresh", "0"], "positive"),
    (["-u", "pero"], "has none here"),
])
def test_bad_settings_are_usage_errors(argv, why, monkeypatch):
    for key in ("PERO_USER", "PERO_PASSWORD", "PERO_PASSWORD_FILE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(CliError, match=why) as error:
        settings_from(*argv)
    assert error.value.exit_code == 2
