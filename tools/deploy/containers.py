"""`system_setup.py --docker`: which containers make up a deployment, and the one place that runs them.

The plan is pure (what to start, from which image, with which ports, mounts and restart policy), so every
decision is table-tested without an engine (tests/test_containers_plan.py).  `Engine` is the only code here
that runs podman or docker; `bring_up` and `tear_down` put the two together.

A deployment is a *project* (default `pero`): its containers are `<project>-zookeeper`, `<project>-rabbitmq`,
`<project>-sftp`, `<project>-watchdog`, `<project>-logd` and `<project>-worker-<n>`, the engines share the
network `<project>`, and every container, volume and the network carry the label `pero.project=<project>`,
which is what the tear-down removes (and nothing else).

Engines: on their own network, their TLS ports (and SFTP) published on the bind address; the configuration and
data directories are mounted at the same absolute paths as on the host, so every path in the generated files
(zoo.cfg, rabbitmq.conf, ...) holds inside too.  Daemons: on the host's network, so that they reach the engines
at the same host names and ports as every other client (the names in the certificates); the configuration at
/etc/pero (docker/entrypoint.sh).  Every container restarts by itself (`--restart always`): a killed worker comes
back with the same id and model cache (a named volume).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from pero_worker.tools.deploy.layout import Layout, Settings

LABEL = "pero.project"
# The uids the images run as (the official images' for the engines, so that either image family works).
UID_ZOOKEEPER = 1000
UID_RABBITMQ = 999
UID_SFTP_USER = 1001
UID_DAEMON = 10001
IMAGE_VARIABLES = {"zookeeper": "PERO_ZOOKEEPER_IMAGE", "rabbitmq": "PERO_RABBITMQ_IMAGE", "sftp": "PERO_SFTP_IMAGE",
                   "worker": "PERO_WORKER_IMAGE", "watchdog": "PERO_WATCHDOG_IMAGE", "logd": "PERO_LOGD_IMAGE"}
DEFAULT_IMAGES = {"zookeeper": "pero-zookeeper:latest", "rabbitmq": "pero-rabbitmq:latest",
                  "sftp": "pero-sftp:latest", "worker": "pero-worker:latest", "watchdog": "pero-watchdog:latest",
                  "logd": "pero-logd:latest"}
# Where a registry is reachable: the official images, same interface (README "Deploy with containers").
OFFICIAL_IMAGES = {"zookeeper": "zookeeper:3.8", "rabbitmq": "rabbitmq:3.13-management", "sftp": "atmoz/sftp:debian"}
ENGINES = ("zookeeper", "rabbitmq", "sftp")
# On the host's network every worker container would take the same default /metrics port (libs/metrics.py):
# each takes the first free one of this range instead (the watchdog and the log daemon keep their defaults).
WORKER_METRICS = "127.0.0.1:9480-9499"


class ContainerError(Exception):
    """The container engine failed; the message names the step and the engine's last line."""


@dataclass(frozen=True)
class Mount:
    source: str            # a host path, or a volume name
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Port:
    bind: str
    host: int
    container: int


