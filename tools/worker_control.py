"""Inspect and steer workers: status table, queue table, switch a worker's stage, shut one down,
remove the record of a dead one.

Everything goes through the workers' ZooKeeper nodes (docs/protocol.md §4): a switch writes
`queue` (and `unlock_time`, so the watchdog leaves the worker there for a while), a
shutdown writes `enabled = false`, which running workers obey within seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from pero_worker.libs import zk_paths
from pero_worker.libs.config import ConnectionConfig, add_connection_arguments
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.stages import classify_stage_config
from pero_worker.libs.zk import ZooKeeper
from pero_worker.tools.cli import (
    EXIT_CODES_HELP,
    CliError,
    add_debug_argument,
    build_connection_config,
    connect_zookeeper,
    run_main,
    validate_stage_name,
)
from pero_worker.tools.dead_letters import dead_letter_line
from pero_worker.watchdog.report import format_table, seconds
from pero_worker.watchdog.settings import ELECTION_PATH
from pero_worker.watchdog.state import StateReader, format_iso, read_workers

DEFAULT_SWITCH_LOCK = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker_controller.py",
        description="Show and control pero workers through ZooKeeper.",
        epilog=EXIT_CODES_HELP,
    )
    add_connection_arguments(parser)
    actions = parser.add_mutually_exclusive_group(required=True)
    actions.add_argument("-s", "--status", action="store_true", help="table of workers (status, stage, lock)")
    actions.add_argument("-q", "--queues", action="store_true",
                         help="table of stages: queue depth, consumers, workers, timing")
    actions.add_argument("-i", "--switch", nargs=2, metavar=("WORKER", "STAGE"),
                         help="make WORKER process STAGE ('' = no stage); the watchdog leaves it there for "
                              "--lock seconds unless the stage runs dry")
    actions.add_argument("-d", "--shutdown", metavar="WORKER", help="ask WORKER to shut down (enabled = false)")
    actions.add_argument("-r", "--remove", metavar="WORKER",
                         help="delete the ZooKeeper record of a dead worker (refused while it is connected)")
    parser.add_argument("--lock", type=float, default=DEFAULT_SWITCH_LOCK, metavar="SECONDS",
                        help=f"with --switch: keep the watchdog from moving the worker for this long "
                             f"(default {DEFAULT_SWITCH_LOCK:.0f})")
    parser.add_argument("--force", action="store_true", help="with --switch: allow a stage with no configuration")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="with --shutdown: wait up to this long for the worker to disconnect")
    add_debug_argument(parser)
    return parser


def _require_worker(zk: ZooKeeper, worker_id: str) -> None:
    try:
        root = zk_paths.worker_root(worker_id)
    except ValueError as error:
        raise CliError(str(error), ExitCode.USAGE) from None
    if not zk.exists(root):
        known = zk.children(zk_paths.WORKER_STATUS_ROOT)
        hint = f"; known workers: {', '.join(known)}" if known else "; no workers are registered"
        raise CliError(f"no worker {worker_id!r}{hint}")


def status(zk: ZooKeeper) -> int:
    records = read_workers(zk)
    now = time.time()
    if not records:
        print("no workers registered")
    else:
        rows = []
        for record in sorted(records, key=lambda r: r.view.worker_id):
            w = record.view
            locked = w.unlock_time - now if w.unlock_time else 0.0
            rows.append([w.worker_id, w.status or "?", w.queue or "''", "yes" if w.enabled else "no",
                         "yes" if w.connected else "NO (dead?)", f"{locked:.0f} s" if locked > 0 else "-"])
        print(format_table(["worker", "status", "stage", "enabled", "connected", "locked for"], rows))
    contenders = zk.election(ELECTION_PATH, "controller").contenders() if zk.exists(ELECTION_PATH) else []
    print(f"\nwatchdog: {'active ' + contenders[0] if contenders else 'none running'}"
          + (f", {len(contenders) - 1} standing by" if len(contenders) > 1 else ""))
    return ExitCode.OK


def queues(zk: ZooKeeper, conn: ConnectionConfig) -> int:
    reader = StateReader(zk, conn)
    try:
        snapshot = reader.snapshot(time.time(), fresh_management=True)
    finally:
        reader.close()
    if not snapshot.stages and not snapshot.other_stages:
        print("no stages configured")
        print(dead_letter_line(zk, conn))
        return ExitCode.OK
    by_stage: dict[str, list[str]] = {}
    for record in snapshot.workers:
        if record.view.connected and record.view.queue:
            by_stage.setdefault(record.view.queue, []).append(record.view.worker_id)
    rows = []
    for name, record in sorted(snapshot.stages.items()):
        s = record.view
        waiting = f"{snapshot.time - s.waiting_since:.0f} s" if s.waiting_since is not None else "-"
        rows.append([name, "disabled" if s.disabled else s.admin_priority,
                     s.ready if record.queue_exists else "no queue", s.unacked,
                     "-" if record.consumers is None else record.consumers,
                     seconds(s.avg_msg_time, 3), seconds(s.switch_time), waiting,
                     ", ".join(sorted(by_stage.get(name, []))) or "-"])
    print(format_table(["stage", "priority", "ready", "unacked", "consumers", "msg time s", "switch s",
                        "waiting", "workers"], rows))
    if snapshot.other_stages:
        print("\nnot processing stages (never given a worker): " + ", ".join(
            f"{name} ({reason})" for name, reason in sorted(snapshot.other_stages.items())))
    if snapshot.depth_source != "amqp+management":
        print(f"\n(queue depths from: {snapshot.depth_source or 'nowhere: broker unreachable'})")
    print("\n" + dead_letter_line(zk, conn))
    return ExitCode.OK


def switch_worker(zk: ZooKeeper, worker_id: str, stage: str, *, lock: float, force: bool) -> list[str]:
    """Point WORKER at STAGE ('' = none) and lock it there; the warnings to show (CliError when refused).

    Shared by `-i` and the web console, so both refuse and warn alike."""
    _require_worker(zk, worker_id)
    warnings = []
    if stage:
        try:
            validate_stage_name(stage)
        except ValueError as error:
            raise CliError(str(error), ExitCode.USAGE) from None
        kind = classify_stage_config(zk.get(zk_paths.stage_config(stage)))
        if not kind.processing and not force:
            raise CliError(f"stage {stage!r} is not a processing stage: {kind.reason} (see stage_config_manager.py "
                           "--list); use --force to switch anyway")
        if zk_paths.decode_priority(zk.get(zk_paths.stage_admin_priority(stage))) < 0:
            warnings.append(f"stage {stage} is disabled (administrative priority -1): "
                            "the watchdog will move the worker away")
    if not zk.exists(zk_paths.worker_connected(worker_id)):
        warnings.append(f"worker {worker_id} is not connected; it takes the stage when it comes back")
    zk.set_text(zk_paths.worker_unlock_time(worker_id), format_iso(time.time() + max(0.0, lock)))
    zk.set_text(zk_paths.worker_queue(worker_id), stage)
    return warnings


def switch(zk: ZooKeeper, worker_id: str, stage: str, *, lock: float, force: bool) -> int:
    for warning in switch_worker(zk, worker_id, stage, lock=lock, force=force):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"worker {worker_id} -> {stage or 'no stage'}")
    return ExitCode.OK


def set_enabled(zk: ZooKeeper, worker_id: str, enabled: bool) -> None:
    """`enabled = false` asks a running worker to stop; `true` withdraws a request not yet obeyed (a stopped
    worker is started again by its service manager, and writes `true` itself when it registers)."""
    _require_worker(zk, worker_id)
    zk.set_text(zk_paths.worker_enabled(worker_id), "true" if enabled else "false")


def shutdown(zk: ZooKeeper, worker_id: str, *, wait: float) -> int:
    set_enabled(zk, worker_id, False)
    print(f"worker {worker_id} asked to shut down")
    if wait > 0:
        deadline = time.monotonic() + wait
        while zk.exists(zk_paths.worker_connected(worker_id)):
            if time.monotonic() > deadline:
                raise CliError(f"worker {worker_id} is still connected after {wait:.0f} s")
            time.sleep(0.2)
        print(f"worker {worker_id} has disconnected")
    return ExitCode.OK


def remove(zk: ZooKeeper, worker_id: str) -> int:
    _require_worker(zk, worker_id)
    if zk.exists(zk_paths.worker_connected(worker_id)):
        raise CliError(f"worker {worker_id} is connected (alive); shut it down first (-d {worker_id})")
    zk.delete(zk_paths.worker_root(worker_id), recursive=True)
    print(f"worker {worker_id} record removed")
    return ExitCode.OK


def _run(args: argparse.Namespace) -> int:
    conn = build_connection_config(args)
    zk = connect_zookeeper(conn)
    try:
        if args.status:
            return status(zk)
        if args.queues:
            return queues(zk, conn)
        if args.switch:
            worker_id, stage = args.switch
            return switch(zk, worker_id, stage.strip(), lock=args.lock, force=args.force)
        if args.shutdown:
            return shutdown(zk, args.shutdown, wait=args.wait)
        if args.remove:
            return remove(zk, args.remove)
        return ExitCode.FAILED
    finally:
        zk.stop()


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_run, build_parser(), argv)
