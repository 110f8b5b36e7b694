"""Exit codes of every daemon and tool: one meaning per code (docs/protocol.md, "Exit codes").

Why one table: operators and supervisors act on the code alone.  systemd's
RestartPreventExitStatus (sample-config/systemd/) lists the codes a restart cannot
fix (USAGE, ACCESS_REFUSED, DUPLICATE_WORKER), and shell scripts tell "the
server is down, try later" (UNREACHABLE) from "the operation failed" (FAILED).
"""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1               # the operation ran and failed, or an unexpected error (a bug: see the log)
    USAGE = 2                # bad arguments or configuration (argparse exits 2 as well)
    UNREACHABLE = 3          # a service (ZooKeeper, RabbitMQ, SFTP) could not be reached or its TLS not trusted
    ACCESS_REFUSED = 4       # a service refused our login or access (wrong password, ZooKeeper NoAuth)
    DUPLICATE_WORKER = 5     # another live worker already has this worker id
    INTERRUPTED = 130        # a tool stopped by Ctrl-C (daemons stop on SIGINT/SIGTERM with OK)


MEANINGS = {
    ExitCode.OK: "success (daemons: stopped cleanly)",
    ExitCode.FAILED: "the operation failed, or an unexpected error",
    ExitCode.USAGE: "bad arguments or configuration",
    ExitCode.UNREACHABLE: "a server could not be reached (or its certificate is not trusted)",
    ExitCode.ACCESS_REFUSED: "a server refused the login or access",
    ExitCode.DUPLICATE_WORKER: "another live worker has this id",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_codes_help(*codes: ExitCode) -> str:
    """The `--help` epilog naming the codes a program uses (all of them when none are given)."""
    chosen = codes or tuple(ExitCode)
    return "exit codes: " + ", ".join(f"{int(code)} {MEANINGS[code]}" for code in chosen)


__all__ = ["ExitCode", "MEANINGS", "exit_codes_help"]
