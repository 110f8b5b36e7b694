"""make chaos / make chaos-short: faults injected while pages flow through a secure deployment; nothing may be lost.

    flock /tmp/pero-secure.lock .venv/bin/python -m pero_worker.dev.chaos.run [--short] [--pages N]

What it does, in order:
  1. deploys with scripts/system_setup.py (TLS, SASL, passwords; ports 16022-16673, account `perochaos`,
     files under --base) - its own ZooKeeper, RabbitMQ node and sshd, never the shared services;
  2. makes three stages: chaos_a and chaos_b (DUMMY, --page-seconds each) and chaos_model (DUMMY with a small
     model archive uploaded over SFTP), and one output stage per phase (chaos_out_<n>);
  3. runs 3 workers, the watchdog and the log daemon under dev/supervisor.py with the restart policy of
     sample-config/systemd/ (Restart=always, RestartSec=1, ...);
  4. uploads the pages with publisher.py in chunks (keeping a small backlog, so pages flow all the time) and
     injects one fault per phase (see verdict.FULL / verdict.SHORT), measuring how long until the daemons are
     back and results flow again;
  5. waits until the stage queues are empty, downloads every output stage with publisher.py --download and
     compares with the upload manifests: lost, duplicated (skipped by the downloader), failed;
  6. prints the table and the queue depths, tears the deployment down (unless --keep).

Exit status: 0 all promises kept; 1 a loss, a daemon out of its bound, too many duplicates, something left in
a queue, or the deployment could not be made (each reason is printed); 2 bad arguments or not root.
"""
from __future__ import annotations

import argparse
import calendar
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pero_worker.dev.chaos import verdict
from pero_worker.dev.chaos.engines import PORTS, REPO, USER, DeployError, Deployment
from pero_worker.dev.supervisor import Program, Supervisor, unit_policy
from pero_worker.libs import tls, zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import DEAD_LETTER_QUEUE, MQError, MQSession, MQSettings
from pero_worker.libs.zk import ZkConnectionError, ZooKeeper

PY = sys.executable
UNITS = REPO / "sample-config" / "systemd"
STAGES = ("chaos_a", "chaos_model", "chaos_b")
WORKERS = ("chaos_w1", "chaos_w2", "chaos_w3")
LOG_QUEUE = "log"
POLL = 0.05


@dataclasses.dataclass(frozen=True)
class Options:
    pages: int
    faults: tuple[verdict.Fault, ...]
    base: Path
    output: Path
    page_seconds: float
    chunk: int
    backlog: int
    keep: bool


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m pero_worker.dev.chaos.run",
                                     description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true",
                        help="the CI form: fewer pages (default 240) and faults (worker, broker app, poison, "
                             "ZooKeeper, log daemon); under 5 minutes")
    parser.add_argument("--pages", type=int, help="pages to upload (default 1000, --short 240)")
    parser.add_argument("--base", type=Path, default=Path(os.environ.get("PERO_CHAOS_BASE", "/tmp/pero-chaos")),
                        help="the deployment's files (removed at the end unless --keep; default %(default)s)")
    parser.add_argument("--output", type=Path, default=REPO / "chaos-output",
                        help="daemon logs, downloads and the table (default %(default)s)")
    parser.add_argument("--page-seconds", type=float, default=0.03, help="DUMMY time per page per stage")
    parser.add_argument("--keep", action="store_true", help="leave the deployment running for inspection")
    args = parser.parse_args(argv)
    pages = args.pages if args.pages is not None else (240 if args.short else 1000)
    faults = verdict.SHORT if args.short else verdict.FULL
    if pages < 10 * (len(faults) + 1):
        parser.error(f"--pages must be at least {10 * (len(faults) + 1)} (ten per phase)")
    return Options(pages=pages, faults=faults, base=args.base, output=args.output.resolve(),
                   page_seconds=args.page_seconds, chunk=20, backlog=30, keep=args.keep)


# --- talking to the deployment --------------------------------------------------------------------------

