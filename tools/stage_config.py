"""Create, update, list, show and delete processing stages.

A stage is three things that must agree: a RabbitMQ queue named as the stage,
the nodes under /pero/queue/<stage> in ZooKeeper (config text, model path,
config version, administrative priority, statistics), and optionally a model
archive on the SFTP server.  Order matters because workers and the watchdog
react to ZooKeeper at once: the model is uploaded first, then the nodes are
written (a name ZooKeeper refuses stops here, before any queue exists), then
the queue is declared (a new stage's nodes are removed again if that fails),
and the config version goes last, since a new version is what makes workers
reload.
"""
from __future__ import annotations

import argparse
import configparser
import datetime
import hashlib
import os
import posixpath
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from pero_worker.libs import zk_paths
from pero_worker.libs.config import ConnectionConfig, add_connection_arguments
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.mq import MQError, MQSession
from pero_worker.libs.sftp import SftpAuthError, SftpClient, SftpConnectError, SftpError, SftpSettings
from pero_worker.libs.stages import classify_stage_config, is_processing_stage
from pero_worker.libs.zk import ZooKeeper
from pero_worker.tools.cli import (
    EXIT_CODES_HELP,
    CliError,
    add_debug_argument,
    build_connection_config,
    connect_zookeeper,
    open_mq,
    run_main,
    validate_stage_name,
)

ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar", ".zip")
CHECKSUM_SUFFIX = ".sha256"


# --- pure decisions -------------------------------------------------------------

def validate_config_text(text: str, source: str = "config") -> str:
    """The stage config must parse as INI (as workers will parse it) before anything is written."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as error:
        raise ValueError(f"{source} is not a valid INI file: {error}".replace("\n", " ")) from None
    return text


def validate_remote_path(path: str) -> str:
    """A path on the SFTP server: relative (to the SFTP user's home) by convention, never with '..'."""
    if not path or "\x00" in path:
        raise ValueError(f"invalid remote path {path!r}")
    parts = [p for p in path.split("/") if p]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"invalid remote path {path!r}: no '..' components allowed")
    return ("/" if path.startswith("/") else "") + "/".join(p for p in parts if p != ".")


