"""tools/deploy/containers.py without an engine: what a --docker deployment starts, from which image, with which
ports, mounts and restart policy; the engine calls it makes (recorded by a runner that answers like podman)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pero_worker.tools.deploy import containers
from pero_worker.tools.deploy.layout import Layout, Settings

LAY = Layout(Path("/srv/pero/config"), Path("/srv/pero/data"))
S = Settings(zk_host="zk.example.org", mq_host="mq.example.org", sftp_host="files.example.org", zk_port=17281,
             amqps_port=17671, management_port=17672, sftp_port=17222, service_user="perobox")


def _by_name(items: list[containers.Container]) -> dict[str, containers.Container]:
    return {c.name: c for c in items}


def test_default_plan_is_three_engines_two_managers_one_worker():
    names = [c.name for c in containers.plan(S, LAY, containers.Options())]
    assert names == ["pero-zookeeper", "pero-rabbitmq", "pero-sftp", "pero-watchdog", "pero-logd", "pero-worker-1"]


@pytest.mark.parametrize("options, expected", [
    (containers.Options(workers=0), ["box-zookeeper", "box-rabbitmq", "box-sftp", "box-watchdog", "box-logd"]),
    (containers.Options(workers=3), ["box-zookeeper", "box-rabbitmq", "box-sftp", "box-watchdog", "box-logd",
                                     "box-worker-1", "box-worker-2", "box-worker-3"]),
    (containers.Options(daemons=False, workers=3), ["box-zookeeper", "box-rabbitmq", "box-sftp"]),
])
def test_what_is_started(options, expected):
    options = containers.Options(**{**options.__dict__, "project": "box"})
    assert [c.name for c in containers.plan(S, LAY, options)] == expected


def test_negative_worker_count_is_refused():
    with pytest.raises(ValueError):
        containers.plan(S, LAY, containers.Options(workers=-1))


@pytest.mark.parametrize("bind, expected", [("", "0.0.0.0"), ("192.0.2.2", "192.0.2.2")])
def test_only_tls_ports_and_sftp_are_published_on_the_bind_address(bind, expected):
    s = Settings(**{**S.__dict__, "bind_address": bind})
    plan = _by_name(containers.plan(s, LAY, containers.Options()))
    assert plan["pero-zookeeper"].ports == (containers.Port(expected, 17281, 17281),)
    assert plan["pero-rabbitmq"].ports == (containers.Port(expected, 17671, 17671),
                                           containers.Port(expected, 17672, 17672))
    assert plan["pero-sftp"].ports == (containers.Port(expected, 17222, 22),)
    for daemon in ("pero-watchdog", "pero-logd", "pero-worker-1"):
        assert plan[daemon].ports == () and plan[daemon].network == "host"


def test_engines_see_config_and_data_at_the_host_paths():
    plan = _by_name(containers.plan(S, LAY, containers.Options()))
    zk, mq, sftp = plan["pero-zookeeper"], plan["pero-rabbitmq"], plan["pero-sftp"]
    config = containers.Mount("/srv/pero/config", "/srv/pero/config", read_only=True)
    assert zk.mounts == (config, containers.Mount("/srv/pero/data/zookeeper", "/srv/pero/data/zookeeper"))
    assert ("ZOOCFGDIR", "/srv/pero/config/zookeeper") in zk.env
    assert zk.args == ("zkServer.sh", "start-foreground")
    assert mq.mounts == (config, containers.Mount("/srv/pero/data/rabbitmq-docker", "/var/lib/rabbitmq"))
    assert ("RABBITMQ_CONFIG_FILE", "/srv/pero/config/rabbitmq/rabbitmq.conf") in mq.env
    assert mq.hostname == "pero-rabbitmq"     # the node name, hence its database, survives a restart
    assert containers.Mount("/srv/pero/data/sftp/root/pero", "/home/perobox/pero") in sftp.mounts
    assert all(m.read_only for m in sftp.mounts if m.target.startswith("/etc/"))
    for engine in (zk, mq, sftp):
        assert engine.network == "pero"


def test_daemons_read_the_config_at_etc_pero_and_workers_keep_id_and_cache():
    plan = _by_name(containers.plan(S, LAY, containers.Options(workers=2, gpus=True)))
    config = containers.Mount("/srv/pero/config", "/etc/pero", read_only=True)
    assert plan["pero-watchdog"].mounts == (config,)
    assert plan["pero-logd"].mounts == (config, containers.Mount("/srv/pero/data/logs", "/var/log/pero"))
    worker = plan["pero-worker-2"]
    assert worker.args == ("-i", "pero-worker-2") and worker.gpus
    assert worker.mounts == (config, containers.Mount("pero-worker-2-cache", "/var/cache/pero-worker"))
    assert worker.volumes == ("pero-worker-2-cache",)
    # Workers share the host's network: each takes the first free /metrics port of a range.
    assert worker.env == (("PERO_METRICS_ADDRESS", "127.0.0.1:9480-9499"),)
    assert not plan["pero-watchdog"].gpus


def test_run_arguments():
    plan = _by_name(containers.plan(S, LAY, containers.Options()))
    argv = containers.run_argv(plan["pero-sftp"], containers.Options())
    assert argv == ["run", "-d", "--name", "pero-sftp", "--label", "pero.project=pero", "--restart", "always",
                    "--network", "pero", "-v", "/srv/pero/config/sftp/users.conf:/etc/sftp/users.conf:ro",
                    "-v", "/srv/pero/data/sftp/ssh_host_ed25519_key:/etc/ssh/ssh_host_ed25519_key:ro",
                    "-v", "/srv/pero/data/sftp/root/pero:/home/perobox/pero", "-p", "0.0.0.0:17222:22",
                    "pero-sftp:latest"]
    worker = containers.run_argv(containers.plan(S, LAY, containers.Options(gpus=True))[-1], containers.Options())
    assert worker[-7:] == ["-e", "PERO_METRICS_ADDRESS=127.0.0.1:9480-9499", "--gpus", "all", "pero-worker:latest",
                           "-i", "pero-worker-1"]


@pytest.mark.parametrize("environ, expected", [
    ({}, containers.DEFAULT_IMAGES),
    ({"PERO_RABBITMQ_IMAGE": "rabbitmq:3.13-management", "PERO_ZOOKEEPER_IMAGE": "zookeeper:3.8",
      "PERO_SFTP_IMAGE": ""},
     {**containers.DEFAULT_IMAGES, "rabbitmq": "rabbitmq:3.13-management", "zookeeper": "zookeeper:3.8"}),
])
def test_images_come_from_the_environment(environ, expected):
    assert containers.images_from(environ) == expected


def test_ownership_hands_secrets_to_the_containers_users_only():
    owners = dict(containers.ownership(S, LAY))
    assert owners["/srv/pero/config/zookeeper/jaas.conf"] == 1000
    assert owners["/srv/pero/config/certificates/rabbitmq.key"] == 999
    assert owners["/srv/pero/config/secrets/service.password"] == 10001
    assert owners["/srv/pero/data/sftp/root/pero"] == 1001
    # The admin password and the CA key stay root's.
    assert "/srv/pero/config/secrets/admin.password" not in owners
    assert "/srv/pero/config/certificates/ca.key" not in owners


class FakeEngine:
    """Answers like podman for the listing calls; records every call."""

    def __init__(self, containers_present=(), running=(), volumes=(), networks=(), images_missing=()):
        self.calls: list[list[str]] = []
        self.present, self.running = list(containers_present), list(running)
        self.volumes, self.networks, self.images_missing = list(volumes), list(networks), set(images_missing)

    def __call__(self, argv, **_kwargs):
        args = argv[1:]
        self.calls.append(args)
        out, rc = "", 0
        if args[:2] == ["image", "inspect"]:
            rc = 1 if args[2] in self.images_missing else 0
        elif args[:2] == ["ps", "-a"]:
            out = "\n".join(self.present)
        elif args[0] == "ps":
            out = "\n".join(self.running)
        elif args[:2] == ["volume", "ls"]:
            out = "\n".join(self.volumes)
        elif args[:2] == ["network", "ls"]:
            out = "\n".join(self.networks)
        return subprocess.CompletedProcess(argv, rc, out, "")


def test_bring_up_creates_network_and_volumes_and_skips_what_runs():
    fake = FakeEngine(containers_present=["pero-zookeeper", "pero-rabbitmq"], running=["pero-zookeeper"])
    plan = containers.plan(S, LAY, containers.Options())
    said = []
    containers.bring_up(containers.Engine("/usr/bin/podman", fake), plan, containers.Options(), said.append)
    calls = [c for c in fake.calls if c[0] not in ("image", "ps") and c[:2] not in (["volume", "ls"],
                                                                                      ["network", "ls"])]
    assert calls[0] == ["network", "create", "--label", "pero.project=pero", "pero"]
    assert ["rm", "-f", "pero-rabbitmq"] in calls          # exited: replaced by a fresh one
    started = [c[3] for c in calls if c[:2] == ["run", "-d"]]
    assert started == ["pero-rabbitmq", "pero-sftp", "pero-watchdog", "pero-logd", "pero-worker-1"]
    assert ["volume", "create", "--label", "pero.project=pero", "pero-worker-1-cache"] in calls
    assert "pero-zookeeper: already running" in said


def test_bring_up_refuses_missing_images_before_starting_anything():
    fake = FakeEngine(images_missing={"pero-worker:latest"})
    with pytest.raises(containers.ContainerError, match="pero-worker:latest not found: build them first"):
        containers.bring_up(containers.Engine("podman", fake), containers.plan(S, LAY, containers.Options()),
                            containers.Options(), print)
    assert not [c for c in fake.calls if c[0] in ("run", "network", "volume") and c[1] != "ls"]


def test_tear_down_removes_only_the_projects_things():
    fake = FakeEngine(containers_present=["box-zookeeper", "box-worker-1"], volumes=["box-worker-1-cache"],
                      networks=["box"])
    said = []
    containers.tear_down(containers.Engine("podman", fake), "box", said.append)
    assert ["ps", "-a", "--filter", "label=pero.project=box", "--format", "{{.Names}}"] in fake.calls
    assert ["rm", "-f", "-v", "-t", "10", "box-zookeeper", "box-worker-1"] in fake.calls
    assert ["volume", "rm", "-f", "box-worker-1-cache"] in fake.calls
    assert ["network", "rm", "box"] in fake.calls
    assert said == ["containers removed: box-worker-1, box-zookeeper", "volumes removed: box-worker-1-cache",
                    "network removed: box"]


def test_a_failing_engine_call_names_the_step():
    def failing(argv, **_kwargs):
        return subprocess.CompletedProcess(argv, 125, "", "Error: something broke\n")
    with pytest.raises(containers.ContainerError, match="starting x failed: Error: something broke"):
        containers.Engine("podman", failing).call(["run", "x"], check="starting x")


def test_known_hosts_from_the_environment_beats_the_ini_file(tmp_path, monkeypatch):
    """docker/entrypoint.sh points PERO_SFTP_KNOWN_HOSTS at the mounted file; the INI names the host's path."""
    import argparse

    from pero_worker.libs.config import connection_config
    mounted = tmp_path / "known_hosts"
    mounted.write_text("")
    ini = {"zookeeper_servers": "zk:2281", "known_hosts": "/srv/host/only/known_hosts"}
    monkeypatch.setenv("PERO_SFTP_KNOWN_HOSTS", str(mounted))
    assert connection_config(argparse.Namespace(), ini).known_hosts == str(mounted)
    given = tmp_path / "given"
    given.write_text("")
    assert connection_config(argparse.Namespace(known_hosts=str(given)), ini).known_hosts == str(given)