@dataclass(frozen=True)
class Container:
    name: str
    role: str
    image: str
    network: str                      # a network name, or "host"
    mounts: tuple[Mount, ...] = ()
    ports: tuple[Port, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    hostname: str = ""
    gpus: bool = False
    volumes: tuple[str, ...] = ()     # named volumes this container owns (created by the engine on first use)


@dataclass(frozen=True)
class Options:
    """What the operator chose for the containers (system_setup.py's container options)."""
    project: str = "pero"
    workers: int = 1
    gpus: bool = False
    daemons: bool = True
    images: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    restart: str = "always"


def images_from(environ: dict[str, str]) -> dict[str, str]:
    """The image of each role: PERO_<ROLE>_IMAGE when set, else the locally built pero-* image."""
    return {role: environ.get(variable) or DEFAULT_IMAGES[role] for role, variable in IMAGE_VARIABLES.items()}


def engine_containers(s: Settings, lay: Layout, opts: Options) -> list[Container]:
    """ZooKeeper, RabbitMQ and the SFTP server, configured as scripts/services-docker-compose.yaml does."""
    bind = s.bind_address or "0.0.0.0"
    config = Mount(str(lay.config_dir), str(lay.config_dir), read_only=True)
    net = opts.project
    zookeeper = Container(
        f"{opts.project}-zookeeper", "zookeeper", opts.images["zookeeper"], net,
        mounts=(config, Mount(str(lay.zk_data), str(lay.zk_data))),
        ports=(Port(bind, s.zk_port, s.zk_port),),
        env=(("ZOOCFGDIR", str(lay.zk_dir)), ("ZOO_CONF_DIR", str(lay.zk_dir)), ("ZOO_DATA_DIR", str(lay.zk_data)),
             ("ZOO_LOG4J_PROP", "INFO,CONSOLE")),
        args=("zkServer.sh", "start-foreground"))
    rabbitmq = Container(
        f"{opts.project}-rabbitmq", "rabbitmq", opts.images["rabbitmq"], net,
        mounts=(config, Mount(str(lay.data_dir / "rabbitmq-docker"), "/var/lib/rabbitmq")),
        ports=(Port(bind, s.amqps_port, s.amqps_port), Port(bind, s.management_port, s.management_port)),
        env=(("RABBITMQ_CONFIG_FILE", str(lay.rabbitmq_conf)),
             ("RABBITMQ_ENABLED_PLUGINS_FILE", str(lay.enabled_plugins))),
        # The node's name (rabbit@<hostname>) names its database: it must not change between restarts.
        hostname=f"{opts.project}-rabbitmq")
    sftp = Container(
        f"{opts.project}-sftp", "sftp", opts.images["sftp"], net,
        mounts=(Mount(str(lay.sftp_users_conf), "/etc/sftp/users.conf", read_only=True),
                Mount(str(lay.sftp_host_key), "/etc/ssh/ssh_host_ed25519_key", read_only=True),
                Mount(str(lay.sftp_root / "pero"), f"/home/{s.service_user}/pero")),
        ports=(Port(bind, s.sftp_port, 22),))
    return [zookeeper, rabbitmq, sftp]


def daemon_containers(lay: Layout, opts: Options) -> list[Container]:
    """The watchdog, the log daemon and opts.workers workers, each reading the configuration at /etc/pero."""
    if not opts.daemons:
        return []
    config = Mount(str(lay.config_dir), "/etc/pero", read_only=True)
    result = [Container(f"{opts.project}-watchdog", "watchdog", opts.images["watchdog"], "host", mounts=(config,)),
              Container(f"{opts.project}-logd", "logd", opts.images["logd"], "host",
                        mounts=(config, Mount(str(lay.log_dir), "/var/log/pero")))]
    for number in range(1, opts.workers + 1):
        name = f"{opts.project}-worker-{number}"
        cache = f"{name}-cache"
        result.append(Container(name, "worker", opts.images["worker"], "host",
                                mounts=(config, Mount(cache, "/var/cache/pero-worker")),
                                env=(("PERO_METRICS_ADDRESS", WORKER_METRICS),),
                                args=("-i", name), gpus=opts.gpus, volumes=(cache,)))
    return result


def plan(s: Settings, lay: Layout, opts: Options) -> list[Container]:
    """Every container of the deployment, in start order (engines first)."""
    if opts.workers < 0:
        raise ValueError("the number of workers cannot be negative")
    return engine_containers(s, lay, opts) + daemon_containers(lay, opts)


def ownership(s: Settings, lay: Layout) -> list[tuple[str, int]]:
    """(path, uid) the host must hand to the containers' users before they start: each engine's secrets and
    data, the service password (0600) and the log daemon's folder to the daemons' uid 10001.  The log daemon
    writes into DATA/logs (README: `docker run ... -v "$(pwd)"/data/logs:/var/log/pero pero-logd`): in
    containers the engines log to their standard output, not there."""
    return [(str(lay.zk_data), UID_ZOOKEEPER), (str(lay.jaas), UID_ZOOKEEPER), (str(lay.keystore), UID_ZOOKEEPER),
            (str(lay.keystore_pass), UID_ZOOKEEPER), (str(lay.truststore_pass), UID_ZOOKEEPER),
            (str(lay.data_dir / "rabbitmq-docker"), UID_RABBITMQ), (str(lay.server_key("rabbitmq")), UID_RABBITMQ),
            (str(lay.definitions), UID_RABBITMQ), (str(lay.sftp_root / "pero"), UID_SFTP_USER),
            (str(lay.secrets), UID_DAEMON), (str(lay.service_password), UID_DAEMON),
            (str(lay.log_dir), UID_DAEMON)]


def run_argv(container: Container, opts: Options) -> list[str]:
    """`run` arguments (after the engine's name) that start `container` detached."""
    argv = ["run", "-d", "--name", container.name, "--label", f"{LABEL}={opts.project}",
            "--restart", opts.restart, "--network", container.network]
    if container.hostname:
        argv += ["--hostname", container.hostname]
    for mount in container.mounts:
        argv += ["-v", f"{mount.source}:{mount.target}" + (":ro" if mount.read_only else "")]
    for port in container.ports:
        argv += ["-p", f"{port.bind}:{port.host}:{port.container}"]
    for key, value in container.env:
        argv += ["-e", f"{key}={value}"]
    if container.gpus:
        argv += ["--gpus", "all"]
    return [*argv, container.image, *container.args]


# --- the engine --------------------------------------------------------------------------------------------

def find_engine(preferred: str | None = None) -> str:
    """podman when installed (docker when not, or PERO_CONTAINER_ENGINE / the argument when given)."""
    for name in ([preferred] if preferred else ["podman", "docker"]):
        path = shutil.which(name)
        if path:
            return path
    raise ContainerError(f"{preferred or 'neither podman nor docker'} is not installed "
                         "(apt-get install podman, see README 'Deploy with containers')")


class Engine:
    """podman or docker on the command line: the only code that runs one."""

    def __init__(self, path: str,
                 runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
        self.path = path
        self._run = runner

    def call(self, args: list[str], *, stdin: str | None = None, timeout: float = 300,
             check: str | None = None) -> subprocess.CompletedProcess:
        """Run `engine args`; with `check`, a failure raises ContainerError naming that step."""
        try:
            done = self._run([self.path, *args], input=stdin, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(f"{check or args[0]}: {os.path.basename(self.path)} did not answer in "
                                 f"{timeout:.0f} s") from None
        if check and done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise ContainerError(f"{check} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
        return done

    def lines(self, args: list[str]) -> list[str]:
        done = self.call(args)
        return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []

    def missing_images(self, images: list[str]) -> list[str]:
        return [image for image in images if self.call(["image", "inspect", image]).returncode != 0]

    def project_containers(self, project: str) -> list[str]:
        return self.lines(["ps", "-a", "--filter", f"label={LABEL}={project}", "--format", "{{.Names}}"])

    def project_volumes(self, project: str) -> list[str]:
        return self.lines(["volume", "ls", "--filter", f"label={LABEL}={project}", "--format", "{{.Name}}"])

    def project_networks(self, project: str) -> list[str]:
        return self.lines(["network", "ls", "--filter", f"label={LABEL}={project}", "--format", "{{.Name}}"])


def bring_up(engine: Engine, containers: list[Container], opts: Options,
             log: Callable[[str], None]) -> None:
    """Create the network and the named volumes, then start each container that is not running already."""
    missing = engine.missing_images(sorted({c.image for c in containers}))
    if missing:
        raise ContainerError(f"image(s) {', '.join(missing)} not found: build them first "
                             "(make docker-images, or ./docker-build-services.sh, ./docker-build-manager.sh, "
                             "./docker-build-worker.sh)")
    if opts.project not in engine.project_networks(opts.project):
        engine.call(["network", "create", "--label", f"{LABEL}={opts.project}", opts.project],
                    check=f"creating the network {opts.project}")
    existing = set(engine.project_volumes(opts.project))
    running = set(engine.lines(["ps", "--filter", f"label={LABEL}={opts.project}", "--format", "{{.Names}}"]))
    present = set(engine.project_containers(opts.project))
    for container in containers:
        for volume in container.volumes:
            if volume not in existing:
                engine.call(["volume", "create", "--label", f"{LABEL}={opts.project}", volume],
                            check=f"creating the volume {volume}")
        if container.name in running:
            log(f"{container.name}: already running")
            continue
        if container.name in present:       # stopped or exited: start it with a fresh definition
            engine.call(["rm", "-f", container.name], check=f"removing the stopped {container.name}")
        engine.call(run_argv(container, opts), check=f"starting {container.name}")
        log(f"{container.name}: started ({container.image})")


def tear_down(engine: Engine, project: str, log: Callable[[str], None]) -> None:
    """Remove the project's containers (with their anonymous volumes), named volumes and network."""
    names = engine.project_containers(project)
    if names:
        engine.call(["rm", "-f", "-v", "-t", "10", *names], timeout=120, check="removing the containers")
        log(f"containers removed: {', '.join(sorted(names))}")
    volumes = engine.project_volumes(project)
    if volumes:
        engine.call(["volume", "rm", "-f", *volumes], check="removing the volumes")
        log(f"volumes removed: {', '.join(sorted(volumes))}")
    for network in engine.project_networks(project):
        engine.call(["network", "rm", network], check=f"removing the network {network}")
        log(f"network removed: {network}")
