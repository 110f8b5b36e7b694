"""libs/metrics.py and the daemons' metric modules: addresses, configuration rules, the server (plain and mutual
TLS), and the pure helpers the watchdog reports with.  The daemons themselves: tests/test_metrics_daemons.py."""
from __future__ import annotations

import argparse
import datetime as dt
import math
import socket
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConfigError, ConnectionConfig
from pero_worker.libs.metrics import (
    MetricsAddress,
    MetricsConfig,
    MetricsError,
    add_metrics_arguments,
    metrics_config,
    parse_metrics_address,
    start_metrics_server,
)
from pero_worker.tools.deploy import pki
from pero_worker.watchdog import metrics as watchdog_metrics
from pero_worker.watchdog.planning import PlannerSettings, StageView, WorkerView
from pero_worker.worker import metrics as worker_metrics

PLAIN = ConnectionConfig((Address("127.0.0.1", 2181),))


@pytest.mark.parametrize("text, expected", [
    ("", MetricsAddress("127.0.0.1", 9471, 9471)),
    ("127.0.0.1:9500", MetricsAddress("127.0.0.1", 9500, 9500)),
    ("0.0.0.0:9471", MetricsAddress("0.0.0.0", 9471, 9471)),
    ("localhost", MetricsAddress("localhost", 9471, 9471)),
    (":9480", MetricsAddress("127.0.0.1", 9480, 9480)),
    ("9480", MetricsAddress("127.0.0.1", 9480, 9480)),
    ("9480-9499", MetricsAddress("127.0.0.1", 9480, 9499)),
    ("10.0.0.5:9480-9499", MetricsAddress("10.0.0.5", 9480, 9499)),
    ("[::1]:9471", MetricsAddress("::1", 9471, 9471)),
    ("[::]", MetricsAddress("::", 9471, 9471)),
    ("127.0.0.1:0", MetricsAddress("127.0.0.1", 0, 0)),
    ("off", None), ("OFF", None), ("none", None), ("disabled", None),
])
def test_metrics_addresses(text, expected):
    assert parse_metrics_address(text, 9471) == expected


@pytest.mark.parametrize("text", ["host:abc", "host:70000", "host:9499-9480", "host:0-10", "bad host:1", "[::1",
                                  "[::1]x", "a:b:c"])
def test_bad_metrics_addresses_are_refused(text):
    with pytest.raises(ValueError):
        parse_metrics_address(text, 9471)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_metrics_arguments(parser, "watchdog")
    return parser.parse_args(list(argv))


def test_command_line_beats_environment_beats_ini(monkeypatch):
    ini = {"metrics_address": "127.0.0.1:9601"}
    monkeypatch.delenv("PERO_METRICS_ADDRESS", raising=False)
    assert metrics_config(_args(), {}, PLAIN, "watchdog").address == MetricsAddress("127.0.0.1", 9472, 9472)
    assert metrics_config(_args(), ini, PLAIN, "watchdog").address.first_port == 9601
    monkeypatch.setenv("PERO_METRICS_ADDRESS", "127.0.0.1:9602")
    assert metrics_config(_args(), ini, PLAIN, "watchdog").address.first_port == 9602
    assert metrics_config(_args("--metrics-address", "9603"), ini, PLAIN, "watchdog").address.first_port == 9603
    assert metrics_config(_args("--metrics-address", "off"), ini, PLAIN, "watchdog") is None


