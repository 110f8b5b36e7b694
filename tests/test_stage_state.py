"""The worker's stage life cycle (worker/stage_state.py): decisions and transitions, no services."""
from __future__ import annotations

import pytest

from pero_worker.libs import zk_paths
from pero_worker.worker import stats
from pero_worker.worker.stage_setup import CONFIG_RETRY_INTERVAL, TRANSIENT_GRACE
from pero_worker.worker.stage_state import Action, StageState, Target

NOW = 1000.0


def state(**fields) -> StageState:
    made = StageState()
    for name, value in fields.items():
        setattr(made, name, value)
    return made


# (what the state is, requests in flight, the action)
NEXT_ACTION = [
    ("nothing wanted, nothing runs", state(), False, Action.REPORT_IDLE),
    ("a stage is wanted, nothing runs", state(wanted_stage="ocr"), False, Action.CONFIGURE),
    ("a set-up job is running", state(wanted_stage="ocr", configuring=Target("ocr", None)), False, Action.NONE),
    ("configured, version unknown yet", state(wanted_stage="ocr", active=Target("ocr", "1")), False,
     Action.START_CONSUMING),
    ("configured for the wanted version", state(wanted_stage="ocr", versions={"ocr": "1"}, active=Target("ocr", "1")),
     False, Action.START_CONSUMING),
    ("a new version is wanted", state(wanted_stage="ocr", versions={"ocr": "2"}, active=Target("ocr", "1")), False,
     Action.CONFIGURE),
    ("consuming what is wanted", state(wanted_stage="ocr", active=Target("ocr", "1"), consuming="ocr"), False,
     Action.NONE),
    ("consuming, another stage is wanted",
     state(wanted_stage="layout", active=Target("ocr", "1"), consuming="ocr"), True, Action.STOP_CONSUMING),
    ("consuming, nothing is wanted any more", state(active=Target("ocr", "1"), consuming="ocr"), False,
     Action.STOP_CONSUMING),
    ("consuming, prefetch must change",
     state(wanted_stage="ocr", active=Target("ocr", "1"), consuming="ocr", resubscribe=True), True,
     Action.STOP_CONSUMING),
    ("stopped consuming, in-flight requests not settled",
     state(wanted_stage="layout", active=Target("ocr", "1")), True, Action.NONE),
    ("stopped consuming, everything settled", state(wanted_stage="layout", active=Target("ocr", "1")), False,
     Action.CONFIGURE),
    ("unassigned while configured: drop the stage", state(active=Target("ocr", "1")), False, Action.CONFIGURE),
    ("failed, retry not due", state(wanted_stage="ocr", failed=Target("ocr", None), retry_at=NOW + 5), False,
     Action.NONE),
    ("failed, retry due", state(wanted_stage="ocr", failed=Target("ocr", None), retry_at=NOW), False,
     Action.CONFIGURE),
    ("failed, but another stage is wanted now",
     state(wanted_stage="layout", failed=Target("ocr", None), retry_at=NOW + 60), False, Action.CONFIGURE),
]


@pytest.mark.parametrize(("case", "stage_state", "in_flight", "expected"), NEXT_ACTION,
                         ids=[row[0] for row in NEXT_ACTION])
def test_next_action(case, stage_state, in_flight, expected):
    assert stage_state.next_action(NOW, in_flight) is expected


STATUS = [
    (state(), zk_paths.IDLE),
    (state(consuming="ocr"), zk_paths.PROCESSING),
    (state(configuring=Target("ocr", None)), zk_paths.CONFIGURING),
    (state(failed=Target("ocr", None)), zk_paths.CONFIGURATION_FAILED),
    (state(failed=Target("ocr", None), failed_transient=True), zk_paths.CONFIGURING),
]


@pytest.mark.parametrize(("stage_state", "expected"), STATUS)
def test_status(stage_state, expected):
    assert stage_state.status() == expected


