"""Writes sample-config/: every file system_setup.py generates, for an example deployment, with placeholders
instead of secrets.  tests/test_system_setup.py checks that sample-config/ matches; refresh it with

    python -m pero_worker.tools.deploy.samples sample-config
"""
from __future__ import annotations

import sys
from pathlib import Path

from pero_worker.tools.deploy import render
from pero_worker.tools.deploy.layout import Layout, Settings

SETTINGS = Settings(zk_host="zk.example.org", mq_host="mq.example.org", sftp_host="files.example.org",
                    rabbitmq_node="pero_5671@localhost")
LAYOUT = Layout(Path("/etc/pero"), Path("/srv/pero"))
SERVICE_PASSWORD = "<service password: config/secrets/service.password>"
ADMIN_PASSWORD = "<admin password: config/secrets/admin.password>"
HASH = "<base64(4-byte salt + SHA-256(salt + password)), written by system_setup.py>"
HOST_KEY = "<base64 of the SFTP server's ed25519 host key>"
CRYPT = "<SHA-512 crypt hash of the service password ($6$...)>"

NOTE = ("# Sample only: made by tools/deploy/samples.py for zk/mq/files.example.org with config in /etc/pero\n"
        "# and data in /srv/pero.  Real files come from scripts/system_setup.py.\n")


def sample_files() -> dict[str, str]:
    s, lay = SETTINGS, LAYOUT
    defs = render.definitions(s, {s.service_user: SERVICE_PASSWORD, s.admin_user: ADMIN_PASSWORD},
                              salt=b"\0\0\0\0")
    for user in defs["users"]:
        user["password_hash"] = HASH
    files = {
        "worker.ini": render.worker_ini(s, lay),
        "watchdog.ini": render.watchdog_ini(s, lay),
        "logd.ini": render.logd_ini(s, lay),
        "docker.env": render.docker_env(s, lay),
        "zookeeper/zoo.cfg": render.zoo_cfg(s, lay),
        "zookeeper/java.env": render.java_env(s, lay),
        "zookeeper/jaas.conf": render.jaas_conf({s.service_user: SERVICE_PASSWORD, s.admin_user: ADMIN_PASSWORD}),
        "rabbitmq/rabbitmq.conf": render.rabbitmq_conf(s, lay, log_file=str(lay.log_dir / "rabbitmq" / "node.log")),
        "rabbitmq/rabbitmq-env.conf": render.rabbitmq_env(s, lay),
        "rabbitmq/enabled_plugins": render.ENABLED_PLUGINS,
        "rabbitmq/definitions.json": render.definitions_json(defs),
        "sftp/sshd_config": render.sshd_config(s, lay),
        "sftp/users.conf": render.atmoz_users_conf(s.service_user, CRYPT),
        "certificates/known_hosts": render.known_hosts_lines([s.sftp_host], s.sftp_port, "ssh-ed25519", HOST_KEY),
    }
    commented = {}
    for name, text in files.items():
        if name.endswith(".json") or name == "rabbitmq/enabled_plugins":
            commented[name] = text          # no comment syntax: described in README.md
        elif name.endswith("jaas.conf"):
            commented[name] = NOTE.replace("# ", "// ") + text
        elif name.endswith("users.conf") or name.endswith("known_hosts"):
            commented[name] = text          # read by programs that take no comments here
        else:
            commented[name] = NOTE + text
    return commented


def write(out_dir: Path) -> None:
    for name, text in sample_files().items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "sample-config"))