class Probe:
    """The suite's own AMQP session for queue counters; reopens after an outage without raising."""

    def __init__(self, dep: Deployment) -> None:
        self.settings = MQSettings(servers=(Address("127.0.0.1", PORTS["--mq-port"]),), username=USER,
                                   password=dep.password, ca_cert=dep.ca)
        self.session: MQSession | None = None

    def session_open(self) -> MQSession:
        if self.session is None or not self.session.is_open:
            self.session = MQSession(self.settings, name="pero-chaos probe")
            self.session.open(retry_for=0.5)
        return self.session

    def call(self, what: Callable[[MQSession], int | None]) -> int | None:
        try:
            return what(self.session_open())
        except MQError:
            if self.session is not None:
                self.session.close()
            self.session = None
            return None

    def length(self, queue: str) -> int | None:
        return self.call(lambda s: s.queue_length(queue))

    def consumers(self, queue: str) -> int | None:
        return self.call(lambda s: s.queue_consumers(queue))

    def stage_consumers(self) -> int | None:
        counts = [self.consumers(stage) for stage in STAGES]
        return None if None in counts else sum(counts)

    def all_back(self) -> bool:
        """Every worker consuming a stage queue and the log daemon consuming the log queue."""
        return self.stage_consumers() == len(WORKERS) and self.consumers(LOG_QUEUE) == 1

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def _tool(dep: Deployment, script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    option = "--connection-config" if script == "stage_config_manager.py" else "-c"
    return subprocess.run([PY, f"scripts/{script}", option, dep.worker_ini, "-e", dep.ca, *args], cwd=REPO,
                          env=_env(dep), capture_output=True, text=True, timeout=timeout)


def _env(dep: Deployment) -> dict[str, str]:
    """The daemons' environment: nothing of the shared services' PERO_* leaks in; the INI files say it all."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PERO_")}
    env["PERO_SFTP_KNOWN_HOSTS"] = dep.known_hosts
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_stages(dep: Deployment, opts: Options, work: Path) -> list[str]:
    dummy = (f"[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\nTIME_DIFF_MIN = {opts.page_seconds!r}\n"
             f"TIME_DIFF_MAX = {opts.page_seconds!r}\n")
    (work / "dummy.ini").write_text(dummy)
    archive = work / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("model/weights.bin", os.urandom(200_000)), ("model/readme.txt", b"chaos model\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    outputs = [f"chaos_out_{index}" for index in range(len(opts.faults) + 1)]
    commands = [["--name", "chaos_a", "--config", str(work / "dummy.ini")],
                ["--name", "chaos_model", "--config", str(work / "dummy.ini"), "--file", str(archive)],
                ["--name", "chaos_b", "--config", str(work / "dummy.ini")]]
    commands += [["--name", out] for out in outputs]
    for command in commands:
        done = _tool(dep, "stage_config_manager.py", *command)
        if done.returncode != 0:
            raise DeployError(f"stage_config_manager.py {' '.join(command)}: {(done.stdout + done.stderr)[-500:]}")
    return outputs


# Each daemon's /metrics on its own port of the suite's range (the defaults 9471-9473 would collide: three
# workers here, and other deployments on this machine).
METRICS_PORTS = {"chaos_w1": 16111, "chaos_w2": 16112, "chaos_w3": 16113, "watchdog": 16114, "logd": 16115}


def _metrics(name: str) -> list[str]:
    return ["--metrics-address", f"127.0.0.1:{METRICS_PORTS[name]}"]


def supervise(dep: Deployment, opts: Options) -> Supervisor:
    logs, state = opts.output / "daemons", dep.base / "state"
    env = _env(dep)
    config = dep.config
    programs = [Program(worker, [PY, "worker/run_worker.py", "-c", str(config / "worker.ini"), "-i", worker,
                                 "--cache-directory", str(state / worker), *_metrics(worker)],
                        unit_policy(UNITS / "pero-worker@.service"), logs / f"{worker}.log", env, str(REPO))
                for worker in WORKERS]
    programs.append(Program("watchdog", [PY, "watchdog/worker_watchdog.py", "-c", str(config / "watchdog.ini"),
                                         "--state-directory", str(state / "watchdog"), *_metrics("watchdog")],
                            unit_policy(UNITS / "pero-watchdog.service"), logs / "watchdog.log", env, str(REPO)))
    programs.append(Program("logd", [PY, "log_daemon/log_daemon.py", "-c", str(config / "logd.ini"),
                                     "-o", str(opts.output / "logd"), *_metrics("logd")],
                            unit_policy(UNITS / "pero-log-daemon.service"), logs / "logd.log", env, str(REPO)))
    return Supervisor().add_all(programs).start()


# --- uploading while faults happen ------------------------------------------------------------------------

class Feeder(threading.Thread):
    """Uploads the pages with publisher.py, a chunk at a time, keeping about `backlog` pages waiting in the first
    stage; each chunk goes to the output stage of the phase current when it starts."""

    def __init__(self, dep: Deployment, opts: Options, outputs: list[str], pages: list[Path], manifests: Path) -> None:
        super().__init__(name="feeder", daemon=True)
        self.dep, self.opts, self.outputs, self.pages, self.manifests = dep, opts, outputs, pages, manifests
        self.phase = 0
        self.failures: list[str] = []
        self._halt = threading.Event()
        self.probe = Probe(dep)

    def published(self, phase: int | None = None) -> int:
        phases = range(len(self.outputs)) if phase is None else [phase]
        return sum(len(manifest_uuids(self.manifests / f"{p}.jsonl")) for p in phases)

    def run(self) -> None:
        while not self._halt.is_set():
            done = self.published()
            if done >= self.opts.pages:
                return
            waiting = self.probe.length(STAGES[0])
            if waiting is None or waiting >= self.opts.backlog:
                self._halt.wait(0.2)
                continue
            phase = self.phase
            chunk = self.pages[done:done + min(self.opts.chunk, self.opts.pages - done)]
            upload = _tool(self.dep, "publisher.py", "--stages", *STAGES, self.outputs[phase], "--images",
                           *map(str, chunk), "--manifest", str(self.manifests / f"{phase}.jsonl"), "--no-progress")
            if upload.returncode != 0:      # e.g. the broker is down: what was confirmed is in the manifest
                self.failures.append(upload.stderr.strip().splitlines()[-1] if upload.stderr.strip() else "?")
                self._halt.wait(0.5)

    def stop(self) -> None:
        self._halt.set()


def manifest_uuids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["uuid"] for line in path.read_text().splitlines() if line.strip()]


# --- the faults ------------------------------------------------------------------------------------------------

class UpWatch(threading.Thread):
    """The first moment (wall clock) a port of the deployment accepts a TCP connection again, polled every 20 ms:
    the recovery point of an engine restart (the earliest moment a client could be back, so the daemons get no
    credit for our own probe's latency).  Start it once the engine is down."""

    def __init__(self, port: int) -> None:
        super().__init__(name=f"up-{port}", daemon=True)
        self.port = port
        self.up_at: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                self.up_at = time.time()
                return
            except OSError:
                self._halt.wait(0.02)

    def result(self, timeout: float = 30.0) -> float:
        """Its up time; when the watch never saw the port (should not happen), now."""
        self.join(timeout)
        self._halt.set()
        return self.up_at if self.up_at is not None else time.time()


class ZkUpWatch(UpWatch):
    """ZooKeeper binds its port long before it serves (a JVM start under load takes 5-30 s), and a client that
    connects meanwhile just hangs.  So: short probes (a TLS handshake of at most 0.5 s, then a real session with
    SASL), and the recovery point is the end of the last failed probe before one succeeded - the earliest moment
    it can have been serving, so the daemons get no credit for the probe's own latency."""

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(PORTS["--zookeeper-port"])
        self.config = config

    def run(self) -> None:
        last_failure = time.time()
        while not self._halt.is_set():
            try:
                tls.probe("127.0.0.1", self.port, str(self.config.ca_cert), service="ZooKeeper", timeout=0.5)
                ZooKeeper(self.config, timeout=1.0).start().stop()
                self.up_at = last_failure
                return
            except (OSError, tls.TLSError, ZkConnectionError):
                last_failure = time.time()
                self._halt.wait(0.02)


class Injector:
    """Injects one fault and measures, from the daemons' own log lines (UTC, milliseconds), when each affected
    daemon works again: the recovery point is the kill (a killed daemon) or the moment the engine accepts
    connections again (UpWatch)."""

    def __init__(self, dep: Deployment, sup: Supervisor, probe: Probe, outputs: list[str], opts: Options) -> None:
        self.dep, self.sup, self.probe, self.outputs, self.opts = dep, sup, probe, outputs, opts
        self.killed_workers = 0
        self.poison_sent = 0

    def output_total(self) -> int | None:
        counts = [self.probe.length(out) for out in self.outputs]
        return None if None in counts else sum(counts)

    def until(self, condition: Callable[[], bool], timeout: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if condition():
                return time.monotonic() - started
            time.sleep(POLL)
        return None

    def log_of(self, name: str) -> Path:
        return self.sup.programs[name].log_path

    def measure(self, fault: verdict.Fault, t0: float, before: int | None, expected: dict[str, str],
                since: float, note: str = "") -> verdict.Recovery:
        """`expected`: daemon name -> the log line that says it works again, logged at or after `since`.
        Back = the last of those lines - t0; output = results flowing into the output queues again - t0."""
        def stamps() -> dict[str, float]:
            found = {}
            for name, needle in expected.items():
                times = log_times(self.log_of(name), needle, since)
                if times:
                    found[name] = times[0]
            return found
        output_at = None
        deadline = time.time() + 60
        while time.time() < deadline:
            if output_at is None and before is not None and (self.output_total() or 0) > before:
                output_at = time.time()
            if len(stamps()) == len(expected) and (output_at is not None or before is None):
                break
            time.sleep(POLL)
        found = stamps()
        missing = sorted(set(expected) - set(found))
        back = None if missing else max(0.0, max(found.values()) - t0)
        if missing:
            note = f"{note}; not back: {', '.join(missing)}".lstrip("; ")
        return verdict.Recovery(fault, back, None if output_at is None else max(0.0, output_at - t0), note)

    def run(self, fault: verdict.Fault) -> verdict.Recovery:
        return getattr(self, f"_{fault.kind}")(fault)

    def _kill(self, fault: verdict.Fault, name: str, needle: str) -> verdict.Recovery:
        before = self.output_total()
        t0 = time.time()
        old = self.sup.kill9(name)
        return self.measure(fault, t0, before, {name: needle}, t0, f"pid {old} killed")

    def _kill_worker(self, fault: verdict.Fault) -> verdict.Recovery:
        name = WORKERS[self.killed_workers % len(WORKERS)]
        self.killed_workers += 1
        return self._kill(fault, name, "consuming stage")

    def _kill_logd(self, fault: verdict.Fault) -> verdict.Recovery:
        return self._kill(fault, "logd", "consuming log queue")

    def _kill_watchdog(self, fault: verdict.Fault) -> verdict.Recovery:
        return self._kill(fault, "watchdog", "is now ACTIVE")

    def _broker(self, fault: verdict.Fault, stop: Callable[[], object], start: Callable[[], object],
                note: str) -> verdict.Recovery:
        before = self.output_total()
        stop()
        since = time.time()         # the broker is down: a "consuming" line from now on is a recovery
        watch = UpWatch(PORTS["--mq-port"])
        watch.start()
        start()
        expected = {worker: "consuming stage" for worker in WORKERS}
        expected["logd"] = "consuming log queue"
        return self.measure(fault, watch.result(), before, expected, since, note)

    def _rabbitmq_app(self, fault: verdict.Fault) -> verdict.Recovery:
        return self._broker(fault, lambda: (self.dep.rabbitmqctl("stop_app"), time.sleep(3)),
                            lambda: self.dep.rabbitmqctl("start_app"), "app stopped 3 s")

    def _rabbitmq_node(self, fault: verdict.Fault) -> verdict.Recovery:
        return self._broker(fault, lambda: (self.dep.stop_rabbitmq_node(), time.sleep(2)),
                            self.dep.start_rabbitmq_node, "node stopped 2 s, started again")

    def _zookeeper(self, fault: verdict.Fault) -> verdict.Recovery:
        before = self.output_total()
        since = time.time()
        self.dep.kill_zookeeper()
        time.sleep(3)
        watch = ZkUpWatch(zk_config(self.dep))
        watch.start()
        self.dep.start_zookeeper()
        t0 = watch.result(60)
        lost = [name for name in self.sup.programs
                if log_times(self.log_of(name), "ZooKeeper connection to", since)]
        expected = {name: "ZooKeeper connection restored" for name in lost}
        return self.measure(fault, t0, before, expected, since,
                            f"down {t0 - since:.0f} s (restart after 3 s); {len(lost)} daemons had lost it")

    def _sftp(self, fault: verdict.Fault) -> verdict.Recovery:
        before = self.output_total()
        since = time.time()
        self.dep.stop_sftp()
        done = _tool(self.dep, "stage_config_manager.py", "--name", "chaos_model", "--config",
                     str(self.opts.base / "work" / "dummy.ini"))
        if done.returncode != 0:
            return verdict.Recovery(fault, None, None, "stage update failed: " + done.stderr.strip()[-200:])
        # A new version of the model stage: its workers must fetch the model; wait until one failed to (<= 20 s).
        self.until(lambda: any(log_times(self.log_of(w), "SFTP", since) for w in WORKERS), 20)
        time.sleep(1)
        watch = UpWatch(PORTS["--sftp-port"])
        watch.start()
        self.dep.start_sftp()
        t0 = watch.result()
        tried = [w for w in WORKERS if log_times(self.log_of(w), "SFTP", since)]
        # Back = processing again: consuming the model stage, or another one the watchdog moved it to meanwhile.
        return self.measure(fault, t0, before, {w: "consuming stage" for w in tried}, t0,
                            f"{len(tried)} worker(s) met the outage")

    def _poison(self, fault: verdict.Fault) -> verdict.Recovery:
        bodies = poison_bodies()
        session = self.probe.session_open()
        for body in bodies:
            session.publish(STAGES[0], body)
        if not session.wait_for_confirms(timeout=30):
            return verdict.Recovery(fault, None, None, "broker did not confirm the poison bodies")
        self.poison_sent += len(bodies)
        return verdict.Recovery(fault, 0.0, None, f"{len(bodies)} sent")


def poison_bodies() -> list[bytes]:
    """Bodies a worker cannot process: not protobuf, truncated protobuf, and requests its stage list refuses."""
    valid = ProcessingRequest(uuid="poison", page_uuid="poison", processing_stages=list(STAGES) + ["x"])
    valid.results.add(name="page.jpg", content=b"\xff\xd8" * 100)
    wrong_stage = ProcessingRequest(uuid="poison-2", page_uuid="p", processing_stages=["somewhere_else", "x"])
    return [b"\xff" * 64, valid.SerializeToString()[:-7], b"not a protobuf at all \x00\x01",
            ProcessingRequest(uuid="poison-3").SerializeToString(), wrong_stage.SerializeToString()]


def zk_config(dep: Deployment) -> ConnectionConfig:
    return ConnectionConfig(zookeeper_servers=(Address("127.0.0.1", PORTS["--zookeeper-port"]),), username=USER,
                            password=dep.password, ca_cert=dep.ca)


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def log_times(path: Path, needle: str, since: float) -> list[float]:
    """UTC times (epoch seconds) of the daemon log lines containing `needle`, at or after `since`."""
    found = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        if needle not in line:
            continue
        match = LOG_TIME.match(line)
        if match:
            stamp = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
            if stamp >= since - 0.001:
                found.append(stamp)
    return found


# --- the run -------------------------------------------------------------------------------------------------

def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} chaos: {message}", flush=True)


def write_pages(folder: Path, count: int) -> list[Path]:
    """Small stand-in page images (DUMMY stages never decode them), distinct names."""
    folder.mkdir(parents=True, exist_ok=True)
    pages = []
    for index in range(count):
        path = folder / f"page_{index:04d}.jpg"
        path.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))
        pages.append(path)
    return pages


