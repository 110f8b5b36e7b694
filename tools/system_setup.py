"""Set up a secure pero-worker deployment: certificates, passwords, engine configs; start and configure the engines.

    python scripts/system_setup.py -z ZK_HOST -s MQ_HOST -f SFTP_HOST [-o config] [-d data]

writes into the config directory (what servers and clients read):
    certificates/ca.pem          the CA every client trusts (-e/--ca-cert, ca_cert in the INI files)
    certificates/ca.key          the CA's key (0600; keep it on this machine only)
    certificates/*.pem|*.key     ZooKeeper and RabbitMQ server certificates (subjectAltName = the host names)
    certificates/known_hosts     the SFTP server's host key, for clients (known_hosts / PERO_SFTP_KNOWN_HOSTS)
    secrets/service.password     password of the service user (ZooKeeper SASL, RabbitMQ, SFTP), 0600
    secrets/admin.password       password of the admin user (RabbitMQ administrator, ZooKeeper super user), 0600
    zookeeper/                   zoo.cfg (TLS-only port, SASL required), java.env, jaas.conf, key/trust stores
    rabbitmq/                    rabbitmq.conf (AMQPS + HTTPS management only), definitions.json, env file
    sftp/sshd_config             OpenSSH server: SFTP only, one user, password login
    worker.ini watchdog.ini logd.ini   INI files for the daemons (docs/protocol.md §6)
    docker.env                   variables for scripts/services-docker-compose.yaml
and into the data directory: the engines' databases, logs, pid files and the SFTP files.

Then it starts the engines natively (Debian's rabbitmq-server as its own node, ZooKeeper under java, sshd
with its own config) or with --docker in containers, podman or docker (tools/deploy/containers.py: the engines,
then the watchdog, the log daemon and --workers workers, all restarted by the engine when they die), and
configures them: the `pero` vhost, the service user with its permissions, no guest user, and the server lists
in ZooKeeper (nodes readable only by the service user).  Re-running keeps existing passwords, keys,
certificates and data.  --stop stops what it started and removes the system account it created (with
--docker: the project's containers, volumes and network; no account is created).  Passwords are never
printed: read them from the files under secrets/.

Hardening: the SFTP user is always jailed (ChrootDirectory) in a root-owned folder (--sftp-root, else
DATA_DIR/sftp/root, else /var/lib/pero-worker/sftp-<hash>) or setup refuses; an existing system account that
this deployment did not create is never given a new password without --reset-account-password; every TLS
port offers TLS 1.3 and 1.2 with AEAD cipher suites only; ZooKeeper's data files are private to it.

Exit status: 0 done, 1 a step failed (the message says which), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from pero_worker.libs.addresses import format_address, parse_address
from pero_worker.libs.config import PASSWORD_ENV
from pero_worker.tools.deploy import containers, native, pki, postconfig, render
from pero_worker.tools.deploy.layout import DEFAULT_PORTS, DIST_PORT_OFFSET, Layout, Settings
from pero_worker.tools.deploy.secrets_store import SecretError, ensure_password, write_private

log = logging.getLogger("system_setup")
ADMIN_PASSWORD_ENV = "PERO_ADMIN_PASSWORD"
SETTINGS_FILE = "setup.json"


class SetupError(Exception):
    """A step failed; the message is for the operator."""


class UsageError(SetupError):
    """Bad or missing arguments (exit status 2)."""


# --- arguments -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="system_setup.py", description=__doc__.split("\n\n")[0],
        epilog="Example: system_setup.py -z zk.example.org -s mq.example.org -f files.example.org "
               "-o /etc/pero -d /srv/pero",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    hosts = parser.add_argument_group("hosts (the names clients use; they go into the certificates)")
    hosts.add_argument("-z", "--zookeeper-host", help="ZooKeeper host name or IP address")
    hosts.add_argument("-s", "--mq-host", help="RabbitMQ host name or IP address")
    hosts.add_argument("-f", "--sftp-host", help="SFTP host name or IP address")
    hosts.add_argument("--extra-name", action="append", default=[], metavar="NAME",
                       help="another name or address the servers are reached by (repeatable)")
    hosts.add_argument("--bind", default="", metavar="ADDRESS",
                       help="address the engines listen on (default: all interfaces)")
    ports = parser.add_argument_group("ports")
    ports.add_argument("--zookeeper-port", type=int, default=DEFAULT_PORTS["zookeeper"],
                       help="ZooKeeper secureClientPort (default %(default)s); there is no plain port")
    ports.add_argument("--mq-port", type=int, default=DEFAULT_PORTS["amqps"], help="AMQPS port (default %(default)s)")
    ports.add_argument("--management-port", type=int, default=DEFAULT_PORTS["management"],
                       help="RabbitMQ HTTPS management port (default %(default)s)")
    ports.add_argument("--sftp-port", type=int, default=DEFAULT_PORTS["sftp"], help="SFTP port (default %(default)s)")
    ports.add_argument("--erlang-dist-port", type=int, default=None,
                       help=f"Erlang distribution port of the native RabbitMQ node (default: AMQPS port + "
                            f"{DIST_PORT_OFFSET}); must differ from any other node's")
    ports.add_argument("--rabbitmq-node", default=None,
                       help="name of the native RabbitMQ node (default pero_<AMQPS port>@localhost)")
    users = parser.add_argument_group("users and secrets")
    users.add_argument("-u", "--user", default="pero", help="service user for every engine (default %(default)s)")
    users.add_argument("-p", "--password", help=f"service user's password (prefer --password-file or "
                                                f"{PASSWORD_ENV}); default: kept from an earlier run or generated")
    users.add_argument("--password-file", help="read the service user's password from this file")
    users.add_argument("--admin-user", default="admin", help="administrator (default %(default)s)")
    users.add_argument("--admin-password-file",
                       help=f"read the admin password from this file (or {ADMIN_PASSWORD_ENV}); default: kept or "
                            "generated")
    users.add_argument("--reset-account-password", action="store_true",
                       help="-u names a system account that exists already and that this deployment did not "
                            "create: use it and set its password (without this flag setup refuses)")
    users.add_argument("--ca-cert", type=Path, help="use this CA certificate (PEM) instead of creating one")
    users.add_argument("--ca-key", type=Path, help="the key of --ca-cert (PEM, unencrypted)")
    where = parser.add_argument_group("files")
    where.add_argument("-o", "--config-dir", type=Path, default=Path("config"),
                       help="where generated configuration goes (default ./config)")
    where.add_argument("-d", "--data-dir", type=Path, default=Path("data"),
                       help="where the engines keep their data and logs (default ./data)")
    where.add_argument("--sftp-root", type=Path, metavar="DIR",
                       help="folder the SFTP user is jailed in (sshd ChrootDirectory: every component root-owned, "
                            "not group/world-writable); default DATA_DIR/sftp/root when it qualifies, else "
                            "/var/lib/pero-worker/sftp-<hash of DATA_DIR>; setup refuses rather than leave the "
                            "user unconfined")
    where.add_argument("--log-queue", default="log", help="queue of the workers' log lines (default %(default)s)")
    mode = parser.add_argument_group("what to do")
    mode.add_argument("--docker", action="store_true",
                      help="run the engines and the daemons in containers (podman, or docker): see the "
                           "'containers' options and README 'Deploy with containers'")
    mode.add_argument("--no-start", action="store_true", help="only generate the files")
    mode.add_argument("--stop", action="store_true",
                      help="stop the engines an earlier run started and remove the system account it created")
    mode.add_argument("--zookeeper-heap", type=int, default=512, metavar="MB", help="ZooKeeper JVM heap (MB)")
    mode.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    boxes = parser.add_argument_group("containers (with --docker)")
    boxes.add_argument("--project", default=os.environ.get("PERO_PROJECT", "pero"),
                       help="prefix of the containers, volumes and network; --stop removes exactly these "
                            "(default $PERO_PROJECT or %(default)s)")
    boxes.add_argument("--workers", type=int, default=1, metavar="N",
                       help="worker containers to run (default %(default)s; 0 = engines and managers only)")
    boxes.add_argument("--gpus", action="store_true", help="give the workers the GPUs (docker run --gpus all)")
    boxes.add_argument("--no-daemons", action="store_true",
                       help="only the engines (ZooKeeper, RabbitMQ, SFTP): no watchdog, log daemon or workers")
    boxes.add_argument("--engine", default=os.environ.get("PERO_CONTAINER_ENGINE"),
                       help="podman or docker (default $PERO_CONTAINER_ENGINE, else podman when installed, "
                            "else docker); images from PERO_<ROLE>_IMAGE, else the locally built pero-* images")
    return parser


def _host(value: str | None, option: str) -> str:
    if not value:
        raise UsageError(f"missing {option} HOST")
    try:
        return parse_address(value, 1).host
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None


def _port(value: int, option: str) -> int:
    if not 0 < value < 65536:
        raise UsageError(f"{option} {value} is not a TCP port")
    return value


def settings_from_args(args: argparse.Namespace, sftp_root: str = "") -> Settings:
    amqps = _port(args.mq_port, "--mq-port")
    dist = _port(args.erlang_dist_port if args.erlang_dist_port else amqps + DIST_PORT_OFFSET, "--erlang-dist-port")
    ports = {"--zookeeper-port": _port(args.zookeeper_port, "--zookeeper-port"), "--mq-port": amqps,
             "--management-port": _port(args.management_port, "--management-port"),
             "--sftp-port": _port(args.sftp_port, "--sftp-port"), "--erlang-dist-port": dist}
    if len(set(ports.values())) != len(ports):
        raise UsageError("the ports must all differ: " + ", ".join(f"{k} {v}" for k, v in ports.items()))
    for user in (args.user, args.admin_user):
        if not user or not user.replace("_", "").replace("-", "").isalnum() or user[0] == "-":
            raise UsageError(f"user names may only contain letters, digits, '_' and '-': {user!r}")
    if args.user == args.admin_user:
        raise UsageError("the service user and the admin user must differ")
    return Settings(
        zk_host=_host(args.zookeeper_host, "-z/--zookeeper-host"), mq_host=_host(args.mq_host, "-s/--mq-host"),
        sftp_host=_host(args.sftp_host, "-f/--sftp-host"), zk_port=ports["--zookeeper-port"], amqps_port=amqps,
        management_port=ports["--management-port"], sftp_port=ports["--sftp-port"], dist_port=dist,
        service_user=args.user, admin_user=args.admin_user, log_queue=args.log_queue, bind_address=args.bind,
        rabbitmq_node=args.rabbitmq_node or f"pero_{amqps}@localhost", zk_heap_mb=args.zookeeper_heap,
        extra_names=tuple(args.extra_name), sftp_root=sftp_root)


def _given_password(cli: str | None, cli_file: str | None, env_name: str, what: str) -> str | None:
    if cli:
        return cli
    if cli_file:
        try:
            return Path(cli_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise SetupError(f"cannot read the {what} password file {cli_file}: {error.strerror}") from None
    return os.environ.get(env_name) or None


# --- generation ----------------------------------------------------------------------

def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode & 0o077 == 0:
        write_private(path, text.encode())
        return
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sftp_host_key(lay: Layout) -> tuple[str, str]:
    """(key type, base64 public key) of the SFTP host key; created on the first run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if not lay.sftp_host_key.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        write_private(lay.sftp_host_key, key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.OpenSSH,
                                                           serialization.NoEncryption()))
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        Path(f"{lay.sftp_host_key}.pub").write_bytes(public + b"\n")
    key = serialization.load_ssh_private_key(lay.sftp_host_key.read_bytes(), password=None)
    key_type, key_b64 = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH).decode().split()[:2]
    return key_type, key_b64


