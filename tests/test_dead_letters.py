"""scripts/dead_letters.py: pure decisions as tables, the tool against the real broker and a real worker.

The dead-letter queue `pero_dead_letter` is shared with every other test run on this broker, so the tool's
tests work on a queue of their own (`--queue`), and the test with a real worker selects its letters by their
unique source queue; nothing here purges what it did not create.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pero_worker.dev.opsplane import (
    REPO,
    dummy_stage_config,
    make_stage,
    request_body,
    start_worker,
    wait_for,
    worker_connected,
)
from pero_worker.libs import zk_paths
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import DEAD_LETTER_QUEUE, MQSession, MQSettings, PublishOutcome
from pero_worker.tools.dead_letters import (
    DeadLetter,
    ReplayRefused,
    Selection,
    export_name,
    format_age,
    list_rows,
    replay_target,
)

TOOL = REPO / "scripts" / "dead_letters.py"
CONTROLLER = REPO / "scripts" / "worker_controller.py"


def letter(stages=None, *, reason="wrong_queue: x", source="a", worker="w1", position=1, body=None,
           timestamp=1000.0, message_id="tok.1", priority=0) -> DeadLetter:
    if body is None:
        body = request_body(list(stages or []), "req1")
    return DeadLetter(position=position, body=body, priority=priority, message_id=message_id,
                      timestamp=timestamp, headers={"reason": reason, "source_queue": source, "worker_id": worker})


def stages_of(body: bytes) -> list[str]:
    request = ProcessingRequest()
    request.ParseFromString(body)
    return list(request.processing_stages)


# --- pure parts ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("selection, expected", [
    (Selection(), True),
    (Selection(ids=frozenset({"tok.1"})), True),
    (Selection(ids=frozenset({"1"})), True),                 # by position
    (Selection(ids=frozenset({"tok.2"})), False),
    (Selection(reasons=frozenset({"wrong_queue"})), True),
    (Selection(reasons=frozenset({"unparsable"})), False),
    (Selection(sources=frozenset({"a"})), True),
    (Selection(sources=frozenset({"b"})), False),
    (Selection(workers=frozenset({"w1"})), True),
    (Selection(workers=frozenset({"w2"})), False),
    (Selection(older_than=500), True),                       # 1000 s old at now=2000
    (Selection(older_than=1500), False),
    (Selection(reasons=frozenset({"wrong_queue"}), sources=frozenset({"b"})), False),   # filters combine
])
def test_selection(selection, expected):
    assert selection.matches(letter(["a", "out"]), now=2000.0) is expected


def test_selection_by_age_skips_letters_of_unknown_age():
    assert not Selection(older_than=0).matches(letter(["a", "out"], timestamp=None), now=2000.0)
    assert not Selection().filtered and Selection(workers=frozenset({"w"})).filtered


@pytest.mark.parametrize("stages, source, to, queue, new_stages", [
    (["a", "out"], "a", None, "a", ["a", "out"]),                    # back where it came from
    (["b", "out"], "a", None, "b", ["b", "out"]),                    # wrong_queue: to the queue it belongs in
    (["a", "b", "out"], "a", "b", "b", ["b", "out"]),                # --to a later stage: resume there
    (["a", "out"], "a", "fix", "fix", ["fix", "a", "out"]),          # --to another stage: put first
])
def test_replay_target(stages, source, to, queue, new_stages):
    target = replay_target(letter(stages, source=source, priority=1), to)
    assert target.queue == queue
    assert stages_of(target.body) == new_stages
    assert target.priority == 1


def test_replay_target_keeps_the_body_byte_for_byte_when_the_stages_stay():
    original = letter(["a", "out"])
    assert replay_target(original).body == original.body


@pytest.mark.parametrize("stages, body, to, why", [
    (None, b"\xff\x00 not protobuf", None, "not a ProcessingRequest"),
    ([], None, None, "no processing stages left"),
    (["a"], None, None, "no_output_stage"),                # would come straight back
    (["out"], None, "out", "no_output_stage"),              # --to its last stage
])
def test_replay_refused(stages, body, to, why):
    with pytest.raises(ReplayRefused, match=why):
        replay_target(letter(stages, body=body), to)


@pytest.mark.parametrize("seconds, text", [
    (None, "?"), (5, "5 s"), (119, "119 s"), (600, "10 min"), (7200, "2.0 h"), (3 * 86400, "3.0 d")])
def test_format_age(seconds, text):
    assert format_age(seconds) == text


def test_rows_ids_and_file_names():
    body = request_body(["a", "out"], "req1")
    no_id = letter(body=body, message_id=None, reason="", source="", worker="")
    assert no_id.id.startswith("sha1-") and no_id.id == letter(body=body, message_id=None, reason="", source="",
                                                                  worker="").id
    assert no_id.id != letter(body=body, message_id=None, reason="other", source="", worker="").id
    assert list_rows([no_id], now=1010.0) == [["1", no_id.id, "?", "?", "?", "10 s", str(len(no_id.body)), "req1"]]
    assert export_name(letter(["a"], message_id="../x y", position=7)) == "000007-___x_y"


# --- the tool on the real broker -----------------------------------------------------------------------------

def tool(zk_root: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args[:1], "-z", zk_root, *args[1:]], capture_output=True,
                          text=True, timeout=120, input=stdin)


@pytest.fixture
def mq(zk, conn_config):
    session = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test-dead-letters")
    session.open(retry_for=10)
    created: list[str] = []
    yield session, created
    for name in created:
        session.delete_queue(name)
    session.close()


def queue(mq, name: str) -> str:
    session, created = mq
    session.declare_stage_queue(name)
    created.append(name)
    return name


def put_letter(session: MQSession, dlq: str, body: bytes, reason: str, source: str, worker: str = "w1") -> None:
    outcome = session.publish_and_wait(dlq, body, headers={"reason": reason, "source_queue": source,
                                                           "worker_id": worker})
    assert outcome is PublishOutcome.CONFIRMED


def test_list_show_replay_purge_export(zk_root, mq, unique_name, tmp_path):
    session = mq[0]
    dlq, stage, out = queue(mq, unique_name("dlq")), queue(mq, unique_name("st")), queue(mq, unique_name("out"))
    put_letter(session, dlq, request_body([stage, out], "good1"), f"output_unroutable: {out!r} missing", stage)
    put_letter(session, dlq, b"\x07garbage", "unparsable: body is not a ProcessingRequest", stage, "w2")
    put_letter(session, dlq, request_body(["gone_" + stage, out], "lost1"), "wrong_queue: x", stage)

    listed = tool(zk_root, "list", "--queue", dlq)
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if line[:1].isdigit()]
    assert [row.split()[2] for row in rows] == ["output_unroutable", "unparsable", "wrong_queue"]
    assert stage in rows[0] and "good1" in rows[0] and "w2" in rows[1]
    assert "selected 3 of 3 read" in listed.stdout

    shown = tool(zk_root, "show", "--queue", dlq, "--id", "1")
    assert shown.returncode == 0, shown.stderr
    assert "uuid: good1" in shown.stdout and f"processing_stages: {stage}, {out}" in shown.stdout
    assert "not a ProcessingRequest" in tool(zk_root, "show", "--queue", dlq, "--reason", "unparsable").stdout

    refused = tool(zk_root, "replay", "--queue", dlq)
    assert refused.returncode == 2 and "needs a selection" in refused.stderr

    # Replay everything: the good one goes back to its stage, the unparsable one is refused and kept, the one
    # whose stage queue does not exist comes back from the broker and is kept too.  Nothing is lost.
    replayed = tool(zk_root, "replay", "--queue", dlq, "--all")
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "replayed 1 of 3 selected; 2 kept in the queue" in replayed.stdout
    assert "does not exist: message kept" in replayed.stderr
    assert session.queue_length(dlq) == 2
    back = session.get(stage)
    assert back is not None and stages_of(back.body) == [stage, out]
    session.ack(back.delivery_tag)

    # --to: send the wrong_queue one to the stage that exists, in front of its own stages.
    moved = tool(zk_root, "replay", "--queue", dlq, "--reason", "wrong_queue", "--to", stage)
    assert moved.returncode == 0, moved.stderr
    assert stages_of(session.get(stage).body) == [stage, "gone_" + stage, out]

    exported = tool(zk_root, "export", "--queue", dlq, "--all", "--remove", str(tmp_path / "x"))
    assert exported.returncode == 0, exported.stderr
    files = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert len(files) == 2 and files[0].endswith(".bin") and files[1].endswith(".json")
    record = json.loads((tmp_path / "x" / files[1]).read_text())
    assert record["reason"].startswith("unparsable") and record["worker_id"] == "w2"
    assert (tmp_path / "x" / files[0]).read_bytes() == b"\x07garbage"
    assert session.queue_length(dlq) == 0


def test_purge_by_selection_and_confirmation(zk_root, mq, unique_name):
    session = mq[0]
    dlq = queue(mq, unique_name("dlq"))
    for source in ("a", "b", "a"):
        put_letter(session, dlq, b"x", "unparsable: test", source)
    no_tty = tool(zk_root, "purge", "--queue", dlq, "--source", "a")
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr
    purged = tool(zk_root, "purge", "--queue", dlq, "--source", "a", "--yes")
    assert purged.returncode == 0 and "deleted 2 dead letters" in purged.stdout
    assert session.queue_length(dlq) == 1
    left = tool(zk_root, "list", "--queue", dlq)
    assert " b " in left.stdout
    assert tool(zk_root, "purge", "--queue", dlq, "--all", "--yes").returncode == 0
    assert session.queue_length(dlq) == 0


def test_bad_input_is_one_line(zk_root, mq, unique_name, tmp_path):
    missing = tool(zk_root, "list", "--queue", unique_name("nothere"))
    assert missing.returncode == 0 and "does not exist yet" in missing.stdout
    dlq = queue(mq, unique_name("dlq"))
    put_letter(mq[0], dlq, b"x", "unparsable: test", "a")
    (tmp_path / "file").write_text("not a folder")
    unwritable = tool(zk_root, "export", "--queue", dlq, "--all", "--remove", str(tmp_path / "file" / "sub"))
    assert unwritable.returncode == 1 and "cannot export to" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr and mq[0].queue_length(dlq) == 1   # kept
    bad_stage = tool(zk_root, "replay", "--queue", dlq, "--all", "--to", "a/b")
    assert bad_stage.returncode == 2 and "Traceback" not in bad_stage.stderr
    down = subprocess.run([sys.executable, str(TOOL), "list", "-z", "127.0.0.1:1"], capture_output=True, text=True,
                          timeout=60)
    assert down.returncode == 3 and "Traceback" not in down.stderr


def test_real_worker_dead_letters_are_listed_replayed_and_counted(zk_root, zk, mq, unique_name, tmp_path):
    """A live worker dead-letters a request that is in the wrong queue; the tool finds it by its source
    queue, replays it to the queue it belongs in, and worker_controller -q shows the dead-letter depth."""
    session = mq[0]
    stage, other, out = unique_name("stage"), unique_name("other"), unique_name("out")
    make_stage(zk_root, stage, dummy_stage_config(0.01))
    make_stage(zk_root, other, dummy_stage_config(0.01))
    make_stage(zk_root, out, None)
    mq[1].extend([stage, other, out])
    worker_id = unique_name("w")
    zk.ensure_path(zk_paths.worker_root(worker_id))
    zk.set_text(zk_paths.worker_queue(worker_id), stage)
    process = start_worker(zk_root, worker_id, tmp_path)
    try:
        wait_for(lambda: worker_connected(zk, worker_id), 30, "worker connected")
        session.publish_and_wait(stage, request_body([other, out], "misrouted"))
        listed = wait_for(lambda: (r := tool(zk_root, "list", "--source", stage)).stdout.count("misrouted") and r,
                          30, "the dead letter listed")
        assert "wrong_queue" in listed.stdout and worker_id in listed.stdout
        counted = subprocess.run([sys.executable, str(CONTROLLER), "-z", zk_root, "-q"], capture_output=True,
                                 text=True, timeout=60)
        assert counted.returncode == 0, counted.stderr
        assert f"in {DEAD_LETTER_QUEUE}" in counted.stdout
        replayed = tool(zk_root, "replay", "--source", stage)
        assert replayed.returncode == 0, replayed.stderr
        assert f"-> {other} (came from '{stage}')" in replayed.stdout
        back = wait_for(lambda: session.get(other), 10, "the replayed request")
        assert stages_of(back.body) == [other, out]
        session.ack(back.delivery_tag)
        assert "selected 0 of" in tool(zk_root, "list", "--source", stage).stdout
    finally:
        process.stop()
