"""dev/chaos/verdict.py: how a chaos run is judged and shown (the run itself: make chaos / make chaos-short)."""
from __future__ import annotations

import pytest

from pero_worker.dev.chaos import verdict
from pero_worker.dev.chaos.verdict import DownloadSummary, Fault, PhaseCounts, Recovery

KILL = Fault("kill -9 worker 1", "kill_worker", 5.0)
BROKER = Fault("RabbitMQ app stop/start", "rabbitmq_app", 2.0)
POISON = Fault("poison bodies", "poison", 0.0)
CLEAN = PhaseCounts(published=100, downloaded=100, missing=0, duplicates=0, failed=0)
EMPTY = {"chaos_a": 0, "log": 0}


@pytest.mark.parametrize("text, expected", [
    ("downloaded 40 request(s) to /x/out; 0 with failed stages; 2 duplicate(s) skipped\n",
     DownloadSummary(40, 0, 2)),
    ("noise\ndownloaded 3 request(s) to /x; 1 with failed stages (chaos_a: 1); 0 duplicate(s) skipped; "
     "2 unparsable message(s) kept in _unparsable/\n", DownloadSummary(3, 1, 0, 2)),
    ("cannot connect to RabbitMQ\n", None),
])
def test_parse_download_summary(text, expected):
    assert verdict.parse_download_summary(text) == expected


def test_phase_counts_compare_uuids_not_folder_counts():
    counts = verdict.phase_counts(["a", "b", "c"], ["a", "c", "z"], DownloadSummary(3, 1, 4))
    assert counts == PhaseCounts(published=3, downloaded=3, missing=1, duplicates=4, failed=1)


@pytest.mark.parametrize("recoveries, phases, depths, poison, expected", [
    ([Recovery(KILL, 4.2), Recovery(BROKER, 0.7)], [CLEAN], EMPTY, (0, 0), []),
    ([Recovery(KILL, 5.3)], [CLEAN], EMPTY, (0, 0), ["kill -9 worker 1: back after 5.30 s, over its bound of 5 s"]),
    ([Recovery(BROKER, None, note="injection failed: x")], [CLEAN], EMPTY, (0, 0),
     ["RabbitMQ app stop/start: the daemons were not back (injection failed: x)"]),
    ([], [PhaseCounts(100, 99, 1, 0, 0)], EMPTY, (0, 0), ["1 request(s) lost (published, never downloaded)"]),
    ([], [PhaseCounts(1000, 1000, 0, 5, 0)], EMPTY, (0, 0), []),                 # 0.5 %: allowed
    ([], [PhaseCounts(1000, 1000, 0, 6, 0)], EMPTY, (0, 0), ["6 duplicates in 1000 requests: over 0.5%"]),
    ([], [PhaseCounts(100, 100, 0, 0, 7)], EMPTY, (0, 0), []),                   # failed requests are delivered
    ([Recovery(POISON, 0.0)], [CLEAN], EMPTY, (5, 4),
     ["5 poison bodies sent, 4 found in the dead-letter queue"]),
    ([], [CLEAN], {"chaos_a": 3, "log": 0, "chaos_out_1": -1}, (0, 0),
     ["messages left in queues: chaos_a 3, chaos_out_1 -1"]),
    ([], [], EMPTY, (0, 0), ["no request was published"]),
])
def test_problems(recoveries, phases, depths, poison, expected):
    assert verdict.problems(recoveries, phases, depths, *poison) == expected


def test_table_has_a_row_per_fault_and_the_totals():
    table = verdict.format_table([Recovery(KILL, 4.25, 0.05), Recovery(POISON, 0.0, None, "5 sent, 5 dead-lettered")],
                                 [PhaseCounts(20, 20, 0, 1, 0), PhaseCounts(30, 29, 1, 0, 2)], CLEAN)
    lines = table.splitlines()
    assert lines[0].startswith("| fault ") and set(lines[1]) <= {"|", "-"}
    assert [cell.strip() for cell in lines[3].split("|")[1:-1]] == ["kill -9 worker 1", "4.25", "5", "0.05", "20",
                                                                     "0", "1", "0"]
    assert "5 sent, 5 dead-lettered" in lines[4]
    assert [cell.strip() for cell in lines[-1].split("|")[1:-1]][-4:] == ["150", "1", "1", "2"]


def test_the_full_run_injects_every_fault_of_issue_12_and_the_short_one_a_subset():
    kinds = [fault.kind for fault in verdict.FULL]
    assert kinds.count("kill_worker") == 2
    assert set(kinds) == {"kill_worker", "rabbitmq_app", "rabbitmq_node", "zookeeper", "sftp", "kill_watchdog",
                          "kill_logd", "poison"}
    assert set(verdict.SHORT) <= set(verdict.FULL) and len(verdict.SHORT) < len(verdict.FULL)
    assert all(f.bound == (5.0 if f.kind.startswith("kill") else 2.0) for f in verdict.FULL if f.kind != "poison")