def chroot_problem_for(path: Path) -> str | None:
    """Why sshd would refuse `path` as ChrootDirectory (None: it qualifies; missing folders are created
    root-owned 0755)."""
    components = []
    current = path.resolve()
    chain = [current, *current.parents]
    for item in reversed(chain):
        try:
            st = item.stat()
        except OSError:
            # not created yet: it will be root-owned 0755
            continue
        components.append(render.PathStat(str(item), st.st_uid, st.st_mode))
    return render.chroot_problem(components)


def sha512_crypt(password: str, previous: str | None) -> str:
    """A SHA-512 crypt hash (for atmoz/sftp); the previous one is kept when it still matches."""
    def run(extra: list[str]) -> str:
        done = subprocess.run(["openssl", "passwd", "-6", *extra, "-stdin"], input=password + "\n",
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise SetupError("openssl passwd failed: " + done.stderr.strip().splitlines()[-1:][0]
                             if done.stderr.strip() else "openssl passwd failed")
        return done.stdout.strip()
    if previous and previous.startswith("$6$"):
        salt = previous.split("$")[2]
        if run(["-salt", salt]) == previous:
            return previous
    return run([])


def generate(s: Settings, lay: Layout, args: argparse.Namespace) -> dict[str, str]:
    """Write every file; returns {'service': password, 'admin': password} for the post-start steps."""
    for folder in (lay.config_dir, lay.certs, lay.zk_dir, lay.mq_dir, lay.sftp_dir, lay.data_dir, lay.run_dir,
                   lay.log_dir, lay.sftp_data):
        folder.mkdir(parents=True, exist_ok=True)
    lay.secrets.mkdir(parents=True, exist_ok=True)
    lay.secrets.chmod(0o700)

    try:
        service_pw, how = ensure_password(lay.service_password, _given_password(
            args.password, args.password_file, PASSWORD_ENV, "service"), "service user")
        log.info("service user %r: password %s (%s)", s.service_user, how, lay.service_password)
        admin_pw, how = ensure_password(lay.admin_password, _given_password(
            None, args.admin_password_file, ADMIN_PASSWORD_ENV, "admin"), "admin")
        log.info("admin user %r: password %s (%s)", s.admin_user, how, lay.admin_password)
        ensure_password(lay.keystore_pass, None, "key store")
        ensure_password(lay.truststore_pass, None, "trust store")
    except SecretError as error:
        raise SetupError(str(error)) from None

    # Certificates.
    ca, ca_key, created = pki.ensure_ca(lay.ca_cert, lay.ca_key, given_cert=args.ca_cert, given_key=args.ca_key)
    log.info("CA %s: %s", lay.ca_cert, "created" if created else ("given" if args.ca_cert else "kept"))
    for service, host in (("zookeeper", s.zk_host), ("rabbitmq", s.mq_host)):
        names = pki.subject_alt_names(host, s.extra_names)
        issued = pki.ensure_server_cert(ca, ca_key, names, lay.server_cert(service), lay.server_key(service))
        log.info("%s certificate for %s: %s", service, ", ".join(names),
                 f"issued ({issued.reason})" if issued.reissued else "kept")
        if service == "zookeeper" and (issued.reissued or not lay.keystore.exists() or not lay.truststore.exists()):
            pki.write_java_stores(issued.cert_path, issued.key_path, lay.ca_cert, lay.keystore, lay.keystore_pass,
                                  lay.truststore, lay.truststore_pass)
            log.info("ZooKeeper key store and trust store written (PKCS12)")

    # ZooKeeper.
    # In containers the engines listen on every interface of their own network; the bind address is where
    # their ports are published on the host.
    inside = replace(s, bind_address="") if args.docker else s
    _write(lay.zoo_cfg, render.zoo_cfg(inside, lay))
    _write(lay.java_env, render.java_env(s, lay))
    _write(lay.jaas, render.jaas_conf({s.service_user: service_pw, s.admin_user: admin_pw}), 0o600)

    # RabbitMQ.
    _write(lay.rabbitmq_conf, render.rabbitmq_conf(inside, lay, log_file=None if args.docker
                                                    else str(lay.log_dir / "rabbitmq" / "node.log")))
    _write(lay.rabbitmq_env, render.rabbitmq_env(s, lay))
    _write(lay.enabled_plugins, render.ENABLED_PLUGINS)
    defs = render.definitions(s, {s.service_user: service_pw, s.admin_user: admin_pw}, _read_json(lay.definitions))
    _write(lay.definitions, render.definitions_json(defs), 0o600)

    # SFTP.
    key_type, key_b64 = sftp_host_key(lay)
    _write(lay.known_hosts, render.known_hosts_lines(pki.subject_alt_names(s.sftp_host, s.extra_names),
                                                     s.sftp_port, key_type, key_b64))
    _write(lay.sshd_config, render.sshd_config(s, lay), 0o600)
    if args.docker:
        previous = None
        if lay.sftp_users_conf.exists():
            parts = lay.sftp_users_conf.read_text().split(":")
            previous = parts[1] if len(parts) > 2 else None
        _write(lay.sftp_users_conf, render.atmoz_users_conf(s.service_user, sha512_crypt(service_pw, previous)),
               0o600)

    # The suite's INI files and docker-compose variables.
    _write(lay.ini("worker"), render.worker_ini(s, lay))
    _write(lay.ini("watchdog"), render.watchdog_ini(s, lay))
    _write(lay.ini("logd"), render.logd_ini(s, lay))
    _write(lay.docker_env, render.docker_env(s, lay))
    lay.logd_output.mkdir(parents=True, exist_ok=True)
    boxes = {"project": args.project, "engine": args.engine} if args.docker else None
    (lay.run_dir / SETTINGS_FILE).write_text(json.dumps({**asdict(s), "docker": bool(args.docker),
                                                         "containers": boxes}, indent=2))
    log.info("configuration written to %s", lay.config_dir)
    return {"service": service_pw, "admin": admin_pw}


# --- native start / stop -------------------------------------------------------------

def _check_reachable(lay: Layout) -> None:
    """Service accounts must be able to walk down to their files (a 0700 parent would hide them)."""
    for account_name in ("rabbitmq", "zookeeper"):
        account = native.service_account(account_name)
        if account is None:
            continue
        for base in (lay.config_dir, lay.data_dir):
            for folder in reversed([base.resolve(), *base.resolve().parents]):
                st = folder.stat()
                if st.st_uid == account.pw_uid:
                    ok = st.st_mode & 0o100
                elif st.st_gid == account.pw_gid:
                    ok = st.st_mode & 0o010
                else:
                    ok = st.st_mode & 0o001
                if not ok:
                    raise SetupError(f"the {account_name} account cannot enter {folder} (mode "
                                     f"{st.st_mode & 0o777:03o}); choose directories it can reach or chmod o+x")


def start_native(s: Settings, lay: Layout, passwords: dict[str, str], *, reset_account: bool = False) -> None:
    _check_reachable(lay)
    try:
        # The account first: refusing to touch someone else's account must not leave engines running.
        for action in postconfig.ensure_sftp_account(s, lay, passwords["service"], reset_existing=reset_account):
            log.info("SFTP: %s", action)
        log.info("ZooKeeper on port %d: %s", s.zk_port, native.start_zookeeper(s, lay))
        log.info("RabbitMQ on ports %d/%d: %s", s.amqps_port, s.management_port, native.start_rabbitmq(s, lay))
        log.info("SFTP on port %d: %s", s.sftp_port, native.start_sshd(s, lay))
        for action in postconfig.configure_rabbitmq(
                lambda a, stdin=None: native.rabbitmqctl(s, lay, a, stdin=stdin), lay):
            log.info("RabbitMQ: %s", action)
    except (native.ServiceError, postconfig.PostConfigError) as error:
        raise SetupError(str(error)) from None


def stop_native(s: Settings, lay: Layout) -> None:
    log.info("sshd: %s", native.stop_sshd(lay))
    log.info("RabbitMQ: %s", native.stop_rabbitmq(s, lay))
    log.info("ZooKeeper: %s", native.stop_zookeeper(lay))
    try:
        removed = postconfig.remove_created_account(lay)
    except postconfig.PostConfigError as error:
        raise SetupError(str(error)) from None
    log.info("SFTP: %s", removed or f"system account {s.service_user!r} kept (this deployment did not create it)")
    log.info("SFTP files stay in %s", lay.sftp_root)


# --- containers ----------------------------------------------------------------------

def container_options(args: argparse.Namespace) -> containers.Options:
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: give 0 or more")
    if not args.project.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"--project {args.project!r}: letters, digits, '-' and '_' only")
    return containers.Options(project=args.project, workers=args.workers, gpus=args.gpus,
                              daemons=not args.no_daemons, images=containers.images_from(dict(os.environ)))