def wait_drained(probe: Probe, injector: Injector, published: int, timeout: float = 600) -> bool:
    """Until the stage queues are empty and the output queues hold every request and stopped growing."""
    deadline = time.monotonic() + timeout
    stable_since, last = time.monotonic(), -1
    while time.monotonic() < deadline:
        ready = [probe.length(stage) for stage in STAGES]
        total = injector.output_total()
        if None in ready or total is None or any(ready) or total != last or total < published:
            stable_since, last = time.monotonic(), total if total is not None else -1
        elif time.monotonic() - stable_since >= 3:
            return True
        time.sleep(0.2)
    return False


def download(dep: Deployment, out: str, folder: Path) -> tuple[verdict.DownloadSummary, list[str]]:
    done = _tool(dep, "publisher.py", "--download", out, "--directory", str(folder), "--no-progress",
                 "--idle-timeout", "2", timeout=600)
    summary = verdict.parse_download_summary(done.stdout + done.stderr)
    if done.returncode != 0 or summary is None:
        raise DeployError(f"publisher.py --download {out} failed ({done.returncode}): "
                          f"{(done.stdout + done.stderr)[-400:]}")
    uuids = []
    for info in folder.glob("*/request_info.txt"):
        first = info.read_text(errors="replace").splitlines()[0]
        uuids.append(first.split(":", 1)[1].strip())
    return summary, uuids


