"""A small process supervisor with systemd's Restart= semantics, for machines without a running systemd.

Why: the chaos suite (dev/chaos/) kills daemons with SIGKILL and needs them back the way production gets them
back, but this machine and CI have no systemd.  The policy is read from the very unit files in
sample-config/systemd/ (Restart=, RestartSec=, StartLimitIntervalSec=, StartLimitBurst=,
RestartPreventExitStatus=), so the suite measures what the units promise and the two cannot drift apart.

The decisions are pure functions (`policy_from_unit`, `decide`), table-tested in tests/test_supervisor.py;
`Supervisor` is the thin loop that applies them to real child processes.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

SIGNAL_NAMES = {sig.name: int(sig) for sig in signal.Signals}
RESTART_MODES = ("no", "always", "on-failure", "on-abnormal")


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """systemd's defaults: Restart=no, RestartSec=100ms, StartLimitIntervalSec=10s, StartLimitBurst=5."""
    restart: str = "no"
    restart_sec: float = 0.1
    start_limit_interval: float = 10.0
    start_limit_burst: int = 5
    # Exit statuses (>= 0) and signals (as negative numbers, like subprocess's returncode) never restarted.
    prevent: frozenset[int] = frozenset()


@dataclasses.dataclass(frozen=True)
class Decision:
    restart: bool
    at: float = 0.0           # when to start again (monotonic seconds); meaningful when restart is True
    reason: str = ""


def _seconds(value: str) -> float:
    """systemd time span: '2', '2s', '500ms', '5min', '1min 30s'."""
    total, number = 0.0, ""
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "": 1.0}
    for token in value.replace("min", "min ").split():
        digits = "".join(ch for ch in token if ch.isdigit() or ch == ".")
        unit = token[len(digits):]
        number = digits or number
        if unit not in units:
            raise ValueError(f"unknown time unit in {value!r}")
        total += float(number) * units[unit]
    return total


def _status(token: str) -> int:
    if token.isdigit():
        return int(token)
    name = token if token.startswith("SIG") else f"SIG{token}"
    if name not in SIGNAL_NAMES:
        raise ValueError(f"unknown exit status or signal {token!r}")
    return -SIGNAL_NAMES[name]


def policy_from_unit(text: str) -> RestartPolicy:
    """The restart policy of a systemd unit file's text (keys outside [Unit]/[Service] are ignored)."""
    values: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section in ("Unit", "Service") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    restart = values.get("Restart", "no")
    if restart not in RESTART_MODES:
        raise ValueError(f"Restart={restart} is not supported (one of {', '.join(RESTART_MODES)})")
    defaults = RestartPolicy()
    return RestartPolicy(
        restart=restart,
        restart_sec=_seconds(values["RestartSec"]) if "RestartSec" in values else defaults.restart_sec,
        start_limit_interval=(_seconds(values["StartLimitIntervalSec"]) if "StartLimitIntervalSec" in values
                              else defaults.start_limit_interval),
        start_limit_burst=int(values.get("StartLimitBurst", defaults.start_limit_burst)),
        prevent=frozenset(_status(token) for token in values.get("RestartPreventExitStatus", "").split()))


def _wants_restart(mode: str, returncode: int) -> bool:
    if mode == "always":
        return True
    if mode == "on-failure":
        return returncode != 0
    if mode == "on-abnormal":
        return returncode < 0
    return False


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def decide(policy: RestartPolicy, returncode: int, starts: Sequence[float], now: float) -> Decision:
    """Whether (and when) a process that ended with `returncode` is started again.

    `starts` are the monotonic times of its earlier starts.  As in systemd, a start that would be the
    (burst+1)-th within the interval is refused: the unit stays failed for the operator.
    """
    what = describe_exit(returncode)
    if returncode in policy.prevent:
        return Decision(False, reason=f"{what}: a restart cannot fix it (RestartPreventExitStatus)")
    if not _wants_restart(policy.restart, returncode):
        return Decision(False, reason=f"{what}: Restart={policy.restart}")
    at = now + policy.restart_sec
    recent = [t for t in starts if at - t < policy.start_limit_interval]
    if len(recent) >= policy.start_limit_burst:
        return Decision(False, reason=f"{what}: start limit hit ({len(recent)} starts within "
                                      f"{policy.start_limit_interval:g} s, StartLimitBurst={policy.start_limit_burst})")
    return Decision(True, at=at, reason=f"{what}: restarting in {policy.restart_sec:g} s")


# --- the loop that applies the decisions ---------------------------------------------------------

@dataclasses.dataclass
class Program:
    name: str
    argv: list[str]
    policy: RestartPolicy
    log_path: Path
    env: dict[str, str] | None = None
    cwd: str | None = None
    process: subprocess.Popen | None = None
    starts: list[float] = dataclasses.field(default_factory=list)
    exits: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    restart_at: float | None = None
    failed: str = ""


class Supervisor:
    """Runs programs and restarts them by their policy; `events` keeps (time, name, what) for reports."""

    def __init__(self, poll_interval: float = 0.05) -> None:
        self.programs: dict[str, Program] = {}
        self.events: list[tuple[float, str, str]] = []
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def add(self, program: Program) -> None:
        self.programs[program.name] = program

    def add_all(self, programs: Sequence[Program]) -> Supervisor:
        for program in programs:
            self.add(program)
        return self

    def start(self) -> Supervisor:
        with self._lock:
            for program in self.programs.values():
                self._spawn(program)
        self._thread.start()
        return self

    def _spawn(self, program: Program) -> None:
        program.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(program.log_path, "ab") as log:
            program.process = subprocess.Popen(program.argv, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=program.env, cwd=program.cwd)
        now = time.monotonic()
        program.starts.append(now)
        program.restart_at = None
        self.events.append((now, program.name, f"started (pid {program.process.pid})"))

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            with self._lock:
                for program in self.programs.values():
                    self._tend(program, time.monotonic())

    def _tend(self, program: Program, now: float) -> None:
        if program.failed:
            return
        if program.restart_at is not None:
            if now >= program.restart_at:
                self._spawn(program)
            return
        if program.process is None or program.process.poll() is None:
            return
        code = program.process.returncode
        program.exits.append((now, code))
        decision = decide(program.policy, code, program.starts, now)
        self.events.append((now, program.name, decision.reason))
        if decision.restart:
            program.restart_at = decision.at
        else:
            program.failed = decision.reason

    def pid(self, name: str) -> int | None:
        with self._lock:
            process = self.programs[name].process
            return process.pid if process is not None and process.poll() is None else None

    def kill9(self, name: str) -> int | None:
        """SIGKILL the program's current process (the fault the chaos suite injects); its pid, or None."""
        pid = self.pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM everything (no restarts from now on), SIGKILL what is still running after `timeout`."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        running = [p.process for p in self.programs.values() if p.process is not None and p.process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def unit_policy(unit_file: Path) -> RestartPolicy:
    return policy_from_unit(unit_file.read_text(encoding="utf-8"))
