"""When the log daemon starts a new file and which old files it deletes: pure decisions.

Log files are named `pero_<UTC ISO-8601 creation time>.log` (the original daemon's
scheme), always with microseconds so that names of one folder sort chronologically.
Only files that follow this scheme are ever considered for deletion: whatever else an
operator keeps in the folder is left alone.

Two knobs, each with an "off" value:
- rotation period (minutes, fractions allowed): a file older than this is closed and a
  new one started; 0 = never start a new file by age.
- number of files: after a rotation only the newest N log files are kept (the current
  one included); 0 = keep everything, never delete.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

PREFIX = "pero_"
SUFFIX = ".log"
_NAME = re.compile(r"^pero_(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00)\.log$")


def log_file_name(created: datetime) -> str:
    """File name for a log started at `created` (converted to UTC)."""
    if created.tzinfo is None:
        raise ValueError("log file times must be timezone-aware")
    return f"{PREFIX}{created.astimezone(timezone.utc).isoformat(timespec='microseconds')}{SUFFIX}"


def parse_log_file_name(name: str) -> datetime | None:
    """Creation time encoded in a log file name, or None for a file that is not ours."""
    match = _NAME.match(name)
    if not match:
        return None
    try:
        return datetime.fromisoformat(match.group(1))
    except ValueError:
        return None


def is_due(created: datetime, now: datetime, period_minutes: float) -> bool:
    """True when a file started at `created` must be closed and a new one started."""
    if period_minutes <= 0:
        return False
    return now - created >= timedelta(minutes=period_minutes)


def file_to_continue(names: list[str], now: datetime, period_minutes: float) -> str | None:
    """After a restart: the newest existing log file if it is still within its period, else None.

    A file stamped in the future (clock moved back) is not continued: a new file is safer
    than appending to one whose age cannot be judged.
    """
    dated = sorted((created, name) for name in names if (created := parse_log_file_name(name)) is not None)
    if not dated:
        return None
    created, name = dated[-1]
    if created > now or is_due(created, now, period_minutes):
        return None
    return name


def files_to_prune(names: list[str], keep: int, current: str | None = None) -> list[str]:
    """Log files to delete so that at most `keep` remain (oldest first); never the current file.

    keep == 0 means keep everything.
    """
    if keep <= 0:
        return []
    dated = sorted((created, name) for name in names if (created := parse_log_file_name(name)) is not None)
    ordered = [name for _created, name in dated]
    if current is not None and current in ordered:
        # The file being written counts as the newest, whatever its name says.
        ordered.remove(current)
        ordered.append(current)
    excess = len(ordered) - keep
    return ordered[:excess] if excess > 0 else []
