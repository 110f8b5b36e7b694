"""The chaos suite's pure parts: which faults a run injects, how a run is judged, and the table it prints.

Why pure: "no loss, duplicates within 0.5 %, every daemon back in its bound, nothing stuck" is the promise
the suite checks, so the arithmetic that says pass or fail is table-tested (tests/test_chaos_verdict.py)
apart from the minutes-long run that produces the numbers.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

MAX_DUPLICATE_SHARE = 0.005          # duplicates allowed, as a share of the requests (issue 12's target)
DEPENDENCY_BOUND = 2.0               # a daemon processing again after its dependency is back
KILLED_BOUND = 5.0                   # a killed daemon back by itself (supervisor's RestartSec + start-up)


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str          # what the table shows
    kind: str          # what the runner does (see dev/chaos/run.py, FAULTS)
    bound: float       # seconds allowed from the recovery point to "back"


FULL = (
    Fault("kill -9 worker 1", "kill_worker", KILLED_BOUND),
    Fault("RabbitMQ app stop/start", "rabbitmq_app", DEPENDENCY_BOUND),
    Fault("poison bodies", "poison", 0.0),
    Fault("ZooKeeper kill + restart", "zookeeper", DEPENDENCY_BOUND),
    Fault("kill -9 watchdog", "kill_watchdog", KILLED_BOUND),
    Fault("SFTP down, model needed", "sftp", DEPENDENCY_BOUND),
    Fault("kill -9 log daemon", "kill_logd", KILLED_BOUND),
    Fault("RabbitMQ node stop/start", "rabbitmq_node", DEPENDENCY_BOUND),
    Fault("kill -9 worker 2", "kill_worker", KILLED_BOUND),
)
SHORT = (
    Fault("kill -9 worker 1", "kill_worker", KILLED_BOUND),
    Fault("RabbitMQ app stop/start", "rabbitmq_app", DEPENDENCY_BOUND),
    Fault("poison bodies", "poison", 0.0),
    Fault("ZooKeeper kill + restart", "zookeeper", DEPENDENCY_BOUND),
    Fault("kill -9 log daemon", "kill_logd", KILLED_BOUND),
)


@dataclasses.dataclass
class Recovery:
    """What one injected fault did: seconds until the daemons were back (None: never within the wait) and until
    results flowed into the output queues again (None: not measured or never)."""
    fault: Fault
    back: float | None
    output: float | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class PhaseCounts:
    """Requests of one phase (those uploaded between this fault and the next)."""
    published: int           # confirmed uploads (publisher.py --manifest lines)
    downloaded: int          # distinct requests publisher.py --download wrote
    missing: int             # published uuids with no downloaded folder
    duplicates: int          # copies the downloader skipped
    failed: int              # downloaded with a FAILED stage


@dataclasses.dataclass(frozen=True)
class DownloadSummary:
    downloaded: int
    failed: int
    duplicates: int
    unparsable: int = 0


SUMMARY = re.compile(r"downloaded (\d+) request\(s\) to .*?; (\d+) with failed stages.*?; (\d+) duplicate\(s\) skipped"
                     r"(?:; (\d+) unparsable)?")


def parse_download_summary(text: str) -> DownloadSummary | None:
    """The counts of publisher.py --download's summary line (the last one in `text`), None when there is none."""
    found = SUMMARY.findall(text)
    if not found:
        return None
    downloaded, failed, duplicates, unparsable = found[-1]
    return DownloadSummary(int(downloaded), int(failed), int(duplicates), int(unparsable or 0))


def phase_counts(published: Iterable[str], downloaded: Iterable[str], summary: DownloadSummary) -> PhaseCounts:
    published_set, downloaded_set = set(published), set(downloaded)
    return PhaseCounts(published=len(published_set), downloaded=len(downloaded_set),
                       missing=len(published_set - downloaded_set), duplicates=summary.duplicates,
                       failed=summary.failed)


def problems(recoveries: Sequence[Recovery], phases: Sequence[PhaseCounts], depths: Mapping[str, int],
             poison_sent: int, poison_dead_lettered: int) -> list[str]:
    """Every reason the run fails (empty: it passed)."""
    found = []
    for recovery in recoveries:
        if recovery.fault.kind == "poison":
            continue
        if recovery.back is None:
            found.append(f"{recovery.fault.name}: the daemons were not back ({recovery.note or 'timed out'})")
        elif recovery.back > recovery.fault.bound:
            found.append(f"{recovery.fault.name}: back after {recovery.back:.2f} s, over its bound of "
                         f"{recovery.fault.bound:g} s")
    published = sum(p.published for p in phases)
    missing = sum(p.missing for p in phases)
    duplicates = sum(p.duplicates for p in phases)
    if published == 0:
        found.append("no request was published")
    if missing:
        found.append(f"{missing} request(s) lost (published, never downloaded)")
    if published and duplicates > MAX_DUPLICATE_SHARE * published:
        found.append(f"{duplicates} duplicates in {published} requests: over {MAX_DUPLICATE_SHARE:.1%}")
    if poison_dead_lettered != poison_sent:
        found.append(f"{poison_sent} poison bodies sent, {poison_dead_lettered} found in the dead-letter queue")
    stuck = {name: depth for name, depth in depths.items() if depth}
    if stuck:
        found.append("messages left in queues: "
                     + ", ".join(f"{name} {depth}" for name, depth in sorted(stuck.items())))
    return found


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(recoveries: Sequence[Recovery], phases: Sequence[PhaseCounts], baseline: PhaseCounts) -> str:
    """fault | daemons back | bound | output resumed | requests | lost | duplicated | failed.

    `phases[i]` are the requests uploaded after fault i; `baseline` those uploaded before the first fault."""
    header = ("fault", "daemons back (s)", "bound (s)", "output resumed (s)", "requests", "lost", "duplicated",
              "failed")
    rows = [("(before the first fault)", "-", "-", "-", str(baseline.published), str(baseline.missing),
             str(baseline.duplicates), str(baseline.failed))]
    for recovery, counts in zip(recoveries, phases):
        fault = recovery.fault
        back = recovery.note if fault.kind == "poison" else _seconds(recovery.back)
        rows.append((fault.name, back, "-" if fault.kind == "poison" else f"{fault.bound:g}",
                     _seconds(recovery.output), str(counts.published), str(counts.missing),
                     str(counts.duplicates), str(counts.failed)))
    every = [baseline, *phases]
    rows.append(("total", "", "", "", *(str(sum(getattr(p, key) for p in every))
                                        for key in ("published", "missing", "duplicates", "failed"))))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"
             for row in (header, *rows)]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def format_depths(depths: Mapping[str, int]) -> str:
    return "queue depths at the end: " + ", ".join(f"{name} {depth}" for name, depth in sorted(depths.items()))
