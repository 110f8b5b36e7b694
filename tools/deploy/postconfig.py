"""Configuration that needs the engines running: broker users, the SFTP account, ZooKeeper server lists.

Everything here is idempotent: re-running changes nothing that is already right.
"""
from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

import requests

from pero_worker.libs import tls, zk_paths
from pero_worker.libs.addresses import Address, format_address, parse_address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.zk import ZkConnectionError, ZooKeeper
from pero_worker.tools.deploy.layout import Layout, Settings


class PostConfigError(Exception):
    """A post-start step failed; the message says which and why (never with a password)."""


# --- RabbitMQ --------------------------------------------------------------------

def configure_rabbitmq(run_ctl: Callable[..., subprocess.CompletedProcess], lay: Layout) -> list[str]:
    """Import users/vhost/permissions (hashed passwords) and remove guest.

    `run_ctl(args, stdin=None)` runs rabbitmqctl against our node (natively or inside the
    container).  The definitions go through stdin, so file ownership does not matter.
    """
    done = run_ctl(["import_definitions", "--format", "json"], stdin=lay.definitions.read_text(encoding="utf-8"))
    if done.returncode != 0:
        raise PostConfigError(f"rabbitmqctl import_definitions failed: {_last(done)}")
    actions = ["users, vhost and permissions imported"]
    users = run_ctl(["list_users", "--silent", "--formatter", "json"])
    names = []
    if users.returncode == 0:
        try:
            names = [entry.get("user") for entry in json.loads(users.stdout or "[]")]
        except ValueError:
            names = []
    if "guest" in names or users.returncode != 0:
        gone = run_ctl(["delete_user", "guest"])
        if gone.returncode == 0:
            actions.append("guest removed")
        elif "does not exist" not in (gone.stdout + gone.stderr) and "no_such_user" not in (gone.stdout + gone.stderr):
            raise PostConfigError(f"cannot remove the guest user: {_last(gone)}")
    return actions


def _last(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {done.returncode}"


def check_management(s: Settings, lay: Layout, password: str) -> str:
    """The service user can read the management API over HTTPS (what the watchdog needs)."""
    url = f"https://{format_address(s.mq_host, s.management_port)}/api/whoami"
    try:
        response = requests.get(url, auth=(s.service_user, password), verify=str(lay.ca_cert), timeout=15)
    except requests.exceptions.SSLError as error:
        raise PostConfigError(tls.describe_error(error, service="RabbitMQ management", address=url,
                                                 ca_cert=str(lay.ca_cert), host=s.mq_host)) from None
    except requests.RequestException as error:
        raise PostConfigError(f"RabbitMQ management at {url}: {type(error).__name__}") from None
    if response.status_code != 200:
        raise PostConfigError(f"RabbitMQ management at {url} refused user {s.service_user!r} "
                              f"(HTTP {response.status_code})")
    return f"management API answers {s.service_user!r} over HTTPS"


# --- SFTP account ----------------------------------------------------------------

def _make_root_folders(path: Path) -> None:
    """Create `path` and any missing parent root-owned 0755, whatever the umask (sshd checks every component)."""
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        folder.mkdir()
        os.chown(folder, 0, 0)
        folder.chmod(0o755)


def created_account(lay: Layout) -> str | None:
    """The system account this deployment created (recorded when it did), or None."""
    try:
        return lay.account_marker.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def check_account(s: Settings, lay: Layout, *, reset_existing: bool) -> None:
    """Refuse (PostConfigError) to take over a system account this deployment did not create, unless told to."""
    try:
        pwd.getpwnam(s.service_user)
    except KeyError:
        return
    if created_account(lay) != s.service_user and not reset_existing:
        raise PostConfigError(
            f"a system account {s.service_user!r} already exists and this deployment did not create it: "
            f"setting its password would change how it logs in. Choose another user with -u, or give "
            f"--reset-account-password to use that account and set its password")


def ensure_sftp_account(s: Settings, lay: Layout, password: str, *, reset_existing: bool = False) -> list[str]:
    """A system account for the SFTP user (no shell), its password, its jail and the folder `pero/` in it.

    An account this deployment did not create is somebody else's (a person, another deployment,
    scripts/local_services.py): its password is set only with `reset_existing` (--reset-account-password).
    """
    actions = []
    try:
        account = pwd.getpwnam(s.service_user)
    except KeyError:
        account = None
    if account is None:
        done = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", str(lay.sftp_root),
                               "--shell", "/usr/sbin/nologin", "--comment", "pero-worker SFTP user",
                               s.service_user], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise PostConfigError(f"cannot create the SFTP account {s.service_user!r}: {_last(done)}")
        account = pwd.getpwnam(s.service_user)
        lay.run_dir.mkdir(parents=True, exist_ok=True)
        lay.account_marker.write_text(s.service_user + "\n", encoding="utf-8")
        actions.append(f"system account {s.service_user!r} created (--stop removes it)")
    else:
        check_account(s, lay, reset_existing=reset_existing)
    # chpasswd reads 'user:password' on stdin: the password never appears in a command line.
    done = subprocess.run(["chpasswd"], input=f"{s.service_user}:{password}\n", capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise PostConfigError(f"cannot set the password of {s.service_user!r}: {_last(done)}")
    _make_root_folders(lay.sftp_root)
    os.chown(lay.sftp_root, 0, 0)
    lay.sftp_root.chmod(0o755)
    files = lay.sftp_root / "pero"
    files.mkdir(exist_ok=True)
    os.chown(files, account.pw_uid, account.pw_gid)
    files.chmod(0o750)
    actions.append(f"password set; jailed in {lay.sftp_root}, files in {files}")
    return actions


def remove_created_account(lay: Layout) -> str | None:
    """Remove the system account this deployment created (--stop); None when it created none."""
    user = created_account(lay)
    if user is None:
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        lay.account_marker.unlink(missing_ok=True)
        return f"system account {user!r} was already gone"
    done = subprocess.run(["userdel", user], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise PostConfigError(f"cannot remove the system account {user!r}: {_last(done)}")
    lay.account_marker.unlink(missing_ok=True)
    return f"system account {user!r} removed"


# --- ZooKeeper ----------------------------------------------------------------------

def server_entries(s: Settings) -> dict[str, str]:
    """The /pero/worker/config lists: node -> 'host:port' child (normalised the way clients parse it)."""
    def entry(host: str, port: int) -> str:
        address = parse_address(format_address(host.strip("[]"), port), port)
        return str(address)
    return {zk_paths.MQ_SERVERS: entry(s.mq_host, s.amqps_port),
            zk_paths.MQ_MONITORING_SERVERS: entry(s.mq_host, s.management_port),
            zk_paths.FTP_SERVERS: entry(s.sftp_host, s.sftp_port)}


def configure_zookeeper(s: Settings, lay: Layout, password: str) -> list[str]:
    """Create the /pero tree (ACL: our SASL user only) and add our servers to the server lists."""
    conn = ConnectionConfig(zookeeper_servers=(Address(s.zk_host.strip("[]"), s.zk_port),),
                            username=s.service_user, password=password, ca_cert=str(lay.ca_cert))
    actions = []
    try:
        with ZooKeeper(conn, timeout=30) as zk:
            for path in (zk_paths.WORKER_STATUS_ROOT, zk_paths.QUEUE_ROOT):
                zk.ensure_path(path)
            for parent, child in server_entries(s).items():
                if child not in zk.children(parent):
                    zk.ensure_path(f"{parent}/{child}")
                    actions.append(f"{parent}/{child} added")
    except ZkConnectionError as error:
        raise PostConfigError(str(error)) from None
    return actions or ["server lists already complete"]