def test_configuration_rules(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("PERO_METRICS_ADDRESS", raising=False)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cert, key = tmp_path / "m.pem", tmp_path / "m.key"
    cert.write_text("x")
    key.write_text("x")
    secure = ConnectionConfig((Address("127.0.0.1", 2281),), ca_cert=str(ca))
    with pytest.raises(ConfigError, match="off loopback in a TLS deployment"):
        metrics_config(_args("--metrics-address", "0.0.0.0:9472"), {}, secure, "watchdog")
    with pytest.raises(ConfigError, match="both --metrics-cert and --metrics-key"):
        metrics_config(_args("--metrics-cert", str(cert)), {}, secure, "watchdog")
    with pytest.raises(ConfigError, match="not found"):
        metrics_config(_args("--metrics-cert", str(cert), "--metrics-key", str(tmp_path / "nokey")), {}, secure,
                       "watchdog")
    with pytest.raises(ConfigError, match="-e/--ca-cert"):
        metrics_config(_args("--metrics-cert", str(cert), "--metrics-key", str(key)), {}, PLAIN, "watchdog")
    with pytest.raises(ConfigError, match="invalid port"):
        metrics_config(_args("--metrics-address", "1.2.3.4:x"), {}, PLAIN, "watchdog")
    exposed = metrics_config(_args("--metrics-address", "0.0.0.0:9472", "--metrics-cert", str(cert),
                                   "--metrics-key", str(key)), {}, secure, "watchdog")
    assert exposed.client_ca == str(ca) and exposed.scheme == "https"
    # A deployment without TLS may expose plain metrics (consistent with the rest of it).
    assert metrics_config(_args("--metrics-address", "0.0.0.0:9472"), {}, PLAIN, "watchdog").certfile is None


def _registry() -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    return registry, Counter("pero_test_things", "things", registry=registry)


def _value(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in the scrape")


def test_server_serves_the_registry_on_a_free_port_and_stops():
    registry, counter = _registry()
    server = start_metrics_server(MetricsConfig(MetricsAddress("127.0.0.1", 0, 0)), registry)
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        counter.inc(3)
        assert _value(requests.get(server.url, timeout=5).text, "pero_test_things_total") == 3
    finally:
        server.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=5)


def test_off_serves_nothing():
    assert start_metrics_server(None, CollectorRegistry()) is None


def test_a_port_in_use_is_one_line_and_a_range_takes_the_next_free_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match=rf"127.0.0.1:{port}: the port is in use") as caught:
            start_metrics_server(MetricsConfig(MetricsAddress("127.0.0.1", port, port)), CollectorRegistry())
        assert "\n" not in str(caught.value)
        # A range whose first port is taken serves on a later one (when the next one happens to be free).
        try:
            server = start_metrics_server(MetricsConfig(MetricsAddress("127.0.0.1", port, port + 20)),
                                          CollectorRegistry())
        except MetricsError:
            pytest.skip("the 20 ports after a free one are all taken on this host")
        try:
            assert port < server.port <= port + 20
        finally:
            server.close()


def test_an_address_not_on_this_host_is_one_line():
    with pytest.raises(MetricsError, match="metrics address 192.0.2.1:9471: "):
        start_metrics_server(MetricsConfig(MetricsAddress("192.0.2.1", 9471, 9471)), CollectorRegistry())


# --- mutual TLS: the deployment's CA signs the daemon's certificate and the scraper's -----------------------

def _client_cert(ca_cert_path: Path, ca_key_path: Path, folder: Path) -> tuple[str, str]:
    """A client certificate (clientAuth) for a scraper, signed by the CA."""
    ca = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prometheus")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = folder / "prometheus.pem", folder / "prometheus.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("metrics_pki")
    pki.create_ca(folder / "ca.pem", folder / "ca.key")
    ca = pki.load_cert(folder / "ca.pem")
    pki.issue_server_cert(ca, pki.load_key(folder / "ca.key"), pki.subject_alt_names("127.0.0.1"),
                          folder / "daemon.pem", folder / "daemon.key")
    other = folder / "other"
    other.mkdir()
    pki.create_ca(other / "ca.pem", other / "ca.key", common_name="someone else's CA")
    client = _client_cert(folder / "ca.pem", folder / "ca.key", folder)
    stranger = _client_cert(other / "ca.pem", other / "ca.key", other)
    return {"ca": str(folder / "ca.pem"), "cert": str(folder / "daemon.pem"), "key": str(folder / "daemon.key"),
            "client_cert": client[0], "client_key": client[1], "stranger_cert": stranger[0],
            "stranger_key": stranger[1]}


def test_mutual_tls_admits_only_scrapers_with_a_certificate_from_the_deployments_ca(pki_files):
    registry, counter = _registry()
    counter.inc()
    config = MetricsConfig(MetricsAddress("127.0.0.1", 0, 0), pki_files["cert"], pki_files["key"], pki_files["ca"])
    server = start_metrics_server(config, registry)
    try:
        assert server.url.startswith("https://127.0.0.1:")
        good = requests.get(server.url, verify=pki_files["ca"], timeout=5,
                            cert=(pki_files["client_cert"], pki_files["client_key"]))
        assert good.status_code == 200 and _value(good.text, "pero_test_things_total") == 1
        for cert in (None, (pki_files["stranger_cert"], pki_files["stranger_key"])):
            with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
                requests.get(server.url, verify=pki_files["ca"], timeout=5, cert=cert)
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url.replace("https:", "http:"), timeout=5)
        # The server is still serving after the refused handshakes.
        assert requests.get(server.url, verify=pki_files["ca"], timeout=5,
                            cert=(pki_files["client_cert"], pki_files["client_key"])).status_code == 200
    finally:
        server.close()


def test_a_key_that_does_not_load_is_one_line(pki_files, tmp_path):
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key\n")
    config = MetricsConfig(MetricsAddress("127.0.0.1", 0, 0), pki_files["cert"], str(bad_key), pki_files["ca"])
    with pytest.raises(MetricsError, match="metrics TLS: cannot use"):
        start_metrics_server(config, CollectorRegistry())


