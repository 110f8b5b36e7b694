#!/usr/bin/env python3
"""Memory of a long-running downloader: `publisher.py --download --keep-running` over many requests.

The downloader's de-duplication index lives in SQLite on disk (tools/publishing/download_index.py), so
its memory must stay flat however many requests it has seen.  This bench runs the real tool
against the local services (`make services`): requests are published to an output queue in
waves, the downloader writes each to disk, and its resident memory (VmRSS) is sampled after
every wave.  Growth is measured from the end of the first wave (caches warm) to the last.

Only a run in which the downloader reports every request downloaded, none twice, counts;
otherwise the bench says so and exits 1 without a RESULT.

    RESULT download_rss_first_wave   MB after the first wave
    RESULT download_rss_last_wave    MB after the last wave
    RESULT download_rss_growth       KB per 10,000 requests between the two
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pero_worker.dev.local_services import ensure_services, write_server_lists
from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.message_pb2 import Data, ProcessingRequest, StageLog
from pero_worker.libs.mq import MQConnectionError, MQSession, MQSettings
from pero_worker.libs.zk import ZooKeeper

REPO = Path(__file__).resolve().parents[1]

PY = sys.executable


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_for(predicate, timeout: float, what: str, mq: MQSession) -> None:
    """Poll `predicate`, pumping the connection meanwhile (its heartbeats must not starve)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        mq.pump(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="requests in all (default %(default)s)")
    parser.add_argument("--waves", type=int, default=10, help="waves they are published in (default %(default)s)")
    args = parser.parse_args(argv)
    per_wave = args.requests // args.waves

    services = ensure_services()
    chroot = f"/bench_{uuid.uuid4().hex[:8]}"
    admin = ZooKeeper(ConnectionConfig((Address(services.zk_host, services.zk_port),))).start()
    admin.ensure_path(chroot)
    zk = ZooKeeper(ConnectionConfig((Address(services.zk_host, services.zk_port),), zookeeper_chroot=chroot)).start()
    write_server_lists(zk, services)
    zk_arg = f"{services.zk_host}:{services.zk_port}{chroot}"
    out = f"bench_dl_{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="pero-bench-dl-"))
    mq = MQSession(MQSettings(servers=(Address(services.mq_host, services.mq_port),)), name="bench-download")
    mq.open(retry_for=10)
    mq.declare_stage_queue(out)
    downloader = subprocess.Popen([PY, "scripts/publisher.py", "-z", zk_arg, "--download", out, "--directory",
                                   str(work / "results"), "--keep-running", "--no-progress"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[int, int]] = []
    failure = None
    stdout = stderr = ""
    try:
        sent = 0
        for _wave in range(args.waves):
            for _ in range(per_wave):
                request = ProcessingRequest(uuid=uuid.uuid4().hex, page_uuid=uuid.uuid4().hex,
                                            processing_stages=[out],
                                            results=[Data(name=f"page_{sent:06d}.jpg", content=os.urandom(200))],
                                            logs=[StageLog(stage="ocr", status="OK", log="fine\n")])
                mq.publish(out, request.SerializeToString())
                sent += 1
                if sent % 500 == 0:
                    mq.pump(0)
            if not mq.wait_for_confirms(timeout=120):
                raise TimeoutError("the broker did not confirm the requests")
            wait_for(lambda: mq.queue_length(out) == 0, 300, "the downloader to empty the queue", mq)
            settle = time.monotonic() + 1.0    # the last batch is committed and acked
            while time.monotonic() < settle:
                mq.pump(0.2)
            if downloader.poll() is not None:
                raise RuntimeError(f"the downloader exited early ({downloader.returncode})")
            samples.append((sent, rss_kb(downloader.pid)))
            print(f"after {sent:6d} requests: downloader RSS {samples[-1][1] / 1024:.1f} MB", flush=True)
    except (TimeoutError, RuntimeError, MQConnectionError) as error:
        failure = str(error)
    finally:
        if downloader.poll() is None:
            downloader.send_signal(signal.SIGINT)
        try:
            stdout, stderr = downloader.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            downloader.kill()
            stdout, stderr = downloader.communicate()
        try:
            mq.delete_queue(out)
        except MQConnectionError:
            mq.open(retry_for=10)
            mq.delete_queue(out)
        finally:
            mq.close()
        zk.stop()
        admin.delete(chroot, recursive=True)
        admin.stop()
        shutil.rmtree(work, ignore_errors=True)

    match = re.search(r"downloaded (\d+) request\(s\).*?; (\d+) duplicate", stdout)
    if failure is None and (not match or int(match.group(1)) != args.requests or int(match.group(2)) != 0):
        failure = f"the downloader did not report {args.requests} requests downloaded once: {stdout.strip()}"
    if failure is None and downloader.returncode != 0:
        failure = f"the downloader exited with {downloader.returncode}: {stderr.strip()[-500:]}"
    if failure is not None or len(samples) < 2:
        print(f"BENCH FAILED: {failure or 'too few samples'}", file=sys.stderr)
        return 1
    (first_n, first_kb), (last_n, last_kb) = samples[0], samples[-1]
    growth = (last_kb - first_kb) * 10_000 / (last_n - first_n)
    print()
    print(f"RESULT download_rss_first_wave {first_kb / 1024:.1f} MB")
    print(f"RESULT download_rss_last_wave {last_kb / 1024:.1f} MB")
    print(f"RESULT download_rss_growth {growth:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