def drain_dead_letters(probe: Probe) -> int:
    session = probe.session_open()
    count = 0
    while (delivery := session.get(DEAD_LETTER_QUEUE)) is not None:
        count += 1
        session.ack(delivery.delivery_tag)
    return count


def inject_all(opts: Options, feeder: Feeder, injector: Injector, started: float) -> list[verdict.Recovery]:
    per_phase = opts.pages // (len(opts.faults) + 1)
    recoveries = []
    for index, fault in enumerate(opts.faults):
        target = (index + 1) * per_phase
        # A fault starts from a healthy state: this phase's pages uploaded, results flowing, every daemon consuming.
        injector.until(lambda target=target: feeder.published() >= target and (injector.output_total() or 0) > 0
                       and injector.probe.all_back(), 600)
        feeder.phase = index + 1
        say(f"fault {index + 1}/{len(opts.faults)} at {time.monotonic() - started:.0f} s "
            f"({feeder.published()} pages uploaded): {fault.name}")
        try:
            recovery = injector.run(fault)
        except (DeployError, MQError, OSError, subprocess.SubprocessError) as error:
            recovery = verdict.Recovery(fault, None, None, f"injection failed: {error}")
        back = "-" if recovery.back is None else f"{recovery.back:.2f} s"
        say(f"  back after {back} (bound {fault.bound:g} s); {recovery.note}")
        recoveries.append(recovery)
    return recoveries


