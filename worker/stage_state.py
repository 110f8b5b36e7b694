"""The worker's stage life cycle as one small state object: what is wanted, what runs, what failed (pure).

Why an object: the reconcile loop in daemon.py reads and changes these fields
together (a stage is wanted, configured, consumed, failed and retried); kept
apart they drift.  Nothing here does I/O or reads a clock: the daemon passes
`now`, applies the action `next_action` returns, and reports the outcome back
through the transition methods.  tests/test_stage_state.py drives it directly.

Life cycle:  wanted --CONFIGURE--> configuring --configured()--> active --START_CONSUMING--> consuming
             configuring --setup_failed()--> failed --(retry_at passed, or the target changed)--> CONFIGURE
             consuming --(target changed, or prefetch must change)--> STOP_CONSUMING --(in-flight drained)--> ...
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pero_worker.libs import zk_paths
from pero_worker.libs.backoff import Backoff
from pero_worker.worker import stats
from pero_worker.worker.stage_setup import setup_retry

# Backoff of transient stage set-up failures (stage_setup.setup_retry decides the rest).
# At most 1 s between attempts: a stage is consuming again within 2 s of the SFTP server coming back (issue 12;
# with a 2 s cap the chaos suite measured 3.0 s).
TRANSIENT_RETRY = {"initial": 0.25, "cap": 1.0}


@dataclass(frozen=True)
class Target:
    stage: str           # '' = no stage
    version: str | None  # None = not known yet


class Action(enum.Enum):
    """What the daemon should do next to bring what runs to what is wanted."""
    NONE = "none"                        # nothing now (set-up running, in-flight requests draining, retry later)
    STOP_CONSUMING = "stop consuming"    # the consumer serves the wrong stage, version or prefetch
    START_CONSUMING = "start consuming"  # the wanted stage is configured: consume it
    REPORT_IDLE = "report idle"          # no stage is wanted and none is configured
    CONFIGURE = "configure"              # take up the wanted target (or drop the old stage for none)


@dataclass
class StageState:
    wanted_stage: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    active: Target | None = None          # what the processing thread is configured for
    configuring: Target | None = None     # a set-up job is running for this target
    failed: Target | None = None          # the last set-up of this target failed
    failed_transient: bool = False        # ... transiently, still within the grace period (status CONFIGURING)
    retry_at: float = 0.0                 # when to try the failed target again
    transient_since: float | None = None  # start of the current run of transient failures
    last_setup_error: str = ""            # said once per series of identical failures
    consuming: str | None = None          # the stage whose queue has a consumer
    prefetch: int = 0
    min_prefetch: int = 0                 # the configured processor reads this many requests per step, twice
    resubscribe: bool = False             # re-subscribe with another prefetch once drained
    setup_backoff: Backoff = field(default_factory=lambda: Backoff(**TRANSIENT_RETRY))

    # --- what is wanted ----------------------------------------------------------------

    def target(self) -> Target:
        stage = self.wanted_stage
        return Target(stage, self.versions.get(stage) if stage else None)

    def matches(self) -> bool:
        """True when what runs is what is wanted (an unknown wanted version matches any)."""
        target = self.target()
        if self.active is None:
            return target.stage == ""
        return self.active.stage == target.stage and (target.version is None
                                                      or self.active.version == target.version)

    def on_average(self, stage: str, average: float) -> bool:
        """A new average time per request of `stage`; True when the consumer must re-subscribe for it."""
        if stage == self.consuming and not self.resubscribe and stats.prefetch_should_change(self.prefetch, average,
                                                                                          self.min_prefetch):
            self.resubscribe = True
            return True
        return False

    # --- the decision --------------------------------------------------------------------

    def next_action(self, now: float, in_flight: bool) -> Action:
        """The next step towards the target; `in_flight`: requests of the current stage are not settled yet."""
        if self.configuring is not None:
            return Action.NONE
        matches = self.matches()
        if self.consuming:
            return Action.STOP_CONSUMING if (not matches or self.resubscribe) else Action.NONE
        if in_flight:
            return Action.NONE
        target = self.target()
        if matches:
            return Action.START_CONSUMING if target.stage else Action.REPORT_IDLE
        if self.failed is not None and self.failed == target and now < self.retry_at:
            return Action.NONE
        return Action.CONFIGURE

    def status(self) -> str:
        """The status word to report while nothing else is happening."""
        if self.failed is not None:
            return zk_paths.CONFIGURING if self.failed_transient else zk_paths.CONFIGURATION_FAILED
        if self.configuring is not None:
            return zk_paths.CONFIGURING
        return zk_paths.PROCESSING if self.consuming else zk_paths.IDLE

    # --- transitions ---------------------------------------------------------------------

    def begin_configure(self, target: Target) -> bool:
        """A set-up job starts for `target`; True when it keeps reporting CONFIGURATION_FAILED meanwhile
        (a retry after the transient grace period: no status flicker at every attempt)."""
        if self.failed != target:   # a new target: a new series of attempts
            self.setup_backoff.reset()
            self.transient_since = None
            self.last_setup_error = ""
        still_failed = self.failed == target and self.transient_since is not None and not self.failed_transient
        self.configuring = target
        self.failed = None
        return still_failed

    def configured(self, target: Target, version: str | None) -> None:
        """The set-up job succeeded (for a stage, or dropped the old one for no stage)."""
        self.configuring = None
        self.transient_since = None
        self.setup_backoff.reset()
        self.last_setup_error = ""
        self.active = Target(target.stage, version) if target.stage else None

    def setup_failed(self, target: Target, now: float, transient: bool) -> str:
        """The set-up of `target` failed: schedule the next attempt; returns the status to report."""
        self.configuring = None
        self.active = None
        self.failed = target
        decision = setup_retry(now, transient, self.transient_since,
                               self.setup_backoff.delay() if transient else 0.0)
        self.retry_at = decision.retry_at
        self.transient_since = decision.transient_since
        self.failed_transient = transient and decision.status == zk_paths.CONFIGURING
        return decision.status

    def consuming_started(self, stage: str, prefetch: int) -> None:
        self.consuming = stage
        self.prefetch = prefetch
        self.resubscribe = False

    def consuming_stopped(self) -> None:
        """The consumer was cancelled, or its channel is gone."""
        self.consuming = None


__all__ = ["Action", "StageState", "Target", "TRANSIENT_RETRY"]
