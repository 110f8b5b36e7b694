"""scripts/stats.py over folders in the publisher's download format (written with the publisher's own code)."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.tools.publishing.download import Downloader
from pero_worker.tools.stats import parse_info, percentile, summarize

STATS = Path(__file__).resolve().parent.parent / "scripts" / "stats.py"
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def request(uid: str, stages: list[tuple[str, str, str, float, float]]) -> ProcessingRequest:
    """stages: (stage, status, host, start offset s, end offset s)."""
    req = ProcessingRequest(uuid=uid, page_uuid=uid, processing_stages=["out"])
    req.start_time.FromDatetime(T0)
    req.results.add(name=f"{uid}.jpg", content=b"\xff\xd8\xff")
    for stage, status, host, start, end in stages:
        entry = req.logs.add(host_id=host, stage=stage, status=status, version="1", log="line\n")
        entry.start.FromDatetime(T0 + dt.timedelta(seconds=start))
        entry.end.FromDatetime(T0 + dt.timedelta(seconds=end))
    return req


@pytest.fixture
def folder(tmp_path):
    downloader = Downloader(str(tmp_path))
    times = [0.1, 0.2, 0.3, 0.4, 1.0]
    for i, t in enumerate(times):
        downloader.store(request(f"r{i}", [("ocr: v2", "OK", "hostA" if i % 2 else "hostB", 1, 1 + t),
                                           ("layout", "OK", "hostA", 2, 2.5)]).SerializeToString())
    downloader.store(request("bad", [("ocr: v2", "OK", "hostA", 1, 1.2),
                                     ("layout", "PROCESSING_FAILED", "hostA", 2, 2.05)]).SerializeToString())
    downloader.close()
    (tmp_path / "stray").mkdir()
    return tmp_path


def test_parse_info_reads_the_publishers_format(folder):
    info = next(p for p in folder.iterdir() if p.is_dir() and "r1" in p.name) / "request_info.txt"
    record = parse_info(info.read_text())
    assert record.uuid == "r1"
    assert [(s.stage, s.status, s.host) for s in record.stages] == [("ocr: v2", "OK", "hostA"),
                                                                    ("layout", "OK", "hostA")]
    assert record.stages[0].seconds == pytest.approx(0.2)
    assert (record.end_time - record.start_time).total_seconds() == pytest.approx(2.5)


@pytest.mark.parametrize("values,fraction,expected", [
    ([1.0], 0.95, 1.0), ([1, 2, 3, 4], 0.5, 2), ([1, 2, 3, 4], 0.95, 4), (list(range(1, 101)), 0.95, 95),
])
def test_percentile(values, fraction, expected):
    assert percentile(values, fraction) == expected


def test_summary_numbers(folder):
    from pero_worker.tools.stats import read_folder
    records, problems = read_folder(str(folder))
    assert len(records) == 6 and problems == ["stray: no request_info.txt"]
    stages, total = summarize(records)
    by_name = {s.name: s for s in stages}
    ocr = by_name["ocr: v2"]
    assert ocr.requests == 6 and ocr.failures == 0
    assert sorted(ocr.times) == pytest.approx([0.1, 0.2, 0.2, 0.3, 0.4, 1.0])
    assert by_name["layout"].failures == 1
    assert total.requests == 6 and total.failures == 1
    hosts = {s.name for s in summarize(records, by_host=True)[0]}
    assert {"ocr: v2 @ hostA", "ocr: v2 @ hostB", "layout @ hostA"} == hosts


def test_command_line(folder):
    result = subprocess.run([sys.executable, str(STATS), str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("ocr: v2"))
    assert row.split()[2:5] == ["6", "0", "0.367"]      # requests, failed, mean
    assert "6 requests, 1 with a failed stage" in result.stdout
    empty = subprocess.run([sys.executable, str(STATS), str(folder / "stray")], capture_output=True, text=True,
                           timeout=60)
    assert empty.returncode == 1
