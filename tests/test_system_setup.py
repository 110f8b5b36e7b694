"""scripts/system_setup.py and scripts/certificate_setup.sh without starting engines.

Pure decisions (file texts, certificate reissue, chroot suitability, password hashes) are
tested directly; `--no-start` runs check what lands on disk.  The running engines are
tested in tests/test_secure_pipeline.py.
"""
from __future__ import annotations

import base64
import configparser
import datetime as dt
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from pero_worker.libs import tls
from pero_worker.libs.config import read_ini_section
from pero_worker.tools.deploy import pki, render, samples
from pero_worker.tools.deploy.layout import Layout, Settings
from pero_worker.tools.deploy.secrets_store import SecretError, ensure_password, write_private

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "scripts" / "system_setup.py"
CERT_SCRIPT = REPO / "scripts" / "certificate_setup.sh"
S = Settings(zk_host="zk.example.org", mq_host="10.1.2.3", sftp_host="::1", zk_port=2281)
LAY = Layout(Path("/etc/pero"), Path("/srv/pero"))
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


# --- file texts ---------------------------------------------------------------------------

def _cfg_lines(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_zoo_cfg_is_tls_only_with_sasl_enforced():
    cfg = _cfg_lines(render.zoo_cfg(S, LAY))
    assert "clientPort" not in cfg
    assert cfg["secureClientPort"] == "2281"
    assert cfg["serverCnxnFactory"] == "org.apache.zookeeper.server.NettyServerCnxnFactory"
    assert cfg["authProvider.sasl"] == "org.apache.zookeeper.server.auth.SASLAuthenticationProvider"
    assert cfg["sessionRequireClientSASLAuth"] == "true" and cfg["enforce.auth.enabled"] == "true"
    assert cfg["ssl.keyStore.location"] == "/etc/pero/zookeeper/keystore.p12"
    assert cfg["ssl.keyStore.passwordPath"] == "/etc/pero/zookeeper/keystore.pass"
    assert cfg["ssl.trustStore.location"] == "/etc/pero/zookeeper/truststore.p12"
    assert "ssl.keyStore.password" not in cfg           # the store password only in its 0600 file
    assert cfg["admin.enableServer"] == "false" and cfg["4lw.commands.whitelist"] == ""
    assert cfg["dataDir"] == "/srv/pero/zookeeper"


def test_zoo_cfg_binds_the_given_address():
    cfg = _cfg_lines(render.zoo_cfg(Settings("a", "b", "c", bind_address="10.0.0.1"), LAY))
    assert cfg["secureClientPortAddress"] == "10.0.0.1"
    assert "secureClientPortAddress" not in _cfg_lines(render.zoo_cfg(S, LAY))


def test_java_env_round_trips_through_the_parser():
    text = render.java_env(S, LAY)
    flags = render.parse_java_env(text)
    assert "-Djava.security.auth.login.config=/etc/pero/zookeeper/jaas.conf" in flags
    assert "-Dzookeeper.superUser=admin" in flags and "-Xmx512m" in flags
    assert text.count("SERVER_JVMFLAGS=") == 1


@pytest.mark.parametrize("text, expected", [
    ('SERVER_JVMFLAGS="-Xmx1m -Dx=y"\n', ["-Xmx1m", "-Dx=y"]),
    ("export SERVER_JVMFLAGS='-Da=b'\n", ["-Da=b"]),
    ("# SERVER_JVMFLAGS=no\nOTHER=1\n", []),
    ("", []),
])
def test_parse_java_env(text, expected):
    assert render.parse_java_env(text) == expected


def test_jaas_file_lists_every_user():
    text = render.jaas_conf({"pero": "s3cret", "admin": "adm1n"})
    assert "org.apache.zookeeper.server.auth.DigestLoginModule required" in text
    assert 'user_pero="s3cret"' in text and 'user_admin="adm1n";' in text
    assert text.strip().endswith("};")


def test_rabbitmq_conf_has_no_plain_listener():
    text = render.rabbitmq_conf(S, LAY, log_file=None)
    cfg = _cfg_lines(text)
    assert cfg["listeners.tcp"] == "none"
    assert cfg["listeners.ssl.default"] == "5671"
    assert cfg["management.ssl.port"] == "15671"
    assert not any(key.startswith("management.tcp") for key in cfg)
    assert cfg["ssl_options.certfile"] == "/etc/pero/certificates/rabbitmq.pem"
    assert cfg["load_definitions"] == "/etc/pero/rabbitmq/definitions.json"
    assert cfg["log.console"] == "true"
    bound = _cfg_lines(render.rabbitmq_conf(Settings("a", "b", "c", bind_address="::1"), LAY, log_file="/x.log"))
    assert bound["listeners.ssl.1"] == "[::1]:5671" and bound["management.ssl.ip"] == "::1"
    assert bound["log.file"] == "/x.log"


def test_rabbitmq_env_gives_a_separate_node():
    env = render.rabbitmq_env_vars(Settings("a", "b", "c", amqps_port=25671, dist_port=45671,
                                            rabbitmq_node="pero_25671@localhost"), LAY)
    assert env["RABBITMQ_NODENAME"] == "pero_25671@localhost"
    assert env["RABBITMQ_DIST_PORT"] == "45671"
    assert env["RABBITMQ_MNESIA_BASE"].startswith("/srv/pero/")
    assert env["RABBITMQ_CONF_ENV_FILE"] == "/etc/pero/rabbitmq/rabbitmq-env.conf"
    text = render.rabbitmq_env(Settings("a", "b", "c", dist_port=45671, rabbitmq_node="n@localhost"), LAY)
    assert "NODENAME=n@localhost" in text and "DIST_PORT=45671" in text


def test_rabbit_password_hash_matches_rabbitmq_algorithm():
    salt = bytes.fromhex("908dc60a")
    expected = base64.b64encode(salt + hashlib.sha256(salt + b"test12").digest()).decode()
    assert render.rabbit_password_hash("test12", salt) == expected
    assert render.rabbit_hash_matches(expected, "test12")
    assert not render.rabbit_hash_matches(expected, "test13")
    assert not render.rabbit_hash_matches("not base64!", "test12")
    with pytest.raises(ValueError):
        render.rabbit_password_hash("x", b"12")


def test_definitions_keep_a_matching_hash_and_replace_a_stale_one():
    first = render.definitions(S, {"pero": "a", "admin": "b"})
    assert {u["name"]: u["tags"] for u in first["users"]} == {"pero": ["monitoring"], "admin": ["administrator"]}
    assert first["vhosts"] == [{"name": "pero"}]
    assert {p["user"] for p in first["permissions"]} == {"pero", "admin"}
    assert all(p["vhost"] == "pero" and p["read"] == ".*" for p in first["permissions"])
    assert "guest" not in json.dumps(first)
    again = render.definitions(S, {"pero": "a", "admin": "b"}, previous=first)
    assert again == first
    changed = render.definitions(S, {"pero": "new", "admin": "b"}, previous=first)
    assert changed["users"][0]["password_hash"] != first["users"][0]["password_hash"]
    assert changed["users"][1]["password_hash"] == first["users"][1]["password_hash"]
    assert render.rabbit_hash_matches(changed["users"][0]["password_hash"], "new")


@pytest.mark.parametrize("components, problem", [
    ([(0, 0o40755), (0, 0o40755)], None),
    ([(0, 0o40755), (0, 0o41777)], "/p1 is writable by group or others (mode 1777)"),
    ([(0, 0o40755), (1000, 0o40755)], "/p1 is not owned by root"),
    ([(0, 0o40775)], "/p0 is writable by group or others (mode 0775)"),
    ([], None),
])
def test_chroot_problem(components, problem):
    stats = [render.PathStat(f"/p{i}", uid, mode) for i, (uid, mode) in enumerate(components)]
    assert render.chroot_problem(stats) == problem


@pytest.mark.parametrize("jail", [None, Path("/var/lib/pero-worker/sftp-x")])
def test_sshd_config_is_sftp_only_for_one_jailed_user(jail):
    text = render.sshd_config(S, Layout(LAY.config_dir, LAY.data_dir, jail))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert "AllowUsers pero" in lines and "PasswordAuthentication yes" in lines
    assert "PermitRootLogin no" in lines and "AllowTcpForwarding no" in lines and "PermitTTY no" in lines
    assert "Subsystem sftp internal-sftp" in lines
    assert lines[-3:] == ["Match User pero", f"ChrootDirectory {jail or '/srv/pero/sftp/root'}",
                          "ForceCommand internal-sftp -d /"]


def _problems(bad: dict[str, str]):
    return bad.get


@pytest.mark.parametrize("given, bad, expected, note_word", [
    (None, {}, "/d/sftp/root", None),                                          # the default qualifies
    (None, {"/d/sftp/root": "/tmp is writable by group or others"}, "/var/lib/j", "jailed in /var/lib/j"),
    ("/srv/jail", {"/d/sftp/root": "x"}, "/srv/jail", None),                    # the operator's choice
])
def test_choose_sftp_root(given, bad, expected, note_word):
    root, note = render.choose_sftp_root(given, "/d/sftp/root", "/var/lib/j", _problems(bad))
    assert root == expected
    assert (note is None) if note_word is None else (note_word in note)


@pytest.mark.parametrize("given, bad, word", [
    ("/tmp/jail", {"/tmp/jail": "/tmp is writable by group or others (mode 1777)"}, "--sftp-root /tmp/jail cannot"),
    (None, {"/d/sftp/root": "a", "/var/lib/j": "b"}, "no folder can jail the SFTP user"),
])
def test_choose_sftp_root_refuses_rather_than_leave_the_user_unconfined(given, bad, word):
    with pytest.raises(ValueError, match=word):
        render.choose_sftp_root(given, "/d/sftp/root", "/var/lib/j", _problems(bad))


def test_tls_is_aead_only_and_zookeeper_offers_tls_1_3():
    zoo = _cfg_lines(render.zoo_cfg(S, LAY))
    assert zoo["ssl.protocol"] == "TLSv1.3" and zoo["ssl.enabledProtocols"] == "TLSv1.3,TLSv1.2"
    suites = zoo["ssl.ciphersuites"].split(",")
    assert "TLS_AES_256_GCM_SHA384" in suites and "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" in suites
    assert not [suite for suite in suites if "CBC" in suite or suite.endswith("_SHA")]
    conf = _cfg_lines(render.rabbitmq_conf(S, LAY, log_file=None))
    for prefix in ("ssl_options", "management.ssl"):
        ciphers = [value for key, value in conf.items() if key.startswith(f"{prefix}.ciphers.")]
        assert "TLS_AES_128_GCM_SHA256" in ciphers and "ECDHE-RSA-AES256-GCM-SHA384" in ciphers
        assert all("GCM" in c or "CHACHA20" in c for c in ciphers), ciphers
        assert conf[f"{prefix}.honor_cipher_order"] == "true"


def test_known_hosts_lines():
    assert render.known_hosts_lines(["h", "::1"], 2222, "ssh-ed25519", "AAA") == \
        "[h]:2222 ssh-ed25519 AAA\n[::1]:2222 ssh-ed25519 AAA\n"
    assert render.known_hosts_lines(["h"], 22, "ssh-ed25519", "AAA") == "h ssh-ed25519 AAA\n"


def test_ini_files_are_what_the_daemons_read(tmp_path):
    for name, text, section in (("worker", render.worker_ini(S, LAY), "WORKER"),
                                ("watchdog", render.watchdog_ini(S, LAY), "WATCHDOG"),
                                ("logd", render.logd_ini(S, LAY), "LOGD")):
        path = tmp_path / f"{name}.ini"
        path.write_text(text)
        values = read_ini_section(str(path), (section,))
        assert values["zookeeper_servers"] == "zk.example.org:2281"
        assert values["password_file"] == "/etc/pero/secrets/service.password"
        assert values["ca_cert"] == "/etc/pero/certificates/ca.pem"
        assert "password" not in values
    logd = configparser.ConfigParser()
    logd.read_string(render.logd_ini(S, LAY))
    assert logd["LOGD"]["log_rotation_period"] == "10080" and logd["LOGD"]["number_of_files"] == "10"
    ipv6 = render.worker_ini(Settings("::1", "b", "c", zk_port=2281), LAY)
    assert "zookeeper_servers = [::1]:2281" in ipv6


def test_sample_config_matches_the_generators():
    for name, text in samples.sample_files().items():
        path = REPO / "sample-config" / name
        assert path.read_text() == text, f"sample-config/{name} is stale: python -m pero_worker.tools.deploy.samples"


# --- certificates --------------------------------------------------------------------------

@pytest.mark.parametrize("host, extra, expected", [
    ("zk.example.org", (), ["zk.example.org"]),
    ("127.0.0.1", (), ["127.0.0.1", "localhost", "::1"]),
    ("localhost", ("10.0.0.1",), ["localhost", "127.0.0.1", "::1", "10.0.0.1"]),
    ("[::1]", (), ["::1", "localhost", "127.0.0.1"]),
    ("10.0.0.5", ("10.0.0.5", "mq"), ["10.0.0.5", "mq"]),
])
def test_subject_alt_names(host, extra, expected):
    assert pki.subject_alt_names(host, extra) == expected


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ca")
    pki.create_ca(folder / "ca.pem", folder / "ca.key")
    return folder, pki.load_cert(folder / "ca.pem"), pki.load_key(folder / "ca.key")


def test_server_certificate_has_names_usage_and_chain(ca, tmp_path):
    folder, ca_cert, ca_key = ca
    pki.issue_server_cert(ca_cert, ca_key, ["mq.example.org", "10.0.0.1"], tmp_path / "s.pem", tmp_path / "s.key")
    chain = x509.load_pem_x509_certificates((tmp_path / "s.pem").read_bytes())
    assert len(chain) == 2 and chain[1] == ca_cert
    assert pki.names_in_certificate(chain[0]) == {"mq.example.org", "10.0.0.1"}
    assert (tmp_path / "s.key").stat().st_mode & 0o777 == 0o600
    chain[0].verify_directly_issued_by(ca_cert)
    # Python's TLS stack accepts it for the names it lists.
    context = tls.client_context(str(folder / "ca.pem"))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_reissue_reason(ca, tmp_path):
    folder, ca_cert, ca_key = ca
    pki.issue_server_cert(ca_cert, ca_key, ["a", "b"], tmp_path / "s.pem", tmp_path / "s.key")
    cert = pki.load_cert(tmp_path / "s.pem")
    now = dt.datetime.now(dt.timezone.utc)
    assert pki.reissue_reason(cert, ca_cert, ["a", "b"], now) is None
    assert pki.reissue_reason(cert, ca_cert, ["a"], now) is None
    assert pki.reissue_reason(cert, ca_cert, ["a", "c"], now) == "missing names c"
    assert pki.reissue_reason(None, ca_cert, ["a"], now) == "no certificate yet"
    assert pki.reissue_reason(cert, ca_cert, ["a"], now + dt.timedelta(days=pki.SERVER_DAYS - 10)).startswith(
        "expires")
    other = tmp_path / "other"
    other.mkdir()
    pki.create_ca(other / "ca.pem", other / "ca.key", common_name="other CA")
    assert pki.reissue_reason(cert, pki.load_cert(other / "ca.pem"), ["a"], now) == "issued by another CA"


def test_given_ca_must_match_its_key(ca, tmp_path):
    folder, _, _ = ca
    other = tmp_path / "other"
    other.mkdir()
    pki.create_ca(other / "ca.pem", other / "ca.key")
    with pytest.raises(pki.PkiError, match="does not belong"):
        pki.ensure_ca(tmp_path / "out.pem", tmp_path / "out.key", given_cert=folder / "ca.pem",
                      given_key=other / "ca.key")
    with pytest.raises(pki.PkiError, match="both"):
        pki.ensure_ca(tmp_path / "out.pem", tmp_path / "out.key", given_cert=folder / "ca.pem")
    cert, _key, created = pki.ensure_ca(tmp_path / "out.pem", tmp_path / "out.key", given_cert=folder / "ca.pem",
                                        given_key=folder / "ca.key")
    assert not created and (tmp_path / "out.pem").read_bytes() == (folder / "ca.pem").read_bytes()
    assert not (tmp_path / "out.key").exists()     # a given CA key is never copied


# --- secrets -------------------------------------------------------------------------------

def test_passwords_are_generated_once_and_kept(tmp_path):
    path = tmp_path / "secrets" / "p"
    first, how = ensure_password(path, None, "service")
    assert how == "generated" and len(first) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_password(path, None, "service") == (first, "kept")
    assert ensure_password(path, "given-one", "service") == ("given-one", "given")
    assert path.read_text().strip() == "given-one"
    assert ensure_password(path, None, "service") == ("given-one", "kept")


@pytest.mark.parametrize("bad", ['with"quote', "back\\slash", "new\nline", ""])
def test_unusable_passwords_are_refused_without_echo(tmp_path, bad):
    with pytest.raises(SecretError) as error:
        ensure_password(tmp_path / "p", bad, "service")
    assert bad.strip() == "" or bad not in str(error.value)


def test_write_private_is_atomic_and_private(tmp_path):
    path = tmp_path / "x"
    write_private(path, b"one")
    write_private(path, b"two")
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


# --- the CLI, generating only ---------------------------------------------------------------

def _setup(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SETUP), *args], capture_output=True, text=True, timeout=180,
                          env=env)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    base = tmp_path_factory.mktemp("setup")
    env = {**os.environ, "PERO_PASSWORD": "env-given-password"}
    done = _setup("-z", "zk.example.org", "-s", "10.0.0.2", "-f", "files.example.org", "-o", str(base / "config"),
                  "-d", str(base / "data"), "--no-start", "--extra-name", "alias.example.org", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return base, done.stdout + done.stderr


def test_no_start_generates_everything(generated):
    base, output = generated
    config = base / "config"
    expected = ["certificates/ca.pem", "certificates/ca.key", "certificates/zookeeper.pem", "certificates/rabbitmq.pem",
                "certificates/known_hosts", "secrets/service.password", "secrets/admin.password", "zookeeper/zoo.cfg",
                "zookeeper/java.env", "zookeeper/jaas.conf", "zookeeper/keystore.p12", "zookeeper/truststore.p12",
                "rabbitmq/rabbitmq.conf", "rabbitmq/definitions.json", "rabbitmq/enabled_plugins",
                "sftp/sshd_config", "worker.ini", "watchdog.ini", "logd.ini", "docker.env"]
    for name in expected:
        assert (config / name).is_file(), name
    assert (config / "secrets" / "service.password").read_text().strip() == "env-given-password"
    assert "env-given-password" not in output
    admin = (config / "secrets" / "admin.password").read_text().strip()
    assert admin not in output and len(admin) >= 32
    names = pki.names_in_certificate(pki.load_cert(config / "certificates" / "rabbitmq.pem"))
    assert names == {"10.0.0.2", "alias.example.org"}
    known = (config / "certificates" / "known_hosts").read_text()
    assert known.startswith("[files.example.org]:2222 ssh-ed25519 ")


def test_java_stores_open_with_their_password_files(generated):
    base, _ = generated
    zk = base / "config" / "zookeeper"
    for store, pass_file, kind in (("keystore.p12", "keystore.pass", "PrivateKeyEntry"),
                                   ("truststore.p12", "truststore.pass", "trustedCertEntry")):
        listing = subprocess.run(["keytool", "-list", "-keystore", str(zk / store), "-storetype", "PKCS12",
                                  "-storepass:file", str(zk / pass_file)], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0 and kind in listing.stdout, listing.stdout + listing.stderr


def test_second_run_keeps_every_secret(generated):
    base, _ = generated
    config = base / "config"
    names = ["secrets/service.password", "secrets/admin.password", "certificates/ca.key", "certificates/zookeeper.pem",
             "rabbitmq/definitions.json", "zookeeper/keystore.p12", "certificates/known_hosts"]
    before = {name: (config / name).read_bytes() for name in names}
    env = {k: v for k, v in os.environ.items() if k != "PERO_PASSWORD"}
    done = _setup("-z", "zk.example.org", "-s", "10.0.0.2", "-f", "files.example.org", "-o", str(config),
                  "-d", str(base / "data"), "--no-start", "--extra-name", "alias.example.org", env=env)
    assert done.returncode == 0, done.stderr
    assert "password kept" in done.stderr and "certificate for 10.0.0.2, alias.example.org: kept" in done.stderr
    assert {name: (config / name).read_bytes() for name in names} == before


def test_a_new_host_name_reissues_only_that_certificate(generated, tmp_path):
    base, _ = generated
    config = tmp_path / "config"
    shutil.copytree(base / "config", config)
    zk_before = (config / "certificates" / "zookeeper.pem").read_bytes()
    done = _setup("-z", "zk.example.org", "-s", "mq2.example.org", "-f", "files.example.org", "-o", str(config),
                  "-d", str(tmp_path / "data"), "--no-start", "--extra-name", "alias.example.org")
    assert done.returncode == 0, done.stderr
    assert "rabbitmq certificate for mq2.example.org, alias.example.org: issued (missing names mq2.example.org)" \
        in done.stderr
    assert (config / "certificates" / "zookeeper.pem").read_bytes() == zk_before


def test_docker_variant_writes_the_sftp_users_file_with_a_hash(tmp_path):
    env = {**os.environ, "PERO_PASSWORD": "docker-password"}
    args = ["-z", "zk", "-s", "mq", "-f", "files", "-o", str(tmp_path / "config"), "-d", str(tmp_path / "data"),
            "--no-start", "--docker"]
    done = _setup(*args, env=env)
    assert done.returncode == 0, done.stderr
    users = tmp_path / "config" / "sftp" / "users.conf"
    assert users.stat().st_mode & 0o777 == 0o600
    user, crypt_hash, flag, uid = users.read_text().strip().split(":")
    assert (user, flag, uid) == ("pero", "e", "1001") and crypt_hash.startswith("$6$")
    salt = crypt_hash.split("$")[2]
    check = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input="docker-password\n",
                           capture_output=True, text=True)
    assert check.stdout.strip() == crypt_hash
    assert "log.console = true" in (tmp_path / "config" / "rabbitmq" / "rabbitmq.conf").read_text()
    env_file = (tmp_path / "config" / "docker.env").read_text()
    assert f"PERO_CONFIG_DIR={tmp_path / 'config'}" in env_file and "PERO_ZK_PORT=2281" in env_file
    # Same password again: the hash (and its salt) is kept.
    assert _setup(*args, env=env).returncode == 0
    assert users.read_text().split(":")[1] == crypt_hash


@pytest.mark.parametrize("args, message", [
    (["-s", "b", "-f", "c"], "missing -z/--zookeeper-host"),
    (["-z", "a", "-s", "b", "-f", "c", "--mq-port", "70000"], "not a TCP port"),
    (["-z", "a", "-s", "b", "-f", "c", "--mq-port", "2222"], "the ports must all differ"),
    (["-z", "a", "-s", "b", "-f", "c", "-u", "bad user"], "user names may only contain"),
    (["-z", "a", "-s", "b", "-f", "c", "-u", "admin"], "must differ"),
    (["-z", "bad host!", "-s", "b", "-f", "c"], "invalid host name"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    done = _setup(*args, "-o", str(tmp_path / "c"), "-d", str(tmp_path / "d"), "--no-start")
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "c").exists()


def test_a_data_folder_under_tmp_gets_a_root_owned_jail(generated):
    """/tmp is world-writable, so sshd cannot jail the user under it: the jail moves, it is never dropped."""
    base, output = generated
    jail = Layout(base / "config", (base / "data").resolve()).fallback_sftp_root()
    assert str(jail).startswith("/var/lib/pero-worker/sftp-")
    sshd = (base / "config" / "sftp" / "sshd_config").read_text()
    assert f"    ChrootDirectory {jail}\n" in sshd
    assert "is writable by group or others" in output and f"jailed in {jail} instead" in output
    saved = json.loads((base / "data" / "run" / "setup.json").read_text())
    assert saved["sftp_root"] == str(jail)


def test_an_sftp_root_that_cannot_jail_is_refused(tmp_path):
    done = _setup("-z", "a", "-s", "b", "-f", "c", "-o", str(tmp_path / "c"), "-d", str(tmp_path / "d"),
                  "--no-start", "--sftp-root", str(tmp_path / "jail"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "ERROR" in line or "cannot be the SFTP jail" in line]
    assert len(lines) == 1 and "is writable by group or others" in lines[0], done.stderr
    assert not (tmp_path / "c" / "sftp" / "sshd_config").exists()


def test_stop_without_an_earlier_run_is_a_clear_error(tmp_path):
    done = _setup("--stop", "-o", str(tmp_path / "c"), "-d", str(tmp_path / "d"))
    assert done.returncode == 1 and "nothing to stop" in done.stderr


# --- scripts/certificate_setup.sh ------------------------------------------------------------

def test_certificate_setup_script(tmp_path):
    out = tmp_path / "certs"
    done = subprocess.run(["bash", str(CERT_SCRIPT), "-o", str(out), "zookeeper=zk.example.org,10.0.0.7",
                           "rabbitmq=127.0.0.1,localhost"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    ca_cert = pki.load_cert(out / "ca.pem")
    for service, names in (("zookeeper", {"zk.example.org", "10.0.0.7"}), ("rabbitmq", {"127.0.0.1", "localhost"})):
        chain = x509.load_pem_x509_certificates((out / f"{service}.pem").read_bytes())
        chain[0].verify_directly_issued_by(ca_cert)
        assert pki.names_in_certificate(chain[0]) == names
        assert pki.reissue_reason(chain[0], ca_cert, sorted(names), dt.datetime.now(dt.timezone.utc)) is None
        assert (out / f"{service}.key").stat().st_mode & 0o777 == 0o600
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600
    # Re-running keeps what exists; the same names that system_setup.py uses make the outputs interchangeable.
    again = subprocess.run(["bash", str(CERT_SCRIPT), "-o", str(out), "zookeeper=other"], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "keeping" in again.stdout
    bad = subprocess.run(["bash", str(CERT_SCRIPT), "-o", str(out), "nohost"], capture_output=True, text=True)
    assert bad.returncode == 2 and "SERVICE=HOST" in bad.stderr


# --- libs/tls -------------------------------------------------------------------------------

def test_tls_context_errors_are_one_line(tmp_path):
    with pytest.raises(tls.TLSError, match="CA certificate not found"):
        tls.client_context(str(tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(tls.TLSError, match="not a PEM certificate"):
        tls.client_context(str(junk))
    assert tls.requests_verify(None) is True and tls.requests_verify("/x.pem") == "/x.pem"


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code = code
    error.verify_message = message
    return error


@pytest.mark.parametrize("error, expected, permanent", [
    (_verify_error(10, "certificate has expired"), "certificate has expired", True),
    (_verify_error(9, "certificate is not yet valid"), "not valid yet", True),
    (_verify_error(62, "hostname mismatch"), "not valid for the name 'mq'", True),
    (_verify_error(64, "IP address mismatch"), "not valid for the name 'mq'", True),
    (_verify_error(19, "self-signed certificate in certificate chain"), "not signed by the CA in /ca.pem", True),
    (_verify_error(20, "unable to get local issuer certificate"), "not signed by the CA in /ca.pem", True),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "does not speak TLS", False),
    (ConnectionRefusedError(111, "Connection refused"), "connection refused", False),
])
def test_describe_error(error, expected, permanent):
    if isinstance(error, ssl.SSLError) and not isinstance(error, ssl.SSLCertVerificationError):
        error.reason = "WRONG_VERSION_NUMBER"
    text = tls.describe_error(error, service="RabbitMQ", address="mq:5671", ca_cert="/ca.pem", host="mq")
    assert text.startswith("RabbitMQ at mq:5671: ") and expected in text and "\n" not in text
    assert tls.is_permanent(error) is permanent
    wrapped = RuntimeError("library wrapper", error)
    assert tls.describe_error(wrapped, service="RabbitMQ", address="mq:5671", ca_cert="/ca.pem", host="mq") == text


# --- system accounts: never take over someone else's, remove our own ---------------------------

def _shadow_entry(user: str) -> str:
    return next(line for line in Path("/etc/shadow").read_text().splitlines() if line.startswith(user + ":"))


@pytest.fixture
def foreign_account():
    """A system account that no deployment created (as a person's, or local_services.py's, would be)."""
    import uuid
    if os.geteuid() != 0:
        pytest.skip("needs root to create a system account")
    name = f"perot{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    subprocess.run(["chpasswd"], input=f"{name}:its-own-password\n", text=True, check=True, capture_output=True)
    yield name
    subprocess.run(["userdel", name], capture_output=True)


def test_an_existing_account_keeps_its_password_unless_told(foreign_account, tmp_path):
    from pero_worker.tools.deploy import postconfig
    s = Settings("a", "b", "c", service_user=foreign_account)
    lay = Layout(tmp_path / "config", tmp_path / "data", tmp_path / "jail")
    before = _shadow_entry(foreign_account)
    with pytest.raises(postconfig.PostConfigError, match="already exists and this deployment did not create it"):
        postconfig.ensure_sftp_account(s, lay, "new-password")
    assert _shadow_entry(foreign_account) == before and not (tmp_path / "jail").exists()
    actions = postconfig.ensure_sftp_account(s, lay, "new-password", reset_existing=True)
    assert any("password set" in action for action in actions)
    assert _shadow_entry(foreign_account) != before
    assert (tmp_path / "jail" / "pero").stat().st_uid == __import__("pwd").getpwnam(foreign_account).pw_uid
    assert postconfig.remove_created_account(lay) is None          # not ours: --stop leaves it alone


def test_an_account_the_deployment_created_is_removed_by_stop(tmp_path):
    import pwd
    import uuid

    from pero_worker.tools.deploy import postconfig
    if os.geteuid() != 0:
        pytest.skip("needs root to create a system account")
    name = f"perot{uuid.uuid4().hex[:8]}"
    s = Settings("a", "b", "c", service_user=name)
    lay = Layout(tmp_path / "config", tmp_path / "data", tmp_path / "jail")
    try:
        actions = postconfig.ensure_sftp_account(s, lay, "a-password")
        assert any("created" in action for action in actions) and pwd.getpwnam(name)
        postconfig.ensure_sftp_account(s, lay, "a-password")      # a re-run: ours, so no flag needed
        assert postconfig.remove_created_account(lay) == f"system account {name!r} removed"
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
        assert postconfig.remove_created_account(lay) is None
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_default_user_pero_is_not_taken_over(services, tmp_path):
    """The machine already has an account `pero` (local_services.py made it): setup refuses before it writes
    or starts anything, and pero's password stays what it was."""
    before = _shadow_entry("pero")
    done = _setup("-z", "127.0.0.1", "-s", "127.0.0.1", "-f", "127.0.0.1", "-o", str(tmp_path / "c"),
                  "-d", str(tmp_path / "d"), "--zookeeper-port", "12999", "--mq-port", "25999",
                  "--management-port", "25998", "--sftp-port", "2399")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "a system account 'pero' already exists" in done.stderr and "--reset-account-password" in done.stderr
    assert "Traceback" not in done.stderr
    assert _shadow_entry("pero") == before
    assert not (tmp_path / "c").exists()
