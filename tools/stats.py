"""Processing statistics of a folder downloaded by `publisher.py --download`.

Each request folder holds `request_info.txt` (written by the publisher) with one line per
stage the request went through:

    stages:
      <stage>: <status> (version <v>, host <host>, <start ISO-8601> .. <end ISO-8601>)

From those lines this tool reports, per stage, how many requests passed, how many failed,
and the processing time (end - start) mean / median / 95th percentile; per host as well
with --hosts; and the end-to-end time of whole requests (last stage end - start_time).
Unreadable folders are counted and named, never fatal.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

INFO_FILE = "request_info.txt"   # scripts/publisher.py INFO_FILE

_STAGE_LINE = re.compile(
    r"^  (?P<stage>.+): (?P<status>\S+) \(version (?P<version>.*), host (?P<host>.*), "
    r"(?P<start>\S+) \.\. (?P<end>\S+)\)$")


@dataclass(frozen=True)
class StageRecord:
    stage: str
    status: str
    host: str
    seconds: float | None      # None when a timestamp is missing


@dataclass(frozen=True)
class RequestRecord:
    uuid: str
    start_time: datetime | None
    stages: tuple[StageRecord, ...]
    end_time: datetime | None


def _time(text: str) -> datetime | None:
    if not text or text == "-":
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_info(text: str) -> RequestRecord:
    """Parse request_info.txt (pure); ValueError when it is not one."""
    fields: dict[str, str] = {}
    stages: list[StageRecord] = []
    section = ""
    last_end: datetime | None = None
    for line in text.splitlines():
        if not line.startswith(" "):
            key, sep, value = line.partition(":")
            if not sep:
                continue
            section = key.strip()
            fields[section] = value.strip()
            continue
        if section != "stages":
            continue
        match = _STAGE_LINE.match(line)
        if not match:
            continue
        start, end = _time(match["start"]), _time(match["end"])
        seconds = (end - start).total_seconds() if start and end else None
        stages.append(StageRecord(match["stage"], match["status"], match["host"], seconds))
        if end is not None:
            last_end = end
    if "uuid" not in fields:
        raise ValueError(f"not a {INFO_FILE}: no uuid line")
    return RequestRecord(fields["uuid"], _time(fields.get("start_time", "")), tuple(stages), last_end)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (the value below which `fraction` of the samples lie)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Summary:
    name: str
    requests: int = 0
    failures: int = 0
    times: list[float] = field(default_factory=list)

    def add(self, ok: bool, seconds: float | None) -> None:
        self.requests += 1
        if not ok:
            self.failures += 1
        if seconds is not None and seconds >= 0:
            self.times.append(seconds)

    def row(self) -> list[str]:
        if self.times:
            timing = [f"{statistics.fmean(self.times):.3f}", f"{statistics.median(self.times):.3f}",
                      f"{percentile(self.times, 0.95):.3f}", f"{max(self.times):.3f}"]
        else:
            timing = ["-"] * 4
        return [self.name, str(self.requests), str(self.failures)] + timing


def summarize(records: Iterable[RequestRecord], *, by_host: bool = False) -> tuple[list[Summary], Summary]:
    """Per stage (or stage @ host) summaries in first-seen order, and the end-to-end summary."""
    stages: dict[str, Summary] = {}
    total = Summary("(whole request)")
    for record in records:
        for entry in record.stages:
            key = f"{entry.stage} @ {entry.host}" if by_host else entry.stage
            stages.setdefault(key, Summary(key)).add(entry.status == "OK", entry.seconds)
        whole = ((record.end_time - record.start_time).total_seconds()
                 if record.start_time and record.end_time else None)
        total.add(all(entry.status == "OK" for entry in record.stages), whole)
    return list(stages.values()), total


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def read_folder(folder: str) -> tuple[list[RequestRecord], list[str]]:
    records, problems = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        path = os.path.join(entry.path, INFO_FILE)
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                records.append(parse_info(handle.read()))
        except FileNotFoundError:
            if not entry.name.startswith("_"):   # _unparsable holds raw bodies, not requests
                problems.append(f"{entry.name}: no {INFO_FILE}")
        except (OSError, ValueError) as error:
            problems.append(f"{entry.name}: {error}")
    return records, problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stats.py",
        description="Per-stage processing time (mean, median, p95, max) and failures of the requests in a "
                    "folder downloaded by publisher.py --download.",
        epilog="exit codes: 0 success, 1 no request found, 2 bad arguments",
    )
    parser.add_argument("directory", help="download folder (one sub-folder per request)")
    parser.add_argument("--hosts", action="store_true", help="break every stage down by worker (host id)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.directory):
        print(f"stats.py: error: {args.directory} is not a folder", file=sys.stderr)
        return 2
    records, problems = read_folder(args.directory)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    if not records:
        print(f"stats.py: no requests found in {args.directory}", file=sys.stderr)
        return 1
    stages, total = summarize(records, by_host=args.hosts)
    headers = ["stage @ host" if args.hosts else "stage", "requests", "failed", "mean s", "median s", "p95 s",
               "max s"]
    print(format_table(headers, [s.row() for s in stages] + [total.row()]))
    failed = sum(1 for r in records if any(e.status != "OK" for e in r.stages))
    print(f"\n{len(records)} requests, {failed} with a failed stage"
          + (f", {len(problems)} folders skipped" if problems else ""))
    return 0