# --- pure helpers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reason, kind", [
    ("wake: idle on a stage with work (its queue node is rewritten)", "wake"),
    ("idle worker to unserved stage", "idle_to_unserved"),
    ("idle worker to loaded stage", "idle_to_loaded"),
    ("starving stage", "starving"),
    ("starving stage (unlock time overridden)", "starving_override"),
    ("rebalance, drain time -3.2 s", "rebalance"),
    ("stage disabled, nothing else to do", "release"),
    ("stage unknown, nothing else to do", "release"),
    ("something new", "other"),
])
def test_move_reasons_become_a_small_set_of_labels(reason, kind):
    assert watchdog_metrics.move_kind(reason) == kind


def test_stage_figures_count_usable_workers_and_estimate_the_drain():
    stages = {"a": StageView("a", ready=10, unacked=2, avg_msg_time=0.5), "b": StageView("b", ready=4),
              "c": StageView("c")}
    workers = [WorkerView("w1", "a", "PROCESSING"), WorkerView("w2", "a", "PROCESSING"),
               WorkerView("w3", "a", "PROCESSING", enabled=False), WorkerView("w4", "", "IDLE")]
    figures = watchdog_metrics.stage_figures(workers, stages, PlannerSettings())
    assert figures["a"] == watchdog_metrics.StageFigures(10, 2, 2, 12 * 0.5 / 2)
    assert figures["b"].workers == 0 and math.isinf(figures["b"].drain_seconds)
    assert figures["c"].drain_seconds == 0.0


def test_stage_gauges_follow_the_last_round_and_clear_on_stepping_down():
    gauges = watchdog_metrics.StageGauges()
    figure = watchdog_metrics.StageFigures(3, 1, 1, 2.0)
    gauges.update({"g_one": figure, "g_two": figure})
    gauges.update({"g_two": figure})
    shown = {s.labels.get("stage") for f in watchdog_metrics.REGISTRY.collect() for s in f.samples
             if f.name == "pero_watchdog_queue_ready"}
    assert "g_two" in shown and "g_one" not in shown
    gauges.clear()
    assert watchdog_metrics.REGISTRY.get_sample_value("pero_watchdog_queue_ready", {"stage": "g_two"}) is None


def test_worker_request_counters():
    stage = "m_stage_counters"
    sample = worker_metrics.REGISTRY.get_sample_value
    worker_metrics.request_done(stage, 0.01, None)
    worker_metrics.request_done(stage, 0.02, "failed")
    worker_metrics.result_too_large(stage)
    assert sample("pero_worker_requests_processed_total", {"stage": stage}) == 2
    assert sample("pero_worker_requests_failed_total", {"stage": stage, "reason": "failed"}) == 1
    assert sample("pero_worker_requests_failed_total", {"stage": stage, "reason": "too_large"}) == 1
    assert sample("pero_worker_processing_seconds_count", {"stage": stage}) == 1
    worker_metrics.set_status("PROCESSING")
    assert sample("pero_worker_status", {"pero_worker_status": "PROCESSING"}) == 1
    assert sample("pero_worker_status", {"pero_worker_status": "IDLE"}) == 0


def test_processing_time_buckets_count_a_bound_as_less_or_equal():
    stage = "m_stage_buckets"
    sample = worker_metrics.REGISTRY.get_sample_value
    for seconds in (0.001, 0.0011, 400.0):
        worker_metrics.request_done(stage, seconds, None)
    assert sample("pero_worker_processing_seconds_bucket", {"stage": stage, "le": "0.001"}) == 1
    assert sample("pero_worker_processing_seconds_bucket", {"stage": stage, "le": "0.005"}) == 2
    assert sample("pero_worker_processing_seconds_bucket", {"stage": stage, "le": "300.0"}) == 2
    assert sample("pero_worker_processing_seconds_bucket", {"stage": stage, "le": "+Inf"}) == 3
    assert sample("pero_worker_processing_seconds_count", {"stage": stage}) == 3
    assert sample("pero_worker_processing_seconds_sum", {"stage": stage}) == pytest.approx(400.0021)


def test_metrics_off_records_nothing_on_the_request_path(monkeypatch):
    monkeypatch.setattr(worker_metrics._Switch, "enabled", True)
    worker_metrics.disable()
    worker_metrics.request_done("m_stage_off", 0.01, None)
    worker_metrics.result_too_large("m_stage_off")
    assert worker_metrics.REGISTRY.get_sample_value("pero_worker_requests_processed_total",
                                                    {"stage": "m_stage_off"}) is None