def _engine(name: str | None) -> containers.Engine:
    try:
        return containers.Engine(containers.find_engine(name))
    except containers.ContainerError as error:
        raise SetupError(str(error)) from None


def _hand_over(s: Settings, lay: Layout) -> None:
    """Give each container's user its files (the engines' secrets and data, the daemons' password and logs)."""
    for folder in (lay.sftp_root / "pero", lay.data_dir / "rabbitmq-docker", lay.zk_data, lay.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for path, uid in containers.ownership(s, lay):
        os.chown(path, uid, uid)


def start_containers(s: Settings, lay: Layout, passwords: dict[str, str], args: argparse.Namespace) -> None:
    """Engines, then their post-configuration from the host, then the daemons; each step says what it did."""
    opts = container_options(args)
    engine = _engine(args.engine)
    everything = containers.plan(s, lay, opts)
    engines = [c for c in everything if c.role in containers.ENGINES]
    started = time.monotonic()
    try:
        containers.bring_up(engine, engines, opts, log.info)
        deadline = time.monotonic() + 180
        native.wait_for_tls(s.zk_host, s.zk_port, str(lay.ca_cert), "ZooKeeper", deadline)
        native.wait_for_tls(s.mq_host, s.amqps_port, str(lay.ca_cert), "RabbitMQ", deadline)
        rabbitmq = f"{opts.project}-rabbitmq"
        for action in postconfig.configure_rabbitmq(
                lambda a, stdin=None: engine.call(["exec", *(["-i"] if stdin is not None else []), rabbitmq,
                                                   "rabbitmqctl", *a], stdin=stdin, timeout=120), lay):
            log.info("RabbitMQ: %s", action)
        post_configure(s, lay, passwords)
        log.info("engines up and configured in %.1f s", time.monotonic() - started)
        daemons = [c for c in everything if c.role not in containers.ENGINES]
        if daemons:
            containers.bring_up(engine, daemons, opts, log.info)
    except (native.ServiceError, postconfig.PostConfigError, containers.ContainerError) as error:
        raise SetupError(str(error)) from None


def stop_containers(lay: Layout, saved: dict) -> None:
    engine = _engine(saved.get("engine"))
    try:
        containers.tear_down(engine, saved.get("project", "pero"), log.info)
    except containers.ContainerError as error:
        raise SetupError(str(error)) from None
    log.info("containers stopped; configuration and data stay in %s and %s", lay.config_dir, lay.data_dir)


# --- main ----------------------------------------------------------------------------

def sftp_jail(base: Layout, given: Path | None) -> tuple[Layout, str | None]:
    """The layout with the SFTP user's jail decided (see render.choose_sftp_root); SetupError when no
    folder qualifies: the account is never left unconfined."""
    try:
        root, note = render.choose_sftp_root(str(given.resolve()) if given else None, str(base.default_sftp_root),
                                             str(base.fallback_sftp_root()),
                                             lambda path: chroot_problem_for(Path(path)))
    except ValueError as error:
        raise SetupError(str(error)) from None
    jail = None if root == str(base.default_sftp_root) else Path(root)
    return Layout(base.config_dir, base.data_dir, jail), note


def post_configure(s: Settings, lay: Layout, passwords: dict[str, str]) -> None:
    """From the host, once the engines answer: the management API, and the server lists in ZooKeeper."""
    try:
        log.info("RabbitMQ: %s", postconfig.check_management(s, lay, passwords["service"]))
        for action in postconfig.configure_zookeeper(s, lay, passwords["service"]):
            log.info("ZooKeeper: %s", action)
    except postconfig.PostConfigError as error:
        raise SetupError(str(error)) from None


def stop(lay: Layout) -> None:
    saved = _read_json(lay.run_dir / SETTINGS_FILE)
    if saved is None:
        raise SetupError(f"nothing to stop: {lay.run_dir / SETTINGS_FILE} not found (wrong -d?)")
    if saved.pop("docker", False):
        stop_containers(lay, saved.get("containers") or {})
        return
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
                    if k in Settings.__dataclass_fields__})
    if s.sftp_root and s.sftp_root != str(lay.default_sftp_root):
        lay = Layout(lay.config_dir, lay.data_dir, Path(s.sftp_root))
    stop_native(s, lay)