def test_a_configuration_error_is_retried_after_the_long_interval():
    s = state(wanted_stage="ocr")
    target = s.target()
    assert s.begin_configure(target) is False and s.configuring == target
    assert s.setup_failed(target, NOW, transient=False) == zk_paths.CONFIGURATION_FAILED
    assert s.configuring is None and s.failed == target and s.retry_at == NOW + CONFIG_RETRY_INTERVAL
    assert s.next_action(NOW + CONFIG_RETRY_INTERVAL - 1, False) is Action.NONE
    assert s.next_action(NOW + CONFIG_RETRY_INTERVAL, False) is Action.CONFIGURE


def test_transient_failures_stay_configuring_then_report_failed_without_flicker():
    s = state(wanted_stage="ocr")
    target = s.target()
    s.begin_configure(target)
    assert s.setup_failed(target, NOW, transient=True) == zk_paths.CONFIGURING
    assert s.retry_at <= NOW + s.setup_backoff.cap and s.transient_since == NOW
    assert s.begin_configure(target) is False          # still within the grace: CONFIGURING is reported again
    late = NOW + TRANSIENT_GRACE + 1
    assert s.setup_failed(target, late, transient=True) == zk_paths.CONFIGURATION_FAILED
    assert s.status() == zk_paths.CONFIGURATION_FAILED
    assert s.begin_configure(target) is True           # after the grace: keep saying CONFIGURATION_FAILED


def test_success_clears_the_failure_series_and_activates_the_version():
    s = state(wanted_stage="ocr", versions={"ocr": "7"})
    target = s.target()
    s.begin_configure(target)
    s.setup_failed(target, NOW, transient=True)
    s.last_setup_error = "sftp down"
    s.begin_configure(target)
    s.configured(target, "7")
    assert s.active == Target("ocr", "7") and s.failed is None and s.transient_since is None
    assert s.last_setup_error == "" and s.setup_backoff.attempts == 0
    assert s.next_action(NOW, False) is Action.START_CONSUMING
    s.consuming_started("ocr", 4)
    assert (s.consuming, s.prefetch, s.status()) == ("ocr", 4, zk_paths.PROCESSING)


def test_a_new_target_starts_a_new_series_of_attempts():
    s = state(wanted_stage="ocr")
    s.begin_configure(s.target())
    s.setup_failed(s.target(), NOW, transient=True)
    s.setup_failed(s.target(), NOW + 1, transient=True)
    assert s.setup_backoff.attempts == 2
    s.wanted_stage = "layout"
    s.begin_configure(s.target())
    assert s.setup_backoff.attempts == 0 and s.transient_since is None


def test_a_new_average_asks_for_a_resubscribe_once():
    s = state(wanted_stage="ocr", active=Target("ocr", "1"))
    s.consuming_started("ocr", stats.choose_prefetch(None))
    fast = 0.001
    assert stats.prefetch_should_change(s.prefetch, fast)
    assert s.on_average("ocr", fast) is True and s.resubscribe
    assert s.on_average("ocr", fast) is False                 # already asked
    assert s.on_average("layout", fast) is False              # not the consumed stage
    assert s.next_action(NOW, False) is Action.STOP_CONSUMING
    s.consuming_stopped()
    assert s.next_action(NOW, False) is Action.START_CONSUMING
    s.consuming_started("ocr", stats.choose_prefetch(fast))
    assert not s.resubscribe


def test_a_long_transient_outage_is_retried_at_most_1_s_apart():
    """Issue 12: consuming again <= 2 s after the SFTP server is back, so attempts never drift more than 1 s apart
    (with the earlier 2 s cap the chaos suite measured 3.0 s)."""
    s = state(wanted_stage="ocr")
    target = s.target()
    gaps = []
    now = NOW
    for _attempt in range(20):
        s.begin_configure(target)
        s.setup_failed(target, now, transient=True)
        gaps.append(s.retry_at - now)
        now = s.retry_at
    assert max(gaps) <= 1.0 and gaps[0] <= 0.25
