"""Table-driven tests of the log daemon's rotation decisions (log_daemon/rotation.py)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pero_worker.log_daemon.rotation import (
    file_to_continue,
    files_to_prune,
    is_due,
    log_file_name,
    parse_log_file_name,
)

T0 = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def name_at(minutes: float) -> str:
    return log_file_name(T0 + timedelta(minutes=minutes))


def test_name_round_trips_and_sorts_chronologically():
    times = [T0, T0 + timedelta(microseconds=1), T0 + timedelta(seconds=1), T0 + timedelta(days=400)]
    names = [log_file_name(t) for t in times]
    assert [parse_log_file_name(n) for n in names] == times
    assert sorted(names) == names
    assert log_file_name(T0) == "pero_2024-05-06T07:08:09.000000+00:00.log"


def test_name_is_in_utc():
    local = T0.astimezone(timezone(timedelta(hours=2)))
    assert log_file_name(local) == log_file_name(T0)
    with pytest.raises(ValueError):
        log_file_name(datetime(2024, 1, 1))


@pytest.mark.parametrize("name", [
    "notes.txt", "pero_.log", "pero_2024-05-06T07:08:09+00:00.log", "pero_2024-13-06T07:08:09.000000+00:00.log",
    "pero_2024-05-06T07:08:09.000000+00:00.log.gz", "xpero_2024-05-06T07:08:09.000000+00:00.log",
])
def test_foreign_names_are_not_ours(name):
    assert parse_log_file_name(name) is None


@pytest.mark.parametrize("age_minutes,period,due", [
    (0, 10, False),
    (9.99, 10, False),
    (10, 10, True),
    (11, 10, True),
    (0.05, 0.05, True),        # fractional minutes (tests use seconds-long periods)
    (0.04, 0.05, False),
    (100000, 0, False),        # period 0: never rotate by age
])
def test_is_due(age_minutes, period, due):
    assert is_due(T0, T0 + timedelta(minutes=age_minutes), period) is due


@pytest.mark.parametrize("names,now_minutes,period,expected", [
    ([], 0, 10, None),
    (["other.txt"], 0, 10, None),
    ([name_at(0), name_at(5)], 6, 10, name_at(5)),
    ([name_at(0), name_at(5)], 15, 10, None),          # newest is too old: start a new one
    ([name_at(5), "zzz.log"], 6, 10, name_at(5)),
    ([name_at(30)], 6, 10, None),                       # stamped in the future
    ([name_at(0)], 100000, 0, name_at(0)),              # no rotation: always continue
])
def test_file_to_continue(names, now_minutes, period, expected):
    assert file_to_continue(names, T0 + timedelta(minutes=now_minutes), period) == expected


@pytest.mark.parametrize("ages,keep,expected", [
    ([0, 1, 2], 10, []),
    ([0, 1, 2], 3, []),
    ([0, 1, 2, 3], 3, [0]),
    ([3, 0, 2, 1, 4], 2, [0, 1, 2]),
    ([0, 1, 2, 3], 0, []),               # 0 = keep everything
    ([0, 1, 2, 3], 1, [0, 1, 2]),
])
def test_files_to_prune(ages, keep, expected):
    names = [name_at(a) for a in ages] + ["operator-notes.txt", "pero_weird.log"]
    assert files_to_prune(names, keep) == [name_at(a) for a in expected]


def test_current_file_is_never_pruned_even_if_its_name_is_older():
    names = [name_at(0), name_at(1), name_at(2)]
    assert files_to_prune(names, 1, current=name_at(0)) == [name_at(1), name_at(2)]