def run(args: argparse.Namespace) -> None:
    lay = Layout(args.config_dir.resolve(), args.data_dir.resolve())
    if args.stop:
        stop(lay)
        return
    if args.docker:
        container_options(args)     # bad container options stop here, before anything is written
    else:                           # the containers jail the SFTP user themselves
        lay, note = sftp_jail(lay, args.sftp_root)
        if note:
            log.info("SFTP: %s", note)
    s = settings_from_args(args, str(lay.sftp_root))
    if not args.docker and not args.no_start:
        try:       # before anything is written or started
            postconfig.check_account(s, lay, reset_existing=args.reset_account_password)
        except postconfig.PostConfigError as error:
            raise SetupError(str(error)) from None
    passwords = generate(s, lay, args)
    if args.docker:                 # also for --no-start: compose users start the engines themselves
        _hand_over(s, lay)
    if args.no_start:
        return
    if args.docker:
        start_containers(s, lay, passwords, args)
    else:
        start_native(s, lay, passwords, reset_account=args.reset_account_password)
        post_configure(s, lay, passwords)
    zk = format_address(s.zk_host, s.zk_port)
    log.info("ready: run a worker with  python worker/run_worker.py -c %s  (or -z %s -u %s --password-file %s "
             "-e %s)", lay.ini("worker"), zk, s.service_user, lay.service_password, lay.ca_cert)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s system_setup: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("kazoo", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        run(args)
    except UsageError as error:
        parser.print_usage(sys.stderr)
        log.error("%s", error)
        return 2
    except SetupError as error:
        log.error("%s", error)
        return 1
    except (pki.PkiError, OSError) as error:
        log.error("%s", error)
        return 1
    return 0