def is_archive_name(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def resolve_remote_path(stage: str, local_file: str | None, remote_path: str | None) -> str | None:
    """Where the model archive lives on SFTP.

    --remote-path naming an archive (.tar.xz, .tar.gz, .zip ...) is the full path;
    any other --remote-path is a folder and the local file's name is appended.
    Without --remote-path the archive goes to pero/<stage>/<file name>.
    """
    if remote_path is None:
        if local_file is None:
            return None
        return f"pero/{stage}/{os.path.basename(local_file)}"
    remote_path = validate_remote_path(remote_path)
    if local_file is None or is_archive_name(remote_path):
        return remote_path
    return posixpath.join(remote_path, os.path.basename(local_file))


def new_version(current: str, requested: str | None, now: datetime.datetime) -> str:
    """An explicit -v, else the UTC time (the original tools' convention), never equal to the current one."""
    if requested:
        return requested
    version = now.astimezone(datetime.timezone.utc).isoformat()
    if version == current:
        version += "-1"
    return version


@dataclass(frozen=True)
class StageUpdate:
    """Exactly which nodes an update writes: None means leave the node as it is."""
    config: str | None
    config_path: str | None
    priority: int | None
    version: str | None
    init_stats: bool


def plan_update(*, exists: bool, current_version: str, config_text: str | None, config_path: str | None,
                priority: int | None, requested_version: str | None, keep_version: bool,
                now: datetime.datetime) -> StageUpdate:
    """Decide the node writes for `--name STAGE ...`.

    A new stage gets every node (empty config = an output stage).  The version
    changes when what workers load changes (config text or model), when the
    stage is new, or when -v is given; --keep-version keeps it (a new stage
    without any version still gets one, or workers could never load it).
    Changing only the priority never bumps the version, so workers do not reload.
    """
    if not exists:
        config_text = config_text if config_text is not None else ""
        config_path = config_path if config_path is not None else ""
        priority = priority if priority is not None else 0
    content_changed = (not exists) or config_text is not None or config_path is not None
    version: str | None = None
    if keep_version:
        if not current_version:
            version = new_version(current_version, requested_version, now)
    elif requested_version or content_changed:
        version = new_version(current_version, requested_version, now)
    return StageUpdate(config=config_text, config_path=config_path, priority=priority, version=version,
                       init_stats=not exists)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stage_config_manager.py",
        conflict_handler="resolve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Create, update, list, show and delete processing stages.

create / update:  --name STAGE [--config config.ini] [--file model.tar.xz] [--remote-path PATH]
                  [-v VERSION | --keep-version] [-a PRIORITY]
  Declares the stage queue (durable, x-max-priority 1) and writes /pero/queue/STAGE in ZooKeeper.
  A stage given with no --config and no --file (e.g. --name out) is an output stage: queue and
  nodes with an empty config. --file uploads a model archive to SFTP (default pero/STAGE/<file name>)
  with a .sha256 file next to it. The config version changes (to the UTC time, or -v) whenever the
  config or the model changes; that is what makes workers reload. --keep-version keeps it.
  A priority-only change (-a) keeps the version.

list:    -i/--list            stages with version, priority, queue depth and model path
show:    -s/--show STAGE      every node of the stage and its config text
delete:  -d/--delete STAGE    delete the queue, the ZooKeeper nodes and the model archive on SFTP
                              (unless another stage uses the same archive). Refuses when the queue
                              still holds requests, unless --force (they would be lost).
         --keep-config        with --delete: delete only the queue; the ZooKeeper config and the model
                              archive stay, so the stage can be re-created with --name STAGE --keep-version.
""",
        epilog="The connection INI file is --connection-config (-c is the stage config, as in the original "
               "tool). " + EXIT_CODES_HELP,
    )
    add_connection_arguments(parser)
    # -c/--config is the stage config here (docs/protocol.md §6); the connection INI moves to --connection-config.
    parser.add_argument("--connection-config", metavar="INI",
                        help="INI file with zookeeper_servers, username, ... ([TOOLS] or [WORKER] section)")
    stage = parser.add_argument_group("create / update")
    stage.add_argument("-n", "--name", metavar="STAGE", help="stage to create or update")
    stage.add_argument("-c", "--config", dest="stage_config", metavar="CONFIG.INI",
                       help="stage config (pero-ocr config.ini, optional [WORKER] section)")
    stage.add_argument("-f", "--file", metavar="ARCHIVE", help="model archive to upload (.tar.xz, .tar.gz, .zip)")
    stage.add_argument("-r", "--remote-path", metavar="PATH",
                       help="SFTP path of the archive (ending in .tar.xz/.tar.gz/.zip) or folder to put --file in; "
                            "without --file: point the stage at an archive already on the server")
    version = stage.add_mutually_exclusive_group()
    version.add_argument("-v", "--version", metavar="VERSION", help="config version to set (default: UTC time now)")
    version.add_argument("--keep-version", action="store_true", help="update without changing the version")
    stage.add_argument("-a", "--administrative-priority", type=int, metavar="PRIORITY",
                       help="administrative priority (0 default, higher first, -1 disables the stage)")
    other = parser.add_argument_group("list / show / delete")
    actions = other.add_mutually_exclusive_group()
    actions.add_argument("-i", "--list", action="store_true", help="list stages")
    actions.add_argument("-s", "--show", metavar="STAGE", help="show one stage")
    actions.add_argument("-d", "--delete", metavar="STAGE", help="delete a stage (see above)")
    other.add_argument("-k", "--keep-config", action="store_true", help="with --delete: delete the queue only")
    other.add_argument("--force", action="store_true", help="with --delete: delete even a non-empty queue")
    add_debug_argument(parser)
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    chosen = [name for name, value in (("--name", args.name), ("--list", args.list), ("--show", args.show),
                                       ("--delete", args.delete)) if value]
    if len(chosen) != 1:
        raise CliError("give exactly one of --name, --list, --show, --delete (see --help)", ExitCode.USAGE)
    if not args.name:
        for flag, value in (("--config", args.stage_config), ("--file", args.file),
                            ("--remote-path", args.remote_path), ("--version", args.version),
                            ("--keep-version", args.keep_version),
                            ("--administrative-priority", args.administrative_priority is not None)):
            if value:
                raise CliError(f"{flag} only works with --name", ExitCode.USAGE)
    if (args.keep_config or args.force) and not args.delete:
        raise CliError("--keep-config and --force only work with --delete", ExitCode.USAGE)


def _read_config_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise CliError(f"cannot read stage config {path}: {error.strerror}", ExitCode.USAGE) from None
    except UnicodeDecodeError:
        raise CliError(f"stage config {path} is not UTF-8 text", ExitCode.USAGE) from None
    try:
        return validate_config_text(text, path)
    except ValueError as error:
        raise CliError(str(error), ExitCode.USAGE) from None


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sftp_client(zk: ZooKeeper, conn: ConnectionConfig) -> SftpClient:
    return SftpClient(SftpSettings.from_zookeeper(zk, conn))


def _sftp_exit_code(error: SftpError) -> int:
    if isinstance(error, SftpAuthError):
        return ExitCode.ACCESS_REFUSED
    return ExitCode.UNREACHABLE if isinstance(error, SftpConnectError) else ExitCode.FAILED


def _upload_model(zk: ZooKeeper, conn: ConnectionConfig, local: str, remote: str) -> None:
    from tqdm import tqdm

    size = os.path.getsize(local)
    checksum = _sha256_file(local)
    with tempfile.NamedTemporaryFile("w", suffix=CHECKSUM_SUFFIX, delete=False, encoding="utf-8") as handle:
        handle.write(f"{checksum}  {os.path.basename(remote)}\n")
        checksum_file = handle.name
    try:
        with _sftp_client(zk, conn) as client:
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"upload {os.path.basename(local)}", file=sys.stderr) as bar:
                def progress(done: int, _total: int) -> None:
                    bar.update(done - bar.n)
                client.upload(local, remote, progress)
            client.upload(checksum_file, remote + CHECKSUM_SUFFIX, None)
    except SftpError as error:
        raise CliError(f"model upload to SFTP failed: {error}", _sftp_exit_code(error)) from None
    finally:
        os.unlink(checksum_file)
    print(f"uploaded {local} to {remote} (sha256 {checksum})")


def _require_remote(zk: ZooKeeper, conn: ConnectionConfig, remote: str) -> None:
    try:
        with _sftp_client(zk, conn) as client:
            present = client.exists(remote)
    except SftpError as error:
        raise CliError(f"cannot check {remote} on SFTP: {error}", _sftp_exit_code(error)) from None
    if not present:
        raise CliError(f"{remote} does not exist on the SFTP server (upload it with --file)", ExitCode.FAILED)


def write_priority(zk: ZooKeeper, stage: str, priority: int) -> None:
    """-1 (disabled) removes the node: the original reads it unsigned, and skips a stage without it."""
    raw = zk_paths.encode_priority(priority)
    if raw is None:
        zk.delete(zk_paths.stage_admin_priority(stage))
    else:
        zk.set(zk_paths.stage_admin_priority(stage), raw)


def write_stats_nodes(zk: ZooKeeper, stage: str, *, processing: bool) -> None:
    """The statistics nodes as the original creates them: `avg_msg_time` empty until workers measure the
    stage (the original watchdog then assumes its default time; 0.0 would make the stage look free of work)
    and `waiting_since` empty.  A stage with no processing config (the output stage) gets no `avg_msg_time`:
    the original watchdog skips a stage without it, so it never sends a worker to the output stage either."""
    avg = zk_paths.stage_avg_msg_time(stage)
    if processing and not zk.exists(avg):
        zk.set(avg, b"")
    elif not processing:
        zk.delete(avg)
    if not zk.exists(zk_paths.stage_waiting_since(stage)):
        zk.set_text(zk_paths.stage_waiting_since(stage), "")


def _write_stage_nodes(zk: ZooKeeper, stage: str, update: StageUpdate) -> None:
    """Every node of the update except the version (written last, once the queue exists)."""
    if update.config is not None:
        zk.set_text(zk_paths.stage_config(stage), update.config)
    if update.config_path is not None:
        zk.set_text(zk_paths.stage_config_path(stage), update.config_path)
    if update.priority is not None:
        write_priority(zk, stage, update.priority)
    final_config = update.config if update.config is not None else zk.get(zk_paths.stage_config(stage))
    write_stats_nodes(zk, stage, processing=is_processing_stage(final_config))


def _create_or_update(args: argparse.Namespace) -> int:
    try:
        stage = validate_stage_name(args.name)
    except ValueError as error:
        raise CliError(str(error), ExitCode.USAGE) from None
    # Everything local is checked before any server is touched.
    config_text = _read_config_file(args.stage_config) if args.stage_config else None
    if args.file and not os.path.isfile(args.file):
        raise CliError(f"model archive not found: {args.file}", ExitCode.USAGE)
    if args.file and not is_archive_name(args.file):
        raise CliError(f"{args.file} is not a model archive ({', '.join(ARCHIVE_SUFFIXES)})", ExitCode.USAGE)
    try:
        remote = resolve_remote_path(stage, args.file, args.remote_path)
    except ValueError as error:
        raise CliError(str(error), ExitCode.USAGE) from None

    conn = build_connection_config(args, args.connection_config)
    zk = connect_zookeeper(conn)
    try:
        mq = open_mq(zk, conn, name="stage_config_manager")
        try:
            if remote is not None:
                if args.file:
                    _upload_model(zk, conn, args.file, remote)
                else:
                    _require_remote(zk, conn, remote)
            exists = zk.exists(zk_paths.stage_root(stage))
            update = plan_update(
                exists=exists, current_version=zk.get_text(zk_paths.stage_config_version(stage)),
                config_text=config_text, config_path=remote, priority=args.administrative_priority,
                requested_version=args.version, keep_version=args.keep_version,
                now=datetime.datetime.now(datetime.timezone.utc))
            # ZooKeeper first: a name or value it refuses must not leave an orphan queue behind.
            _write_stage_nodes(zk, stage, update)
            try:
                mq.declare_stage_queue(stage)
            except MQError:
                if not exists:      # nor a stage without its queue
                    zk.delete(zk_paths.stage_root(stage), recursive=True)
                raise
        finally:
            mq.close()
        # The version last: a new version is what makes workers (re)load the stage.
        if update.version is not None:
            zk.set_text(zk_paths.stage_config_version(stage), update.version)
    finally:
        zk.stop()
    what = "created" if not exists else "updated"
    details = []
    if update.version is not None:
        details.append(f"version {update.version}")
    if update.priority is not None:
        details.append(f"priority {update.priority}")
    if update.config_path:
        details.append(f"model {update.config_path}")
    if exists and update.config is None and update.config_path is None and update.priority is None \
            and update.version is None:
        details.append("nothing changed; queue checked")
    print(f"stage {stage} {what}" + (f" ({', '.join(details)})" if details else ""))
    return ExitCode.OK


def _stage_queue_depths(zk: ZooKeeper, conn: ConnectionConfig, stages: Sequence[str]) -> dict[str, str]:
    """Queue depth per stage, '-' for a missing queue and '?' when RabbitMQ is not reachable."""
    try:
        mq = open_mq(zk, conn, retry_for=3.0, name="stage_config_manager")
    except CliError as error:
        print(f"warning: queue depths unavailable: {error}", file=sys.stderr)
        return {stage: "?" for stage in stages}
    depths = {}
    try:
        for stage in stages:
            length = mq.queue_length(stage)
            depths[stage] = "-" if length is None else str(length)
    except MQError as error:
        print(f"warning: queue depths unavailable: {error}", file=sys.stderr)
        depths = {stage: depths.get(stage, "?") for stage in stages}
    finally:
        mq.close()
    return depths


def _list(args: argparse.Namespace) -> int:
    conn = build_connection_config(args, args.connection_config)
    zk = connect_zookeeper(conn)
    try:
        stages = zk.children(zk_paths.QUEUE_ROOT)
        if not stages:
            print("no stages configured")
            return ExitCode.OK
        depths = _stage_queue_depths(zk, conn, stages)
        rows = []
        for stage in stages:
            kind = classify_stage_config(zk.get(zk_paths.stage_config(stage)))
            rows.append([
                stage,
                "processing" if kind.processing else "output",
                zk.get_text(zk_paths.stage_config_version(stage)) or "-",
                str(zk_paths.decode_priority(zk.get(zk_paths.stage_admin_priority(stage))))
                if kind.processing else "-",
                depths.get(stage, "?"),
                zk.get_text(zk_paths.stage_config_path(stage)) or "-",
            ])
    finally:
        zk.stop()
    print(format_table(["STAGE", "KIND", "VERSION", "PRIORITY", "QUEUED", "MODEL"], rows))
    print("(KIND output: no processing config, never given a worker; PRIORITY -1: disabled)")
    return ExitCode.OK


def _show(args: argparse.Namespace) -> int:
    stage = args.show
    conn = build_connection_config(args, args.connection_config)
    zk = connect_zookeeper(conn)
    try:
        try:
            root = zk_paths.stage_root(stage)
        except ValueError as error:
            raise CliError(str(error), ExitCode.USAGE) from None
        if not zk.exists(root):
            raise CliError(f"stage {stage!r} does not exist", ExitCode.FAILED)
        depth = _stage_queue_depths(zk, conn, [stage])[stage]
        avg = zk.get(zk_paths.stage_avg_msg_time(stage))
        kind = classify_stage_config(zk.get(zk_paths.stage_config(stage)))
        priority = zk_paths.decode_priority(zk.get(zk_paths.stage_admin_priority(stage)))
        known = {
            "kind": "processing" if kind.processing else f"output: never given a worker ({kind.reason})",
            "config_version": zk.get_text(zk_paths.stage_config_version(stage)) or "(none)",
            "config_path": zk.get_text(zk_paths.stage_config_path(stage)) or "(no model)",
            "administrative_priority": str(priority) + (" (disabled)" if priority < 0 else ""),
            "avg_msg_time": f"{zk_paths.decode_float(avg):.3f} s" if avg else "(not measured yet)",
            "waiting_since": zk.get_text(zk_paths.stage_waiting_since(stage)) or "(not waiting)",
            "queue": f"{depth} message(s) ready" if depth not in ("-", "?") else
                     ("(queue missing)" if depth == "-" else "(RabbitMQ unreachable)"),
        }
        others = {}
        for child in zk.children(root):
            if child not in known and child != "config":
                raw = zk.get(f"{root}/{child}") or b""
                others[child] = raw.decode("utf-8", "replace") if raw.isascii() else raw.hex()
        config = zk.get_text(zk_paths.stage_config(stage))
    finally:
        zk.stop()
    print(f"stage {stage}")
    for key, value in list(known.items()) + sorted(others.items()):
        print(f"  {key:<24} {value}")
    print("config:" if config.strip() else "config: (empty: output stage)")
    if config.strip():
        print(config.rstrip("\n"))
    return ExitCode.OK


def _workers_on(zk: ZooKeeper, stage: str) -> list[str]:
    return [worker for worker in zk.children(zk_paths.WORKER_STATUS_ROOT)
            if zk.get_text(zk_paths.worker_queue(worker)) == stage]


def _delete(args: argparse.Namespace) -> int:
    stage = args.delete
    try:
        validate_stage_name(stage)
    except ValueError as error:
        raise CliError(str(error), ExitCode.USAGE) from None
    conn = build_connection_config(args, args.connection_config)
    zk = connect_zookeeper(conn)
    try:
        remote = zk.get_text(zk_paths.stage_config_path(stage))
        mq: MQSession = open_mq(zk, conn, name="stage_config_manager")
        try:
            length = mq.queue_length(stage)
            if length and not args.force:
                raise CliError(f"queue {stage!r} still holds {length} request(s); they would be lost. "
                               "Let them be processed, or use --force", ExitCode.FAILED)
            if length is None:
                print(f"queue {stage} does not exist")
            else:
                mq.delete_queue(stage)
                print(f"deleted queue {stage}" + (f" and its {length} request(s)" if length else ""))
        finally:
            mq.close()
        workers = _workers_on(zk, stage)
        if workers:
            print(f"warning: worker(s) still assigned to {stage}: {', '.join(workers)}", file=sys.stderr)
        if args.keep_config:
            return ExitCode.OK
        if zk.delete(zk_paths.stage_root(stage), recursive=True):
            print(f"deleted ZooKeeper nodes of {stage}")
        else:
            print(f"stage {stage} had no ZooKeeper nodes")
        if remote:
            users = [other for other in zk.children(zk_paths.QUEUE_ROOT)
                     if zk.get_text(zk_paths.stage_config_path(other)) == remote]
            if users:
                print(f"kept model {remote}: still used by {', '.join(users)}")
            else:
                _remove_remote(zk, conn, remote)
    finally:
        zk.stop()
    return ExitCode.OK


def _remove_remote(zk: ZooKeeper, conn: ConnectionConfig, remote: str) -> None:
    try:
        with _sftp_client(zk, conn) as client:
            for path in (remote, remote + CHECKSUM_SUFFIX):
                if client.exists(path):
                    client.remove(path)
                    print(f"removed {path} from SFTP")
    except SftpError as error:
        # The stage is gone already; a leftover file wastes space but breaks nothing.
        print(f"warning: could not remove model {remote} from SFTP: {error}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    if args.list:
        return _list(args)
    if args.show:
        return _show(args)
    if args.delete:
        return _delete(args)
    return _create_or_update(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_run, build_parser(), argv)