def run_suite(dep: Deployment, opts: Options) -> int:
    started = time.monotonic()
    work = opts.base / "work"
    work.mkdir(parents=True, exist_ok=True)
    outputs = make_stages(dep, opts, work)
    pages = write_pages(work / "pages", opts.pages)
    say("stages made; starting 3 workers, the watchdog and the log daemon under dev/supervisor.py")
    sup = supervise(dep, opts)
    probe = Probe(dep)
    manifests = opts.output / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    feeder = Feeder(dep, opts, outputs, pages, manifests)
    injector = Injector(dep, sup, probe, outputs, opts)
    try:
        with ZooKeeper(zk_config(dep)) as zk:
            def up() -> bool:
                statuses = [zk.get_text(zk_paths.worker_status(worker)) for worker in WORKERS]
                return all(statuses) and zk_paths.DEAD not in statuses and probe.consumers(LOG_QUEUE) == 1
            if injector.until(up, 180) is None:
                say("the daemons did not come up within 180 s; see " + str(opts.output / "daemons"))
                return ExitCode.FAILED
        say(f"daemons up; uploading {opts.pages} pages, {len(opts.faults)} faults")
        feeder.start()
        recoveries = inject_all(opts, feeder, injector, started)
        feeder.join(900)
        published = feeder.published()
        say(f"all {published} pages uploaded ({len(feeder.failures)} publisher runs failed during outages); "
            "waiting for the queues to drain")
        drained = wait_drained(probe, injector, published)
        phases = []
        for index, out in enumerate(outputs):
            summary, uuids = download(dep, out, opts.output / "results" / out)
            phases.append(verdict.phase_counts(manifest_uuids(manifests / f"{index}.jsonl"), uuids, summary))
        dead = drain_dead_letters(probe)
        for recovery in recoveries:
            if recovery.fault.kind == "poison":
                recovery.note = f"{injector.poison_sent} sent, {dead} dead-lettered"
        depths = {name: probe.length(name) for name in (*STAGES, *outputs, LOG_QUEUE, DEAD_LETTER_QUEUE)}
    finally:
        feeder.stop()
        sup.stop()
        probe.close()
    return report(opts, recoveries, phases, depths, injector.poison_sent, dead, drained, started)


