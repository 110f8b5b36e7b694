"""Where every generated file lives, and the settings a deployment is made from.

config/ holds what servers and clients read (copy ca.pem, the INI files and
secrets/service.password to worker hosts; nothing else is needed there).
data/ holds what the engines write (databases, logs, pid files, SFTP files).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORTS = {"zookeeper": 2281, "amqps": 5671, "management": 15671, "sftp": 2222}
DIST_PORT_OFFSET = 20000   # RabbitMQ's own convention: Erlang distribution port = AMQP port + 20000


@dataclass(frozen=True)
class Settings:
    zk_host: str
    mq_host: str
    sftp_host: str
    zk_port: int = DEFAULT_PORTS["zookeeper"]
    amqps_port: int = DEFAULT_PORTS["amqps"]
    management_port: int = DEFAULT_PORTS["management"]
    sftp_port: int = DEFAULT_PORTS["sftp"]
    dist_port: int = DEFAULT_PORTS["amqps"] + DIST_PORT_OFFSET
    service_user: str = "pero"
    admin_user: str = "admin"
    vhost: str = "pero"
    log_queue: str = "log"
    # Address the engines listen on; '' = all interfaces.
    bind_address: str = ""
    rabbitmq_node: str = "pero@localhost"
    zk_heap_mb: int = 512
    extra_names: tuple[str, ...] = ()
    # The SFTP user's jail (sshd ChrootDirectory); '' = <data>/sftp/root.
    sftp_root: str = ""


@dataclass(frozen=True)
class Layout:
    config_dir: Path
    data_dir: Path
    sftp_jail: Path | None = None      # where the SFTP user is jailed when not <data>/sftp/root

    # --- config/ ------------------------------------------------------------------
    @property
    def certs(self) -> Path:
        return self.config_dir / "certificates"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.certs / "ca.key"

    def server_cert(self, service: str) -> Path:
        return self.certs / f"{service}.pem"

    def server_key(self, service: str) -> Path:
        return self.certs / f"{service}.key"

    @property
    def known_hosts(self) -> Path:
        return self.certs / "known_hosts"

    @property
    def secrets(self) -> Path:
        return self.config_dir / "secrets"

    @property
    def service_password(self) -> Path:
        return self.secrets / "service.password"

    @property
    def admin_password(self) -> Path:
        return self.secrets / "admin.password"

    @property
    def zk_dir(self) -> Path:
        return self.config_dir / "zookeeper"

    @property
    def zoo_cfg(self) -> Path:
        return self.zk_dir / "zoo.cfg"

    @property
    def java_env(self) -> Path:
        return self.zk_dir / "java.env"

    @property
    def jaas(self) -> Path:
        return self.zk_dir / "jaas.conf"

    @property
    def keystore(self) -> Path:
        return self.zk_dir / "keystore.p12"

    @property
    def keystore_pass(self) -> Path:
        return self.zk_dir / "keystore.pass"

    @property
    def truststore(self) -> Path:
        return self.zk_dir / "truststore.p12"

    @property
    def truststore_pass(self) -> Path:
        return self.zk_dir / "truststore.pass"

    @property
    def mq_dir(self) -> Path:
        return self.config_dir / "rabbitmq"

    @property
    def rabbitmq_conf(self) -> Path:
        return self.mq_dir / "rabbitmq.conf"

    @property
    def rabbitmq_env(self) -> Path:
        return self.mq_dir / "rabbitmq-env.conf"

    @property
    def enabled_plugins(self) -> Path:
        return self.mq_dir / "enabled_plugins"

    @property
    def definitions(self) -> Path:
        return self.mq_dir / "definitions.json"

    @property
    def sftp_dir(self) -> Path:
        return self.config_dir / "sftp"

    @property
    def sshd_config(self) -> Path:
        return self.sftp_dir / "sshd_config"

    @property
    def sftp_users_conf(self) -> Path:
        """atmoz/sftp users file for --docker (password as a SHA-512 crypt hash)."""
        return self.sftp_dir / "users.conf"

    def ini(self, name: str) -> Path:
        return self.config_dir / f"{name}.ini"

    @property
    def docker_env(self) -> Path:
        return self.config_dir / "docker.env"

    # --- data/ --------------------------------------------------------------------
    @property
    def zk_data(self) -> Path:
        return self.data_dir / "zookeeper"

    @property
    def mq_data(self) -> Path:
        return self.data_dir / "rabbitmq"

    @property
    def sftp_data(self) -> Path:
        return self.data_dir / "sftp"

    @property
    def default_sftp_root(self) -> Path:
        return self.sftp_data / "root"

    @property
    def sftp_root(self) -> Path:
        """The SFTP user's view of the file system: its jail (sshd ChrootDirectory), pero/ inside."""
        return self.sftp_jail or self.default_sftp_root

    def fallback_sftp_root(self) -> Path:
        """A root-owned jail for a data folder that cannot hold one (e.g. under /tmp): unique per data folder."""
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:10]
        return Path("/var/lib/pero-worker") / f"sftp-{digest}"

    @property
    def account_marker(self) -> Path:
        """Names the system account this deployment created (so --stop removes that one, and no other)."""
        return self.run_dir / "created_account"

    @property
    def sftp_host_key(self) -> Path:
        return self.sftp_data / "ssh_host_ed25519_key"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        """Engine logs (not the suite's log daemon output)."""
        return self.data_dir / "logs"

    @property
    def logd_output(self) -> Path:
        return self.data_dir / "pero-logs"

    def pid_file(self, service: str) -> Path:
        return self.run_dir / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"