def report(opts: Options, recoveries: list[verdict.Recovery], phases: list[verdict.PhaseCounts],
           depths: dict[str, int | None], poison_sent: int, dead: int, drained: bool, started: float) -> int:
    known = {name: (-1 if depth is None else depth) for name, depth in depths.items()}
    table = verdict.format_table(recoveries, phases[1:], phases[0])
    found = verdict.problems(recoveries, phases, known, poison_sent, dead)
    if not drained:
        found.append("the stage queues did not drain within 600 s")
    elapsed = time.monotonic() - started
    load = open("/proc/loadavg").read().split()[:3]
    text = "\n".join([table, "", verdict.format_depths(known),
                      f"{sum(p.published for p in phases)} pages, {len(recoveries)} faults, {elapsed:.0f} s "
                      f"(load average {' '.join(load)})"])
    print(text)
    (opts.output / "table.md").write_text(text + "\n")
    for problem in found:
        print(f"chaos: FAILED: {problem}", file=sys.stderr)
    if not found:
        say("PASSED: nothing lost, every daemon back within its bound, nothing left in a queue")
    return ExitCode.FAILED if found else ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # The suite's own probes retry through the outages it causes: their warnings are expected, not news.
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s chaos %(levelname)s %(name)s: %(message)s")
    for noisy in ("pika", "kazoo"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    began = time.monotonic()
    if os.geteuid() != 0:
        print("chaos: needs root (system_setup.py creates a system account and starts sshd)", file=sys.stderr)
        return ExitCode.USAGE
    shutil.rmtree(opts.output, ignore_errors=True)
    opts.output.mkdir(parents=True)
    dep = Deployment(opts.base)
    say(f"deploying with system_setup.py into {opts.base} (TLS; ports {min(PORTS.values())}-{max(PORTS.values())})")
    try:
        dep.up()
        return run_suite(dep, opts)
    except DeployError as error:
        print(f"chaos: {error}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    finally:
        if opts.keep:
            say(f"deployment kept in {opts.base}: stop it with  scripts/system_setup.py --stop -o "
                f"{dep.config} -d {dep.data}")
        else:
            dep.down()
            say("deployment stopped and removed")
        say(f"whole run (deploy, faults, downloads, teardown): {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
